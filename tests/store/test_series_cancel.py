"""Canceling a series through the library, on every store (the timing cases are
tests/faults/test_faults_series_cancel.py)."""

from __future__ import annotations

import time

import pytest

from taskschedd import rules
from taskschedd.errors import JobNotFound
from taskschedd.model import JobQuery, JobStatus
from taskschedd.scheduler import Scheduler
from taskschedd.store.base import Store
from tests.store.test_contract import must_claim, new_job


def test_the_series_id_cancels_the_series_after_its_first_job_was_purged(store: Store) -> None:
    """Retention purges a series' first job a while after it ran; the id add_job returned
    must still stop the series."""
    now = time.time()
    store.insert([new_job("s", now=now, interval=60)])
    head = must_claim(store, now=now)
    store.settle("s", head.claim_token or "", rules.on_success(head, "1", now), now=now)
    assert store.purge(statuses=[JobStatus.DONE], ended_before=now + 1) == 1
    process = Scheduler(store).cancel_job("s")
    assert (process.id, process.status) == ("s.1", JobStatus.CANCELED)
    assert [j.status for j in store.find(JobQuery(series="s"))] == [JobStatus.CANCELED]
    with pytest.raises(JobNotFound):
        Scheduler(store).cancel_job("no-such-series")


def test_canceling_any_occurrence_or_the_series_id_stops_the_series(store: Store) -> None:
    now = time.time()
    store.insert([new_job("a", now=now, interval=60), new_job("b", now=now, interval=60)])
    for job_id in ("a", "b"):
        job = must_claim(store, now=now)
        store.settle(job_id, job.claim_token or "", rules.on_success(job, "1", now), now=now)
    scheduler = Scheduler(store)
    assert scheduler.cancel_job("a").status is JobStatus.DONE  # the head: it had run
    assert store.get("a.1").status is JobStatus.CANCELED
    assert scheduler.cancel_job("b").status is JobStatus.DONE
    assert scheduler.cancel_job("b.1").status is JobStatus.CANCELED
    assert not scheduler.series_active("a") and not scheduler.series_active("b")
