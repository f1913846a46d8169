"""What only the MongoDB store has to prove about limits, exclusive keys and rates: the
slot documents, give-backs that leave a job exactly as it was, the round trips a claim
costs, and the paths that free slots (taskschedd/store/mongo/gates.py)."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pymongo
import pytest

from taskschedd import rules, transitions
from taskschedd.errors import StoreUnavailable
from taskschedd.limits import LimitSpec, Rate
from taskschedd.model import ClaimRequest, JobQuery, JobStatus
from taskschedd.store.mongo import MongoStore
from tests.helpers import settlement
from tests.mongo_server import unique_db_name
from tests.store.test_contract import claim, must_claim, new_job
from tests.store.test_mongo import Commands, LoseReplies, count_commands, open_mongo

JOBS = "taskscheduler_jobs"


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
def commands() -> Commands:
    return Commands()


@pytest.fixture
def store(mongo_uri: str, database: str, commands: Commands) -> Iterator[MongoStore]:
    s = open_mongo(mongo_uri, database, client_options={"event_listeners": [commands]})
    yield s
    s.close()


def raw(store: MongoStore, suffix: str = "") -> Any:
    return store._db[JOBS + suffix]


def done(store: MongoStore, job_id: str, token: str | None, now: float) -> None:
    assert store.settle(job_id, token or "", settlement(JobStatus.DONE, reason="t"), now=now)


def held_slots(store: MongoStore, now: float) -> list[dict[str, Any]]:
    return [d for d in raw(store, "_slots").find({"until": {"$gte": now}}) if d.get("holder")]


def test_documents_collections_and_indexes(store: MongoStore) -> None:
    now = time.time()
    store.insert([new_job("a", now=now, limit="r", exclusive_key="c:1"), new_job("b", now=now)])
    a, b = raw(store).find_one({"_id": "a"}), raw(store).find_one({"_id": "b"})
    assert (a["lim"], a["xkey"]) == ("r", "c:1")
    assert "lim" not in b and "xkey" not in b  # a job without limits is as in 0.6
    store.set_limit(LimitSpec("r", max_running=2, rate=Rate.parse("5/1m")))
    assert raw(store, "_limits").find_one({"_id": "r"}) == {
        "_id": "r", "max_running": 2, "rate_count": 5, "rate_period": 60.0, "starts": [],
        "v": 0, "high": 0,
    }  # fmt: skip
    assert raw(store, "_slots").count_documents({}) == 0  # made when first needed
    job = must_claim(store, now=now + 1, lease=30)
    slots = sorted(raw(store, "_slots").find({"kind": "lim"}), key=lambda d: d["_id"])
    assert [(d["_id"], d["kind"], d["i"], d["holder"], d["job"]) for d in slots] == [
        ("lim:r#0", "lim", 0, job.claim_token, "a")
    ]
    assert slots[0]["until"] == pytest.approx(now + 31)
    assert raw(store, "_slots").find_one({"_id": "key:c:1"}) == {
        "_id": "key:c:1", "kind": "key", "key": "c:1", "holder": job.claim_token,
        "job": "a", "until": slots[0]["until"],
    }  # fmt: skip
    keys = {tuple(ix["key"].keys()) if isinstance(ix["key"], dict) else tuple(k for k, _ in ix["key"]) for ix in raw(store, "_slots").list_indexes()}  # fmt: skip
    assert {("holder",), ("until",), ("lim", "i")} <= keys


def test_limit_caps_running_jobs_and_settle_frees_a_slot(store: MongoStore) -> None:
    now = time.time()
    store.set_limit(LimitSpec("r", max_running=2))
    store.insert([new_job(f"j{i}", now=now + i * 1e-3, limit="r") for i in range(4)])
    first = [must_claim(store, now=now + 1) for _ in range(2)]
    assert claim(store, now=now + 1) is None
    (state,) = store.limits(now=now + 1)
    assert (state.running, state.waiting) == (2, 2)
    assert {d["job"] for d in held_slots(store, now + 1)} == {"j0", "j1"}
    done(store, first[0].id, first[0].claim_token, now + 2)
    assert {d["job"] for d in held_slots(store, now + 2)} == {"j1"}
    assert must_claim(store, now=now + 2).id == "j2"


def test_a_held_back_job_is_given_back_exactly_as_it_was(
    mongo_uri: str, database: str, store: MongoStore
) -> None:
    now = time.time()
    store.set_limit(LimitSpec("r", max_running=1))
    store.insert([new_job("a", now=now, limit="r"), new_job("b", now=now + 1e-3, limit="r")])
    a = must_claim(store, now=now + 1)
    before = raw(store).find_one({"_id": "b"})
    seq = store.last_event_seq()
    # Another node, which has not met a job with a limit yet: it claims optimistically.
    commands = Commands()
    other = open_mongo(mongo_uri, database, client_options={"event_listeners": [commands]})
    try:
        other.next_due(["default"])  # connected
        names = count_commands(commands, lambda: claim(other, now=now + 1, token="tb"))
        # claim b, read r, try a slot, see them all made, give b back; then gates first:
        # candidates without r, none (and the idle claim's maintenance pass)
        assert names[:6] == ["findAndModify", "find", "findAndModify", "find", "update", "find"]
        assert raw(store).find_one({"_id": "b"}) == before
        assert store.last_event_seq() == seq
        # Its next claim skips r at once, by what it remembers: one find; finding
        # nothing else, it reads the gates (limits, slots) in case r opened meanwhile.
        names = count_commands(commands, lambda: claim(other, now=now + 1))
        assert names == ["find", "find", "find"]
    finally:
        other.close()
    done(store, a.id, a.claim_token, now + 2)
    b = must_claim(store, now=now + 2)
    assert (b.id, b.attempt, b.status) == ("b", 1, JobStatus.PROCESSING)


def test_gates_first_once_a_queue_has_jobs_with_limits(
    store: MongoStore, commands: Commands
) -> None:
    now = time.time()
    store.set_limit(LimitSpec("r", max_running=1))
    store.insert([new_job(f"r{i}", now=now + i * 1e-3, limit="r", priority=5) for i in range(3)])
    store.insert([new_job(f"u{i}", now=now + i * 1e-3) for i in range(3)])
    names = count_commands(commands, lambda: must_claim(store, now=now + 1))
    # optimistic: the claim, the limit, no free slot made, none at all, make #0, event
    assert names == ["findAndModify", "find", "findAndModify", "find", "insert", "insert"]
    seen: list[tuple[str, int]] = []
    original = store._give_back
    store._give_back = lambda *a: seen.append(a) or original(*a)  # type: ignore[method-assign]
    # From now on: candidates (r1 first), r's slot is taken: skip r, claim u0 by id.
    names = count_commands(commands, lambda: must_claim(store, now=now + 1))
    assert names == ["find", "find", "findAndModify", "find", "findAndModify", "insert"]
    names = count_commands(commands, lambda: must_claim(store, now=now + 1))
    assert names == ["find", "findAndModify", "insert"]  # r remembered as full
    assert seen == []  # no job of the full limit was ever PROCESSING


def test_a_cancel_requested_before_the_give_back_cancels_the_job(store: MongoStore) -> None:
    now = time.time()
    store.insert([new_job("a", now=now, limit="r")])
    update = raw(store).find_one_and_update(
        {"_id": "a"},
        {"$set": {"state": "running", "status": 2, "claim_token": "t", "lease_until": now + 30,
                  "cancel_requested": True}, "$inc": {"attempt": 1}},
        return_document=pymongo.ReturnDocument.AFTER,
    )  # fmt: skip
    store._give_back(update, None, "t", now)
    job = store.get("a")
    assert (job.status, job.attempt, job.claim_token) == (JobStatus.CANCELED, 0, None)


def test_unlimited_claim_costs_nothing_more(store: MongoStore, commands: Commands) -> None:
    now = time.time()
    store.set_limit(LimitSpec("r", max_running=1))
    store.insert([new_job("a", now=now), new_job("b", now=now + 1e-3, limit="r")])
    names = count_commands(commands, lambda: must_claim(store, now=now + 1))
    assert names == ["findAndModify", "insert"]  # the claim, its event
    names = count_commands(commands, lambda: must_claim(store, now=now + 1))
    # + the limit, a free slot (none made yet: a look at those made, make #0)
    assert names == ["findAndModify", "find", "findAndModify", "find", "insert", "insert"]


def test_claim_costs(mongo_uri: str, database: str, store: MongoStore) -> None:
    """Round trips of one claim, the slot made already: optimistic (a process that has
    not met jobs with limits in the queue lately) and gates first (one that has)."""
    now = time.time()
    store.set_limit(LimitSpec("r", max_running=2))
    store.insert([new_job("warm", now=now, limit="r")])
    warm = must_claim(store, now=now)
    done(store, warm.id, warm.claim_token, now)  # slot #0 made, free again
    store.insert([new_job(f"r{i}", now=now + i * 1e-3, limit="r") for i in range(2)])
    store.insert([new_job(f"u{i}", now=now + 1, priority=-1) for i in range(2)])
    commands = Commands()
    fresh = open_mongo(mongo_uri, database, client_options={"event_listeners": [commands]})
    try:
        fresh.insert([new_job("x", queue="other")])  # connected, its event log warm
        names = count_commands(commands, lambda: must_claim(fresh, now=now + 2))
        assert names == ["findAndModify", "find", "findAndModify", "insert"]  # + limit, slot
        names = count_commands(commands, lambda: must_claim(fresh, now=now + 2))
        # candidates, the limit, a slot (none free: #1 is made), the claim by id, event
        assert names == ["find", "find", "findAndModify", "find", "insert", "findAndModify",
                         "insert"]  # fmt: skip
        names = count_commands(commands, lambda: must_claim(fresh, now=now + 2))
        assert names == ["find", "findAndModify", "insert"]  # no limit: candidates, claim
    finally:
        fresh.close()


def test_no_head_of_line_blocking(store: MongoStore) -> None:
    now = time.time()
    store.set_limit(LimitSpec("r", max_running=0))
    store.insert([new_job(f"l{i}", now=now, limit="r", priority=5) for i in range(20)])
    store.insert([new_job(f"k{i}", now=now, exclusive_key="k", priority=4) for i in range(3)])
    store.insert([new_job(f"u{i}", now=now + i * 1e-3) for i in range(5)])
    got = [must_claim(store, now=now + 1).id for _ in range(6)]
    assert got == ["k0", "u0", "u1", "u2", "u3", "u4"]
    assert claim(store, now=now + 1) is None
    assert all(store.get(f"l{i}").attempt == 0 for i in range(20))
    assert store.next_due(["default"]) is None  # held back: not due (no spinning)


def test_batch_claim_takes_gates_first_and_skips_held_jobs(store: MongoStore) -> None:
    now = time.time()
    store.set_limit(LimitSpec("r", max_running=2))
    jobs = [new_job(f"l{i}", now=now + i * 1e-4, limit="r", priority=3) for i in range(6)]
    jobs += [new_job(f"k{i}", now=now + i * 1e-4, exclusive_key="k", priority=2) for i in range(3)]
    jobs += [new_job(f"u{i}", now=now + i * 1e-4) for i in range(10)]
    store.insert(jobs)
    request = ClaimRequest(("default",), node="n", worker="n/1", token="bt", lease=30, limit=6)
    _, got = store.settle_batch([], now=now + 1, claim=request)
    assert [j.id for j in got] == ["l0", "l1", "k0", "u0", "u1", "u2"]
    assert [j.claim_token for j in got] == ["bt", "bt.1", "bt.2", "bt.3", "bt.4", "bt.5"]
    held = {d["job"]: d["holder"] for d in held_slots(store, now + 1)}
    assert held == {"l0": "bt", "l1": "bt.1", "k0": "bt.2"}
    # A batch settle frees them after the jobs' writes.
    settles = [(j.id, j.claim_token or "", rules.on_success(j, "1", now + 2)) for j in got]
    request = ClaimRequest(("default",), node="n", worker="n/1", token="b2", lease=30, limit=3)
    _, again = store.settle_batch(settles, now=now + 2, claim=request)
    assert [j.id for j in again] == ["l2", "l3", "k1"]
    assert {d["job"] for d in held_slots(store, now + 2)} == {"l2", "l3", "k1"}


def test_exclusive_key_holders_and_release(store: MongoStore) -> None:
    now = time.time()
    store.insert([new_job(f"k{i}", now=now + i * 1e-3, exclusive_key="c:42") for i in range(2)])
    store.insert([new_job("other", now=now + 1e-2, exclusive_key="c:43")])
    k0 = must_claim(store, now=now + 1)
    assert store.key_holders(["c:42", "c:43", "none"], now=now + 1) == {"c:42": "k0"}
    assert must_claim(store, now=now + 1).id == "other"
    assert claim(store, now=now + 1) is None
    # Node shutdown: release gives it back and frees the key.
    assert store.settle("k0", k0.claim_token or "", rules.release(k0), now=now + 2)
    assert store.key_holders(["c:42"], now=now + 2) == {}
    assert must_claim(store, now=now + 2).id == "k0"


def test_slots_come_back_when_the_lease_ends_and_renewals_extend_them(
    store: MongoStore,
) -> None:
    now = time.time()
    store.set_limit(LimitSpec("r", max_running=1))
    store.insert([new_job(f"j{i}", now=now + i * 1e-3, limit="r") for i in range(3)])
    j0 = must_claim(store, now=now, lease=10)
    assert store.renew_many([j0.claim_token or ""], transitions.renew(now + 20), now=now) == 1
    assert claim(store, now=now + 15) is None  # renewed: still held
    (slot,) = held_slots(store, now)
    assert slot["until"] == pytest.approx(now + 20)
    j1 = must_claim(store, now=now + 21)  # j0's node died: its slot is free again
    assert j1.id == "j1"
    # The reaper settles j0 later: that frees j0's token only, never j1's slot.
    assert store.settle(
        "j0", j0.claim_token or "", rules.on_abandoned(j0, now + 22, detail="x"), now=now + 22
    )
    assert [d["job"] for d in held_slots(store, now + 22)] == ["j1"]


def test_rate_log_is_kept_and_next_due_waits_for_the_window(store: MongoStore) -> None:
    now = time.time()
    store.set_limit(LimitSpec("m", rate=Rate.parse("2/1h")))
    store.insert([new_job(f"m{i}", now=now - 10 + i * 1e-3, limit="m") for i in range(3)])
    a, b = must_claim(store, now=now), must_claim(store, now=now + 1)
    assert claim(store, now=now + 2) is None
    doc = raw(store, "_limits").find_one({"_id": "m"})
    # A start is logged at the claim's time or later (the clock when it lands: see
    # gates.Gates._take_start), never earlier.
    first, second = doc["starts"]
    assert first >= now - 1e-3 and second >= now + 1 - 1e-3 and second > first
    assert doc["v"] == 2
    assert store.next_due(["default"]) == pytest.approx(first + 3600, abs=0.01)
    (state,) = store.limits(now=now + 2)
    assert (state.running, state.waiting, len(state.starts)) == (2, 1, 2)
    # set_limit keeps the log; a wider rate lets the third start.
    store.set_limit(LimitSpec("m", rate=Rate.parse("3/1h")))
    assert must_claim(store, now=now + 3).id == "m2"
    done(store, a.id, a.claim_token, now + 4)
    done(store, b.id, b.claim_token, now + 4)


def test_set_limit_counts_jobs_running_unlimited_and_a_lower_cap_holds(
    store: MongoStore,
) -> None:
    now = time.time()
    store.insert([new_job(f"j{i}", now=now - 1 + i * 1e-3, limit="r") for i in range(6)])
    j0 = must_claim(store, now=now)  # no definition yet: unlimited
    store.set_limit(LimitSpec("r", max_running=2))
    j1 = must_claim(store, now=now)
    assert claim(store, now=now) is None  # j0 took a slot at set_limit
    store.set_limit(LimitSpec("r", max_running=3))
    j2 = must_claim(store, now=now)
    store.set_limit(LimitSpec("r", max_running=1))  # lowered: 3 run, hold until 0 do
    done(store, j0.id, j0.claim_token, now)
    assert claim(store, now=now) is None
    done(store, j1.id, j1.claim_token, now)
    assert claim(store, now=now) is None
    done(store, j2.id, j2.claim_token, now)
    assert must_claim(store, now=now).id == "j3"
    assert claim(store, now=now) is None
    assert raw(store, "_limits").find_one({"_id": "r"})["high"] == 0
    assert store.delete_limit("r") and not store.delete_limit("r")
    assert must_claim(store, now=now).id == "j4"  # unlimited again
    assert raw(store, "_slots").count_documents({}) == 0


def test_next_due_skips_full_limits_and_held_keys_only(store: MongoStore) -> None:
    now = time.time()
    store.set_limit(LimitSpec("r", max_running=1))
    store.insert([new_job(f"j{i}", now=now - 5 + i, limit="r") for i in range(2)])
    store.insert([new_job("later", now=now, at=now + 100)])
    assert store.next_due(["default"]) == pytest.approx(now - 5)
    must_claim(store)
    assert store.next_due(["default"]) == pytest.approx(now + 100)


def test_concurrent_claimers_never_exceed_the_limit(mongo_uri: str, database: str) -> None:
    setup = open_mongo(mongo_uri, database)
    now = time.time()
    setup.set_limit(LimitSpec("r", max_running=2))
    setup.insert([new_job(f"j{i:02}", now=now + i * 1e-4, limit="r") for i in range(24)])
    setup.insert([new_job(f"k{i:02}", now=now + i * 1e-4, exclusive_key="x") for i in range(6)])
    lock = threading.Lock()
    running: dict[str, int] = {"r": 0, "x": 0}
    peak = {"r": 0, "x": 0}
    errors: list[BaseException] = []

    def worker(n: int) -> None:
        s = open_mongo(mongo_uri, database)
        try:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                job = claim(s, token=uuid.uuid4().hex, worker=f"w/{n}")
                if job is None:
                    if not remaining(s):
                        return
                    time.sleep(0.01)
                    continue
                kind = "r" if job.options.limit else "x"
                with lock:
                    running[kind] += 1
                    peak[kind] = max(peak[kind], running[kind])
                time.sleep(0.005)
                with lock:
                    running[kind] -= 1
                done(s, job.id, job.claim_token, time.time())
        except BaseException as exc:
            errors.append(exc)
        finally:
            s.close()

    try:
        threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(90)
        assert not errors
        # Never above; reaching the cap with 5 ms jobs is up to the machine's scheduling.
        assert 1 <= peak["r"] <= 2 and peak["x"] == 1, peak
        assert {j.status for j in setup.find(JobQuery())} == {JobStatus.DONE}
    finally:
        setup.close()


def remaining(store: MongoStore) -> bool:
    """Whether a job is still waiting or running."""
    return store._jobs.find_one({"state": {"$in": ["ready", "running"]}}) is not None


def test_a_batch_reads_each_limit_once_and_takes_rates_in_turn(
    store: MongoStore, commands: Commands
) -> None:
    now = time.time()
    store.set_limit(LimitSpec("wide", max_running=64))
    store.set_limit(LimitSpec("mail", rate=Rate.parse("2/1m")))
    store.insert([new_job(f"w{i}", now=now + i * 1e-4, limit="wide", priority=5) for i in range(8)])
    request = ClaimRequest(("default",), node="n", worker="n/1", token="bt", lease=30, limit=8)
    result: list[Any] = []
    names = count_commands(
        commands, lambda: result.append(store.settle_batch([], now=now + 1, claim=request))
    )
    assert len(result[0][1]) == 8
    # candidates, the limit (once), a slot each (made on the way: a look at those made,
    # an insert), the bulk claim, read back, the events
    assert names == ["find", "find", *["findAndModify", "find", "insert"] * 8, "update",
                     "find", "insert"]  # fmt: skip
    store.insert([new_job(f"m{i}", now=now + i * 1e-4, limit="mail") for i in range(5)])
    request = ClaimRequest(("default",), node="n", worker="n/1", token="m", lease=30, limit=5)
    # (Within a second of the clock: a rate ignores starts logged further ahead.)
    _, got = store.settle_batch([], now=now + 0.5, claim=request)
    assert [j.id for j in got] == ["m0", "m1"]
    doc = raw(store, "_limits").find_one({"_id": "mail"})
    assert (len(doc["starts"]), doc["v"]) == (2, 2)
    assert store.count_due(["default"], now=now + 0.5, force_spawn=False) == 0
    assert store.next_due(["default"]) == pytest.approx(now + 0.5 + 60, abs=0.01)


def test_a_lost_claim_reply_of_a_held_back_job_gives_it_back(
    store: MongoStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    now = time.time()
    store.set_limit(LimitSpec("r", max_running=0))
    store.insert([new_job("a", now=now, limit="r")])
    LoseReplies(monkeypatch, applied=True)  # the claim lands, its reply is lost
    assert claim(store, now=now + 1, token="t") is None  # found by its token, given back
    job = store.get("a")
    assert (job.status, job.attempt, job.claim_token, job.lease_until) == (
        JobStatus.WAITING, 0, None, None,
    )  # fmt: skip
    assert [e.status for e in store.events(job_ids=["a"])] == [JobStatus.WAITING]


def test_a_gated_batch_claim_that_lands_late_keeps_one_slot_each(
    store: MongoStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    now = time.time()
    store.set_limit(LimitSpec("r", max_running=2))
    store.insert([new_job(f"j{i}", now=now + i * 1e-4, limit="r") for i in range(4)])
    real = pymongo.collection.Collection.bulk_write
    queued: list[tuple[Any, Any]] = []

    def queue_it(coll: Any, ops: Any, *args: Any, **kwargs: Any) -> Any:
        queued.append((coll, ops))
        raise pymongo.errors.AutoReconnect("connection closed (simulated)")

    monkeypatch.setattr(pymongo.collection.Collection, "bulk_write", queue_it)
    request = ClaimRequest(("default",), node="n", worker="n/1", token="late", lease=30, limit=3)
    with pytest.raises(StoreUnavailable):
        store.settle_batch([], now=now + 1, claim=request)
    monkeypatch.undo()
    ((coll, ops),) = queued
    real(coll, ops, ordered=False)
    # Gates were taken first (2 of the 3 candidates), under the tokens that landed.
    assert sorted(d["holder"] for d in held_slots(store, now + 1)) == ["late", "late.1"]
    request = ClaimRequest(("default",), node="n", worker="n/1", token="next", lease=30, limit=3)
    _, jobs = store.settle_batch([], now=now + 1, claim=request)
    assert sorted(j.id for j in jobs) == ["j0", "j1"]  # adopted; no slot left for more
    assert sorted(d["holder"] for d in held_slots(store, now + 1)) == ["late", "late.1"]


def request(token: str, limit: int = 1) -> ClaimRequest:
    return ClaimRequest(
        queues=("default",), node="node-a", worker="node-a/1", token=token, lease=30.0,
        limit=limit,
    )  # fmt: skip


def settle_and_claim(
    store: MongoStore, job: Any, now: float, token: str, limit: int = 1
) -> list[Any]:
    done, claimed = store.settle_batch(
        [(job.id, job.claim_token or "", settlement(JobStatus.DONE, reason="t"))],
        now=now,
        claim=request(token, limit),
    )
    assert done[0] is not None
    return claimed


def test_a_settle_hands_its_slot_over_to_the_next_job_of_the_limit_in_the_same_call(
    mongo_uri: str, database: str, store: MongoStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The hand-over: a worker settling a job of a full limit, with more of its jobs
    waiting, claims one of them in the same settle_batch; the slot passes from one to
    the other and never shows free to other workers meanwhile (another node claiming
    whenever this store frees a slot gets nothing), whatever this process remembers of
    the limit being full. With no job of the limit left, the slot is freed before the
    call returns (before its events wake the others)."""
    now = time.time()
    store.set_limit(LimitSpec("r", max_running=2))
    store.insert([new_job(f"j{i:02}", now=now + i * 1e-3, limit="r") for i in range(4)])
    store.insert([new_job("u", now=now, at=now + 2.5)])  # unlimited, due later
    running = [must_claim(store, now=now + 1, token=f"t{i}") for i in range(2)]
    assert claim(store, now=now + 1) is None  # full: remembered as full, gates first
    other = open_mongo(mongo_uri, database)
    raced: list[str | None] = []
    free = store._gates.free

    def free_then_race(tokens: Any, **kwargs: Any) -> None:
        free(tokens, **kwargs)
        got = claim(other, now=now + 2, token=uuid.uuid4().hex, worker="node-b/1")
        raced.append(None if got is None else got.id)

    monkeypatch.setattr(store._gates, "free", free_then_race)
    try:
        for step, job in enumerate(running):
            slot = raw(store, "_slots").find_one({"holder": job.claim_token})
            (got,) = settle_and_claim(store, job, now + 2 + step * 0.01, f"n{step}")
            assert got.id == f"j{step + 2:02}"
            assert raw(store, "_slots").find_one({"_id": slot["_id"]})["holder"] == f"n{step}"
            assert len(held_slots(store, now + 2)) == 2
        assert raced == []  # no slot was ever freed: nothing for the other node to race
        assert {d["job"] for d in held_slots(store, now + 2)} == {"j02", "j03"}
        # No job of the limit waits: the settle of j02 claims the unlimited job and
        # frees its slot before returning; the other node's claim finds it free.
        j02 = store.get("j02")
        (got,) = settle_and_claim(store, j02, now + 3, "n2")
        assert got.id == "u"
        assert raced == [None]  # freed after the claim (nothing left for the other node)
        assert {d["job"] for d in held_slots(store, now + 3)} == {"j03"}
        (state,) = store.limits(now=now + 3)
        assert (state.running, state.waiting) == (1, 0)
        store.insert([new_job("j04", now=now + 3, limit="r")])
        assert must_claim(other, now=now + 3, token="o1", worker="node-b/1").id == "j04"
    finally:
        other.close()


def test_a_hand_over_frees_the_key_first(store: MongoStore) -> None:
    """A settled job's key is freed before the claim: the next job with that key takes
    it, and the limit slot is handed over."""
    now = time.time()
    store.set_limit(LimitSpec("r", max_running=2))
    store.insert(
        [new_job(f"k{i}", now=now + i * 1e-3, limit="r", exclusive_key="c") for i in range(3)]
    )
    k0 = must_claim(store, now=now + 1, token="t0")
    assert claim(store, now=now + 1) is None  # the key is held
    (k1,) = settle_and_claim(store, k0, now + 2, "n0")
    assert k1.id == "k1"
    held = held_slots(store, now + 2)
    assert sorted((d["_id"], d["holder"]) for d in held) == [("key:c", "n0"), ("lim:r#0", "n0")]


def test_a_slot_a_lowered_cap_retires_is_not_handed_over(store: MongoStore) -> None:
    """Lowered from 2 to 1 while two run: the first to end hands nothing over (the
    other still runs above the cap), the second's slot (above the cap) is freed, and the
    claim takes the one within it."""
    now = time.time()
    store.set_limit(LimitSpec("r", max_running=2))
    store.insert([new_job(f"j{i}", now=now + i * 1e-3, limit="r") for i in range(4)])
    a = must_claim(store, now=now + 1, token="ta")
    b = must_claim(store, now=now + 1, token="tb")
    assert [(d["_id"], d["holder"]) for d in sorted(held_slots(store, now + 1), key=str)] == [
        ("lim:r#0", "ta"), ("lim:r#1", "tb"),
    ]  # fmt: skip
    store.set_limit(LimitSpec("r", max_running=1))
    assert settle_and_claim(store, a, now + 2, "na") == []
    assert [d["holder"] for d in held_slots(store, now + 2)] == ["tb"]
    (c,) = settle_and_claim(store, b, now + 3, "nb")
    assert c.id == "j2"
    assert [(d["_id"], d["holder"]) for d in held_slots(store, now + 3)] == [("lim:r#0", "nb")]
    assert raw(store, "_slots").count_documents({"kind": "lim"}) == 1  # #1 went
    assert claim(store, now=now + 3) is None


def test_concurrent_settle_and_claim_never_exceed_the_limit(mongo_uri: str, database: str) -> None:
    """Workers that settle and claim in one call (as the daemon's do) hand slots over
    among themselves while others race them: never more than the limit run."""
    setup = open_mongo(mongo_uri, database)
    now = time.time()
    setup.set_limit(LimitSpec("r", max_running=2))
    setup.insert([new_job(f"j{i:02}", now=now + i * 1e-4, limit="r") for i in range(30)])
    lock = threading.Lock()
    running = [0]
    peak = [0]
    errors: list[BaseException] = []

    def worker(n: int) -> None:
        s = open_mongo(mongo_uri, database)
        try:
            job = None
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                settles = []
                if job is not None:
                    with lock:
                        running[0] -= 1
                    settles = [(job.id, job.claim_token, settlement(JobStatus.DONE, reason="t"))]
                _, jobs = s.settle_batch(settles, now=time.time(), claim=request(uuid.uuid4().hex))
                job = jobs[0] if jobs else None
                if job is None:
                    if not remaining(s):
                        return
                    time.sleep(0.01)
                    continue
                with lock:
                    running[0] += 1
                    peak[0] = max(peak[0], running[0])
                time.sleep(0.005)
        except BaseException as exc:
            errors.append(exc)
        finally:
            s.close()

    try:
        threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(90)
        assert not errors
        assert 1 <= peak[0] <= 2
        assert {j.status for j in setup.find(JobQuery())} == {JobStatus.DONE}
        assert held_slots(setup, time.time()) == []
    finally:
        setup.close()


def test_a_slot_whose_until_is_no_number_is_freed_by_maintenance(store: MongoStore) -> None:
    """Another client's slot or key document with an ``until`` that is no number matched
    no claim's "free" range: its limit or key was held for ever. Maintenance frees it."""
    now = time.time()
    store.set_limit(LimitSpec("mc4", 1))
    store._slots.insert_one(
        {"_id": "lim:mc4#0", "kind": "lim", "lim": "mc4", "i": 0, "holder": None, "until": None}
    )
    store._slots.insert_one(
        {"_id": "key:k", "kind": "key", "key": "k", "holder": "x", "job": "gone", "until": "never"}
    )
    store.insert([new_job("a", now=now, limit="mc4"), new_job("b", now=now, exclusive_key="k")])
    store._gates.sweep_keys(now)
    got = {must_claim(store, now=now + 0.1, worker=f"w/{i}").id for i in range(2)}
    assert got == {"a", "b"}
