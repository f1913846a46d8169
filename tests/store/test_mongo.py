"""What only the MongoDB store has to prove: indexes, fencing after lost replies, outages,
redaction, wake-ups (polling and change streams), races between processes.

Runs against nx-27017, or against ``$TASKSCHED_TEST_MONGODB_URI`` when set (tests that
stop the server are then skipped).
"""

from __future__ import annotations

import datetime as dt
import multiprocessing
import multiprocessing.synchronize
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pymongo
import pytest
from pymongo import monitoring
from pymongo.collection import Collection
from pymongo.errors import AutoReconnect

from taskschedd import rules, transitions
from taskschedd.errors import JobNotFound, StoreError, StoreUnavailable
from taskschedd.model import (
    ACTIVE,
    ClaimRequest,
    JobQuery,
    JobRecord,
    JobStatus,
    NodeRecord,
)
from taskschedd.scheduler import Scheduler
from taskschedd.store.base import DuplicateJobId
from taskschedd.store.mongo import MongoStore
from taskschedd.transitions import Transition
from tests.helpers import elapsed, settlement, wait_for
from tests.mongo_server import MongoServer, external_mongo_uri, pick_free_port, unique_db_name
from tests.store.test_contract import CLS, must_claim, new_job

FORK = multiprocessing.get_context("fork")

# nx-27017 rejects dots in collection names (the defaults have them): see docs/nx-27017.md.
NAMES = {
    "jobs_collection": "taskscheduler_jobs",
    "events_collection": "taskscheduler_events",
    "nodes_collection": "taskscheduler_nodes",
}

needs_own_server = pytest.mark.skipif(
    external_mongo_uri() is not None, reason="stops and restarts the server"
)


def _ok(flags: list[Any]) -> list[bool]:
    """Settled or not, per settle of a batch."""
    return [f is not None for f in flags]


def open_mongo(uri: str, database: str, **options: Any) -> MongoStore:
    return MongoStore(uri, database=database, **{**NAMES, **options})


@pytest.fixture
def database(mongo_uri: str) -> Iterator[str]:
    name = unique_db_name()
    yield name
    client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(
        mongo_uri, serverSelectionTimeoutMS=5000
    )
    with client:
        client.drop_database(name)


@pytest.fixture
def store(mongo_uri: str, database: str) -> Iterator[MongoStore]:
    s = open_mongo(mongo_uri, database, poll_interval=0.05)
    yield s
    s.close()


@pytest.fixture
def server() -> Iterator[MongoServer]:
    if external_mongo_uri() is not None:
        pytest.skip("stops and restarts the server")
    with MongoServer() as srv:
        yield srv


def raw(store: MongoStore, name: str) -> Collection[dict[str, Any]]:
    """The store's own collection handle, for looking at what is stored."""
    return store._db[name]


def index_keys(coll: Collection[dict[str, Any]]) -> dict[tuple[str, ...], dict[str, Any]]:
    """Indexes by their field names (nx-27017 names them differently and loses -1)."""
    return {tuple(ix["key"].keys()): dict(ix) for ix in coll.list_indexes()}


# -- indexes ---------------------------------------------------------------------------------


def test_indexes_serve_the_claim_once_keys_and_ttl(mongo_uri: str, database: str) -> None:
    store = open_mongo(mongo_uri, database, retention=3600)
    try:
        store.last_event_seq()  # first use creates the indexes
        jobs = index_keys(raw(store, NAMES["jobs_collection"]))
        events = index_keys(raw(store, NAMES["events_collection"]))
    finally:
        store.close()
    assert ("state", "queue", "spawn", "priority", "at", "seq") in jobs  # the claim's sort
    assert jobs[("once",)].get("unique") is True
    assert jobs[("ended_at",)].get("expireAfterSeconds") == 3600
    assert events[("ended_at",)].get("expireAfterSeconds") == 3600
    assert ("job_id", "seq") in events and ("seq",) in events
    assert ("claim_token",) in jobs and ("state", "lease_until") in jobs


def test_retention_changes_the_ttl_and_none_leaves_it_alone(mongo_uri: str, database: str) -> None:
    def ttl_after_opening(retention: float | None) -> Iterator[Any]:
        store = open_mongo(mongo_uri, database, retention=retention)
        try:
            store.last_event_seq()
            for coll in (NAMES["jobs_collection"], NAMES["events_collection"]):
                ttl = index_keys(raw(store, coll)).get(("ended_at",), {})
                yield ttl.get("expireAfterSeconds")
        finally:
            store.close()

    assert list(ttl_after_opening(None)) == [None, None]  # a plain open creates none
    assert list(ttl_after_opening(3600)) == [3600, 3600]
    # MongoDB refuses new options for an existing index: the store uses collMod.
    assert list(ttl_after_opening(7200)) == [7200, 7200]
    assert list(ttl_after_opening(None)) == [7200, 7200]  # e.g. a CLI without config
    assert list(ttl_after_opening(0)) == [None, None]  # keep forever: no TTL index


def test_ttl_field_is_a_date_set_only_when_final(store: MongoStore) -> None:
    now = time.time()
    store.insert([new_job("done", now=now), new_job("waiting", now=now)])
    job = must_claim(store, job_id="done", now=now)
    assert store.settle("done", job.claim_token or "", rules.on_success(job, "1", now), now=now)
    jobs = raw(store, NAMES["jobs_collection"])
    done = jobs.find_one({"_id": "done"})
    assert done is not None and ttl_instant(done["ended_at"]) == pytest.approx(now, abs=0.01)
    waiting = jobs.find_one({"_id": "waiting"})
    assert waiting is not None and "ended_at" not in waiting
    store.requeue("done", now=now)  # not final any more: no expiry
    again = jobs.find_one({"_id": "done"})
    assert again is not None and again["status"] == 3  # DONE is not re-queued
    store.cancel("waiting", now=now)
    store.requeue("waiting", now=now)
    requeued = jobs.find_one({"_id": "waiting"})
    assert requeued is not None and "ended_at" not in requeued


def ttl_instant(value: Any) -> float:
    """A TTL field's instant. MongoDB stores a date; nx-27017 turns a date given to $set
    into ISO text (its TTL expires that too; see docs/nx-27017.md)."""
    if isinstance(value, str):
        value = dt.datetime.fromisoformat(value)
        if value.tzinfo is None:
            value = value.replace(tzinfo=dt.UTC)
    assert isinstance(value, dt.datetime), value
    if value.tzinfo is None:  # pymongo returns naive UTC datetimes by default
        value = value.replace(tzinfo=dt.UTC)
    return value.timestamp()


# -- fencing after a lost reply ----------------------------------------------------------------


class LoseReplies:
    """Makes find_one_and_update raise AutoReconnect, before or after it is applied."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, *, applied: bool, times: int = 1) -> None:
        self.calls = 0
        self.left = times
        real = Collection.find_one_and_update

        def fake(coll: Collection[Any], *args: Any, **kwargs: Any) -> Any:
            self.calls += 1
            if self.left <= 0:
                return real(coll, *args, **kwargs)
            self.left -= 1
            if applied:
                real(coll, *args, **kwargs)
            raise AutoReconnect("connection closed (simulated)")

        monkeypatch.setattr(Collection, "find_one_and_update", fake)


def test_claim_with_a_lost_reply_is_looked_up_by_token_not_reissued(
    store: MongoStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    store.insert([new_job("a", priority=2), new_job("b", priority=1)])
    lose = LoseReplies(monkeypatch, applied=True)
    job = store.claim(["default"], node="n", worker="n/1", token="tok-a", lease=30, now=time.time())
    assert job is not None and job.id == "a" and job.claim_token == "tok-a"
    assert lose.calls == 1  # looked up, never claimed again
    running = store.find(JobQuery(statuses=(JobStatus.PROCESSING,)))
    assert [j.id for j in running] == ["a"]
    assert store.get("b").status == JobStatus.WAITING
    assert [e.status for e in store.events(job_ids=["a"])][-1] == JobStatus.PROCESSING


def test_claim_lost_before_it_applied_claims_nothing(
    store: MongoStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    store.insert([new_job("a")])
    lose = LoseReplies(monkeypatch, applied=False)
    with pytest.raises(StoreUnavailable, match="reply was lost"):
        store.claim(["default"], node="n", worker="n/1", token="t1", lease=30, now=time.time())
    assert lose.calls == 1
    assert store.get("a").status == JobStatus.WAITING
    assert must_claim(store).id == "a"  # the caller retries with a new token


def test_settle_with_a_lost_reply_reports_what_happened(
    store: MongoStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    now = time.time()
    store.insert([new_job("a", now=now), new_job("b", now=now)])
    a = must_claim(store, job_id="a", now=now)
    b = must_claim(store, job_id="b", now=now)
    LoseReplies(monkeypatch, applied=True)
    assert store.settle("a", a.claim_token or "", rules.on_success(a, '"ok"', now), now=now)
    assert store.get("a").status == JobStatus.DONE
    assert [e.status for e in store.events(job_ids=["a"])][-1] == JobStatus.DONE
    LoseReplies(monkeypatch, applied=False)
    with pytest.raises(StoreUnavailable):
        store.settle("b", b.claim_token or "", rules.on_success(b, '"ok"', now), now=now)
    assert store.get("b").status == JobStatus.PROCESSING  # the caller retries: still held
    assert store.settle("b", b.claim_token or "", rules.on_success(b, '"ok"', now), now=now)


def test_interrupted_next_occurrence_is_inserted_by_maintenance(
    store: MongoStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    now = time.time()
    store.insert([new_job("s", now=now, interval=60)])
    job = must_claim(store, now=now)

    def outage(*args: Any, **kwargs: Any) -> None:
        raise AutoReconnect("simulated outage after the settle")

    monkeypatch.setattr(store, "_insert_next", outage)
    assert store.settle("s", job.claim_token or "", rules.on_success(job, "1", now), now=now)
    with pytest.raises(JobNotFound):
        store.get("s.1")
    monkeypatch.undo()
    store.heartbeat(NodeRecord(name="n", host="h", pid=1, started=now, heartbeat=now))
    nxt = store.get("s.1")
    assert (nxt.status, nxt.series, nxt.at) == (JobStatus.POSTPONED, "s", pytest.approx(now + 60))
    stored = raw(store, NAMES["jobs_collection"]).find_one({"_id": "s"})
    assert stored is not None and "next_pending" not in stored and "next_job" not in stored


def test_a_series_canceled_while_its_next_occurrence_is_pending_never_runs_it(
    store: MongoStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The settle wrote the next occurrence into the settled job but died before inserting
    it; the cancel changes the pending copy, so maintenance inserts it CANCELED."""
    now = time.time()
    store.insert([new_job("s", now=now, interval=-1)])
    job = must_claim(store, now=now)
    monkeypatch.setattr(store, "_insert_next_logged", lambda *a: None)  # the process died
    assert store.settle("s", job.claim_token or "", rules.on_success(job, "1", now), now=now)
    monkeypatch.undo()
    done = store.apply_series("s", transitions.cancel(), now=now + 1)
    assert [(j, b.name) for j, b in done] == [("s.1", "canceled")]
    store._maintained = 0.0
    store.heartbeat(NodeRecord(name="n", host="h", pid=1, started=now, heartbeat=now))
    nxt = store.get("s.1")
    assert (nxt.status, nxt.reason) == (JobStatus.CANCELED, "canceled")
    assert store.claim(["default"], node="n", worker="w", token="x", lease=30, now=now + 2) is None
    stored = raw(store, NAMES["jobs_collection"]).find_one({"_id": "s"})
    assert stored is not None and "next_pending" not in stored
    # The events say what SQLite's say: added as the settle made it, then canceled.
    assert [(e.status, e.reason) for e in store.events(job_ids=["s.1"])] == [
        (JobStatus.WAITING, "added"), (JobStatus.CANCELED, "canceled"),
    ]  # fmt: skip


def test_purge_keeps_a_job_whose_next_occurrence_is_not_inserted_yet(
    store: MongoStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    now = time.time()
    store.insert([new_job("s", now=now, interval=60)])
    job = must_claim(store, now=now)
    monkeypatch.setattr(store, "_insert_next_logged", lambda *a: None)  # the process died
    assert store.settle("s", job.claim_token or "", rules.on_success(job, "1", now), now=now)
    monkeypatch.undo()
    assert store.purge(statuses=[JobStatus.DONE], ended_before=now + 10) == 0
    store._maintained = 0.0
    store.heartbeat(NodeRecord(name="n", host="h", pid=1, started=now, heartbeat=now))
    assert store.get("s.1").status is JobStatus.POSTPONED
    assert store.purge(statuses=[JobStatus.DONE], ended_before=now + 10) == 1


def test_a_record_whose_state_and_status_disagree_is_malformed(store: MongoStore) -> None:
    now = time.time()
    store.insert([new_job(f"j{i}", now=now) for i in range(3)])
    jobs = raw(store, NAMES["jobs_collection"])
    jobs.update_one({"_id": "j0"}, {"$set": {"state": "final"}})  # status still WAITING
    jobs.update_one({"_id": "j1"}, {"$set": {"status": int(JobStatus.DONE)}})  # still ready
    found = {r.id: r.corrupt for r in store.malformed()}
    assert set(found) == {"j0", "j1"}
    assert "does not match its status" in (found["j0"] or "")


def test_a_maintenance_pass_inserting_a_canceled_pending_copy_leaves_a_sound_record(
    store: MongoStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The settler inserted the next occurrence held; the series was canceled (its pending
    copy CANCELED); a maintenance pass inserts that copy too: the held document must
    become the copy, not a final state with a runnable status."""
    now = time.time()
    store.insert([new_job("s", now=now, interval=-1)])
    job = must_claim(store, now=now)
    paused: list[tuple[str, dict[str, Any]]] = []
    monkeypatch.setattr(store, "_insert_next", lambda parent, doc: paused.append((parent, doc)))
    assert store.settle("s", job.claim_token or "", rules.on_success(job, "1", now), now=now)
    monkeypatch.undo()
    ((_parent, next_doc),) = paused
    Scheduler(store).cancel_job("s")
    jobs = raw(store, NAMES["jobs_collection"])
    jobs.insert_one({**next_doc, "state": "held"})  # the settler's first step
    copy = (jobs.find_one({"_id": "s"}) or {})["next_job"]
    store._insert_next("s", copy)  # the maintenance pass
    store._insert_next("s", next_doc)  # the settler goes on
    stored = jobs.find_one({"_id": "s.1"}) or {}
    assert (stored.get("state"), stored.get("status"), stored.get("reason")) == (
        "final", int(JobStatus.CANCELED), "canceled",
    )  # fmt: skip
    assert store.get("s.1").status is JobStatus.CANCELED


def test_a_cancel_between_the_held_insert_and_its_release_wins(
    store: MongoStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """_insert_next inserts the next occurrence held (never claimed), then releases it: a
    series cancel that runs in between cancels the held one, and the release finds
    nothing to release."""
    now = time.time()
    store.insert([new_job("s", now=now, interval=-1)])
    job = must_claim(store, now=now)
    jobs = raw(store, NAMES["jobs_collection"])
    real_find_one = type(jobs).find_one
    seen: list[str] = []

    def find_one(coll: Any, flt: Any = None, *args: Any, **kwargs: Any) -> Any:
        projection = kwargs.get("projection") or (args[0] if args else None)
        if flt == {"_id": "s"} and projection and "next_job" in projection and not seen:
            seen.append("held")  # the occurrence is in, held: cancel the series now
            held = real_find_one(coll, {"_id": "s.1"})
            assert held is not None and held["state"] == "held"
            assert (
                store.claim(["default"], node="n", worker="w", token="x", lease=30, now=now) is None
            )
            Scheduler(store).cancel_job("s")
        return real_find_one(coll, flt, *args, **kwargs)

    monkeypatch.setattr(type(jobs), "find_one", find_one)
    assert store.settle("s", job.claim_token or "", rules.on_success(job, "1", now), now=now)
    monkeypatch.undo()
    assert seen == ["held"]
    nxt = store.get("s.1")
    assert (nxt.status, nxt.reason) == (JobStatus.CANCELED, "canceled")
    assert store.claim(["default"], node="n", worker="w", token="y", lease=30, now=now + 1) is None


# -- event seqs ------------------------------------------------------------------------------


def test_event_seqs_are_never_reused_after_flush_or_purge(store: MongoStore) -> None:
    now = time.time()
    store.insert([new_job("a", now=now - 100), new_job("b", now=now - 100)])
    top = store.last_event_seq()
    store.flush()
    assert store.events() == []
    assert store.last_event_seq() == top
    store.insert([new_job("c", now=now - 100)])
    (event,) = store.events(after=top)
    assert event.job_id == "c" and event.seq == top + 1
    store.cancel("c", now=now - 100)
    top = store.last_event_seq()
    assert store.purge(statuses=(JobStatus.CANCELED,), ended_before=now) == 1
    store.insert([new_job("d", now=now)])
    assert [e.seq for e in store.events(after=top)] == [top + 1]


def _emit_events(
    spec: tuple[str, str], barrier: multiprocessing.synchronize.Barrier, n: int
) -> None:
    store = open_mongo(*spec)
    try:
        store.last_event_seq()
        barrier.wait(30)
        for i in range(n):
            store.insert([new_job(f"{uuid.uuid4().hex}-{i}")])
    finally:
        store.close()


def test_event_seqs_are_dense_and_unique_across_processes(
    store: MongoStore, mongo_uri: str, database: str
) -> None:
    barrier = FORK.Barrier(4)
    procs = [
        FORK.Process(target=_emit_events, args=((mongo_uri, database), barrier, 40))
        for _ in range(4)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0] * 4
    seqs = [e.seq for e in store.events(limit=1000)]
    assert seqs == list(range(1, 161))


# -- outages, redaction -----------------------------------------------------------------------


@needs_own_server
def test_outage_raises_store_unavailable_then_the_same_store_resumes(server: MongoServer) -> None:
    store = open_mongo(server.uri, unique_db_name(), server_selection_timeout=0.5)
    try:
        now = time.time()
        store.insert([new_job(f"j{i}", now=now) for i in range(5)])
        held = must_claim(store, now=now)
        server.stop()
        for operation in (
            lambda: store.get("j1"),
            lambda: store.claim(["default"], node="n", worker="w", token="t", lease=5, now=now),
            lambda: store.insert([new_job("lost-while-down")]),
            lambda: store.settle(held.id, held.claim_token or "", rules.release(held), now=now),
            store.last_event_seq,
        ):
            with pytest.raises(StoreUnavailable):
                operation()
        server.start()
        assert wait_for(lambda: _reachable(store), timeout=10)
        assert store.settle(
            held.id, held.claim_token or "", rules.on_success(held, "1", now), now=now
        )
        jobs = {j.id: j for j in store.find(JobQuery())}
        assert sorted(jobs) == ["j0", "j1", "j2", "j3", "j4"]
        assert jobs[held.id].status == JobStatus.DONE
        assert sum(j.status == JobStatus.WAITING for j in jobs.values()) == 4
    finally:
        store.close()


def _reachable(store: MongoStore) -> bool:
    try:
        store.last_event_seq()
    except StoreUnavailable:
        return False
    return True


def test_passwords_never_reach_errors(capfd: pytest.CaptureFixture[str]) -> None:
    port = pick_free_port()  # nothing listens there
    url = f"mongodb://scheduler:s3cr3t-pw@127.0.0.1:{port}/jobs?authSource=admin"
    store = MongoStore(url, server_selection_timeout=0.2, **NAMES)
    try:
        with pytest.raises(StoreUnavailable) as info:
            store.get("x")
        assert "s3cr3t-pw" not in str(info.value)
        assert "127.0.0.1" in str(info.value)
        assert info.value.__cause__ is None and info.value.__suppress_context__
        assert "s3cr3t-pw" not in repr(store) and "s3cr3t-pw" not in store.url
    finally:
        store.close()
    with pytest.raises(StoreError) as bad:
        MongoStore("mongodb://scheduler:s3cr3t-pw@127.0.0.1:notaport/").get("x")
    assert "s3cr3t-pw" not in str(bad.value) and "invalid MongoDB URL" in str(bad.value)
    out, err = capfd.readouterr()
    assert "s3cr3t-pw" not in out + err


def test_start_logs_topology_wakeups_and_the_standalone_warning(
    mongo_uri: str, database: str, capfd: pytest.CaptureFixture[str]
) -> None:
    if external_mongo_uri() is not None:
        pytest.skip("the external server may be a replica set")
    store = open_mongo(mongo_uri, database, poll_interval=0.25)
    try:
        store.last_event_seq()
    finally:
        store.close()
    err = capfd.readouterr().err
    assert "topology=standalone" in err and "polling every 0.25s" in err
    assert "standalone server" in err and "warning" in err


def test_bad_options_are_refused() -> None:
    with pytest.raises(StoreError, match="change_streams must be one of auto, on, off"):
        MongoStore("mongodb://localhost/", change_streams="sometimes")


# -- wake-ups -------------------------------------------------------------------------------


def _wake_after_insert(store: MongoStore, other: MongoStore, limit: float) -> None:
    waker = store.waker()
    timer = threading.Timer(0.1, lambda: other.insert([new_job()]))
    try:
        assert waker.wait(0.2) is False
        timer.start()
        woke, took = elapsed(lambda: waker.wait(5.0))
        assert woke is True
        assert took < limit
    finally:
        timer.join()
        waker.close()


def test_polling_waker_wakes_within_the_poll_interval(mongo_uri: str, database: str) -> None:
    store = open_mongo(mongo_uri, database, poll_interval=0.05, change_streams="off")
    other = open_mongo(mongo_uri, database)
    try:
        waker = store.waker()
        assert getattr(waker, "mode", None) == "polling"
        waker.close()
        # Without polling it would sleep the whole 5 s wait: a bound far below that (and
        # far above a loaded CI machine's scheduling delays) shows it polled.
        _wake_after_insert(store, other, limit=1.5)
    finally:
        store.close()
        other.close()


def test_change_stream_waker_wakes_on_insert(mongo_uri: str, database: str) -> None:
    # Polling every 10 s: only the change stream can wake it this fast.
    store = open_mongo(mongo_uri, database, poll_interval=10.0, change_streams="on")
    other = open_mongo(mongo_uri, database)
    try:
        store.last_event_seq()
        if store.topology == "standalone" and external_mongo_uri() is not None:
            pytest.skip("a standalone MongoDB has no change streams (nx-27017 has)")
        waker = store.waker()
        assert getattr(waker, "mode", None) == "change stream"
        waker.close()
        _wake_after_insert(store, other, limit=3.0)  # polling alone: 10 s
    finally:
        store.close()
        other.close()


def test_waker_survives_fork_and_close_in_the_child(store: MongoStore) -> None:
    waker = store.waker()
    child = FORK.Process(target=waker.close)
    child.start()
    child.join(10)
    assert child.exitcode == 0
    store.insert([new_job()])
    assert waker.wait(5.0) is True
    waker.close()


# -- races between processes -------------------------------------------------------------------


def _add_once_many(
    spec: tuple[str, str], barrier: multiprocessing.synchronize.Barrier, out: str
) -> None:
    store = open_mongo(*spec)
    try:
        store.last_event_seq()
        barrier.wait(30)
        got = []
        for key in ("k1", "k2", "k3"):
            job, _ = store.insert_once(
                new_job(once_key=key), lambda existing: True, transitions.replace_once()
            )
            got.append(job.id)
        Path(out).write_text("\n".join(got))
    finally:
        store.close()


def test_insert_once_race_of_8_processes_creates_one_job_per_key(
    store: MongoStore, mongo_uri: str, database: str, tmp_path: Path
) -> None:
    barrier = FORK.Barrier(8)
    outs = [str(tmp_path / f"out-{i}") for i in range(8)]
    procs = [
        FORK.Process(target=_add_once_many, args=((mongo_uri, database), barrier, o)) for o in outs
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0] * 8
    jobs = store.find(JobQuery(statuses=ACTIVE))
    assert sorted(j.once_key or "" for j in jobs) == ["k1", "k2", "k3"]
    assert len(store.find(JobQuery())) == 3
    answers = [Path(o).read_text().split("\n") for o in outs]
    assert all(a == answers[0] for a in answers)  # everyone got the same job per key


# -- cost ----------------------------------------------------------------------------------------


class Commands(monitoring.CommandListener):
    def __init__(self) -> None:
        self.names: list[str] = []

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        self.names.append(event.command_name)

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass


def count_commands(commands: Commands, fn: Callable[[], Any]) -> list[str]:
    start = len(commands.names)
    fn()
    return commands.names[start:]


def test_round_trips_per_job_claim_to_settle(mongo_uri: str, database: str) -> None:
    commands = Commands()
    store = open_mongo(mongo_uri, database, client_options={"event_listeners": [commands]})
    try:
        now = time.time()
        store.insert([new_job(f"j{i}", now=now) for i in range(3)])
        must_claim(store, now=now)  # warm up: connection, indexes

        def one_job() -> None:
            job = must_claim(store, now=now)
            assert store.settle(
                job.id, job.claim_token or "", rules.on_success(job, "1", now), now=now
            )

        names = count_commands(commands, one_job)
    finally:
        store.close()
    # claim (findAndModify) + its event (an insert right above the seq this store wrote
    # last: no read of the top), settle (findAndModify) + its event (insert).
    assert names == ["findAndModify", "insert", "findAndModify", "insert"]


def test_event_inserts_guess_probe_and_read_and_stay_dense(mongo_uri: str, database: str) -> None:
    commands = Commands()
    store = open_mongo(mongo_uri, database, client_options={"event_listeners": [commands]})
    other = open_mongo(mongo_uri, database)
    store._event_log.GUESS_FOR = 60.0  # a loaded machine must not age the guesses out
    try:
        now = time.time()
        store.insert([new_job("a", now=now)])  # seq 1 (read the top: nothing seen yet)
        other.insert([new_job("b", now=now)])  # seq 2, by another client
        # Guess 1 + 1: taken (duplicate key), so 2 is visible: insert at 3, no read.
        names = count_commands(commands, lambda: store.insert([new_job("c", now=now)]))
        assert names == ["insert", "insert", "insert"]  # the job, a taken seq, the event
        other.insert([new_job(f"o{i}", now=now) for i in range(3)])  # seqs 4-6, in one batch
        # Guess 3: 4 taken, and so are the PROBES (2) next ones; read the top, insert 7.
        names = count_commands(commands, lambda: store.insert([new_job("d", now=now)]))
        assert names == ["insert", "insert", "insert", "insert", "find", "insert"]
        other.insert([new_job(f"p{i}", now=now) for i in range(3)])  # seqs 8-10
        # Guess 7: 8 taken. The last overtaking (3 seqs) was too long for probes to land:
        # read the top at once, insert 11.
        names = count_commands(commands, lambda: store.insert([new_job("e", now=now)]))
        assert names == ["insert", "insert", "find", "insert"]
        # Three guesses in a row were taken: this writer now reads the top first.
        other.insert([new_job("q", now=now)])  # seq 12
        names = count_commands(commands, lambda: store.insert([new_job("f", now=now)]))
        assert names == ["insert", "find", "insert"]
        assert [e.seq for e in store.events()] == list(range(1, 14))
        # Another client flushes; once the guess has aged out the writer reads the top
        # (the floor) and never reuses a deleted seq.
        other.flush()
        store._event_log.GUESS_FOR = 0.0
        store.insert([new_job("g", now=now)])
        assert [e.seq for e in store.events()] == [14]
    finally:
        store.close()
        other.close()


def test_claim_does_not_scan_other_queues_first(store: MongoStore) -> None:
    store.insert([new_job("x", queue="b")])
    assert must_claim(store, queues=("a", "b")).id == "x"
    assert store.count_due(["a", "b", "a"], now=time.time(), force_spawn=False) == 0


def test_data_with_dots_and_dollars_round_trips(store: MongoStore) -> None:
    data = {"a.b": 1, "$where": "x", "nested": {"c.d": [1, {"$e": None}]}}
    store.insert([new_job("d", data=data, cls=CLS)])
    job = must_claim(store)
    assert job.data == data
    result = '{"x.y": {"$z": 2}}'
    settled = settlement(status=JobStatus.DONE, result_json=result, reason="done")
    assert store.settle("d", job.claim_token or "", settled, now=time.time())
    assert store.get("d").result == {"x.y": {"$z": 2}}


# -- settle_batch: round trips, fencing, lost replies, crashes -----------------------------------


def _claim_request(token: str, limit: int, worker: str = "n/1") -> ClaimRequest:
    return ClaimRequest(
        queues=("default",), node="n", worker=worker, token=token, lease=30.0, limit=limit
    )


def test_add_job_is_two_round_trips(mongo_uri: str, database: str) -> None:
    commands = Commands()
    store = open_mongo(mongo_uri, database, client_options={"event_listeners": [commands]})
    try:
        store.insert([new_job("warm")])
        names = count_commands(commands, lambda: store.insert([new_job("a")]))
        assert names == ["insert", "insert"]  # the job, its event (no id pre-check)
        with pytest.raises(DuplicateJobId):
            store.insert([new_job("a")])
        assert len(store.events(job_ids=["a"])) == 1
    finally:
        store.close()


def test_settle_batch_of_16_with_a_claim_of_16_is_six_round_trips(
    mongo_uri: str, database: str
) -> None:
    commands = Commands()
    store = open_mongo(mongo_uri, database, client_options={"event_listeners": [commands]})
    try:
        now = time.time()
        store.insert([new_job(f"j{i:02}", now=now + i * 1e-4) for i in range(40)])
        _, held = store.settle_batch([], now=now + 0.01, claim=_claim_request("first", 16))
        assert len(held) == 16
        seq = store.last_event_seq()
        settles = [(j.id, j.claim_token or "", rules.on_success(j, "1", now)) for j in held]
        result: list[Any] = []
        names = count_commands(
            commands,
            lambda: result.append(
                store.settle_batch(settles, now=now + 0.01, claim=_claim_request("second", 16))
            ),
        )
        done, claimed = result[0]
    finally:
        store.close()
    # Settles: find (tokens still held, event fields), one bulk update. Claims: find the
    # candidates, one bulk update, find them back. One insert for all 32 events, after a
    # read of the top event seq when the seq last seen is over EventLog.GUESS_FOR old (a
    # loaded machine can take that long between the two batches).
    assert names in (
        ["find", "update", "find", "update", "find", "insert"],
        ["find", "update", "find", "update", "find", "find", "insert"],
    )
    assert _ok(done) == [True] * 16
    assert [j.id for j in claimed] == [f"j{i:02}" for i in range(16, 32)]
    assert [j.claim_token for j in claimed] == [f"second.{i}" if i else "second" for i in range(16)]
    events = store.events(after=seq)
    assert [e.seq for e in events] == list(range(seq + 1, seq + 33))
    assert [(e.job_id, e.status) for e in events] == [(j.id, JobStatus.DONE) for j in held] + [
        (j.id, JobStatus.PROCESSING) for j in claimed
    ]
    assert all(e.attempt == 1 and e.worker == "n/1" for e in events)


def test_stale_token_inside_a_batch_is_not_applied_the_others_are(store: MongoStore) -> None:
    now = time.time()
    store.insert([new_job(n, now=now, retry=1, retry_interval=0) for n in "abcd"])
    held = {n: must_claim(store, job_id=n, now=now, token=f"t-{n}", lease=5) for n in "abcd"}
    # b's lease ran out: the reaper settled it, and another worker holds it now.
    b = held["b"]
    assert store.settle("b", "t-b", rules.on_abandoned(b, now + 6), now=now + 6)
    again = must_claim(store, job_id="b", now=now + 6, token="t-b2", worker="other/1")
    assert again.attempt == 2
    seq = store.last_event_seq()
    settles = [
        (j.id, j.claim_token or "", rules.on_success(j, '"r"', now + 7)) for j in held.values()
    ]
    done, jobs = store.settle_batch(settles, now=now + 7)
    assert (_ok(done), jobs) == ([True, False, True, True], [])
    assert {n: store.get(n).status for n in "abcd"} == {
        "a": JobStatus.DONE,
        "b": JobStatus.PROCESSING,
        "c": JobStatus.DONE,
        "d": JobStatus.DONE,
    }
    b_now = store.get("b")
    assert (b_now.claim_token, b_now.worker, b_now.result) == ("t-b2", "other/1", None)
    assert [(e.job_id, e.status) for e in store.events(after=seq)] == [
        ("a", JobStatus.DONE),
        ("c", JobStatus.DONE),
        ("d", JobStatus.DONE),
    ]
    # The same job twice in one batch: the second settle is fenced off like a retry would be.
    store.insert([new_job("e", now=now)])
    e = must_claim(store, job_id="e", now=now, token="t-e")
    ok = rules.on_success(e, "1", now)
    assert _ok(store.settle_batch([("e", "t-e", ok), ("e", "t-e", ok)], now=now)[0]) == [
        True,
        False,
    ]
    assert [ev.status for ev in store.events(job_ids=["e"])][-1] == JobStatus.DONE
    assert len(store.events(job_ids=["e"])) == 3


def test_reaper_settling_between_the_read_and_the_bulk_update_keeps_one_event_each(
    store: MongoStore, mongo_uri: str, database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    now = time.time()
    store.insert([new_job(n, now=now) for n in "abc"])
    held = [must_claim(store, job_id=n, now=now, token=f"t-{n}", lease=5) for n in "abc"]
    reaper = open_mongo(mongo_uri, database)
    real = MongoStore._by_ids
    calls = []

    def read_then_reap(self: MongoStore, ids: Any, projection: Any = None) -> Any:
        out = real(self, ids, projection)
        calls.append(list(ids))
        if len(calls) == 1:  # after the batch's read, before its update
            b = reaper.get("b")
            assert reaper.settle("b", "t-b", rules.on_abandoned(b, now + 6), now=now + 6)
        return out

    monkeypatch.setattr(MongoStore, "_by_ids", read_then_reap)
    try:
        seq = store.last_event_seq()
        settles = [(j.id, j.claim_token or "", rules.on_success(j, "1", now)) for j in held]
        done, _ = store.settle_batch(settles, now=now)
    finally:
        reaper.close()
    assert _ok(done) == [True, False, True]
    assert len(calls) == 2  # the matched count fell short: which landed was read back
    assert store.get("b").status == JobStatus.FAILED  # the reaper's settle stands
    assert sorted((e.job_id, e.status) for e in store.events(after=seq)) == [
        ("a", JobStatus.DONE),
        ("b", JobStatus.FAILED),
        ("c", JobStatus.DONE),
    ]


class LoseBulkWrites:
    """Makes the next bulk_write raise AutoReconnect, before or after it is applied."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, *, applied: bool, skip: int = 0) -> None:
        self.calls = 0
        real = Collection.bulk_write

        def fake(coll: Collection[Any], *args: Any, **kwargs: Any) -> Any:
            self.calls += 1
            if self.calls != skip + 1:
                return real(coll, *args, **kwargs)
            if applied:
                real(coll, *args, **kwargs)
            raise AutoReconnect("connection closed (simulated)")

        monkeypatch.setattr(Collection, "bulk_write", fake)


def _held(store: MongoStore, n: int, now: float) -> list[JobRecord]:
    store.insert([new_job(f"h{i}", now=now) for i in range(n)])
    return [must_claim(store, job_id=f"h{i}", now=now, token=f"t{i}") for i in range(n)]


def test_bulk_settle_with_a_lost_reply_reports_what_happened(
    store: MongoStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    now = time.time()
    held = _held(store, 4, now)
    settles = [(j.id, j.claim_token or "", rules.on_success(j, "1", now)) for j in held]
    LoseBulkWrites(monkeypatch, applied=True)
    assert _ok(store.settle_batch(settles[:2], now=now)[0]) == [True, True]
    assert [store.get(j.id).status for j in held[:2]] == [JobStatus.DONE] * 2
    assert all(len(store.events(job_ids=[j.id])) == 3 for j in held[:2])
    LoseBulkWrites(monkeypatch, applied=False)
    with pytest.raises(StoreUnavailable, match="2 of 2 not applied"):
        store.settle_batch(settles[2:], now=now)
    assert [store.get(j.id).status for j in held[2:]] == [JobStatus.PROCESSING] * 2
    monkeypatch.undo()
    assert _ok(store.settle_batch(settles[2:], now=now)[0]) == [True, True]  # the retry
    assert all(len(store.events(job_ids=[j.id])) == 3 for j in held)


def test_bulk_claim_with_a_lost_reply_is_looked_up_never_reissued(
    store: MongoStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    now = time.time()
    store.insert([new_job(f"j{i}", now=now + i * 1e-4) for i in range(6)])
    lose = LoseBulkWrites(monkeypatch, applied=True)
    _, jobs = store.settle_batch([], now=now + 0.01, claim=_claim_request("c1", 3))
    assert lose.calls == 1  # no second round: its tokens could meet the lost one's
    assert [j.id for j in jobs] == ["j0", "j1", "j2"]
    assert [j.claim_token for j in jobs] == ["c1", "c1.1", "c1.2"]
    assert [e.status for e in store.events(job_ids=["j0"])] == [
        JobStatus.WAITING,
        JobStatus.PROCESSING,
    ]
    lose = LoseBulkWrites(monkeypatch, applied=False)
    with pytest.raises(StoreUnavailable, match="lease will expire"):
        store.settle_batch([], now=now + 0.01, claim=_claim_request("c2", 3))
    assert store.get("j3").status == JobStatus.WAITING
    # With settles, the claim is best effort: the settles are reported all the same.
    job = jobs[0]
    settle = [(job.id, job.claim_token or "", rules.on_success(job, "1", now))]
    lose = LoseBulkWrites(monkeypatch, applied=False)
    flags, jobs = store.settle_batch(settle, now=now + 0.01, claim=_claim_request("c3", 3))
    assert (_ok(flags), jobs) == ([True], [])
    assert store.get("j0").status == JobStatus.DONE


def _die_in_settle_batch(
    spec: tuple[str, str], settles: list[tuple[str, str, Transition]], die_after: int
) -> None:
    """Run one settle_batch and die (no cleanup, as after SIGKILL) right after its
    ``die_after``-th bulk write reached the server."""
    store = open_mongo(*spec)
    real = Collection.bulk_write
    count = [0]

    def bulk_then_die(coll: Collection[Any], *args: Any, **kwargs: Any) -> Any:
        out = real(coll, *args, **kwargs)
        count[0] += 1
        if count[0] == die_after:
            os._exit(9)
        return out

    Collection.bulk_write = bulk_then_die  # type: ignore[method-assign,assignment]
    store.settle_batch(settles, now=time.time(), claim=_claim_request("dead", 4, "dead/1"))
    os._exit(0)


@pytest.mark.parametrize("die_after", [1, 2])
def test_a_crash_between_the_commands_of_a_batch_loses_and_double_runs_nothing(
    store: MongoStore, mongo_uri: str, database: str, die_after: int
) -> None:
    """1: dies after the settles' bulk update; 2: after the claims' bulk update (before it
    read the claimed jobs back or wrote any event)."""
    now = time.time()
    held = _held(store, 3, now)
    store.insert(
        [new_job(f"w{i}", now=now + i * 1e-4, retry=1, retry_interval=0) for i in range(6)]
    )
    settles = [(j.id, j.claim_token or "", rules.on_success(j, '"ok"', now)) for j in held]
    child = FORK.Process(
        target=_die_in_settle_batch, args=((mongo_uri, database), settles, die_after)
    )
    child.start()
    child.join(30)
    assert child.exitcode == 9
    # The settles applied stand: each job is final, with its result; a retry of the
    # batch (had the worker lived) is fenced off and changes nothing.
    assert [(store.get(j.id).status, store.get(j.id).result) for j in held] == [
        (JobStatus.DONE, "ok")
    ] * 3
    assert _ok(store.settle_batch(settles, now=now)[0]) == [False] * 3
    claimed = [j for j in store.find(JobQuery(statuses=(JobStatus.PROCESSING,)))]
    if die_after == 1:
        assert claimed == []  # never claimed: still there for any worker
    else:
        # Claimed but never reported: held under the dead worker's name and a lease, which
        # is what the master (when the worker dies) or the lease reaper settles.
        assert [j.id for j in claimed] == ["w0", "w1", "w2", "w3"]
        assert {j.worker for j in claimed} == {"dead/1"}
        assert sorted(j.id for j in store.expired(now + 3600)) == ["w0", "w1", "w2", "w3"]
    # Nobody else can run them meanwhile: the next claim takes only the others.
    _, others = store.settle_batch([], now=time.time(), claim=_claim_request("live", 8))
    expected = ["w0", "w1", "w2", "w3", "w4", "w5"] if die_after == 1 else ["w4", "w5"]
    assert [j.id for j in others] == expected
    if die_after == 2:
        # The reaper (or the master) settles them by their tokens; they run again later.
        reaped = [(j.id, j.claim_token or "", rules.on_abandoned(j, now)) for j in claimed]
        assert _ok(store.settle_batch(reaped, now=now)[0]) == [True] * 4
        again = must_claim(store, job_id="w0")
        assert again.attempt == 2
        # The dead claim's PROCESSING event was never written (as when a process dies
        # between any write and its event); every other change has exactly one.
        assert [e.status for e in store.events(job_ids=["w0"])] == [
            JobStatus.WAITING,
            JobStatus.WAITING,
            JobStatus.PROCESSING,
        ]


def test_a_claim_whose_lost_reply_lands_late_is_adopted_by_the_next_claim(
    store: MongoStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The reply of a batch claim is lost and the read-back finds nothing: the write was
    still queued on the server. When it lands, the next claim of the same store returns
    those jobs as claimed instead of leaving them to expire unseen."""
    now = time.time()
    store.insert([new_job(f"j{i}", now=now + i * 1e-4) for i in range(5)])
    real = Collection.bulk_write
    queued: list[tuple[Collection[Any], Any]] = []

    def queue_it(coll: Collection[Any], ops: Any, *args: Any, **kwargs: Any) -> Any:
        queued.append((coll, ops))  # not applied yet
        raise AutoReconnect("connection closed (simulated)")

    monkeypatch.setattr(Collection, "bulk_write", queue_it)
    with pytest.raises(StoreUnavailable, match="lease will expire"):
        store.settle_batch([], now=now + 0.01, claim=_claim_request("late", 3))
    monkeypatch.undo()
    ((coll, ops),) = queued
    real(coll, ops, ordered=False)  # ...and now it lands
    assert [store.get(f"j{i}").status for i in range(3)] == [JobStatus.PROCESSING] * 3
    _, jobs = store.settle_batch([], now=now + 0.01, claim=_claim_request("next", 4))
    assert sorted(j.id for j in jobs[:3]) == ["j0", "j1", "j2"]  # adopted, same tokens
    assert sorted(j.claim_token or "" for j in jobs[:3]) == ["late", "late.1", "late.2"]
    assert [j.id for j in jobs[3:]] == ["j3"]  # and one newly claimed
    assert store.get("j4").status == JobStatus.WAITING
