"""A job's errors stay bounded on every store: messages and tracebacks are clipped, and
only the last MAX_ERRORS attempts are kept, so endless retries of a job that fails with
a huge message never grow its record past what the store takes (MongoDB: 16 MB)."""

from __future__ import annotations

import json

from taskschedd.model import MAX_ERROR_MESSAGE, MAX_ERRORS, MAX_TRACEBACK, JobStatus
from taskschedd.scheduler import Scheduler
from taskschedd.worker import Worker
from tests.store.conftest import StoreSpec

HUGE = "tests.faults.jobs.HugeError"


def test_a_job_failing_with_huge_messages_keeps_a_bounded_record(store_spec: StoreSpec) -> None:
    store = store_spec.open()
    sched = Scheduler(store)
    attempts = MAX_ERRORS + 5
    job = sched.add_job(HUGE, {"size": 17_000_000}, retry=attempts - 1, retry_interval=0)
    worker = Worker(store, allowed_modules=["tests.faults.jobs"], lease=60)
    ran = 0
    while worker.run_one() is not None:
        ran += 1
    worker.close()
    record = store.get(job.id)
    assert ran == attempts and record.status is JobStatus.FAILED
    assert len(record.errors) == MAX_ERRORS
    assert [e.attempt for e in record.errors] == list(range(6, attempts + 1)), "the last ones"
    last = record.errors[-1]
    assert last.type == "RuntimeError" and "characters cut" in last.message
    assert len(last.message) <= MAX_ERROR_MESSAGE + 100
    assert len(last.traceback) <= MAX_TRACEBACK + 100
    assert "RuntimeError" in last.traceback  # the end of a traceback is kept
    size = len(json.dumps([e.to_dict() for e in record.errors]))
    assert size < MAX_ERRORS * (MAX_ERROR_MESSAGE + MAX_TRACEBACK + 1000)
