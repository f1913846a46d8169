"""taskschedctl and limits (issue 15): limits set/list/delete, add --limit and
--exclusive-key, and what show and stats say about them.

Real CLI processes against both stores (SQLite, and MongoDB through the per-xdist-worker
nx-27017), each named by a configuration file as an operator would. Running jobs are
made by claiming them through the store as a worker does (a lease, a token): what the CLI
shows is then known exactly, with no daemon timing involved.
"""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from taskschedd import Scheduler
from taskschedd.model import JobRecord, JobStatus
from tests.ctl.harness import ECHO, ROOT, CtlHarness, Result, clean_env
from tests.mongo_server import unique_db_name

#: nx-27017 rejects dots in collection names (the defaults have them): docs/nx-27017.md.
MONGO_NAMES = {
    "jobs_collection": "taskscheduler_jobs",
    "events_collection": "taskscheduler_events",
    "nodes_collection": "taskscheduler_nodes",
}
LEASE = 300.0  # a claimed job stays running for the whole test


@dataclass
class Env:
    """One store, a configuration naming it, and a Scheduler on it for the set-up."""

    kind: str
    ctl: CtlHarness
    config: Path
    sched: Scheduler

    def cli(self, *args: str) -> Result:
        """taskschedctl as a process, with the configuration after the command name."""
        return self.ctl.proc(args[0], "-c", str(self.config), *args[1:], store=False)

    def add(self, **options: Any) -> str:
        return str(self.sched.add_job(ECHO, {}, **options).id)

    def claim(self, **ask: Any) -> JobRecord:
        """Claim the next due job as a worker does: it is running until LEASE passes."""
        job = self.sched.store.claim(
            # A worker per job: the jobs one worker holds share its slot of a limit.
            ["default"], node="test-node", worker=f"w{uuid.uuid4().hex[:8]}", token=uuid.uuid4().hex, lease=LEASE,
            now=time.time(), **ask,
        )  # fmt: skip
        assert job is not None and job.status is JobStatus.PROCESSING
        return job

    def limits_json(self) -> list[dict[str, Any]]:
        res = self.cli("limits", "list", "--json")
        assert res.code == 0, res
        docs: list[dict[str, Any]] = json.loads(res.out)
        return docs


@pytest.fixture(params=["sqlite", "mongo"])
def env(request: pytest.FixtureRequest, ctl: CtlHarness) -> Iterator[Env]:
    allowed = "allowed_modules: [taskschedd.examples]\n"
    if request.param == "sqlite":
        ctl.store().nodes()  # created (at first use), as a node's start would
        config = ctl.config(f"store: {ctl.url}\n{allowed}")
        drop = None
    else:
        uri = request.getfixturevalue("mongo_uri")
        database = unique_db_name("ctllim")
        names = "".join(f"  {k}: {v}\n" for k, v in MONGO_NAMES.items())
        config = ctl.config(
            f"store: {uri}\nmongodb:\n  database: {database}\n  change_streams: 'off'\n"
            f"{names}{allowed}"
        )

        def drop() -> None:
            import pymongo

            client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(
                uri, serverSelectionTimeoutMS=5000
            )
            with client, contextlib.suppress(Exception):
                client.drop_database(database)

    sched = Scheduler(config=config)
    try:
        yield Env(request.param, ctl, config, sched)
    finally:
        sched.close()
        if drop is not None:
            drop()


def row(out: str, name: str) -> list[str]:
    """The cells of a table line whose first cell is ``name`` (cells: 2+ spaces apart)."""
    for line in out.splitlines():
        cells = re.split(r"\s{2,}", line.strip())
        if cells[0] == name:
            return cells
    raise AssertionError(f"no row {name!r} in {out!r}")


def field(out: str, key: str) -> str | None:
    """The value of show's ``key:`` line (None: no such line)."""
    for line in out.splitlines():
        if line.startswith(f"{key}:"):
            return line[len(key) + 1 :].strip()
    return None


# -- limits set / list / delete ------------------------------------------------------------


def test_set_list_and_delete(env: Env) -> None:
    res = env.cli("limits", "set", "reports", "--max-running", "2")
    assert res.code == 0, res
    assert res.out == "limit reports set: max_running 2 (new)\n", res
    res = env.cli("limits", "set", "mail", "--rate", "100/1m")
    assert res.code == 0 and "limit mail set: rate 100/1m (new)" in res.out, res
    res = env.cli("limits", "set", "reports", "--max-running", "3", "--rate", "5/s")
    assert res.code == 0, res
    assert "max_running 3, rate 5/1s (was: max_running 2)" in res.out, res
    res = env.cli("limits", "set", "reports", "--max-running", "3", "--rate", "5/1s")
    assert "(unchanged)" in res.out, res

    res = env.cli("limits", "list")
    assert res.code == 0, res
    lines = res.out.splitlines()
    assert row(res.out, "NAME") == [
        "NAME", "MAX RUNNING", "RATE", "RUNNING", "WAITING", "NEXT START"
    ]  # fmt: skip
    assert [line.split()[0] for line in lines[1:]] == ["mail", "reports"]
    assert row(res.out, "mail") == ["mail", "-", "100/1m", "0", "0", "now"]
    assert row(res.out, "reports") == ["reports", "3", "5/1s", "0", "0", "now"]

    docs = {d["name"]: d for d in env.limits_json()}
    assert docs["mail"] == {
        "name": "mail", "max_running": None, "rate": "100/1m", "rate_count": 100,
        "rate_period": 60.0, "running": 0, "waiting": 0, "starts_in_window": 0,
        "full": False, "next_start": docs["mail"]["next_start"],
    }  # fmt: skip
    assert abs(docs["mail"]["next_start"] - time.time()) < 30
    assert docs["reports"]["max_running"] == 3 and docs["reports"]["rate_period"] == 1.0

    res = env.cli("limits", "delete", "mail")
    assert res.code == 0 and res.out.startswith("limit mail deleted"), res
    res = env.cli("limits", "delete", "mail")
    assert res.code == 1, res
    assert res.err == (
        "taskschedctl: error: no limit named 'mail'; 'taskschedctl limits list' shows the "
        "defined ones\n"
    ), res
    assert [d["name"] for d in env.limits_json()] == ["reports"]


def test_list_shows_running_waiting_and_next_start(env: Env) -> None:
    env.sched.set_limit("reports", max_running=1)
    env.sched.set_limit("mail", rate="1/1h")
    env.sched.set_limit("paused", max_running=0)
    env.add(limit="reports")
    env.add(limit="reports")
    env.add(limit="mail")
    env.add(limit="mail")
    env.add(limit="paused")
    env.claim()  # the first reports job: the limit is full
    env.claim()  # the first mail job: the rate's one start this hour is used
    res = env.cli("limits", "list")
    assert res.code == 0, res
    assert row(res.out, "reports") == ["reports", "1", "-", "1", "1", "when one ends"]
    assert row(res.out, "paused") == ["paused", "0", "-", "0", "1", "never (max 0)"]
    mail = row(res.out, "mail")
    assert mail[:5] == ["mail", "-", "1/1h", "1", "1"]
    assert mail[5].startswith("in 59m") or mail[5] == "in 1h", mail
    docs = {d["name"]: d for d in env.limits_json()}
    assert docs["reports"]["full"] and docs["reports"]["next_start"] is None
    assert docs["mail"]["full"] and docs["mail"]["starts_in_window"] == 1
    assert 3500 < docs["mail"]["next_start"] - time.time() <= 3600


def test_no_limits(ctl: CtlHarness) -> None:
    ctl.store().nodes()
    res = ctl.proc("limits", "list")
    assert (res.code, res.out, res.err) == (0, "", ""), res  # not a terminal: no note
    res = ctl.run("limits", "list", "--json")
    assert res.code == 0 and json.loads(res.out) == [], res


def test_a_limit_the_configuration_defines_is_set_with_a_warning(ctl: CtlHarness) -> None:
    """The nodes set the configuration's limits again at start and reload: the CLI says
    so when its own configuration defines the limit it changes or deletes."""
    ctl.store().nodes()
    config = ctl.config(
        f"store: {ctl.url}\nlimits:\n  reports: {{max_running: 2}}\n  mail: {{rate: 100/1m}}\n"
    )
    res = ctl.proc("limits", "set", "reports", "--max-running", "5", "-c", str(config), store=False)
    assert res.code == 0 and "limit reports set: max_running 5 (new)" in res.out, res
    assert res.err == (
        f"taskschedctl: warning: the configuration {config} defines limit reports as "
        "max_running 2: nodes using it set that again at their next start or reload (the "
        "configuration wins); change it there to keep this\n"
    ), res
    res = ctl.proc("limits", "set", "mail", "--rate", "100/1m", "-c", str(config), store=False)
    assert res.code == 0 and res.err == "", res  # as configured: nothing to say
    res = ctl.proc("limits", "delete", "mail", "-c", str(config), store=False)
    assert res.code == 0, res
    assert "defines limit mail: nodes using it set it again" in res.err, res


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("set", "bad/name", "--max-running", "2"), "Invalid value for NAME: expected 1-128"),
        (("set", "r", "--max-running", "-1"), "expected an integer from 0 to 100000"),
        (("set", "r", "--max-running", "two"), "expected an integer from 0 to 100000"),
        (("set", "r", "--max-running", "100001"), "expected an integer from 0 to 100000"),
        (("set", "r", "--rate", "100"), "expected starts per period, like '100/1m'"),
        (("set", "r", "--rate", "0/1m"), "the count must be an integer from 1 to 10000"),
        (("set", "r", "--rate", "5/1fortnight"), "like '100/1m', '20/1s'"),
        (("set", "r"), "'limits set' needs --max-running N, --rate RATE"),
        (("set",), "'limits set' needs the NAME of a limit"),
        (("delete",), "'limits delete' needs the NAME of a limit"),
        (("list", "reports"), "'limits list' takes no NAME"),
        (("list", "--rate", "1/s"), "--rate only applies to 'limits set'"),
        (("delete", "r", "--max-running", "1"), "--max-running only applies to 'limits set'"),
        (("set", "r", "--max-running", "1", "--json"), "--json only applies to 'limits list'"),
        (("frob",), "'frob' is not one of 'set', 'list', 'delete'"),
    ],
)
def test_bad_input_is_a_usage_error_and_writes_nothing(
    ctl: CtlHarness, args: tuple[str, ...], message: str
) -> None:
    ctl.store().nodes()
    res = ctl.run("limits", *args)
    assert res.code == 2, res
    assert message in res.err, res
    assert "Traceback" not in res.err
    assert ctl.store().limits(now=time.time()) == []


def test_bad_input_never_opens_the_store(ctl: CtlHarness) -> None:
    """Refused before anything is opened: a store that does not exist stays so."""
    res = ctl.proc("limits", "set", "reports", "--max-running", "lots")
    assert res.code == 2 and "'--max-running': expected an integer" in res.err, res
    res = ctl.proc("add", ECHO, "--limit", "has space")
    assert res.code == 2 and "Invalid value for '--limit'" in res.err, res
    res = ctl.proc("add", ECHO, "--exclusive-key", "")
    assert res.code == 2 and "Invalid value for '--exclusive-key'" in res.err, res
    assert not ctl.path.exists()


# -- add, show ------------------------------------------------------------------------------


def test_add_with_a_limit_and_key_and_why_show_says_it_waits(env: Env) -> None:
    assert env.cli("limits", "set", "reports", "--max-running", "1").code == 0
    ids = []
    for key in ("customer:42", "customer:42", "customer:7"):
        res = env.cli("add", ECHO, "--limit", "reports", "--exclusive-key", key)
        assert res.code == 0, res
        assert "no limit reports is defined" not in res.err, res
        ids.append(res.out.strip())
    first, same_key, other_key = ids
    job = env.sched.get_job(first).record
    assert (job.options.limit, job.options.exclusive_key) == ("reports", "customer:42")
    running = env.claim()
    assert running.id == first

    res = env.cli("show", other_key)
    assert res.code == 0, res
    assert field(res.out, "limit") == "reports (max_running 1; 1/1 running, 2 waiting)", res
    assert field(res.out, "exclusive key") == "customer:7", res
    assert field(res.out, "held back") == "limit 'reports' is full: 1 of 1 running", res
    res = env.cli("show", "--json", other_key)
    doc = json.loads(res.out)
    assert doc["held_back"] == "limit 'reports' is full: 1 of 1 running", doc
    assert doc["options"]["limit"] == "reports"
    assert doc["options"]["exclusive_key"] == "customer:7"

    # With room in the limit, the job with the running job's key is still held: by it.
    env.sched.set_limit("reports", max_running=5)
    res = env.cli("show", same_key)
    assert field(res.out, "held back") == f"exclusive key 'customer:42' is held by job {first}"
    res = env.cli("show", other_key)
    assert field(res.out, "held back") is None, res  # it can start now
    assert json.loads(env.cli("show", "--json", other_key).out)["held_back"] is None
    res = env.cli("show", first)
    assert field(res.out, "held back") is None and field(res.out, "status") == "PROCESSING"


def test_show_says_a_rate_window_holds_a_job(env: Env) -> None:
    env.sched.set_limit("mail", rate="1/1h")
    env.add(limit="mail")
    waiting = env.add(limit="mail")
    env.claim()
    res = env.cli("show", waiting)
    assert res.code == 0, res
    held = field(res.out, "held back")
    assert held is not None and held.startswith("limit 'mail' rate 1/1h: next start at "), res


def test_a_job_of_an_undefined_limit_is_added_with_a_warning(env: Env) -> None:
    res = env.cli("add", ECHO, "--limit", "reprots")
    assert res.code == 0, res
    assert (
        "taskschedctl: warning: no limit reprots is defined: the job runs unlimited until "
        "one is (taskschedctl limits set reprots --max-running N)"
    ) in res.err, res
    res = env.cli("show", res.out.strip())
    assert field(res.out, "limit") == "reprots (not defined: its jobs run unlimited)", res
    assert field(res.out, "held back") is None


def test_queue_and_class_limits_are_joined_at_add(env: Env) -> None:
    assert env.cli("limits", "set", "queue:default", "--max-running", "1").code == 0
    assert env.cli("limits", "set", f"class:{ECHO}", "--max-running", "4").code == 0
    res = env.cli("add", ECHO)
    assert res.code == 0 and "warning: no limit" not in res.err, res
    assert env.sched.get_job(res.out.strip()).record.options.limit == "queue:default"
    res = env.cli("add", ECHO, "--queue", "batch")
    assert env.sched.get_job(res.out.strip()).record.options.limit == f"class:{ECHO}"
    res = env.cli("add", ECHO, "--limit", "own")  # its own limit wins over both
    assert env.sched.get_job(res.out.strip()).record.options.limit == "own"


# -- stats ----------------------------------------------------------------------------------


def test_stats_shows_each_limit(env: Env) -> None:
    res = env.cli("stats")
    assert res.code == 0 and "limits: none defined" in res.out, res
    env.sched.set_limit("reports", max_running=2)
    env.sched.set_limit("mail", rate="100/1m")
    for _ in range(3):
        env.add(limit="reports")
    env.claim()
    res = env.cli("stats")
    assert res.code == 0, res
    section = res.out.split("\nlimits:\n", 1)[1]
    assert section.splitlines()[0].split() == ["LIMIT", "RUNNING", "WAITING", "RATE"]
    assert row(section, "reports") == ["reports", "1/2", "2", "-"]
    assert row(section, "mail") == ["mail", "0/-", "0", "100/1m"]
    res = env.cli("stats", "--json")
    assert json.loads(res.out)["limits"] == [
        {"name": "mail", "running": 0, "capacity": None, "waiting": 0, "rate": "100/1m"},
        {"name": "reports", "running": 1, "capacity": 2, "waiting": 2, "rate": None},
    ]


# -- the README's example -------------------------------------------------------------------


def readme_block(section: str) -> str:
    """The one sh block of a README section (as tests/docs/test_readme.py reads them)."""
    text = (ROOT / "README.md").read_text()
    body = text.split(f"\n## {section}\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"^```sh\n(.*?)^```", body, re.M | re.S)
    assert len(blocks) == 1, blocks
    return str(blocks[0])


def test_the_readme_example_runs_as_written(ctl: CtlHarness, tmp_path: Path) -> None:
    """The block of "Limits, exclusive keys and rates", in a directory laid out like a
    clone (.venv), with TASKSCHED_CONFIG exported as the README says (no node is needed:
    it sets limits, adds jobs and lists the limits)."""
    venv = Path(sys.executable).parent.parent
    if not (venv / "bin" / "taskschedctl").exists():
        pytest.skip(f"taskschedctl is not installed in {venv}")
    block = readme_block("Limits, exclusive keys and rates")
    clone = tmp_path / "clone"
    clone.mkdir()
    (clone / ".venv").symlink_to(venv)
    ctl.store().nodes()
    config = ctl.config(f"store: {ctl.url}\nallowed_modules: [taskschedd.examples]\n")
    env = clean_env(TASKSCHED_CONFIG=str(config))
    run = subprocess.run(
        ["bash", "-e", "-o", "pipefail", "-c", block], cwd=clone, env=env,
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert run.returncode == 0, run
    assert "Traceback" not in run.stderr, run.stderr
    assert row(run.stdout, "reports") == ["reports", "2", "-", "0", "3", "now"], run.stdout
    assert row(run.stdout, "mail") == ["mail", "-", "100/1m", "0", "1", "now"], run.stdout
    jobs = sorted(ctl.jobs(), key=lambda j: j.created)
    assert [(j.options.limit, j.options.exclusive_key) for j in jobs] == [
        ("reports", "customer:41"), ("reports", "customer:42"), ("reports", "customer:42"),
        ("mail", None),
    ]  # fmt: skip
