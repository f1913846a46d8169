"""Job and event documents: how store records map to MongoDB documents and back."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping, Sequence
from typing import Any, cast

from taskschedd.job import RUNNABLE, JobStatus
from taskschedd.options import JobOptions
from taskschedd.store.base import ErrorInfo, EventRecord, JobRecord, NewJob

Doc = dict[str, Any]

READY, RUNNING, DONE = "ready", "running", "final"

_EVENT_FIELDS = {"attempt": 1, "cls": 1, "queue": 1, "node": 1, "worker": 1}


def _state(status: JobStatus) -> str:
    if status in RUNNABLE:
        return READY
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


def _float(value: Any) -> float | None:
    return None if value is None else float(value)


def _error_from(value: Any) -> ErrorInfo:
    data = json.loads(value) if isinstance(value, str) else value
    return ErrorInfo.from_dict(cast(dict[str, Any], data))


def _to_job(doc: Doc) -> JobRecord:
    result = doc.get("result")
    return JobRecord(
        id=doc["_id"],
        cls=doc["cls"],
        data=json.loads(doc["data"]),
        status=JobStatus(int(doc["status"])),
        queue=doc["queue"],
        priority=int(doc["priority"]),
        at=float(doc["at"]),
        created=float(doc["created"]),
        options=JobOptions.from_stored(doc.get("options") or {}),
        attempt=int(doc.get("attempt", 0)),
        started=_float(doc.get("started")),
        ended=_float(doc.get("ended")),
        result=json.loads(result) if result is not None else None,
        errors=[_error_from(e) for e in doc.get("errors") or []],
        progress=float(doc.get("progress") or 0.0),
        reason=doc.get("reason"),
        node=doc.get("node"),
        worker=doc.get("worker"),
        claim_token=doc.get("claim_token"),
        lease_until=_float(doc.get("lease_until")),
        cancel_requested=bool(doc.get("cancel_requested")),
        series=doc.get("series"),
        series_seq=int(doc.get("series_seq") or 0),
        once_key=doc.get("once_key"),
        updated=_float(doc.get("updated")),
    )


def _to_event(doc: Doc) -> EventRecord:
    error = doc.get("error")
    return EventRecord(
        seq=int(doc["seq"]),
        job_id=doc["job_id"],
        time=float(doc["time"]),
        status=JobStatus(int(doc["status"])),
        attempt=int(doc["attempt"]),
        cls=doc["cls"],
        queue=doc["queue"],
        node=doc.get("node"),
        worker=doc.get("worker"),
        error=_error_from(error) if error else None,
        reason=doc.get("reason"),
    )


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
        "attempt": int(job.get("attempt", 0) if attempt is None else attempt),
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
    return doc


def _added_event(doc: Doc) -> Doc:
    """The event of a job just inserted."""
    return _event(doc, doc["created"], JobStatus(doc["status"]), attempt=0, reason="added")
