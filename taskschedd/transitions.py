"""Every state change of a job, as data: decided here and in :mod:`taskschedd.rules`,
applied by the stores.

A :class:`Transition` is an ordered list of :class:`Branch` es. A store applies the first
branch whose :class:`Guard` holds for the stored record *at the time of the write*,
atomically with that check (SQLite: one ``UPDATE ... WHERE guard`` per branch inside one
transaction; MongoDB: one ``findAndModify`` per branch with the guard as its filter), and
reports which branch it applied (None: no guard held, nothing was written). Guards read
only what the transition's caller cannot know for sure, because another process may
have changed it since: the status, whether the caller's claim token still holds the job,
and whether a cancel was requested.

A store knows how to write each field of a :class:`Change`; it never chooses a status,
a retry or a reason.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from taskschedd.model import RUNNABLE, ErrorInfo, JobStatus, NewJob


class Attempt(enum.Enum):
    """What a change does to the attempt counter."""

    KEEP = "keep"
    NEXT = "next"  # a claim starts the next attempt
    GIVE_BACK = "give back"  # a claim that never started gives its attempt back
    RESET = "reset"  # a retry starts over with a fresh budget


class Ended(enum.Enum):
    """What a change does to the job's end time."""

    KEEP = "keep"
    NOW = "now"
    CLEAR = "clear"


class _Keep(enum.Enum):
    KEEP = "keep"


#: A field left as stored.
KEEP = _Keep.KEEP


@dataclass(frozen=True)
class Guard:
    """What must hold of the stored record for a branch to apply.

    ``held``: the record is PROCESSING under the claim token the store call names (a
    settle, progress or renewal of a job the caller claimed). ``cancel_requested``:
    whether a cancel must (True) or must not (False) have been requested; None: either.
    ``due``: the job's due time has come (a claim).
    """

    statuses: frozenset[JobStatus]
    held: bool = False
    cancel_requested: bool | None = None
    due: bool = False


@dataclass(frozen=True)
class ClaimFields:
    """The owner a claim writes: its token, lease end, node and worker."""

    token: str
    lease_until: float
    node: str
    worker: str


@dataclass(frozen=True)
class Change:
    """The fields a branch writes (``updated`` is always set to the time of the write)."""

    status: JobStatus | None = None
    at: float | None = None
    attempt: Attempt = Attempt.KEEP
    #: JSON text of the result, written when not None; ``clear_result`` writes NULL.
    result_json: str | None = None
    clear_result: bool = False
    #: Appended to the job's errors (the last MAX_ERRORS are kept), or replacing them
    #: all when ``reset_errors`` (a corrupt record's errors may not be a list).
    error: ErrorInfo | None = None
    reset_errors: bool = False
    reason: str | _Keep | None = KEEP
    progress: float | None = None
    ended: Ended = Ended.KEEP
    #: A claim: the owner to write, and ``started`` = the time of the write.
    claim: ClaimFields | None = None
    #: The claim is over: no token, no lease.
    release_claim: bool = False
    lease_until: float | None = None
    cancel_requested: bool | None = None
    #: The once key (add_job_once) is free again for a new job.
    release_once: bool = False
    #: No node or worker (a retried job has none until it is claimed again).
    clear_owner: bool = False
    touch: bool = True


@dataclass(frozen=True)
class Branch:
    """One possible outcome of a transition: applied when ``guard`` holds.

    ``event``: record an event (status and reason of the change, its error, the attempt
    and owner as stored after the write). ``next_job``: the follow-up job to insert in
    the same write (the next occurrence of a series); stores insert it at most once.
    """

    name: str
    guard: Guard
    change: Change
    event: bool = True
    next_job: NewJob | None = None

    @property
    def status(self) -> JobStatus | None:
        return self.change.status

    @property
    def reason(self) -> str | None:
        return None if isinstance(self.change.reason, _Keep) else self.change.reason

    @property
    def event_status(self) -> JobStatus:
        """The status its event records (a branch with an event sets one)."""
        if self.change.status is None:
            raise ValueError(f"branch {self.name!r} records an event but sets no status")
        return self.change.status


@dataclass(frozen=True)
class Transition:
    """A state change: the first branch whose guard holds is applied (see module doc)."""

    name: str
    branches: tuple[Branch, ...]

    @property
    def intended(self) -> Branch:
        """The branch the caller expects (the first); logs say which one was applied."""
        return self.branches[0]

    @property
    def status(self) -> JobStatus | None:
        return self.intended.status

    @property
    def reason(self) -> str | None:
        return self.intended.reason

    @property
    def next_job(self) -> NewJob | None:
        return self.intended.next_job


_RUNNABLE = frozenset(RUNNABLE)
#: What a cancel ends at once: a job not running yet, a BLOCKED one included.
_NOT_STARTED = _RUNNABLE | {JobStatus.BLOCKED}
_PROCESSING = frozenset({JobStatus.PROCESSING})
#: What a retry (requeue) takes a job from: any final status but DONE.
RETRYABLE = frozenset({JobStatus.FAILED, JobStatus.CANCELED, JobStatus.TIMEOUT})

#: What a claimed job is while its attempt runs.
CLAIMED = JobStatus.PROCESSING
#: A due runnable job (what a claim takes).
CLAIMABLE = Guard(_RUNNABLE, due=True)
HELD = Guard(_PROCESSING, held=True)
HELD_NOT_CANCELED = Guard(_PROCESSING, held=True, cancel_requested=False)
HELD_CANCELED = Guard(_PROCESSING, held=True, cancel_requested=True)


def settle_change(
    status: JobStatus,
    *,
    at: float | None = None,
    result_json: str | None = None,
    error: ErrorInfo | None = None,
    reset_errors: bool = False,
    reason: str | None = None,
    progress: float | None = None,
    give_back: bool = False,
) -> Change:
    """The change that ends an attempt: a final status ends the job (its claim, cancel
    request and once key go with it); a runnable one re-queues it at ``at``."""
    final = status.is_final
    return Change(
        status=status,
        at=at,
        attempt=Attempt.GIVE_BACK if give_back else Attempt.KEEP,
        result_json=result_json,
        error=error,
        reset_errors=reset_errors,
        reason=reason,
        progress=progress,
        ended=Ended.NOW if final else Ended.CLEAR,
        release_claim=True,
        cancel_requested=False if final else None,
        release_once=final,
    )


def settle(
    name: str, change: Change, next_job: NewJob | None = None, *, canceled: Change | None = None
) -> Transition:
    """Settle a held job. With ``canceled``: that change instead when a cancel was
    requested by the time of the write (never a follow-up then: a canceled job is never
    rescheduled, whenever the cancel arrived)."""
    if canceled is None:
        return Transition(name, (Branch(name, HELD, change, next_job=next_job),))
    return Transition(
        name,
        (
            Branch(name, HELD_NOT_CANCELED, change, next_job=next_job),
            Branch("canceled", HELD_CANCELED, canceled),
        ),
    )


def claim(owner: ClaimFields) -> Branch:
    """A due runnable job starts its next attempt under ``owner``'s token and lease.
    Which job a claim takes (queues, priority, due time, FIFO) is the store's index."""
    return Branch(
        "claim",
        CLAIMABLE,
        Change(
            status=CLAIMED,
            attempt=Attempt.NEXT,
            claim=owner,
            progress=0.0,
            ended=Ended.CLEAR,
        ),
    )


def _stop(name: str, reason: str, *, free_once_while_running: bool) -> Transition:
    """A job not started (runnable or BLOCKED) ends CANCELED now with ``reason`` (its once
    key freed); a running one is asked to stop (its node kills it; its settle then ends
    it CANCELED)."""
    return Transition(
        name,
        (
            Branch(
                reason,
                Guard(_NOT_STARTED),
                Change(
                    status=JobStatus.CANCELED, reason=reason, ended=Ended.NOW, release_once=True
                ),
            ),
            Branch(
                "cancel requested",
                Guard(_PROCESSING),
                Change(cancel_requested=True, release_once=free_once_while_running),
                event=False,
            ),
        ),
    )


def cancel() -> Transition:
    """Cancel: a waiting job ends CANCELED now (its once key freed); a running one is
    asked to stop (its node kills it; its settle then ends it CANCELED); final jobs stay."""
    return _stop("cancel", "canceled", free_once_while_running=False)


def replace_once() -> Transition:
    """add_job_once found an active job that does not satisfy the request: it gives up
    its once key and is canceled (reason "replaced"), or asked to stop if running."""
    return _stop("replace", "replaced", free_once_while_running=True)


def requeue(now: float, *, blocked: bool = False) -> Transition:
    """Retry a FAILED, CANCELED or TIMEOUT job: WAITING now with a fresh retry budget;
    ``blocked`` (a job with dependencies): BLOCKED, which the store decides at once
    against its dependencies as they are now (it must not run past one that failed)."""
    return Transition(
        "retry",
        (
            Branch(
                "retried",
                Guard(RETRYABLE),
                Change(
                    status=JobStatus.BLOCKED if blocked else JobStatus.WAITING,
                    at=now,
                    attempt=Attempt.RESET,
                    ended=Ended.CLEAR,
                    reason="retried",
                    clear_result=True,
                    progress=0.0,
                    cancel_requested=False,
                    clear_owner=True,
                ),
            ),
        ),
    )


def progress(percent: float) -> Transition:
    """A held job reports progress."""
    return Transition(
        "progress", (Branch("progress", HELD, Change(progress=percent), event=False),)
    )


def renew(lease_until: float) -> Branch:
    """A held job's lease is extended (no event, no update time: renewals are frequent)."""
    return Branch("renew", HELD, Change(lease_until=lease_until, touch=False), event=False)


__all__ = [
    "CLAIMABLE",
    "CLAIMED",
    "KEEP",
    "RETRYABLE",
    "Attempt",
    "Branch",
    "Change",
    "ClaimFields",
    "Ended",
    "Guard",
    "Transition",
    "cancel",
    "claim",
    "progress",
    "renew",
    "replace_once",
    "requeue",
    "settle",
    "settle_change",
]
