"""stats, nodes, check, completion, and how the store is chosen; exit codes and redaction."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

import taskschedd
from taskschedd.config import DEFAULT_CONFIG_PATH
from taskschedd.model import NodeRecord
from tests.ctl.harness import ECHO, FAIL, CtlHarness, clean_env

# -- stats ------------------------------------------------------------------------------------


def test_stats_counts_by_status_queue_and_class(ctl: CtlHarness) -> None:
    ctl.add(ECHO)
    ctl.add(FAIL)
    ctl.run_jobs()
    ctl.add(ECHO, queue="batch", at=time.time() - 60)
    res = ctl.proc("stats")
    assert res.code == 0, res
    out = res.out
    assert "WAITING 1  POSTPONED 0  PROCESSING 0  DONE 1  FAILED 1" in out
    assert "(total 3)" in out
    batch = next(line for line in out.splitlines() if line.split()[:1] == ["batch"])
    assert batch.split()[1] == "1" and batch.split()[-1] == "1m"  # oldest waiting
    assert any(line.split()[:1] == [FAIL] for line in out.splitlines())
    assert "throughput (last 5m): 2 finished (1 DONE, 1 FAILED), 0.4/min" in out


def test_stats_json(ctl: CtlHarness) -> None:
    ctl.add(ECHO, queue="batch")
    res = ctl.run("stats", "--json", "--window", "1m")
    doc = json.loads(res.out)
    assert doc["by_status"] == {"WAITING": 1}
    assert doc["by_queue"] == {"batch": {"WAITING": 1}}
    assert doc["by_class"] == {ECHO: {"WAITING": 1}}
    assert set(doc["oldest_waiting_age"]) == {"batch"} and doc["window"] == 60.0
    res = ctl.run("stats", "--window", "0")
    assert res.code == 2 and "Invalid value for '--window'" in res.err


# -- nodes ------------------------------------------------------------------------------------


def _heartbeat(ctl: CtlHarness, name: str, age: float, **extra: object) -> None:
    now = time.time()
    ctl.store().heartbeat(
        NodeRecord(
            name=name, host=f"{name}.example", pid=4242, started=now - 3600,
            heartbeat=now - age, version="0.1.0", **extra,  # type: ignore[arg-type]
        )
    )  # fmt: skip


def test_nodes_lists_live_nodes_and_all_with_stale_ones(ctl: CtlHarness) -> None:
    _heartbeat(
        ctl, "web-1", 1, workers_busy=2, workers_idle=3, running=("a", "b"), queues=("default",)
    )
    _heartbeat(ctl, "web-2", 600)
    res = ctl.proc("nodes")
    assert res.code == 0, res
    lines = res.out.splitlines()
    assert lines[0].split() == [
        "NAME", "HOST", "PID", "STATE", "BUSY", "IDLE", "RUNNING", "HEARTBEAT", "UP", "QUEUES",
        "VERSION",
    ]  # fmt: skip
    assert len(lines) == 2
    assert lines[1].split()[:7] == ["web-1", "web-1.example", "4242", "live", "2", "3", "2"]
    assert "ago" in lines[1] and "default" in lines[1]
    res = ctl.run("nodes", "--all")
    assert [line.split()[3] for line in res.out.splitlines()[1:]] == ["live", "STALE"]
    res = ctl.run("nodes", "--all", "--json")
    docs = json.loads(res.out)
    assert [(d["name"], d["stale"]) for d in docs] == [("web-1", False), ("web-2", True)]
    assert docs[0]["running"] == ["a", "b"]
    res = ctl.run("nodes", "--stale-after", "1h", "--json")
    assert len(json.loads(res.out)) == 2


# -- check ------------------------------------------------------------------------------------


def test_check_ok_with_a_config(ctl: CtlHarness) -> None:
    ctl.add(ECHO)
    config = ctl.config(f"store: {ctl.url}\n")
    res = ctl.proc("-c", str(config), "check", store=False)
    assert res.code == 0, res
    assert res.out.splitlines() == [
        f"config {config} (from -c): ok",
        f"store {ctl.url}: reachable (1 active jobs, 0 live nodes)",
    ]


def test_check_with_store_only(ctl: CtlHarness) -> None:
    ctl.add(ECHO)
    res = ctl.run("check")
    assert res.code == 0, res
    assert res.out.startswith("config: none (the store is given by --store)\n")


def test_check_invalid_config_exits_78(ctl: CtlHarness) -> None:
    config = ctl.config(f"store: {ctl.url}\nmax_childs: 4\n")
    res = ctl.proc("check", "-c", str(config), store=False)
    assert res.code == 78, res
    assert f"taskschedctl: error: {config}: max_childs: unknown key 'max_childs'" in res.err
    assert "did you mean 'max_children'?" in res.err and "Traceback" not in res.err
    res = ctl.run("check", env={"TASKSCHED_CONFIG": str(ctl.tmp / "missing.yaml")}, store=False)
    assert res.code == 78 and "cannot read the configuration file" in res.err, res


def test_check_unreachable_store_exits_69(ctl: CtlHarness) -> None:
    not_a_db = ctl.tmp / "garbage.db"
    not_a_db.write_bytes(b"this is not a database" * 100)
    res = ctl.proc("check", "--store", str(not_a_db), store=False)
    assert res.code == 69, res
    assert "reachable" not in res.out and "is not a taskschedd SQLite store" in res.err
    res = ctl.run("check")  # the store file does not exist yet
    assert res.code == 69 and f"no store at {ctl.path}" in res.err, res
    assert not ctl.path.exists()


def test_check_never_prints_a_store_password(ctl: CtlHarness) -> None:
    res = ctl.proc(
        "check", "--timeout", "2s", "--store", "mongodb://admin:s3cret@127.0.0.1:1/db",
        store=False,
    )  # fmt: skip
    assert res.code == 69, res
    assert "s3cret" not in res.out + res.err
    assert "mongodb://admin:***@127.0.0.1:1/db" in res.err
    res = ctl.run("list", "--store", "redis://admin:s3cret@host/0", store=False)
    assert res.code == 2 and "s3cret" not in res.err and "redis://admin:***@host/0" in res.err


# -- choosing the store -----------------------------------------------------------------------


@pytest.mark.skipif(os.path.exists(DEFAULT_CONFIG_PATH), reason="a default config exists here")
def test_no_store_and_no_config_says_how_to_choose(ctl: CtlHarness) -> None:
    res = ctl.proc("list", store=False)
    assert res.code == 78, res
    assert "no store chosen: give --store URL (or set TASKSCHED_STORE), or -c CONFIG" in res.err
    res = ctl.run("check", store=False)
    assert res.code == 78 and "no store chosen" in res.err


def test_store_from_the_environment(ctl: CtlHarness) -> None:
    job_id = ctl.add(ECHO)
    res = ctl.proc("list", "--json", env={"TASKSCHED_STORE": ctl.url}, store=False)
    assert res.code == 0 and json.loads(res.out)[0]["id"] == job_id, res
    config = ctl.config(f"store: {ctl.url}\n")
    res = ctl.run("list", "--json", env={"TASKSCHED_CONFIG": str(config)}, store=False)
    assert res.code == 0 and json.loads(res.out)[0]["id"] == job_id, res


def test_store_option_wins_over_the_configs_store(ctl: CtlHarness) -> None:
    job_id = ctl.add(ECHO)
    config = ctl.config(f"store: {ctl.tmp}/other.db\n")
    res = ctl.run("-c", str(config), "list", "--json", "--store", ctl.url, store=False)
    assert res.code == 0 and json.loads(res.out)[0]["id"] == job_id, res


# -- completion, help, version, pipes ---------------------------------------------------------


def test_completion_scripts(ctl: CtlHarness) -> None:
    res = ctl.proc("completion", "bash", store=False)
    assert res.code == 0 and "_TASKSCHEDCTL_COMPLETE=bash_complete" in res.out, res
    for shell in ("zsh", "fish"):
        res = ctl.run("completion", shell, store=False)
        assert res.code == 0 and "_TASKSCHEDCTL_COMPLETE" in res.out
    res = ctl.run("completion", "tcsh", store=False)
    assert res.code == 2 and "'tcsh' is not one of 'bash', 'zsh', 'fish'" in res.err


def _complete(ctl: CtlHarness, words: str) -> list[str]:
    env = clean_env(
        _TASKSCHEDCTL_COMPLETE="bash_complete",
        COMP_WORDS=words,
        COMP_CWORD=str(len(words.split()) - (0 if words.endswith(" ") else 1)),
        TASKSCHED_STORE=ctl.url,
    )
    cp = subprocess.run(
        [sys.executable, "-m", "taskschedctl.cli"], env=env, capture_output=True, text=True,
        timeout=20,
    )  # fmt: skip
    assert cp.returncode == 0, cp
    return [line.split(",", 1)[1] for line in cp.stdout.splitlines()]


def test_completion_of_commands_statuses_and_job_ids(ctl: CtlHarness) -> None:
    waiting = ctl.add(ECHO)
    failed = ctl.add(FAIL)
    ctl.run_jobs(max_jobs=2)
    again = ctl.add(ECHO)
    assert "purge" in _complete(ctl, "taskschedctl pu")
    assert _complete(ctl, "taskschedctl list --status fa") == ["failed"]
    assert set(_complete(ctl, "taskschedctl show ")) == {waiting, failed, again}
    assert _complete(ctl, "taskschedctl retry ") == [failed]
    assert _complete(ctl, "taskschedctl cancel ") == [again]


def test_help_lists_every_command_and_the_exit_codes(ctl: CtlHarness) -> None:
    res = ctl.proc("--help", store=False)
    assert res.code == 0
    for command in (
        "add", "list", "show", "cancel", "retry", "purge", "wait", "events", "stats", "nodes",
        "check", "completion",
    ):  # fmt: skip
        assert f"  {command} " in res.out
    assert "*/5 * * * *  taskschedctl -c /etc/taskschedd/taskschedd.yaml add --once" in res.out
    assert "124  wait timed out" in res.out
    res = ctl.run("add", "-h", store=False)
    assert "--wait[=TIMEOUT]" in res.out and "--once" in res.out


def test_version_and_unknown_command(ctl: CtlHarness) -> None:
    res = ctl.run("--version", store=False)
    assert res.code == 0 and taskschedd.__version__ in res.out
    res = ctl.run("frobnicate", store=False)
    assert res.code == 2 and "No such command 'frobnicate'" in res.err


def test_closed_pipe_is_not_a_traceback(ctl: CtlHarness) -> None:
    for n in range(200):
        ctl.add(ECHO, {"n": n})
    cmd = f"{sys.executable} -m taskschedctl.cli --store {ctl.url} list --jsonl | head -1"
    cp = subprocess.run(
        ["sh", "-c", cmd], env=clean_env(), capture_output=True, text=True, timeout=20
    )
    assert json.loads(cp.stdout)["class"] == ECHO
    assert "Traceback" not in cp.stderr and "Error" not in cp.stderr, cp.stderr


def test_python_m_taskschedctl_entry(ctl: CtlHarness) -> None:
    cp = subprocess.run(
        [sys.executable, "-m", "taskschedctl", "--store", ctl.url, "add", "--create", ECHO],
        env=clean_env(), capture_output=True, text=True, timeout=20,
    )  # fmt: skip
    assert cp.returncode == 0 and ctl.job(cp.stdout.strip()).cls == ECHO


def test_add_stays_light_for_cron(ctl: CtlHarness) -> None:
    """No MongoDB driver and no logging library are imported to add a job to SQLite."""
    code = (
        "import sys\n"
        "from taskschedctl.cli import run\n"
        f"assert run(['--store', {ctl.url!r}, 'add', '--create', {ECHO!r}]) == 0\n"
        "heavy = sorted(m for m in ('pymongo', 'structlog', 'yaml', 'asyncio') if m in sys.modules)\n"
        "print(heavy)\n"
    )
    cp = subprocess.run(
        [sys.executable, "-c", code], env=clean_env(), capture_output=True, text=True, timeout=20
    )
    assert cp.returncode == 0, cp
    assert cp.stdout.splitlines()[-1] == "[]"


def test_a_config_on_the_command_line_wins_over_the_store_in_the_environment(
    ctl: CtlHarness,
) -> None:
    job_id = ctl.add(ECHO)
    config = ctl.config(f"store: {ctl.url}\n")
    elsewhere = {"TASKSCHED_STORE": f"sqlite://{ctl.tmp}/other.db"}
    for args in (["-c", str(config), "list", "--json"], ["list", "--json", "-c", str(config)]):
        res = ctl.run(*args, env=elsewhere, store=False)
        assert res.code == 0 and json.loads(res.out)[0]["id"] == job_id, (args, res)
    res = ctl.run("list", env={**elsewhere, "TASKSCHED_CONFIG": str(config)}, store=False)
    # Only the start of the path: another test in this process may have made "other" a
    # remembered password, which every message masks.
    assert res.code == 69 and f"no store at {ctl.tmp}/" in res.err, res
