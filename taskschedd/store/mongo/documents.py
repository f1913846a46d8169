"""Job and event documents: how store records map to MongoDB documents and back."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping, Sequence
from typing import Any

from taskschedd.model import RUNNABLE, ErrorInfo, EventRecord, JobRecord, JobStatus, NewJob
from taskschedd.store.decode import decode_doc, decode_event

Doc = dict[str, Any]

READY, RUNNING, DONE = "ready", "running", "final"
#: A next occurrence inserted but not released yet (never claimed; see _insert_next).
HELD = "held"
#: A job waiting on its dependencies (status BLOCKED): found by its ``deps`` array.
BLOCKED = "blocked"

#: (and whether a job was ever named in another's depends_on: only then does a settle
#: look for BLOCKED dependents, so a plain settle costs no extra round trip)
#: (and the job's limit and exclusive key: a settle frees their slots only when set)
_EVENT_FIELDS = {
    "attempt": 1, "cls": 1, "queue": 1, "node": 1, "worker": 1, "has_dependents": 1,
    "lim": 1, "xkey": 1,
}  # fmt: skip


def _state(status: JobStatus) -> str:
    if status in RUNNABLE:
        return READY
    if status is JobStatus.BLOCKED:
        return BLOCKED
    return DONE if status.is_final else RUNNING


def _t(ts: float) -> float:
    """A job time as stored: 15 significant digits (10 us for today's epoch seconds).

    nx-27017 writes floats given to update operators through SQLite's JSON functions,
    which keep 15 significant digits, while inserts keep all 17. Rounding every job time
    (and every bound compared with one) the same way first makes the stored value and
    the comparisons identical on nx-27017 and MongoDB.
    """
    return float(f"{ts:.15g}")


def _date(ts: float) -> dt.datetime:
    """A BSON date for TTL indexes only (nx-27017 compares dates to the whole second)."""
    return dt.datetime.fromtimestamp(ts, tz=dt.UTC)


def _among(field: str, values: Sequence[Any]) -> Doc:
    """Equality for one value (an SQL filter on nx-27017), ``$in`` for several."""
    return {field: values[0]} if len(values) == 1 else {field: {"$in": list(values)}}


def _to_job(doc: Doc) -> JobRecord:
    return decode_doc(doc, _JOB_NAMES)


def _to_event(doc: Doc) -> EventRecord:
    return decode_event([doc.get(f) for f in _EVENT_VALUES])


_JOB_NAMES = {"id": "_id"}
_EVENT_VALUES = (
    "seq", "job_id", "time", "status", "attempt", "cls", "queue", "node", "worker", "error",
    "reason",
)  # fmt: skip


def _attempt(job: Mapping[str, Any]) -> int:
    value = job.get("attempt", 0)
    return int(value) if type(value) in (int, float) and abs(value) < 2**53 else 0


def _event(
    job: Mapping[str, Any],
    now: float,
    status: JobStatus,
    *,
    attempt: int | None = None,
    node: str | None = None,
    worker: str | None = None,
    error: ErrorInfo | None = None,
    reason: str | None = None,
) -> Doc:
    """An event for ``job`` (a job document with at least _id, cls, queue, attempt)."""
    return {
        "job_id": job["_id"],
        "time": float(now),
        "status": int(status),
        "attempt": _attempt(job) if attempt is None else int(attempt),
        "cls": job["cls"],
        "queue": job["queue"],
        "node": node,
        "worker": worker,
        "error": json.dumps(error.to_dict()) if error else None,
        "reason": reason,
        "ended_at": _date(now),  # events are final when written: TTL only
    }


def _new_job_doc(job: NewJob, seq: int) -> Doc:
    """The document of a new job; ``seq`` orders it for FIFO (see the package docstring)."""
    opts = job.options
    final = job.status.is_final
    doc: Doc = {
        "_id": job.id,
        "cls": job.cls,
        "data": job.data_json,
        "status": int(job.status),
        "state": _state(job.status),
        "queue": opts.queue,
        "priority": int(opts.priority),
        "spawn": bool(opts.ignore_max_children),
        "at": _t(job.at),
        "seq": seq,
        "created": _t(job.created),
        "started": None,
        "ended": _t(job.created) if final else None,
        "attempt": 0,
        "options": opts.stored(),
        "result": None,
        "errors": [],
        "progress": 0.0,
        "reason": None,
        "node": None,
        "worker": None,
        "claim_token": None,
        "lease_until": None,
        "cancel_requested": False,
        "series": job.series,
        "series_seq": int(job.series_seq),
        "once_key": job.once_key,
        "once": f"k:{job.once_key}" if job.once_key and not final else f"j:{job.id}",
        "updated": _t(job.created),
    }
    if final:
        doc["ended_at"] = _date(job.created)
    # Only when set: what the claim's filters and the gates read (taskschedd.limits).
    if opts.limit is not None:
        doc["lim"] = opts.limit
    if opts.exclusive_key is not None:
        doc["xkey"] = opts.exclusive_key
    if opts.depends_on:
        doc["deps"] = list(opts.depends_on)  # what a settle looks its dependents up by
        # Dependencies not final yet, as far as settles have counted down: only a job
        # counted to 0 is read in full, so a fan-in of n costs n reads, not n^2.
        doc["pending"] = len(opts.depends_on)
    return doc


def _gated(doc: Mapping[str, Any] | None) -> bool:
    """Whether a job document joins a limit or has an exclusive key."""
    return doc is not None and (doc.get("lim") is not None or doc.get("xkey") is not None)


def _added_event(doc: Doc) -> Doc:
    """The event of a job just inserted."""
    return _event(doc, doc["created"], JobStatus(doc["status"]), attempt=0, reason="added")
