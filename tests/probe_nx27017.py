"""Probe which MongoDB operations behave like MongoDB >= 6.0 on nx-27017.

Run:  .venv/bin/python tests/probe_nx27017.py [--only SUBSTRING] [--json FILE]
      .venv/bin/python tests/probe_nx27017.py --uri mongodb://host:27017/

Without --uri it starts nx-27017 through tests/mongo_server.py. With --uri it
probes that server instead (e.g. a real mongod, to confirm the expectations
below); checks that need to stop the server are then skipped.

Every check compares what the server does with what MongoDB >= 6.0 does and
prints one line per aspect:

    OK       the behaviour matches MongoDB
    DIFFERS  it does not (details say how)
    INFO     a measurement or an observation with no MongoDB equivalent

The findings are written up in docs/nx-27017.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import multiprocessing as mp
import os
import sys
import threading
import time
import traceback
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

import pymongo
from bson import Binary, Decimal128, Int64, ObjectId
from pymongo import ReturnDocument, UpdateOne
from pymongo.collection import Collection
from pymongo.database import Database
from pymongo.errors import (
    AutoReconnect,
    BulkWriteError,
    ConnectionFailure,
    DuplicateKeyError,
    OperationFailure,
    PyMongoError,
    ServerSelectionTimeoutError,
)
from pymongo.monitoring import CommandListener, CommandStartedEvent
from pymongo.write_concern import WriteConcern

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from mongo_server import MongoServer, unique_db_name

Doc = dict[str, Any]
Client = pymongo.MongoClient[Doc]

UTC = dt.UTC
N_PROCS = 8
N_CLAIM_DOCS = 2000
N_UPSERT_KEYS = 200

# --------------------------------------------------------------------------
# result bookkeeping


@dataclass
class Line:
    check: str
    aspect: str
    status: str  # OK | DIFFERS | INFO | SKIP | ERROR
    detail: str = ""


@dataclass
class Report:
    lines: list[Line] = field(default_factory=list)
    current: str = ""

    def add(self, status: str, aspect: str, detail: str = "") -> None:
        line = Line(self.current, aspect, status, detail)
        self.lines.append(line)
        print(f"  {status:<8} {aspect}" + (f": {detail}" if detail else ""), flush=True)

    def ok(self, aspect: str, detail: str = "") -> None:
        self.add("OK", aspect, detail)

    def differs(self, aspect: str, detail: str = "") -> None:
        self.add("DIFFERS", aspect, detail)

    def info(self, aspect: str, detail: str = "") -> None:
        self.add("INFO", aspect, detail)

    def expect(self, aspect: str, actual: Any, expected: Any, note: str = "") -> bool:
        """OK if actual == expected (MongoDB's behaviour), else DIFFERS."""
        same = _same(actual, expected)
        if same:
            self.ok(aspect, note or f"{_short(actual)}")
        else:
            detail = f"got {_short(actual)}, MongoDB gives {_short(expected)}"
            self.differs(aspect, f"{detail}; {note}" if note else detail)
        return same

    def expect_raises(
        self,
        aspect: str,
        fn: Callable[[], Any],
        exc_type: type[BaseException],
        note: str = "",
    ) -> BaseException | None:
        """OK if fn raises exc_type (as MongoDB would), else DIFFERS."""
        try:
            result = fn()
        except exc_type as exc:
            self.ok(aspect, note or f"{type(exc).__name__}: {_short(str(exc), 120)}")
            return exc
        except Exception as exc:
            self.differs(
                aspect,
                f"raised {type(exc).__name__} ({_short(str(exc), 120)}), "
                f"MongoDB raises {exc_type.__name__}" + (f"; {note}" if note else ""),
            )
            return exc
        self.differs(
            aspect,
            f"no error (returned {_short(result)}), MongoDB raises {exc_type.__name__}"
            + (f"; {note}" if note else ""),
        )
        return None


def _same(actual: Any, expected: Any) -> bool:
    """Equal, and of the same type; int and bson.Int64 count as one type
    (pymongo decodes BSON int64 as Int64), bool never equals int."""
    if isinstance(actual, bool) or isinstance(expected, bool):
        return type(actual) is type(expected) and actual == expected
    if isinstance(actual, int) and isinstance(expected, int):
        return int(actual) == int(expected)
    return type(actual) is type(expected) and bool(actual == expected)


def _short(value: Any, limit: int = 160) -> str:
    text = repr(value) if not isinstance(value, str) else value
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _call(fn: Callable[[], Any]) -> tuple[Any, BaseException | None]:
    try:
        return fn(), None
    except Exception as exc:
        return None, exc


def _exc(exc: BaseException | None) -> str:
    return "no error" if exc is None else f"{type(exc).__name__}: {_short(str(exc), 140)}"


CHECKS: list[tuple[str, Callable[[Ctx], None]]] = []


def check(title: str) -> Callable[[Callable[[Ctx], None]], Callable[[Ctx], None]]:
    def register(fn: Callable[[Ctx], None]) -> Callable[[Ctx], None]:
        CHECKS.append((title, fn))
        return fn

    return register


@dataclass
class Ctx:
    uri: str
    server: MongoServer | None
    client: Client
    db: Database[Doc]
    report: Report
    perf: dict[str, float] = field(default_factory=dict)

    def coll(self, name: str) -> Collection[Doc]:
        coll = self.db[name]
        coll.drop()
        return coll

    def new_client(self, **kwargs: Any) -> Client:
        options: dict[str, Any] = {"serverSelectionTimeoutMS": 5000}
        options.update(kwargs)
        return pymongo.MongoClient(self.uri, **options)


def now_utc() -> dt.datetime:
    return dt.datetime.now(UTC)


# --------------------------------------------------------------------------
# subprocess workers (module level so "spawn" can import them)


CLAIM_FILTER_QUEUES = ["q1", "q2"]


def claim_filter(now: dt.datetime) -> Doc:
    return {
        "status": {"$in": [0, 1]},
        "queue": {"$in": CLAIM_FILTER_QUEUES},
        "at": {"$lte": now},
    }


CLAIM_SORT = [("priority", -1), ("at", 1), ("seq", 1)]


def _claim_worker(uri: str, db_name: str, coll_name: str, wid: int, barrier: Any, out: Any) -> None:
    client: Client = pymongo.MongoClient(uri, serverSelectionTimeoutMS=10000)
    coll = client[db_name][coll_name]
    coll.find_one({})  # connect before the barrier
    claimed: list[Any] = []
    errors: list[str] = []
    barrier.wait()
    started = time.monotonic()
    while True:
        try:
            doc = coll.find_one_and_update(
                claim_filter(now_utc()),
                {
                    "$set": {"status": 2, "owner": wid, "token": uuid.uuid4().hex},
                    "$inc": {"claims": 1},
                },
                sort=CLAIM_SORT,
                return_document=ReturnDocument.AFTER,
            )
        except PyMongoError as exc:
            errors.append(f"{type(exc).__name__}: {exc}")
            if len(errors) > 20:
                break
            continue
        if doc is None:
            break
        claimed.append(doc["_id"])
    out.put((wid, claimed, errors, time.monotonic() - started))
    client.close()


def _upsert_worker(
    uri: str, db_name: str, coll_name: str, wid: int, barrier: Any, out: Any, use_fam: bool
) -> None:
    client: Client = pymongo.MongoClient(uri, serverSelectionTimeoutMS=10000)
    coll = client[db_name][coll_name]
    coll.find_one({})
    errors: list[str] = []
    barrier.wait()
    for key in range(N_UPSERT_KEYS):
        try:
            if use_fam:
                coll.find_one_and_update(
                    {"key": key},
                    {"$setOnInsert": {"created_by": wid}, "$inc": {"hits": 1}},
                    upsert=True,
                    return_document=ReturnDocument.AFTER,
                )
            else:
                coll.update_one(
                    {"key": key},
                    {"$setOnInsert": {"created_by": wid}, "$inc": {"hits": 1}},
                    upsert=True,
                )
        except PyMongoError as exc:
            errors.append(f"{type(exc).__name__}: {_short(str(exc), 100)}")
    out.put((wid, errors))
    client.close()


def run_procs(
    target: Callable[..., None], args_for: Callable[[int, Any, Any], tuple[Any, ...]]
) -> list[Any]:
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(N_PROCS)
    out = ctx.Queue()
    procs = [ctx.Process(target=target, args=args_for(i, barrier, out)) for i in range(N_PROCS)]
    for proc in procs:
        proc.start()
    results = [out.get(timeout=600) for _ in procs]
    for proc in procs:
        proc.join(timeout=60)
    return results


# --------------------------------------------------------------------------
# checks


def _seed_claim_docs(
    coll: Collection[Doc], n: int, now: dt.datetime, *, float_at: bool = False
) -> None:
    docs = []
    for i in range(n):
        docs.append(
            {
                "_id": f"job{i:05d}",
                "seq": i,
                "status": i % 2,  # 0 and 1 are claimable
                "queue": CLAIM_FILTER_QUEUES[i % 2],
                "priority": i % 3,
                "at": (now - dt.timedelta(seconds=(i * 7919) % 1000)).timestamp()
                if float_at
                else now - dt.timedelta(seconds=(i * 7919) % 1000),
                "claims": 0,
            }
        )
    coll.insert_many(docs)


@check("find_one_and_update claim (filter, sort, $set/$inc, AFTER)")
def check_fam(ctx: Ctx) -> None:
    r = ctx.report
    coll = ctx.coll("fam")
    now = now_utc().replace(microsecond=0)
    base = [
        # eligible
        {
            "_id": "a",
            "status": 0,
            "queue": "q1",
            "priority": 1,
            "at": now - dt.timedelta(seconds=30),
            "seq": 5,
        },
        {
            "_id": "b",
            "status": 1,
            "queue": "q2",
            "priority": 5,
            "at": now - dt.timedelta(seconds=10),
            "seq": 9,
        },
        {
            "_id": "c",
            "status": 0,
            "queue": "q1",
            "priority": 5,
            "at": now - dt.timedelta(seconds=20),
            "seq": 7,
        },
        {
            "_id": "d",
            "status": 0,
            "queue": "q1",
            "priority": 5,
            "at": now - dt.timedelta(seconds=20),
            "seq": 3,
        },
        {
            "_id": "e",
            "status": 0,
            "queue": "q2",
            "priority": 1,
            "at": now - dt.timedelta(seconds=30),
            "seq": 1,
        },
        # not eligible
        {
            "_id": "x1",
            "status": 2,
            "queue": "q1",
            "priority": 9,
            "at": now - dt.timedelta(seconds=99),
            "seq": 0,
        },
        {
            "_id": "x2",
            "status": 0,
            "queue": "q9",
            "priority": 9,
            "at": now - dt.timedelta(seconds=99),
            "seq": 0,
        },
        {
            "_id": "x3",
            "status": 0,
            "queue": "q1",
            "priority": 9,
            "at": now + dt.timedelta(seconds=99),
            "seq": 0,
        },
    ]
    coll.insert_many(base)
    order = []
    first: Doc | None = None
    while True:
        doc = coll.find_one_and_update(
            claim_filter(now),
            {"$set": {"status": 2, "owner": "w1"}, "$inc": {"attempts": 1}},
            sort=CLAIM_SORT,
            return_document=ReturnDocument.AFTER,
        )
        if doc is None:
            break
        first = first or doc
        order.append(doc["_id"])
        if len(order) > 20:
            break
    r.expect(
        "claim order (priority desc, at asc, seq asc) + filter", order, ["d", "c", "b", "e", "a"]
    )
    if first is not None:
        r.expect(
            "returned document is the post-image (AFTER)",
            (first.get("status"), first.get("owner"), first.get("attempts")),
            (2, "w1", 1),
        )
    before = coll.find_one_and_update(
        {"_id": "a"},
        {"$set": {"status": 7}, "$inc": {"attempts": 1}},
        return_document=ReturnDocument.BEFORE,
    )
    r.expect("return_document=BEFORE gives the pre-image", (before or {}).get("status"), 2)
    proj = coll.find_one_and_update(
        {"_id": "a"},
        {"$inc": {"attempts": 1}},
        projection={"attempts": 1, "_id": 0},
        return_document=ReturnDocument.AFTER,
    )
    r.expect("projection on find_one_and_update", proj, {"attempts": 3})
    r.expect(
        "no match returns None",
        coll.find_one_and_update({"_id": "nope"}, {"$set": {"z": 1}}),
        None,
    )
    # float timestamps instead of datetimes for `at`
    fcoll = ctx.coll("fam_float")
    t0 = time.time()
    fcoll.insert_many(
        [
            {"_id": f"f{i}", "status": 0, "queue": "q1", "priority": p, "at": t0 - a, "seq": i}
            for i, (p, a) in enumerate([(1, 5.0), (2, 1.0), (2, 3.0), (0, 0.5), (2, -100.0)])
        ]
    )
    forder = []
    while (
        doc := fcoll.find_one_and_update(
            {"status": {"$in": [0, 1]}, "queue": {"$in": ["q1"]}, "at": {"$lte": t0}},
            {"$set": {"status": 2}},
            sort=CLAIM_SORT,
        )
    ) is not None and len(forder) < 10:
        forder.append(doc["_id"])
    r.expect("same claim with float epoch `at` (string _ids)", forder, ["f2", "f1", "f0", "f3"])
    # integer _ids: on a filter nx cannot translate to SQL ($in), it picks the
    # right document but then updates the document whose SQLite rowid equals
    # the picked _id.
    icoll = ctx.coll("fam_intid")
    icoll.insert_many([{"_id": i, "k": i} for i in [5, 1, 3, 2, 4]])
    picked = icoll.find_one_and_update({"k": {"$in": [2]}}, {"$set": {"hit": 1}})
    hit = sorted(d["_id"] for d in icoll.find({"hit": 1}))
    r.expect(
        "integer _id + $in filter: the returned doc is the updated doc",
        ((picked or {}).get("_id"), hit),
        (2, [2]),
        "returned _id / _ids actually modified",
    )
    # find_one_and_update that would violate a unique index
    ucoll = ctx.coll("fam_unique")
    ucoll.create_index("token", unique=True)
    ucoll.insert_many([{"_id": 1, "token": "t1"}, {"_id": 2, "token": "t2"}])
    _, exc = _call(lambda: ucoll.find_one_and_update({"_id": 2}, {"$set": {"token": "t1"}}))
    if isinstance(exc, DuplicateKeyError):
        r.ok("find_one_and_update violating a unique index raises DuplicateKeyError")
    else:
        r.differs(
            "find_one_and_update violating a unique index raises DuplicateKeyError",
            f"{_exc(exc)}; the error is swallowed: findAndModify answers ok:1 value:null, "
            f"doc 2 is now {ucoll.find_one({'_id': 2})}",
        )
    # find_one_and_update with an unsupported/failed update must raise
    _, exc = _call(lambda: ucoll.find_one_and_update({"_id": 1}, {"$bogus": {"a": 1}}))
    if isinstance(exc, OperationFailure):
        r.ok("find_one_and_update with an invalid update operator raises OperationFailure")
    else:
        r.differs(
            "find_one_and_update with an invalid update operator raises OperationFailure",
            f"{_exc(exc)} (every server-side failure in findAndModify becomes value:null)",
        )
    # find_one_and_delete with sort
    dcoll = ctx.coll("fad")
    dcoll.insert_many([{"_id": i, "p": i % 3} for i in range(6)])
    gone = dcoll.find_one_and_delete({"p": {"$gte": 1}}, sort=[("p", -1), ("_id", -1)])
    r.expect("find_one_and_delete with sort", (gone or {}).get("_id"), 5)


@check(f"find_one_and_update atomicity: {N_PROCS} processes claiming {N_CLAIM_DOCS} docs")
def check_fam_concurrency(ctx: Ctx) -> None:
    r = ctx.report
    coll = ctx.coll("claim_race")
    now = now_utc()
    _seed_claim_docs(coll, N_CLAIM_DOCS, now - dt.timedelta(seconds=1))
    coll.create_index([("status", 1), ("queue", 1), ("priority", -1), ("at", 1), ("seq", 1)])
    started = time.monotonic()
    results = run_procs(
        _claim_worker,
        lambda i, barrier, out: (ctx.uri, ctx.db.name, coll.name, i, barrier, out),
    )
    elapsed = time.monotonic() - started
    all_ids = [doc_id for _, claimed, _, _ in results for doc_id in claimed]
    dupes = [doc_id for doc_id, n in Counter(all_ids).items() if n > 1]
    errors = [e for _, _, errs, _ in results for e in errs]
    per_worker = sorted(len(claimed) for _, claimed, _, _ in results)
    in_db_claimed = coll.count_documents({"status": 2})
    multi = coll.count_documents({"claims": {"$gt": 1}})
    detail = (
        f"{len(all_ids)} claims returned, {len(set(all_ids))} distinct, {len(dupes)} claimed twice, "
        f"docs with claims>1: {multi}, status=2 in db: {in_db_claimed}, errors: {len(errors)}, "
        f"per worker {per_worker}, {len(all_ids) / max(elapsed, 1e-9):.0f} claims/s overall ({elapsed:.1f}s)"
    )
    if (
        not dupes
        and multi == 0
        and len(all_ids) == N_CLAIM_DOCS
        and in_db_claimed == N_CLAIM_DOCS
        and not errors
    ):
        r.ok("no document claimed twice, every document claimed once", detail)
    else:
        r.differs("no document claimed twice, every document claimed once", detail)
    if errors:
        r.info("errors seen by workers", _short("; ".join(errors[:3]), 300))
    ctx.perf["claims_per_s_8_procs"] = len(all_ids) / max(elapsed, 1e-9)


@check("update_one / update_many with a token filter: matched/modified counts")
def check_update_counts(ctx: Ctx) -> None:
    r = ctx.report
    coll = ctx.coll("upd")
    coll.insert_many([{"_id": i, "token": "T", "v": 0, "grp": "g"} for i in range(5)])
    res = coll.update_one({"_id": 1, "token": "T"}, {"$set": {"v": 1}})
    r.expect(
        "update_one right token: (matched, modified)",
        (res.matched_count, res.modified_count),
        (1, 1),
    )
    res = coll.update_one({"_id": 1, "token": "WRONG"}, {"$set": {"v": 2}})
    r.expect(
        "update_one wrong token: (matched, modified)",
        (res.matched_count, res.modified_count),
        (0, 0),
    )
    res = coll.update_one({"_id": 1, "token": "T"}, {"$set": {"v": 1}})
    r.expect(
        "update_one that changes nothing: (matched, modified)",
        (res.matched_count, res.modified_count),
        (1, 0),
        "MongoDB reports nModified 0 for a no-op $set",
    )
    res = coll.update_many({"grp": "g"}, {"$set": {"v": 1}})
    r.expect(
        "update_many where 1 of 5 already has the value: (matched, modified)",
        (res.matched_count, res.modified_count),
        (5, 4),
    )
    res = coll.update_many({"grp": "none"}, {"$set": {"v": 1}})
    r.expect(
        "update_many no match",
        (res.matched_count, res.modified_count, res.upserted_id),
        (0, 0, None),
    )
    res = coll.update_one({"_id": 99, "token": "T"}, {"$set": {"v": 5}}, upsert=True)
    r.expect(
        "update_one upsert: (matched, modified, upserted_id)",
        (res.matched_count, res.modified_count, res.upserted_id),
        (0, 0, 99),
    )
    r.expect(
        "upserted doc has filter equality fields",
        coll.find_one({"_id": 99}),
        {"_id": 99, "token": "T", "v": 5},
    )
    res = coll.replace_one({"_id": 2, "token": "T"}, {"token": "U", "v": 9})
    r.expect("replace_one counts", (res.matched_count, res.modified_count), (1, 1))
    r.expect(
        "replace_one keeps _id, drops other fields",
        coll.find_one({"_id": 2}),
        {"_id": 2, "token": "U", "v": 9},
    )
    _, exc = _call(lambda: coll.update_one({"_id": 3}, {"$set": {"_id": 33}}))
    if isinstance(exc, OperationFailure):
        r.ok("changing _id with $set is rejected", _exc(exc))
    else:
        r.differs(
            "changing _id with $set is rejected",
            f"{_exc(exc)}; doc now {coll.find_one({'_id': {'$in': [3, 33]}})}",
        )
    bulk = coll.bulk_write(
        [
            UpdateOne({"_id": 0}, {"$set": {"v": 10}}),
            UpdateOne({"_id": 100}, {"$set": {"v": 1}}, upsert=True),
        ],
        ordered=True,
    )
    r.expect(
        "bulk_write (matched, modified, upserted)",
        (bulk.matched_count, bulk.modified_count, bulk.upserted_count),
        (1, 1, 1),
    )


@check("insert errors: duplicate _id, insert_many ordered=False")
def check_insert_errors(ctx: Ctx) -> None:
    r = ctx.report
    coll = ctx.coll("ins")
    coll.insert_one({"_id": 1, "v": 1})
    exc = r.expect_raises(
        "insert_one duplicate _id", lambda: coll.insert_one({"_id": 1}), DuplicateKeyError
    )
    if isinstance(exc, DuplicateKeyError):
        r.expect("DuplicateKeyError.code", exc.code, 11000)
        details = exc.details or {}
        has_kv = "keyValue" in details and "keyPattern" in details
        if has_kv:
            r.ok("details carry keyPattern/keyValue", _short(details))
        else:
            r.differs(
                "details carry keyPattern/keyValue",
                f"details={_short(details)}; MongoDB: errmsg 'E11000 duplicate key error ...', keyPattern, keyValue",
            )
    # _id type distinctness
    _, exc = _call(lambda: coll.insert_one({"_id": "1"}))
    if exc is None:
        r.ok("_id 1 and _id '1' are distinct keys")
    else:
        r.differs(
            "_id 1 and _id '1' are distinct keys", f"inserting _id '1' next to _id 1: {_exc(exc)}"
        )
    coll.delete_many({})
    coll.insert_many([{"_id": 1}, {"_id": 3}])
    try:
        coll.insert_many([{"_id": i} for i in range(6)], ordered=False)
        r.differs("insert_many ordered=False with duplicates raises BulkWriteError", "no error")
    except BulkWriteError as bwe:
        d = bwe.details
        r.ok("insert_many ordered=False with duplicates raises BulkWriteError")
        r.expect("  nInserted", d.get("nInserted"), 4)
        r.expect(
            "  writeErrors indexes", [e.get("index") for e in d.get("writeErrors", [])], [1, 3]
        )
        r.expect(
            "  writeErrors codes", [e.get("code") for e in d.get("writeErrors", [])], [11000, 11000]
        )
        r.expect("  other docs inserted", sorted(x["_id"] for x in coll.find()), [0, 1, 2, 3, 4, 5])
        r.info("  details", _short(d, 300))
    coll.delete_many({})
    coll.insert_one({"_id": 2})
    try:
        coll.insert_many([{"_id": i} for i in range(5)], ordered=True)
    except BulkWriteError as bwe:
        r.expect(
            "insert_many ordered=True stops at first duplicate: nInserted",
            bwe.details.get("nInserted"),
            2,
        )
    r.expect(
        "  docs present after ordered failure", sorted(x["_id"] for x in coll.find()), [0, 1, 2]
    )
    oid = coll.insert_one({"x": 1}).inserted_id
    r.expect(
        "client-generated ObjectId _id round-trips",
        type(coll.find_one({"_id": oid}, {"_id": 1})["_id"]),
        ObjectId,
    )  # type: ignore[index]
    # integer _ids: nx stores _id as text and, on its Python fallback path
    # (filters it cannot translate to SQL, e.g. $in), mistakes an int _id for
    # the SQLite rowid of the document.
    icoll = ctx.coll("int_ids")

    def seed() -> None:
        icoll.delete_many({})
        icoll.insert_many([{"_id": i, "k": i} for i in [5, 1, 3, 2, 4, 10, 11]])

    seed()
    r.expect(
        "integer _id: sort by _id is numeric",
        [d["_id"] for d in icoll.find().sort("_id", 1)],
        [1, 2, 3, 4, 5, 10, 11],
    )
    r.expect(
        "integer _id: range {_id: {$lt: 3}}",
        sorted(d["_id"] for d in icoll.find({"_id": {"$lt": 3}})),
        [1, 2],
    )
    res = icoll.update_many({"k": {"$in": [1, 2]}}, {"$set": {"hit": 1}})
    r.expect(
        "integer _id: update_many({k: {$in: [1, 2]}}) modifies docs 1 and 2",
        sorted(d["_id"] for d in icoll.find({"hit": 1})),
        [1, 2],
        f"reported matched={res.matched_count}",
    )
    seed()
    icoll.delete_many({"k": {"$in": [1, 2]}})
    r.expect(
        "integer _id: delete_many({k: {$in: [1, 2]}}) deletes docs 1 and 2",
        sorted(d["_id"] for d in icoll.find()),
        [3, 4, 5, 10, 11],
    )
    scoll = ctx.coll("str_ids")
    scoll.insert_many([{"_id": f"s{i}", "k": i} for i in [5, 1, 3, 2, 4]])
    scoll.update_many({"k": {"$in": [1, 2]}}, {"$set": {"hit": 1}})
    scoll.delete_many({"k": {"$in": [4]}})
    r.expect(
        "string _id: same $in update_many/delete_many hit the right docs",
        (sorted(d["_id"] for d in scoll.find({"hit": 1})), sorted(d["_id"] for d in scoll.find())),
        (["s1", "s2"], ["s1", "s2", "s3", "s5"]),
    )


def _index_names(coll: Collection[Doc]) -> list[str]:
    return sorted(coll.index_information())


@check("indexes: unique, unique+sparse, $unset, compound, TTL, names/options")
def check_indexes(ctx: Ctx) -> None:
    r = ctx.report
    coll = ctx.coll("idx_u")
    name = coll.create_index("k", unique=True)
    coll.insert_one({"_id": 1, "k": "a"})
    r.expect_raises(
        "unique index rejects duplicate insert",
        lambda: coll.insert_one({"_id": 2, "k": "a"}),
        DuplicateKeyError,
    )
    coll.insert_one({"_id": 3, "k": "b"})
    r.expect_raises(
        "unique index rejects update_one creating a duplicate",
        lambda: coll.update_one({"_id": 3}, {"$set": {"k": "a"}}),
        DuplicateKeyError,
    )
    coll.insert_one({"_id": 4})
    _, exc = _call(lambda: coll.insert_one({"_id": 5}))
    if isinstance(exc, DuplicateKeyError):
        r.ok("non-sparse unique: two docs missing the field conflict (null)", _exc(exc))
    else:
        r.differs(
            "non-sparse unique: two docs missing the field conflict (null)",
            f"{_exc(exc)}; MongoDB indexes a missing field as null, so the 2nd doc without k is a duplicate",
        )
    r.expect("create_index returns the MongoDB default name", name, "k_1")
    names = _index_names(coll)
    if "k_1" in names:
        r.ok("index_information() uses the same name", _short(names))
    else:
        r.differs(
            "index_information() uses the same name",
            f"names on server: {names}; created as {name!r}",
        )
    _, exc = _call(lambda: coll.drop_index(name))
    if exc is None and "k_1" not in _index_names(coll) and len(_index_names(coll)) == 1:
        r.ok("drop_index(name returned by create_index)")
    else:
        r.differs(
            "drop_index(name returned by create_index)",
            f"{_exc(exc)}; indexes now {_index_names(coll)}",
        )

    scoll = ctx.coll("idx_us")
    scoll.create_index("tok", unique=True, sparse=True)
    _, exc = _call(lambda: scoll.insert_many([{"_id": 1}, {"_id": 2}, {"_id": 3, "tok": "t"}]))
    r.expect("unique+sparse: docs missing the field do not conflict", _exc(exc), "no error")
    r.expect_raises(
        "unique+sparse: duplicate present value conflicts",
        lambda: scoll.insert_one({"_id": 4, "tok": "t"}),
        DuplicateKeyError,
    )
    _, exc = _call(lambda: scoll.insert_many([{"_id": 5, "tok": None}, {"_id": 6, "tok": None}]))
    if isinstance(exc, BulkWriteError | DuplicateKeyError):
        r.ok("unique+sparse: two explicit nulls conflict (sparse skips only missing fields)")
    else:
        r.differs(
            "unique+sparse: two explicit nulls conflict (sparse skips only missing fields)",
            f"{_exc(exc)}; on MongoDB a sparse index includes tok:null",
        )
    scoll.update_one({"_id": 3}, {"$unset": {"tok": ""}})
    _, exc = _call(lambda: scoll.insert_one({"_id": 7, "tok": "t"}))
    r.expect("$unset the field, then re-insert the value elsewhere", _exc(exc), "no error")
    r.expect("$unset removed the field", scoll.find_one({"_id": 3}), {"_id": 3})
    pcoll = ctx.coll("idx_pfe")
    pcoll.create_index("tok", unique=True, partialFilterExpression={"tok": {"$type": "string"}})
    _, exc = _call(
        lambda: pcoll.insert_many(
            [{"_id": 1, "tok": None}, {"_id": 2, "tok": None}, {"_id": 3}, {"_id": 4}]
        )
    )
    if exc is None:
        r.ok("unique partialFilterExpression {$type: string}: nulls/missing do not conflict")
    else:
        r.differs(
            "unique partialFilterExpression {$type: string}: nulls/missing do not conflict",
            _exc(exc),
        )
    _, exc = _call(lambda: pcoll.insert_many([{"_id": 5, "tok": "x"}, {"_id": 6, "tok": "x"}]))
    if isinstance(exc, BulkWriteError):
        r.ok("unique partialFilterExpression: duplicate strings conflict")
    else:
        r.differs("unique partialFilterExpression: duplicate strings conflict", _exc(exc))
    info = pcoll.index_information()
    has_pfe = any("partialFilterExpression" in v for v in info.values())
    r.expect("partialFilterExpression kept in index_information", has_pfe, True)

    ccoll = ctx.coll("idx_c")
    cname = ccoll.create_index([("queue", 1), ("key", 1)], unique=True)
    ccoll.insert_many([{"_id": 1, "queue": "a", "key": 1}, {"_id": 2, "queue": "b", "key": 1}])
    r.expect_raises(
        "compound unique (queue,key) rejects same pair",
        lambda: ccoll.insert_one({"_id": 3, "queue": "a", "key": 1}),
        DuplicateKeyError,
    )
    r.expect("compound index name", cname, "queue_1_key_1")
    info = ccoll.index_information()
    keys = [v.get("key") for v in info.values()]
    r.expect("compound index key listed", [("queue", 1), ("key", 1)] in keys, True, _short(info))
    dname = ccoll.create_index([("queue", 1), ("at", -1)])
    r.info("descending compound index created", dname)
    _, exc = _call(lambda: ccoll.create_index([("queue", 1), ("key", 1)], unique=True))
    r.expect("re-creating an identical index is a no-op", _exc(exc), "no error")
    _, exc = _call(lambda: ccoll.create_index([("queue", 1), ("key", 1)], unique=False))
    if isinstance(exc, OperationFailure):
        r.ok(
            "same keys, different options -> IndexKeySpecsConflict/IndexOptionsConflict", _exc(exc)
        )
    else:
        r.differs(
            "same keys, different options -> IndexKeySpecsConflict/IndexOptionsConflict",
            f"{_exc(exc)}; indexes now {_short(ccoll.index_information())}",
        )

    tcoll = ctx.coll("idx_ttl")
    _, exc = _call(lambda: tcoll.create_index("expireAt", expireAfterSeconds=0))
    r.expect("TTL index creation (expireAfterSeconds=0) accepted", _exc(exc), "no error")
    info = tcoll.index_information()
    r.expect(
        "TTL option visible in index_information",
        any(v.get("expireAfterSeconds") == 0 for v in info.values()),
        True,
        _short(info),
    )
    past = now_utc() - dt.timedelta(seconds=5)
    tcoll.insert_many(
        [
            {"_id": "old", "expireAt": past},
            {"_id": "new", "expireAt": now_utc() + dt.timedelta(hours=1)},
            {"_id": "none"},
            {"_id": "str", "expireAt": "2000-01-01"},
            {"_id": "float", "expireAt": time.time() - 3600},
        ]
    )
    # Raw read first (an aggregate with $match on _id is a read too).
    seen_once = sorted(d["_id"] for d in tcoll.find({}, {"_id": 1}))
    time.sleep(0.2)
    seen_twice = sorted(d["_id"] for d in tcoll.find({}, {"_id": 1}))
    r.info(
        "TTL: documents visible right after insert (find #1, find #2)",
        f"{seen_once} / {seen_twice}",
    )
    if "old" not in seen_once:
        r.differs(
            "TTL expiry timing",
            "expired docs disappear on the next read of the collection (purge runs inside "
            "find/find_one/count_documents/aggregate/distinct); MongoDB's TTL monitor deletes them "
            "in the background within ~60s, so they may still be visible for a while",
        )
    if "float" not in seen_once:
        r.differs(
            "TTL on a non-date value",
            "a float epoch in the TTL field also expires; MongoDB ignores non-date values",
        )
    else:
        r.ok("TTL on a non-date value", "float epoch is not expired (as on MongoDB)")


@check("$setOnInsert with upsert, and concurrent upserts of the same key")
def check_upsert(ctx: Ctx) -> None:
    r = ctx.report
    coll = ctx.coll("ups")
    t1 = now_utc().replace(microsecond=0)
    res = coll.update_one(
        {"key": "k1"}, {"$setOnInsert": {"created": t1, "n": 0}, "$set": {"seen": 1}}, upsert=True
    )
    r.expect("first upsert inserts (upserted_id set)", res.upserted_id is not None, True)
    res2 = coll.update_one(
        {"key": "k1"},
        {"$setOnInsert": {"created": t1 + dt.timedelta(days=1), "n": 5}, "$set": {"seen": 2}},
        upsert=True,
    )
    doc = coll.find_one({"key": "k1"}, {"_id": 0})
    r.expect(
        "second upsert: matched, $setOnInsert ignored",
        (res2.matched_count, res2.upserted_id, doc),
        (1, None, {"key": "k1", "created": t1.replace(tzinfo=None), "n": 0, "seen": 2}),
    )
    fdoc = coll.find_one_and_update(
        {"key": "k2", "queue": "q"},
        {"$setOnInsert": {"n": 1}},
        upsert=True,
        return_document=ReturnDocument.AFTER,
        projection={"_id": 0},
    )
    r.expect(
        "find_one_and_update upsert AFTER returns the new doc",
        fdoc,
        {"key": "k2", "queue": "q", "n": 1},
    )
    fdoc = coll.find_one_and_update({"key": "k3"}, {"$setOnInsert": {"n": 1}}, upsert=True)
    r.expect("find_one_and_update upsert BEFORE returns None", fdoc, None)
    odoc = coll.find_one_and_update(
        {"key": "k4", "n": {"$gt": 5}},
        {"$set": {"m": 1}},
        upsert=True,
        return_document=ReturnDocument.AFTER,
        projection={"_id": 0},
    )
    r.expect("upsert copies only equality fields from the filter", odoc, {"key": "k4", "m": 1})

    for label, unique, use_fam in [
        ("no unique index, update_one", False, False),
        ("unique index on key, update_one", True, False),
        ("unique index on key, find_one_and_update", True, True),
    ]:
        ucoll = ctx.coll(f"ups_race_{int(unique)}_{int(use_fam)}")
        if unique:
            ucoll.create_index("key", unique=True)
        results = run_procs(
            _upsert_worker,
            lambda i, barrier, out, ucoll=ucoll, use_fam=use_fam: (
                ctx.uri,
                ctx.db.name,
                ucoll.name,
                i,
                barrier,
                out,
                use_fam,
            ),
        )
        errors = [e for _, errs in results for e in errs]
        per_key = Counter(d["key"] for d in ucoll.find({}, {"key": 1}))
        dup_keys = sum(1 for n in per_key.values() if n > 1)
        hits = sum(d.get("hits", 0) for d in ucoll.find({}, {"hits": 1}))
        detail = (
            f"{N_PROCS} procs x {N_UPSERT_KEYS} keys: {len(per_key)} keys, {dup_keys} keys with >1 doc, "
            f"hits total {hits}/{N_PROCS * N_UPSERT_KEYS}, errors {len(errors)}"
            + (f" e.g. {errors[0]}" if errors else "")
        )
        good = dup_keys == 0 and hits == N_PROCS * N_UPSERT_KEYS and not errors
        if good:
            r.ok(f"concurrent upserts ({label}) create one doc per key", detail)
        else:
            r.differs(f"concurrent upserts ({label}) create one doc per key", detail)
        if not unique and good:
            r.info(
                "  note",
                "nx-27017 serializes all operations per database, so it never races; MongoDB CAN create "
                "duplicate docs for concurrent upserts without a unique index on the filter key",
            )


ITEM1 = {"id": 1, "state": "a", "n": 1}
ITEM2 = {"id": 2, "state": "a", "n": 1}
ITEM3 = {"id": 3, "state": "b", "n": 1}


@check("update operators: $push/$each/$slice, positional, $min/$max, $inc, ...")
def check_update_ops(ctx: Ctx) -> None:
    # Projections here are top-level only: dotted projections are checked in
    # check_reads and differ on nx-27017, which would confound these checks.
    r = ctx.report
    coll = ctx.coll("ops")
    t1 = dt.datetime(2024, 1, 1, 12, 0, 0)
    t2 = dt.datetime(2024, 6, 1, 12, 0, 0)

    def fresh() -> None:
        coll.delete_many({})
        coll.insert_one(
            {
                "_id": 1,
                "log": [],
                "items": [ITEM1, ITEM2, ITEM3],
                "tags": ["x", "y"],
                "lo": 5,
                "hi": 5,
                "first": t2,
                "last": t1,
                "cnt": 1,
                "nested": {"a": {"b": 1}},
            }
        )

    def run(aspect: str, filt: Doc, update: Doc, projection: Doc, expected: Any, **kw: Any) -> None:
        fresh()
        res, exc = _call(lambda: coll.update_one(filt, update, **kw))
        if exc is not None:
            r.differs(aspect, _exc(exc))
            return
        got = coll.find_one({"_id": 1}, projection)
        if got is not None:
            got.pop("_id", None)
        mc = (res.matched_count, res.modified_count)
        if got == expected and mc == (1, 1):
            r.ok(aspect)
        else:
            r.differs(
                aspect,
                f"got {_short(got)} (matched,modified)={mc}, MongoDB gives {_short(expected)} (1, 1)",
            )

    run("$push", {"_id": 1}, {"$push": {"log": "e1"}}, {"log": 1}, {"log": ["e1"]})
    run(
        "$push $each",
        {"_id": 1},
        {"$push": {"log": {"$each": ["e1", "e2", "e3"]}}},
        {"log": 1},
        {"log": ["e1", "e2", "e3"]},
    )
    run(
        "$push $each $slice -2",
        {"_id": 1},
        {"$push": {"log": {"$each": ["e1", "e2", "e3"], "$slice": -2}}},
        {"log": 1},
        {"log": ["e2", "e3"]},
    )
    run(
        "$push to a missing field creates the array",
        {"_id": 1},
        {"$push": {"newarr": 1}},
        {"newarr": 1},
        {"newarr": [1]},
    )
    run(
        "$addToSet $each",
        {"_id": 1},
        {"$addToSet": {"tags": {"$each": ["y", "z"]}}},
        {"tags": 1},
        {"tags": ["x", "y", "z"]},
    )
    run(
        "$pull by condition",
        {"_id": 1},
        {"$pull": {"items": {"state": "a"}}},
        {"items": 1},
        {"items": [ITEM3]},
    )
    run(
        "positional $ (filter on items.id)",
        {"_id": 1, "items.id": 2},
        {"$set": {"items.$.state": "z"}},
        {"items": 1},
        {"items": [ITEM1, {**ITEM2, "state": "z"}, ITEM3]},
    )
    run(
        "positional $ with $inc",
        {"_id": 1, "items.id": 3},
        {"$inc": {"items.$.n": 5}},
        {"items": 1},
        {"items": [ITEM1, ITEM2, {**ITEM3, "n": 6}]},
    )
    run(
        "all-positional $[]",
        {"_id": 1},
        {"$inc": {"items.$[].n": 1}},
        {"items": 1},
        {"items": [{**ITEM1, "n": 2}, {**ITEM2, "n": 2}, {**ITEM3, "n": 2}]},
    )
    run(
        "filtered positional $[e] + arrayFilters",
        {"_id": 1},
        {"$set": {"items.$[e].state": "done"}},
        {"items": 1},
        {"items": [{**ITEM1, "state": "done"}, {**ITEM2, "state": "done"}, ITEM3]},
        array_filters=[{"e.state": "a"}],
    )
    run(
        "positional $ with an $elemMatch filter",
        {"_id": 1, "items": {"$elemMatch": {"id": 2, "state": "a"}}},
        {"$set": {"items.$.state": "z"}},
        {"items": 1},
        {"items": [ITEM1, {**ITEM2, "state": "z"}, ITEM3]},
    )
    run("$min (lower wins)", {"_id": 1}, {"$min": {"lo": 3}}, {"lo": 1}, {"lo": 3})
    run("$max (higher wins)", {"_id": 1}, {"$max": {"hi": 9}}, {"hi": 1}, {"hi": 9})
    run("$min on dates", {"_id": 1}, {"$min": {"first": t1}}, {"first": 1}, {"first": t1})
    run("$max on dates", {"_id": 1}, {"$max": {"last": t2}}, {"last": 1}, {"last": t2})
    run("$min on a missing field sets it", {"_id": 1}, {"$min": {"nf": 4}}, {"nf": 1}, {"nf": 4})
    run("$inc existing", {"_id": 1}, {"$inc": {"cnt": 2}}, {"cnt": 1}, {"cnt": 3})
    run("$inc missing field", {"_id": 1}, {"$inc": {"newcnt": 1}}, {"newcnt": 1}, {"newcnt": 1})
    run("$inc negative", {"_id": 1}, {"$inc": {"cnt": -3}}, {"cnt": 1}, {"cnt": -2})
    run("$inc by float", {"_id": 1}, {"$inc": {"cnt": 0.5}}, {"cnt": 1}, {"cnt": 1.5})
    run(
        "$set dotted path",
        {"_id": 1},
        {"$set": {"nested.a.c": 2}},
        {"nested": 1},
        {"nested": {"a": {"b": 1, "c": 2}}},
    )
    run(
        "$unset dotted path",
        {"_id": 1},
        {"$unset": {"nested.a.b": ""}},
        {"nested": 1},
        {"nested": {"a": {}}},
    )
    run("$rename", {"_id": 1}, {"$rename": {"cnt": "count"}}, {"cnt": 1, "count": 1}, {"count": 1})
    run("$mul", {"_id": 1}, {"$mul": {"lo": 3}}, {"lo": 1}, {"lo": 15})
    fresh()
    before = now_utc() - dt.timedelta(seconds=1)
    coll.update_one({"_id": 1}, {"$currentDate": {"touched": True}})
    touched = (coll.find_one({"_id": 1}) or {}).get("touched")
    ok = isinstance(touched, dt.datetime) and touched.replace(tzinfo=UTC) >= before
    (r.ok if ok else r.differs)("$currentDate sets a server datetime", _short(touched))
    fresh()
    _, exc = _call(lambda: coll.update_one({"_id": 1}, {"$inc": {"tags": 1}}))
    if isinstance(exc, OperationFailure):
        r.ok("$inc on a non-number is rejected", _exc(exc))
    else:
        r.differs(
            "$inc on a non-number is rejected",
            f"{_exc(exc)}; doc tags now {(coll.find_one({'_id': 1}) or {}).get('tags')}",
        )
    _, exc = _call(lambda: coll.update_one({"_id": 1}, {"$set": {"lo": 1}, "$inc": {"lo": 1}}))
    if isinstance(exc, OperationFailure):
        r.ok("conflicting operators on one path are rejected", _exc(exc))
    else:
        r.differs(
            "conflicting operators on one path are rejected",
            f"{_exc(exc)}; lo now {(coll.find_one({'_id': 1}) or {}).get('lo')}",
        )


@check("queries: operators and type semantics used by a store")
def check_queries(ctx: Ctx) -> None:
    r = ctx.report
    coll = ctx.coll("q")
    coll.insert_many(
        [
            {"_id": 1, "s": "a", "n": 1, "b": True, "tags": ["x", "y"], "sub": {"k": 1}, "z": None},
            {"_id": 2, "s": "b", "n": 2.5, "b": False, "tags": ["y"], "sub": {"k": 2}},
            {"_id": 3, "s": "c", "n": 3, "tags": [], "arr": [{"a": 1, "b": 2}, {"a": 2, "b": 1}]},
            {"_id": 4, "s": "10", "n": "3"},
            {"_id": 5, "n": Int64(2**40)},
        ]
    )

    def ids(f: Doc) -> list[Any]:
        return sorted(d["_id"] for d in coll.find(f, {"_id": 1}))

    cases: list[tuple[str, Doc, list[int]]] = [
        ("equality on string", {"s": "a"}, [1]),
        ("$in", {"s": {"$in": ["a", "c"]}}, [1, 3]),
        ("$nin (includes docs missing the field)", {"s": {"$nin": ["a"]}}, [2, 3, 4, 5]),
        ("$ne (includes docs missing the field)", {"s": {"$ne": "a"}}, [2, 3, 4, 5]),
        ("$exists true", {"b": {"$exists": True}}, [1, 2]),
        ("$exists false", {"b": {"$exists": False}}, [3, 4, 5]),
        ("{z: null} matches null and missing", {"z": None}, [1, 2, 3, 4, 5]),
        ("$gt numeric does not match strings", {"n": {"$gt": 2}}, [2, 3, 5]),
        ("int 1 == float 1.0", {"n": 1.0}, [1]),
        ("{b: 1} does not match true", {"b": 1}, []),
        ("{b: true}", {"b": True}, [1]),
        ("{b: 0} does not match false", {"b": 0}, []),
        ("{n: '3'} (string) does not match 3", {"n": "3"}, [4]),
        ("array contains", {"tags": "y"}, [1, 2]),
        ("array $size 0", {"tags": {"$size": 0}}, [3]),
        ("dotted subfield", {"sub.k": 2}, [2]),
        ("$elemMatch", {"arr": {"$elemMatch": {"a": 1, "b": 2}}}, [3]),
        ("dotted on array of docs (any element)", {"arr.a": 2}, [3]),
        ("$or", {"$or": [{"s": "a"}, {"n": 3}]}, [1, 3]),
        ("$and with two ranges", {"$and": [{"n": {"$gte": 1}}, {"n": {"$lt": 3}}]}, [1, 2]),
        ("Int64 2**40", {"n": 2**40}, [5]),
        ("$type string", {"n": {"$type": "string"}}, [4]),
        ("$regex prefix", {"s": {"$regex": "^1"}}, [4]),
        ("$not $in", {"s": {"$not": {"$in": ["a", "b"]}}}, [3, 4, 5]),
    ]
    for aspect, f, expected in cases:
        got, exc = _call(lambda f=f: ids(f))
        if exc is not None:
            r.differs(aspect, f"{_short(f)} -> {_exc(exc)}")
        else:
            r.expect(aspect, got, expected, f"{_short(f)}")
    got, exc = _call(
        lambda: [
            d["_id"]
            for d in coll.find({"_id": {"$in": [1, 2, 3]}})
            .sort("missing", 1)
            .sort([("z", 1), ("_id", -1)])
        ]
    )
    r.expect("sort puts null/missing first ascending", got, [3, 2, 1], _exc(exc) if exc else "")
    got, exc = _call(lambda: [d["_id"] for d in coll.find({}).sort("n", 1)])
    r.expect(
        "sort across types (numbers before strings)", got, [1, 2, 3, 5, 4], _exc(exc) if exc else ""
    )


@check("reads: aggregate, count_documents, distinct, find sort/limit/skip/projection")
def check_reads(ctx: Ctx) -> None:
    r = ctx.report
    coll = ctx.coll("agg")
    coll.insert_many(
        [
            {"_id": i, "queue": f"q{i % 3}", "status": i % 4, "w": i, "meta": {"a": i, "b": -i}}
            for i in range(30)
        ]
    )
    pipe: list[Doc] = [
        {"$match": {"status": {"$in": [0, 1]}}},
        {"$group": {"_id": "$queue", "n": {"$sum": 1}, "w": {"$sum": "$w"}, "mx": {"$max": "$w"}}},
        {"$sort": {"_id": 1}},
    ]
    expected = []
    for q in ["q0", "q1", "q2"]:
        rows = [i for i in range(30) if f"q{i % 3}" == q and i % 4 in (0, 1)]
        expected.append({"_id": q, "n": len(rows), "w": sum(rows), "mx": max(rows)})
    got, exc = _call(lambda: list(coll.aggregate(pipe)))
    r.expect("$match/$group($sum,$max)/$sort", got, expected, _exc(exc) if exc else "")
    got, exc = _call(lambda: list(coll.aggregate([{"$match": {"status": 3}}, {"$count": "n"}])))
    r.expect("$count", got, [{"n": 7}], _exc(exc) if exc else "")
    got, exc = _call(lambda: list(coll.aggregate([{"$match": {"status": 99}}, {"$count": "n"}])))
    r.expect("$count on empty input", got, [], _exc(exc) if exc else "")
    got, exc = _call(lambda: list(coll.aggregate([{"$group": {"_id": None, "n": {"$sum": 1}}}])))
    r.expect("$group _id null", got, [{"_id": None, "n": 30}], _exc(exc) if exc else "")
    got, exc = _call(
        lambda: list(
            coll.aggregate(
                [
                    {"$group": {"_id": {"q": "$queue", "s": "$status"}, "n": {"$sum": 1}}},
                    {"$sort": {"_id.q": 1, "_id.s": 1}},
                    {"$limit": 2},
                ]
            )
        )
    )
    r.expect(
        "$group by compound key + $sort on _id.x + $limit",
        got,
        [{"_id": {"q": "q0", "s": 0}, "n": 3}, {"_id": {"q": "q0", "s": 1}, "n": 2}],
        _exc(exc) if exc else "",
    )
    got, exc = _call(
        lambda: list(
            coll.aggregate(
                [
                    {"$match": {"w": {"$lt": 3}}},
                    {"$project": {"_id": 0, "x": "$meta.a"}},
                    {"$sort": {"x": -1}},
                ]
            )
        )
    )
    r.expect(
        "$project with field path", got, [{"x": 2}, {"x": 1}, {"x": 0}], _exc(exc) if exc else ""
    )
    r.expect("count_documents(filter)", coll.count_documents({"queue": "q1"}), 10)
    r.expect("count_documents(skip, limit)", coll.count_documents({}, skip=25, limit=10), 5)
    r.expect("count_documents on missing collection", ctx.db.nothing_here.count_documents({}), 0)
    r.expect("estimated_document_count", coll.estimated_document_count(), 30)
    r.expect("distinct", sorted(coll.distinct("queue")), ["q0", "q1", "q2"])
    r.expect("distinct with filter", sorted(coll.distinct("status", {"queue": "q0"})), [0, 1, 2, 3])
    got = [
        d["_id"]
        for d in coll.find({"queue": "q1"}).sort([("status", 1), ("w", -1)]).skip(2).limit(3)
    ]
    exp = [d for d in sorted((i for i in range(30) if i % 3 == 1), key=lambda i: (i % 4, -i))][2:5]
    r.expect("find sort(2 keys)+skip+limit", got, exp)
    got = list(coll.find({"_id": 5}, {"meta.a": 1, "_id": 0}))
    r.expect("inclusion projection on a dotted path", got, [{"meta": {"a": 5}}])
    got = list(coll.find({"_id": 5}, {"meta": 0, "w": 0}))
    r.expect("exclusion projection", got, [{"_id": 5, "queue": "q2", "status": 1}])
    got = list(coll.find({"_id": 5}, {"queue": 1}))
    r.expect("inclusion projection keeps _id", got, [{"_id": 5, "queue": "q2"}])
    got = [d["_id"] for d in coll.find({}, {"_id": 1}).sort("w", 1).limit(-3)]
    r.expect("negative limit", got, [0, 1, 2])
    big = ctx.coll("agg_big")
    big.insert_many([{"_id": i} for i in range(1500)])
    got_n = sum(1 for _ in big.find({}, batch_size=100))
    r.expect("cursor iteration across getMore batches", got_n, 1500)
    r.expect("find_one on missing doc", coll.find_one({"_id": -1}), None)
    res = coll.delete_many({"status": 0})
    r.expect("delete_many(filter).deleted_count", res.deleted_count, 8)
    r.expect("delete_one(filter).deleted_count", coll.delete_one({"queue": "q1"}).deleted_count, 1)
    r.expect("documents left", coll.count_documents({}), 21)


class _Counter(CommandListener):
    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.last: dict[str, Doc] = {}

    def started(self, event: CommandStartedEvent) -> None:
        self.counts[event.command_name] += 1
        self.last[event.command_name] = dict(event.command)

    def succeeded(self, event: Any) -> None:
        pass

    def failed(self, event: Any) -> None:
        pass


@check("write concern, hello/isMaster, serverStatus, buildInfo")
def check_server_info(ctx: Ctx) -> None:
    r = ctx.report
    coll = ctx.coll("wc")
    wc = coll.with_options(write_concern=WriteConcern(w="majority", j=True))
    _, exc = _call(lambda: wc.insert_one({"_id": 1}))
    r.expect(
        "insert with w='majority', j=True accepted",
        _exc(exc),
        "no error",
        "MongoDB standalone accepts w:majority too",
    )
    _, exc = _call(lambda: wc.find_one_and_update({"_id": 1}, {"$set": {"a": 1}}))
    r.expect("find_one_and_update with w='majority', j=True", _exc(exc), "no error")
    _, exc = _call(
        lambda: coll.with_options(write_concern=WriteConcern(w=2, wtimeout=1000)).insert_one(
            {"_id": 2}
        )
    )
    if exc is None:
        r.differs(
            "w=2 on a single node fails",
            "accepted silently; a standalone mongod rejects w>1, a 1-member replica set times out",
        )
    else:
        r.ok("w=2 on a single node fails", _exc(exc))
    hello = ctx.client.admin.command("hello")
    ismaster = ctx.client.admin.command("isMaster")
    r.info("hello", _short({k: v for k, v in hello.items() if k != "localTime"}, 400))
    r.info(
        "isMaster == hello (minus localTime)",
        str(
            {k: v for k, v in hello.items() if k != "localTime"}
            == {k: v for k, v in ismaster.items() if k != "localTime"}
        ),
    )
    r.info(
        "hello fields: setName / msg / helloOk / topologyVersion / readOnly",
        f"{'setName' in hello} / {'msg' in hello} / {'helloOk' in hello} / {'topologyVersion' in hello} / {'readOnly' in hello}",
    )
    r.info("topology seen by pymongo", ctx.client.topology_description.topology_type_name)
    status, exc = _call(lambda: ctx.client.admin.command("serverStatus"))
    if exc is None:
        r.info(
            "serverStatus",
            _short(
                {
                    k: status.get(k)
                    for k in (
                        "version",
                        "process",
                        "pid",
                        "uptime",
                        "connections",
                        "repl",
                        "storageEngine",
                    )
                },
                300,
            ),
        )
    else:
        r.differs("serverStatus", _exc(exc))
    bi, exc = _call(lambda: ctx.client.admin.command("buildInfo"))
    r.info(
        "buildInfo (camelCase)",
        _exc(exc)
        if exc
        else _short({k: bi.get(k) for k in ("version", "versionArray", "gitVersion")}),
    )
    si, exc = _call(lambda: ctx.client.server_info())
    if exc is None and isinstance(si, dict) and "version" in si:
        r.ok("client.server_info()['version']", str(si["version"]))
    else:
        r.differs(
            "client.server_info()['version']",
            f"{_exc(exc) if exc else _short(si)}; pymongo sends lowercase 'buildinfo', which nx does not "
            "route to its buildInfo handler",
        )
    r.expect("ping ok", float(ctx.client.admin.command("ping").get("ok", 0)), 1.0)
    _, exc = _call(lambda: ctx.client.admin.command("replSetGetStatus"))
    r.info("replSetGetStatus", _exc(exc))
    names, exc = _call(lambda: ctx.client.list_database_names())
    r.info("list_database_names()", _exc(exc) if exc else _short(names))
    _, exc = _call(lambda: ctx.client["bad.name"].c.insert_one({}))
    r.info("database name with a dot", _exc(exc))
    _, exc = _call(lambda: ctx.db.create_collection("wc"))
    r.info("create_collection on an existing name", _exc(exc))


@check("change streams: watch() with $match on operationType")
def check_change_streams(ctx: Ctx) -> None:
    r = ctx.report
    coll = ctx.coll("cs")
    coll.insert_one({"_id": "seed"})
    listener = _Counter()
    client: Client = ctx.new_client(event_listeners=[listener])
    wcoll = client[ctx.db.name][coll.name]
    pipeline = [{"$match": {"operationType": {"$in": ["insert", "update"]}}}]
    stream, exc = _call(lambda: wcoll.watch(pipeline, max_await_time_ms=500))
    if exc is not None:
        r.differs("collection.watch() opens", _exc(exc))
        return
    r.info(
        "collection.watch() opens",
        "MongoDB needs a replica set for change streams (a standalone rejects $changeStream)",
    )

    def wait_event(timeout: float = 5.0) -> tuple[Doc | None, float]:
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            ev = stream.try_next()
            if ev is not None:
                return ev, time.monotonic() - t0
        return None, time.monotonic() - t0

    t_ins = time.monotonic()
    coll.insert_one({"_id": "j1", "v": 1})
    ev, _ = wait_event()
    lat_ins = time.monotonic() - t_ins
    r.expect("insert event delivered", (ev or {}).get("operationType"), "insert")
    r.info("insert event latency", f"{lat_ins * 1000:.1f} ms")
    if ev is not None:
        r.expect("insert event documentKey", ev.get("documentKey"), {"_id": "j1"})
        r.expect("insert event fullDocument", ev.get("fullDocument"), {"_id": "j1", "v": 1})
        r.info("resume token (_id) of the insert event", _short(ev.get("_id")))
    coll.update_one({"_id": "j1"}, {"$set": {"v": 2}})
    ev_upd, _ = wait_event()
    r.expect("update event delivered", (ev_upd or {}).get("operationType"), "update")
    if ev_upd is not None:
        ud = ev_upd.get("updateDescription")
        if isinstance(ud, dict) and ud.get("updatedFields") == {"v": 2}:
            r.ok("update event updateDescription.updatedFields")
        else:
            r.differs(
                "update event updateDescription.updatedFields",
                f"got {_short(ud)}; MongoDB gives {{'updatedFields': {{'v': 2}}, 'removedFields': [], ...}}",
            )
        if "fullDocument" in ev_upd and ev_upd.get("fullDocument") is not None:
            r.differs(
                "update event has no fullDocument unless full_document='updateLookup'",
                f"fullDocument={_short(ev_upd.get('fullDocument'))} (nx always includes the post-image)",
            )
        else:
            r.ok("update event has no fullDocument unless full_document='updateLookup'")
    coll.delete_one({"_id": "j1"})
    coll.insert_one({"_id": "j2"})
    ev2, _ = wait_event()
    r.expect(
        "delete filtered out by $match; next event is the insert of j2",
        (ev2 or {}).get("documentKey"),
        {"_id": "j2"},
    )
    token = stream.resume_token
    coll.insert_one({"_id": "j3"})
    coll.update_one({"_id": "j3"}, {"$set": {"x": 1}})
    stream.close()
    resumed = wcoll.watch(pipeline, resume_after=token)
    evs = []
    t0 = time.monotonic()
    while len(evs) < 2 and time.monotonic() - t0 < 5:
        ev = resumed.try_next()
        if ev is not None:
            evs.append((ev["operationType"], ev["documentKey"]["_id"]))
    r.expect(
        "resume_after(token) replays events after the token",
        evs,
        [("insert", "j3"), ("update", "j3")],
    )
    resumed.close()
    # How the server answers an idle getMore: MongoDB blocks up to maxAwaitTimeMS.
    idle = wcoll.watch(pipeline, max_await_time_ms=500)
    before = listener.counts["getMore"]
    t0 = time.monotonic()
    while time.monotonic() - t0 < 1.0:
        idle.try_next()
    n_get_more = listener.counts["getMore"] - before
    idle.close()
    if n_get_more <= 4:
        r.ok("idle getMore waits maxAwaitTimeMS", f"{n_get_more} getMore in 1s")
    else:
        r.differs(
            "idle getMore waits maxAwaitTimeMS",
            f"{n_get_more} getMore in 1s: nx answers at once, so ChangeStream.next() busy-polls the server; "
            "MongoDB blocks each getMore up to maxAwaitTimeMS (here 500ms -> ~2)",
        )
    bogus = wcoll.watch([{"$match": {"operationType": "insert", "fullDocument.v": {"$gt": 5}}}])
    coll.insert_one({"_id": "j4", "v": 1})
    coll.insert_one({"_id": "j5", "v": 9})
    ev, _ = wait_event_on(bogus)
    r.expect("$match on fullDocument.v with $gt", (ev or {}).get("documentKey"), {"_id": "j5"})
    bogus.close()
    client.close()


def wait_event_on(stream: Any, timeout: float = 3.0) -> tuple[Doc | None, float]:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        ev = stream.try_next()
        if ev is not None:
            return ev, time.monotonic() - t0
    return None, time.monotonic() - t0


@check("sessions and transactions")
def check_transactions(ctx: Ctx) -> None:
    r = ctx.report
    coll = ctx.coll("tx")
    coll.insert_one({"_id": "base"})
    with ctx.client.start_session() as s:
        _, exc = _call(lambda: coll.find_one({"_id": "base"}, session=s))
        r.expect("explicit session (no transaction) usable", _exc(exc), "no error")
    with ctx.client.start_session() as s:
        _, exc = _call(
            lambda: s.with_transaction(lambda se: coll.insert_one({"_id": "t1"}, session=se))
        )
    if exc is not None:
        r.info("with_transaction", _exc(exc))
        return
    r.info(
        "with_transaction commits",
        f"t1 present: {coll.find_one({'_id': 't1'}) is not None}; a standalone mongod rejects transactions "
        "(IllegalOperation: 'Transaction numbers are only allowed on a replica set member or mongos')",
    )

    class Boom(Exception):
        pass

    def failing(se: Any) -> None:
        coll.insert_one({"_id": "t2"}, session=se)
        raise Boom

    with ctx.client.start_session() as s:
        _, exc = _call(lambda: s.with_transaction(failing))
    r.expect("exception in callback rolls back", coll.find_one({"_id": "t2"}), None, _exc(exc))
    other = ctx.new_client()
    ocoll = other[ctx.db.name][coll.name]
    with ctx.client.start_session() as s:
        s.start_transaction()
        coll.insert_one({"_id": "t3"}, session=s)
        seen = ocoll.find_one({"_id": "t3"})
        r.expect("uncommitted write invisible to other clients", seen, None)
        _, exc = _call(lambda: ocoll.insert_one({"_id": "outside"}))
        s.abort_transaction()
    r.expect("aborted write gone", coll.find_one({"_id": "t3"}), None)
    r.expect(
        "a non-transactional write by another client during the transaction survives abort",
        ocoll.find_one({"_id": "outside"}),
        {"_id": "outside"},
        _exc(exc) if exc else "",
    )
    other.close()


@check("BSON round trips: dates, floats, big ints, nesting, odd keys")
def check_types(ctx: Ctx) -> None:
    r = ctx.report
    coll = ctx.coll("types")
    aware = dt.datetime(2024, 3, 1, 12, 30, 45, 123456, tzinfo=UTC)
    plus2 = dt.datetime(2024, 3, 1, 14, 30, 45, 123000, tzinfo=dt.timezone(dt.timedelta(hours=2)))
    naive = dt.datetime(2024, 3, 1, 12, 30, 45, 999999)
    ts = 1709296245.123456
    doc = {
        "_id": 1,
        "aware": aware,
        "plus2": plus2,
        "naive": naive,
        "ts": ts,
        "tiny": 5e-324,
        "big": 2**62,
        "maxi": 2**63 - 1,
        "mini": -(2**63),
        "i64": Int64(7),
        "small": 7,
        "neg0": -0.0,
        "nested": {"a": [1, [2, 3], {"b": {"c": [None, True, "s"]}}], "e": {}, "l": []},
        "bin": Binary(b"\x00\x01\xff"),
        "oid": ObjectId("65e1c1c1c1c1c1c1c1c1c1c1"),
        "uni": "h\u00e9llo \u2603 \U0001f600",
        "iso_str": "2024-03-01T12:30:45",
        "num_str": "12",
        "boolean": False,
    }
    _, exc = _call(lambda: coll.insert_one(doc))
    if exc is not None:
        r.differs("insert a document with many BSON types", _exc(exc))
        return
    got = coll.find_one({"_id": 1}) or {}
    tz_client = ctx.new_client(tz_aware=True)
    got_tz = tz_client[ctx.db.name][coll.name].find_one({"_id": 1}) or {}
    tz_client.close()
    r.expect(
        "tz-aware UTC datetime -> naive UTC, ms precision",
        got.get("aware"),
        aware.replace(tzinfo=None, microsecond=123000),
    )
    r.expect(
        "tz_aware=True client gets UTC-aware datetime",
        got_tz.get("aware"),
        aware.replace(microsecond=123000),
    )
    r.expect(
        "+02:00 datetime stored as the UTC instant",
        got.get("plus2"),
        dt.datetime(2024, 3, 1, 12, 30, 45, 123000),
    )
    r.expect(
        "naive datetime (taken as UTC), truncated to ms",
        got.get("naive"),
        naive.replace(microsecond=999000),
    )
    r.expect("float timestamp exact", got.get("ts"), ts)
    r.expect("denormal float", got.get("tiny"), 5e-324)
    r.expect("2**62", got.get("big"), 2**62)
    r.expect("2**63-1", got.get("maxi"), 2**63 - 1)
    r.expect("-2**63", got.get("mini"), -(2**63))
    r.expect("Int64 comes back as Int64", type(got.get("i64")).__name__, "Int64")
    r.expect("small int comes back as int", type(got.get("small")).__name__, "int")
    r.expect("-0.0 keeps sign", str(got.get("neg0")), "-0.0")
    r.expect("nested dict/list", got.get("nested"), doc["nested"])
    r.expect("Binary", got.get("bin"), b"\x00\x01\xff")
    r.expect("ObjectId field", got.get("oid"), doc["oid"])
    r.expect("unicode", got.get("uni"), doc["uni"])
    r.expect("ISO-looking string stays a string", got.get("iso_str"), "2024-03-01T12:30:45")
    r.expect("numeric string stays a string", got.get("num_str"), "12")
    r.expect("False stays bool", got.get("boolean"), False)
    r.expect("field order preserved", list(got), list(doc))
    # date/number queries
    r.expect(
        "query datetime $lte",
        coll.count_documents({"aware": {"$lte": aware + dt.timedelta(seconds=1)}}),
        1,
    )
    r.expect(
        "query datetime $gt (ms boundary)",
        coll.count_documents({"aware": {"$gt": aware.replace(microsecond=122000)}}),
        1,
    )
    r.expect(
        "query datetime with a float does not match",
        coll.count_documents({"aware": {"$lte": 2e9}}),
        0,
    )
    r.expect("query float $lte", coll.count_documents({"ts": {"$lte": ts}}), 1)
    r.expect("query 2**62 exact", coll.count_documents({"big": 2**62}), 1)
    r.expect("query 2**62+1 (no float rounding)", coll.count_documents({"big": 2**62 + 1}), 0)
    r.expect("query Binary", coll.count_documents({"bin": Binary(b"\x00\x01\xff")}), 1)
    oid = doc["oid"]
    ocoll = ctx.coll("types_oid")
    ocoll.insert_many([{"_id": "ref", "oid": oid}, {"_id": oid, "ref": "x"}])
    for aspect, fn, expected in [
        ("ObjectId _id: find", lambda: len(list(ocoll.find({"_id": oid}))), 1),
        ("ObjectId _id: count_documents", lambda: ocoll.count_documents({"_id": oid}), 1),
        (
            "ObjectId _id: aggregate $match",
            lambda: len(list(ocoll.aggregate([{"$match": {"_id": oid}}]))),
            1,
        ),
        ("ObjectId _id: distinct with filter", lambda: ocoll.distinct("ref", {"_id": oid}), ["x"]),
        ("ObjectId field (not _id): find", lambda: len(list(ocoll.find({"oid": oid}))), 1),
        (
            "ObjectId field (not _id): count_documents",
            lambda: ocoll.count_documents({"oid": oid}),
            1,
        ),
    ]:
        got, exc = _call(fn)
        if exc is not None:
            r.differs(aspect, _exc(exc))
        else:
            r.expect(aspect, got, expected)
    r.expect(
        "ISO-looking string not equal to a datetime",
        coll.count_documents({"iso_str": dt.datetime(2024, 3, 1, 12, 30, 45)}),
        0,
    )
    _, exc = _call(lambda: coll.insert_one({"_id": "dec", "dec": Decimal128("1.10")}))
    if exc is None:
        r.expect("Decimal128", (coll.find_one({"_id": "dec"}) or {}).get("dec"), Decimal128("1.10"))
    else:
        r.differs("Decimal128 insert", _exc(exc))
    # datetime comparisons at sub-second precision
    pcoll = ctx.coll("types_dt")
    base = dt.datetime(2024, 1, 1, 12, 0, 0, tzinfo=UTC)
    pcoll.insert_many(
        [
            {"_id": f"t{ms}", "at": base + dt.timedelta(milliseconds=ms)}
            for ms in (0, 1, 400, 999, 1000, 1500)
        ]
    )

    def ms_ids(f: Doc) -> list[str]:
        return sorted((d["_id"] for d in pcoll.find(f)), key=lambda x: int(x[1:]))

    def at(ms: int) -> dt.datetime:
        return base + dt.timedelta(milliseconds=ms)

    for aspect, f, expected in [
        ("datetime $lte base", {"at": {"$lte": at(0)}}, ["t0"]),
        ("datetime $lt base+1ms", {"at": {"$lt": at(1)}}, ["t0"]),
        ("datetime $gt base+500ms", {"at": {"$gt": at(500)}}, ["t999", "t1000", "t1500"]),
        ("datetime equality base+400ms", {"at": at(400)}, ["t400"]),
        ("datetime $in [base+400ms]", {"at": {"$in": [at(400)]}}, ["t400"]),
        (
            "datetime range inside $or (python path)",
            {"$or": [{"at": {"$lte": at(0)}}, {"_id": "none"}]},
            ["t0"],
        ),
    ]:
        r.expect(aspect, ms_ids(f), expected, f"{_short(f, 90)}")
    f0 = {"at": {"$lte": at(0)}}
    r.expect("datetime $lte base via count_documents", pcoll.count_documents(f0), 1)
    got, exc = _call(lambda: [d["_id"] for d in pcoll.aggregate([{"$match": f0}])])
    r.expect("datetime $lte base via aggregate $match", got, ["t0"], _exc(exc) if exc else "")
    fl = ctx.coll("types_float")
    fl.insert_many(
        [{"_id": f"t{ms}", "at": 1704110400.0 + ms / 1000} for ms in (0, 1, 400, 999, 1000)]
    )
    r.expect(
        "float epoch $lte base / $gt base+0.5s are exact",
        (
            sorted(d["_id"] for d in fl.find({"at": {"$lte": 1704110400.0}})),
            sorted(d["_id"] for d in fl.find({"at": {"$gt": 1704110400.5}})),
        ),
        (["t0"], ["t1000", "t999"]),
    )
    # sorting datetimes
    scoll = ctx.coll("types_sort")
    base = dt.datetime(2024, 1, 1, tzinfo=UTC)
    offsets = [5, -3, 0, 1000, -86400 * 400, 0.001]
    scoll.insert_many(
        [{"_id": i, "at": base + dt.timedelta(seconds=o)} for i, o in enumerate(offsets)]
    )
    exp = [i for i, _ in sorted(enumerate(offsets), key=lambda p: p[1])]
    r.expect("sort by datetime", [d["_id"] for d in scoll.find().sort("at", 1)], exp)
    # odd keys
    for aspect, odd in [
        ("key with a dot", {"_id": "dot", "a.b": 1}),
        ("key starting with $ (nested)", {"_id": "dollar", "x": {"$y": 1}}),
        ("empty-string key", {"_id": "empty", "": 1}),
    ]:
        _, exc = _call(lambda odd=odd: coll.insert_one(odd))
        back = coll.find_one({"_id": odd["_id"]})
        r.info(
            aspect,
            f"insert: {_exc(exc)}; read back: {_short(back)} (MongoDB 5.0+ stores it but queries cannot address it)",
        )
    r.expect("{'a.b': 1} filter is a path, not the dotted key", coll.count_documents({"a.b": 1}), 0)


@check("outage: server stopped mid-operation, restart, reconnect")
def check_outage(ctx: Ctx) -> None:
    r = ctx.report
    server = ctx.server
    if server is None:
        r.add("SKIP", "outage checks", "needs a server this script controls (no --uri)")
        return
    coll = ctx.coll("outage")
    coll.insert_many([{"_id": i, "status": 0} for i in range(50)])
    client: Client = ctx.new_client(
        serverSelectionTimeoutMS=1500, connectTimeoutMS=1000, socketTimeoutMS=3000
    )
    c2 = client[ctx.db.name][coll.name]
    c2.find_one({})
    errors: Counter[str] = Counter()
    hierarchy: dict[str, str] = {}
    stop_flag = threading.Event()
    ok_ops = [0]
    last_ok = [0.0]

    def loop() -> None:
        while not stop_flag.is_set():
            try:
                c2.find_one_and_update({"status": 0}, {"$inc": {"n": 1}})
                ok_ops[0] += 1
                last_ok[0] = time.monotonic()
            except PyMongoError as exc:
                name = type(exc).__name__
                errors[name] += 1
                hierarchy[name] = ", ".join(
                    b.__name__
                    for b in (AutoReconnect, ConnectionFailure, ServerSelectionTimeoutError)
                    if isinstance(exc, b)
                )

    th = threading.Thread(target=loop, daemon=True)
    th.start()
    time.sleep(0.3)  # let the loop run against a live server
    t_stop = time.monotonic()
    server.kill()
    time.sleep(2.0)  # outage long enough for server selection to time out
    t_start = time.monotonic()
    server.start()
    deadline = time.monotonic() + 15
    while last_ok[0] < t_start and time.monotonic() < deadline:
        time.sleep(0.05)
    recovered = last_ok[0] >= t_start
    stop_flag.set()
    th.join(timeout=10)
    r.info(
        "errors from a find_one_and_update loop across SIGKILL + 2s outage + restart",
        ", ".join(f"{k} x{v} (isinstance of: {hierarchy[k] or 'none'})" for k, v in errors.items()),
    )
    r.info(
        "recovery after restart",
        f"recovered={recovered}, first success {max(0.0, last_ok[0] - t_start) * 1000:.0f} ms after start() returned; "
        f"outage began {t_start - t_stop:.1f}s before restart",
    )
    # single op while down
    server.stop()
    for attempt in (1, 2):
        t0 = time.monotonic()
        _, exc = _call(lambda: c2.insert_one({"_id": "down"}))
        r.info(
            f"insert_one #{attempt} while the server is down (serverSelectionTimeoutMS=1500)",
            f"{_exc(exc)} after {time.monotonic() - t0:.1f}s; "
            f"AutoReconnect subclass: {isinstance(exc, AutoReconnect)}",
        )
    server.start()
    doc, exc = _call(lambda: c2.find_one({"_id": 0}))
    r.info(
        "same client, first op after graceful restart",
        _exc(exc) if exc else "ok, data intact: " + _short(doc),
    )
    r.expect("data survives SIGKILL and SIGTERM restarts", c2.count_documents({}), 50)
    client.close()


@check("performance (one client, sequential)")
def check_perf(ctx: Ctx) -> None:
    r = ctx.report
    shapes: list[tuple[str, Callable[[], Doc], bool]] = [
        (
            "A: status $in, queue $in, at $lte datetime (Python fallback)",
            lambda: claim_filter(now_utc()),
            False,
        ),
        (
            "B: status eq, queue eq, at $lte datetime (SQL)",
            lambda: {"status": 0, "queue": "q1", "at": {"$lte": now_utc()}},
            False,
        ),
        (
            "C: status eq, queue eq, at $lte float epoch (SQL)",
            lambda: {"status": 0, "queue": "q1", "at": {"$lte": time.time()}},
            True,
        ),
    ]
    for n_docs in (2000, 20000):
        for label, make_filter, float_at in shapes:
            coll = ctx.coll(f"perf_{n_docs}")
            _seed_claim_docs(coll, n_docs, now_utc() - dt.timedelta(seconds=1), float_at=float_at)
            coll.create_index(
                [("status", 1), ("queue", 1), ("priority", -1), ("at", 1), ("seq", 1)]
            )
            n = 0
            t0 = time.monotonic()
            while time.monotonic() - t0 < 2.0:
                doc = coll.find_one_and_update(
                    make_filter(),
                    {"$set": {"status": 2, "token": uuid.uuid4().hex}, "$inc": {"claims": 1}},
                    sort=CLAIM_SORT,
                    return_document=ReturnDocument.AFTER,
                )
                if doc is None:
                    break
                n += 1
            rate = n / (time.monotonic() - t0)
            ctx.perf[f"fam_{label[0]}_{n_docs}"] = rate
            r.info(f"claim loop {n_docs} docs, {label}", f"{rate:.0f} ops/s")
    coll = ctx.coll("perf_misc")
    t0 = time.monotonic()
    for i in range(1000):
        coll.insert_one({"_id": i, "v": i, "token": "t"})
    rate = 1000 / (time.monotonic() - t0)
    ctx.perf["insert_one_per_s"] = rate
    r.info("insert_one", f"{rate:.0f} ops/s")
    t0 = time.monotonic()
    for i in range(1000):
        coll.find_one({"_id": i})
    rate = 1000 / (time.monotonic() - t0)
    ctx.perf["find_one_by_id_per_s"] = rate
    r.info("find_one by _id", f"{rate:.0f} ops/s")
    t0 = time.monotonic()
    for i in range(1000):
        coll.update_one({"_id": i, "token": "t"}, {"$set": {"token": "u"}, "$inc": {"v": 1}})
    rate = 1000 / (time.monotonic() - t0)
    ctx.perf["update_one_per_s"] = rate
    r.info("update_one by _id+token", f"{rate:.0f} ops/s")
    t0 = time.monotonic()
    coll.insert_many([{"_id": 10000 + i} for i in range(10000)])
    r.info("insert_many 10000 docs", f"{10000 / (time.monotonic() - t0):.0f} docs/s")


# --------------------------------------------------------------------------
# main


@contextmanager
def target(uri: str | None) -> Iterator[tuple[str, MongoServer | None]]:
    if uri:
        yield uri, None
        return
    with MongoServer() as server:
        print(
            f"nx-27017 started on {server.uri} in {server.startup_seconds:.2f}s (data: {server.data_dir})"
        )
        yield server.uri, server


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--uri", help="probe this server instead of starting nx-27017")
    parser.add_argument(
        "--only", action="append", default=[], help="run checks whose title contains this"
    )
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args(argv)
    report = Report()
    started = time.monotonic()
    with target(args.uri) as (uri, server):
        client: Client = pymongo.MongoClient(uri, serverSelectionTimeoutMS=5000)
        db_name = unique_db_name("probe")
        ctx = Ctx(uri=uri, server=server, client=client, db=client[db_name], report=report)
        for title, fn in CHECKS:
            if args.only and not any(o.lower() in title.lower() for o in args.only):
                continue
            report.current = title
            print(f"\n== {title}", flush=True)
            try:
                fn(ctx)
            except Exception as exc:
                report.add("ERROR", "check crashed", f"{type(exc).__name__}: {exc}")
                traceback.print_exc()
        if server is None or server.running:
            client.drop_database(db_name)
        client.close()
    counts = Counter(line.status for line in report.lines)
    print(
        "\nsummary: "
        + ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
        + f" ({time.monotonic() - started:.0f}s)"
    )
    for line in report.lines:
        if line.status in ("DIFFERS", "ERROR"):
            print(f"  {line.status:<8} [{line.check.split(':')[0][:40]}] {line.aspect}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(
                {"lines": [asdict(x) for x in report.lines], "perf": ctx.perf},
                fh,
                indent=2,
                default=str,
            )
    return 1 if counts.get("ERROR") else 0


if __name__ == "__main__":
    sys.exit(main())
