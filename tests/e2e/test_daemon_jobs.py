"""The daemon runs jobs: results, failures, retries, timeouts, cancel, `at`, add_job_once."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from taskschedd import JobNotFound, JobStatus, Scheduler
from tests.e2e.conftest import BOTH_STORES, JOBS, Daemon, cmdline, pid_gone
from tests.helpers import wait_for

pytestmark = BOTH_STORES


def worker_pid(worker: str | None) -> int:
    assert worker is not None
    return int(worker.rsplit("/", 1)[1])


def test_success_stores_the_result_and_the_setup_hook_context(
    daemon_factory: Callable[..., Daemon], scheduler: Scheduler
) -> None:
    d = daemon_factory(setup_hook=f"{JOBS}:setup_ok").start()
    job = scheduler.add_job(f"{JOBS}.WhoAmI").wait(10)
    assert job.status == JobStatus.DONE
    assert job.result["context"] == {"hook": "ok", "node": "n1"}
    # The job ran in a worker whose process group is its own (so kills reach its children).
    assert job.result["pid"] == job.result["pgid"] == worker_pid(job.record.worker)
    assert job.result["pid"] in d.workers()
    assert job.progress == 100 and job.attempt == 1 and job.record.node == "n1"


def test_failure_keeps_error_details(
    daemon_factory: Callable[..., Daemon], scheduler: Scheduler
) -> None:
    daemon_factory().start()
    job = scheduler.add_job(f"{JOBS}.Fail", {"message": "disk on fire"}).wait(10)
    assert job.status == JobStatus.FAILED
    (error,) = job.errors
    assert error.type == "ValueError"
    assert error.message == "disk on fire"
    assert "raise ValueError" in error.traceback
    assert error.attempt == 1 and error.reason == "exception"


def test_retries_run_again_under_the_same_id_with_backoff(
    daemon_factory: Callable[..., Daemon], scheduler: Scheduler
) -> None:
    daemon_factory().start()
    job = scheduler.add_job(
        f"{JOBS}.FailUntil",
        {"ok_at": 3},
        retry=3,
        retry_interval=0.2,
        retry_backoff="exponential",
    ).wait(10)
    assert job.status == JobStatus.DONE
    assert job.result == {"attempt": 3}
    assert [e.attempt for e in job.errors] == [1, 2]
    starts = [e.time for e in scheduler.events(job_ids=[job.id]) if e.status.name == "PROCESSING"]
    assert len(starts) == 3  # one job, three attempts
    # Equal jitter keeps at least half of 0.2 s, then of 0.4 s.
    assert starts[1] - starts[0] >= 0.1
    assert starts[2] - starts[1] >= 0.2


def test_timeout_kills_the_process_group_including_grandchildren(
    daemon_factory: Callable[..., Daemon], scheduler: Scheduler, tmp_path: Path
) -> None:
    d = daemon_factory(kill_grace="0.5s").start()
    (before,) = d.wait_workers(1)
    pidfile = tmp_path / "grandchild.pid"
    job = scheduler.add_job(f"{JOBS}.Grandchild", {"pidfile": str(pidfile)}, timeout=1)
    grandchild = wait_for(lambda: pidfile.exists() and int(pidfile.read_text()), 5)
    job.wait(10)
    assert job.status == JobStatus.TIMEOUT
    assert job.errors[-1].reason == "timeout"
    wait_for(lambda: pid_gone(grandchild), 3, message=f"grandchild {grandchild} to be gone")
    assert pid_gone(before)
    (after,) = d.wait_workers(1)
    assert after != before  # replaced


def test_cancel_stops_a_running_job(
    daemon_factory: Callable[..., Daemon], scheduler: Scheduler
) -> None:
    d = daemon_factory().start()
    job = scheduler.add_job(f"{JOBS}.Sleep", {"seconds": 30}, retry=2)
    wait_for(lambda: job.refresh().status == JobStatus.PROCESSING, 5)
    pid = worker_pid(job.record.worker)
    started = time.monotonic()
    scheduler.cancel_job(job.id)
    job.wait(5)
    assert job.status == JobStatus.CANCELED and job.reason == "canceled"
    assert time.monotonic() - started < 3
    assert pid_gone(pid)
    d.wait_workers(1)


def test_a_job_at_a_future_time_runs_then_not_before(
    daemon_factory: Callable[..., Daemon], scheduler: Scheduler
) -> None:
    daemon_factory().start()
    at = time.time() + 1.0
    job = scheduler.add_job(f"{JOBS}.WhoAmI", at=at)
    assert job.refresh().status == JobStatus.POSTPONED
    job.wait(10)
    assert job.status == JobStatus.DONE
    assert job.record.started is not None
    assert at <= job.record.started < at + 0.5  # idle workers wake up when it is due


def test_add_job_once_runs_one_job_for_repeated_requests(
    daemon_factory: Callable[..., Daemon], scheduler: Scheduler
) -> None:
    daemon_factory().start()
    first = scheduler.add_job_once(f"{JOBS}.Sleep", {"seconds": 0.5})
    wait_for(lambda: first.refresh().status == JobStatus.PROCESSING, 5)
    again = scheduler.add_job_once(f"{JOBS}.Sleep", {"seconds": 0.5})
    assert again.id == first.id
    first.wait(10)
    assert first.status == JobStatus.DONE
    runs = [e for e in scheduler.events(job_ids=[first.id]) if e.status == JobStatus.PROCESSING]
    assert len(runs) == 1
    later = scheduler.add_job_once(f"{JOBS}.Sleep", {"seconds": 0.5})
    assert later.id != first.id  # the first one is final: a new request is a new job
    assert later.wait(10).status == JobStatus.DONE


def test_expired_leases_of_other_nodes_are_reaped(
    daemon_factory: Callable[..., Daemon], scheduler: Scheduler
) -> None:
    daemon_factory(reap_interval="0.2s").start()
    # A job on a queue this node does not serve, claimed by a node that then vanished.
    job = scheduler.add_job(f"{JOBS}.WhoAmI", queue="elsewhere", retry=0)
    claimed = scheduler.store.claim(
        ["elsewhere"], node="ghost", worker="ghost/1", token="t" * 32, lease=0.3,
        now=time.time(),
    )  # fmt: skip
    assert claimed is not None and claimed.id == job.id
    job.wait(5)
    assert job.status == JobStatus.FAILED and job.reason == "abandoned"
    assert "lease expired (node ghost" in job.errors[-1].message


def test_job_log_lines_and_process_titles_name_the_job(
    daemon_factory: Callable[..., Daemon], scheduler: Scheduler
) -> None:
    d = daemon_factory().start()
    job = scheduler.add_job(f"{JOBS}.Sleep", {"seconds": 30}, timeout=0.5)
    wait_for(lambda: job.refresh().status == JobStatus.PROCESSING, 5)
    pid = worker_pid(job.record.worker)
    title = f"taskschedd: worker n1/{pid} running {job.id} {JOBS}.Sleep"
    wait_for(lambda: cmdline(pid) == title, 5, message=lambda: f"title {cmdline(pid)!r}")
    assert "taskschedd: master n1" in cmdline(d.pid)
    job.wait(5)
    fields = {"job_id": job.id, "job_class": f"{JOBS}.Sleep", "attempt": 1,
              "queue": "default", "node": "n1", "worker": f"n1/{pid}"}  # fmt: skip
    for event in ("job started", "stopping a running job", "job settled by the master"):
        (line,) = wait_for(lambda event=event: [e for e in d.logged(event)
                                                if e.get("job_id") == job.id], 5)  # fmt: skip
        assert {k: line.get(k) for k in fields} == fields, event
    (start,) = d.logged("taskschedd starting")
    assert start["config"]["node"] == "n1" and start["config"]["pm"] == "static"


def test_finished_jobs_are_purged_after_the_retention(
    daemon_factory: Callable[..., Daemon], scheduler: Scheduler
) -> None:
    daemon_factory(retention="0.5s").start()
    done = scheduler.add_job(f"{JOBS}.WhoAmI").wait(10)
    waiting = scheduler.add_job(f"{JOBS}.WhoAmI", at=time.time() + 3600)

    def purged() -> bool:
        try:
            scheduler.get_job(done.id)
        except JobNotFound:
            return True
        return False

    wait_for(purged, 5, message="the finished job to be purged")
    assert waiting.refresh().status == JobStatus.POSTPONED  # only final jobs go
