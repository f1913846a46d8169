"""The store interface, and the records it takes and returns.

Stores are dumb and fast: they apply the state changes that :mod:`taskschedd.rules`
decides, atomically and fenced by the claim token; they hold no scheduling rules.
"""

from __future__ import annotations

import abc
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from taskschedd.errors import StoreUnavailable
from taskschedd.job import JobStatus
from taskschedd.options import JobOptions

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
class Settlement:
    """The next state of a claimed job, decided by :mod:`taskschedd.rules`.

    ``status`` FINAL ends the job; WAITING/POSTPONED re-queues the same job at ``at``.
    ``attempt_delta`` -1 gives back the attempt the claim used (drain release).
    ``reset_errors``: ``error`` replaces the stored errors instead of joining them (a
    corrupt record's errors may not be a list to append to).
    """

    status: JobStatus
    at: float | None = None
    result_json: str | None = None
    error: ErrorInfo | None = None
    reason: str | None = None
    progress: float | None = None
    attempt_delta: int = 0
    next_job: NewJob | None = None
    reset_errors: bool = False


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


class Waker(abc.ABC):
    """Blocks until the store changed or a timeout passed (a hint, never a guarantee)."""

    @abc.abstractmethod
    def fileno(self) -> int: ...

    @abc.abstractmethod
    def wait(self, timeout: float | None) -> bool:
        """True when woken by a change, False on timeout."""

    @abc.abstractmethod
    def drain(self) -> None:
        """Consume pending wake-ups without blocking (after select() reported readable)."""

    def quiet_for(self) -> float:
        """Seconds not to watch fileno() after a drain(): wake-ups coming faster than the
        waker's rate are coalesced (0: watch again at once)."""
        return 0.0

    @abc.abstractmethod
    def close(self) -> None: ...


class DuplicateJobId(Exception):
    """Insert found an existing job with this id."""

    def __init__(self, job_id: str) -> None:
        super().__init__(job_id)
        self.job_id = job_id


class Store(abc.ABC):
    """What every store does. All times are unix seconds (float)."""

    url: str

    # -- writing jobs ------------------------------------------------------------
    @abc.abstractmethod
    def insert(self, jobs: Sequence[NewJob]) -> None:
        """Insert all jobs atomically; DuplicateJobId if an id exists (nothing written)."""

    @abc.abstractmethod
    def insert_once(self, job: NewJob, same: Any) -> tuple[JobRecord, bool]:
        """Insert unless an active job has the same once_key; race-free.

        ``same(existing) -> bool`` says whether the existing job satisfies the request;
        if not, the existing one is canceled (reason "replaced") and ``job`` inserted.
        Returns the job now representing the request and whether it was created.
        """

    @abc.abstractmethod
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
        """Take the next due job: queues in the given order, then priority, due time, FIFO.

        The token is made by the caller so a lost reply can be looked up, never re-claimed.
        """

    @abc.abstractmethod
    def settle(self, job_id: str, token: str, settlement: Settlement, *, now: float) -> bool:
        """Apply a settlement if the job is still held under ``token``; False if fenced off."""

    def settle_batch(
        self,
        settles: Sequence[tuple[str, str, Settlement]],
        *,
        now: float,
        claim: ClaimRequest | None = None,
    ) -> tuple[list[bool], list[JobRecord]]:
        """Apply several fenced settlements ``(job_id, token, settlement)``, then claim up
        to ``claim.limit`` due jobs: (settled flag per settlement, jobs claimed).

        Stores that can do it all in one transaction override this (one durable commit for
        a batch of jobs instead of one or two per job). Here each step is its own write and
        the claim is best effort once something was settled: if the store fails after
        a settle, the settle stands and the caller's next claim meets the outage.
        """
        done = [self.settle(job_id, token, s, now=now) for job_id, token, s in settles]
        jobs: list[JobRecord] = []
        if claim is None:
            return done, jobs
        try:
            for i in range(claim.limit):
                job = self.claim(
                    claim.queues, node=claim.node, worker=claim.worker,
                    token=claim.token_for(i), lease=claim.lease, now=now,
                    force_spawn=claim.force_spawn,
                )  # fmt: skip
                if job is None:
                    break
                jobs.append(job)
        except StoreUnavailable:
            if not settles and not jobs:
                raise
        return done, jobs

    @abc.abstractmethod
    def renew(self, tokens: Iterable[str], *, lease_until: float) -> int:
        """Extend the lease of the jobs held under these tokens; returns how many."""

    @abc.abstractmethod
    def progress(self, job_id: str, token: str, percent: float, *, now: float) -> bool:
        """Record progress if still held under ``token``."""

    @abc.abstractmethod
    def expired(self, now: float, limit: int = 100) -> list[JobRecord]:
        """PROCESSING jobs whose lease ended before ``now``."""

    @abc.abstractmethod
    def malformed(self, limit: int = 100) -> list[JobRecord]:
        """Records that claims and reaps cannot see or settle because a field they compare
        has the wrong type or value (status, due time, queue, lease, token: written by
        another client); each with ``corrupt`` set. The nodes quarantine them."""

    @abc.abstractmethod
    def quarantine(self, record: JobRecord, settlement: Settlement, *, now: float) -> bool:
        """Apply ``settlement`` (from rules.on_corrupt) to a record :meth:`malformed`
        returned, with its event, if the stored record is still malformed; False if it
        is not (fixed or settled meanwhile) or cannot be addressed by its id."""

    @abc.abstractmethod
    def cancel(self, job_id: str, *, now: float) -> JobRecord:
        """Cancel a waiting job at once, or ask the owner of a running one to stop it.

        Final jobs are left as they are. JobNotFound if there is no such job.
        """

    @abc.abstractmethod
    def requeue(self, job_id: str, *, now: float) -> tuple[JobRecord, bool]:
        """Put a FAILED/TIMEOUT/CANCELED job back to WAITING with a fresh retry budget.

        Returns the job and whether it was re-queued (False: it was not in such a status).
        """

    # -- reading -----------------------------------------------------------------
    @abc.abstractmethod
    def get(self, job_id: str) -> JobRecord:
        """JobNotFound if there is no such job."""

    @abc.abstractmethod
    def get_by_token(self, token: str) -> JobRecord | None: ...

    @abc.abstractmethod
    def find(self, query: JobQuery) -> list[JobRecord]: ...

    @abc.abstractmethod
    def cancel_requested(self, tokens: Iterable[str]) -> list[str]:
        """Of the jobs held under these tokens, the tokens whose cancel was requested."""

    @abc.abstractmethod
    def count_due(
        self, queues: Sequence[str], *, now: float, force_spawn: bool, limit: int | None = None
    ) -> int:
        """Due runnable jobs in these queues (with or without ignore_max_children).

        ``limit``: count at most about that many (callers that only size a pool need no
        more, and a full count costs time proportional to the backlog); may be exceeded
        by a store that counts per queue, never undercounts below min(limit, due).
        """

    @abc.abstractmethod
    def next_due(self, queues: Sequence[str]) -> float | None:
        """The earliest due time of a runnable job in these queues."""

    @abc.abstractmethod
    def stats(self, *, now: float, window: float = 300.0) -> dict[str, Any]:
        """Counts by status/queue/class, oldest waiting age per queue, finished in window."""

    # -- events ------------------------------------------------------------------
    @abc.abstractmethod
    def events(
        self,
        *,
        after: int = 0,
        job_ids: Sequence[str] = (),
        limit: int = 1000,
        since: float | None = None,
    ) -> list[EventRecord]:
        """Events with seq > after, oldest first."""

    @abc.abstractmethod
    def last_event_seq(self) -> int: ...

    @abc.abstractmethod
    def waker(self) -> Waker:
        """A wake-up source for changes to this store (one per waiting process)."""

    # -- housekeeping --------------------------------------------------------------
    @abc.abstractmethod
    def purge(self, *, statuses: Sequence[JobStatus], ended_before: float) -> int:
        """Delete final jobs (and their events) that ended before the given time."""

    @abc.abstractmethod
    def flush(self) -> None:
        """Delete every job and event (the original's flush())."""

    @abc.abstractmethod
    def heartbeat(self, node: NodeRecord) -> None: ...

    @abc.abstractmethod
    def nodes(self, *, alive_after: float | None = None) -> list[NodeRecord]: ...

    @abc.abstractmethod
    def remove_node(self, name: str) -> None: ...

    def verify(self) -> None:
        """StoreReplaced when what this object has open is no longer the store its URL
        names (SQLite: the file was deleted or replaced). Cheap, no store round trip:
        the master calls it on every pass of its loop."""
        return  # nothing to check: a server store has no file to lose

    @abc.abstractmethod
    def close(self) -> None: ...

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
