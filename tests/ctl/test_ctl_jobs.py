"""list, show, cancel, retry and purge against a real store."""

from __future__ import annotations

import contextlib
import json
import os
import pty
import select
import subprocess
import sys
import time

from taskschedd.model import JobStatus
from tests.ctl.harness import ECHO, FAIL, CtlHarness, clean_env, wait_for

# -- list ---------------------------------------------------------------------------------


def test_list_shows_an_aligned_table_of_active_jobs(ctl: CtlHarness) -> None:
    done = ctl.add(ECHO, {"n": 0})
    ctl.run_jobs()
    waiting = ctl.add(ECHO, {"n": 1}, queue="critical", priority=5)
    later = ctl.add(FAIL, None, at=time.time() + 3600)
    res = ctl.proc("list")
    assert res.code == 0, res
    lines = res.out.splitlines()
    assert lines[0].split() == [
        "ID", "CLASS", "STATUS", "QUEUE", "PRIO", "ATTEMPT", "PROGRESS", "AT/ENDED"
    ]  # fmt: skip
    assert [line.split()[0] for line in lines[1:]] == [waiting, later]  # newest last
    assert done not in res.out
    assert lines[1].split()[1:5] == [ECHO, "WAITING", "critical", "5"]
    assert lines[2].split()[2] == "POSTPONED" and lines[2].endswith("in 59m59s")
    # aligned: every column starts at the same offset on every line
    assert len({line.index(line.split()[2]) for line in lines}) == 1


def test_list_filters_and_json(ctl: CtlHarness) -> None:
    a = ctl.add(ECHO, {"n": 1})
    b = ctl.add(FAIL, {"n": 2}, queue="batch")
    ctl.run_jobs()
    c = ctl.add(ECHO, {"n": 3}, queue="batch")

    def ids(*args: str) -> list[str]:
        res = ctl.run("list", "--json", *args)
        assert res.code == 0, res
        return [j["id"] for j in json.loads(res.out)]

    assert ids() == [c]
    assert ids("--all") == [a, b, c]
    assert ids("--status", "all") == [a, b, c]
    assert ids("--status", "done") == [a]
    assert ids("--status", "failed", "--status", "waiting") == [b, c]
    assert ids("--status", "DONE,failed") == [a, b]
    assert ids("--all", "--class", FAIL) == [b]
    assert ids("--all", "--queue", "batch") == [b, c]
    assert ids("--all", "--limit", "2") == [b, c]
    assert ids("--all", "--since", "1h") == [a, b, c]
    assert ids("--all", "--since", "2099-01-01T00:00:00Z") == []
    res = ctl.run("list", "--all", "--jsonl")
    docs = [json.loads(line) for line in res.out.splitlines()]
    assert [(d["id"], d["status"]) for d in docs] == [(a, "DONE"), (b, "FAILED"), (c, "WAITING")]


def test_list_says_when_the_limit_cut_the_list(ctl: CtlHarness) -> None:
    for _ in range(3):
        ctl.add(ECHO)
    res = ctl.run("list", "--limit", "2")
    assert res.code == 0 and len(res.out.splitlines()) == 3
    assert "the newest 2 jobs; --limit 0 shows all" in res.err


def test_list_bad_filters_exit_2(ctl: CtlHarness) -> None:
    ctl.add(ECHO)
    for args, message in [
        (["--status", "finished"], "unknown status 'finished'; accepted: waiting"),
        (["--since", "yesterday"], "Invalid value for '--since'"),
        (["--limit", "-1"], "Invalid value for '--limit'"),
        (["--all", "--status", "done"], "--all and --status exclude each other"),
        (["--class", "not a class"], "job class 'not a class' is not valid"),
    ]:
        res = ctl.run("list", *args)
        assert res.code == 2, (args, res)
        assert message in res.err, (args, res)


def test_list_on_a_missing_store_file_exits_69_and_creates_nothing(ctl: CtlHarness) -> None:
    res = ctl.run("list")
    assert res.code == 69, res
    assert f"no store at {ctl.path}" in res.err and "--create" in res.err
    assert not ctl.path.exists()


# -- show -----------------------------------------------------------------------------------


def test_show_prints_every_field_errors_and_events(ctl: CtlHarness) -> None:
    job_id = ctl.add(FAIL, {"message": "disk full"}, retry=1, retry_interval=0)
    ctl.run_jobs()
    res = ctl.proc("show", job_id)
    assert res.code == 0, res
    out = res.out
    for text in (
        f"id:          {job_id}",
        f"class:       {FAIL}",
        "status:      FAILED",
        "attempt:     2",
        '"message": "disk full"',
        "retry: 1",
        "errors: 2",
        "attempt 1 at ",
        "[exception]: RuntimeError: disk full",
        "        Traceback (most recent call last):",
        "events: ",
        "POSTPONED  attempt=1" if "POSTPONED" in out else "WAITING    attempt=1",
        "FAILED     attempt=2",
    ):
        assert text in out, (text, out)


def test_show_json_has_the_job_and_its_events(ctl: CtlHarness) -> None:
    job_id = ctl.add(ECHO, {"x": 1})
    ctl.run_jobs()
    res = ctl.run("show", job_id, "--json")
    doc = json.loads(res.out)
    assert doc["id"] == job_id and doc["status"] == "DONE" and doc["result"] == {"x": 1}
    assert [e["status"] for e in doc["events"]] == ["WAITING", "PROCESSING", "DONE"]


def test_show_unknown_id_exits_1(ctl: CtlHarness) -> None:
    ctl.add(ECHO)
    res = ctl.proc("show", "nope")
    assert res.code == 1, res
    assert res.err == (
        "taskschedctl: error: no job with id 'nope'; list jobs with 'taskschedctl list --all'\n"
    )


# -- cancel / retry -------------------------------------------------------------------------


def test_cancel_waiting_and_final_jobs(ctl: CtlHarness) -> None:
    done = ctl.add(ECHO)
    ctl.run_jobs()
    waiting = ctl.add(ECHO)
    res = ctl.proc("cancel", waiting, done)
    assert res.code == 0, res
    assert res.out.splitlines() == [f"{waiting} CANCELED", f"{done} already DONE: not changed"]
    assert ctl.job(waiting).status == JobStatus.CANCELED
    assert ctl.job(done).status == JobStatus.DONE


def test_cancel_running_job_requests_it(ctl: CtlHarness) -> None:
    job_id = ctl.add(ECHO)
    store = ctl.store()
    claimed = store.claim(
        ["default"], node="n1", worker="w1", token="t1", lease=30, now=time.time()
    )
    assert claimed is not None and claimed.id == job_id
    res = ctl.run("cancel", job_id, "--json")
    assert res.code == 0, res
    (doc,) = json.loads(res.out)
    assert doc["status"] == "PROCESSING" and doc["cancel_requested"] is True
    assert "cancel requested: running on n1" in ctl.run("cancel", job_id).out


def test_cancel_unknown_id_exits_1_but_cancels_the_others(ctl: CtlHarness) -> None:
    job_id = ctl.add(ECHO)
    res = ctl.run("cancel", "nope", job_id)
    assert res.code == 1, res
    assert "taskschedctl: error: no job with id 'nope'" in res.err
    assert ctl.job(job_id).status == JobStatus.CANCELED
    assert len(ctl.jobs()) == 1


def test_retry_requeues_failed_and_canceled_jobs(ctl: CtlHarness) -> None:
    failed = ctl.add(FAIL)
    ctl.run_jobs()
    canceled = ctl.add(ECHO)
    ctl.sched().cancel_job(canceled)
    res = ctl.proc("retry", failed, canceled)
    assert res.code == 0, res
    assert res.out.splitlines() == [
        f"{failed} WAITING (re-queued)",
        f"{canceled} WAITING (re-queued)",
    ]
    assert ctl.job(failed).status == ctl.job(canceled).status == JobStatus.WAITING
    assert ctl.job(failed).attempt == 0


def test_retry_refuses_jobs_that_are_not_failed_and_unknown_ids(ctl: CtlHarness) -> None:
    waiting = ctl.add(ECHO)
    res = ctl.run("retry", waiting, "nope", "--json")
    assert res.code == 1, res
    assert f"job {waiting} is WAITING; only FAILED, TIMEOUT or CANCELED" in res.err
    assert "no job with id 'nope'" in res.err
    assert json.loads(res.out) == []
    assert ctl.job(waiting).status == JobStatus.WAITING and ctl.job(waiting).reason is None


# -- purge ------------------------------------------------------------------------------------


def _final_jobs(ctl: CtlHarness) -> tuple[str, str, str]:
    done = ctl.add(ECHO)
    failed = ctl.add(FAIL)
    ctl.run_jobs()
    waiting = ctl.add(ECHO)
    return done, failed, waiting


def test_purge_with_yes_deletes_final_jobs_and_prints_the_count(ctl: CtlHarness) -> None:
    done, _, waiting = _final_jobs(ctl)
    res = ctl.proc("purge", "--older-than", "1h", "--yes")
    assert (res.code, res.out) == (0, "purged 0 jobs\n"), res
    res = ctl.run("purge", "--status", "failed", "--older-than", "0", "-y", "--json")
    assert res.code == 0 and json.loads(res.out) == {"purged": 1}, res
    assert {j.id for j in ctl.jobs()} == {done, waiting}
    res = ctl.run("purge", "--older-than", "0", "--yes")
    assert res.out == "purged 1 job\n"
    assert [j.id for j in ctl.jobs()] == [waiting]


def test_purge_refuses_without_a_terminal_to_confirm(ctl: CtlHarness) -> None:
    _final_jobs(ctl)
    res = ctl.proc("purge", "--older-than", "0")
    assert res.code == 2, res
    assert "refusing to purge without confirmation: stdin is not a terminal; add --yes" in res.err
    assert len(ctl.jobs()) == 3


def test_purge_bad_options_exit_2(ctl: CtlHarness) -> None:
    _final_jobs(ctl)
    for args, message in [
        (["--older-than", "0", "--status", "waiting", "--yes"], "only final jobs can be purged"),
        (["--older-than", "a week", "--yes"], "Invalid value for '--older-than'"),
        (["--yes"], "Missing option '--older-than'"),
    ]:
        res = ctl.run("purge", *args)
        assert res.code == 2 and message in res.err, (args, res)
    assert len(ctl.jobs()) == 3


def _purge_on_a_terminal(ctl: CtlHarness, answer: bytes) -> tuple[int, str]:
    """Run purge with a pseudo-terminal as stdin/stdout/stderr and answer its question."""
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "taskschedctl.cli", "--store", ctl.url, "purge", "--older-than", "0"],
        stdin=slave, stdout=slave, stderr=slave, env=clean_env(), cwd=ctl.tmp,
    )  # fmt: skip
    os.close(slave)
    seen = b""

    def read() -> bytes:
        nonlocal seen
        if select.select([master], [], [], 0.05)[0]:
            with contextlib.suppress(OSError):  # EIO: the child closed the terminal
                seen += os.read(master, 4096)
        return seen

    try:
        wait_for(lambda: b"[y/N]" in read(), what="the confirmation question")
        os.write(master, answer)
        code = proc.wait(10)
        read()
    finally:
        os.close(master)
    return code, seen.decode(errors="replace")


def test_purge_asks_on_a_terminal(ctl: CtlHarness) -> None:
    _final_jobs(ctl)
    code, text = _purge_on_a_terminal(ctl, b"n\n")
    assert code == 1, text
    assert "Delete DONE, FAILED, CANCELED, TIMEOUT jobs that ended more than 0s ago" in text
    assert "nothing purged" in text and len(ctl.jobs()) == 3
    code, text = _purge_on_a_terminal(ctl, b"y\n")
    assert code == 0 and "purged 2 jobs" in text, text
    assert len(ctl.jobs()) == 1
