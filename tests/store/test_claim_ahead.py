"""Claiming ahead (taskschedd.worker): a backlog of short jobs is claimed several per store
write, every outcome is stored once, and a long job never holds the jobs claimed with it.

Runs on both stores with an in-process Worker; the checks read the store's jobs and events.
"""

from __future__ import annotations

import threading

import pytest

from taskschedd import worker as worker_module
from taskschedd.job import JobStatus
from taskschedd.scheduler import JobSpec, Scheduler
from taskschedd.store.base import JobQuery, Store
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
    """Every Echo counts as short even on a loaded machine, so batches grow 1, 2, 4, 8, 16
    deterministically; a job running longer than HOLD_LIMIT still triggers the give-back."""
    monkeypatch.setattr(worker_module, "FAST_JOB", 0.5)


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
    specs += [JobSpec(SLEEP, {"seconds": 1.5})]
    specs += [JobSpec(ECHO, {"after": i}) for i in range(8)]
    added = scheduler.add_jobs(specs)
    long_id = added[40].id
    trailing = [p.id for p in added[41:]]
    worker = Worker(store, allowed_modules=[MODULE], claim_ahead=16, poll_interval=0.05)
    stop = threading.Event()
    thread = threading.Thread(target=worker.run, kwargs={"stop": stop.is_set}, daemon=True)
    thread.start()
    try:
        wait_for(lambda: store.get(long_id).status == JobStatus.PROCESSING, 10)

        # While the long job runs, the jobs claimed with it are back in the queue (and
        # the short jobs before it are stored), well before it ends.
        def given_back() -> bool:
            return all(store.get(i).status == JobStatus.WAITING for i in trailing)

        wait_for(given_back, 1.0)
        assert store.get(long_id).status == JobStatus.PROCESSING
        done_before = [p.id for p in added[:40]]
        assert all(store.get(i).status == JobStatus.DONE for i in done_before)
        history = events_by_job(store)
        back = [i for i in trailing if history[i][1:] == [JobStatus.PROCESSING, JobStatus.WAITING]]
        assert len(back) == 6, {i: history[i] for i in trailing}

        # Then everything runs once; giving back used no attempt.
        wait_for(lambda: all(store.get(p.id).status == JobStatus.DONE for p in added), 15)
    finally:
        stop.set()
        thread.join(timeout=10)
    for i in trailing:
        job = store.get(i)
        assert job.attempt == 1
        assert events_by_job(store)[i].count(JobStatus.DONE) == 1
    assert store.get(long_id).result == {"attempt": 1}
