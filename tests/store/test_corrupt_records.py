"""The decoding boundary on every store: a record written by another client that does
not decode is read as corrupt (never raised on), is never run, and ends quarantined:
claimed ones by the worker's fenced settle, the ones claims and reaps cannot see by the
nodes' sweep (Store.malformed + Store.quarantine)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from taskschedd import rules
from taskschedd.errors import TaskSchedError
from taskschedd.model import JobQuery, JobStatus
from taskschedd.scheduler import Scheduler
from taskschedd.store.base import Store
from taskschedd.worker import Worker
from tests.corrupt_records import (
    MONGO_CASES,
    SQLITE_CASES,
    damage_mongo,
    damage_sqlite,
    quarantined,
)
from tests.store.conftest import StoreSpec

JOB = "taskschedd.examples.jobs.Add"


def damage(spec: StoreSpec, job_id: str, case: str) -> None:
    if spec.kind == "sqlite":
        damage_sqlite(spec.url[len("sqlite://") :], job_id, case)
    else:
        damage_mongo(spec.url, spec.options, job_id, case)


def sweep(store: Store) -> int:
    """What a node's housekeeping does: reap expired leases, quarantine malformed records."""
    n = 0
    for record in store.expired(time.time()):
        if record.claim_token is None:  # no token to fence with: the sweep's case
            continue
        if record.corrupt is not None:
            settlement = rules.on_corrupt(record, time.time())
        else:
            settlement = rules.on_abandoned(record, time.time())
        n += store.settle(record.id, record.claim_token, settlement, now=time.time()) is not None
    for record in store.malformed():
        n += store.quarantine(record, rules.on_corrupt(record, time.time()), now=time.time())
    return n


def test_every_corrupt_record_ends_quarantined_and_never_runs(
    store_spec: StoreSpec, tmp_path: Path
) -> None:
    store = store_spec.open()
    sched = Scheduler(store)
    cases = list(SQLITE_CASES if store_spec.kind == "sqlite" else MONGO_CASES)
    later = time.time() + 3600
    bad = {case: sched.add_job(JOB, {"a": 1, "b": 2}, at=later).id for case in cases}
    for case, job_id in bad.items():
        damage(store_spec, job_id, case)
    good = [sched.add_job(JOB, {"a": i, "b": 1}).id for i in range(5)]

    # Reading never raises; every record reads as corrupt or is found malformed.
    listed = {r.id: r for r in store.find(JobQuery())}
    malformed = {r.id for r in store.malformed(limit=1000)}
    for case, job_id in bad.items():
        assert listed[job_id].corrupt is not None or job_id in malformed, case
    assert store.stats(now=time.time())["by_status"]

    worker = Worker(store, allowed_modules=["taskschedd.examples"], lease=30)
    for _ in range(3):  # claims and sweeps interleave as on a node
        while worker.run_one() is not None:
            pass
        sweep(store)
    worker.close()
    for job_id in good:
        assert store.get(job_id).status is JobStatus.DONE
    states = {case: store.get(job_id) for case, job_id in bad.items()}
    wrong = {
        c: (r.status.name, r.reason, r.corrupt) for c, r in states.items() if not quarantined(r)
    }
    assert not wrong
    assert not any(r.result for r in states.values()), "a corrupt record must never run"
    assert store.malformed() == []
    assert sweep(store) == 0  # quarantined records are no longer malformed
    case, job_id = next(iter(bad.items()))
    with pytest.raises(TaskSchedError, match="cannot be retried: its stored record does not"):
        sched.retry_job(job_id)  # it would only be quarantined again
    assert quarantined(store.get(job_id)), case


def test_a_record_whose_id_is_not_text_is_never_claimed_and_ends_quarantined(
    store_spec: StoreSpec,
) -> None:
    """Another client's record with a BLOB id (SQLite) or an ObjectId/object _id (MongoDB):
    no write could address it by the id a claim would hand out, so claims leave it to the
    sweep, which quarantines it by what the store can address."""
    store = store_spec.open()
    sched = Scheduler(store)
    template = sched.add_job(JOB, {"a": 1, "b": 2}, at=time.time() + 3600).id
    good = [sched.add_job(JOB, {"a": i, "b": 1}).id for i in range(3)]
    foreign = insert_foreign_ids(store_spec, template)
    worker = Worker(store, allowed_modules=["taskschedd.examples"], lease=30, claim_ahead=8)
    while worker.run_one() is not None:
        pass
    worker.close()
    assert all(store.get(i).status is JobStatus.DONE for i in good)
    waiting = int(JobStatus.POSTPONED)  # as the template, added for later
    assert foreign_states(store_spec) == {k: (waiting, None) for k in foreign}, "never claimed"
    assert sweep(store) == len(foreign)
    assert foreign_states(store_spec) == {k: (int(JobStatus.FAILED), "corrupt") for k in foreign}
    assert store.malformed() == [] and sweep(store) == 0


def insert_foreign_ids(spec: StoreSpec, template: str) -> list[str]:
    """Copies of a due job under ids that are not text; returns labels for them."""
    if spec.kind == "sqlite":
        import contextlib
        import sqlite3

        path = spec.url[len("sqlite://") :]
        with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as conn:
            cols = [r[1] for r in conn.execute("PRAGMA table_info(jobs)") if r[1] != "seq"]
            rest = [c for c in cols if c not in ("id", "at")]
            for blob in (b"\x01\x02", b"\xff"):
                conn.execute(
                    f"INSERT INTO jobs (id, at, {', '.join(rest)}) "
                    f"SELECT ?, ?, {', '.join(rest)} FROM jobs WHERE id = ?",
                    (blob, time.time(), template),
                )
        return ["blob1", "blob2"]
    import bson
    import pymongo

    client: pymongo.MongoClient[dict[str, object]] = pymongo.MongoClient(spec.url)
    with client:
        coll = client[spec.options["database"]][spec.options["jobs_collection"]]
        doc = coll.find_one({"_id": template})
        assert doc is not None
        for new_id in (bson.ObjectId(), {"x": 1}):
            coll.insert_one(
                {**doc, "_id": new_id, "at": float(f"{time.time():.15g}"), "once": str(new_id)}
            )
    return ["objectid", "object"]


def foreign_states(spec: StoreSpec) -> dict[str, tuple[object, object]]:
    """(status, reason) of the records inserted by insert_foreign_ids, by label."""
    if spec.kind == "sqlite":
        import contextlib
        import sqlite3

        path = spec.url[len("sqlite://") :]
        with contextlib.closing(sqlite3.connect(path)) as conn:
            rows = conn.execute(
                "SELECT status, reason FROM jobs WHERE typeof(id) = 'blob' ORDER BY seq"
            ).fetchall()
        return dict(zip(["blob1", "blob2"], [tuple(r) for r in rows], strict=True))
    import pymongo

    client: pymongo.MongoClient[dict[str, object]] = pymongo.MongoClient(spec.url)
    with client:
        coll = client[spec.options["database"]][spec.options["jobs_collection"]]
        docs = list(coll.find({"$nor": [{"_id": {"$type": "string"}}]}).sort("seq", 1))
    out = {}
    for d in docs:
        label = "object" if isinstance(d["_id"], dict) else "objectid"
        out[label] = (d["status"], d.get("reason"))
    return out


def test_a_quarantined_occurrence_ends_its_series_and_says_which(store_spec: StoreSpec) -> None:
    store = store_spec.open()
    sched = Scheduler(store)
    first = sched.add_job(JOB, {"a": 1, "b": 2}, interval=3600, at=time.time() + 3600)
    damage(store_spec, first.id, "data not JSON")
    worker = Worker(store, allowed_modules=["taskschedd.examples"], lease=30)
    assert worker.run_one() is not None
    worker.close()
    record = store.get(first.id)
    assert quarantined(record) and record.corrupt is not None
    series = store.find(JobQuery(series=record.series or first.id))
    assert [j.id for j in series] == [first.id], "no next occurrence from a corrupt record"
