"""The store interface, and the records it takes and returns.

Stores are dumb and fast: they apply the transitions that :mod:`taskschedd.transitions`
and :mod:`taskschedd.rules` decide, atomically with their guards; they hold no
scheduling rules.
"""

from __future__ import annotations

import abc
import json
import time
from collections.abc import Iterable, Sequence
from typing import Any

from taskschedd import transitions
from taskschedd.errors import JobNotFound, StoreUnavailable
from taskschedd.limits import LimitSpec, LimitState
from taskschedd.model import (
    ClaimRequest,
    EventRecord,
    JobQuery,
    JobRecord,
    JobStatus,
    NewJob,
    NodeRecord,
)
from taskschedd.stats import StatRows, fold
from taskschedd.transitions import Branch, Transition


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


class UnknownDependency(LookupError):
    """Insert found that a job's depends_on names jobs that do not exist (nothing written).

    ``job_id``: the job being inserted (not in the message: often an id generated for a
    job that was never written); ``missing``: the ids not found."""

    #: The most unknown ids a message names (10,000 of them made a 69 KB message).
    SHOWN = 10

    def __init__(self, job_id: str, missing: Sequence[str]) -> None:
        self.job_id = job_id
        self.missing = list(missing)
        super().__init__(f"depends_on: {self.what()}")

    def what(self) -> str:
        """``no job with id 'a'``, ``no job with ids 'a', 'b'`` (the first SHOWN ids,
        then how many more)."""
        shown = ", ".join(repr(i) for i in self.missing[: self.SHOWN])
        more = len(self.missing) - self.SHOWN
        if more > 0:
            shown += f" and {more} more"
        return f"no job with id{'s' if len(self.missing) > 1 else ''} {shown}"


def prefix_end(prefix: str) -> str | None:
    """The least text above every text that starts with ``prefix`` (code point order,
    which is SQLite's BINARY order of UTF-8 and MongoDB's of strings); None if none."""
    chars = list(prefix)
    while chars:
        code = ord(chars.pop()) + 1
        if code == 0xD800:  # surrogates cannot be stored
            code = 0xE000
        if code <= 0x10FFFF:
            return "".join(chars) + chr(code)
    return None


class Store(abc.ABC):
    """What every store does. All times are unix seconds (float)."""

    url: str
    #: Whether insert() takes jobs with depends_on (BLOCKED until their dependencies are
    #: final; see taskschedd.dependencies): the Scheduler refuses them otherwise.
    supports_dependencies: bool = False

    # -- writing jobs ------------------------------------------------------------
    @abc.abstractmethod
    def insert(self, jobs: Sequence[NewJob]) -> None:
        """Insert all jobs atomically; DuplicateJobId if an id exists (nothing written).

        A job with depends_on is inserted BLOCKED, after the jobs before it in ``jobs``
        (it may depend on them), and decided at once against dependencies already final;
        UnknownDependency (nothing written) when one of them does not exist."""

    @abc.abstractmethod
    def insert_once(self, job: NewJob, same: Any, replace: Transition) -> tuple[JobRecord, bool]:
        """Insert unless an active job has the same once_key; race-free.

        ``same(existing) -> bool`` says whether the existing job satisfies the request;
        if not, ``replace`` is applied to the existing one (it must free the once key)
        and ``job`` inserted.
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

        Jobs held back by a limit are skipped, never waited on: a job whose limit
        (option ``limit``) has ``max_running`` jobs running, or whose rate allows no start
        now, and a job whose ``exclusive_key`` a running job holds. Taking such a job
        counts it against its limit (and its rate, and holds its key) in the same atomic
        step; a job's running stops counting when it is settled or its lease ends.

        The token is made by the caller so a lost reply can be looked up, never re-claimed.
        """

    @abc.abstractmethod
    def apply(
        self, job_id: str, transition: Transition, *, now: float, token: str | None = None
    ) -> Branch | None:
        """Apply the first branch of ``transition`` whose guard holds for the stored job at
        the time of the write, atomically with that check, with its event and follow-up
        job; ``token``: the caller's claim token (for guards on it). Returns the branch
        applied, None if no guard held (nothing written; also for no such job)."""

    @abc.abstractmethod
    def apply_series(
        self, series: str, transition: Transition, *, now: float
    ) -> list[tuple[str, Branch]]:
        """Apply ``transition`` to every job of ``series`` that is not final (its first
        job, whose id is the series id, and its occurrences), and to every occurrence a
        settle already decided but has not inserted yet: (job id, branch) applied."""

    def settle(
        self, job_id: str, token: str, transition: Transition, *, now: float
    ) -> Branch | None:
        """Apply ``transition`` to a job held under ``token`` (see :meth:`apply`)."""
        return self.apply(job_id, transition, now=now, token=token)

    def settle_batch(
        self,
        settles: Sequence[tuple[str, str, Transition]],
        *,
        now: float,
        claim: ClaimRequest | None = None,
    ) -> tuple[list[Branch | None], list[JobRecord]]:
        """Apply several settles ``(job_id, token, transition)``, then claim up to
        ``claim.limit`` due jobs: (branch applied or None per settle, jobs claimed).

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
    def renew_many(self, tokens: Iterable[str], branch: Branch, *, now: float) -> int:
        """Apply ``branch`` (a renewal: guard on the token, no event) to the jobs held
        under these tokens; returns how many."""

    def renew(self, tokens: Iterable[str], *, lease_until: float) -> int:
        """Extend the lease of the jobs held under these tokens; returns how many."""
        return self.renew_many(tokens, transitions.renew(lease_until), now=time.time())

    def progress(self, job_id: str, token: str, percent: float, *, now: float) -> bool:
        """Record progress if still held under ``token``."""
        return self.apply(job_id, transitions.progress(percent), now=now, token=token) is not None

    @abc.abstractmethod
    def expired(self, now: float, limit: int = 100) -> list[JobRecord]:
        """PROCESSING jobs whose lease ended before ``now``."""

    @abc.abstractmethod
    def malformed(self, limit: int = 100) -> list[JobRecord]:
        """Records that claims and reaps cannot see or settle because a field they compare
        has the wrong type or value (status, due time, queue, lease, token: written by
        another client); each with ``corrupt`` set. The nodes quarantine them."""

    def _still_undecidable(self, pending: dict[str, Any], limit: int) -> list[JobRecord]:
        """Of the BLOCKED jobs a dependency sweep could not decide on (``pending``: id ->
        what the store keeps of each), up to ``limit`` that still are, as records for
        :meth:`malformed`; those gone, fixed or decided meanwhile are dropped from it."""
        out: list[JobRecord] = []
        for job_id in list(pending)[: max(0, limit)]:
            try:
                record = self.get(job_id)
            except JobNotFound:
                del pending[job_id]
                continue
            if record.status is not JobStatus.BLOCKED and record.corrupt is None:
                del pending[job_id]
                continue
            out.append(record)
        return out

    @abc.abstractmethod
    def quarantine(self, record: JobRecord, transition: Transition, *, now: float) -> bool:
        """Apply ``transition`` (from rules.on_corrupt) to a record :meth:`malformed`
        returned, with its event, if the stored record is still malformed; False if it
        is not (fixed or settled meanwhile) or cannot be addressed by its id."""

    def cancel(self, job_id: str, *, now: float) -> JobRecord:
        """Cancel this one job (see transitions.cancel; Scheduler.cancel_job cancels a
        whole series). JobNotFound if there is no such job."""
        self.apply(job_id, transitions.cancel(), now=now)
        return self.get(job_id)

    def requeue(self, job_id: str, *, now: float, blocked: bool = False) -> tuple[JobRecord, bool]:
        """Put a FAILED/TIMEOUT/CANCELED job back to WAITING with a fresh retry budget
        (``blocked``: BLOCKED on its dependencies, decided at once: see transitions.requeue).

        Returns the job and whether it was re-queued (False: it was not in such a status).
        """
        applied = self.apply(job_id, transitions.requeue(now, blocked=blocked), now=now)
        return self.get(job_id), applied is not None

    def sweep_dependencies(self, now: float) -> int:
        """Decide the BLOCKED jobs a crash left between a dependency's settle and their
        release (a store without transactions); how many it decided. Nodes call it
        every reap interval. A store that releases in the settle's own transaction has
        nothing to do."""
        return 0

    # -- reading -----------------------------------------------------------------
    def dependency_states(
        self, ids: Sequence[str]
    ) -> dict[str, tuple[JobStatus | None, float | None]]:
        """(status, created) of the jobs of ``ids`` that exist, without their data or
        results (what a claimed job's dependencies are read as first)."""
        return {
            r.id: (None if r.corrupt else r.status, r.created)
            for i in range(0, len(ids), 500)
            for r in self.find(JobQuery(ids=tuple(ids[i : i + 500])))
        }

    def dependency_results(self, ids: Sequence[str]) -> dict[str, tuple[Any, int]]:
        """(result, bytes of its stored JSON) of the jobs of ``ids`` that exist."""
        return {
            r.id: (r.result, len(json.dumps(r.result)))
            for i in range(0, len(ids), 500)
            for r in self.find(JobQuery(ids=tuple(ids[i : i + 500])))
        }

    def dependents(self, job_id: str) -> list[JobRecord]:
        """The jobs added with ``job_id`` in their depends_on, oldest first (a store
        without dependencies has none)."""
        return []

    @abc.abstractmethod
    def get(self, job_id: str) -> JobRecord:
        """JobNotFound if there is no such job."""

    @abc.abstractmethod
    def find(self, query: JobQuery) -> list[JobRecord]:
        """The jobs matching every filter of ``query``, in seq order (newest first when
        asked). Built for pages of a million jobs: a filter reads an index, and a next
        page is a keyset (``before_seq``/``after_seq`` of the last job seen), never an
        offset."""

    @abc.abstractmethod
    def counts(self) -> list[tuple[Any, Any, Any, int]]:
        """(status, queue, cls, count) of every job, values as stored (another client's
        may not decode), groups of at least one job: exact, and cheap at a million jobs
        (a dashboard's overview reads it on every refresh)."""

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
        """The earliest due time of a runnable job in these queues. A job held back by a
        limit or an exclusive key is not due now (a worker must not spin on it): it
        counts from when its rate next lets one start, or not at all while its limit is
        full or its key held (a settle's wake-up says when that changes)."""

    # -- limits (taskschedd.limits) -------------------------------------------------------
    @abc.abstractmethod
    def set_limit(self, spec: LimitSpec) -> None:
        """Create or replace a limit's definition. Its running jobs and the start times of
        its rate window stay: a lower max_running holds new starts until enough end."""

    @abc.abstractmethod
    def delete_limit(self, name: str) -> bool:
        """Remove a limit's definition (its jobs then run unlimited); False if none."""

    @abc.abstractmethod
    def limits(self, *, now: float) -> list[LimitState]:
        """Every defined limit with its running count, waiting count (queued and due)
        and its rate's start times, sorted by name."""

    @abc.abstractmethod
    def limit_specs(self) -> list[LimitSpec]:
        """The defined limits, sorted by name, without the counts :meth:`limits` reads
        (an add joins ``queue:``/``class:`` limits by name; counting the jobs waiting
        on each costs time in proportion to them)."""

    @abc.abstractmethod
    def key_holders(self, keys: Sequence[str], *, now: float) -> dict[str, str]:
        """Of these exclusive keys, those a running job holds: key -> the job's id."""

    @abc.abstractmethod
    def stat_rows(self, *, now: float, since: float) -> StatRows:
        """The raw grouped rows of :func:`taskschedd.stats.fold`, values as stored: every
        job counted by (status, queue, cls); the earliest ``at`` per queue of runnable
        jobs due by ``now``; final jobs with ``ended >= since`` counted by status. Only
        reads: labelling and the figures' definitions are the fold's."""

    def stats(self, *, now: float, window: float = 300.0) -> dict[str, Any]:
        """Counts by status/queue/class, oldest waiting age per queue, finished in window
        (defined in :mod:`taskschedd.stats`)."""
        return fold(self.stat_rows(now=now, since=now - window), now=now, window=window)

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

    # -- the node registry: one entry per node name, owned by one instance --------------
    @abc.abstractmethod
    def register_node(
        self, node: NodeRecord, *, now: float, window: float, replace: str | None = None
    ) -> NodeRecord | None:
        """Take the registry entry of ``node.name`` for ``node.instance``, atomically:
        written (None returned) when there is no entry of that name, or it is not live at
        ``now`` (NodeRecord.live: past its own ``live_until``; an entry without one, for
        ``window`` seconds after its heartbeat), or it does not decode, or its instance is
        ``node.instance`` or ``replace`` (a holder the caller found dead). Otherwise the
        live holder's entry is returned and nothing is written: of two nodes registering
        one name at once, at most one gets it."""

    @abc.abstractmethod
    def heartbeat(self, node: NodeRecord) -> bool:
        """Update the entry of ``node.name`` whose instance is ``node.instance`` (every
        field), or insert it when the name has no entry. False, and nothing written, when
        the name's entry belongs to another instance: this node was taken over."""

    @abc.abstractmethod
    def nodes(self, *, alive_after: float | None = None) -> list[NodeRecord]:
        """The registry's entries by name; given ``alive_after``, those whose heartbeat is
        not older (whether an entry is live is NodeRecord.live: its own live_until)."""

    @abc.abstractmethod
    def remove_node(self, name: str, instance: str | None = None) -> None:
        """Delete the entry of ``name``; given ``instance``, only if it is that instance's
        (a node's exit never removes the entry of another node of its name)."""

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
