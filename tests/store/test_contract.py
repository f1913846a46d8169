"""The store contract: one suite that every store (SQLite, MongoDB) must pass.

Stores are dumb: they apply what taskschedd.rules decides, atomically and fenced by the
claim token. These tests drive the Store interface directly and check what is stored.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.synchronize
import threading
import time
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from taskschedd import rules, transitions
from taskschedd.errors import JobNotFound
from taskschedd.model import (
    ACTIVE,
    FINAL,
    ClaimRequest,
    ErrorInfo,
    JobQuery,
    JobRecord,
    JobStatus,
    NewJob,
    NodeRecord,
)
from taskschedd.options import JobOptions, dump_data
from taskschedd.scheduler import Scheduler
from taskschedd.store.base import DuplicateJobId, Store
from taskschedd.transitions import Transition
from tests.helpers import elapsed, settlement
from tests.store.conftest import StoreSpec

CLS = "tests.api_jobs.Echo"
FORK = multiprocessing.get_context("fork")


def by_token(store: Store, token: str) -> JobRecord | None:
    """The job held under ``token``, if any."""
    return next((j for j in store.find(JobQuery()) if j.claim_token == token), None)


def near(moment: float) -> Any:
    """Equal to a stored time to the millisecond (a store may keep milliseconds only)."""
    return pytest.approx(moment, abs=0.002)


def new_job(
    job_id: str | None = None,
    *,
    cls: str = CLS,
    data: Any = None,
    now: float | None = None,
    at: float | None = None,
    status: JobStatus | None = None,
    once_key: str | None = None,
    series: str | None = None,
    series_seq: int = 0,
    **options: Any,
) -> NewJob:
    now = time.time() if now is None else now
    at = now if at is None else at
    return NewJob(
        id=job_id or uuid.uuid4().hex,
        cls=cls,
        data_json=dump_data(data),
        options=JobOptions(**options),
        at=at,
        created=now,
        status=rules.initial_status(at, now) if status is None else status,
        once_key=once_key,
        series=series,
        series_seq=series_seq,
    )


def claim(
    store: Store,
    queues: tuple[str, ...] = ("default",),
    *,
    now: float | None = None,
    lease: float = 30.0,
    token: str | None = None,
    node: str = "node-a",
    worker: str = "node-a/1",
    force_spawn: bool = False,
    job_id: str | None = None,
) -> JobRecord | None:
    return store.claim(
        queues,
        node=node,
        worker=worker,
        token=token or uuid.uuid4().hex,
        lease=lease,
        now=time.time() if now is None else now,
        force_spawn=force_spawn,
        job_id=job_id,
    )


def must_claim(store: Store, **kwargs: Any) -> JobRecord:
    job = claim(store, **kwargs)
    assert job is not None, f"nothing claimed with {kwargs}"
    assert job.claim_token is not None
    return job


def error(attempt: int, message: str = "boom") -> ErrorInfo:
    return ErrorInfo(
        attempt=attempt, type="ValueError", message=message, traceback="Traceback...", time=1.0
    )


def finish(store: Store, job_id: str, status: JobStatus, now: float) -> None:
    """Bring a due job to a final status at time ``now``."""
    if status == JobStatus.CANCELED:
        store.cancel(job_id, now=now)
        return
    job = must_claim(store, job_id=job_id, now=now)
    assert job.claim_token is not None
    assert store.settle(job_id, job.claim_token, settlement(status=status, reason="t"), now=now)


def statuses_of_events(store: Store, job_id: str) -> list[JobStatus]:
    return [e.status for e in store.events(job_ids=[job_id])]


# -- insert / get / find ------------------------------------------------------------------


def test_insert_then_get_returns_every_field(store: Store) -> None:
    now = time.time()
    job = new_job(
        "j1",
        data={"a": [1, 2], "b": None},
        now=now,
        at=now + 60,
        queue="mail",
        priority=7,
        retry=3,
        timeout=5.0,
        interval=30.0,
        once_key="k1",
        series="s1",
        series_seq=2,
    )
    store.insert([job])
    got = store.get("j1")
    assert got.id == "j1"
    assert got.cls == CLS
    assert got.data == {"a": [1, 2], "b": None}
    assert got.status == JobStatus.POSTPONED
    assert (got.queue, got.priority) == ("mail", 7)
    assert got.at == near(now + 60)
    assert got.created == near(now)
    assert got.options.retry == 3 and got.options.timeout == 5.0 and got.options.interval == 30.0
    assert got.attempt == 0 and got.errors == [] and got.result is None and got.progress == 0
    assert got.claim_token is None and got.lease_until is None and not got.cancel_requested
    assert (got.series, got.series_seq, got.once_key) == ("s1", 2, "k1")
    assert statuses_of_events(store, "j1") == [JobStatus.POSTPONED]


def test_get_missing_raises_job_not_found(store: Store) -> None:
    with pytest.raises(JobNotFound) as info:
        store.get("nope")
    assert isinstance(info.value, LookupError)
    assert by_token(store, "no-such-token") is None


def test_insert_duplicate_id_writes_nothing(store: Store) -> None:
    store.insert([new_job("a", data=1)])
    before = store.last_event_seq()
    with pytest.raises(DuplicateJobId) as info:
        store.insert([new_job("b"), new_job("a", data=2)])
    assert info.value.job_id == "a"
    assert [j.id for j in store.find(JobQuery())] == ["a"]
    assert store.get("a").data == 1
    assert store.last_event_seq() == before
    store.insert([])  # an empty batch is a no-op


def test_find_filters_and_order(store: Store) -> None:
    now = time.time()
    store.insert([new_job("a", now=now - 30, cls="m.A", queue="q1")])
    store.insert([new_job("b", now=now - 20, cls="m.B", queue="q2")])
    store.insert([new_job("c", now=now - 10, cls="m.A", queue="q2", series="a", series_seq=1)])
    store.insert([new_job("d", now=now, at=now + 100, cls="m.B", queue="q1")])
    store.cancel("b", now=now)

    def ids(**kw: Any) -> list[str]:
        return [j.id for j in store.find(JobQuery(**kw))]

    assert ids() == ["a", "b", "c", "d"]
    assert ids(newest_first=True) == ["d", "c", "b", "a"]
    assert ids(statuses=(JobStatus.WAITING,)) == ["a", "c"]
    assert ids(statuses=(JobStatus.POSTPONED, JobStatus.CANCELED)) == ["b", "d"]
    assert ids(classes=("m.B",)) == ["b", "d"]
    assert ids(queues=("q1",)) == ["a", "d"]
    assert ids(ids=("d", "a", "zz")) == ["a", "d"]
    assert ids(series="a") == ["a", "c"]
    assert ids(since=now - 15) == ["c", "d"]
    assert ids(limit=2) == ["a", "b"]
    assert ids(limit=1, newest_first=True) == ["d"]
    assert ids(classes=("m.A",), queues=("q2",), statuses=ACTIVE) == ["c"]


# -- claim -----------------------------------------------------------------------------------


def test_claim_order_queues_then_priority_then_due_then_fifo(store: Store) -> None:
    now = time.time()
    store.insert([new_job("q2-high", now=now, queue="q2", priority=9)])
    store.insert([new_job("q3-other", now=now, queue="q3", priority=9)])
    store.insert([new_job("low", now=now, at=now - 100, queue="q1", priority=-1)])
    store.insert([new_job("fifo-1", now=now, at=now - 5, queue="q1")])
    store.insert([new_job("fifo-2", now=now, at=now - 5, queue="q1")])
    store.insert([new_job("fifo-3", now=now, at=now - 5, queue="q1")])
    store.insert(
        [new_job("postponed-due", now=now, at=now - 7, status=JobStatus.POSTPONED, queue="q1")]
    )
    store.insert([new_job("earliest", now=now, at=now - 10, queue="q1")])
    store.insert([new_job("high", now=now, at=now - 1, queue="q1", priority=5)])

    order = []
    while (job := claim(store, ("q1", "q2"), now=now)) is not None:
        order.append(job.id)
    assert order == [
        "high",
        "earliest",
        "postponed-due",
        "fifo-1",
        "fifo-2",
        "fifo-3",
        "low",
        "q2-high",
    ]
    assert store.get("q3-other").status == JobStatus.WAITING


def test_claim_prefers_queues_in_the_order_given(store: Store) -> None:
    store.insert([new_job("in-a", queue="a", priority=100), new_job("in-b", queue="b")])
    assert must_claim(store, queues=("b", "a")).id == "in-b"
    assert must_claim(store, queues=("b", "a")).id == "in-a"


def test_claim_skips_jobs_not_yet_due(store: Store) -> None:
    now = time.time()
    store.insert([new_job("later", now=now, at=now + 60)])
    assert claim(store, now=now) is None
    assert claim(store, now=now, job_id="later") is None
    assert must_claim(store, now=now + 61).id == "later"


def test_force_spawn_jobs_are_claimed_only_with_force_spawn(store: Store) -> None:
    store.insert([new_job("extra", ignore_max_children=True)])
    assert claim(store) is None
    store.insert([new_job("normal")])
    assert claim(store, force_spawn=True) is not None  # "extra"
    assert store.get("extra").status == JobStatus.PROCESSING
    assert claim(store, force_spawn=True) is None
    assert must_claim(store).id == "normal"


def test_claim_by_job_id(store: Store) -> None:
    now = time.time()
    store.insert([new_job("first", now=now, priority=9), new_job("wanted", now=now)])
    store.insert([new_job("future", now=now, at=now + 60)])
    job = must_claim(store, job_id="wanted", now=now)
    assert job.id == "wanted"
    assert store.get("first").status == JobStatus.WAITING
    assert claim(store, job_id="wanted", now=now) is None  # already running
    assert claim(store, job_id="future", now=now) is None
    assert claim(store, job_id="missing", now=now) is None


def test_claim_sets_processing_attempt_token_and_lease(store: Store) -> None:
    now = time.time()
    store.insert([new_job("j", now=now)])
    job = must_claim(store, now=now, lease=30, token="tok-1", node="n1", worker="n1/7")
    assert job.id == "j"
    assert job.status == JobStatus.PROCESSING
    assert job.attempt == 1
    assert job.claim_token == "tok-1"
    assert job.lease_until == near(now + 30)
    assert (job.node, job.worker) == ("n1", "n1/7")
    assert job.started == near(now)
    stored = store.get("j")
    assert (stored.status, stored.attempt, stored.claim_token) == (JobStatus.PROCESSING, 1, "tok-1")
    held = by_token(store, "tok-1")
    assert held is not None and held.id == "j"
    last = store.events(job_ids=["j"])[-1]
    assert (last.status, last.attempt, last.node, last.worker) == (
        JobStatus.PROCESSING,
        1,
        "n1",
        "n1/7",
    )
    assert claim(store, now=now) is None  # a running job is not claimed again


# -- settle ----------------------------------------------------------------------------------


def test_settle_is_fenced_by_token(store: Store) -> None:
    now = time.time()
    store.insert([new_job("j", now=now)])
    job = must_claim(store, now=now, token="right")
    seq = store.last_event_seq()
    done = settlement(status=JobStatus.DONE, result_json='"x"', reason="done", progress=100.0)
    assert store.settle("j", "wrong", done, now=now) is None
    assert store.progress("j", "wrong", 50.0, now=now) is False
    after = store.get("j")
    assert (after.status, after.claim_token, after.result) == (JobStatus.PROCESSING, "right", None)
    assert after.progress == 0
    assert store.last_event_seq() == seq

    # A stale worker: its job was re-queued and claimed again under a new token.
    retry = settlement(status=JobStatus.WAITING, at=now, error=error(1), reason="retrying")
    assert store.settle("j", job.claim_token or "", retry, now=now)
    again = must_claim(store, now=now, token="second")
    assert again.attempt == 2
    assert store.settle("j", "right", done, now=now) is None
    assert store.get("j").status == JobStatus.PROCESSING
    assert store.get("j").claim_token == "second"


def test_settle_done_stores_result_clears_lease_and_records_event(store: Store) -> None:
    now = time.time()
    store.insert([new_job("j", now=now)])
    job = must_claim(store, now=now, node="n1", worker="n1/2")
    assert store.progress("j", job.claim_token or "", 40.0, now=now)
    assert store.get("j").progress == 40.0
    settlement = rules.on_success(job, '{"sum": 3}', now + 1)
    assert store.settle("j", job.claim_token or "", settlement, now=now + 1)
    got = store.get("j")
    assert got.status == JobStatus.DONE
    assert got.result == {"sum": 3}
    assert got.progress == 100.0
    assert got.claim_token is None and got.lease_until is None
    assert got.ended == near(now + 1)
    assert by_token(store, job.claim_token or "") is None
    last = store.events(job_ids=["j"])[-1]
    assert (last.status, last.attempt, last.node, last.worker) == (
        JobStatus.DONE,
        1,
        "n1",
        "n1/2",
    )
    assert last.time == near(now + 1)
    assert statuses_of_events(store, "j") == [
        JobStatus.WAITING,
        JobStatus.PROCESSING,
        JobStatus.DONE,
    ]


def test_settle_appends_each_attempts_error(store: Store) -> None:
    now = time.time()
    store.insert([new_job("j", now=now, retry=1, retry_interval=60)])
    job = must_claim(store, now=now)
    first = rules.on_error(job, error(1, "first"), now)
    assert first.status == JobStatus.POSTPONED
    assert store.settle("j", job.claim_token or "", first, now=now)
    got = store.get("j")
    assert got.status == JobStatus.POSTPONED and got.at == near(now + 60)
    assert got.claim_token is None and got.lease_until is None and got.ended is None
    assert claim(store, now=now + 30) is None
    job = must_claim(store, now=now + 61)
    assert job.attempt == 2
    final = rules.on_error(job, error(2, "second"), now + 61)
    assert store.settle("j", job.claim_token or "", final, now=now + 61)
    got = store.get("j")
    assert got.status == JobStatus.FAILED
    assert [(e.attempt, e.message, e.type, e.traceback) for e in got.errors] == [
        (1, "first", "ValueError", "Traceback..."),
        (2, "second", "ValueError", "Traceback..."),
    ]
    failed = store.events(job_ids=["j"])[-1]
    assert failed.status == JobStatus.FAILED
    assert failed.error is not None and failed.error.message == "second"


def test_settle_release_gives_back_the_attempt(store: Store) -> None:
    store.insert([new_job("j")])
    job = must_claim(store)
    assert store.settle("j", job.claim_token or "", rules.release(job), now=time.time())
    got = store.get("j")
    assert (got.status, got.attempt, got.claim_token) == (JobStatus.WAITING, 0, None)
    assert must_claim(store).attempt == 1


def test_settle_inserts_next_occurrence_once(store: Store) -> None:
    now = time.time()
    store.insert([new_job("s", now=now, interval=60)])
    job = must_claim(store, now=now)
    settlement = rules.on_success(job, "1", now)
    assert settlement.next_job is not None and settlement.next_job.id == "s.1"
    assert store.settle("s", job.claim_token or "", settlement, now=now)
    assert not store.settle("s", job.claim_token or "", settlement, now=now)
    assert not store.settle("s", "another-token", settlement, now=now)
    series = store.find(JobQuery(series="s"))
    assert [j.id for j in series] == ["s", "s.1"]
    nxt = series[1]
    assert (nxt.status, nxt.series, nxt.series_seq) == (JobStatus.POSTPONED, "s", 1)
    assert nxt.at == near(now + 60)

    # The next occurrence already exists (another node settled this occurrence first):
    # the duplicate id is ignored and the existing job left as it is.
    store.insert([new_job("t", now=now, interval=60)])
    store.insert([new_job("t.1", now=now, at=now + 999, series="t", series_seq=1)])
    job = must_claim(store, now=now)
    assert job.id == "t"
    assert store.settle("t", job.claim_token or "", rules.on_success(job, "2", now), now=now)
    assert store.get("t").result == 2
    assert [j.id for j in store.find(JobQuery(series="t"))] == ["t", "t.1"]
    assert store.get("t.1").at == near(now + 999)


def _settle_and_claim(
    store: Store, job: JobRecord, settlement: Transition, now: float, next_token: str
) -> tuple[bool, JobRecord | None]:
    claim = ClaimRequest(
        queues=("other", "default"), node="node-a", worker="node-a/1", token=next_token,
        lease=30.0,
    )  # fmt: skip
    done, jobs = store.settle_batch([(job.id, job.claim_token or "", settlement)], now=now,
                                    claim=claim)  # fmt: skip
    assert len(done) == 1 and len(jobs) <= 1
    return done[0], jobs[0] if jobs else None


def test_settle_batch_fenced_off_settle_writes_nothing_for_that_job(store: Store) -> None:
    now = time.time()
    store.insert([new_job("a", now=now), new_job("b", now=now), new_job("c", now=now)])
    a = must_claim(store, now=now, token="right")
    b = must_claim(store, now=now, token="b-token")
    done = settlement(status=JobStatus.DONE, result_json='"x"', reason="done")
    seq = store.last_event_seq()
    flags, jobs = store.settle_batch([("a", "wrong", done), ("b", "b-token", done)], now=now)
    assert ([f is not None for f in flags], jobs) == ([False, True], [])
    assert (store.get("a").status, store.get("a").claim_token) == (JobStatus.PROCESSING, "right")
    assert (store.get("b").status, store.get("b").result) == (JobStatus.DONE, "x")
    assert store.get("c").status == JobStatus.WAITING
    assert [e.job_id for e in store.events(after=seq)] == ["b"]
    assert b.claim_token == "b-token" and a.claim_token == "right"


def test_settle_batch_claims_several_in_order_each_with_its_own_token(store: Store) -> None:
    now = time.time()
    store.insert([new_job(n, now=now + i * 1e-3) for i, n in enumerate(["d1", "d2", "d3"])])
    store.insert([new_job("hi", now=now, priority=5), new_job("later", now=now, at=now + 60)])
    store.insert([new_job("o1", now=now, queue="other", priority=-5)])
    claim = ClaimRequest(queues=("other", "default"), node="n", worker="n/1", token="tok",
                         lease=30.0, limit=4)  # fmt: skip
    seq = store.last_event_seq()
    flags, jobs = store.settle_batch([], now=now + 0.01, claim=claim)
    assert flags == []
    # Queues in the order given, then priority, then due time.
    assert [j.id for j in jobs] == ["o1", "hi", "d1", "d2"]
    assert [j.claim_token for j in jobs] == [claim.token_for(i) for i in range(4)]
    assert len({j.claim_token for j in jobs}) == 4
    for job in jobs:
        stored = store.get(job.id)
        assert (stored.status, stored.attempt, stored.worker) == (JobStatus.PROCESSING, 1, "n/1")
        assert stored.lease_until == near(now + 0.01 + 30)
    assert sorted(e.job_id for e in store.events(after=seq)) == ["d1", "d2", "hi", "o1"]
    assert store.get("d3").status == JobStatus.WAITING
    # Each claim is fenced by its own token.
    done = settlement(status=JobStatus.DONE, reason="done")
    flags, more = store.settle_batch(
        [("o1", jobs[1].claim_token or "", done), ("hi", jobs[1].claim_token or "", done)],
        now=now + 0.01, claim=replace(claim, limit=5, token="tok2"),
    )  # fmt: skip
    assert [f is not None for f in flags] == [False, True]
    assert [j.id for j in more] == ["d3"]  # only what is due
    assert store.get("o1").status == JobStatus.PROCESSING


def test_settle_batch_with_nothing_due_and_nothing_to_settle_writes_nothing(store: Store) -> None:
    now = time.time()
    store.insert([new_job("later", now=now, at=now + 60)])
    seq = store.last_event_seq()
    claim = ClaimRequest(queues=("default",), node="n", worker="n/1", token="t", lease=30.0,
                         limit=8)  # fmt: skip
    assert store.settle_batch([], now=now, claim=claim) == ([], [])
    assert store.settle_batch([], now=now) == ([], [])
    assert store.last_event_seq() == seq


def test_settle_batch_settles_one_and_claims_the_next(store: Store) -> None:
    now = time.time()
    store.insert([new_job("a", now=now, interval=60), new_job("b", now=now)])
    store.insert([new_job("c", now=now, queue="other", priority=-5)])
    job = must_claim(store, now=now, token="first", queues=("default",))
    assert job.id == "a"
    settled, nxt = _settle_and_claim(store, job, rules.on_success(job, "7", now), now, "second")
    assert settled
    # The queues are taken in the order given, as claim() does.
    assert nxt is not None and nxt.id == "c"
    assert (nxt.status, nxt.claim_token, nxt.attempt) == (JobStatus.PROCESSING, "second", 1)
    assert (nxt.node, nxt.worker, nxt.lease_until) == ("node-a", "node-a/1", near(now + 30))
    a = store.get("a")
    assert (a.status, a.result, a.claim_token) == (JobStatus.DONE, 7, None)
    assert store.get("a.1").status == JobStatus.POSTPONED  # the next occurrence
    assert by_token(store, "second") is not None and store.get("c").claim_token == "second"
    assert statuses_of_events(store, "a")[-1] == JobStatus.DONE
    assert statuses_of_events(store, "c") == [JobStatus.WAITING, JobStatus.PROCESSING]
    events = [e for e in store.events(after=0) if e.job_id in ("a", "c")]
    assert [e.job_id for e in events[-2:]] == ["a", "c"]  # the settle's event first
    assert store.get("b").status == JobStatus.WAITING

    # The next claim is fenced by its own token like any claim.
    settled, nxt2 = _settle_and_claim(store, nxt, settlement(status=JobStatus.DONE), now, "third")
    assert settled and nxt2 is not None and nxt2.id == "b"
    assert not store.settle("c", "second", settlement(status=JobStatus.DONE), now=now)


def test_settle_batch_with_nothing_due_settles_only(store: Store) -> None:
    now = time.time()
    store.insert([new_job("a", now=now), new_job("later", now=now, at=now + 60)])
    store.insert([new_job("spawn", now=now, ignore_max_children=True)])
    job = must_claim(store, now=now)
    done = settlement(status=JobStatus.DONE, reason="done")
    assert _settle_and_claim(store, job, done, now, "next")[1] is None
    assert store.get("a").status == JobStatus.DONE
    assert by_token(store, "next") is None
    assert store.get("later").status == JobStatus.POSTPONED
    assert store.get("spawn").status == JobStatus.WAITING


# -- leases ----------------------------------------------------------------------------------


def test_renew_extends_only_the_given_tokens(store: Store) -> None:
    now = time.time()
    store.insert([new_job("a", now=now), new_job("b", now=now), new_job("c", now=now)])
    for token in ("t-a", "t-b", "t-c"):
        must_claim(store, now=now, token=token, lease=10)
    assert store.renew(["t-a", "t-c", "unknown"], lease_until=now + 100) == 2
    assert store.get("a").lease_until == near(now + 100)
    assert store.get("b").lease_until == near(now + 10)
    assert store.get("c").lease_until == near(now + 100)
    assert store.renew([], lease_until=now + 200) == 0


def test_expired_returns_only_lapsed_leases(store: Store) -> None:
    now = time.time()
    store.insert([new_job(i, now=now) for i in ("short", "long", "waiting")])
    must_claim(store, job_id="short", now=now, lease=5)
    must_claim(store, job_id="long", now=now, lease=100)
    assert store.expired(now + 1) == []
    lapsed = store.expired(now + 6)
    assert [j.id for j in lapsed] == ["short"]
    assert lapsed[0].status == JobStatus.PROCESSING
    assert sorted(j.id for j in store.expired(now + 101)) == ["long", "short"]
    assert len(store.expired(now + 101, limit=1)) == 1


# -- cancel / requeue ------------------------------------------------------------------------


def test_cancel_waiting_job_cancels_it_at_once(store: Store) -> None:
    now = time.time()
    store.insert([new_job("w", now=now), new_job("p", now=now, at=now + 60)])
    for job_id in ("w", "p"):
        got = store.cancel(job_id, now=now)
        assert got.status == JobStatus.CANCELED
        assert got.ended == near(now)
        assert statuses_of_events(store, job_id)[-1] == JobStatus.CANCELED
    assert claim(store, now=now + 61) is None


def test_cancel_running_job_requests_cancel(store: Store) -> None:
    store.insert([new_job("r"), new_job("other")])
    job = must_claim(store, job_id="r")
    other = must_claim(store, job_id="other")
    seq = store.last_event_seq()
    got = store.cancel("r", now=time.time())
    assert got.status == JobStatus.PROCESSING
    assert got.cancel_requested
    assert store.last_event_seq() == seq
    tokens = [job.claim_token or "", other.claim_token or "", "unknown"]
    assert store.cancel_requested(tokens) == [job.claim_token]
    assert store.cancel_requested([]) == []
    settled = rules.on_cancel_running(store.get("r"), time.time())
    assert store.settle("r", job.claim_token or "", settled, now=time.time())
    got = store.get("r")
    assert got.status == JobStatus.CANCELED and not got.cancel_requested


def test_cancel_final_job_changes_nothing(store: Store) -> None:
    now = time.time()
    store.insert([new_job("d", now=now)])
    finish(store, "d", JobStatus.DONE, now)
    seq = store.last_event_seq()
    got = store.cancel("d", now=now + 1)
    assert got.status == JobStatus.DONE and not got.cancel_requested
    assert store.last_event_seq() == seq
    with pytest.raises(JobNotFound):
        store.cancel("missing", now=now)


@pytest.mark.parametrize(
    ("status", "requeued"),
    [
        (JobStatus.FAILED, True),
        (JobStatus.TIMEOUT, True),
        (JobStatus.CANCELED, True),
        (JobStatus.DONE, False),
        (JobStatus.WAITING, False),
        (JobStatus.PROCESSING, False),
    ],
)
def test_requeue_only_from_failed_timeout_canceled(
    store: Store, status: JobStatus, requeued: bool
) -> None:
    now = time.time()
    store.insert([new_job("j", now=now)])
    if status == JobStatus.PROCESSING:
        must_claim(store, now=now)
    elif status != JobStatus.WAITING:
        finish(store, "j", status, now)
    got, changed = store.requeue("j", now=now + 1)
    assert changed is requeued
    if requeued:
        assert (got.status, got.attempt, got.ended) == (JobStatus.WAITING, 0, None)
        assert statuses_of_events(store, "j")[-1] == JobStatus.WAITING
        assert must_claim(store, now=now + 1).attempt == 1
    else:
        assert got.status == status


# -- insert_once -----------------------------------------------------------------------------


def test_insert_once_returns_the_existing_job_when_same(store: Store) -> None:
    first, created = store.insert_once(
        new_job("one", once_key="k"), lambda existing: True, transitions.replace_once()
    )
    assert created and first.id == "one"
    again, created = store.insert_once(
        new_job("two", once_key="k"), lambda existing: True, transitions.replace_once()
    )
    assert not created and again.id == "one"
    assert [j.id for j in store.find(JobQuery())] == ["one"]


def test_insert_once_replaces_when_not_same(store: Store) -> None:
    now = time.time()
    store.insert_once(
        new_job("old", now=now, once_key="k"), lambda e: True, transitions.replace_once()
    )
    seen: list[str] = []

    def same(existing: JobRecord) -> bool:
        seen.append(existing.id)
        return False

    new, created = store.insert_once(
        new_job("new", now=now, once_key="k", priority=3), same, transitions.replace_once()
    )
    assert seen == ["old"]
    assert created and new.id == "new" and new.priority == 3
    old = store.get("old")
    assert (old.status, old.reason) == (JobStatus.CANCELED, "replaced")
    assert statuses_of_events(store, "old")[-1] == JobStatus.CANCELED
    assert [j.id for j in store.find(JobQuery(statuses=ACTIVE))] == ["new"]


def test_insert_once_replacing_a_running_job_asks_it_to_stop(store: Store) -> None:
    store.insert_once(new_job("old", once_key="k"), lambda e: True, transitions.replace_once())
    must_claim(store, job_id="old")
    new, created = store.insert_once(
        new_job("new", once_key="k"), lambda e: False, transitions.replace_once()
    )
    assert created and new.id == "new"
    old = store.get("old")
    assert old.status == JobStatus.PROCESSING and old.cancel_requested


def test_insert_once_after_the_job_ended_creates_a_new_one(store: Store) -> None:
    now = time.time()
    store.insert_once(
        new_job("old", now=now, once_key="k"), lambda e: True, transitions.replace_once()
    )
    finish(store, "old", JobStatus.DONE, now)
    new, created = store.insert_once(
        new_job("new", now=now, once_key="k"), lambda e: True, transitions.replace_once()
    )
    assert created and new.id == "new"


# -- events ----------------------------------------------------------------------------------


def test_events_ordered_filtered_and_resumable(store: Store) -> None:
    assert store.last_event_seq() == 0
    assert store.events() == []
    now = time.time()
    store.insert([new_job("a", now=now), new_job("b", now=now)])
    finish(store, "a", JobStatus.DONE, now + 1)
    store.cancel("b", now=now + 2)
    events = store.events()
    seqs = [e.seq for e in events]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    assert [(e.job_id, e.status) for e in events] == [
        ("a", JobStatus.WAITING),
        ("b", JobStatus.WAITING),
        ("a", JobStatus.PROCESSING),
        ("a", JobStatus.DONE),
        ("b", JobStatus.CANCELED),
    ]
    assert store.last_event_seq() == seqs[-1]
    assert [e.status for e in store.events(job_ids=["b"])] == [
        JobStatus.WAITING,
        JobStatus.CANCELED,
    ]
    assert [e.seq for e in store.events(after=seqs[2])] == seqs[3:]
    assert [e.seq for e in store.events(limit=2)] == seqs[:2]
    assert [e.job_id for e in store.events(since=now + 0.5)] == ["a", "a", "b"]
    assert store.events(after=seqs[-1]) == []
    assert all(e.cls == CLS and e.queue == "default" for e in events)


# -- housekeeping ------------------------------------------------------------------------------


def test_purge_deletes_old_final_jobs_and_their_events(store: Store) -> None:
    now = time.time()
    old = now - 3600
    for job_id in ("old-done", "old-failed", "old-canceled", "new-done", "waiting", "running"):
        store.insert([new_job(job_id, now=old)])
    finish(store, "old-done", JobStatus.DONE, old)
    finish(store, "old-failed", JobStatus.FAILED, old)
    finish(store, "old-canceled", JobStatus.CANCELED, old)
    finish(store, "new-done", JobStatus.DONE, now)
    must_claim(store, job_id="running", now=old)

    assert store.purge(statuses=(JobStatus.FAILED,), ended_before=now - 60) == 1
    assert store.purge(statuses=FINAL, ended_before=now - 60) == 2
    left = sorted(j.id for j in store.find(JobQuery()))
    assert left == ["new-done", "running", "waiting"]
    assert {e.job_id for e in store.events()} == {"new-done", "running", "waiting"}
    for job_id in ("old-done", "old-failed", "old-canceled"):
        with pytest.raises(JobNotFound):
            store.get(job_id)
    assert store.purge(statuses=FINAL, ended_before=now - 60) == 0


def test_flush_deletes_every_job_and_event(store: Store) -> None:
    store.insert([new_job("a"), new_job("b")])
    must_claim(store)
    store.flush()
    assert store.find(JobQuery()) == []
    assert store.events() == []
    store.insert([new_job("a")])  # ids are free again
    assert store.get("a").status == JobStatus.WAITING


def test_stats_counts_by_status_queue_class(store: Store) -> None:
    now = time.time()
    store.insert([new_job("w1", now=now - 10, cls="m.A", queue="q1")])
    store.insert([new_job("w2", now=now - 5, cls="m.A", queue="q1")])
    store.insert([new_job("p", now=now, at=now + 60, cls="m.A", queue="q1")])
    store.insert([new_job("d", now=now - 2000, cls="m.B", queue="q2")])
    store.insert([new_job("f", now=now - 2000, cls="m.B", queue="q2")])
    finish(store, "d", JobStatus.DONE, now - 1)
    finish(store, "f", JobStatus.FAILED, now - 1000)
    stats = store.stats(now=now, window=300)
    assert stats["by_status"] == {"WAITING": 2, "POSTPONED": 1, "DONE": 1, "FAILED": 1}
    assert stats["by_queue"] == {
        "q1": {"WAITING": 2, "POSTPONED": 1},
        "q2": {"DONE": 1, "FAILED": 1},
    }
    assert stats["by_class"] == {
        "m.A": {"WAITING": 2, "POSTPONED": 1},
        "m.B": {"DONE": 1, "FAILED": 1},
    }
    assert stats["oldest_waiting_age"]["q1"] == pytest.approx(10, abs=0.01)
    assert "q2" not in stats["oldest_waiting_age"]
    assert stats["finished_in_window"] == {"DONE": 1}
    assert stats["window"] == 300


def test_heartbeat_nodes_and_remove_node(store: Store) -> None:
    now = time.time()
    a = NodeRecord(
        name="a",
        host="h1",
        pid=10,
        started=now - 100,
        heartbeat=now - 50,
        workers_busy=1,
        workers_idle=2,
        running=("j1",),
        queues=("default", "mail"),
        version="0.1.0",
    )
    store.heartbeat(a)
    store.heartbeat(NodeRecord(name="b", host="h2", pid=20, started=now, heartbeat=now))
    assert store.nodes() == [
        a,
        NodeRecord(name="b", host="h2", pid=20, started=now, heartbeat=now),
    ]
    assert [n.name for n in store.nodes(alive_after=now - 10)] == ["b"]
    fresh = NodeRecord(name="a", host="h1", pid=10, started=now - 100, heartbeat=now)
    store.heartbeat(fresh)
    assert store.nodes(alive_after=now - 10) == [
        fresh,
        NodeRecord(name="b", host="h2", pid=20, started=now, heartbeat=now),
    ]
    store.remove_node("a")
    store.remove_node("never-there")
    assert [n.name for n in store.nodes()] == ["b"]


def test_count_due_and_next_due(store: Store) -> None:
    now = time.time()
    assert store.next_due(["default"]) is None
    assert store.count_due(["default"], now=now, force_spawn=False) == 0
    store.insert([new_job("due1", now=now, at=now - 5), new_job("due2", now=now)])
    store.insert([new_job("later", now=now, at=now + 50)])
    store.insert([new_job("spawn", now=now, ignore_max_children=True)])
    store.insert([new_job("elsewhere", now=now, at=now - 100, queue="other")])
    assert store.count_due(["default"], now=now, force_spawn=False) == 2
    assert store.count_due(["default"], now=now, force_spawn=True) == 1
    assert store.count_due(["default", "other"], now=now, force_spawn=False) == 3
    assert store.count_due(["default"], now=now + 60, force_spawn=False) == 3
    assert store.count_due(["default"], now=now + 60, force_spawn=False, limit=2) == 2
    assert store.count_due(["default", "other"], now=now, force_spawn=False, limit=10) == 3
    assert store.count_due(["default"], now=now, force_spawn=False, limit=0) == 0
    assert store.count_due([], now=now, force_spawn=False) == 0
    assert store.next_due(["default"]) == near(now - 5)
    assert store.next_due(["other", "default"]) == near(now - 100)
    assert store.next_due([]) is None
    must_claim(store, job_id="due1", now=now)
    assert store.count_due(["default"], now=now, force_spawn=False) == 1
    assert store.next_due(["default"]) == near(now)


# -- wake-ups ----------------------------------------------------------------------------------


def _insert_in_child(spec: StoreSpec, job_id: str) -> None:
    store = spec.open()
    try:
        store.insert([new_job(job_id)])
    finally:
        store.close()


def test_waker_times_out_without_changes(store: Store) -> None:
    store.last_event_seq()  # the store exists
    waker = store.waker()
    try:
        woke, took = elapsed(lambda: waker.wait(0.2))
        assert woke is False
        assert 0.15 <= took < 2.0
    finally:
        waker.close()


def test_waker_wakes_when_another_connection_writes(store: Store, store_spec: StoreSpec) -> None:
    other = store_spec.open()
    waker = store.waker()
    timer = threading.Timer(0.2, lambda: other.insert([new_job("from-other")]))
    try:
        timer.start()
        woke, took = elapsed(lambda: waker.wait(10.0))
        assert woke is True
        assert took < 2.0
        assert store.get("from-other").status == JobStatus.WAITING
    finally:
        timer.join()
        waker.close()
        other.close()


def test_waker_wakes_when_another_process_writes(store: Store, store_spec: StoreSpec) -> None:
    waker = store.waker()
    child = FORK.Process(target=_insert_in_child, args=(store_spec, "from-child"))
    try:
        child.start()
        woke, took = elapsed(lambda: waker.wait(10.0))
        assert woke is True and took < 5.0
    finally:
        child.join(30)
        waker.close()
    assert child.exitcode == 0
    assert store.get("from-child").status == JobStatus.WAITING


# -- concurrency -------------------------------------------------------------------------------


def _claim_all(spec: StoreSpec, barrier: multiprocessing.synchronize.Barrier, out: str) -> None:
    store = spec.open()
    try:
        store.last_event_seq()  # connect before the start line
        barrier.wait(30)
        ids = []
        while (job := claim(store, worker=f"node-a/{out[-5:]}")) is not None:
            ids.append(job.id)
        Path(out).write_text("\n".join(ids))
    finally:
        store.close()


def test_concurrent_claims_take_every_job_exactly_once(
    store: Store, store_spec: StoreSpec, tmp_path: Path
) -> None:
    now = time.time()
    store.insert([new_job(f"job-{i:03d}", now=now) for i in range(400)])
    barrier = FORK.Barrier(4)
    outs = [str(tmp_path / f"claimed-{i}") for i in range(4)]
    procs = [FORK.Process(target=_claim_all, args=(store_spec, barrier, o)) for o in outs]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0, 0, 0]
    claimed = [line for o in outs for line in Path(o).read_text().split("\n") if line]
    assert len(claimed) == 400
    assert len(set(claimed)) == 400
    jobs = store.find(JobQuery())
    assert len(jobs) == 400
    assert all(j.status == JobStatus.PROCESSING and j.attempt == 1 for j in jobs)
    assert len({j.claim_token for j in jobs}) == 400


def _add_once(spec: StoreSpec, barrier: multiprocessing.synchronize.Barrier, out: str) -> None:
    scheduler = Scheduler(spec.open())
    try:
        scheduler.store.last_event_seq()
        barrier.wait(30)
        process = scheduler.add_job_once(CLS, {"report": "daily"})
        Path(out).write_text(process.id)
    finally:
        scheduler.close()


def test_add_job_once_race_creates_exactly_one_job(
    store: Store, store_spec: StoreSpec, tmp_path: Path
) -> None:
    barrier = FORK.Barrier(8)
    outs = [str(tmp_path / f"added-{i}") for i in range(8)]
    procs = [FORK.Process(target=_add_once, args=(store_spec, barrier, o)) for o in outs]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0] * 8
    active = store.find(JobQuery(statuses=ACTIVE, classes=(CLS,)))
    assert len(active) == 1
    assert store.find(JobQuery()) == active  # nothing was added and replaced either
    assert {Path(o).read_text() for o in outs} == {active[0].id}


# -- settle_batch: many at once (both stores) ------------------------------------------------


def test_settle_batch_of_many_records_each_change_once_with_dense_seqs(store: Store) -> None:
    now = time.time()
    store.insert([new_job(f"m{i:02}", now=now + i * 1e-4, retry=2) for i in range(24)])
    request = ClaimRequest(queues=("default",), node="n", worker="n/1", token="k1", lease=30.0,
                           limit=8)  # fmt: skip
    _, held = store.settle_batch([], now=now + 0.01, claim=request)
    assert [j.id for j in held] == [f"m{i:02}" for i in range(8)]
    seq = store.last_event_seq()
    # Outcomes of every kind in one batch: done, failed with a retry, given back.
    fail = rules.on_error(held[1], error(1), now, rand=lambda: 0.0)
    settles = [(held[0].id, held[0].claim_token or "", rules.on_success(held[0], "1", now)),
               (held[1].id, held[1].claim_token or "", fail),
               (held[2].id, held[2].claim_token or "", rules.release(held[2]))]  # fmt: skip
    settles += [(j.id, j.claim_token or "", rules.on_success(j, "2", now)) for j in held[3:]]
    flags, more = store.settle_batch(settles, now=now + 0.01, claim=replace(request, token="k2"))
    assert all(flags) and len(flags) == 8
    # The job given back is due again, and first in FIFO order.
    assert [j.id for j in more] == ["m02"] + [f"m{i:02}" for i in range(8, 15)]
    assert len({j.claim_token for j in held + more}) == 16
    events = store.events(after=seq)
    assert [e.seq for e in events] == list(range(seq + 1, seq + 17))  # dense, one each
    changes = [(e.job_id, e.status, e.attempt) for e in events]
    assert changes[:3] == [
        ("m00", JobStatus.DONE, 1),
        ("m01", fail.status, 1),
        ("m02", JobStatus.WAITING, 0),  # the attempt given back
    ]
    assert changes[3:8] == [(f"m{i:02}", JobStatus.DONE, 1) for i in range(3, 8)]
    assert changes[8:] == [(j.id, JobStatus.PROCESSING, 1) for j in more]
    m01 = store.get("m01")
    assert (m01.status, [e.message for e in m01.errors]) == (fail.status, ["boom"])
    assert (store.get("m02").status, store.get("m02").attempt) == (JobStatus.PROCESSING, 1)


def _drain_in_batches(
    spec: StoreSpec, barrier: multiprocessing.synchronize.Barrier, name: str, out: str
) -> None:
    store = spec.open()
    ran: list[str] = []
    try:
        store.last_event_seq()
        barrier.wait(30)
        held: list[JobRecord] = []
        for round_no in range(1000):
            now = time.time()
            settles = [(j.id, j.claim_token or "", rules.on_success(j, "1", now)) for j in held]
            request = ClaimRequest(queues=("default",), node=name, worker=name,
                                   token=f"{name}-{round_no}", lease=60.0, limit=8)  # fmt: skip
            done, held = store.settle_batch(settles, now=now, claim=request)
            assert all(done)
            ran += [j.id for j in held]
            if not held and not settles:
                break
        Path(out).write_text("\n".join(ran))
    finally:
        store.close()


def test_concurrent_batch_claims_run_every_job_exactly_once(
    store: Store, store_spec: StoreSpec, tmp_path: Path
) -> None:
    now = time.time()
    store.insert([new_job(f"c{i:03}", now=now) for i in range(150)])
    barrier = FORK.Barrier(3)
    outs = [str(tmp_path / f"ran-{i}") for i in range(3)]
    procs = [
        FORK.Process(target=_drain_in_batches, args=(store_spec, barrier, f"w{i}", o))
        for i, o in enumerate(outs)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0, 0, 0]
    ran = [line for o in outs for line in Path(o).read_text().split("\n") if line]
    assert sorted(ran) == [f"c{i:03}" for i in range(150)]  # each once, none lost
    jobs = store.find(JobQuery())
    assert all(j.status == JobStatus.DONE and j.attempt == 1 for j in jobs)
    events = store.events(limit=1000)
    assert [e.seq for e in events] == list(range(events[0].seq, events[0].seq + 450))
    per_job: dict[str, list[JobStatus]] = {}
    for e in events:
        per_job.setdefault(e.job_id, []).append(e.status)
    assert set(map(tuple, per_job.values())) == {
        (JobStatus.WAITING, JobStatus.PROCESSING, JobStatus.DONE)
    }
