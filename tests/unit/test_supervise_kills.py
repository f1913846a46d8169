"""The master's kills of workers that claim ahead (taskschedd.supervise.Supervisor.kill).

A kill waits (at most KILL_HOLD) while the worker holds outcomes of jobs it ran and has
not stored yet; a timeout or cancel is meant for one job and is dropped if that job ended
meanwhile; stopping outranks both. A memory kill is SIGKILL at once, for what the job
added beyond its worker's memory at its start. The worker is a real process group (a
sleeping child) so the signals are real.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest
import structlog

from taskschedd import supervise
from taskschedd.children import HeldState, KillReason, RunningJob, WorkerHandle
from taskschedd.config import Config
from taskschedd.supervise import Supervisor
from tests.helpers import wait_for

NO_STORE: Any = None  # a kill never reaches the store
MIB = 1 << 20


def job(token: str, state: HeldState = HeldState.RUNNING) -> RunningJob:
    return RunningJob(
        id=f"id-{token}", token=token, cls="x.Y", attempt=1, queue="default", timeout=0.0,
        started=time.time(), state=state,
    )  # fmt: skip


@pytest.fixture
def group() -> Iterator[subprocess.Popen[bytes]]:
    """A process in its own group, standing in for a worker."""
    proc = subprocess.Popen(["sleep", "30"], start_new_session=True)
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait()


@pytest.fixture
def worker(group: subprocess.Popen[bytes]) -> WorkerHandle:
    now = time.monotonic()
    return WorkerHandle(
        pid=group.pid, name=f"n/{group.pid}", report_fd=-1, control_fd=-1, extra=False,
        spawned=now, idle_since=now, ready=True,
    )  # fmt: skip


def supervisor(w: WorkerHandle) -> Supervisor:
    return Supervisor(Config(), {w.pid: w}, structlog.get_logger("test"), store=NO_STORE)


def test_a_kill_waits_while_the_worker_holds_outcomes_of_jobs_it_ran(
    worker: WorkerHandle, group: subprocess.Popen[bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(supervise, "KILL_HOLD", 0.3)
    sup = supervisor(worker)
    worker.job = job("b")
    worker.held["a"] = job("a", state=HeldState.RAN)
    sup.kill(worker, KillReason.CANCEL)
    assert worker.kill is None and worker.kill_wanted is not None
    assert group.poll() is None  # no signal yet
    sup.escalate(time.monotonic())
    assert worker.kill is None  # still within KILL_HOLD
    del worker.held["a"]  # the worker reported that outcome stored
    sup.escalate(time.monotonic())
    assert worker.kill is not None and worker.kill.reason is KillReason.CANCEL
    assert worker.kill.token == "b"
    assert group.wait(5) == -signal.SIGTERM


def test_a_kill_held_too_long_goes_ahead_after_kill_hold(
    worker: WorkerHandle, group: subprocess.Popen[bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(supervise, "KILL_HOLD", 0.2)
    sup = supervisor(worker)
    worker.job = job("b")
    worker.held["a"] = job("a", state=HeldState.RAN)
    sup.kill(worker, KillReason.TIMEOUT)
    started = time.monotonic()

    def killed() -> bool:
        sup.escalate(time.monotonic())
        return worker.kill is not None

    wait_for(killed, 5)
    assert time.monotonic() - started >= 0.2
    assert group.wait(5) == -signal.SIGTERM


def test_a_cancel_whose_job_ended_meanwhile_kills_nothing(
    worker: WorkerHandle, group: subprocess.Popen[bytes]
) -> None:
    sup = supervisor(worker)
    worker.job = job("a")
    worker.held["z"] = job("z", state=HeldState.RAN)
    sup.kill(worker, KillReason.CANCEL)  # meant for job a
    worker.held["a"] = job("a", state=HeldState.RAN)
    worker.job = job("b")  # a ended, b started: the cancel must not hit b
    sup.escalate(time.monotonic())
    assert worker.kill is None and worker.kill_wanted is None
    assert group.poll() is None


def test_stopping_outranks_a_pending_cancel(
    worker: WorkerHandle, group: subprocess.Popen[bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(supervise, "KILL_HOLD", 0.0)
    sup = supervisor(worker)
    worker.job = job("a")
    worker.held["z"] = job("z", state=HeldState.RAN)
    monkeypatch.setattr(supervise, "KILL_HOLD", 60.0)
    sup.kill(worker, KillReason.CANCEL)
    sup.kill(worker, KillReason.RELEASE)  # stop now
    worker.job = job("b")  # the cancelled job ended; stopping still applies
    worker.held.clear()
    sup.escalate(time.monotonic())
    assert worker.kill is not None and worker.kill.reason is KillReason.RELEASE
    assert worker.kill.token is None
    # Stopping interrupts the worker (SIGINT): it gives its job back itself, after it
    # stored what ran (a SIGTERM could cut a job that had ended before its outcome).
    assert group.wait(5) == -signal.SIGINT


@pytest.fixture
def stubborn() -> Iterator[subprocess.Popen[bytes]]:
    """A process in its own group that ignores SIGTERM, standing in for a worker whose job
    does."""
    code = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(30)"
    proc = subprocess.Popen([sys.executable, "-c", code], start_new_session=True)
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait()


def test_a_job_over_its_memory_limit_gets_sigkill_at_once_for_what_it_added(
    stubborn: subprocess.Popen[bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    now = time.monotonic()
    w = WorkerHandle(
        pid=stubborn.pid, name=f"n/{stubborn.pid}", report_fd=-1, control_fd=-1, extra=False,
        spawned=now, idle_since=now, ready=True,
    )  # fmt: skip
    time.sleep(0.2)  # let it install its SIGTERM handler
    sup = Supervisor(Config(kill_grace=5.0), {w.pid: w}, structlog.get_logger("test"),
                     store=NO_STORE)  # fmt: skip
    w.job = job("b")
    w.job.max_memory, w.job.memory_base = 150, 225 * MIB  # an earlier job's cache in it
    group = {w.pid: 300 * MIB}
    monkeypatch.setattr(supervise.memwatch, "group_rss", lambda pgids: group)
    sup.enforce_memory(0.0)  # 75 MiB added: under its 150 MiB
    assert w.kill is None and stubborn.poll() is None
    group[w.pid] = 400 * MIB
    sup.enforce_memory(0.1)  # within MEMORY_POLL of the last sample: not sampled
    assert w.kill is None
    sup.enforce_memory(1.0)  # 175 MiB added
    assert w.kill is not None and w.kill.reason is KillReason.MEMORY and w.kill.hard
    assert stubborn.wait(2) == -signal.SIGKILL  # no SIGTERM grace to grow in
    assert (w.job.memory_used, w.job.memory_limit) == (175 * MIB, 150 * MIB)


def test_a_memory_kill_that_waited_for_stored_outcomes_names_the_most_measured(
    stubborn: subprocess.Popen[bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(supervise, "KILL_HOLD", 0.3)
    now = time.monotonic()
    w = WorkerHandle(
        pid=stubborn.pid, name=f"n/{stubborn.pid}", report_fd=-1, control_fd=-1, extra=False,
        spawned=now, idle_since=now, ready=True,
    )  # fmt: skip
    sup = Supervisor(Config(max_job_memory=100), {w.pid: w}, structlog.get_logger("test"),
                     store=NO_STORE)  # fmt: skip
    w.job = job("b")
    w.held["a"] = job("a", state=HeldState.RAN)
    group = {w.pid: 120 * MIB}
    monkeypatch.setattr(supervise.memwatch, "group_rss", lambda pgids: group)
    sup.enforce_memory(0.0)
    assert w.kill is None and w.kill_wanted is not None  # waits for "a" to be stored
    group[w.pid] = 180 * MIB  # it grew meanwhile
    wait_for(lambda: time.monotonic() >= w.kill_wanted.until if w.kill_wanted else True, 5)
    sup.escalate(time.monotonic())
    assert w.kill is not None and w.kill.hard
    assert stubborn.wait(2) == -signal.SIGKILL
    assert w.job.memory_used == 180 * MIB
