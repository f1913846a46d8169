"""MongoStore: the Store interface on MongoDB (the data model is in the package docstring)."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import threading
import time
import weakref
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import replace
from typing import Any
from urllib.parse import parse_qsl

import pymongo
from pymongo import ReturnDocument, UpdateOne
from pymongo.collection import Collection
from pymongo.database import Database
from pymongo.errors import (
    BulkWriteError,
    ConnectionFailure,
    DuplicateKeyError,
    OperationFailure,
    PyMongoError,
    ServerSelectionTimeoutError,
)
from pymongo.write_concern import WriteConcern

from taskschedd import dependencies, failpoints, transitions
from taskschedd.errors import JobNotFound, StoreError, StoreUnavailable
from taskschedd.limits import LimitSpec, LimitState, as_times, window
from taskschedd.model import (
    FINAL,
    LIVE_AT_MOST,
    RUNNABLE,
    ClaimRequest,
    EventRecord,
    JobQuery,
    JobRecord,
    JobStatus,
    NewJob,
    NodeRecord,
)
from taskschedd.redact import redact_text, redact_url
from taskschedd.stats import StatRows
from taskschedd.store.base import DuplicateJobId, Store, UnknownDependency, Waker, prefix_end
from taskschedd.store.decode import (
    MAX_ATTEMPT,
    MAX_TIME,
    decode_node,
    decode_result,
    decode_state,
)
from taskschedd.store.mongo.common import _is_transient, _log
from taskschedd.store.mongo.compile import change_update, guard_filter
from taskschedd.store.mongo.documents import (
    _EVENT_FIELDS,
    BLOCKED,
    DONE,
    HELD,
    READY,
    RUNNING,
    Doc,
    _added_event,
    _among,
    _date,
    _event,
    _gated,
    _new_job_doc,
    _t,
    _to_event,
    _to_job,
)
from taskschedd.store.mongo.errors import hosts_of, reason, translate
from taskschedd.store.mongo.events import FLOOR_ID, EventLog
from taskschedd.store.mongo.gates import LIM, Gates, Handover, Held, Remembered, excluding
from taskschedd.store.mongo.indexes import create_indexes
from taskschedd.store.mongo.waker import STREAM_AWAIT_MS, MongoWaker
from taskschedd.transitions import Attempt, Branch, ClaimFields, Transition

DEFAULT_DATABASE = "taskscheduler"

_MAINTENANCE_EVERY = 30.0
#: A dependency sweep reads at most this many BLOCKED jobs, and their dependencies up to
#: about this many, per pass (the next pass goes on from there).
_SWEEP_JOBS = 5000
_SWEEP_DEPS = 50_000
#: How long commit records of workflow adds are kept (a wait long past any add).
_ADD_RECORDS_KEPT = 86400.0
_IN_CHUNK = 500
# The claim's order: priority, due time, FIFO (after the queues, in the order given).
_CLAIM_SORT = [("priority", -1), ("at", 1), ("seq", 1)]
# Rounds of a batch claim that lost candidates to other workers before it gives up.
_CLAIM_ROUNDS = 3
#: Jobs one claim may take and give back (each a new limit or key found closed, then
#: skipped) before it gives up on a queue.
_GATE_TRIES = 32
#: For how long a queue where jobs with limits or keys turned up is claimed gates first
#: (a find of candidates, then a claim by id), and how many candidates such a find reads.
_PEEKING = 30.0
_PEEK = 8
#: What a claim changes, which giving the job back restores (see _give_back).
_CLAIM_RESTORED = (
    "status", "state", "attempt", "started", "node", "worker", "progress", "ended", "updated",
    "claim_token", "lease_until", "ended_at",
)  # fmt: skip

# Which (url, database) pairs have logged their start-up lines in this process tree: the
# set is inherited across fork, so forked workers do not repeat the master's lines.
_ANNOUNCED: set[tuple[str, str]] = set()


#: The statuses a claim may take (transitions.CLAIMABLE), as a range: nx-27017 runs it
#: as SQL.
_CLAIMABLE_RANGE = {
    "$gte": int(min(transitions.CLAIMABLE.statuses)),
    "$lte": int(max(transitions.CLAIMABLE.statuses)),
}
assert (
    len(transitions.CLAIMABLE.statuses) == _CLAIMABLE_RANGE["$lte"] - _CLAIMABLE_RANGE["$gte"] + 1
)


def _due(queue: str, force_spawn: bool, now: float) -> Doc:
    """The claim's filter for one queue: equality fields (nx-27017's SQL path), due now.
    The status range keeps a document whose status another client garbled (the claim
    would overwrite it) for the quarantine sweep, and so does the _id type one whose id is
    not a string (no later write could address it by the id a claim hands out); neither
    costs anything measurable."""
    return {
        "_id": {"$type": "string"},
        "state": READY,
        "queue": queue,
        "spawn": bool(force_spawn),
        "at": {"$lte": now},
        "status": _CLAIMABLE_RANGE,
    }


def _claim_update(token: str, *, node: str, worker: str, lease: float, now: float) -> Doc:
    branch = transitions.claim(ClaimFields(token, now + lease, node, worker))
    return change_update(branch.change, "", now)


def _claimed(before: Doc, update: Doc) -> Doc:
    """The document a claim's ``update`` makes of ``before`` (its pre-image), as the
    server wrote it: the claim's values are already rounded as stored (compile._t)."""
    after = {**before, **update.get("$set", {})}
    for name, step in update.get("$inc", {}).items():
        value = before.get(name, 0)
        after[name] = (value if type(value) in (int, float) else 0) + step
    for name in update.get("$unset", {}):
        after.pop(name, None)
    return after


class _Excluded:
    """The limits and keys one claim skips: those it found closed, and (first) those
    this process remembers as closed (gates.Remembered), which :meth:`recheck` reads
    again when nothing else was found. Limits whose slots a settle in the same call
    hands over (gates.Handover) are open to this claim, however full they are."""

    def __init__(
        self, remembered: Remembered, gates: Gates, now: float, handover: Handover | None = None
    ) -> None:
        self.remembered = remembered
        self.gates = gates
        self.now = now
        self.open = handover.lims() if handover is not None else set()
        self.read = remembered.stale(now)  # whether this claim read the gates itself
        if self.read:
            remembered.read(gates.closed(now), now)
        self.memo_lims, self.memo_keys = remembered.current(now)
        self.memo_lims -= self.open
        self.lims: set[str] = set()
        self.keys: set[str] = set()

    def recheck(self) -> bool:
        """Nothing found but what we remember as closed: read the gates; whether any of
        those opened meanwhile (then claim again without them)."""
        if not (self.memo_lims or self.memo_keys) or self.read:
            return False
        self.read = True
        closed = self.gates.closed(self.now)
        self.remembered.read(closed, self.now)
        lims, keys = (closed.full | set(closed.opens)) - self.open, closed.keys
        opened = bool((self.memo_lims - lims) or (self.memo_keys - keys))
        self.memo_lims, self.memo_keys = lims, set(keys)
        return opened

    def add(self, held: Held, now: float) -> None:
        (self.lims if held.kind == LIM else self.keys).add(held.name)
        self.remembered.add(held, now)

    def skips(self, doc: Doc) -> bool:
        return doc.get("lim") in self.lims | self.memo_lims or (
            doc.get("xkey") in self.keys | self.memo_keys
        )

    def where(self, where: Doc) -> Doc:
        return excluding(where, self.lims | self.memo_lims, self.keys | self.memo_keys)


def _branch_event(job: Doc, branch: Branch, now: float, *, attempt: int | None = None) -> Doc:
    """The event of a branch applied to ``job`` (a document with the event fields, and the
    attempt after the write unless ``attempt`` is given)."""
    return _event(
        job, now, branch.event_status, attempt=attempt, node=job.get("node"), worker=job.get("worker"),
        error=branch.change.error, reason=branch.reason,
    )  # fmt: skip


def _series_member(series: str) -> Doc:
    """The jobs of a series: its first job (whose id is the series id) and occurrences."""
    return {"$or": [{"series": series}, {"_id": series}]}


def _prefixed(update: Doc, prefix: str) -> Doc:
    """``update`` applied to a sub-document (a pending next occurrence) instead."""
    return {op: {f"{prefix}{k}": v for k, v in fields.items()} for op, fields in update.items()}


def _count(value: Any) -> int:
    """A stored count, 0 if another client wrote something else there."""
    return int(value) if type(value) in (int, float) and abs(value) < 2**53 else 0


#: Documents that claims and reaps cannot see or settle, because a field that their
#: filters or updates compare has the wrong type: quarantined by the nodes' sweep. Each
#: ``$nor`` of one conjunction reads "not all of these hold" ($not is not available on
#: nx-27017); a range matches numbers only (MongoDB compares within a type).
_COUNT = {"$gte": 0, "$lte": MAX_ATTEMPT}
_RUNNABLE_STATUSES = [int(s) for s in RUNNABLE]
_FINAL_STATUSES = [int(s) for s in FINAL]
_TIME = {"$gte": -MAX_TIME, "$lte": MAX_TIME}  # beyond: never due, never expired
_MALFORMED: Doc = {
    "$or": [
        {"status": {"$nin": [int(s) for s in JobStatus]}},
        {"state": {"$nin": [READY, RUNNING, DONE, HELD, BLOCKED]}},
        {"state": BLOCKED, "status": {"$ne": int(JobStatus.BLOCKED)}},
        # state mirrors status; a record where they disagree is neither claimed, nor
        # reaped, nor listed for what it is
        {"state": {"$in": [READY, HELD]}, "status": {"$nin": _RUNNABLE_STATUSES}},
        {"state": RUNNING, "status": {"$ne": int(JobStatus.PROCESSING)}},
        {"state": DONE, "status": {"$nin": _FINAL_STATUSES}},
        {"state": {"$in": [READY, RUNNING]}, "$nor": [{"_id": {"$type": "string"}}]},
        {
            "state": READY,
            "$nor": [
                {
                    "at": _TIME,
                    "attempt": _COUNT,
                    "queue": {"$type": "string"},
                    "spawn": {"$in": [True, False]},
                }
            ],
        },
        {
            "state": RUNNING,
            "$nor": [
                {
                    "lease_until": _TIME,
                    "attempt": _COUNT,
                    "claim_token": {"$type": "string"},
                }
            ],
        },
    ]
}


def _dependency_statuses(
    deps: Sequence[str], found: Mapping[str, Doc], created: Any
) -> list[tuple[str, JobStatus | None]]:
    """Each dependency's status as read (None: no record, or one no status can be, or
    one created after the dependent ``created``: a reused id, not its dependency)."""
    statuses: list[tuple[str, JobStatus | None]] = []
    for dep in deps:
        doc = found.get(dep) or {}
        born = doc.get("created")
        if type(created) in (int, float) and type(born) in (int, float) and born > created:
            doc = {}
        raw = doc.get("status")
        try:
            statuses.append((dep, JobStatus(raw) if type(raw) is int else None))
        except ValueError:
            statuses.append((dep, None))
    return statuses


def _malformed_why(doc: Doc) -> str:
    state, status = doc.get("state"), doc.get("status")
    expected = {READY: _RUNNABLE_STATUSES, HELD: _RUNNABLE_STATUSES, DONE: _FINAL_STATUSES,
                RUNNING: [int(JobStatus.PROCESSING)], BLOCKED: [int(JobStatus.BLOCKED)]}.get(state if isinstance(state, str) else "")  # fmt: skip
    if expected is not None and status not in expected:
        return f"its state {state!r} does not match its status {status!r}"
    if state == READY:
        return "its at, attempt, queue or spawn field has the wrong type"
    if state == RUNNING:
        return "it is running without a numeric lease, attempt or a claim token"
    return f"its state is {state!r}"


class _OnceKeyTaken(StoreError):
    """An insert lost the race for a once key to an active job."""


def _url_options(url: str) -> set[str]:
    """Lower-cased option names given in a MongoDB URL's query string."""
    _, _, query = url.partition("?")
    return {k.lower() for k, _ in parse_qsl(query, keep_blank_values=True)}


class MongoStore(Store):
    """See the module docstring.

    ``retention``: seconds after which final jobs and events expire through TTL indexes on
    ``ended_at``; 0 removes those indexes (keep forever); None (the default) leaves them
    as they are, so that opening a store without the node's configuration (a script, a
    CLI without config) never changes the cluster's retention. ``poll_interval``: how often a
    polling waker checks for new events. ``server_selection_timeout`` bounds how long an
    operation waits for a reachable server before StoreUnavailable, so callers back off;
    a new connection's TCP and TLS handshake waits as long (at most 10 s).
    ``operation_timeout`` (None: unbounded but for the socket timeout) bounds each
    operation as a whole, retries included (MongoDB's timeoutMS): taskschedctl check uses
    it so that its --timeout holds against a server that accepts but never answers.
    ``client_options`` are passed to MongoClient (tests use it for command monitoring).

    Job dependencies without transactions: a job with dependencies is inserted BLOCKED
    (its ``deps`` array indexed) and decided right after; after every write that makes a
    job final its BLOCKED dependents are decided, each with a findAndModify guarded on
    BLOCKED (so once, however many nodes decide it at the same moment); the
    maintenance pass decides BLOCKED jobs a crash left between those writes.
    """

    supports_dependencies = True

    def __init__(
        self,
        url: str,
        *,
        database: str | None = None,
        jobs_collection: str = "taskscheduler.jobs",
        events_collection: str = "taskscheduler.events",
        nodes_collection: str = "taskscheduler.nodes",
        write_concern: str | int = "majority",
        change_streams: str = "auto",
        poll_interval: float = 1.0,
        retention: float | None = None,
        server_selection_timeout: float = 5.0,
        operation_timeout: float | None = None,
        client_options: Mapping[str, Any] | None = None,
        workflow_hold: float = 300.0,
    ) -> None:
        if change_streams not in ("auto", "on", "off"):
            raise StoreError(f"change_streams must be one of auto, on, off; got {change_streams!r}")
        if retention is not None and retention < 0:
            raise StoreError(f"retention must be >= 0 seconds (0 = keep), got {retention!r}")
        self._url = url
        self.url = redact_url(url)
        self._database_name = database
        self.jobs_collection = jobs_collection
        self.events_collection = events_collection
        self.nodes_collection = nodes_collection
        self.write_concern = write_concern
        self.change_streams = change_streams
        self.poll_interval = float(poll_interval)
        self.retention = None if retention is None else float(retention)
        self.server_selection_timeout = float(server_selection_timeout)
        self.operation_timeout = operation_timeout
        self._client_options = dict(client_options or {})
        #: How long a workflow's add may take before a dependency sweep abandons it.
        self.workflow_hold = float(workflow_hold)
        self._client_obj: pymongo.MongoClient[Doc] | None = None
        self._db_obj: Database[Doc] | None = None
        self._pid = -1
        self._uncertain: dict[str, float] = {}  # claim token -> when its reply was lost
        self._ready = False
        self._use_streams = False
        self.topology = "unknown"
        self._lock_obj = threading.RLock()
        self._lock_pid = os.getpid()
        self._seq_last = 0
        self._malformed_ids: dict[str, Any] = {}  # what malformed() found: record id -> _id
        self._maintained = 0.0
        self._swept_after: str | None = None  # where the next sweep of BLOCKED jobs starts
        #: BLOCKED jobs the dependency sweep could not decide on: id -> why.
        self._undecidable: dict[str, str] = {}
        self._wakers: weakref.WeakSet[MongoWaker] = weakref.WeakSet()
        self._event_log = EventLog(lambda: self._events, self.url)
        self._gates = Gates(lambda: self._limits, lambda: self._slots)
        self._remembered = Remembered()  # limits and keys lately found closed
        self._peeking: dict[str, float] = {}  # queue -> claimed gates first until (monotonic)

    @property
    def _lock(self) -> threading.RLock:
        """This process's lock: one inherited across fork may be held by a dead thread."""
        if self._lock_pid != os.getpid():
            self._lock_obj = threading.RLock()
            self._lock_pid = os.getpid()
        return self._lock_obj

    # -- connection ---------------------------------------------------------------------
    def _new_client(self) -> pymongo.MongoClient[Doc]:
        given = _url_options(self._url)
        options: dict[str, Any] = {"appname": "taskschedd"}
        defaults = {
            "serverSelectionTimeoutMS": int(self.server_selection_timeout * 1000),
            # No longer than the wait for a server: a blackholed address must not make a
            # short server selection wait for a 10 s connect.
            "connectTimeoutMS": min(10_000, max(100, int(self.server_selection_timeout * 1000))),
            # Bounded, but longer than a change stream's server-side wait.
            "socketTimeoutMS": max(30_000, STREAM_AWAIT_MS * 5),
        }
        if self.operation_timeout is not None:
            defaults["timeoutMS"] = max(1, int(self.operation_timeout * 1000))
        for key, value in defaults.items():
            if key.lower() not in given:
                options[key] = value
        options.update(self._client_options)
        try:
            return pymongo.MongoClient(self._url, connect=False, **options)
        except (PyMongoError, ValueError, TypeError) as exc:  # pymongo raises all three
            raise StoreError(
                f"invalid MongoDB URL {self.url}: {redact_text(str(exc))}; expected "
                "mongodb://[user:password@]host[:port][,...]/[database][?options]"
            ) from None

    @property
    def _db(self) -> Database[Doc]:
        """This process's database handle; created after fork, set up on first use."""
        with self._lock:
            if self._db_obj is None or self._pid != os.getpid():
                # A client inherited across fork must not be used (or closed) here.
                self._client_obj = None
                self._db_obj = None
                self._ready = False
                client = self._new_client()
                name = self._database_name or DEFAULT_DATABASE
                if self._database_name is None:
                    with contextlib.suppress(PyMongoError):
                        name = client.get_default_database(DEFAULT_DATABASE).name
                self._client_obj = client
                self._db_obj = client.get_database(name)
                self._pid = os.getpid()
                self._uncertain = {}  # a forked child did not make its parent's claims
            if not self._ready:
                with self._errors("connect"):
                    self._setup(self._db_obj)
                self._ready = True
            return self._db_obj

    def _coll(self, name: str) -> Collection[Doc]:
        w = self.write_concern
        concern = WriteConcern(w=w, j=True) if w != 0 else WriteConcern(w=0)
        return self._db.get_collection(name, write_concern=concern)

    @property
    def _jobs(self) -> Collection[Doc]:
        return self._coll(self.jobs_collection)

    @property
    def _events(self) -> Collection[Doc]:
        return self._coll(self.events_collection)

    @property
    def _nodes(self) -> Collection[Doc]:
        return self._coll(self.nodes_collection)

    @property
    def _adds(self) -> Collection[Doc]:
        """Commit records of workflow adds (see _insert_workflow)."""
        return self._coll(f"{self.jobs_collection}_adds")

    @property
    def _limits(self) -> Collection[Doc]:
        """Limit definitions and their rates' start logs (see gates)."""
        return self._coll(f"{self.jobs_collection}_limits")

    @property
    def _slots(self) -> Collection[Doc]:
        """What running jobs hold: limit slots and exclusive keys (see gates)."""
        return self._coll(f"{self.jobs_collection}_slots")

    def _setup(self, db: Database[Doc]) -> None:
        """Learn the topology, log how wake-ups and durability work, create indexes."""
        hello = db.client.admin.command("hello")
        if hello.get("setName"):
            self.topology = f"replica set {hello['setName']}"
            replicated = True
        elif hello.get("msg") == "isdbgrid":
            self.topology = "sharded cluster"
            replicated = True
        else:
            self.topology = "standalone"
            replicated = False
        self._use_streams = self.change_streams == "on" or (
            self.change_streams == "auto" and replicated
        )
        key = (self._url, db.name)
        if key not in _ANNOUNCED:
            _ANNOUNCED.add(key)
            wakeups = (
                "change streams (polling as fallback)"
                if self._use_streams
                else f"polling every {self.poll_interval:g}s"
            )
            _log().info(
                "MongoDB store",
                url=self.url,
                database=db.name,
                topology=self.topology,
                wakeups=wakeups,
                write_concern=self.write_concern,
                retention=self.retention,
            )
            if not replicated:
                _log().warning(
                    "MongoDB is a standalone server: write concern "
                    f"{self.write_concern!r} is acknowledged by that one server only, so "
                    "its loss can lose job state; use a replica set for production",
                    url=self.url,
                )
        create_indexes(
            db,
            jobs_collection=self.jobs_collection,
            events_collection=self.events_collection,
            nodes_collection=self.nodes_collection,
            retention=self.retention,
            slots_collection=f"{self.jobs_collection}_slots",
        )

    @contextlib.contextmanager
    def _errors(self, doing: str) -> Iterator[None]:
        try:
            yield
        except StoreError:
            raise
        except PyMongoError as exc:
            raise self._translate(doing, exc) from None

    def _translate(self, doing: str, exc: PyMongoError) -> StoreError:
        return translate(exc, doing, hosts_of(self.url))

    # -- documents and events -----------------------------------------------------------
    def _next_seq(self) -> int:
        with self._lock:
            self._seq_last = max(time.time_ns(), self._seq_last + 1)
            return self._seq_last

    def _emit_after(self, doing: str, events: Sequence[Doc]) -> None:
        """Record events for a state change that is already written: never fail it."""
        try:
            with self._errors(f"record events ({doing})"):
                self._event_log.emit(events)
        except StoreError as exc:
            _log().warning(
                "job state changed but its event could not be recorded",
                doing=doing,
                job_ids=sorted({e["job_id"] for e in events})[:10],
                error=str(exc),
            )

    # -- writing jobs ---------------------------------------------------------------------
    def insert(self, jobs: Sequence[NewJob]) -> None:
        """Without a transaction, a job with dependencies is inserted BLOCKED and decided
        right after (a dependency that ended between the check and the insert is seen
        then); a crash in between leaves it to the dependency sweep. A batch with
        dependencies (a workflow) is inserted held and released once whole: see
        :meth:`_insert_workflow`."""
        if not jobs:
            return
        waiting = [j for j in jobs if j.options.depends_on]
        if waiting:
            self._check_dependencies(jobs)
        docs = [_new_job_doc(j, self._next_seq()) for j in jobs]
        named = list(dict.fromkeys(d for j in waiting for d in j.options.depends_on))
        if waiting and len(docs) > 1:
            self._insert_workflow(docs, named)
        else:
            with self._errors("insert jobs"):
                self._insert_docs(docs)
            self._emit_after("insert", [_added_event(d) for d in docs])
            if named:
                self._mark_dependencies(named)
        for doc in docs:  # in order: a job may depend on an earlier one of the batch
            if doc["state"] == BLOCKED:
                self._decide_logged(doc["_id"], float(doc["created"]), inserted=True)

    def _mark_dependencies(self, named: list[str]) -> None:
        """Flag jobs named in a depends_on, after their dependents' insert and before their
        decision: a settle that did not see the flag ran before it was set, so the
        decision sees that settle's status."""
        try:
            with self._errors("mark dependencies"):
                for i in range(0, len(named), _IN_CHUNK):
                    # No ended_at while a dependent waits: the TTL index must not
                    # expire a result it will read (_hold_for_dependents).
                    self._jobs.update_many(
                        _among("_id", named[i : i + _IN_CHUNK]),
                        {"$set": {"has_dependents": True}, "$unset": {"ended_at": ""}},
                    )
        except StoreError as exc:
            _log().warning(
                "dependencies not marked yet; the dependency sweep decides their "
                "dependents", error=str(exc),
            )  # fmt: skip

    def _insert_workflow(self, docs: list[Doc], named: list[str]) -> None:
        """All or nothing for a workflow without transactions: its jobs are inserted
        BLOCKED and held (``hold``: never decided, claimed or swept), then one commit
        record is inserted, then the hold is lifted. The commit record is the one atomic
        write that decides: a dependency sweep that finds a hold past its ``hold_until``
        inserts an "aborted" record under the same key instead and deletes the held
        jobs; whichever of the two records exists first wins. So after a crash either
        no job of the workflow ever runs (no commit: the sweep deletes them) or all of
        it does (committed: the sweep lifts the hold the adder could not)."""
        batch = secrets.token_hex(8)
        now = time.time()
        for doc in docs:
            if JobStatus(doc["status"]).is_final:
                continue  # inserted as it is: never runs
            doc.update(
                status=int(JobStatus.BLOCKED), state=BLOCKED, hold=batch,
                hold_until=_t(now + self.workflow_hold), reason="held: its workflow is being added",
            )  # fmt: skip
        failpoints.hit("mongo.workflow.before_insert")
        with self._errors("insert jobs"):
            self._insert_docs(docs)
        # Before the commit: whoever lifts the hold (we, or a sweep) finds them flagged.
        self._mark_dependencies(named)
        failpoints.hit("mongo.workflow.before_commit")
        with self._errors("commit the workflow's add"):
            try:
                self._adds.insert_one({"_id": batch, "state": "committed", "at": _t(now)})
            except DuplicateKeyError:
                # The sweep gave up on us (we took longer than workflow_hold): its delete
                # stands; make sure of it, and say so.
                self._jobs.delete_many({"hold": batch})
                raise StoreUnavailable(
                    f"MongoDB store {self.url}: adding the workflow took longer than "
                    f"{self.workflow_hold:g} s and was abandoned; none of its jobs was kept: "
                    "add it again"
                ) from None
        self._emit_after("insert", [_added_event(d) for d in docs])
        failpoints.hit("mongo.workflow.before_release")
        try:
            with self._errors("release the workflow"):
                self._jobs.update_many({"hold": batch}, {"$unset": {"hold": "", "hold_until": ""}})
                self._adds.delete_one({"_id": batch})
        except StoreError as exc:
            _log().warning(
                "workflow added but not released yet; the dependency sweep will",
                error=str(exc),
            )  # fmt: skip

    def _check_dependencies(self, jobs: Sequence[NewJob]) -> None:
        """UnknownDependency (nothing written) when a dependency is neither stored nor an
        earlier job of ``jobs``."""
        named = list(dict.fromkeys(d for j in jobs for d in j.options.depends_on))
        with self._errors("check dependencies"):
            known = self._existing_ids(named)
        for job in jobs:
            missing = [d for d in job.options.depends_on if d not in known]
            if missing:
                raise UnknownDependency(job.id, missing)
            known.add(job.id)

    # -- dependencies: decided after the write that made a dependency final; the sweep
    # (sweep_dependencies, every reap interval) decides what a crash between the two left
    # BLOCKED.
    def _decide_blocked(self, job_id: str, now: float, *, inserted: bool = False) -> Branch | None:
        """Decide one BLOCKED job against its dependencies' statuses as stored now; the
        transition's guard on BLOCKED makes it happen once, whoever decides it too.
        ``inserted``: its first decision, which also counts down its ``pending`` by the
        dependencies it found final (settles count down those that end after its insert;
        one counted twice makes it too low, which costs one more full read, never a
        wrong decision)."""
        with self._errors("decide a blocked job"):
            doc = self._jobs.find_one(
                {"_id": job_id, "state": BLOCKED, "hold": {"$exists": False}},
                projection={"options": 1, "at": 1, "created": 1},
            )
        if doc is None:
            return None
        parsed = dependencies.blocked_fields(doc.get("options"), doc.get("at"))
        if isinstance(parsed, str):
            return None  # not decidable: the dependency sweep has it quarantined
        deps, on_failure, at = parsed
        with self._errors("read dependencies"):
            found = self._by_ids(deps, {"status": 1, "created": 1})
        statuses = _dependency_statuses(deps, found, doc.get("created"))
        # As `at` is stored: a job due now is not POSTPONED by rounding; and no earlier
        # than the clock (a settle's time may precede this job's add).
        now = _t(max(now, time.time()))
        decision = dependencies.decide(statuses, on_failure=on_failure, at=at, now=now)
        if decision is None:
            final = sum(1 for _, st in statuses if st is None or st.is_final)
            if inserted and final:
                with self._errors("count dependencies"):
                    self._jobs.update_one(
                        {"_id": job_id, "state": BLOCKED}, {"$inc": {"pending": -final}}
                    )
            return None
        return self._apply_branches(job_id, decision, None, now, cascade=False)

    def _release_dependents(self, finals: list[tuple[str, JobStatus]], now: float) -> list[str]:
        """Count down the BLOCKED dependents of jobs that just became final and decide
        those counted to 0 (all of them when one ended other than DONE: it may cancel
        them); each that ends final in turn has its own decided (a worklist: a chain
        may be long); returns the ids of those that ended (canceled) here."""
        work = list(finals)
        ended: list[str] = []
        while work:
            dep_id, status = work.pop()
            where: Doc = {"deps": dep_id, "state": BLOCKED}
            with self._errors("find dependents"):
                self._jobs.update_many(where, {"$inc": {"pending": -1}})
                if status is JobStatus.DONE:
                    where = {**where, "pending": {"$lte": 0}}
                waiting = [d["_id"] for d in self._jobs.find(where, projection={"_id": 1})]
            for job_id in waiting:
                branch = self._decide_blocked(job_id, now)
                if branch is not None and branch.status is not None and branch.status.is_final:
                    work.append((job_id, branch.status))
                    ended.append(job_id)
        return ended

    def _release_logged(self, finals: list[tuple[str, JobStatus]], now: float) -> None:
        """:meth:`_release_dependents` after a write that stands whatever happens here: a
        failure is logged and left to the dependency sweep."""
        if not finals:
            return
        failpoints.hit("mongo.before_release")
        try:
            ended = self._release_dependents(finals, now)
            # Those the cascade canceled too: their own "run" dependents read them.
            self._hold_for_dependents([i for i, _ in finals] + ended)
        except StoreError as exc:
            _log().warning(
                "dependents not decided yet; the dependency sweep will",
                jobs=[i for i, _ in finals][:10], error=str(exc),
            )  # fmt: skip

    def _decide_logged(self, job_id: str, now: float, *, inserted: bool = False) -> None:
        try:
            branch = self._decide_blocked(job_id, now, inserted=inserted)
        except StoreError as exc:
            _log().warning(
                "added job not decided yet; the dependency sweep will",
                job_id=job_id, error=str(exc),
            )  # fmt: skip
            return
        if branch is not None and branch.status is not None and branch.status.is_final:
            self._release_logged([(job_id, branch.status)], now)

    def _recount_logged(self, job_id: str) -> None:
        try:
            with self._errors("count dependencies"):
                self._jobs.update_many({"deps": job_id, "state": BLOCKED}, {"$inc": {"pending": 1}})
        except StoreError as exc:
            _log().warning("dependents not counted again", job_id=job_id, error=str(exc))

    def sweep_dependencies(self, now: float) -> int:
        """What a crash left between two writes, found and finished; how many jobs it
        decided. A node calls it every reap interval.

        - BLOCKED jobs whose dependencies all ended (a crash between a settle and the
          release of its dependents, or between an add and its decision): read a page at
          a time (at most ``_SWEEP_JOBS`` jobs and ``_SWEEP_DEPS`` dependencies a pass,
          going on from where the last pass stopped), decided in memory, applied guarded.
          A count left too high by such a crash is lowered to what was read.
        - Held workflow adds past their ``hold_until``: committed ones released, the
          others deleted (see :meth:`_insert_workflow`).
        """
        decided = self._sweep_holds(now)
        where: Doc = {"state": BLOCKED, "hold": {"$exists": False}}
        if self._swept_after is not None:
            where["_id"] = {"$gt": self._swept_after}
        page: list[tuple[str, tuple[str, ...], str, float, Any, Any]] = []
        total = read = 0
        last: str | None = None
        with self._errors("sweep blocked jobs"):
            projection = {"options": 1, "at": 1, "pending": 1, "created": 1}
            cursor = self._jobs.find(where, projection=projection).sort("_id", 1)
            for doc in cursor.limit(_SWEEP_JOBS):
                read += 1
                if not isinstance(doc.get("_id"), str):
                    continue  # malformed(): quarantined by its own sweep
                last = doc["_id"]
                parsed = dependencies.blocked_fields(doc.get("options"), doc.get("at"))
                if isinstance(parsed, str):
                    self._undecidable[doc["_id"]] = parsed  # malformed() reports it
                    continue
                page.append((doc["_id"], *parsed, doc.get("pending"), doc.get("created")))
                total += len(parsed[0])
                if total >= _SWEEP_DEPS:
                    break
        full = read >= _SWEEP_JOBS or total >= _SWEEP_DEPS
        self._swept_after = last if full else None
        with self._errors("sweep blocked jobs"):
            named = list(dict.fromkeys(d for _, deps, *_ in page for d in deps))
            found = self._by_ids(named, {"status": 1, "created": 1})
        for job_id, deps, on_failure, at, pending, created in page:
            statuses = _dependency_statuses(deps, found, created)
            decision = dependencies.decide(statuses, on_failure=on_failure, at=at, now=_t(now))
            if decision is None:
                left = sum(1 for _, st in statuses if st is not None and not st.is_final)
                if type(pending) is not int or pending > left:
                    with self._errors("count dependencies"):
                        self._jobs.update_one(
                            {"_id": job_id, "state": BLOCKED}, {"$min": {"pending": left}}
                        )
                continue
            try:
                branch = self._apply_branches(job_id, decision, None, _t(now), cascade=False)
            except StoreError as exc:
                _log().warning("dependency sweep: job not decided", job_id=job_id, error=str(exc))
                continue
            if branch is not None:
                decided += 1
                _log().info(
                    "dependency sweep decided a job a crash had left blocked",
                    job_id=job_id, status=branch.status.name if branch.status else None,
                )  # fmt: skip
                if branch.status is not None and branch.status.is_final:
                    self._release_logged([(job_id, branch.status)], now)
        return decided

    def _sweep_holds(self, now: float) -> int:
        """Finish workflow adds whose adder stopped past their ``hold_until``: release a
        committed one, delete the jobs of one that never committed (and is now aborted:
        its adder, if it wakes, finds the aborted record and says so)."""
        with self._errors("sweep held workflows"):
            batches = list(
                dict.fromkeys(
                    d["hold"]
                    for d in self._jobs.find(
                        {"hold_until": {"$lt": _t(now)}}, projection={"hold": 1}
                    ).limit(1000)
                    if isinstance(d.get("hold"), str)
                )
            )
            self._adds.delete_many({"at": {"$lt": _t(now - _ADD_RECORDS_KEPT)}})
        released = 0
        for batch in batches:
            with self._errors("sweep held workflows"):
                try:
                    self._adds.insert_one({"_id": batch, "state": "aborted", "at": _t(now)})
                    state = "aborted"
                except DuplicateKeyError:
                    record = self._adds.find_one({"_id": batch}) or {}
                    state = str(record.get("state"))
                ids = [d["_id"] for d in self._jobs.find({"hold": batch}, projection={"_id": 1})]
                if state == "committed":
                    self._jobs.update_many(
                        {"hold": batch}, {"$unset": {"hold": "", "hold_until": ""}}
                    )
                    self._adds.delete_one({"_id": batch})
                else:
                    self._jobs.delete_many({"hold": batch})
            if state == "committed":
                _log().warning(
                    "released a workflow whose adder stopped after committing it",
                    jobs=len(ids),
                )  # fmt: skip
                for job_id in ids:
                    self._decide_logged(job_id, now)
                released += len(ids)
            else:
                _log().warning(
                    "deleted a workflow whose add was interrupted before it was whole; "
                    "none of its jobs ran", jobs=len(ids),
                )  # fmt: skip
        return released

    def _hold_for_dependents(self, ids: list[str]) -> None:
        """Unset ``ended_at`` (what the TTL index expires by) of these final jobs while a
        job depending on them has not ended: it reads their results when it is claimed,
        and a dependency that expired would read as MISSING (failed). The maintenance
        pass sets it back (:meth:`_restore_retention`)."""
        with self._errors("hold results for dependents"):
            waiting = {
                dep
                for d in self._jobs.find(
                    {"deps": {"$in": ids}, "state": {"$ne": DONE}}, projection={"deps": 1}
                )
                for dep in d.get("deps") or ()
            } & set(ids)
            if waiting:
                self._jobs.update_many(
                    {"_id": {"$in": sorted(waiting)}, "state": DONE},
                    {"$unset": {"ended_at": ""}},
                )

    def _restore_retention(self, limit: int = 200) -> None:
        """Give final jobs held for their dependents their ``ended_at`` back once no job
        depending on them is unfinished (retention runs from their end, as for others)."""
        with self._errors("restore retention"):
            held = {
                d["_id"]: d.get("ended")
                for d in self._jobs.find(
                    {"state": DONE, "has_dependents": True, "ended_at": {"$exists": False}},
                    projection={"ended": 1},
                ).limit(limit)
            }
            if not held:
                return
            waiting = {
                dep
                for d in self._jobs.find(
                    {"deps": {"$in": list(held)}, "state": {"$ne": DONE}}, projection={"deps": 1}
                )
                for dep in d.get("deps") or ()
            }
            for job_id, ended in held.items():
                if job_id not in waiting and isinstance(ended, int | float):
                    self._jobs.update_one(
                        {"_id": job_id, "state": DONE, "ended_at": {"$exists": False}},
                        {"$set": {"ended_at": _date(ended)}},
                    )

    def dependency_states(
        self, ids: Sequence[str]
    ) -> dict[str, tuple[JobStatus | None, float | None]]:
        with self._errors("read dependencies"):
            found = self._by_ids(ids, {"status": 1, "created": 1})
        return {i: decode_state(d.get("status"), d.get("created")) for i, d in found.items()}

    def dependency_results(self, ids: Sequence[str]) -> dict[str, tuple[Any, int]]:
        with self._errors("read dependencies"):
            found = self._by_ids(ids, {"result": 1})
        out: dict[str, tuple[Any, int]] = {}
        for i, d in found.items():
            raw = d.get("result")
            out[i] = (decode_result(raw), len(raw) if isinstance(raw, str) else 0)
        return out

    def dependents(self, job_id: str) -> list[JobRecord]:
        with self._errors("find dependents"):
            docs = list(self._jobs.find({"deps": job_id}).sort("seq", 1))
            me = self._jobs.find_one({"_id": job_id}, projection={"created": 1}) or {}
        born = me.get("created")
        if type(born) in (int, float):
            # Added before it: the dependents of a purged job of that id, not of it.
            docs = [
                d
                for d in docs
                if not (type(d.get("created")) in (int, float) and d["created"] < born)
            ]
        return [_to_job(d) for d in docs]

    def _insert_docs(self, docs: list[Doc]) -> None:
        """Insert all or nothing (as far as MongoDB allows without transactions)."""
        ids = [d["_id"] for d in docs]
        # One document is all or nothing by itself: its duplicate key error says enough
        # (one round trip less per add_job). For a batch, the check first keeps a
        # duplicate from ever exposing a prefix of it that would have to be undone.
        existing = self._existing_ids(ids) if len(docs) > 1 else set()
        if existing:
            raise DuplicateJobId(next(i for i in ids if i in existing))
        batch = secrets.token_hex(8)
        for d in docs:
            d["ins"] = batch
        try:
            if len(docs) == 1:
                self._jobs.insert_one(docs[0])
            else:
                self._jobs.insert_many(docs, ordered=True)
        except (DuplicateKeyError, BulkWriteError) as exc:
            done = int(exc.details.get("nInserted", 0)) if isinstance(exc, BulkWriteError) else 0
            if isinstance(exc, BulkWriteError):
                errors = exc.details.get("writeErrors") or [{}]
                if errors[0].get("code") != 11000:
                    raise
            # A concurrent writer won a key between our check and our insert: undo ours.
            self._undo_insert(ids[:done], batch)
            failed = ids[done]
            if self._existing_ids([failed]):
                raise DuplicateJobId(failed) from None
            key = docs[done].get("once_key")
            raise _OnceKeyTaken(
                f"a job with once key {key!r} is already waiting or running; "
                "use add_job_once to share it"
            ) from None
        except ServerSelectionTimeoutError:
            raise  # never sent
        except ConnectionFailure:
            # The reply was lost: the ordered insert landed for a prefix of the batch.
            landed = self._jobs.count_documents({"_id": {"$in": ids}, "ins": batch})
            if landed == len(docs):
                return
            self._undo_insert(ids[:landed], batch)
            raise

    def _undo_insert(self, ids: list[str], batch: str) -> None:
        if ids:
            self._jobs.delete_many({"_id": {"$in": ids}, "ins": batch, "attempt": 0})

    def _existing_ids(self, ids: Sequence[str]) -> set[str]:
        found: set[str] = set()
        for i in range(0, len(ids), _IN_CHUNK):
            chunk = list(ids[i : i + _IN_CHUNK])
            found.update(
                d["_id"] for d in self._jobs.find({"_id": {"$in": chunk}}, projection={"_id": 1})
            )
        return found

    def insert_once(self, job: NewJob, same: Any, replace: Transition) -> tuple[JobRecord, bool]:
        if not job.once_key:
            self.insert([job])
            return self.get(job.id), True
        lock = f"k:{job.once_key}"
        for _ in range(100):
            with self._errors("add a job once"):
                found = self._jobs.find_one({"once": lock})
            if found is not None:
                existing = _to_job(found)
                if same(existing):
                    return existing, False
                # Only while it still holds the once key: it must give the key up.
                self._apply_branches(existing.id, replace, None, job.created, {"once": lock})
            doc = _new_job_doc(job, self._next_seq())
            try:
                with self._errors("add a job once"):
                    self._insert_docs([doc])
            except _OnceKeyTaken:
                continue  # another caller took the once key first: look again
            self._emit_after("insert", [_added_event(doc)])
            doc.pop("ins", None)
            return _to_job(doc), True
        raise StoreUnavailable(f"MongoDB store {self.url}: add_job_once kept racing; retry")

    # -- applying transitions ---------------------------------------------------------------
    def _branch_update(
        self, job_id: str, branch: Branch, token: str | None, now: float
    ) -> tuple[Doc, Doc | None]:
        """The update of one branch, and the document of its follow-up job (kept in the
        job until inserted: a crash between the two writes leaves it for the next
        maintenance pass instead of losing the series)."""
        update = change_update(branch.change, job_id, now)
        if token is not None and branch.change.release_claim:
            # Lost replies: our token in settled_by says that this settle was applied.
            update["$set"]["settled_by"] = token
        next_doc = None
        if branch.next_job is not None:
            next_doc = _new_job_doc(branch.next_job, self._next_seq())
            update["$set"].update(
                next_pending=True, next_job=next_doc, next_added=next_doc["status"]
            )
        return update, next_doc

    def _apply_branches(
        self,
        job_id: str,
        transition: Transition,
        token: str | None,
        now: float,
        extra: Doc | None = None,
        *,
        held_runnable: bool = False,
        cascade: bool = True,
        handover: Handover | None = None,
        events: list[Doc] | None = None,
    ) -> Branch | None:
        """The first branch whose guard holds, applied (findAndModify per branch, the guard
        in its filter), its event recorded and its follow-up inserted; None if none held.
        ``held_runnable``: a next occurrence not released yet counts as runnable.
        ``cascade``: then decide what the change means to jobs depending on this one (a
        final job's BLOCKED dependents; a job made BLOCKED itself, by a retry).
        ``handover``: keep the settled job's limit slot for the caller's claim; its event
        then goes to ``events``, which the caller records after the slots its claim did
        not take over are freed (so the workers it wakes find them free)."""
        now = _t(now)
        for branch in transition.branches:
            where = {"_id": job_id, **guard_filter(branch.guard, token, now), **(extra or {})}
            state = where.get("state")
            if held_runnable and state == READY:
                where["state"] = {"$in": [READY, HELD]}
            elif held_runnable and isinstance(state, dict) and READY in state.get("$in", ()):
                where["state"] = {"$in": [*state["$in"], HELD]}
            update, next_doc = self._branch_update(job_id, branch, token, now)
            if token is not None and branch.guard.held and branch.change.release_claim:
                doc = self._settle_one(job_id, token, where, update)
            else:
                with self._errors(transition.name):
                    doc = self._jobs.find_one_and_update(
                        where, update, projection=_EVENT_FIELDS,
                        return_document=ReturnDocument.AFTER,
                    )  # fmt: skip
            if doc is None:
                continue
            held = token is not None and branch.guard.held and branch.change.release_claim
            if held and token is not None:
                # Before the event: the workers it wakes find the slot free (or, kept for
                # the caller's claim, the caller records the event after its claim).
                self._free_settled([(doc, token)], handover)
            kept = held and handover is not None and isinstance(doc.get("lim"), str)
            if branch.event and kept and events is not None:
                events.append(_branch_event(doc, branch, now))
            elif branch.event:
                self._emit_after(transition.name, [_branch_event(doc, branch, now)])
            if next_doc is not None:
                self._insert_next_logged(job_id, next_doc)
            if doc.get("has_dependents") and branch.guard.statuses <= transitions.RETRYABLE:
                # A final job made runnable again (a retry): its dependents count it again
                # (lost if we crash here: the count is then too low, which is safe).
                self._recount_logged(job_id)
            if cascade and branch.status is JobStatus.BLOCKED:
                self._decide_logged(job_id, now)
            elif (
                cascade
                and branch.status is not None
                and branch.status.is_final
                and doc.get("has_dependents")  # named in a depends_on: look for dependents
            ):
                self._release_logged([(job_id, branch.status)], now)
            return branch
        return None

    def apply(
        self, job_id: str, transition: Transition, *, now: float, token: str | None = None
    ) -> Branch | None:
        return self._apply_branches(job_id, transition, token, now)

    def apply_series(
        self, series: str, transition: Transition, *, now: float
    ) -> list[tuple[str, Branch]]:
        """Without a transaction over the series: every job of it that is not final, and
        every next occurrence waiting in its parent to be inserted (changed there); then
        the series' latest occurrence, chased until it can lead to no further one. An
        occurrence that settles between a read and a write here creates its next one with
        a higher series_seq, so the chase finds it; the insert of a next occurrence is
        held until it has read its pending copy (see _insert_next), so a change made to
        the copy before that read is never lost, and after it the occurrence is found."""
        now = _t(now)
        applied: list[tuple[str, Branch]] = []
        with self._errors(transition.name):
            ids = [
                d["_id"]
                for d in self._jobs.find(
                    {**_series_member(series), "state": {"$in": [READY, RUNNING, HELD]}},
                    projection={"_id": 1},
                )
                if isinstance(d.get("_id"), str)
            ]
        tried: set[str] = set(ids)
        for job_id in ids:
            branch = self._apply_branches(job_id, transition, None, now, held_runnable=True)
            if branch is not None:
                applied.append((job_id, branch))
        self._apply_pending(series, transition, now, applied)
        pending_tried: set[str] = set()
        while True:
            with self._errors(transition.name):
                last = self._jobs.find_one(
                    _series_member(series),
                    sort=[("series_seq", -1)],
                    projection={"state": 1, "next_pending": 1},
                )
            job_id = (last or {}).get("_id")
            if last is None or not isinstance(job_id, str):
                return applied
            if last.get("state") in (READY, RUNNING, HELD):
                if job_id in tried:
                    return applied  # done with it, and it is still the latest
                tried.add(job_id)
                branch = self._apply_branches(job_id, transition, None, now, held_runnable=True)
                if branch is not None:
                    applied.append((job_id, branch))
            elif last.get("next_pending") and job_id not in pending_tried:
                pending_tried.add(job_id)
                self._apply_pending(series, transition, now, applied, parent=job_id)
            else:
                # Ended with nothing after it; or its next occurrence, changed in its
                # pending copy, is not inserted yet (its insert will read the change).
                return applied

    def _apply_pending(
        self,
        series: str,
        transition: Transition,
        now: float,
        applied: list[tuple[str, Branch]],
        *,
        parent: str | None = None,
    ) -> int:
        """``transition`` applied to the next occurrences of ``series`` (or of ``parent``
        alone) that wait in their parent to be inserted; how many it changed."""
        changed = 0
        where = {"_id": parent} if parent is not None else _series_member(series)
        with self._errors(transition.name):
            parents = [
                d["_id"]
                for d in self._jobs.find(
                    {**where, "next_pending": True}, projection={"next_job": 1}
                )
                if isinstance((d.get("next_job") or {}).get("_id"), str)
            ]
        for parent in parents:
            for branch in transition.branches:
                guard = guard_filter(branch.guard, None, now)
                update = change_update(branch.change, "", now)
                with self._errors(transition.name):
                    found = self._jobs.find_one({"_id": parent}, projection={"next_job": 1})
                    next_id = ((found or {}).get("next_job") or {}).get("_id")
                    if not isinstance(next_id, str):
                        break
                    sets = update["$set"]
                    if "once" in sets:
                        sets["once"] = f"j:{next_id}"
                    done = self._jobs.find_one_and_update(
                        {
                            "_id": parent,
                            "next_pending": True,
                            **{f"next_job.{k}": v for k, v in guard.items()},
                        },
                        _prefixed(update, "next_job."),
                        projection={"next_job": 1},
                        return_document=ReturnDocument.AFTER,
                    )
                if done is None:
                    continue
                # Its event is recorded when it is inserted, after its "added" event.
                applied.append((next_id, branch))
                changed += 1
                break
        return changed

    def claim(
        self,
        queues: Sequence[str],
        *,
        node: str,
        worker: str,
        token: str,
        lease: float,
        now: float,
        force_spawn: bool = False,
        job_id: str | None = None,
    ) -> JobRecord | None:
        now = _t(now)
        targets: list[tuple[str | None, Doc]]
        if job_id is not None:
            targets = [(None, {"_id": job_id, **guard_filter(transitions.CLAIMABLE, None, now)})]
        else:
            targets = [(q, _due(q, force_spawn, now)) for q in queues]
        update = _claim_update(token, node=node, worker=worker, lease=lease, now=now)
        doc = self._claim_gated(targets, update, token, now)
        if doc is not None:
            self._remembered.took()
            job = _to_job(doc)
            event = _event(doc, now, transitions.CLAIMED, node=node, worker=worker)
            self._emit_after("claim", [event])
            return job
        self._maintain()  # idle: a good moment (rate limited) for housekeeping
        return None

    def _claim_gated(
        self, targets: Sequence[tuple[str | None, Doc]], update: Doc, token: str, now: float,
        handover: Handover | None = None,
    ) -> Doc | None:  # fmt: skip
        """The best job of the first target (queue, filter; no queue: a claim by id) that
        has one which no limit or key holds back: the document after the claim.

        Optimistic first: the claim takes the best job as always (one findAndModify, its
        pre-image returned); only a job with a limit or key then takes its gates
        (gates.Gates.take), and one held back is given back as it was
        (:meth:`_give_back`). A queue where jobs with limits or keys turned up lately
        (and a claim by id) is claimed gates first instead (:meth:`_claim_peeking`), so
        that no job of a full limit is ever seen PROCESSING, not even for a moment:
        only the first held-back job a process meets in a queue is given back.
        ``handover``: slots of jobs settled in the same call, taken over first."""
        with self._errors("claim"):
            ex = _Excluded(self._remembered, self._gates, now, handover)
        until = update["$set"]["lease_until"]
        for queue, where in targets:
            if queue is None or self._peeking.get(queue, 0.0) > time.monotonic():
                doc = self._claim_peeking(where, update, token, now, ex, handover)
                if doc is not None:
                    return doc
                continue
            tries = 0
            while tries < _GATE_TRIES:
                after, before = self._claim_one(ex.where(where), update, _CLAIM_SORT, token)
                if after is None:
                    with self._errors("claim"):
                        if ex.recheck():
                            continue
                    break
                if not _gated(after):
                    return after
                self._peeking[queue] = time.monotonic() + _PEEKING
                tries += 1
                try:
                    with self._errors("claim"):
                        held = self._gates.take(after, token, until, now, handover=handover)
                except StoreError:
                    self._give_back_logged(after, before, token, now)
                    raise
                if held is None:
                    return after
                self._give_back(after, before, token, now)
                ex.add(held, now)
                doc = self._claim_peeking(where, update, token, now, ex, handover)
                if doc is not None:
                    return doc
                break
        return None

    def _claim_peeking(
        self, where: Doc, update: Doc, token: str, now: float, ex: _Excluded,
        handover: Handover | None = None,
    ) -> Doc | None:  # fmt: skip
        """Gates first: read the best few candidates (what limit and key each has), take
        the gates of the first one not held back, then claim it by id (a candidate
        another worker took first frees its gates; a rate's start it took stays used)."""
        until = update["$set"]["lease_until"]
        seen: dict[str, Doc | None] = {}
        for _ in range(_GATE_TRIES):
            with self._errors("claim"):
                rows = list(
                    self._jobs.find(ex.where(where), projection={"_id": 1, "lim": 1, "xkey": 1})
                    .sort(_CLAIM_SORT)
                    .limit(_PEEK)
                )
                if not rows:
                    if ex.recheck():
                        continue
                    return None
            for row in rows:
                gated = _gated(row)
                if gated:
                    if ex.skips(row):
                        continue
                    with self._errors("claim"):
                        held = self._gates.take(row, token, until, now, seen, handover)
                    if held is not None:
                        ex.add(held, now)
                        continue
                target = {"_id": row["_id"], **guard_filter(transitions.CLAIMABLE, None, now)}
                try:
                    after, _ = self._claim_one(target, update, _CLAIM_SORT, token)
                except StoreError:
                    if gated and token not in self._uncertain:
                        self._free_logged([token])  # never sent (a lost one may land)
                    raise
                if after is not None:
                    return after
                if gated:
                    self._free_logged([token])
        return None

    def _give_back(self, after: Doc, before: Doc | None, token: str, now: float) -> None:
        """Undo a claim whose job its limit or key holds back: the job as it was before
        (status, attempt, owner, times; no event, no lease), if still ours and no cancel
        was requested meanwhile; a cancel ends it CANCELED, never having run (as its
        worker would). Without the pre-image (the claim's reply was lost and the job
        found by its token) it becomes WAITING with its attempt given back."""
        job_id = after["_id"]
        if before is not None:
            sets = {k: before[k] for k in _CLAIM_RESTORED if k in before}
            unset = {k: "" for k in _CLAIM_RESTORED if k not in before}
        else:
            attempt = _count(after.get("attempt"))
            sets = {
                "status": int(JobStatus.WAITING), "state": READY, "attempt": max(0, attempt - 1),
                "claim_token": None, "lease_until": None, "node": None, "worker": None,
                "started": None, "progress": 0.0,
            }  # fmt: skip
            unset = {}
        update: Doc = {"$set": sets}
        if unset:
            update["$unset"] = unset
        where = {
            "_id": job_id,
            "state": RUNNING,
            "claim_token": token,
            "cancel_requested": {"$ne": True},
        }
        with self._errors("give a claimed job back"):
            if self._jobs.update_one(where, update).matched_count:
                return
        change = transitions.settle_change(JobStatus.CANCELED, reason="canceled", give_back=True)
        canceled = Transition("canceled", (Branch("canceled", transitions.HELD_CANCELED, change),))
        self._apply_branches(job_id, canceled, token, now)

    def _give_back_logged(self, after: Doc, before: Doc | None, token: str, now: float) -> None:
        try:
            self._give_back(after, before, token, now)
        except StoreError as exc:
            _log().warning(
                "a claimed job could not be given back; its lease will expire",
                job_id=after.get("_id"), error=str(exc),
            )  # fmt: skip

    def _claim_one(
        self, where: Doc, update: Doc, sort: list[tuple[str, int]], token: str
    ) -> tuple[Doc | None, Doc | None]:
        """One claim (findAndModify): the document after it and before it (None, None:
        nothing to claim). The pre-image is what a give-back restores; without it (a lost
        reply, the job found by its token) only the document after."""
        try:
            with self._errors("claim"):
                try:
                    before = self._jobs.find_one_and_update(
                        where, update, sort=sort, return_document=ReturnDocument.BEFORE
                    )
                    return (None, None) if before is None else (_claimed(before, update), before)
                except ServerSelectionTimeoutError:
                    raise  # never sent
                except ConnectionFailure as exc:
                    # The claim may have been applied: never re-issue it, look the token up.
                    lost = reason(exc)
                    found = self._jobs.find_one({"claim_token": token})
        except StoreUnavailable as exc:
            raise StoreUnavailable(
                f"{exc} (the claim's outcome is unknown; its lease will expire if it was taken)"
            ) from None
        if found is None:
            # Not applied yet. Claiming again here could give a second job the same token
            # if the first request is still queued on the server: let the caller retry,
            # and look the token up again later (it may still land: see _adopt).
            self._uncertain[token] = time.monotonic()
            raise StoreUnavailable(f"MongoDB store {self.url}: a claim's reply was lost: {lost}")
        return found, None

    def _settle_one(self, job_id: str, token: str, where: Doc, update: Doc) -> Doc | None:
        """One fenced settle (findAndModify): the job's event fields after it, None if its
        guard did not hold; StoreUnavailable if its reply was lost and it was not applied."""
        with self._errors("settle"):
            try:
                return self._jobs.find_one_and_update(
                    where, update, projection=_EVENT_FIELDS, return_document=ReturnDocument.AFTER
                )
            except ServerSelectionTimeoutError:
                raise  # never sent
            except ConnectionFailure as exc:
                # Applied or not? Our token in settled_by says it was; still holding it
                # says it was not (the caller retries: the write is fenced, so idempotent).
                doc = self._jobs.find_one(
                    {"_id": job_id}, projection={**_EVENT_FIELDS, "claim_token": 1, "settled_by": 1}
                )
                if doc is not None and doc.get("claim_token") == token:
                    raise StoreUnavailable(
                        f"MongoDB store {self.url}: a settle's reply was lost, not applied: "
                        f"{reason(exc)}"
                    ) from None
                if doc is not None and doc.get("settled_by") != token:
                    doc = None  # fenced off: another claim took the job meanwhile
                return doc

    def _insert_next_logged(self, job_id: str, next_doc: Doc) -> None:
        try:
            with self._errors("insert the next occurrence"):
                self._insert_next(job_id, next_doc)
        except StoreError as exc:
            _log().warning(
                "next occurrence not inserted yet; a later maintenance pass will",
                job_id=job_id,
                next_id=next_doc["_id"],
                error=str(exc),
            )

    def settle_batch(
        self,
        settles: Sequence[tuple[str, str, Transition]],
        *,
        now: float,
        claim: ClaimRequest | None = None,
    ) -> tuple[list[Branch | None], list[JobRecord]]:
        """Few round trips for a batch (no transactions: each job is written atomically on
        its own). Settles: one findAndModify for one; for several, one find (who still
        holds its token, and the event fields) and one unordered bulk update. Claims: one
        findAndModify for one; for several, a find of candidates per queue, one bulk
        update (each job its own token), one find back (docs/nx-27017.md, "Batches").
        The events of the whole batch: one insert.

        What a crash between these commands leaves: settles applied stand (fenced, with
        ``settled_by``); claims applied but not returned hold their jobs under a lease
        with this worker's name (the master settles them when the worker dies, else the
        lease reaper does); events not yet written are missing (as for any write whose
        process dies before its event)."""
        now = _t(now)
        events: list[Doc] = []
        nexts: list[tuple[str, Doc]] = []
        finals: list[tuple[str, JobStatus]] = []
        done: list[Branch | None]
        # The limit slots of the jobs settled go to the claim of this call first (see
        # gates.Handover); what it does not take over is freed before the events.
        hand = Handover() if claim is not None and claim.limit > 0 else None
        try:
            if len(settles) == 1:
                job_id, token, tr = settles[0]
                done = [self._apply_branches(job_id, tr, token, now, handover=hand, events=events)]
            elif settles:
                done = self._settle_many(settles, now, events, nexts, finals, hand)
            else:
                done = []
        except BaseException:
            if hand is not None:  # some settled (a lost reply): nothing claims their slots
                self._free_logged(hand.left())
            raise
        docs: list[Doc] = []
        try:
            if claim is not None and claim.limit > 0:
                docs = self._adopt(claim.lease)
                if len(docs) < claim.limit:
                    more = replace(claim, limit=claim.limit - len(docs))
                    docs += self._claim_batch(more, now, hand)
        except StoreError as exc:
            if not settles:
                raise
            # The settles stand; the caller's next claim meets the trouble.
            _log().warning("settled, but claiming more failed", error=str(exc))
        finally:
            if hand is not None:
                self._free_logged(hand.left())
            if docs:
                self._remembered.took()
            events += [
                _event(d, now, transitions.CLAIMED, node=d.get("node"), worker=d.get("worker"))
                for d in docs
            ]
            if events:
                self._emit_after("settle batch", events)
        for job_id, next_doc in nexts:
            self._insert_next_logged(job_id, next_doc)
        self._release_logged(finals, now)
        if claim is not None and not docs:
            self._maintain()  # idle: a good moment (rate limited) for housekeeping
        return done, [_to_job(d) for d in docs]

    def _settle_many(
        self,
        settles: Sequence[tuple[str, str, Transition]],
        now: float,
        events: list[Doc],
        nexts: list[tuple[str, Doc]],
        finals: list[tuple[str, JobStatus]],
        handover: Handover | None = None,
    ) -> list[Branch | None]:
        """Several fenced settles in two commands; appends their events, next
        occurrences and the jobs they made final (whose dependents the caller decides
        once the events are written). A settle's event fields are read while its token is
        still held, so they are the claim's, whatever happens to the job afterwards.
        ``handover``: their limit slots are kept for the caller's claim."""
        op = secrets.token_hex(8)  # marks what this call applied
        done: list[Branch | None] = [None] * len(settles)
        with self._errors("settle"):
            held = self._by_ids(
                list(dict.fromkeys(job_id for job_id, _, _ in settles)),
                {**_EVENT_FIELDS, "claim_token": 1, "state": 1},
            )
        ops: list[UpdateOne] = []
        todo: list[tuple[int, Doc, Doc | None]] = []  # (index, job before, next occurrence)
        seen: set[str] = set()
        for i, (job_id, token, tr) in enumerate(settles):
            doc = held.get(job_id)
            if doc is None or job_id in seen:
                continue  # no such job, or a second settle of it: fenced off
            if doc.get("claim_token") != token or doc.get("state") != RUNNING:
                continue  # a token, once gone, never comes back: fenced off
            seen.add(job_id)
            # The intended branch of each in the bulk write; one whose guard no longer
            # holds (a cancel requested since) is applied on its own below.
            branch = tr.intended
            update, next_doc = self._branch_update(job_id, branch, token, now)
            update["$set"]["settle_op"] = op
            where = {"_id": job_id, **guard_filter(branch.guard, token, now)}
            if not doc.get("has_dependents"):
                # A dependent added since our read flagged it: then this misses, and the
                # settle is applied on its own below, which sees the flag.
                where["has_dependents"] = {"$exists": False}
            ops.append(UpdateOne(where, update))
            todo.append((i, doc, next_doc))
        if not ops:
            return done
        applied: set[str] | None = None  # None: all applied
        lost: str | None = None
        with self._errors("settle"):
            try:
                matched = self._jobs.bulk_write(ops, ordered=False).matched_count
            except ServerSelectionTimeoutError:
                raise  # never sent
            except ConnectionFailure as exc:
                applied = self._settled_by(op, [doc["_id"] for _, doc, _ in todo])
                lost = reason(exc)
            else:
                if matched != len(ops):
                    # Another writer (the lease reaper) settled some between the two
                    # commands, with the same token: only our op marks ours.
                    applied = self._settled_by(op, [doc["_id"] for _, doc, _ in todo])
        # Their slots and keys, freed after the jobs' writes and before their events.
        self._free_settled(
            [
                (doc, settles[i][1])
                for i, doc, _ in todo
                if applied is None or doc["_id"] in applied
            ],
            handover,
        )
        missed: list[int] = []
        for i, doc, next_doc in todo:
            if applied is not None and doc["_id"] not in applied:
                missed.append(i)
                continue
            branch = settles[i][2].intended
            done[i] = branch
            back = -1 if branch.change.attempt is Attempt.GIVE_BACK else 0
            attempt = _count(doc.get("attempt")) + back  # as the update leaves it
            events.append(_branch_event(doc, branch, now, attempt=attempt))
            if next_doc is not None:
                nexts.append((doc["_id"], next_doc))
            if branch.status is not None and branch.status.is_final and doc.get("has_dependents"):
                finals.append((doc["_id"], branch.status))
        if lost is None:
            for i in missed:  # fenced off, or another branch's guard holds now
                job_id, token, tr = settles[i]
                done[i] = self._apply_branches(
                    job_id, tr, token, now, handover=handover, events=events
                )
        if lost is not None and applied is not None and len(applied) < len(todo):
            # The reply was lost and some settles did not land (or not yet): say so, so the
            # caller retries them (fenced, so idempotent); keep the events of those that did.
            self._emit_after("settle batch", events)
            for job_id, next_doc in nexts:
                self._insert_next_logged(job_id, next_doc)
            self._release_logged(finals, now)
            raise StoreUnavailable(
                f"MongoDB store {self.url}: a batch settle's reply was lost, "
                f"{len(todo) - len(applied)} of {len(todo)} not applied: {lost}"
            )
        return done

    def _free_settled(self, settled: list[tuple[Doc, str]], handover: Handover | None) -> None:
        """Free what the jobs just settled (documents, claim tokens) held, after their
        writes; with ``handover``, their limit slots are kept for the claim that follows
        in the same call (their keys are freed now)."""
        gated = [(doc, token) for doc, token in settled if _gated(doc)]
        if handover is None:
            self._free_logged([token for _, token in gated])
            return
        keys: list[str] = []
        for doc, token in gated:
            lim = doc.get("lim")
            if isinstance(lim, str):
                handover.add(lim, token)
            if doc.get("xkey") is not None or not isinstance(lim, str):
                keys.append(token)
        self._free_logged(keys, lims=False)

    def _free_logged(self, tokens: list[str], *, lims: bool = True) -> None:
        """Free the slots and keys (``lims`` False: the keys) of these claim tokens, after
        their jobs' writes: a failure is logged (the slots free themselves when their
        ``until`` passes)."""
        if not tokens:
            return
        self._remembered.clear()  # what we remember as full may have room now
        try:
            with self._errors("free limit slots"):
                self._gates.free(tokens, lims=lims)
        except StoreError as exc:
            _log().warning(
                "limit slots not freed; they free themselves when the lease would end",
                tokens=len(tokens), error=str(exc),
            )  # fmt: skip

    def _settled_by(self, op: str, ids: list[str]) -> set[str]:
        """Of these jobs, those a bulk settle marked with ``op`` applied."""
        docs = self._by_ids(ids, {"settle_op": 1})
        return {i for i, d in docs.items() if d.get("settle_op") == op}

    def _by_ids(self, ids: Sequence[str], projection: Doc | None = None) -> dict[str, Doc]:
        """Job documents by id (``_id $in``: an index lookup, SQL on nx-27017)."""
        found: dict[str, Doc] = {}
        for i in range(0, len(ids), _IN_CHUNK):
            chunk = list(ids[i : i + _IN_CHUNK])
            for d in self._jobs.find(_among("_id", chunk), projection=projection):
                found[d["_id"]] = d
        return found

    def _adopt(self, lease: float) -> list[Doc]:
        """Claims of this process whose reply was lost and that were not found then: a
        write still queued on the server may have landed since. Found ones are returned
        as claimed now (nobody else can hold them: the token is ours); the others are
        forgotten after a lease (if one lands later still, its lease expires)."""
        if not self._uncertain:
            return []
        with self._errors("claim"):
            docs = list(self._jobs.find(_among("claim_token", list(self._uncertain))))
        for d in docs:
            self._uncertain.pop(str(d.get("claim_token")), None)
        with self._errors("claim"):
            docs = [d for d in docs if self._gated_adopted(d)]
        limit = time.monotonic() - lease
        for token, since in list(self._uncertain.items()):
            if since < limit:
                del self._uncertain[token]
        if docs:
            _log().warning("claims whose reply was lost did land: running them", jobs=len(docs))
        return docs

    def _gated_adopted(self, doc: Doc) -> bool:
        """Whether a claim that landed after its reply was lost may run: one with a limit
        or key takes its gates again now (what it took before, if anything, is freed
        first); held back, it is given back (without its pre-image: see _give_back)."""
        if not _gated(doc):
            return True
        token, until = str(doc.get("claim_token")), doc.get("lease_until")
        now = _t(time.time())
        if not isinstance(until, int | float):
            return False
        self._gates.free([token])
        held = self._gates.take(doc, token, float(until), now)
        if held is None:
            return True
        self._give_back_logged(doc, None, token, now)
        return False

    def _claim_batch(
        self, claim: ClaimRequest, now: float, handover: Handover | None = None
    ) -> list[Doc]:
        """Claim up to ``claim.limit`` due jobs: the documents after the claim, in claim
        order. Never raises once a job is claimed (the caller must learn of every claim
        it can); StoreError if nothing was claimed and the store failed. ``handover``:
        slots of jobs just settled, taken over first."""
        if claim.limit == 1:
            update = _claim_update(
                claim.token_for(0), node=claim.node, worker=claim.worker, lease=claim.lease,
                now=now,
            )  # fmt: skip
            targets = [(q, _due(q, claim.force_spawn, now)) for q in dict.fromkeys(claim.queues)]
            doc = self._claim_gated(targets, update, claim.token_for(0), now, handover)
            return [] if doc is None else [doc]
        got: list[Doc] = []
        empty: set[str] = set()  # queues with fewer due jobs than asked for
        with self._errors("claim"):
            ex = _Excluded(self._remembered, self._gates, now, handover)
        for _ in range(_CLAIM_ROUNDS):
            try:
                more, complete = self._claim_round(claim, now, len(got), empty, ex, handover)
            except StoreError:
                if got:
                    return got
                raise
            got += more
            if not complete or len(got) >= claim.limit:
                break
        return got

    def _claim_round(
        self, claim: ClaimRequest, now: float, index: int, empty: set[str], ex: _Excluded,
        handover: Handover | None = None,
    ) -> tuple[list[Doc], bool]:  # fmt: skip
        """One round of a batch claim: find candidates (queues in order, then the claim's
        sort), claim each with its own token, read the claimed ones back. Returns them and
        whether the round ran to the end (False: no candidates, or a lost reply: another
        round could reuse a token that is still in flight).

        A candidate with a limit or key takes its gates first, under the token its claim
        will write (the candidates say what they need): one held back is skipped and its
        limit or key excluded from the next round; the gates of a candidate another
        worker claimed first are freed (a rate's start it took stays used)."""
        want = claim.limit - index
        rows: list[Doc] = []
        with self._errors("claim"):
            while True:
                for q in dict.fromkeys(claim.queues):
                    need = want - len(rows)
                    if need <= 0:
                        break
                    if q in empty:
                        continue
                    page = list(
                        self._jobs.find(
                            ex.where(_due(q, claim.force_spawn, now)),
                            projection={"_id": 1, "lim": 1, "xkey": 1},
                        )
                        .sort(_CLAIM_SORT)
                        .limit(need)
                    )
                    if len(page) < need:
                        empty.add(q)
                    if any(_gated(row) for row in page):
                        self._peeking[q] = time.monotonic() + _PEEKING
                    rows += page
                if rows or not ex.recheck():
                    break
                empty.clear()
        # Index-th job of this call gets token_for(index): tokens of candidates another
        # worker took first are reused by the next round (their updates wrote nothing).
        tokens: dict[str, str] = {}
        gated: dict[str, str] = {}  # candidate -> token, of those that took gates
        lease_until = _t(now + claim.lease)
        seen: dict[str, Doc | None] = {}
        for row in rows:
            token = claim.token_for(index + len(tokens))
            if _gated(row):
                if ex.skips(row):
                    continue
                try:
                    with self._errors("claim"):
                        held = self._gates.take(row, token, lease_until, now, seen, handover)
                except StoreError:
                    self._free_logged(list(gated.values()))
                    raise
                if held is not None:
                    ex.add(held, now)
                    continue
                gated[row["_id"]] = token
            tokens[row["_id"]] = token
        candidates = list(tokens)
        if not candidates:
            return [], bool(rows)
        ops = []
        for c in candidates:
            update = _claim_update(
                tokens[c], node=claim.node, worker=claim.worker, lease=claim.lease, now=now
            )
            where = {"_id": c, **guard_filter(transitions.CLAIMABLE, None, now)}
            ops.append(UpdateOne(where, update))
        complete = True
        try:
            with self._errors("claim"):
                try:
                    matched = self._jobs.bulk_write(ops, ordered=False).matched_count
                except ServerSelectionTimeoutError:
                    raise  # never sent
                except ConnectionFailure:
                    matched, complete = -1, False  # applied or not: look the tokens up
                except BulkWriteError as exc:
                    # A candidate the claim cannot write (another client's record: say an
                    # attempt that is not a number) fails alone; the others are claimed
                    # (unordered) and must be returned, or their leases end unannounced.
                    # The bad one is left to the quarantine sweep.
                    matched = int(exc.details.get("nMatched", 0) or 0)
                    failed = [candidates[e["index"]] for e in exc.details.get("writeErrors", [])]
                    _log().warning(
                        "a job the claim cannot write is left to the quarantine sweep",
                        jobs=failed[:10], error=str(exc.details.get("writeErrors", [])[:1]),
                    )  # fmt: skip
                if matched == 0:
                    self._free_logged(list(gated.values()))
                    return [], True
                docs = self._by_ids(candidates)
        except StoreUnavailable as exc:
            for c in candidates:
                self._uncertain[tokens[c]] = time.monotonic()
            raise StoreUnavailable(
                f"{exc} (the claim's outcome is unknown; its lease will expire if it was taken)"
            ) from None
        mine = [
            docs[c] for c in candidates if c in docs and docs[c].get("claim_token") == tokens[c]
        ]
        if complete and gated:
            # Gates of candidates others took first (a lost reply: those may still land,
            # and keep theirs until their lease would end).
            claimed = {d["_id"] for d in mine}
            self._free_logged([t for c, t in gated.items() if c not in claimed])
        if not complete:  # the ones not found may still land: look them up again later
            found = {d.get("claim_token") for d in mine}
            for c in candidates:
                if tokens[c] not in found:
                    self._uncertain[tokens[c]] = time.monotonic()
        if not complete and not mine:
            # None landed (yet): as for one claim, let the caller retry with a new token.
            raise StoreUnavailable(
                f"MongoDB store {self.url}: a batch claim's reply was lost (its outcome is "
                "unknown; its lease will expire if a job was taken)"
            )
        return mine, complete

    def _insert_next(self, job_id: str, doc: Doc) -> None:
        """Insert a series' next occurrence kept in job ``job_id`` (idempotent: its id is
        deterministic). It goes in held (never claimed), then becomes the pending copy as
        it is now (apply_series may have changed it, e.g. canceled; a maintenance pass may
        pass a changed copy as ``doc``), then the pending copy is dropped. apply_series
        changes the pending copy first and then every job of the series including held
        ones, so whichever runs second sees what the other did: a canceled series never
        runs another occurrence. The process whose insert landed records its events:
        "added" with the status the settle gave it, then the change made to the copy."""
        try:
            self._jobs.insert_one({**doc, "state": HELD})
            inserted = True
        except DuplicateKeyError:
            inserted = False  # already there (a retry, or the maintenance pass)
        parent = self._jobs.find_one({"_id": job_id}, projection={"next_job": 1, "next_added": 1})
        pending = (parent or {}).get("next_job")
        copy = pending if isinstance(pending, dict) and pending.get("_id") == doc["_id"] else doc
        added = (parent or {}).get("next_added", doc.get("status"))
        if inserted:
            self._emit_after("next occurrence", [{**_added_event(doc), "status": added}])
        # Status and state always from one copy: never a state alone.
        replaced = self._jobs.replace_one({"_id": doc["_id"], "state": HELD}, copy).matched_count
        if inserted and replaced and copy.get("status") != added:
            status = JobStatus(copy["status"])
            event = _event(copy, copy.get("updated") or time.time(), status, attempt=0,
                           reason=copy.get("reason"))  # fmt: skip
            self._emit_after("next occurrence", [event])
        self._jobs.update_one(
            {"_id": job_id, "next_pending": True},
            {"$unset": {"next_pending": "", "next_job": "", "next_added": ""}},
        )

    def renew_many(self, tokens: Iterable[str], branch: Branch, *, now: float) -> int:
        toks = list(tokens)
        total = 0
        where = guard_filter(replace(branch.guard, held=False), None, now)
        update = change_update(branch.change, "", now)
        until = update["$set"].get("lease_until")
        with self._errors("renew leases"):
            for i in range(0, len(toks), _IN_CHUNK):
                chunk = toks[i : i + _IN_CHUNK]
                if until is not None:
                    # Slots first: a job's slot never ends before its lease.
                    self._gates.renew(chunk, until)
                result = self._jobs.update_many({**_among("claim_token", chunk), **where}, update)
                total += result.matched_count
        return total

    def expired(self, now: float, limit: int = 100) -> list[JobRecord]:
        now = _t(now)
        with self._errors("find expired leases"):
            docs = list(
                self._jobs.find({"state": RUNNING, "lease_until": {"$lt": now}})
                .sort("lease_until", 1)
                .limit(limit)
            )
        return [_to_job(d) for d in docs]

    def malformed(self, limit: int = 100) -> list[JobRecord]:
        with self._errors("find malformed jobs"):
            docs = list(self._jobs.find(_MALFORMED).sort("seq", 1).limit(limit))
        out = []
        self._malformed_ids.clear()
        for doc in docs:
            record = _to_job(doc)
            self._malformed_ids[record.id] = doc.get("_id")  # maybe not a string
            if record.corrupt is None:  # decodes, yet claims cannot compare its fields
                record.corrupt = _malformed_why(doc)
            out.append(record)
        # And the BLOCKED jobs the dependency sweep found it cannot decide on.
        for record in self._still_undecidable(self._undecidable, limit - len(out)):
            record.corrupt = record.corrupt or self._undecidable[record.id]
            out.append(record)
        return out

    def quarantine(self, record: JobRecord, transition: Transition, *, now: float) -> bool:
        now = _t(now)
        branch = transition.intended
        # Errors replaced whatever the transition says: they may not be a list to append to.
        change = replace(branch.change, error=None, reset_errors=False)
        update = change_update(change, record.id, now)
        error = branch.change.error
        update["$set"]["errors"] = [json.dumps(error.to_dict())] if error else []
        with self._errors("quarantine a malformed job"):
            raw_id = self._malformed_ids.get(record.id, record.id)
            # $eq: an _id that is a document must match whole, not read as operators.
            # Still malformed; or, one the dependency sweep could not decide on, BLOCKED.
            fence = {"state": BLOCKED} if self._undecidable.pop(record.id, None) else _MALFORMED
            where = {"_id": {"$eq": raw_id}, **fence}
            result = self._jobs.update_one(where, update)
        if result.matched_count != 1:
            return False
        fields = {"_id": record.id, "cls": record.cls, "queue": record.queue}
        event = _event(
            fields, now, branch.event_status,
            attempt=record.attempt, node=record.node, worker=record.worker, error=error,
            reason=branch.reason,
        )  # fmt: skip
        self._emit_after("quarantine", [event])
        status = branch.status
        if status is not None and status.is_final and isinstance(raw_id, str):
            self._release_logged([(raw_id, status)], now)
        return True

    # -- reading ------------------------------------------------------------------------
    def get(self, job_id: str) -> JobRecord:
        with self._errors("get a job"):
            doc = self._jobs.find_one({"_id": job_id})
        if doc is None:
            raise JobNotFound(job_id)
        return _to_job(doc)

    def find(self, query: JobQuery) -> list[JobRecord]:
        where: Doc = {}
        if query.statuses:
            where.update(_among("status", [int(s) for s in query.statuses]))
        if query.classes:
            where.update(_among("cls", list(query.classes)))
        if query.queues:
            where.update(_among("queue", list(query.queues)))
        if query.ids:
            where.update(_among("_id", list(query.ids)))
        if query.series is not None:
            where["$or"] = [{"series": query.series}, {"_id": query.series}]
        ands: list[Doc] = []
        if query.series is not None and query.recurring:
            ands.append({"$or": where.pop("$or")})  # two $or: both under one $and
        created: Doc = {}
        if query.since is not None:
            created["$gte"] = _t(query.since)
        if query.until is not None:
            created["$lt"] = _t(query.until)
        if created:
            where["created"] = created
        seq: Doc = {}
        if query.before_seq is not None:
            seq["$lt"] = query.before_seq
        if query.after_seq is not None:
            seq["$gt"] = query.after_seq
        if seq:
            where["seq"] = seq
        if query.id_prefix:  # a range on _id: a regex would read its characters
            end = prefix_end(query.id_prefix)
            where["_id"] = {"$gte": query.id_prefix, **({"$lt": end} if end else {})}
            if query.ids:
                ands.append(_among("_id", list(query.ids)))
        if query.recurring:
            # The pending occurrence: runnable, held ones (not released yet) included.
            # Both options are always stored (interval 0.0, cron None when unset).
            statuses = [int(s) for s in RUNNABLE]
            if query.statuses:
                statuses = [s for s in statuses if JobStatus(s) in query.statuses] or [-1]
            where.update(_among("status", statuses))
            recurs = [{"options.interval": {"$gt": 0}}, {"options.cron": {"$nin": [None, ""]}}]
            if "$or" in where:
                ands.append({"$or": recurs})
            else:
                where["$or"] = recurs
        if ands:
            where["$and"] = ands
        with self._errors("list jobs"):
            cursor = self._jobs.find(where).sort("seq", -1 if query.newest_first else 1)
            if query.limit is not None:
                if query.limit == 0:
                    return []
                cursor = cursor.limit(query.limit)
            docs = list(cursor)
        return [_to_job(d) for d in docs]

    def cancel_requested(self, tokens: Iterable[str]) -> list[str]:
        toks = list(tokens)
        out: list[str] = []
        with self._errors("poll cancel requests"):
            for i in range(0, len(toks), _IN_CHUNK):
                chunk = toks[i : i + _IN_CHUNK]
                out.extend(
                    d["claim_token"]
                    for d in self._jobs.find(
                        {
                            **_among("claim_token", chunk),
                            "state": RUNNING,
                            "cancel_requested": True,
                        },
                        projection={"claim_token": 1},
                    )
                )
        return out

    def count_due(
        self, queues: Sequence[str], *, now: float, force_spawn: bool, limit: int | None = None
    ) -> int:
        """Due jobs, less those a limit or key holds back (a pool needs no worker for
        them): the gates are read first (two small reads)."""
        now = _t(now)
        total = 0
        with self._errors("count due jobs"):
            closed = self._gates.closed(now)
            for q in dict.fromkeys(queues):
                if limit is not None and total >= limit:
                    break
                extra: dict[str, Any] = {} if limit is None else {"limit": max(1, limit - total)}
                # The count command, not count_documents (an aggregate): nx-27017 runs the
                # aggregate in Python over every ready job (~25x slower), and masters count
                # on every wake-up. On a sharded cluster count may include orphans during
                # a migration: fine for sizing a worker pool.
                reply = self._db.command(
                    "count",
                    self.jobs_collection,
                    query=excluding(
                        {"state": READY, "queue": q, "spawn": bool(force_spawn), "at": {"$lte": now}},
                        closed.full | set(closed.opens), closed.keys,
                    ),
                    **extra,
                )  # fmt: skip
                total += int(reply.get("n", 0))
        return total

    def next_due(self, queues: Sequence[str]) -> float | None:
        """As the base says. The earliest job of each queue first (as always); only when
        one that is due has a limit or key are the gates read, and the jobs they hold
        back left out (those of a rate-closed limit count from its next start). The gates
        a claim of this process read just before (an idle worker's) are used as read, and
        the jobs they hold back left out at once."""
        now = _t(time.time())
        best: float | None = None
        closed = self._remembered.recent()
        with self._errors("find the next due job"):
            if closed is None:
                gated = False
                for q in dict.fromkeys(queues):
                    at, doc = self._earliest({"state": READY, "queue": q})
                    gated = gated or (_gated(doc) and at is not None and at <= now)
                    if at is not None and (best is None or at < best):
                        best = at
                if not gated:
                    return best
                closed = self._gates.closed(now)
                if closed.empty:
                    return best
            best = None
            skip = closed.full | set(closed.opens)
            for q in dict.fromkeys(queues):
                at, _ = self._earliest(excluding({"state": READY, "queue": q}, skip, closed.keys))
                if at is not None and (best is None or at < best):
                    best = at
                for name, opens in closed.opens.items():
                    at, _ = self._earliest(
                        excluding({"state": READY, "queue": q, "lim": name}, set(), closed.keys)
                    )
                    if at is not None and (best is None or max(at, opens) < best):
                        best = max(at, opens)
        return best

    def _earliest(self, where: Doc) -> tuple[float | None, Doc | None]:
        """The due time of the earliest job matching ``where``, and its document."""
        doc = self._jobs.find_one(
            where, sort=[("at", 1)], projection={"at": 1, "lim": 1, "xkey": 1}
        )
        # Numbers sort before text: a text `at` shows only when no job has a time.
        # (Null sorts first: the sweep quarantines such a job soon.)
        at = doc.get("at") if doc is not None else None
        return (float(at), doc) if isinstance(at, int | float) else (None, doc)

    # -- limits (taskschedd.limits; the documents: gates) ---------------------------------
    def set_limit(self, spec: LimitSpec) -> None:
        now = _t(time.time())
        with self._errors("set a limit"):
            running = [
                (d["_id"], d["claim_token"], float(d["lease_until"]))
                for d in self._jobs.find(
                    {"state": RUNNING, "lim": spec.name, "lease_until": {"$gte": now}},
                    projection={"claim_token": 1, "lease_until": 1},
                )
                if isinstance(d.get("claim_token"), str)
                and isinstance(d.get("lease_until"), int | float)
            ]
            self._gates.set_limit(spec, running)
        self._remembered.clear()

    def delete_limit(self, name: str) -> bool:
        with self._errors("delete a limit"):
            gone = self._gates.delete_limit(name)
        self._remembered.clear()
        return gone

    def limit_specs(self) -> list[LimitSpec]:
        with self._errors("read limits"):
            return [spec for _, (spec, _doc) in sorted(self._gates.specs().items())]

    def limits(self, *, now: float) -> list[LimitState]:
        """Running, of a limit with max_running: its slots held now, what its claims
        decide by (a job being given back, or whose slot is still being freed, is not
        counted or is, as the claims see it); of a rate-only limit: its jobs PROCESSING
        with a lease not over."""
        now = _t(now)
        out: list[LimitState] = []
        with self._errors("read limits"):
            specs = sorted(self._gates.specs().items())
            slots = self._gates.held(now) if specs else []
            for name, (spec, doc) in specs:
                if spec.max_running is not None:
                    running = sum(1 for d in slots if d.get("kind") == LIM and d.get("lim") == name)
                else:
                    running = self._count(
                        {"state": RUNNING, "lim": name, "lease_until": {"$gte": now}}
                    )
                waiting = self._count(
                    {"state": READY, "lim": name, "at": {"$lte": now}, "status": _CLAIMABLE_RANGE}
                )
                starts: tuple[float, ...] = ()
                if spec.rate is not None:
                    starts = tuple(window(as_times(doc.get("starts")), now, spec.rate.period))
                out.append(LimitState(spec, running, waiting, starts))
        return out

    def _count(self, query: Doc) -> int:
        # The count command (see count_due: nx-27017 runs count_documents in Python).
        return int(self._db.command("count", self.jobs_collection, query=query).get("n", 0))

    def key_holders(self, keys: Sequence[str], *, now: float) -> dict[str, str]:
        """The jobs holding these keys' documents now (held while their leases last)."""
        if not keys:
            return {}
        with self._errors("read exclusive keys"):
            return self._gates.key_holders(keys, _t(now))

    #: Whether the server evaluates a compound $group key (None: not asked yet).
    _compound_groups: bool | None = None

    def stat_rows(self, *, now: float, since: float) -> StatRows:
        with self._errors("stats"):
            groups = self._count_groups()
            # What a claim could take now (the claim's state and status range).
            runnable = {"$gte": int(JobStatus.WAITING), "$lte": int(JobStatus.POSTPONED)}
            oldest = self._jobs.aggregate(
                [
                    {"$match": {"state": READY, "at": {"$lte": _t(now)}, "status": runnable}},
                    {"$group": {"_id": "$queue", "at": {"$min": "$at"}}},
                ]
            )
            oldest_due = [(r.get("_id"), r.get("at")) for r in oldest]
            ended = self._jobs.aggregate(
                [
                    {"$match": {"state": DONE, "ended": {"$gte": _t(since)}}},  # (state, ended)
                    {"$group": {"_id": "$status", "n": {"$sum": 1}}},
                ]
            )
            ended_rows = [(r.get("_id"), _count(r.get("n"))) for r in ended]
        return StatRows(groups=groups, oldest_due=oldest_due, ended=ended_rows)

    def counts(self) -> list[tuple[Any, Any, Any, int]]:
        with self._errors("count jobs"):
            return [row for row in self._count_groups() if row[3] > 0]

    def _count_groups(self) -> list[tuple[Any, Any, Any, int]]:
        """(status, queue, cls, count) of every job: one $group by the three fields. A
        server that cannot group by a compound key (nx-27017 answers the key unevaluated,
        after a scan in Python: 14 s at 100k jobs) is asked instead for the queues and
        classes of the jobs of each status, a $group by one field that it runs as SQL,
        and they are counted here."""
        if self._compound_groups is None:
            self._compound_groups = self._groups_by_compound_key()
        if self._compound_groups:
            out: list[tuple[Any, Any, Any, int]] = []
            key = {"s": "$status", "q": "$queue", "c": "$cls"}
            for row in self._jobs.aggregate([{"$group": {"_id": key, "n": {"$sum": 1}}}]):
                k = row.get("_id")
                k = k if isinstance(k, dict) else {}  # absent fields are absent from the key
                out.append((k.get("s"), k.get("q"), k.get("c"), _count(row.get("n"))))
            return out
        counts: dict[tuple[Any, Any, Any], int] = {}
        loose: list[tuple[Any, Any, Any, int]] = []
        for row in self._jobs.aggregate(
            [{"$group": {"_id": "$status", "q": {"$push": "$queue"}, "c": {"$push": "$cls"}}}]
        ):
            status, queues, classes = row.get("_id"), row.get("q"), row.get("c")
            if not isinstance(queues, list) or not isinstance(classes, list):
                continue
            if len(queues) != len(classes):  # a server that skips absent values
                loose.append((status, None, None, max(len(queues), len(classes))))
                continue
            for queue, cls in zip(queues, classes, strict=True):
                try:
                    counts[status, queue, cls] = counts.get((status, queue, cls), 0) + 1
                except TypeError:  # a list or document that another client stored there
                    loose.append((status, queue, cls, 1))
        return [(*k, n) for k, n in counts.items()] + loose

    def _groups_by_compound_key(self) -> bool:
        """Whether the server groups by a compound key: asked of one literal document
        ($documents: MongoDB >= 5.1), not of the jobs."""
        probe: list[Doc] = [
            {"$documents": [{"a": 1}]},
            {"$group": {"_id": {"a": "$a"}, "n": {"$sum": 1}}},
        ]
        try:
            rows = list(self._db.aggregate(probe))
        except OperationFailure as exc:
            if _is_transient(exc):
                raise
            return False
        return [(r.get("_id"), r.get("n")) for r in rows] == [({"a": 1}, 1)]

    # -- events -------------------------------------------------------------------------
    def events(
        self,
        *,
        after: int = 0,
        job_ids: Sequence[str] = (),
        limit: int = 1000,
        since: float | None = None,
    ) -> list[EventRecord]:
        if limit <= 0:
            return []
        where: Doc = {"seq": {"$gt": after}}
        if job_ids:
            where.update(_among("job_id", list(job_ids)))
        if since is not None:
            where["time"] = {"$gte": since}
        with self._errors("read events"):
            # One more than asked: the floor document may be among them (it has no job).
            docs = list(self._events.find(where).sort("seq", 1).limit(limit + 1))
        return [_to_event(d) for d in docs if d["_id"] != FLOOR_ID][:limit]

    def last_event_seq(self) -> int:
        with self._errors("read the last event"):
            return self._event_log.top_seq()

    def _open_stream(self) -> Any:
        with self._errors("open a change stream"):
            db = self._db
            if not self._use_streams:
                return None
            return db[self.events_collection].watch(
                [{"$match": {"operationType": "insert"}}], max_await_time_ms=STREAM_AWAIT_MS
            )

    def waker(self) -> Waker:
        """Change streams when enabled and supported, else polling ``last_event_seq()``."""
        opener = None if self.change_streams == "off" else self._open_stream
        waker = MongoWaker(
            poll=self.last_event_seq, interval=self.poll_interval, open_stream=opener
        )
        self._wakers.add(waker)
        return waker

    # -- housekeeping -------------------------------------------------------------------
    def purge(self, *, statuses: Sequence[JobStatus], ended_before: float) -> int:
        finals = [int(s) for s in statuses if s.is_final]
        if not finals:
            return 0
        total = 0
        with self._errors("purge"):
            self._event_log.raise_floor()
            kept: list[Any] = []
            while True:
                found = list(
                    self._jobs.find(
                        {
                            "state": DONE,
                            **_among("status", finals),
                            "ended": {"$lt": _t(ended_before)},
                            **({"_id": {"$nin": kept}} if kept else {}),
                        },
                        projection={"_id": 1, "next_pending": 1},
                    ).limit(_IN_CHUNK)
                )
                if not found:
                    return total
                # One whose next occurrence is not inserted yet is kept for that (a final
                # job never becomes pending again: nothing to race; few are pending).
                kept += [d["_id"] for d in found if d.get("next_pending")]
                ids = [d["_id"] for d in found if not d.get("next_pending")]
                # One with a dependent that has not ended is kept: the dependent reads its
                # result when claimed (and on each retry).
                needed = {
                    dep
                    for d in self._jobs.find(
                        {"deps": {"$in": ids}, "state": {"$ne": DONE}}, projection={"deps": 1}
                    )
                    for dep in d.get("deps") or ()
                } & set(ids)
                kept += list(needed)
                ids = [i for i in ids if i not in needed]
                if not ids:
                    continue
                # Events first: if we stop half-way, the next purge finds the jobs again.
                self._events.delete_many(_among("job_id", ids))
                total += self._jobs.delete_many({"_id": {"$in": ids}, "state": DONE}).deleted_count

    def flush(self) -> None:
        with self._errors("flush"):
            top = self._event_log.raise_floor()
            self._events.delete_many({"seq": {"$lte": top}, "_id": {"$ne": FLOOR_ID}})
            self._jobs.delete_many({})
            self._adds.delete_many({})
            self._gates.clear()  # definitions stay (as on SQLite); their holders are gone

    @staticmethod
    def _node_doc(node: NodeRecord) -> Doc:
        return {
            "_id": node.name,
            "host": node.host,
            "pid": int(node.pid),
            "started": float(node.started),
            "heartbeat": float(node.heartbeat),
            "workers_busy": int(node.workers_busy),
            "workers_idle": int(node.workers_idle),
            "running": list(node.running),
            "queues": list(node.queues),
            "version": node.version,
            "instance": node.instance,
            "live_until": float(node.live_until),
            "pid_ns": node.pid_ns,
            "boot": float(node.boot),
        }

    def register_node(
        self, node: NodeRecord, *, now: float, window: float, replace: str | None = None
    ) -> NodeRecord | None:
        # One upsert whose filter matches only an entry we may take: a live entry of
        # another instance makes the upsert insert a second _id, which the unique _id
        # index refuses, so of two nodes registering one name at once one gets it. An
        # entry is live until its own live_until; one of 0.4 (none, or 0) for ``window``
        # after its heartbeat.
        takeable: Doc = {
            "_id": node.name,
            "$or": [
                {"live_until": {"$lt": float(now), "$gt": 0}},
                {
                    "live_until": {"$in": [None, 0]},
                    "heartbeat": {"$lt": float(now) - float(window)},
                },
                {"heartbeat": {"$lt": float(now) - LIVE_AT_MOST}},
                {"instance": {"$in": [node.instance, *([replace] if replace else [])]}},
            ],
        }
        with self._errors("register the node"):
            for _ in range(3):  # the holder may leave between the upsert and the read
                try:
                    self._nodes.replace_one(takeable, self._node_doc(node), upsert=True)
                    return None
                except DuplicateKeyError:
                    pass
                doc = self._nodes.find_one({"_id": node.name})
                if doc is None:
                    continue
                holder = self._decode_node(doc)
                if holder is not None:
                    return holder
                # Another client's entry that does not decode: taken, if still as read.
                if self._nodes.replace_one(doc, self._node_doc(node)).matched_count:
                    return None
            raise StoreUnavailable(f"node {node.name!r}: its registry entry keeps changing")

    def heartbeat(self, node: NodeRecord) -> bool:
        with self._errors("heartbeat"):
            doc = self._node_doc(node)
            mine: Any = node.instance or {"$in": ["", None]}  # "": also an entry of 0.4
            if self._nodes.replace_one({"_id": node.name, "instance": mine}, doc).matched_count:
                written = True
            else:
                try:
                    self._nodes.insert_one(doc)
                    written = True
                except DuplicateKeyError:
                    written = False  # another instance's entry: taken over
        self._maintain()
        return written

    def _maintain(self) -> None:
        """Runs on heartbeats and idle claims, at most every 30 s: keep the seq floor close
        to the top, so TTL expiry of every event cannot make seqs restart; insert next
        occurrences whose settle was interrupted before it could insert them."""
        now = time.monotonic()
        if now - self._maintained < _MAINTENANCE_EVERY:
            return
        self._maintained = now
        try:
            with self._errors("maintenance"):
                self._event_log.raise_floor()
                for doc in self._jobs.find(
                    {"next_pending": True}, projection={"next_job": 1}
                ).limit(100):
                    if isinstance(doc.get("next_job"), dict):
                        self._insert_next(doc["_id"], doc["next_job"])
                self._restore_retention()
                self._gates.sweep_keys(_t(time.time()))
        except StoreError as exc:
            _log().warning("store maintenance failed; will retry", error=str(exc))
            self._maintained = 0.0

    def nodes(self, *, alive_after: float | None = None) -> list[NodeRecord]:
        where: Doc = {} if alive_after is None else {"heartbeat": {"$gte": alive_after}}
        with self._errors("list nodes"):
            docs = list(self._nodes.find(where).sort("_id", 1))
        nodes = (self._decode_node(d) for d in docs)
        return [n for n in nodes if n is not None]  # another client's entry: left out

    @staticmethod
    def _decode_node(d: Doc) -> NodeRecord | None:
        fields = ("_id", "host", "pid", "started", "heartbeat")
        return decode_node([*(d.get(f) for f in fields), d.get("workers_busy", 0),
                            d.get("workers_idle", 0), d.get("running") or [],
                            d.get("queues") or [], d.get("version", ""),
                            d.get("instance", ""), d.get("live_until"), d.get("pid_ns"),
                            d.get("boot")])  # fmt: skip

    def remove_node(self, name: str, instance: str | None = None) -> None:
        where: Doc = {"_id": name}
        if instance is not None:
            where["instance"] = instance or {"$in": ["", None]}
        with self._errors("remove a node"):
            self._nodes.delete_one(where)

    def close(self) -> None:
        for waker in list(self._wakers):
            waker.close()  # their threads would reconnect the store
        with self._lock:
            client = self._client_obj
            if client is not None and self._pid == os.getpid():
                with contextlib.suppress(Exception):
                    client.close()
            self._client_obj = None
            self._db_obj = None
            self._ready = False

    def __repr__(self) -> str:
        return f"MongoStore({self.url!r})"
