"""The worker pool: pm modes grow and shrink, extra workers, dead workers, crash loops."""

from __future__ import annotations

import itertools
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

from taskschedd import JobStatus, Scheduler
from tests.e2e.conftest import BOTH_STORES, JOBS, Daemon, cmdline, pid_gone
from tests.helpers import wait_for

pytestmark = BOTH_STORES


def worker_pid(worker: str | None) -> int:
    assert worker is not None
    return int(worker.rsplit("/", 1)[1])


def wait_heartbeat_after(d: Daemon, moment: float, timeout: float = 5.0) -> None:
    """Wait until the daemon's loop has demonstrably run past ``moment`` (wall clock)."""
    wait_for(lambda: (n := d.node()) is not None and n.heartbeat > moment, timeout)


def test_static_keeps_min_children_busy_or_idle(
    daemon_factory: Callable[..., Daemon], scheduler: Scheduler
) -> None:
    d = daemon_factory(pm="static", min_children=2, max_children=4, idle_timeout="0.2s").start()
    pids = d.wait_workers(2)
    jobs = [scheduler.add_job(f"{JOBS}.Sleep", {"seconds": 0.3}) for _ in range(4)]
    done = scheduler.wait([j.id for j in jobs], timeout=10)
    assert {worker_pid(j.record.worker) for j in done} <= set(pids)  # never more than 2
    wait_heartbeat_after(d, time.time() + 0.6)  # three idle timeouts later
    assert d.workers() == pids


def test_dynamic_grows_to_max_children_and_shrinks_back_after_idle_timeout(
    daemon_factory: Callable[..., Daemon], scheduler: Scheduler
) -> None:
    d = daemon_factory(pm="dynamic", min_children=1, max_children=3, idle_timeout="0.3s").start()
    d.wait_workers(1)
    jobs = [scheduler.add_job(f"{JOBS}.Sleep", {"seconds": 1.5}) for _ in range(4)]
    d.wait_workers(3)
    wait_for(
        lambda: sum(j.refresh().status == JobStatus.PROCESSING for j in jobs) == 3,
        5,
        message="three jobs running at once",
    )
    scheduler.wait([j.id for j in jobs], timeout=15)
    d.wait_workers(1, timeout=5)


def test_ondemand_starts_no_worker_until_a_job_is_due_and_shrinks_to_none(
    daemon_factory: Callable[..., Daemon], scheduler: Scheduler
) -> None:
    d = daemon_factory(pm="ondemand", min_children=0, max_children=2, idle_timeout="0.3s").start()
    assert d.workers() == []
    job = scheduler.add_job(f"{JOBS}.WhoAmI").wait(10)
    assert job.status == JobStatus.DONE
    d.wait_workers(0, timeout=5)
    later = scheduler.add_job(f"{JOBS}.WhoAmI", at=time.time() + 0.5).wait(10)
    assert later.status == JobStatus.DONE  # spawned when it became due


def test_ignore_max_children_gets_an_extra_worker(
    daemon_factory: Callable[..., Daemon], scheduler: Scheduler
) -> None:
    d = daemon_factory(pm="static", min_children=1, max_children=1).start()
    (regular,) = d.wait_workers(1)
    busy = scheduler.add_job(f"{JOBS}.Sleep", {"seconds": 30})
    wait_for(lambda: busy.refresh().status == JobStatus.PROCESSING, 5)
    normal = scheduler.add_job(f"{JOBS}.WhoAmI")
    extra = scheduler.add_job(f"{JOBS}.WhoAmI", ignore_max_children=True).wait(10)
    assert extra.status == JobStatus.DONE
    assert extra.result["pid"] != regular
    assert busy.refresh().status == JobStatus.PROCESSING
    assert normal.refresh().status == JobStatus.WAITING  # the pool itself stays at max
    wait_for(lambda: pid_gone(extra.result["pid"]), 5, message="the extra worker to exit")
    assert d.workers() == [regular]


AT_ONCE = 5.0


def test_sigkill_of_a_worker_settles_its_job_and_replaces_it_at_once(
    daemon_factory: Callable[..., Daemon], scheduler: Scheduler
) -> None:
    d = daemon_factory(lease="30s").start()
    job = scheduler.add_job(f"{JOBS}.Sleep", {"seconds": 30})
    wait_for(lambda: job.refresh().status == JobStatus.PROCESSING, 5)
    victim = worker_pid(job.record.worker)
    # Started, not only claimed (a job claimed and never started is given back instead).
    wait_for(lambda: f"running {job.id}" in cmdline(victim), 5)
    os.kill(victim, signal.SIGKILL)
    killed = time.monotonic()
    # "At once" means long before the 30 s lease; the margin absorbs a loaded CI machine
    # (a quiet one settles and replaces in well under a second).
    job.wait(AT_ONCE)
    assert job.status == JobStatus.FAILED and job.reason == "abandoned"
    assert f"worker pid {victim} died from signal 9" in job.errors[-1].message
    (replacement,) = d.wait_workers(1, timeout=max(0.1, AT_ONCE - (time.monotonic() - killed)))
    assert replacement != victim


def test_a_failing_setup_hook_backs_off_instead_of_spinning(
    daemon_factory: Callable[..., Daemon], tmp_path: Path
) -> None:
    calls = tmp_path / "hook-calls.txt"
    d = daemon_factory(pm="static", min_children=1, setup_hook=f"{JOBS}:setup_fail")
    d.start(env={"TASKSCHEDD_TEST_HOOK_LOG": str(calls)})

    def attempts() -> list[float]:
        return [float(x) for x in calls.read_text().split()] if calls.exists() else []

    times = wait_for(lambda: len(t := attempts()) >= 3 and t, 6)
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert gaps[0] >= 0.4, gaps  # backoff, not a spin
    assert gaps[1] >= 1.5 * gaps[0], gaps  # exponential
    assert d.running()
    failures = d.logged("worker failed to start; backing off before the next attempt")
    assert failures and "exited with code 3" in failures[0]["how"]
    hook_errors = d.logged("setup hook failed; the worker cannot start")
    assert "setup hook failed on purpose" in hook_errors[0]["error"]


def test_workers_are_recycled_after_max_jobs_per_worker(
    daemon_factory: Callable[..., Daemon], scheduler: Scheduler
) -> None:
    daemon_factory(pm="static", min_children=1, max_jobs_per_worker=2).start()
    pids = [scheduler.add_job(f"{JOBS}.WhoAmI").wait(10).result["pid"] for _ in range(4)]
    assert pids[0] == pids[1] != pids[2] == pids[3]


def test_workers_are_recycled_above_max_worker_memory(
    daemon_factory: Callable[..., Daemon], scheduler: Scheduler
) -> None:
    d = daemon_factory(pm="static", min_children=1, max_worker_memory=1).start()  # 1 MiB
    pids = [scheduler.add_job(f"{JOBS}.WhoAmI").wait(10).result["pid"] for _ in range(2)]
    assert pids[0] != pids[1]
    exited = wait_for(lambda: d.logged("worker exited"), 5)
    assert "max_worker_memory" in exited[0]["reason"]


def test_workers_exit_when_the_master_dies(daemon_factory: Callable[..., Daemon]) -> None:
    d = daemon_factory(pm="static", min_children=2).start()
    pids = d.wait_workers(2)
    d.signal(signal.SIGKILL)
    d.wait_exit(5)
    for pid in pids:
        wait_for(lambda pid=pid: pid_gone(pid), 2, message=f"worker {pid} to exit")
