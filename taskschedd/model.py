"""The domain model: job statuses and the records that the scheduler, the rules, the
transitions and the stores exchange. Nothing here reads a store or decides a rule."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any, NamedTuple

from taskschedd.options import JobOptions


class JobStatus(IntEnum):
    """Job statuses, with the PHP original's numbers (they are stored)."""

    WAITING = 0
    POSTPONED = 1
    PROCESSING = 2
    DONE = 3
    FAILED = 4
    CANCELED = 5
    TIMEOUT = 6
    #: Waiting on its dependencies (depends_on): never claimed, not final; released
    #: (WAITING/POSTPONED) or ended (CANCELED) once they are final. A number of its own,
    #: past the original's, so that stores and clients that do not know it refuse it.
    BLOCKED = 7

    @property
    def is_final(self) -> bool:
        return JobStatus.DONE <= self <= JobStatus.TIMEOUT

    @classmethod
    def parse(cls, value: str | int) -> JobStatus:
        """A status from its name (any case) or number; ValueError lists the accepted names."""
        if isinstance(value, int) and not isinstance(value, bool):
            try:
                return cls(value)
            except ValueError:
                pass
        elif isinstance(value, str):
            text = value.strip().upper()
            if text.isdigit():
                return cls.parse(int(text))
            if text == "CANCELLED":
                return cls.CANCELED
            if text in cls.__members__:
                return cls[text]
        names = ", ".join(s.name.lower() for s in cls)
        raise ValueError(f"unknown status {value!r}; accepted: {names} (or 0-7)")


#: Statuses a job can be claimed from.
RUNNABLE = (JobStatus.WAITING, JobStatus.POSTPONED)
#: Statuses listed by default (as in the original, and a job blocked on its
#: dependencies: it is not done either) and matched by add_job_once.
ACTIVE = (JobStatus.WAITING, JobStatus.POSTPONED, JobStatus.PROCESSING, JobStatus.BLOCKED)
FINAL = (JobStatus.DONE, JobStatus.FAILED, JobStatus.CANCELED, JobStatus.TIMEOUT)


#: A job keeps the errors of its last MAX_ERRORS attempts (endless retries must not grow
#: its record without bound: MongoDB refuses documents over 16 MB).
MAX_ERRORS = 25
#: Longest error message and traceback kept (characters); longer ones keep their start
#: and end (a traceback's last frames say most).
MAX_ERROR_MESSAGE = 8 * 1024
MAX_TRACEBACK = 32 * 1024


def clip(text: str, limit: int) -> str:
    """``text`` if it fits in ``limit`` characters, else its start and end around a note
    of how much was cut."""
    if len(text) <= limit:
        return text
    keep = limit // 2
    return f"{text[:keep]}\n[... {len(text) - 2 * keep} characters cut ...]\n{text[-keep:]}"


@dataclass(frozen=True)
class ErrorInfo:
    """What went wrong in one attempt (message and traceback clipped: see clip())."""

    attempt: int
    type: str
    message: str
    traceback: str = ""
    time: float = 0.0
    reason: str = "exception"  # exception | timeout | abandoned | killed | class | ...

    def __post_init__(self) -> None:
        if len(self.message) > MAX_ERROR_MESSAGE:
            object.__setattr__(self, "message", clip(self.message, MAX_ERROR_MESSAGE))
        if len(self.traceback) > MAX_TRACEBACK:
            object.__setattr__(self, "traceback", clip(self.traceback, MAX_TRACEBACK))
        if len(self.type) > 512:
            object.__setattr__(self, "type", clip(self.type, 512))

    def to_dict(self) -> dict[str, Any]:
        return {
            "attempt": self.attempt,
            "type": self.type,
            "message": self.message,
            "traceback": self.traceback,
            "time": self.time,
            "reason": self.reason,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ErrorInfo:
        return cls(
            attempt=int(d.get("attempt", 0)),
            type=str(d.get("type", "")),
            message=str(d.get("message", "")),
            traceback=str(d.get("traceback", "")),
            time=float(d.get("time", 0.0)),
            reason=str(d.get("reason", "exception")),
        )


class Dependency(NamedTuple):
    """What a job sees of one of its dependencies (``Job.dependencies``), read once when
    the job is claimed: a tuple, so ``status, result = self.dependencies[id]`` works.
    ``status`` is None when the dependency's record is gone (flushed or deleted)."""

    status: JobStatus | None
    result: Any


@dataclass(frozen=True)
class NewJob:
    """A job to insert, fully resolved by the scheduler."""

    id: str
    cls: str
    data_json: str
    options: JobOptions
    at: float
    created: float
    status: JobStatus = JobStatus.WAITING
    once_key: str | None = None
    series: str | None = None
    series_seq: int = 0


@dataclass
class JobRecord:
    """A job as stored."""

    id: str
    cls: str
    data: Any
    status: JobStatus
    queue: str
    priority: int
    at: float
    created: float
    options: JobOptions
    attempt: int = 0
    started: float | None = None
    ended: float | None = None
    result: Any = None
    errors: list[ErrorInfo] = field(default_factory=list)
    progress: float = 0.0
    reason: str | None = None
    node: str | None = None
    worker: str | None = None
    claim_token: str | None = None
    lease_until: float | None = None
    cancel_requested: bool = False
    series: str | None = None
    series_seq: int = 0
    once_key: str | None = None
    updated: float | None = None
    #: Why the stored record does not decode (None: it does); see store/decode.py.
    corrupt: str | None = None
    #: The store's insertion order (SQLite's rowid, MongoDB's ``seq`` field): the
    #: keyset cursor of JobQuery.before_seq/after_seq. 0 when the stored one is unreadable.
    seq: int = 0

    @property
    def is_final(self) -> bool:
        return self.status.is_final

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able view for CLIs and APIs."""
        return {
            "id": self.id,
            "class": self.cls,
            "data": self.data,
            "status": self.status.name,
            "queue": self.queue,
            "priority": self.priority,
            "at": self.at,
            "created": self.created,
            "started": self.started,
            "ended": self.ended,
            "attempt": self.attempt,
            "result": self.result,
            "errors": [e.to_dict() for e in self.errors],
            "progress": self.progress,
            "reason": self.reason,
            "node": self.node,
            "worker": self.worker,
            "lease_until": self.lease_until,
            "cancel_requested": self.cancel_requested,
            "series": self.series,
            "series_seq": self.series_seq,
            "options": self.options.stored(),
            "corrupt": self.corrupt,
        }


@dataclass(frozen=True)
class ClaimRequest:
    """What :meth:`Store.settle_batch` claims: up to ``limit`` due jobs from ``queues``
    (in that order of preference), each under its own token derived from ``token``."""

    queues: Sequence[str]
    node: str
    worker: str
    token: str
    lease: float
    limit: int = 1
    force_spawn: bool = False

    def token_for(self, index: int) -> str:
        """The claim token of the ``index``-th job claimed (unique per job)."""
        return self.token if index == 0 else f"{self.token}.{index}"


@dataclass(frozen=True)
class EventRecord:
    """One state change of a job."""

    seq: int
    job_id: str
    time: float
    status: JobStatus
    attempt: int
    cls: str
    queue: str
    node: str | None = None
    worker: str | None = None
    error: ErrorInfo | None = None
    reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "job_id": self.job_id,
            "time": self.time,
            "status": self.status.name,
            "attempt": self.attempt,
            "class": self.cls,
            "queue": self.queue,
            "node": self.node,
            "worker": self.worker,
            "error": self.error.to_dict() if self.error else None,
            "reason": self.reason,
        }


#: No registry entry is live longer than this after its heartbeat (3 x the largest
#: heartbeat_interval): a live_until far ahead (a wrong clock, another client) cannot hold
#: a node name for ever.
LIVE_AT_MOST = 3 * 3600.0


@dataclass(frozen=True)
class NodeRecord:
    """A node's heartbeat: who it is and what it runs."""

    name: str
    host: str
    pid: int
    started: float
    heartbeat: float
    workers_busy: int = 0
    workers_idle: int = 0
    running: tuple[str, ...] = ()
    queues: tuple[str, ...] = ()
    version: str = ""
    #: A random token per master start: heartbeats and removal touch only the entry of
    #: this instance, so a node never updates or removes another node's entry of its name.
    instance: str = ""
    #: Until when this entry counts as live (its heartbeat + 3 x its own
    #: heartbeat_interval): every observer judges it by this, not by its own interval.
    #: 0.0 in an entry of taskschedd 0.4, judged by the observer's window.
    live_until: float = 0.0
    #: The master's pid namespace (``pid:[INODE]``) and its host's boot time: another
    #: process may judge the entry dead by its pid only when both are its own. "" and
    #: 0.0 when unknown (an entry of 0.4): judged by the liveness window only.
    pid_ns: str = ""
    boot: float = 0.0

    def live(self, now: float, window: float) -> bool:
        """Live at ``now``: until its own ``live_until``, or (an entry without one) for
        ``window`` seconds after its heartbeat; never past LIVE_AT_MOST after it."""
        until = self.live_until or self.heartbeat + window
        return now <= min(until, self.heartbeat + LIVE_AT_MOST)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "host": self.host,
            "pid": self.pid,
            "started": self.started,
            "heartbeat": self.heartbeat,
            "workers_busy": self.workers_busy,
            "workers_idle": self.workers_idle,
            "running": list(self.running),
            "queues": list(self.queues),
            "version": self.version,
            "instance": self.instance,
            "live_until": self.live_until or None,
        }


@dataclass(frozen=True)
class JobQuery:
    """Filters for listing jobs; empty fields do not filter."""

    statuses: tuple[JobStatus, ...] = ()
    classes: tuple[str, ...] = ()
    queues: tuple[str, ...] = ()
    ids: tuple[str, ...] = ()
    series: str | None = None
    since: float | None = None  # created at or after
    limit: int | None = None
    newest_first: bool = False
    #: Keyset paging by JobRecord.seq: only jobs with seq < before_seq (the next page,
    #: newest first) and/or seq > after_seq (newer ones, or oldest-first paging).
    before_seq: int | None = None
    after_seq: int | None = None
    #: Ids starting with this text (exact and case-sensitive: no wildcards).
    id_prefix: str | None = None
    until: float | None = None  # created before (exclusive)
    #: Only the pending occurrence of recurring jobs (option interval or cron): WAITING
    #: or POSTPONED ones, narrowed further by ``statuses`` when given.
    recurring: bool = False
