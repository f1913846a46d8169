"""Indexes of the MongoDB store: made at start from a fixed spec; TTL follows the retention."""

from __future__ import annotations

from pymongo import IndexModel
from pymongo.collection import Collection
from pymongo.database import Database
from pymongo.errors import OperationFailure

from taskschedd.store.mongo.common import _is_transient, _log
from taskschedd.store.mongo.documents import Doc
from taskschedd.store.mongo.errors import reason

_OPTIONS_CONFLICT = frozenset({85, 86})


def create_indexes(
    db: Database[Doc],
    *,
    jobs_collection: str,
    events_collection: str,
    nodes_collection: str,
    retention: float | None,
    slots_collection: str | None = None,
) -> None:
    """The claim's and the common queries' indexes; TTL indexes when ``retention`` is set."""
    jobs = db[jobs_collection]
    events = db[events_collection]
    nodes = db[nodes_collection]
    try:
        jobs.create_indexes(
            [
                # The claim: equality fields first, then the sort.
                IndexModel(
                    [
                        ("state", 1),
                        ("queue", 1),
                        ("spawn", 1),
                        ("priority", -1),
                        ("at", 1),
                        ("seq", 1),
                    ]
                ),
                IndexModel([("state", 1), ("queue", 1), ("at", 1)]),  # due counts
                IndexModel([("once", 1)], unique=True),
                IndexModel([("claim_token", 1)]),
                IndexModel([("state", 1), ("lease_until", 1)]),
                IndexModel([("state", 1), ("ended", 1)]),
                IndexModel([("seq", 1)]),
                IndexModel([("created", 1)]),
                IndexModel([("series", 1), ("series_seq", 1)]),
                IndexModel([("next_pending", 1)], sparse=True),
                IndexModel([("deps", 1), ("state", 1)], sparse=True),  # dependents
                IndexModel([("hold_until", 1)], sparse=True),  # workflows being added
                # A limit's running and waiting jobs (limits list, next_due); jobs
                # without a limit are not in it.
                IndexModel(
                    [("lim", 1), ("state", 1), ("at", 1)],
                    partialFilterExpression={"lim": {"$exists": True}},
                ),
            ]
        )
        if slots_collection is not None:
            db[slots_collection].create_indexes(
                [
                    IndexModel([("holder", 1)]),  # frees and renewals, by claim token
                    IndexModel([("until", 1)]),  # the slots held now
                    IndexModel([("lim", 1), ("i", 1)]),  # a free slot of a limit
                ]
            )
        events.create_indexes(
            [
                IndexModel([("seq", 1)]),
                IndexModel([("job_id", 1), ("seq", 1)]),
                IndexModel([("time", 1)]),
            ]
        )
        nodes.create_indexes([IndexModel([("heartbeat", 1)])])
    except OperationFailure as exc:
        if _is_transient(exc):
            raise
        # E.g. a user without the createIndex privilege: indexes made by an admin work.
        _log().warning("could not create MongoDB indexes", error=reason(exc))
    if retention is not None:
        for coll in (jobs, events):
            ttl_index(db, coll, retention)


def ttl_index(db: Database[Doc], coll: Collection[Doc], retention: float) -> None:
    """Expire final documents ``retention`` seconds after ``ended_at``; 0 drops the index."""
    seconds = int(retention)
    if seconds <= 0:
        # Keep forever: drop a TTL index an earlier configuration made. The name comes
        # from the server's own listing (nx-27017 names indexes its own way).
        for ix in coll.list_indexes():
            if list(ix["key"].keys()) == ["ended_at"] and "expireAfterSeconds" in ix:
                coll.drop_index(ix["name"])
                _log().info("TTL index removed (retention 0)", collection=coll.name)
        return
    try:
        coll.create_index([("ended_at", 1)], expireAfterSeconds=seconds)
    except OperationFailure as exc:
        if exc.code not in _OPTIONS_CONFLICT:
            if _is_transient(exc):
                raise
            _log().warning("could not create a TTL index", error=reason(exc))
            return
        # The retention changed since the index was made: change it in place.
        try:
            db.command(
                "collMod",
                coll.name,
                index={"keyPattern": {"ended_at": 1}, "expireAfterSeconds": seconds},
            )
        except OperationFailure as again:
            _log().warning(
                "could not change the TTL of an existing index",
                collection=coll.name,
                error=reason(again),
            )
