"""wait and events: exit codes, progress on a terminal, store outages, following live."""

from __future__ import annotations

import io
import json
import os
import pty
import queue
import select
import signal
import subprocess
import threading
import time
from typing import Any

import pytest

from taskschedctl import follow
from taskschedd.errors import StoreUnavailable, WaitTimeout
from taskschedd.model import JobQuery, JobRecord, JobStatus
from taskschedd.scheduler import Scheduler
from taskschedd.store.sqlite import SQLiteStore
from tests.ctl.harness import ECHO, FAIL, SLEEP, CtlHarness, wait_for

# -- wait -------------------------------------------------------------------------------------


def test_wait_exits_0_when_all_done(ctl: CtlHarness) -> None:
    ids = [ctl.add(ECHO, {"n": n}) for n in range(3)]
    with ctl.worker():
        res = ctl.proc("wait", *ids, "--timeout", "20s")
    assert res.code == 0, res
    assert res.out.splitlines() == [f'{i} DONE result={{"n":{n}}}' for n, i in enumerate(ids)]


def test_wait_exits_1_when_any_failed(ctl: CtlHarness) -> None:
    ok = ctl.add(ECHO)
    bad = ctl.add(FAIL, {"message": "no route to host"})
    with ctl.worker():
        res = ctl.proc("wait", ok, bad, "--json")
    assert res.code == 1, res
    assert [(j["id"], j["status"]) for j in json.loads(res.out)] == [(ok, "DONE"), (bad, "FAILED")]
    assert f"job {bad} ended FAILED: RuntimeError: no route to host" in res.err


def test_wait_exits_1_for_canceled_and_for_unknown_ids(ctl: CtlHarness) -> None:
    job_id = ctl.add(ECHO)
    ctl.sched().cancel_job(job_id)
    res = ctl.run("wait", job_id)
    assert res.code == 1 and f"job {job_id} ended CANCELED" in res.err, res
    res = ctl.run("wait", job_id, "nope")
    assert res.code == 1 and "no job with id 'nope'" in res.err, res


def test_wait_times_out_with_124(ctl: CtlHarness) -> None:
    job_id = ctl.add(ECHO)
    start = time.monotonic()
    res = ctl.proc("wait", job_id, "--timeout", "0.3")
    assert res.code == 124, res
    assert time.monotonic() - start < 5
    assert f"1 of 1 job(s) not final after 0.3s: {job_id}" in res.err
    res = ctl.run("wait", job_id, "--timeout", "soon")
    assert res.code == 2 and "Invalid value for '--timeout'" in res.err


def test_wait_draws_a_progress_bar_on_a_terminal(ctl: CtlHarness) -> None:
    ids = [ctl.add(SLEEP, {"seconds": 0.3}), ctl.add(ECHO)]
    master, slave = pty.openpty()
    with ctl.worker():
        proc = ctl.popen("wait", *ids, stdout=subprocess.PIPE, stderr=slave)
        os.close(slave)
        seen = b""
        try:
            out, _ = proc.communicate(timeout=20)
            while select.select([master], [], [], 0.1)[0]:
                try:
                    chunk = os.read(master, 4096)
                except OSError:
                    break
                if not chunk:
                    break
                seen += chunk
        finally:
            os.close(master)
    assert proc.returncode == 0, (out, seen)
    text = seen.decode()
    assert "[##############################] 100%  2/2 final" in text, text
    assert "\r" in text


class FlakyStore(SQLiteStore):
    """A store whose reads fail a few times, as during a failover."""

    def __init__(self, url: str, failures: int) -> None:
        super().__init__(url)
        self.failures = failures

    def find(self, query: JobQuery) -> list[JobRecord]:
        if self.failures > 0:
            self.failures -= 1
            raise StoreUnavailable("connection refused (failover in progress)")
        return super().find(query)


def test_wait_rides_out_a_briefly_unavailable_store(
    ctl: CtlHarness, monkeypatch: pytest.MonkeyPatch
) -> None:
    job_id = ctl.add(ECHO)
    ctl.run_jobs()
    err = io.StringIO()
    monkeypatch.setattr("sys.stderr", err)
    store = FlakyStore(ctl.url, failures=3)
    with Scheduler(store) as sched:
        (job,) = follow.wait_jobs(sched, [job_id], timeout=10)
    assert job.status == JobStatus.DONE and store.failures == 0
    assert err.getvalue().splitlines() == [
        "taskschedctl: store unavailable, retrying: connection refused (failover in progress)",
        "taskschedctl: store reachable again",
    ]


def test_wait_timeout_holds_during_an_outage(ctl: CtlHarness) -> None:
    job_id = ctl.add(ECHO)
    store = FlakyStore(ctl.url, failures=10**6)
    with Scheduler(store) as sched:
        start = time.monotonic()
        with pytest.raises(WaitTimeout):
            follow.wait_jobs(sched, [job_id], timeout=0.5)
    assert time.monotonic() - start < 3


# -- events -----------------------------------------------------------------------------------


def test_events_lists_the_past_with_filters(ctl: CtlHarness) -> None:
    a = ctl.add(ECHO)
    b = ctl.add(FAIL, queue="batch")
    ctl.run_jobs()
    res = ctl.proc("events", "--jsonl")
    assert res.code == 0, res
    docs = [json.loads(line) for line in res.out.splitlines()]
    assert [(d["job_id"], d["status"]) for d in docs] == [
        (a, "WAITING"), (b, "WAITING"), (a, "PROCESSING"), (a, "DONE"),
        (b, "PROCESSING"), (b, "FAILED"),
    ]  # fmt: skip
    assert docs[-1]["error"]["type"] == "RuntimeError"

    def statuses(*args: str) -> list[tuple[str, str]]:
        res = ctl.run("events", "--jsonl", *args)
        assert res.code == 0, res
        return [(d["job_id"], d["status"]) for d in map(json.loads, res.out.splitlines())]

    assert statuses("--job", b) == [(b, "WAITING"), (b, "PROCESSING"), (b, "FAILED")]
    assert statuses("--class", ECHO, "--status", "done") == [(a, "DONE")]
    assert statuses("--queue", "batch", "--status", "failed,waiting") == [
        (b, "WAITING"),
        (b, "FAILED"),
    ]
    assert statuses("-n", "2") == [(b, "PROCESSING"), (b, "FAILED")]
    assert statuses("--since", "1h") == statuses("-n", "0")
    assert len(statuses("-n", "0")) == 6
    assert statuses("--since", "2099-01-01") == []
    text = ctl.run("events", "--job", b).out.splitlines()
    assert text[-1].split()[1:4] == [b, "FAILED", "attempt=1"]
    assert "error=RuntimeError: this job always fails" in text[-1]


def test_events_bad_filters_exit_2(ctl: CtlHarness) -> None:
    ctl.add(ECHO)
    for args, message in [
        (["--status", "gone"], "unknown status 'gone'"),
        (["--since", "last week"], "Invalid value for '--since'"),
        (["-n", "x"], "Invalid value for '-n'"),
    ]:
        res = ctl.run("events", *args)
        assert res.code == 2 and message in res.err, (args, res)


def _lines(stream: Any) -> queue.Queue[str]:
    """Lines of a pipe, read by a thread, so the test can wait on them with a deadline."""
    lines: queue.Queue[str] = queue.Queue()

    def pump() -> None:
        for line in stream:
            lines.put(line)

    threading.Thread(target=pump, daemon=True).start()
    return lines


def test_events_follow_receives_new_events_and_exits_130_on_ctrl_c(ctl: CtlHarness) -> None:
    first = ctl.add(ECHO)
    proc = ctl.popen(
        "events", "--follow", "--jsonl", "--class", ECHO,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        lines = _lines(proc.stdout)
        assert json.loads(lines.get(timeout=10))["job_id"] == first  # the past, then live
        ctl.add(FAIL)  # filtered out
        second = ctl.add(ECHO)
        start = time.monotonic()
        event = json.loads(lines.get(timeout=10))
        assert (event["job_id"], event["status"]) == (second, "WAITING")
        assert time.monotonic() - start < 2  # woken up, not polled slowly
        proc.send_signal(signal.SIGINT)
        assert proc.wait(10) == 130
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.stderr is not None
    assert "Traceback" not in proc.stderr.read()


def test_events_follow_waits_for_the_first_event_of_an_empty_store(ctl: CtlHarness) -> None:
    ctl.store().last_event_seq()  # creates the empty store
    proc = ctl.popen("events", "-f", stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        lines = _lines(proc.stdout)
        wait_for(lambda: _listening(ctl), what="the follower to listen")
        job_id = ctl.add(ECHO)
        assert job_id in lines.get(timeout=10)
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(10) == 130


def _listening(ctl: CtlHarness) -> bool:
    """The follower registered its wake-up socket beside the database."""
    notify = ctl.path.parent / (ctl.path.name + "-notify")
    return notify.is_dir() and any(notify.iterdir())
