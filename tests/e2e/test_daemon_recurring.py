"""Interval and cron series on two nodes sharing one store: each occurrence exists once."""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from datetime import UTC, datetime

from taskschedd import JobStatus, Scheduler
from taskschedd.model import JobQuery
from tests.e2e.conftest import BOTH_STORES, JOBS, Daemon
from tests.helpers import wait_for

pytestmark = BOTH_STORES


def start_two_nodes(daemon_factory: Callable[..., Daemon]) -> list[Daemon]:
    nodes = [daemon_factory(name, pm="static", min_children=2).start(wait=False)
             for name in ("n1", "n2")]  # fmt: skip
    for d in nodes:
        d.wait_ready()
    return nodes


def test_interval_occurrences_are_created_and_run_once_with_two_nodes(
    daemon_factory: Callable[..., Daemon], scheduler: Scheduler
) -> None:
    start_two_nodes(daemon_factory)
    first = scheduler.add_job(f"{JOBS}.WhoAmI", interval=0.05)

    def series() -> list:
        return scheduler.store.find(JobQuery(series=first.id))

    wait_for(lambda: sum(j.status == JobStatus.DONE for j in series()) >= 8, 10)
    for job in series():
        if not job.status.is_final:
            scheduler.cancel_job(job.id)
    wait_for(lambda: all(j.status.is_final for j in series()), 5)
    jobs = series()
    ids = [j.id for j in jobs]
    assert ids == [first.id] + [f"{first.id}.{n}" for n in range(1, len(jobs))]
    events = scheduler.events(job_ids=ids, limit=10_000)
    for job in jobs:
        starts = [e for e in events if e.job_id == job.id and e.status == JobStatus.PROCESSING]
        if job.status == JobStatus.DONE:
            assert len(starts) == 1 and job.attempt == 1, job  # ran exactly once
    done = sorted((j for j in jobs if j.status == JobStatus.DONE), key=lambda j: j.series_seq)
    for before, after in itertools.pairwise(done):
        assert before.ended is not None and after.started is not None
        assert after.started >= before.ended  # never two occurrences at once


def test_cron_job_runs_and_schedules_its_next_occurrence_once(
    daemon_factory: Callable[..., Daemon], scheduler: Scheduler
) -> None:
    start_two_nodes(daemon_factory)
    now = time.time()
    first = scheduler.add_job(f"{JOBS}.WhoAmI", cron="* * * * *", at=now)
    first.wait(10)
    assert first.status == JobStatus.DONE
    jobs = wait_for(lambda: len(j := scheduler.store.find(JobQuery(series=first.id))) >= 2 and j, 5)
    assert [j.id for j in jobs] == [first.id, f"{first.id}.1"]
    nxt = jobs[1]
    assert nxt.status == JobStatus.POSTPONED
    moment = datetime.fromtimestamp(nxt.at, UTC)
    assert moment.second == 0 and moment.microsecond == 0 and now < nxt.at <= now + 61
    scheduler.cancel_job(nxt.id)


def test_a_cron_series_in_a_time_zone_comes_due_on_that_zone_s_wall_clock(
    daemon_factory: Callable[..., Daemon], scheduler: Scheduler
) -> None:
    """09:15 in Kathmandu (UTC+05:45, no DST) is 03:30 UTC: the node computes the next
    occurrence in the job's zone, not in UTC nor in its own."""
    from zoneinfo import ZoneInfo

    daemon_factory("n1", pm="static", min_children=1).start()
    first = scheduler.add_job(
        f"{JOBS}.WhoAmI", cron="15 9 * * *", timezone="Asia/Kathmandu", at=time.time()
    )
    first.wait(10)
    assert first.status == JobStatus.DONE
    nxt = wait_for(lambda: scheduler.store.find(JobQuery(series=first.id))[1:], 5)[0]
    local = datetime.fromtimestamp(nxt.at, ZoneInfo("Asia/Kathmandu"))
    assert (local.hour, local.minute, local.second) == (9, 15, 0)
    assert datetime.fromtimestamp(nxt.at, UTC).strftime("%H:%M") == "03:30"
    assert 0 < nxt.at - time.time() <= 86400
    assert nxt.options.timezone == "Asia/Kathmandu"
    scheduler.cancel_job(nxt.id)
