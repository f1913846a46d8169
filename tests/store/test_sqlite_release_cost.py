"""SQLite: what releasing dependents costs a batch of settles (issue 14's drain figure).

A worker claiming ahead settles up to 64 jobs in one write. Before this, every job made
final ran two statements on the dependency tables (a count-down and a look-up of its
dependents) even when nothing depended on it: a plain drain paid 6 statements per job
instead of 4, and its drain rate fell below 0.95 of 0.5.0's (bench/workflows.py). Now
one look-up per batch finds the jobs that have dependents, and only those are released.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from taskschedd import rules
from taskschedd.model import ClaimRequest, JobRecord, JobStatus
from taskschedd.scheduler import JobSpec, Scheduler
from taskschedd.store.sqlite import SQLiteStore
from tests.api_jobs import MODULE

ADD = f"{MODULE}.Add"


@pytest.fixture
def sched(tmp_path: Path) -> Iterator[Scheduler]:
    s = Scheduler(f"sqlite:///{tmp_path / 'deps.db'}", create=True)
    yield s
    s.close()


def claim_batch(store: SQLiteStore, limit: int) -> list[JobRecord]:
    _, jobs = store.settle_batch([], now=time.time(), claim=request(limit))
    return jobs


def request(limit: int) -> ClaimRequest:
    return ClaimRequest(
        queues=["default"], node="n", worker="w", token=uuid.uuid4().hex, lease=60,
        limit=limit,
    )  # fmt: skip


def settles(jobs: list[JobRecord], now: float) -> list[tuple[str, str, object]]:
    return [(j.id, j.claim_token or "", rules.on_success(j, '{"total": 1}', now)) for j in jobs]


def test_a_batch_of_settles_with_no_dependents_looks_them_up_once(sched: Scheduler) -> None:
    store = sched.store
    assert isinstance(store, SQLiteStore)
    sched.add_jobs([JobSpec(ADD, {"n": 1}) for _ in range(64)])
    jobs = claim_batch(store, 64)
    assert len(jobs) == 64
    statements: list[str] = []
    store._conn.set_trace_callback(statements.append)
    try:
        done, _ = store.settle_batch(settles(jobs, time.time()), now=time.time())  # type: ignore[arg-type]
    finally:
        store._conn.set_trace_callback(None)
    assert all(b is not None and b.status is JobStatus.DONE for b in done)
    on_deps = [s for s in statements if "job_deps" in s or "job_waits" in s]
    # Was 128 (a count-down and a look-up per job).
    assert len(on_deps) == 1, on_deps


def test_dependents_of_a_settled_batch_are_released_once_before_its_claims(
    sched: Scheduler,
) -> None:
    """A and B end DONE in one batch among jobs nothing depends on: C (on A and B) and D
    (on A) are released once, in that write, and its claim can take them at once."""
    store = sched.store
    assert isinstance(store, SQLiteStore)
    a, b, *plain = sched.add_jobs([JobSpec(ADD, {"n": 1}) for _ in range(10)])
    c = sched.add_job(ADD, depends_on=[a.id, b.id])
    d = sched.add_job(ADD, depends_on=[a.id])
    jobs = claim_batch(store, 10)
    assert {j.id for j in jobs} == {a.id, b.id, *(p.id for p in plain)}
    now = time.time()
    done, claimed = store.settle_batch(settles(jobs, now), now=now, claim=request(10))  # type: ignore[arg-type]
    assert all(x is not None for x in done)
    assert {j.id for j in claimed} == {c.id, d.id}
    for job in (c, d):
        released = [e for e in store.events(job_ids=[job.id]) if e.status is JobStatus.WAITING]
        assert len(released) == 1 and released[0].reason == "dependencies done"
