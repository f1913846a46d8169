"""Claiming ahead (taskschedd.worker): a backlog of short jobs is claimed several per store
write, every outcome is stored once, and a long job never holds the jobs claimed with it.

Runs on both stores with an in-process Worker; the checks read the store's jobs and events.
"""

from __future__ import annotations

import threading

import pytest

from taskschedd import worker as worker_module
from taskschedd.model import JobQuery, JobRecord, JobStatus
from taskschedd.scheduler import JobSpec, Scheduler
from taskschedd.store.base import Store
from taskschedd.worker import Worker
from tests.api_jobs import MODULE
from tests.helpers import wait_for

ECHO = f"{MODULE}.Echo"
SLEEP = f"{MODULE}.Sleep"


def events_by_job(store: Store) -> dict[str, list[JobStatus]]:
    out: dict[str, list[JobStatus]] = {}
    for event in store.events(after=0, limit=100_000):
        out.setdefault(event.job_id, []).append(event.status)
    return out


@pytest.fixture
def patient_fast_job(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every Echo counts as short and no stall of a loaded machine triggers the give-back,
    so batches grow 1, 2, 4, 8, 16 deterministically; a job of seconds still does."""
    monkeypatch.setattr(worker_module, "FAST_JOB", 0.5)
    monkeypatch.setattr(worker_module, "HOLD_LIMIT", 0.5)


@pytest.mark.usefixtures("patient_fast_job")
def test_a_backlog_of_short_jobs_is_claimed_several_per_write_and_stored_once(
    store: Store,
) -> None:
    scheduler = Scheduler(store)
    added = scheduler.add_jobs([JobSpec(ECHO, {"n": i}) for i in range(100)])
    worker = Worker(store, allowed_modules=[MODULE], claim_ahead=16, poll_interval=0.05)
    assert worker.run(idle_exit=0) == 100
    jobs = {j.id: j for j in store.find(JobQuery(limit=None))}
    assert len(jobs) == 100
    for process in added:
        job = jobs[process.id]
        assert (job.status, job.attempt, job.claim_token) == (JobStatus.DONE, 1, None)
        assert job.result == process.record.data
    # Jobs claimed in one write share their claim time: 1, 2, 4, 8, 16, 16... per write.
    assert len({j.started for j in jobs.values()}) == 10
    # One claim and one outcome per job, nothing given back.
    history = events_by_job(store)
    assert all(
        history[i] == [JobStatus.WAITING, JobStatus.PROCESSING, JobStatus.DONE] for i in jobs
    )


@pytest.mark.usefixtures("patient_fast_job")
def test_jobs_claimed_with_a_long_job_are_given_back_while_it_runs(store: Store) -> None:
    scheduler = Scheduler(store)
    # 40 short jobs, one of 1.5 s, 8 short ones: batches of 1, 2, 4, 8, 16 take the first
    # 31; the next batch of 16 takes 9 short ones, the long one and 6 after it.
    specs = [JobSpec(ECHO, {"n": i}) for i in range(40)]
    specs += [JobSpec(SLEEP, {"seconds": 3})]
    specs += [JobSpec(ECHO, {"after": i}) for i in range(8)]
    added = scheduler.add_jobs(specs)
    long_id = added[40].id
    trailing = [p.id for p in added[41:]]
    worker = Worker(store, allowed_modules=[MODULE], claim_ahead=16, poll_interval=0.05)
    assert worker.run(idle_exit=0, max_jobs=0) == 0  # a worker used before works again
    stop = threading.Event()
    thread = threading.Thread(target=worker.run, kwargs={"stop": stop.is_set}, daemon=True)
    thread.start()
    try:
        wait_for(lambda: store.get(long_id).status == JobStatus.PROCESSING, 10)

        # While the long job runs, the jobs claimed with it are back in the queue (and
        # the short jobs before it are stored), well before it ends.
        def given_back() -> bool:
            return all(store.get(i).status == JobStatus.WAITING for i in trailing)

        wait_for(given_back, 2.0)
        assert store.get(long_id).status == JobStatus.PROCESSING
        done_before = [p.id for p in added[:40]]
        assert all(store.get(i).status == JobStatus.DONE for i in done_before)
        history = events_by_job(store)
        back = [i for i in trailing if history[i][1:] == [JobStatus.PROCESSING, JobStatus.WAITING]]
        assert len(back) == 6, {i: history[i] for i in trailing}

        # Then everything runs once; giving back used no attempt.
        wait_for(lambda: all(store.get(p.id).status == JobStatus.DONE for p in added), 20)
    finally:
        stop.set()
        thread.join(timeout=10)
    for i in trailing:
        job = store.get(i)
        assert job.attempt == 1
        assert events_by_job(store)[i].count(JobStatus.DONE) == 1
    assert store.get(long_id).result == {"attempt": 1}


@pytest.mark.usefixtures("patient_fast_job")
def test_a_job_canceled_while_claimed_ahead_never_starts(store: Store) -> None:
    scheduler = Scheduler(store)
    added = scheduler.add_jobs([JobSpec(ECHO, {"n": i}) for i in range(12)])
    dropped: list[str] = []

    def on_claimed(jobs: list[JobRecord]) -> None:
        # What the daemon's master does when it finds a cancel request for a job its
        # worker holds ahead ("drop TOKEN" on the control pipe).
        if len(jobs) > 1 and not dropped:
            dropped.append(jobs[-1].id)
            worker.drop([jobs[-1].claim_token or ""])

    worker = Worker(store, allowed_modules=[MODULE], claim_ahead=16, on_claimed=on_claimed)
    assert worker.run(idle_exit=0) == 11
    (job_id,) = dropped
    job = store.get(job_id)
    assert (job.status, job.reason, job.attempt, job.result) == (
        JobStatus.CANCELED, "canceled", 0, None,
    )  # fmt: skip
    assert events_by_job(store)[job_id] == [
        JobStatus.WAITING, JobStatus.PROCESSING, JobStatus.CANCELED,
    ]  # fmt: skip
    others = [p.id for p in added if p.id != job_id]
    assert all(store.get(i).status == JobStatus.DONE for i in others)


def test_a_job_given_back_with_a_cancel_requested_is_canceled_not_run(store: Store) -> None:
    scheduler = Scheduler(store)
    process = scheduler.add_job(ECHO, {"x": 1})
    holder = Worker(store, allowed_modules=[MODULE], node="holder")
    claimed = holder.claim()
    assert claimed is not None and claimed.id == process.id
    scheduler.cancel_job(process.id)  # running: only requested
    # e.g. a worker claimed it ahead and gave it back: canceled at once, never run
    assert holder.release(claimed)
    worker = Worker(store, allowed_modules=[MODULE], claim_ahead=16)
    assert worker.run(idle_exit=0) == 0  # nothing ran
    job = store.get(process.id)
    assert (job.status, job.reason, job.attempt, job.result) == (
        JobStatus.CANCELED, "canceled", 0, None,
    )  # fmt: skip
