"""Limits, exclusive keys and rates at claim time (issue 15), on every store.

What both stores must agree on (taskschedd/store/base.py, Store.claim and next_due): a
job whose limit is full, whose rate allows no start now, or whose exclusive key a running
job holds is skipped, never waited on; the claim takes the best job among the others.
A job's running counts until it is settled or its lease ends. These tests drive the Store
interface directly and pass ``now`` where the interface takes it.
"""

from __future__ import annotations

import contextlib
import threading
import time
import uuid
from dataclasses import replace
from typing import Any

import pytest

from taskschedd import rules
from taskschedd.limits import LimitSpec, LimitState, Rate
from taskschedd.model import ClaimRequest, JobQuery, JobRecord, JobStatus
from taskschedd.store.base import Store
from tests.store.conftest import StoreSpec
from tests.store.test_contract import claim as claim_as
from tests.store.test_contract import error, near, new_job


def claim(store: Store, **kwargs: Any) -> JobRecord | None:
    """A claim by a worker of its own (a new name each time), as if each job claimed ran
    at once: a worker runs one job at a time, and the jobs one worker holds may share its
    slot of a limit and its key (see the tests of one worker's claims below)."""
    kwargs.setdefault("worker", f"node-a/{uuid.uuid4().hex[:8]}")
    return claim_as(store, **kwargs)


def must_claim(store: Store, **kwargs: Any) -> JobRecord:
    job = claim(store, **kwargs)
    assert job is not None, f"nothing claimed with {kwargs}"
    assert job.claim_token is not None
    return job


def shares_slots(store: Store) -> bool:
    """Whether the jobs one worker holds share one slot of a limit and its key: SQLite
    counts a limit's workers; MongoDB's slot documents are held per job."""
    return type(store).__name__ == "SQLiteStore"


def done(store: Store, job: JobRecord, now: float) -> None:
    """Settle a claimed job DONE under its token."""
    assert store.settle(job.id, job.claim_token or "", rules.on_success(job, "null", now), now=now)


def state(store: Store, name: str, now: float) -> LimitState:
    found = {s.spec.name: s for s in store.limits(now=now)}
    assert name in found, f"no limit {name!r} in {sorted(found)}"
    return found[name]


def claimed_ids(store: Store, now: float, **kwargs: Any) -> list[str]:
    """Claim until nothing is claimable at ``now``: the ids, in claim order."""
    out = []
    while (job := claim(store, now=now, **kwargs)) is not None:
        out.append(job.id)
        assert len(out) < 1000
    return out


# -- definitions ----------------------------------------------------------------------------


def test_set_limit_creates_and_replaces_and_limits_lists_them_by_name(store: Store) -> None:
    now = time.time()
    assert store.limits(now=now) == []
    store.set_limit(LimitSpec("reports", 2))
    store.set_limit(LimitSpec("mail", None, Rate(100, 60.0)))
    store.set_limit(LimitSpec("api", 5, Rate(20, 1.0)))
    listed = store.limits(now=now)
    assert [s.spec for s in listed] == [
        LimitSpec("api", 5, Rate(20, 1.0)),
        LimitSpec("mail", None, Rate(100, 60.0)),
        LimitSpec("reports", 2),
    ]
    assert [(s.running, s.waiting, s.starts) for s in listed] == [(0, 0, ())] * 3
    # Replacing: the new definition whole (no max_running left over from the old one).
    store.set_limit(LimitSpec("reports", None, Rate(1, 1.0)))
    store.set_limit(LimitSpec("api", 7))
    assert [s.spec for s in store.limits(now=now)] == [
        LimitSpec("api", 7),
        LimitSpec("mail", None, Rate(100, 60.0)),
        LimitSpec("reports", None, Rate(1, 1.0)),
    ]
    # A second store object (another node) sees the same definitions.
    assert [s.spec.name for s in store.limits(now=now)] == ["api", "mail", "reports"]


def write_bad_limit(store_spec: StoreSpec, name: str) -> None:
    """A definition another client wrote wrong (a max_running that is not a number)."""
    if store_spec.kind == "sqlite":
        import sqlite3

        path = store_spec.url[len("sqlite:///") - 1 :]
        with contextlib.closing(sqlite3.connect(path)) as conn, conn:
            conn.execute("INSERT INTO limits (name, max_running) VALUES (?, 'many')", (name,))
        return
    import pymongo

    client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(store_spec.url)
    with client:
        options = store_spec.options
        limits = client[options["database"]][options["jobs_collection"] + "_limits"]
        limits.insert_one({"_id": name, "max_running": "many"})


def test_limit_specs_are_the_definitions_limits_lists_without_the_counts(
    store: Store, store_spec: StoreSpec
) -> None:
    """What an add reads to join queue:/class: limits: the same definitions as limits(),
    a definition written wrong left out by both (its jobs run unlimited)."""
    assert store.limit_specs() == []
    store.set_limit(LimitSpec("reports", 2))
    store.set_limit(LimitSpec("mail", None, Rate(100, 60.0)))
    store.set_limit(LimitSpec("queue:default", 5, Rate(20, 1.0)))
    write_bad_limit(store_spec, "broken")
    store.insert([new_job(limit="reports")])
    specs = store.limit_specs()
    assert specs == [s.spec for s in store.limits(now=time.time())]
    assert [spec.name for spec in specs] == ["mail", "queue:default", "reports"]
    assert store.delete_limit("mail")
    assert [spec.name for spec in store_spec.open().limit_specs()] == ["queue:default", "reports"]


def test_limits_are_shared_by_every_store_object(store: Store, store_spec: StoreSpec) -> None:
    store.set_limit(LimitSpec("reports", 2))
    other = store_spec.open()
    try:
        assert [s.spec for s in other.limits(now=time.time())] == [LimitSpec("reports", 2)]
        other.set_limit(LimitSpec("reports", 3))
    finally:
        other.close()
    assert [s.spec for s in store.limits(now=time.time())] == [LimitSpec("reports", 3)]


def test_delete_limit_says_whether_there_was_one_and_its_jobs_then_run(store: Store) -> None:
    now = time.time()
    store.set_limit(LimitSpec("reports", 1))
    store.set_limit(LimitSpec("other", 1))
    store.insert([new_job(f"r{i}", now=now, limit="reports") for i in range(3)])
    assert claimed_ids(store, now) == ["r0"]
    assert store.delete_limit("reports") is True
    assert store.delete_limit("reports") is False
    assert store.delete_limit("never-defined") is False
    assert [s.spec.name for s in store.limits(now=now)] == ["other"]
    assert claimed_ids(store, now) == ["r1", "r2"]  # no definition: unlimited


def test_a_limit_defined_again_counts_the_jobs_still_running(store: Store) -> None:
    now = time.time()
    store.set_limit(LimitSpec("reports", 2))
    store.insert([new_job(f"r{i}", now=now + i * 0.001, limit="reports") for i in range(6)])
    t = now + 0.01
    held = [must_claim(store, now=t) for _ in range(2)]
    assert store.delete_limit("reports")
    held.append(must_claim(store, now=t))  # unlimited meanwhile
    store.set_limit(LimitSpec("reports", 2))
    # running is the limit's jobs PROCESSING under a lease, whenever they started
    assert state(store, "reports", t).running == 3
    assert claim(store, now=t) is None
    done(store, held[0], t)
    assert claim(store, now=t) is None  # 2 running, capacity 2
    done(store, held[1], t)
    assert claimed_ids(store, t) == ["r3"]


def test_flush_keeps_the_definitions_and_frees_every_slot(store: Store) -> None:
    now = time.time()
    store.set_limit(LimitSpec("reports", 1, Rate(5, 60.0)))
    store.insert([new_job("r0", now=now, limit="reports", exclusive_key="k")])
    t = now + 0.01
    must_claim(store, now=t)
    store.flush()
    st = state(store, "reports", t)
    assert (st.spec, st.running, st.waiting) == (LimitSpec("reports", 1, Rate(5, 60.0)), 0, 0)
    assert store.key_holders(["k"], now=t) == {}
    store.insert([new_job("r1", now=now, limit="reports", exclusive_key="k")])
    assert claimed_ids(store, t) == ["r1"]


# -- max_running ----------------------------------------------------------------------------


def test_a_full_limit_is_skipped_for_the_next_best_job(store: Store) -> None:
    now = time.time()
    store.set_limit(LimitSpec("reports", 1))
    store.insert(
        [
            new_job("r-high", now=now, limit="reports", priority=9),
            new_job("r-high-2", now=now + 0.001, limit="reports", priority=9),
            new_job("plain-low", now=now + 0.002, priority=0),
            new_job("r-low", now=now + 0.003, limit="reports", priority=0),
            new_job("plain-lowest", now=now + 0.004, priority=-5),
        ]
    )
    later = now + 0.01
    first = must_claim(store, now=later)
    assert first.id == "r-high"
    # No head-of-line blocking: the held job of the higher priority waits, the others run.
    assert claimed_ids(store, later) == ["plain-low", "plain-lowest"]
    assert store.get("r-high-2").status == JobStatus.WAITING
    done(store, first, later)
    assert claimed_ids(store, later) == ["r-high-2"]  # the best of the limit's jobs next


def test_a_full_limit_in_the_first_queue_lets_the_next_queue_run(store: Store) -> None:
    now = time.time()
    store.set_limit(LimitSpec("reports", 1))
    store.insert(
        [
            new_job("u1", now=now, queue="urgent", limit="reports"),
            new_job("u2", now=now + 0.001, queue="urgent", limit="reports"),
            new_job("u3", now=now + 0.002, queue="urgent"),
            new_job("d1", now=now + 0.003, queue="default"),
        ]
    )
    later = now + 0.01
    queues = ("urgent", "default")
    assert claimed_ids(store, later, queues=queues) == ["u1", "u3", "d1"]
    assert store.get("u2").status == JobStatus.WAITING


def test_settle_and_give_back_free_the_slot(store: Store) -> None:
    now = time.time()
    store.set_limit(LimitSpec("reports", 2))
    store.insert([new_job(f"r{i}", now=now + i * 0.001, limit="reports") for i in range(5)])
    later = now + 0.01
    a, b = must_claim(store, now=later), must_claim(store, now=later)
    assert (a.id, b.id) == ("r0", "r1")
    assert claim(store, now=later) is None
    done(store, a, later)
    c = must_claim(store, now=later)
    assert c.id == "r2"
    assert claim(store, now=later) is None
    # A job given back (node stopping) frees its slot too, and is claimable again.
    assert store.settle(b.id, b.claim_token or "", rules.release(b), now=later)
    assert claimed_ids(store, later) == ["r1"]
    assert claim(store, now=later) is None


def test_a_failed_job_frees_its_slot(store: Store) -> None:
    now = time.time()
    store.set_limit(LimitSpec("reports", 1))
    store.insert([new_job(f"r{i}", now=now + i * 0.001, limit="reports") for i in range(2)])
    later = now + 0.01
    a = must_claim(store, now=later)
    failed = rules.on_error(a, error(1), later, permanent=True)
    assert store.settle(a.id, a.claim_token or "", failed, now=later)
    assert store.get(a.id).status == JobStatus.FAILED
    assert claimed_ids(store, later) == ["r1"]


def test_a_lease_that_ended_frees_the_slot_and_a_late_settle_frees_no_other(
    store: Store,
) -> None:
    now = time.time()
    store.set_limit(LimitSpec("reports", 1))
    store.insert([new_job(f"r{i}", now=now + i * 0.001, limit="reports") for i in range(3)])
    t = now + 0.01
    a = must_claim(store, now=t, lease=1.0)
    assert claim(store, now=t + 0.5) is None  # lease not over: still running
    assert state(store, "reports", t + 0.5).running == 1
    # Its node died: once the lease has ended the slot is free, no reaper needed.
    assert state(store, "reports", t + 2).running == 0
    b = must_claim(store, now=t + 2, lease=30.0)
    assert b.id == "r1"
    assert claim(store, now=t + 2) is None
    # The first holder's late settle (its token still matches its job) must not free the
    # slot the second one holds now.
    store.settle(a.id, a.claim_token or "", rules.on_success(a, "null", t + 3), now=t + 3)
    assert claim(store, now=t + 3) is None
    assert state(store, "reports", t + 3).running == 1
    done(store, b, t + 4)
    assert claimed_ids(store, t + 4) == ["r2"]


def test_a_renewed_lease_keeps_its_slot(store: Store) -> None:
    now = time.time()
    store.set_limit(LimitSpec("reports", 1))
    store.insert(
        [
            new_job("r0", now=now, limit="reports"),
            new_job("r1", now=now + 0.001, limit="reports"),
            new_job("k0", now=now + 0.002, exclusive_key="customer:1"),
            new_job("k1", now=now + 0.003, exclusive_key="customer:1"),
        ]
    )
    t = time.time()  # renew() takes real time
    a = must_claim(store, now=t, lease=2.0)
    k = must_claim(store, now=t, lease=2.0)
    assert (a.id, k.id) == ("r0", "k0")
    assert store.renew([a.claim_token or "", k.claim_token or ""], lease_until=t + 100) == 2
    assert claim(store, now=t + 10) is None  # both still held well past the first lease
    assert state(store, "reports", t + 10).running == 1
    assert store.key_holders(["customer:1"], now=t + 10) == {"customer:1": "k0"}


def test_max_running_zero_holds_every_job_of_the_limit(store: Store) -> None:
    now = time.time()
    store.set_limit(LimitSpec("paused", 0))
    store.insert([new_job(f"p{i}", now=now + i * 0.001, limit="paused") for i in range(3)])
    store.insert([new_job("free", now=now + 0.01)])
    later = now + 0.1
    assert claimed_ids(store, later) == ["free"]
    assert claim(store, now=later, job_id="p0") is None  # not by its id either
    st = state(store, "paused", later)
    assert (st.running, st.waiting) == (0, 3)
    store.set_limit(LimitSpec("paused", 2))  # raised: two start at once
    assert claimed_ids(store, later) == ["p0", "p1"]


def test_a_job_whose_limit_is_not_defined_runs_unlimited(store: Store) -> None:
    now = time.time()
    store.set_limit(LimitSpec("other", 1))
    store.insert([new_job(f"n{i}", now=now + i * 0.001, limit="nowhere") for i in range(4)])
    assert claimed_ids(store, now + 0.01) == ["n0", "n1", "n2", "n3"]
    assert [s.spec.name for s in store.limits(now=now)] == ["other"]  # nothing made up


def test_a_lower_max_running_holds_new_starts_until_enough_end(store: Store) -> None:
    now = time.time()
    store.set_limit(LimitSpec("reports", 3))
    store.insert([new_job(f"r{i}", now=now + i * 0.001, limit="reports") for i in range(6)])
    t = now + 0.01
    held = [must_claim(store, now=t) for _ in range(3)]
    store.set_limit(LimitSpec("reports", 1))  # running jobs stay
    assert state(store, "reports", t).running == 3
    done(store, held[0], t)
    assert claim(store, now=t) is None  # 2 running, capacity 1
    done(store, held[1], t)
    assert claim(store, now=t) is None  # 1 running
    done(store, held[2], t)
    assert claimed_ids(store, t) == ["r3"]
    store.set_limit(LimitSpec("reports", 3))  # raised again: two more at once
    assert claimed_ids(store, t) == ["r4", "r5"]


def test_a_claim_by_id_respects_the_limit(store: Store) -> None:
    now = time.time()
    store.set_limit(LimitSpec("reports", 1))
    store.insert([new_job(f"r{i}", now=now + i * 0.001, limit="reports") for i in range(2)])
    t = now + 0.01
    a = must_claim(store, now=t, job_id="r1")
    assert claim(store, now=t, job_id="r0") is None
    done(store, a, t)
    assert must_claim(store, now=t, job_id="r0").id == "r0"


# -- exclusive keys -----------------------------------------------------------------------


def test_jobs_sharing_an_exclusive_key_never_run_together(store: Store) -> None:
    now = time.time()
    store.insert(
        [
            new_job("c42-a", now=now, exclusive_key="customer:42", priority=5),
            new_job("c42-b", now=now + 0.001, exclusive_key="customer:42", priority=5),
            new_job("c7", now=now + 0.002, exclusive_key="customer:7"),
            new_job("plain", now=now + 0.003),
        ]
    )
    t = now + 0.01
    first = must_claim(store, now=t)
    assert first.id == "c42-a"
    # Different keys run in parallel; the same key's second job waits, holding no one up.
    assert claimed_ids(store, t) == ["c7", "plain"]
    assert store.get("c42-b").status == JobStatus.WAITING
    assert claim(store, now=t, job_id="c42-b") is None
    holders = store.key_holders(["customer:42", "customer:7", "customer:1"], now=t)
    assert holders == {"customer:42": "c42-a", "customer:7": "c7"}
    assert store.key_holders([], now=t) == {}
    done(store, first, t)
    assert store.key_holders(["customer:42"], now=t) == {}
    second = must_claim(store, now=t)
    assert second.id == "c42-b"
    assert store.key_holders(["customer:42"], now=t) == {"customer:42": "c42-b"}


def test_an_exclusive_key_is_freed_when_its_holders_lease_ends(store: Store) -> None:
    now = time.time()
    store.insert(
        [
            new_job("a", now=now, exclusive_key="k"),
            new_job("b", now=now + 0.001, exclusive_key="k"),
            new_job("c", now=now + 0.002, exclusive_key="k"),
        ]
    )
    t = now + 0.01
    a = must_claim(store, now=t, lease=1.0)
    assert claim(store, now=t + 0.5) is None
    assert store.key_holders(["k"], now=t + 2) == {}
    b = must_claim(store, now=t + 2)
    assert b.id == "b"
    store.settle(a.id, a.claim_token or "", rules.on_success(a, "null", t + 3), now=t + 3)
    assert claim(store, now=t + 3) is None  # a's late settle frees nothing of b's
    assert store.key_holders(["k"], now=t + 3) == {"k": "b"}


def test_a_job_held_by_its_key_takes_no_slot_of_its_limit(store: Store) -> None:
    now = time.time()
    store.set_limit(LimitSpec("reports", 1))
    store.insert(
        [
            new_job("key-holder", now=now, exclusive_key="customer:1", priority=9),
            new_job("both", now=now + 0.001, exclusive_key="customer:1", limit="reports",
                    priority=5),
            new_job("limited", now=now + 0.002, limit="reports"),
        ]
    )  # fmt: skip
    t = now + 0.01
    holder = must_claim(store, now=t)
    assert holder.id == "key-holder"
    # "both" is held by its key: the limit's one slot goes to "limited".
    assert claimed_ids(store, t) == ["limited"]
    assert state(store, "reports", t).running == 1
    done(store, holder, t)
    assert claim(store, now=t) is None  # the key is free, the limit full
    # And a job held by its limit holds no key.
    assert store.key_holders(["customer:1"], now=t) == {}


# -- rates ------------------------------------------------------------------------------------


def test_a_rate_allows_count_starts_in_any_window_of_its_period(store: Store) -> None:
    now = time.time()
    store.set_limit(LimitSpec("mail", None, Rate(2, 10.0)))
    store.insert([new_job(f"m{i}", now=now + i * 0.001, limit="mail") for i in range(6)])
    store.insert([new_job("plain", now=now + 0.01)])
    t = now + 0.1
    assert must_claim(store, now=t).id == "m0"
    assert must_claim(store, now=t + 3).id == "m1"
    assert claimed_ids(store, t + 3) == ["plain"]  # the rate holds mail, not the others
    st = state(store, "mail", t + 5)
    assert st.starts == (near(t), near(t + 3))
    assert st.running == 2  # running does not matter to a rate, but it is counted
    assert st.next_start(t + 5) == near(t + 10)
    assert claim(store, now=t + 9.9) is None
    # t leaves the window (t + 10.01 - 10, t + 10.01]: one more, then t + 3 must leave.
    assert must_claim(store, now=t + 10.01).id == "m2"
    assert claim(store, now=t + 12.9) is None
    assert state(store, "mail", t + 12.9).next_start(t + 12.9) == near(t + 13)
    assert must_claim(store, now=t + 13.01).id == "m3"
    assert claim(store, now=t + 13.01) is None
    # Settling frees no start: the window does.
    for job in store.find(JobQuery(statuses=(JobStatus.PROCESSING,))):
        done(store, job, t + 14)
    assert claim(store, now=t + 14) is None
    assert must_claim(store, now=t + 20.02).id == "m4"


def test_a_rate_and_max_running_together(store: Store) -> None:
    now = time.time()
    store.set_limit(LimitSpec("api", 1, Rate(2, 10.0)))
    store.insert([new_job(f"a{i}", now=now + i * 0.001, limit="api") for i in range(4)])
    t = now + 0.1
    a0 = must_claim(store, now=t)
    assert claim(store, now=t + 1) is None  # full
    done(store, a0, t + 1)
    a1 = must_claim(store, now=t + 1)
    done(store, a1, t + 2)
    assert claim(store, now=t + 2) is None  # room, but 2 starts in the window
    assert must_claim(store, now=t + 10.01).id == "a2"


def test_set_limit_keeps_the_rate_windows_starts(store: Store) -> None:
    now = time.time()
    store.set_limit(LimitSpec("mail", None, Rate(1, 60.0)))
    store.insert([new_job(f"m{i}", now=now + i * 0.001, limit="mail") for i in range(3)])
    t = now + 0.1
    must_claim(store, now=t)
    store.set_limit(LimitSpec("mail", 10, Rate(1, 60.0)))  # e.g. the config applied again
    assert claim(store, now=t + 1) is None
    assert state(store, "mail", t + 1).starts == (near(t),)
    store.set_limit(LimitSpec("mail", None, Rate(2, 60.0)))  # a higher rate: room at once
    assert must_claim(store, now=t + 1).id == "m1"
    assert claim(store, now=t + 1) is None


# -- what an operator sees ----------------------------------------------------------------------


def test_limits_counts_running_and_waiting_jobs(store: Store) -> None:
    now = time.time()
    store.set_limit(LimitSpec("reports", 2))
    store.set_limit(LimitSpec("idle", 1))
    store.insert([new_job(f"r{i}", now=now + i * 0.001, limit="reports") for i in range(5)])
    store.insert([new_job("later", now=now, at=now + 3600, limit="reports")])  # not due
    store.insert([new_job("elsewhere", now=now, limit="undefined")])
    t = now + 0.1
    st = state(store, "reports", t)
    assert (st.running, st.waiting, st.starts) == (0, 5, ())
    a = must_claim(store, now=t, lease=1.0, job_id="r0")
    must_claim(store, now=t, lease=30.0, job_id="r1")
    st = state(store, "reports", t)
    assert (st.running, st.waiting) == (2, 3)
    assert st.full(t)
    done(store, a, t)
    assert (state(store, "reports", t).running, state(store, "reports", t).waiting) == (1, 3)
    idle = state(store, "idle", t)
    assert (idle.running, idle.waiting) == (0, 0)
    assert [s.spec.name for s in store.limits(now=t)] == ["idle", "reports"]


def test_next_due_leaves_out_jobs_held_by_a_full_limit_or_a_held_key(store: Store) -> None:
    now = time.time()  # next_due reads the real clock
    store.set_limit(LimitSpec("reports", 1))
    store.insert(
        [
            new_job("r0", now=now, limit="reports"),
            new_job("r1", now=now + 0.001, limit="reports"),
            new_job("k0", now=now + 0.002, exclusive_key="k"),
            new_job("k1", now=now + 0.003, exclusive_key="k"),
        ]
    )
    assert store.next_due(["default"]) == near(now)
    r0 = must_claim(store, now=time.time(), job_id="r0")
    k0 = must_claim(store, now=time.time(), job_id="k0")
    assert store.next_due(["default"]) is None  # all that is left is held back
    store.insert([new_job("later", now=now, at=now + 30)])
    assert store.next_due(["default"]) == near(now + 30)
    done(store, r0, time.time())
    assert store.next_due(["default"]) == near(now + 0.001)  # r1's slot is free now
    done(store, k0, time.time())
    assert store.next_due(["default"]) == near(now + 0.001)
    assert store.next_due(["other"]) is None


def test_next_due_counts_a_rate_held_job_from_the_rates_next_start(store: Store) -> None:
    now = time.time()
    store.set_limit(LimitSpec("mail", None, Rate(1, 60.0)))
    store.insert([new_job(f"m{i}", now=now + i * 0.001, limit="mail") for i in range(2)])
    t = time.time()
    must_claim(store, now=t)
    assert store.next_due(["default"]) == pytest.approx(t + 60, abs=0.01)
    store.insert([new_job("soon", now=now, at=now + 20)])
    assert store.next_due(["default"]) == near(now + 20)


def test_count_due_leaves_out_held_back_jobs(store: Store) -> None:
    now = time.time()
    store.set_limit(LimitSpec("reports", 1))
    store.insert([new_job(f"r{i}", now=now + i * 0.001, limit="reports") for i in range(4)])
    store.insert([new_job(f"k{i}", now=now + i * 0.001, exclusive_key="k") for i in range(3)])
    store.insert([new_job("plain", now=now)])
    t = now + 0.1
    assert store.count_due(["default"], now=t, force_spawn=False) == 8
    must_claim(store, now=t, job_id="r0")
    must_claim(store, now=t, job_id="k0")
    # Pool sizing must not start workers for jobs that cannot run: 1 plain job is due.
    assert store.count_due(["default"], now=t, force_spawn=False) == 1


# -- batch claims -------------------------------------------------------------------------------


def test_a_batch_claim_respects_limits_keys_and_rates(store: Store) -> None:
    now = time.time()
    store.set_limit(LimitSpec("reports", 3))
    store.set_limit(LimitSpec("mail", None, Rate(2, 60.0)))
    jobs = [new_job(f"r{i}", now=now + i * 0.001, limit="reports", priority=9) for i in range(6)]
    jobs += [new_job(f"m{i}", now=now + i * 0.001, limit="mail", priority=8) for i in range(4)]
    jobs += [new_job(f"k{i}", now=now + i * 0.001, exclusive_key="k", priority=7) for i in range(3)]
    jobs += [new_job(f"p{i}", now=now + i * 0.001) for i in range(20)]
    store.insert(jobs)
    t = now + 0.1
    request = ClaimRequest(queues=("default",), node="n", worker="n/1", token="b1", lease=30.0,
                           limit=12)  # fmt: skip
    _, held = store.settle_batch([], now=t, claim=request)
    if shares_slots(store):
        # One worker's batch runs one job at a time: its jobs of a limit take one slot,
        # its key does not hold its own jobs back; a rate counts every start.
        assert [j.id for j in held] == [
            "r0", "r1", "r2", "r3", "r4", "r5", "m0", "m1", "k0", "k1", "k2", "p0",
        ]  # fmt: skip
        assert state(store, "reports", t).running == 1
        assert claim(store, now=t) is not None  # another worker: a slot of 3 is free
        return
    assert [j.id for j in held] == [
        "r0", "r1", "r2", "m0", "m1", "k0", "p0", "p1", "p2", "p3", "p4", "p5",
    ]  # fmt: skip
    assert len({j.claim_token for j in held}) == 12
    # Settling in the same batch frees the slots for that batch's claim.
    settles = [(j.id, j.claim_token or "", rules.on_success(j, "null", t)) for j in held]
    _, more = store.settle_batch(settles, now=t, claim=replace(request, token="b2"))
    assert [j.id for j in more] == [
        "r3", "r4", "r5", "k1", "p6", "p7", "p8", "p9", "p10", "p11", "p12", "p13",
    ]  # fmt: skip
    assert state(store, "reports", t).running == 3
    assert store.key_holders(["k"], now=t) == {"k": "k1"}


# -- two nodes at once ------------------------------------------------------------------------


def test_two_nodes_claiming_at_once_never_exceed_max_running(
    store: Store, store_spec: StoreSpec
) -> None:
    """Two store objects (two nodes), one thread each, each claiming until it holds 3
    jobs (then settling its oldest) under a limit of 3: after every claim, neither what the claimers hold nor what the store
    counts as running, nor the PROCESSING jobs of the limit, is above 3."""
    cap, total = 3, 40
    now = time.time()
    store.set_limit(LimitSpec("reports", cap))
    store.insert([new_job(f"r{i:02}", now=now + i * 0.001, limit="reports") for i in range(total)])
    store.insert([new_job(f"p{i:02}", now=now + i * 0.001) for i in range(10)])
    lock = threading.Lock()
    holding = [0]
    peak = [0]
    ran: list[str] = []
    failures: list[BaseException] = []
    deadline = time.monotonic() + 60

    def node(name: str) -> None:
        mine = store_spec.open()
        held: list[JobRecord] = []
        try:
            while time.monotonic() < deadline and not failures:
                # A worker per job: every job held here counts as running.
                job = mine.claim(("default",), node=name, worker=f"{name}/{uuid.uuid4().hex[:8]}",
                                 token=uuid.uuid4().hex, lease=30.0, now=time.time())  # fmt: skip
                if job is not None and job.options.limit == "reports":
                    with lock:
                        holding[0] += 1
                        peak[0] = max(peak[0], holding[0])
                        ran.append(job.id)
                        assert holding[0] <= cap, f"claimers hold {holding[0]} > {cap}"
                    at = time.time()
                    running = {s.spec.name: s.running for s in mine.limits(now=at)}
                    assert running["reports"] <= cap, f"the store counts {running} > {cap}"
                    processing = [
                        j.id
                        for j in mine.find(JobQuery(statuses=(JobStatus.PROCESSING,)))
                        if j.options.limit == "reports"
                    ]
                    assert len(processing) <= cap, f"PROCESSING {processing} > {cap}"
                if job is not None:
                    held.append(job)
                if held and (job is None or len(held) >= cap):
                    oldest = held.pop(0)
                    if oldest.options.limit == "reports":
                        with lock:  # counted off before its slot can free
                            holding[0] -= 1
                    done(mine, oldest, time.time())
                if job is None and not held:
                    left = mine.count_due(("default",), now=time.time(), force_spawn=False)
                    if not left and not mine.find(JobQuery(statuses=(JobStatus.PROCESSING,))):
                        return
        except BaseException as exc:  # re-raised by the test's own thread
            failures.append(exc)
        finally:
            mine.close()

    threads = [threading.Thread(target=node, args=(f"node-{i}",)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(90)
    assert not any(thread.is_alive() for thread in threads)
    if failures:
        raise failures[0]
    assert sorted(ran) == [f"r{i:02}" for i in range(total)]  # each once
    # The limit was used beyond what one claimer holds of it alone (how far the two
    # interleave up to the cap is the scheduler's choice on a loaded machine).
    assert 2 <= peak[0] <= cap
    jobs = store.find(JobQuery(limit=None))
    assert all(j.status == JobStatus.DONE and j.attempt == 1 for j in jobs)


# -- one worker's claims --------------------------------------------------------------------


def test_the_jobs_one_worker_holds_share_its_slot_and_its_key(store: Store) -> None:
    """A worker runs one job at a time: the jobs it claims ahead of a full limit take the
    slot it holds, and its own key does not hold them back; other workers stay held."""
    if not shares_slots(store):
        pytest.skip("MongoDB holds a slot document per job (its claims ahead take one each)")
    now = time.time()
    store.set_limit(LimitSpec("reports", 1))
    store.insert([new_job(f"r{i}", now=now + i * 0.001, limit="reports") for i in range(3)])
    store.insert([new_job(f"k{i}", now=now + i * 0.001, exclusive_key="k") for i in range(2)])
    t = now + 0.1
    assert must_claim(store, now=t, worker="a/1").id == "r0"
    assert claim(store, now=t, worker="b/1") is not None  # k0: no limit, its key is free
    assert claim(store, now=t, worker="b/1") is not None  # k1: b holds the key itself
    assert claim(store, now=t, worker="c/1") is None  # the limit's slot is a's, k is b's
    assert must_claim(store, now=t, worker="a/1").id == "r1"  # a's slot
    assert state(store, "reports", t).running == 1
    assert store.key_holders(["k"], now=t).keys() == {"k"}


def test_a_start_logged_far_ahead_moves_no_claim_and_closes_no_rate(
    store: Store, store_spec: StoreSpec
) -> None:
    """A rate's log with a start an hour ahead (another client, or a clock that jumped)
    or an infinite one: claims, limited or not, keep their own time and lease, and the
    rate lets its jobs start."""
    now = time.time()
    store.set_limit(LimitSpec("mail", None, Rate(100, 60.0)))
    if shares_slots(store):
        store._conn.execute(  # type: ignore[attr-defined]
            "UPDATE limits SET starts = ? WHERE name = 'mail'", ("[%r, 1e999]" % (now + 3600),)
        )
    else:
        store._limits.update_one(  # type: ignore[attr-defined]
            {"_id": "mail"},
            {"$set": {"starts": [now + 3600, 1e300]}},  # nx: no inf
        )
    store.insert([new_job("plain", now=now), new_job("m", now=now + 0.001, limit="mail")])
    t = now + 0.1
    first, second = must_claim(store, now=t), must_claim(store, now=t)
    for job in (first, second):
        assert job.started is not None and abs(job.started - t) < 2, job.started
        assert job.lease_until is not None and job.lease_until < t + 40
    assert {first.id, second.id} == {"plain", "m"}
    assert state(store, "mail", t).next_start(t) is None
