"""The master's kills of workers that claim ahead (taskschedd.supervise.Supervisor.kill).

A kill waits (at most KILL_HOLD) while the worker holds outcomes of jobs it ran and has
not stored yet; a timeout or cancel is meant for one job and is dropped if that job ended
meanwhile; stopping outranks both. The worker is a real process group (a sleeping child)
so the SIGTERM is real.
"""

from __future__ import annotations

import signal
import subprocess
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
    assert group.wait(5) == -signal.SIGTERM
