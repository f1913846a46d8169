"""taskschedctl add: every option lands in the store; bad input exits 2 and writes nothing."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime

import pytest

from taskschedd.model import JobStatus
from tests.ctl.harness import ALLOWED, ECHO, FAIL, CtlHarness


def test_add_through_the_real_entry_point_prints_the_id(ctl: CtlHarness) -> None:
    res = ctl.proc("add", ECHO, '{"x": 1}')
    assert res.code == 0, res
    job_id = res.out.strip()
    job = ctl.job(job_id)
    assert (job.cls, job.data, job.status) == (ECHO, {"x": 1}, JobStatus.WAITING)
    # only warnings: no configuration to check the class against, no live node
    assert all(line.startswith("taskschedctl: warning: ") for line in res.err.splitlines()), res


def test_add_without_data_stores_an_empty_object_and_json_prints_the_job(ctl: CtlHarness) -> None:
    res = ctl.run("add", ECHO, "--json")
    assert res.code == 0, res
    doc = json.loads(res.out)
    assert doc["class"] == ECHO and doc["status"] == "WAITING" and doc["data"] == {}
    assert ctl.job(doc["id"]).data == {}


def test_add_data_from_a_file_and_from_stdin(ctl: CtlHarness) -> None:
    (ctl.tmp / "data.json").write_text('{"to": "a@example.org"}')
    res = ctl.run("add", ECHO, f"@{ctl.tmp / 'data.json'}")
    assert ctl.job(res.out.strip()).data == {"to": "a@example.org"}
    res = ctl.proc("add", ECHO, "-", input="[1, 2, 3]")
    assert res.code == 0, res
    assert ctl.job(res.out.strip()).data == [1, 2, 3]


def test_add_every_scheduling_option(ctl: CtlHarness) -> None:
    res = ctl.run(
        "add", ECHO, "{}",
        "--at", "2099-01-31T08:00:00Z",
        "--retry", "3", "--retry-interval", "90s",
        "--backoff", "exponential", "--backoff-max", "1h",
        "--timeout", "5m", "--priority", "7", "--queue", "critical",
        "--id", "report-2099", "--expires", "2099-02-01T00:00:00Z",
        "--ignore-max-children",
    )  # fmt: skip
    assert res.code == 0, res
    assert res.out.strip() == "report-2099"
    job = ctl.job("report-2099")
    at = datetime(2099, 1, 31, 8, tzinfo=UTC).timestamp()
    assert job.at == at and job.status == JobStatus.POSTPONED
    opts = job.options
    assert (opts.retry, opts.retry_interval, opts.retry_backoff) == (3, 90.0, "exponential")
    assert (opts.retry_backoff_max, opts.timeout) == (3600.0, 300.0)
    assert (job.priority, job.queue, opts.ignore_max_children) == (7, "critical", True)
    assert opts.expires == datetime(2099, 2, 1, tzinfo=UTC).timestamp()


def test_add_in_interval_and_cron(ctl: CtlHarness) -> None:
    before = time.time()
    job = ctl.job(ctl.run("add", ECHO, "--in", "10m").out.strip())
    assert before + 600 <= job.at <= time.time() + 600
    job = ctl.job(
        ctl.run("add", ECHO, "--interval", "1h", "--interval-reference", "start").out.strip()
    )
    assert (job.options.interval, job.options.interval_reference) == (3600.0, "start")
    job = ctl.job(ctl.run("add", ECHO, "--cron", "*/5 * * * *").out.strip())
    assert job.options.cron == "*/5 * * * *" and job.options.interval == 0
    job = ctl.job(ctl.run("add", ECHO, "--at", "4102444800").out.strip())
    assert job.at == 4102444800.0
    job = ctl.job(ctl.run("add", ECHO, "--expires", "2h").out.strip())
    assert job.options.expires is not None and job.options.expires > time.time() + 7000


def test_add_once_returns_the_same_job_for_overlapping_calls(ctl: CtlHarness) -> None:
    first = ctl.proc("add", "--once", ECHO, '{"n": 1}')
    second = ctl.run("add", ECHO, '{"n": 1}', "--once")
    other = ctl.run("add", ECHO, '{"n": 2}', "--once")
    assert first.code == second.code == other.code == 0
    assert first.out == second.out != other.out
    ignore = ctl.run("add", ECHO, '{"n": 3}', "--once", "--ignore-data")
    again = ctl.run("add", ECHO, '{"n": 4}', "--once", "--ignore-data")
    assert ignore.out == again.out
    assert len(ctl.jobs()) == 3


def test_add_wait_waits_for_the_outcome(ctl: CtlHarness) -> None:
    with ctl.worker():
        ok = ctl.proc("add", ECHO, '{"a": 1}', "--wait")
        bad = ctl.proc("add", "--wait=30s", FAIL, '{"message": "boom"}')
        as_json = ctl.proc("add", ECHO, "[5]", "--wait", "--json")
    assert ok.code == 0, ok
    job_id, outcome = ok.out.splitlines()  # the id at once, the outcome at the end
    assert ctl.job(job_id).status == JobStatus.DONE
    assert outcome == f'{job_id} DONE result={{"a":1}}'
    assert bad.code == 1, bad
    assert "ended FAILED: RuntimeError: boom" in bad.err
    assert as_json.code == 0, as_json
    assert json.loads(as_json.out)["result"] == [5]


def test_add_wait_times_out_with_124(ctl: CtlHarness) -> None:
    res = ctl.run("add", ECHO, "--wait=0.2s")
    assert res.code == 124, res
    assert "not final after 0.2s" in res.err
    assert len(ctl.jobs()) == 1  # the job itself stays queued


def test_add_checks_allowed_modules_of_the_config(ctl: CtlHarness) -> None:
    config = ctl.config(f"store: {ctl.url}\nallowed_modules: [{ALLOWED[0]}]\n")
    res = ctl.proc("-c", str(config), "add", "myapp.jobs.SendMail", store=False)
    assert res.code == 2, res
    assert "module 'myapp.jobs' is not in allowed_modules (taskschedd.examples)" in res.err
    assert str(config) in res.err and "Traceback" not in res.err
    assert ctl.jobs() == []
    res = ctl.run("add", "--create", ECHO, env={"TASKSCHED_CONFIG": str(config)}, store=False)
    assert res.code == 0, res
    assert ctl.job(res.out.strip()).cls == ECHO


def test_add_applies_job_defaults_of_the_config(ctl: CtlHarness) -> None:
    config = ctl.config(f"store: {ctl.url}\njob_defaults: {{retry: 4, queue: batch}}\n")
    res = ctl.run("add", "--create", ECHO, "-c", str(config), store=False)
    job = ctl.job(res.out.strip())
    assert (job.options.retry, job.queue) == (4, "batch")


def test_add_takes_every_job_default_of_the_config(ctl: CtlHarness) -> None:
    """cron, retry_backoff_max and ignore_max_children were refused in job_defaults while
    Scheduler(**defaults) took them (tests/e2e/test_daemon_job_defaults.py runs such a job)."""
    config = ctl.config(
        f"store: {ctl.url}\n"
        "job_defaults: {cron: '*/5 * * * *', retry_backoff_max: 2h, force_spawn: true}\n"
    )
    res = ctl.proc("-c", str(config), "add", "--create", ECHO, "--json", store=False)
    assert res.code == 0, res
    job = ctl.job(json.loads(res.out)["id"])
    opts = job.options
    assert (opts.cron, opts.retry_backoff_max, opts.ignore_max_children) == (
        "*/5 * * * *",
        7200.0,
        True,
    )
    assert job.status == JobStatus.POSTPONED and job.at is not None and job.at % 300 == 0


def test_add_accepts_store_options_after_the_command(ctl: CtlHarness) -> None:
    res = ctl.run("add", "--create", ECHO, "--store", ctl.url, store=False)
    assert res.code == 0, res
    assert ctl.job(res.out.strip()).cls == ECHO


BAD_INPUT = [
    (["add", ECHO, "{"], "DATA is not valid JSON"),
    (["add", ECHO, "{'a': 1}"], "DATA is not valid JSON"),
    (["add", ECHO, "@/nonexistent/data.json"], "cannot read DATA file '/nonexistent/data.json'"),
    (["add", "SendMail"], "job class 'SendMail' is not valid: expected a dotted path"),
    (["add", "my-app.jobs.X"], "job class 'my-app.jobs.X' is not valid"),
    (["add", ECHO, "--in", "10 minutes"], "Invalid value for '--in': expected a number of"),
    (["add", ECHO, "--timeout", "-5"], "Invalid value for '--timeout'"),
    (["add", ECHO, "--retry-interval", "soon"], "Invalid value for '--retry-interval'"),
    (["add", ECHO, "--at", "tomorrow"], "Invalid value for '--at': expected an ISO 8601 time"),
    (["add", ECHO, "--at", "2026-13-45"], "Invalid value for '--at'"),
    (["add", ECHO, "--expires", "never"], "Invalid value for '--expires'"),
    (["add", ECHO, "--wait=forever"], "Invalid value for '--wait'"),
    (["add", ECHO, "--retry", "x"], "Invalid value for '--retry'"),
    (["add", ECHO, "--retry", "-2"], "Invalid value for '--retry'"),
    (["add", ECHO, "--priority", "high"], "Invalid value for '--priority'"),
    (["add", ECHO, "--backoff", "linear"], "Invalid value for '--backoff'"),
    (["add", ECHO, "--queue", "bad queue"], "option 'queue': expected a queue name"),
    (["add", ECHO, "--id", "a/b"], "option 'id'"),
    (["add", ECHO, "--cron", "61 * * * *"], "cron"),
    (["add", ECHO, "--cron", "* * * * *", "--interval", "5m"], "--cron and --interval exclude"),
    (["add", ECHO, "--at", "2099-01-01", "--in", "5m"], "--at and --in exclude each other"),
    (["add", ECHO, "--ignore-data"], "--ignore-data only applies to --once"),
    (
        ["add", ECHO, "--backoff", "exponential", "--retry-interval", "1h", "--backoff-max", "1m"],
        "'retry_backoff_max' must be >= 'retry_interval'",
    ),
    (["add", ECHO, "--at", "2099-01-02", "--expires", "2099-01-01"], "'expires' must be later"),
    (["add", ECHO, "--frobnicate"], "No such option '--frobnicate'"),
    (["add"], "Missing argument 'CLASS'"),
]


@pytest.mark.parametrize(
    ("args", "message"), BAD_INPUT, ids=[" ".join(a[2:]) or "none" for a, _ in BAD_INPUT]
)
def test_bad_input_exits_2_and_writes_nothing(
    ctl: CtlHarness, args: list[str], message: str
) -> None:
    existing = ctl.add(ECHO, {"keep": True})
    res = ctl.run(*args)
    assert res.code == 2, res
    assert message in res.err, res
    assert "Traceback" not in res.err and res.out == ""
    assert [j.id for j in ctl.jobs()] == [existing]


def test_bad_input_through_the_real_entry_point(ctl: CtlHarness) -> None:
    res = ctl.proc("add", ECHO, "not json")
    assert res.code == 2 and "DATA is not valid JSON" in res.err, res
    res = ctl.proc("add", "nodots")
    assert res.code == 2 and "taskschedctl: error: job class 'nodots' is not valid" in res.err
    assert not ctl.path.exists()  # nothing was even created


def test_add_unreadable_data_file_is_a_directory(ctl: CtlHarness) -> None:
    res = ctl.run("add", ECHO, f"@{ctl.tmp}")
    assert res.code == 2 and "cannot read DATA file" in res.err, res
    assert ctl.jobs() == []


def test_duplicate_id_exits_2(ctl: CtlHarness) -> None:
    ctl.add(ECHO, None, id="nightly")
    res = ctl.run("add", ECHO, "--id", "nightly")
    assert res.code == 2, res
    assert "a job with id 'nightly' already exists" in res.err
    assert len(ctl.jobs()) == 1


def test_add_a_cron_series_in_a_time_zone(ctl: CtlHarness) -> None:
    """--timezone: the first run is the zone's next 07:00, and show prints it there."""
    from zoneinfo import ZoneInfo

    res = ctl.proc("add", ECHO, "--cron", "0 7 * * *", "--timezone", "America/New_York")
    assert res.code == 0, res
    job = ctl.job(res.out.strip())
    local = datetime.fromtimestamp(job.at, ZoneInfo("America/New_York"))
    assert (local.hour, local.minute, job.options.timezone) == (7, 0, "America/New_York")
    assert 0 < job.at - time.time() <= 86400
    shown = ctl.proc("show", job.id)
    assert f"{local:%Y-%m-%d %H:%M} E" in shown.out and "America/New_York)" in shown.out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--timezone", "Europe/Zurich"), "option 'timezone' says which wall clock 'cron'"),
        (("--cron", "@daily", "--timezone", "Europe/Zürich"), "IANA time zone name"),
        (("--cron", "@daily", "--timezone", "Mars/Base"), "like 'Europe/Zurich'"),
    ],
)
def test_add_refuses_a_time_zone_it_cannot_use(
    ctl: CtlHarness, args: tuple[str, ...], message: str
) -> None:
    res = ctl.proc("add", ECHO, *args)
    assert res.code == 2 and message in res.err and "Traceback" not in res.err, res
    assert ctl.jobs() == []
