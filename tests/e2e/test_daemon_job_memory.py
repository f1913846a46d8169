"""max_job_memory and the job option max_memory: a running job whose process group grows
past its limit is killed while it runs (not only its worker recycled after it ends, as
max_worker_memory does), ends FAILED with reason "memory", and its worker is replaced."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from taskschedd import JobStatus, Scheduler
from tests.e2e.conftest import BOTH_STORES, JOBS, REPO, Daemon, pid_gone
from tests.helpers import wait_for

TASKSCHEDCTL = Path(sys.executable).parent / "taskschedctl"
#: Grows by 8 MiB every 20 ms (~400 MiB/s) to 600 MiB, then holds it 5 s: without a
#: running limit it ends DONE after about 6.5 s.
RUNAWAY = {"step_mb": 8, "every": 0.02, "max_mb": 600, "hold": 5}
#: The longest from the start of a runaway job to its end: it crosses a 200 MiB limit
#: within ~0.5 s, the master samples every 0.5 s, and SIGTERM ends the worker at once; the
#: margin absorbs a loaded machine.
KILLED_WITHIN = 4.0


def worker_pid(worker: str | None) -> int:
    assert worker is not None
    return int(worker.rsplit("/", 1)[1])


def memory_error(job: Any) -> Any:
    assert job.status == JobStatus.FAILED and job.reason == "memory", (job.status, job.reason)
    error = job.errors[-1]
    assert (error.type, error.reason) == ("MemoryLimit", "memory")
    return error


@BOTH_STORES
def test_a_runaway_job_is_killed_for_memory_and_its_worker_replaced(
    daemon_factory: Callable[..., Daemon], scheduler: Scheduler
) -> None:
    d = daemon_factory(pm="static", min_children=2, max_children=2, max_job_memory="200MB")
    d.start()
    d.wait_workers(2)
    other = scheduler.add_job(f"{JOBS}.Sleep", {"seconds": 4})
    wait_for(lambda: other.refresh().status == JobStatus.PROCESSING, 10)
    runaway = scheduler.add_job(f"{JOBS}.GrowMemory", RUNAWAY)
    wait_for(lambda: runaway.refresh().status == JobStatus.PROCESSING, 10)
    victim = worker_pid(runaway.record.worker)
    runaway.wait(15)
    error = memory_error(runaway)
    assert "more than its limit of 200 MiB" in error.message
    used = int(error.message.split(" bytes resident")[0].rsplit("(", 1)[1])
    assert 200 << 20 < used < 400 << 20  # measured while it grew, not at its end
    started, ended = runaway.record.started, runaway.record.ended
    assert started is not None and ended is not None and ended - started < KILLED_WITHIN
    (logged,) = d.logged("job over its memory limit")
    assert logged["job_id"] == runaway.id and logged["limit"] == 200 << 20
    # The worker is replaced; the other job ran on, untouched.
    wait_for(lambda: pid_gone(victim), 5, message="the killed worker to be gone")
    workers = d.wait_workers(2, timeout=5)
    assert victim not in workers
    other.wait(10)
    assert other.status == JobStatus.DONE and other.result["pid"] in workers
    # A job under the limit is left alone, on the replacement worker too.
    small = scheduler.add_job(f"{JOBS}.GrowMemory", {**RUNAWAY, "max_mb": 48, "hold": 1.5})
    small.wait(15)
    assert small.status == JobStatus.DONE and small.result == {"mb": 48}


def test_a_child_of_the_job_counts_and_dies_with_it_and_retries_apply(
    daemon_factory: Callable[..., Daemon], scheduler: Scheduler, tmp_path: Path
) -> None:
    d = daemon_factory(pm="static", min_children=1, max_children=1, max_job_memory="200MB")
    d.start()
    d.wait_workers(1)
    pidfile = tmp_path / "child.pid"
    job = scheduler.add_job(
        f"{JOBS}.ForkGrowMemory", {**RUNAWAY, "pidfile": str(pidfile)}, retry=1,
        retry_interval=0,
    )  # fmt: skip
    wait_for(pidfile.exists, 10, message="the job's child to start")
    first_child = int(pidfile.read_text())
    job.wait(20)
    error = memory_error(job)
    assert "more than its limit of 200 MiB" in error.message
    # Retried once like an error, killed again: two attempts, two memory errors.
    assert job.record.attempt == 2
    assert [e.reason for e in job.errors] == ["memory", "memory"]
    assert pid_gone(first_child) and pid_gone(int(pidfile.read_text()))
    d.wait_workers(1, timeout=5)


def test_the_job_option_overrides_the_node_limit_both_ways(
    daemon_factory: Callable[..., Daemon], scheduler: Scheduler
) -> None:
    d = daemon_factory(pm="static", min_children=2, max_children=2, max_job_memory="400MB")
    d.start()
    d.wait_workers(2)
    # Higher than the node's: a job that grows to 500 MiB may.
    big = scheduler.add_job(
        f"{JOBS}.GrowMemory", {**RUNAWAY, "max_mb": 496, "hold": 0.5}, max_memory="1G"
    )
    # Lower, from the command line.
    env = {k: v for k, v in os.environ.items() if not k.startswith("TASKSCHED_")}
    env["PYTHONPATH"] = str(REPO)
    ctl = [str(TASKSCHEDCTL), "-c", str(d.config_path), "add", f"{JOBS}.GrowMemory",
           json.dumps(RUNAWAY), "--json"]  # fmt: skip
    res = subprocess.run([*ctl, "--max-memory", "150M"], capture_output=True, text=True,
                         env=env, timeout=30, cwd=REPO)  # fmt: skip
    assert res.returncode == 0, res
    small = scheduler.get_job(json.loads(res.stdout)["id"])
    assert small.options.max_memory == 150
    small.wait(15)
    assert "more than its limit of 150 MiB" in memory_error(small).message
    big.wait(20)
    assert big.status == JobStatus.DONE and big.result == {"mb": 496}
    # A bad size: exit 2, what is wrong and what is accepted, no traceback.
    bad = subprocess.run([*ctl, "--max-memory", "lots"], capture_output=True, text=True,
                         env=env, timeout=30, cwd=REPO)  # fmt: skip
    assert bad.returncode == 2, bad
    assert "max_memory" in bad.stderr and "512MB" in bad.stderr and "'lots'" in bad.stderr
    assert "Traceback" not in bad.stderr


def used_bytes(error: Any) -> int:
    """The size the memory error names, in bytes."""
    return int(error.message.split(" bytes resident")[0].rsplit("(", 1)[1])


#: Ignores SIGTERM and grows by 20 MiB every 50 ms (~400 MiB/s, 200 MiB per MEMORY_POLL)
#: to 2 GiB, then holds it: a SIGTERM and kill_grace (5 s) would let it reach 2 GiB.
STUBBORN = {"step_mb": 20, "every": 0.05, "max_mb": 2048, "hold": 10}
#: The most a stubborn job may reach over a 200 MiB limit: the limit plus three times its
#: growth between two samples (generous for a loaded 2-core machine).
STUBBORN_PEAK = (200 + 3 * 200) << 20


def test_a_job_that_ignores_sigterm_is_killed_at_once_near_its_limit(
    daemon_factory: Callable[..., Daemon], scheduler: Scheduler, tmp_path: Path
) -> None:
    d = daemon_factory(pm="static", min_children=1, max_children=1, max_job_memory="200MB",
                       kill_grace="5s")  # fmt: skip
    d.start()
    (victim,) = d.wait_workers(1)
    peakfile = tmp_path / "peak"
    job = scheduler.add_job(f"{JOBS}.StubbornGrowMemory", {**STUBBORN, "peakfile": str(peakfile)})
    job.wait(20)
    error = memory_error(job)
    used = used_bytes(error)
    reached = int(peakfile.read_text()) << 20
    # SIGKILL at once: it had no grace in which to grow, and the error names the most
    # measured, over the limit and near what the job had allocated.
    assert 200 << 20 < used < STUBBORN_PEAK, used
    assert reached < STUBBORN_PEAK, reached
    started, ended = job.record.started, job.record.ended
    assert started is not None and ended is not None and ended - started < KILLED_WITHIN
    (stopping,) = d.logged("stopping a running job")
    assert (stopping["why"], stopping["signal"], stopping["kill_grace"]) == ("memory", "SIGKILL", 0)
    wait_for(lambda: pid_gone(victim), 5, message="the killed worker to be gone")
    assert victim not in d.wait_workers(1, timeout=5)


def test_a_job_is_charged_only_the_memory_it_adds_to_its_worker(
    daemon_factory: Callable[..., Daemon], scheduler: Scheduler
) -> None:
    d = daemon_factory(pm="static", min_children=1, max_children=1)
    d.start()
    (pid,) = d.wait_workers(1)
    # No limit: it leaves 200 MiB in its worker's module-level cache.
    cache = scheduler.add_job(f"{JOBS}.CacheMemory", {"mb": 200})
    cache.wait(15)
    assert cache.status == JobStatus.DONE and cache.result == {"cached_mb": 200, "pid": pid}
    # The same worker (~225 MiB resident now) runs a job that adds nothing, under 150 MiB.
    sleeper = scheduler.add_job(f"{JOBS}.Sleep", {"seconds": 1.5}, max_memory="150M")
    sleeper.wait(15)
    assert sleeper.status == JobStatus.DONE and sleeper.result["pid"] == pid
    # A job that adds more than its limit there is charged what it added, not the cache.
    grower = scheduler.add_job(
        f"{JOBS}.GrowMemory", {**RUNAWAY, "max_mb": 400, "hold": 5}, max_memory="150M"
    )
    grower.wait(15)
    error = memory_error(grower)
    assert "beyond its worker's" in error.message and "limit of 150 MiB" in error.message
    assert 150 << 20 < used_bytes(error) < (400 + 64) << 20  # at most what it allocated
    assert worker_pid(grower.record.worker) == pid
