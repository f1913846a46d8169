"""Signals to the master: drain, stop now, reload, status; and what systemd is told."""

from __future__ import annotations

import re
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from taskschedd import JobStatus, Scheduler
from tests.e2e.conftest import BOTH_STORES, JOBS, Daemon, pid_gone
from tests.helpers import wait_for

pytestmark = BOTH_STORES


def worker_pid(worker: str | None) -> int:
    assert worker is not None
    return int(worker.rsplit("/", 1)[1])


def test_sigterm_drains_a_job_that_finishes_within_the_grace(
    daemon_factory: Callable[..., Daemon], scheduler: Scheduler
) -> None:
    d = daemon_factory(shutdown_grace="5s").start()
    job = scheduler.add_job(f"{JOBS}.Sleep", {"seconds": 1})
    wait_for(lambda: job.refresh().status == JobStatus.PROCESSING, 5)
    waiting = scheduler.add_job(f"{JOBS}.WhoAmI", at=time.time() + 0.3)
    d.signal(signal.SIGTERM)
    assert d.wait_exit(8) == 0
    assert job.refresh().status == JobStatus.DONE
    assert waiting.refresh().status == JobStatus.POSTPONED  # nothing new was claimed
    assert scheduler.nodes() == []  # the node left the registry


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_sigterm_releases_a_job_still_running_after_the_grace_without_using_an_attempt(
    daemon_factory: Callable[..., Daemon], scheduler: Scheduler, sig: signal.Signals
) -> None:
    d = daemon_factory(shutdown_grace="0.5s", kill_grace="0.5s").start()
    job = scheduler.add_job(f"{JOBS}.Sleep", {"seconds": 30})
    wait_for(lambda: job.refresh().status == JobStatus.PROCESSING, 5)
    pid = worker_pid(job.record.worker)
    started = time.monotonic()
    d.signal(sig)
    assert d.wait_exit(8) == 0
    assert time.monotonic() - started < 3
    job.refresh()
    assert job.status == JobStatus.WAITING
    assert job.attempt == 0 and job.errors == []
    assert pid_gone(pid)


def test_a_second_sigterm_stops_at_once(
    daemon_factory: Callable[..., Daemon], scheduler: Scheduler
) -> None:
    d = daemon_factory(shutdown_grace="60s").start()
    job = scheduler.add_job(f"{JOBS}.Sleep", {"seconds": 30})
    wait_for(lambda: job.refresh().status == JobStatus.PROCESSING, 5)
    assert d.notify is not None
    d.signal(signal.SIGTERM)
    d.notify.wait_line("STOPPING=1")
    wait_for(lambda: d.logged("draining: no new jobs; running jobs get the shutdown grace"), 5)
    d.signal(signal.SIGTERM)
    assert d.wait_exit(5) == 0
    assert job.refresh().status == JobStatus.WAITING and job.attempt == 0
    # It says why it waits again, in the store and in its event.
    assert job.reason == "released"
    (event,) = [e for e in scheduler.events(job_ids=[job.id]) if e.status == JobStatus.WAITING][-1:]
    assert event.reason == "released", event


def test_sigquit_stops_at_once(daemon_factory: Callable[..., Daemon], scheduler: Scheduler) -> None:
    d = daemon_factory(shutdown_grace="60s").start()
    job = scheduler.add_job(f"{JOBS}.Sleep", {"seconds": 30})
    wait_for(lambda: job.refresh().status == JobStatus.PROCESSING, 5)
    d.signal(signal.SIGQUIT)
    assert d.wait_exit(5) == 0
    assert job.refresh().status == JobStatus.WAITING and job.attempt == 0


def test_stopping_now_with_a_job_that_swallows_the_interrupt_claims_nothing_more(
    daemon_factory: Callable[..., Daemon], scheduler: Scheduler, tmp_path: Path
) -> None:
    """Stopping interrupts the worker (SIGINT); a job that swallows it runs on to its end
    and its outcome is stored, and its worker claims no other job meanwhile."""
    d = daemon_factory(pm="static", min_children=1, max_children=1, kill_grace="20s").start()
    ready = tmp_path / "swallowing"
    job = scheduler.add_job(f"{JOBS}.Swallow", {"seconds": 30, "after": 1, "ready": str(ready)})
    # PROCESSING is stored at the claim: an interrupt before the job's code swallows it
    # gives the job back unstarted (right, but not what this test is about).
    wait_for(ready.exists, 10, message="the job swallows interrupts")
    later = scheduler.add_job(f"{JOBS}.Sleep", {"seconds": 0})
    d.signal(signal.SIGQUIT)
    assert d.wait_exit(15) == 0
    assert job.refresh().status == JobStatus.DONE and job.result == "swallowed"
    assert later.refresh().status == JobStatus.WAITING and later.attempt == 0


def test_sighup_applies_a_good_config_and_refuses_a_broken_one(
    daemon_factory: Callable[..., Daemon], scheduler: Scheduler
) -> None:
    d = daemon_factory(pm="static", min_children=1, max_children=4).start()
    d.wait_workers(1)
    assert d.notify is not None

    d.write_config(min_children=3)
    mark = len(d.notify.lines())
    d.signal(signal.SIGHUP)
    reloading = d.notify.wait_line("RELOADING=1", after=mark)
    d.notify.wait_line("READY=1", after=reloading)
    pids = d.wait_workers(3)

    d.config_path.write_text("pm: sometimes\n")
    mark = len(d.notify.lines())
    d.signal(signal.SIGHUP)
    d.notify.wait_line("READY=1", after=d.notify.wait_line("RELOADING=1", after=mark))
    (refused,) = wait_for(
        lambda: d.logged("reload refused: the new configuration is invalid; keeping the old one"),
        5,
    )
    assert str(d.config_path) in refused["error"] and "pm" in refused["error"]
    assert d.running()
    assert d.workers() == pids
    assert scheduler.add_job(f"{JOBS}.WhoAmI").wait(10).status == JobStatus.DONE


# SQLite only: the test reads PROCESSING from the store, then expects the master to know;
# a MongoDB claim writes its event before the worker reports, so the dump may come first.
@pytest.mark.store_kinds("sqlite")
def test_sigusr1_logs_a_status_dump(
    daemon_factory: Callable[..., Daemon], scheduler: Scheduler
) -> None:
    d = daemon_factory().start()
    job = scheduler.add_job(f"{JOBS}.Sleep", {"seconds": 30})
    wait_for(lambda: job.refresh().status == JobStatus.PROCESSING, 5)
    d.signal(signal.SIGUSR1)
    (status,) = wait_for(lambda: d.logged("status"), 5)
    (worker,) = status["workers"]
    assert worker["state"] == "busy" and worker["job_id"] == job.id
    assert status["running"] == 1 and status["jobs"] == {"PROCESSING": 1}


def test_sd_notify_ready_status_watchdog_stopping(
    daemon_factory: Callable[..., Daemon], scheduler: Scheduler
) -> None:
    d = daemon_factory().start(env={"WATCHDOG_USEC": "200000"})
    assert d.notify is not None
    ready = d.notify.wait_line("READY=1")
    status = d.notify.lines()[ready + 1]
    assert status.startswith("STATUS=") and re.search(r"\b\d+ workers?, \d+ busy", status)
    first = d.notify.wait_line("WATCHDOG=1")
    d.notify.wait_line("WATCHDOG=1", after=first + 1)  # pings keep coming
    d.signal(signal.SIGTERM)
    d.notify.wait_line("STOPPING=1")
    assert d.wait_exit(5) == 0
    statuses = [line for line in d.notify.lines() if line.startswith("STATUS=")]
    assert any("draining" in line for line in statuses), statuses
