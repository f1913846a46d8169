"""The one boundary where a stored job becomes a :class:`JobRecord`.

Stores hand over a record's raw values as read (SQLite columns, a MongoDB document's
fields) in :data:`JOB_FIELDS` order; :func:`decode_job` checks every value's type and
range and decodes the JSON texts. Records are written by other clients too (scripts, a
bad migration, a hand edit), so nothing here trusts them: a record that does not decode
still becomes a JobRecord, with ``corrupt`` saying which field is wrong and every field
that could not be read replaced by a harmless value. Claims, reaps and the CLI then
handle it (it is *quarantined*: settled FAILED with reason ``corrupt``) instead of
crashing on it, and a worker never runs it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

from taskschedd.model import ErrorInfo, EventRecord, JobRecord, JobStatus, NodeRecord
from taskschedd.options import JobOptions, stored_options

#: The order of the raw values :func:`decode_job` takes (the SQLite store's columns).
JOB_FIELDS = (
    "id", "cls", "data", "status", "queue", "priority", "at", "created", "started", "ended",
    "attempt", "options", "result", "errors", "progress", "reason", "node", "worker",
    "claim_token", "lease_until", "cancel_requested", "series", "series_seq", "once_key",
    "updated", "seq",
)  # fmt: skip

#: Reason and error type of a quarantined record.
CORRUPT = "corrupt"
CORRUPT_TYPE = "CorruptRecord"

#: Bounds of what a sane record holds (attempts are capped by `retry`, 2**31).
MAX_ATTEMPT = 2**31
MAX_COUNT = 2**53
#: Times are epoch seconds: anything outside +-10**11 (year 5138) was not written by us.
MAX_TIME = 1e11
#: Longest text shown of a bad value in a corrupt record's reason.
_SHOW = 60

_STATUSES = {int(s): s for s in JobStatus}


class _Bad(Exception):
    """One field of a record does not decode."""


def _show(value: Any) -> str:
    if isinstance(value, bytes | bytearray):
        text = f"a BLOB of {len(value)} bytes"
    elif isinstance(value, str) and len(value) > _SHOW:
        text = f"text of {len(value)} characters"
    else:
        try:
            text = repr(value)
        except ValueError:  # an int too long for repr()
            text = "a number too long to show"
    return text if len(text) <= _SHOW else text[:_SHOW] + "..."


def encodable(text: str) -> bool:
    """False for text holding lone surrogates: what the SQLite store's lenient decoder
    makes of invalid UTF-8. Written back, it would fail the write."""
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _text(name: str, value: Any, *, optional: bool = False, limit: int = 4096) -> Any:
    if value is None and optional:
        return None
    if type(value) is not str:
        raise _Bad(f"{name} is {_show(value)}, not text")
    if not encodable(value):
        raise _Bad(f"{name} is not valid UTF-8")
    if len(value) > limit:
        raise _Bad(f"{name} is {len(value)} characters long (at most {limit})")
    return value


def _attempt(value: Any) -> int:
    if value == -1 and type(value) is int:  # what the SQLite claim makes of a bad attempt
        raise _Bad("attempt was not a count from 0 to 2**31 when the job was claimed")
    return _int("attempt", value, 0, MAX_ATTEMPT)


def _int(name: str, value: Any, lo: int, hi: int) -> int:
    if type(value) is float and value.is_integer():
        value = int(value)
    if type(value) is not int or not lo <= value <= hi:
        raise _Bad(f"{name} is {_show(value)}, not an integer from {lo} to {hi}")
    return value


def _time(name: str, value: Any, *, optional: bool = False) -> Any:
    if value is None and optional:
        return None
    if type(value) is int:
        value = float(value)
    if type(value) is not float or not -MAX_TIME <= value <= MAX_TIME:
        raise _Bad(f"{name} is {_show(value)}, not a time in epoch seconds")
    return value


def _json(name: str, value: Any) -> Any:
    if isinstance(value, bytes | bytearray):
        raise _Bad(f"{name} is a BLOB of {len(value)} bytes, not JSON text")
    if type(value) is not str:
        raise _Bad(f"{name} is {_show(value)}, not JSON text")
    if not encodable(value):
        raise _Bad(f"{name} is not valid UTF-8")
    try:
        return json.loads(value)
    except RecursionError:
        raise _Bad(f"{name} is JSON nested too deep to read") from None
    except ValueError as exc:  # JSONDecodeError, or an integer of too many digits
        raise _Bad(f"{name} is not JSON: {str(exc)[:_SHOW]}") from None


def _status(value: Any) -> JobStatus:
    if type(value) is float and value.is_integer():
        value = int(value)
    status = _STATUSES.get(value) if type(value) is int else None
    if status is None:
        raise _Bad(f"status is {_show(value)}, not a job status (0-7)")
    return status


def _errors(value: Any) -> list[ErrorInfo]:
    items = _json("errors", value) if isinstance(value, str | bytes | bytearray) else value
    if not isinstance(items, list):
        raise _Bad(f"errors is {_show(items)}, not a list")
    out = []
    for item in items:
        if isinstance(item, str):  # MongoDB keeps each error as JSON text
            item = _json("an entry of errors", item)
        if not isinstance(item, dict):
            raise _Bad(f"an entry of errors is {_show(item)}, not an object")
        try:
            out.append(ErrorInfo.from_dict(item))
        except (TypeError, ValueError, OverflowError) as exc:
            raise _Bad(f"an entry of errors does not decode: {exc}") from None
    return out


def _options(value: Any) -> JobOptions:
    data = _json("options", value) if isinstance(value, str | bytes | bytearray) else value
    if data is None:
        return JobOptions()
    if not isinstance(data, dict):
        raise _Bad(f"options is {_show(data)}, not an object")
    try:
        return stored_options(data)
    except ValueError as exc:  # OptionError names the option and what is accepted
        raise _Bad(f"options: {exc}") from None


def decode_job(values: Sequence[Any]) -> JobRecord:
    """A record's raw values (in :data:`JOB_FIELDS` order) as a JobRecord; one that does
    not decode comes back with ``corrupt`` set (see the module docstring)."""
    try:
        return _decode(*values)
    except _Bad as exc:
        return _quarantined(values, str(exc))
    except (ValueError, TypeError, OverflowError, RecursionError) as exc:  # pragma: no cover
        return _quarantined(values, f"{type(exc).__name__}: {exc}")


#: Fields a document must have; the others, when missing, read as these (or None).
_REQUIRED = frozenset({"id", "cls", "data", "status", "queue", "priority", "at", "created"})
_MISSING_AS = {"attempt": 0, "errors": [], "progress": 0.0, "cancel_requested": False,
               "series_seq": 0, "seq": 0}  # fmt: skip


def decode_doc(doc: Mapping[str, Any], names: Mapping[str, str] | None = None) -> JobRecord:
    """:func:`decode_job` of a document; ``names`` maps field names that differ."""
    names = names or {}
    values: list[Any] = []
    lacking = []
    for f in JOB_FIELDS:
        key = names.get(f, f)
        if key in doc:
            values.append(doc[key])
        elif f in _REQUIRED:
            lacking.append(f)
            values.append(None)
        else:
            values.append(_MISSING_AS.get(f))
    if lacking:
        return _quarantined(values, f"the record has no {', '.join(lacking)}")
    return decode_job(values)


def _decode(
    job_id: Any, cls: Any, data: Any, status: Any, queue: Any, priority: Any, at: Any,
    created: Any, started: Any, ended: Any, attempt: Any, options: Any, result: Any,
    errors: Any, progress: Any, reason: Any, node: Any, worker: Any, token: Any,
    lease_until: Any, cancel_requested: Any, series: Any, series_seq: Any, once_key: Any,
    updated: Any, seq: Any = 0,
) -> JobRecord:  # fmt: skip
    st = _status(status)
    if type(progress) is int:
        progress = float(progress)
    if type(progress) is not float or not 0.0 <= progress <= 100.0:
        raise _Bad(f"progress is {_show(progress)}, not a number from 0 to 100")
    if cancel_requested not in (0, 1) or type(cancel_requested) not in (int, bool):
        raise _Bad(f"cancel_requested is {_show(cancel_requested)}, not 0 or 1")
    return JobRecord(
        id=_text("id", job_id, limit=512),
        cls=_text("class", cls, limit=1024),
        data=_json("data", data),
        status=st,
        queue=_text("queue", queue, limit=255),
        priority=_int("priority", priority, -(2**31), 2**31 - 1),
        at=_time("at", at),
        created=_time("created", created),
        options=_options(options),
        attempt=_attempt(attempt),
        started=_time("started", started, optional=True),
        ended=_time("ended", ended, optional=True),
        result=None if result is None else _json("result", result),
        errors=_errors(errors),
        progress=progress,
        reason=_text("reason", reason, optional=True),
        node=_text("node", node, optional=True),
        worker=_text("worker", worker, optional=True),
        claim_token=_text("claim_token", token, optional=True, limit=512),
        lease_until=_time("lease_until", lease_until, optional=True),
        cancel_requested=bool(cancel_requested),
        series=_text("series", series, optional=True, limit=512),
        series_seq=_int("series_seq", series_seq, 0, MAX_COUNT),
        once_key=_text("once_key", once_key, optional=True),
        updated=_time("updated", updated, optional=True),
        seq=_seq(seq),
    )


def _seq(value: Any) -> int:
    """The insertion order as a cursor: a paging key only, so an unreadable one is 0
    (the record stays usable; it just sorts first), never a reason to quarantine."""
    if type(value) is float and value.is_integer() and abs(value) <= MAX_COUNT:
        value = int(value)
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**63:
        return int(value)  # MongoDB's come as bson Int64 (time_ns() numbers)
    return 0


def _safe_text(value: Any, default: str | None) -> str | None:
    if type(value) is str and encodable(value) and len(value) <= 4096:
        return value
    if value is None or default is None:
        return default
    return default


def _safe_time(value: Any) -> float | None:
    if type(value) in (int, float) and math.isfinite(value) and abs(value) <= MAX_TIME:
        return float(value)
    return None


def _quarantined(values: Sequence[Any], why: str) -> JobRecord:
    """The JobRecord of a record that does not decode: what can be read of it, safe
    values for the rest, and ``corrupt`` set. Its data, options and errors are never
    used: a worker does not run it, the rules end it."""
    raw = dict(zip(JOB_FIELDS, values, strict=False))
    try:  # shown by the CLI, and kept before the quarantine's error where they decode
        errors = _errors(raw.get("errors"))
    except (_Bad, ValueError, TypeError, RecursionError):
        errors = []
    status = raw.get("status")
    attempt = raw.get("attempt")
    return JobRecord(
        id=_safe_text(raw.get("id"), None) or _show(raw.get("id")),
        cls=_safe_text(raw.get("cls"), "?") or "?",
        data=None,
        status=_STATUSES.get(status, JobStatus.FAILED) if type(status) is int else JobStatus.FAILED,
        queue=_safe_text(raw.get("queue"), "?") or "?",
        priority=0,
        at=_safe_time(raw.get("at")) or 0.0,
        created=_safe_time(raw.get("created")) or 0.0,
        options=JobOptions(),
        attempt=attempt if type(attempt) is int and 0 <= attempt <= MAX_ATTEMPT else 0,
        started=_safe_time(raw.get("started")),
        ended=_safe_time(raw.get("ended")),
        node=_safe_text(raw.get("node"), None),
        worker=_safe_text(raw.get("worker"), None),
        claim_token=_safe_text(raw.get("claim_token"), None),
        lease_until=_safe_time(raw.get("lease_until")),
        reason=_safe_text(raw.get("reason"), None),
        series=_safe_text(raw.get("series"), None),
        errors=errors,
        corrupt=why,
        seq=_seq(raw.get("seq")),
    )


def decode_event(values: Sequence[Any]) -> EventRecord:
    """An event's raw values (seq, job_id, time, status, attempt, cls, queue, node, worker,
    error, reason) as an EventRecord; a malformed one is shown, never raised on: an
    unknown status reads as FAILED with reason ``corrupt``."""
    seq, job_id, time, status, attempt, cls, queue, node, worker, error, reason = values
    info: ErrorInfo | None = None
    try:
        if isinstance(error, str) and error:
            error = json.loads(error)
        if isinstance(error, dict):
            info = ErrorInfo.from_dict(error)
    except (ValueError, TypeError, OverflowError, RecursionError):
        reason = CORRUPT
    st = _STATUSES.get(status) if type(status) is int else None
    if st is None:
        st, reason = JobStatus.FAILED, CORRUPT
    return EventRecord(
        seq=seq if type(seq) is int else 0,
        job_id=_safe_text(job_id, "?") or "?",
        time=_safe_time(time) or 0.0,
        status=st,
        attempt=attempt if type(attempt) is int and 0 <= attempt <= MAX_ATTEMPT else 0,
        cls=_safe_text(cls, "?") or "?",
        queue=_safe_text(queue, "?") or "?",
        node=_safe_text(node, None),
        worker=_safe_text(worker, None),
        error=info,
        reason=_safe_text(reason, None),
    )


def _names(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except (ValueError, RecursionError):
            raise _Bad("not a JSON list") from None
    if not isinstance(value, list) or not all(type(v) is str for v in value):
        raise _Bad("not a list of names")
    return tuple(value)


def decode_node(values: Sequence[Any]) -> NodeRecord | None:
    """A node registry entry's raw values (name, host, pid, started, heartbeat,
    workers_busy, workers_idle, running, queues, version[, instance[, live_until, pid_ns,
    boot]]) as a NodeRecord; None for one that does not decode (another client's): the
    registry is advisory, so it is left out rather than shown with made-up values. An
    entry written by taskschedd 0.4 has instance "", live_until 0.0, pid_ns "" and boot
    0.0 (None reads the same)."""
    name, host, pid, started, heartbeat, busy, idle, running, queues, version = values[:10]
    extra = [*values[10:14], None, None, None, None][:4]
    instance, live_until, pid_ns, boot = (
        v if v is not None else empty for v, empty in zip(extra, ("", 0.0, "", 0.0), strict=True)
    )
    try:
        return NodeRecord(
            name=_text("name", name, limit=512),
            host=_text("host", host, limit=512),
            pid=_int("pid", pid, 0, 2**31),
            started=_time("started", started),
            heartbeat=_time("heartbeat", heartbeat),
            workers_busy=_int("workers_busy", busy, 0, 2**31),
            workers_idle=_int("workers_idle", idle, 0, 2**31),
            running=_names(running),
            queues=_names(queues),
            version=_text("version", version, limit=64),
            instance=_text("instance", instance, limit=64),
            live_until=_time("live_until", live_until),
            pid_ns=_text("pid_ns", pid_ns, limit=64),
            boot=_time("boot", boot),
        )
    except _Bad:
        return None


def decode_state(status: Any, created: Any) -> tuple[JobStatus | None, float | None]:
    """A job's status and creation time as a dependent reads them (None: not readable)."""
    try:
        st: JobStatus | None = _status(status)
    except _Bad:
        st = None
    try:
        born = _time("created", created)
    except _Bad:
        born = None
    return st, born


def decode_result(value: Any) -> Any:
    """A stored result as a dependent reads it: None when there is none, or it does not
    decode (another client wrote it)."""
    if value is None:
        return None
    try:
        return _json("result", value)
    except _Bad:
        return None
