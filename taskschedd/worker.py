"""The worker core: claim a job, import its class, run it, settle the outcome.

Used in-process (tests, small apps) and by the daemon's forked workers. The daemon's
master enforces timeouts, cancels and leases from outside; in-process, a worker does
that itself (SIGALRM for timeouts in the main thread, a thread for lease renewal).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import random
import secrets
import signal
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import FrameType
from typing import Any, Protocol

import structlog

from taskschedd import rules
from taskschedd.dependency_results import DependencyResults
from taskschedd.errors import JobClassError, JobDataError, StoreError, StoreUnavailable
from taskschedd.job import Job
from taskschedd.leasewatch import lease_margin
from taskschedd.loader import load_class
from taskschedd.model import ClaimRequest, Dependency, ErrorInfo, JobRecord, clip
from taskschedd.options import DEFAULT_MAX_DATA_SIZE, dump_result
from taskschedd.store.base import Store
from taskschedd.transitions import Branch, Transition

log = structlog.get_logger("taskschedd.worker")


#: A job running longer than this while other jobs are held (claimed ahead, or finished
#: and not yet stored) makes the worker store and give those back.
HOLD_LIMIT = 0.05
#: Jobs shorter than this let the worker claim more at once.
FAST_JOB = 0.005
#: A store write that fails (outage, disk full) while the worker holds outcomes is tried
#: again after a jittered delay doubling up to this.
WRITE_RETRY_MAX = 2.0
#: While such a write keeps failing, the worker's log says so at most this often.
WRITE_LOG_EVERY = 30.0


class MasterGone(BaseException):
    """Raised in a daemon worker's main thread when its master died (PR_SET_PDEATHSIG):
    the worker stores what it can, gives back what it did not start, and exits."""


class JobTimeoutError(BaseException):
    """Raised inside an in-process job when its timeout passes."""


class LeaseLost(BaseException):
    """Raised inside an in-process job whose lease could not be renewed in time, or was
    found gone: it must stop before another node may take the job over."""


class RunGuard(Protocol):
    """Says whether a claimed job may start, and hears when its code is done (the daemon
    worker's :class:`taskschedd.leasewatch.LeaseWatch`)."""

    def may_start(self, job: JobRecord) -> bool: ...

    def ended(self, job: JobRecord) -> None: ...


@dataclass
class Outcome:
    """What happened to one claimed job."""

    job: JobRecord
    settlement: Transition
    settled: bool  # False: the claim was lost (fenced off), nothing was written
    #: The branch of ``settlement`` the store applied (a cancel requested meanwhile
    #: turns an outcome into CANCELED); None when not settled.
    applied: Branch | None = None
    runtime: float = 0.0  # seconds start() ran; 0 for a job given back unstarted
    started: bool = True  # False: claimed ahead and given back before it started

    @property
    def status_name(self) -> str:
        """The status the job was left in (or was to be, when not settled)."""
        status = (self.applied or self.settlement.intended).status
        return status.name if status is not None else "?"

    @property
    def reason(self) -> str | None:
        return (self.applied or self.settlement.intended).reason


def error_info(
    exc: BaseException, attempt: int, now: float, reason: str = "exception"
) -> ErrorInfo:
    kind = type(exc)
    name = (
        kind.__qualname__
        if kind.__module__ == "builtins"
        else f"{kind.__module__}.{kind.__qualname__}"
    )
    return ErrorInfo(
        attempt=attempt,
        type=name,
        message=str(exc),
        traceback="".join(traceback.format_exception(exc)),
        time=now,
        reason=reason,
    )


@dataclass
class _Finished:
    """A job that ran; its outcome waits for the worker's next store write."""

    job: JobRecord
    settlement: Transition
    runtime: float
    started: bool
    at: float = field(default_factory=time.monotonic)


class Worker:
    """Runs jobs from ``queues`` (in order of preference) in this process.

    ``on_claimed`` / ``on_claim`` / ``on_settle`` / ``on_progress`` let the daemon tell its
    master what this worker holds: jobs claimed (ahead), the job starting, outcomes stored;
    ``on_written`` follows the reports of each store write; ``on_unstored`` gets the claim
    tokens of the outcomes a failing write holds (once per token) and the error. ``guard``
    may refuse to start a claimed job (it is given back) and hears when each job's code
    is done.

    Claiming ahead: with ``claim_ahead`` > 1, a worker that meets a backlog of short jobs
    claims several in one store write and stores their outcomes together with the next
    claims, so a drain costs one durable commit per batch instead of one per job. The
    batch doubles while every job runs under FAST_JOB and the claim comes back full, and
    falls to one job at the first longer job. A job that runs longer than HOLD_LIMIT while
    others are held has a helper thread store the finished outcomes and give back the
    jobs not started, so no job waits behind a long one and no outcome is stored late.
    """

    def __init__(
        self,
        store: Store,
        *,
        allowed_modules: Sequence[str],
        queues: Sequence[str] = ("default",),
        node: str = "local",
        name: str | None = None,
        lease: float = 30.0,
        context: Any = None,
        in_process: bool = True,
        poll_interval: float = 1.0,
        on_claim: Callable[[JobRecord], None] | None = None,
        on_settle: Callable[[Outcome], None] | None = None,
        on_progress: Callable[[JobRecord, float], None] | None = None,
        on_claimed: Callable[[list[JobRecord]], None] | None = None,
        on_written: Callable[[], None] | None = None,
        on_unstored: Callable[[list[str], StoreUnavailable], None] | None = None,
        claim_ahead: int = 1,
        max_result_size: int = DEFAULT_MAX_DATA_SIZE,
        guard: RunGuard | None = None,
    ) -> None:
        self.store = store
        self.allowed_modules = tuple(allowed_modules)
        self.queues = tuple(queues)
        self.node = node
        self.name = name or f"{node}/{os.getpid()}"
        self.lease = lease
        self.context = context
        self.in_process = in_process
        self.poll_interval = poll_interval
        self.on_claim = on_claim
        self.on_settle = on_settle
        self.on_progress = on_progress
        self.on_claimed = on_claimed
        self.on_written = on_written
        self.on_unstored = on_unstored
        self.claim_ahead = max(1, claim_ahead)
        self.max_result_size = max_result_size  # bytes of JSON; larger results fail the job
        self.guard = guard
        self.jobs_done = 0
        self._classes: dict[str, type[Job]] = {}
        # Claiming ahead (see step()): jobs claimed and not started, jobs run and not yet
        # stored, the one running; shared with the helper thread under this lock.
        self._lock = threading.RLock()
        self._cond = threading.Condition(self._lock)
        self._queued: deque[JobRecord] = deque()
        self._finished: list[_Finished] = []
        self._running: JobRecord | None = None
        self._running_since = 0.0
        self._ahead = 1
        self._slow = False
        self._armed = False
        self._closing = False
        self._flusher: threading.Thread | None = None
        self._drop: set[str] = set()  # claimed-ahead jobs canceled before they start
        self._in_start = False  # the running job's start() was entered
        self._critical = 0  # main thread inside a store write: signals wait (interrupt())
        self._pending: BaseException | None = None
        self._code_done = False  # _critical counts the running job's ended code (_execute)
        # Writes the store refuses: since when, last said in the log, tokens reported to
        # on_unstored, and when to stop retrying (None: until the store takes them).
        self._failing_since: float | None = None
        self._failing_logged = 0.0
        self._unstored: set[str] = set()
        self._give_up_at: float | None = None

    # -- one job -------------------------------------------------------------------
    def claim(self, *, force_spawn: bool = False, job_id: str | None = None) -> JobRecord | None:
        return self.store.claim(
            self.queues,
            node=self.node,
            worker=self.name,
            token=secrets.token_hex(16),
            lease=self.lease,
            now=time.time(),
            force_spawn=force_spawn,
            job_id=job_id,
        )

    def run_one(self, *, force_spawn: bool = False, job_id: str | None = None) -> Outcome | None:
        """Claim one due job (``job_id``: that one, if due), run it and store its outcome
        before returning it; None when nothing is due."""
        if job_id is None:
            with self._lock:
                self._commit(claim=1, force_spawn=force_spawn, flexible=False)
                if not self._queued:
                    return None
                job = self._queued.popleft()
        else:
            claimed = self.claim(force_spawn=force_spawn, job_id=job_id)
            if claimed is None:
                return None
            job = claimed
        if job.cancel_requested:  # given back with a cancel requested: it never starts
            with self._lock:
                self._cancel_unstarted(job)
            outcomes = self.flush()
            return next((o for o in outcomes if o.job.id == job.id), None)
        self._execute(job)
        outcomes = self.flush()
        return next((o for o in outcomes if o.job.id == job.id), None)

    def release(self, job: JobRecord) -> bool:
        """Give back a claimed job that was not started (no attempt used)."""
        assert job.claim_token is not None
        settled = self.store.settle(job.id, job.claim_token, rules.release(job), now=time.time())
        return settled is not None

    # -- claiming ahead -----------------------------------------------------------------
    def step(self, *, budget: int | None = None, force_spawn: bool = False) -> bool:
        """Run one job: the next one claimed ahead or, after storing the outcomes waiting
        to be stored (in the same write), one of up to ``claim_ahead`` newly claimed.
        ``budget``: how many more jobs this worker may take (None: no limit). Returns
        False when nothing was due (the outcomes are stored then too)."""
        refused = False  # the guard refused a job: claim no more in this step
        with self._lock:
            while True:
                if not self._queued or self._hold_over():
                    want = 0
                    if not self._queued and not refused:
                        want = self._ahead if budget is None else min(self._ahead, budget)
                    self._commit(claim=want, force_spawn=force_spawn)
                if not self._queued:
                    return False
                job = self._queued[0]  # popped by _execute, where a signal is handled
                if not (job.cancel_requested or job.claim_token in self._drop):
                    if self.guard is None or self.guard.may_start(job):
                        break
                    # Its lease ends too soon to start it (no renewal confirmed in time):
                    # given back unstarted with the next write.
                    log.warning("a claimed job's lease ends too soon to start it; giving it back",
                                job_id=job.id, worker=self.name)  # fmt: skip
                    self._queued.popleft()
                    self._finished.append(_Finished(job, rules.release(job), 0.0, False))
                    refused = True
                    continue
                # Canceled while claimed ahead (or given back with a cancel requested):
                # it never starts; the cancel is stored with the next write.
                self._queued.popleft()
                self._drop.discard(job.claim_token or "")
                self._cancel_unstarted(job)
        self._execute(job, queued=True)
        return True

    def _cancel_unstarted(self, job: JobRecord) -> None:
        """A claimed job whose cancel was requested: it never starts; its cancel is stored
        with the next write. Called with the lock held."""
        log.info("job canceled before it started", job_id=job.id, worker=self.name)
        cancel = rules.on_cancel_claimed(job, time.time())
        self._finished.append(_Finished(job, cancel, 0.0, False))

    def drop(self, tokens: Iterable[str]) -> None:
        """Do not start these jobs claimed ahead: their cancel was requested."""
        with self._lock:
            self._drop.update(tokens)

    def interrupt(self, exc: BaseException) -> None:
        """From a signal handler in the main thread: raise ``exc`` there, unless the main
        thread is inside a store write, which must not be cut between the write and the
        worker's record of it; then it is raised right after. The worker is leaving: a
        write the store refuses is retried for one lease more, not until it succeeds."""
        self.give_up_writes(self.lease)
        if self._critical:
            self._pending = self._pending or exc
            return
        raise exc

    def give_up_writes(self, after: float) -> None:
        """Stop retrying store writes ``after`` seconds from now: the worker is leaving,
        and what the store has not taken by then is left to the leases."""
        at = time.monotonic() + after
        self._give_up_at = at if self._give_up_at is None else min(self._give_up_at, at)

    def flush(self, *, release: bool = True) -> list[Outcome]:
        """Store the outcomes waiting to be stored and (``release``) give back the jobs
        claimed ahead and not started; claims nothing."""
        with self._lock:
            return self._commit(claim=0, release=release)

    @property
    def holding(self) -> int:
        """Jobs claimed and not yet settled (claimed ahead, or finished and not stored)."""
        return len(self._queued) + len(self._finished)

    def close(self) -> None:
        """Stop the helper thread (outcomes still waiting are not stored: call flush).
        The worker can be used again: the thread starts again when needed."""
        with self._lock:
            self._closing = True
            self._cond.notify_all()
            flusher = self._flusher
        if flusher is not None and flusher.is_alive():
            flusher.join(timeout=5)
        with self._lock:
            self._closing = False
            self._flusher = None
            self._armed = False

    def _execute(self, job: JobRecord, *, queued: bool = False) -> None:
        """Run a claimed job (``queued``: the head of the jobs claimed ahead); its outcome
        waits in ``_finished`` for the next write."""
        assert job.claim_token is not None
        began = time.monotonic()
        self._in_start = False
        settlement: Transition | None = None
        stored = False
        try:
            with self._lock:
                self._running = job
                self._running_since = began
                if queued:
                    self._queued.popleft()
                if self._queued or self._finished:
                    self._arm_flusher()
            try:
                if self.on_claim is not None:
                    self.on_claim(job)
                bound = log.bind(
                    job_id=job.id, job_class=job.cls, attempt=job.attempt, queue=job.queue,
                    node=self.node, worker=self.name,
                )  # fmt: skip
                settlement = self._run(job, bound)
            finally:
                if self.guard is not None:
                    self.guard.ended(job)
            runtime = time.monotonic() - began
            with self._lock:
                self._running = None
                self._finished.append(_Finished(job, settlement, runtime, True))
                stored = True
                self.jobs_done += 1
                if runtime >= FAST_JOB:
                    self._ahead = 1  # long jobs: one at a time, so idle workers get others
                    self._slow = True
        except (KeyboardInterrupt, MasterGone) as exc:
            # Ctrl-C (SIGINT): give the job back untouched. The master died while start()
            # ran: the job is left to its lease (reaped as abandoned, like a killed
            # node's; its children may still run). Store what waits, give back the rest.
            with self._lock:
                self._running = None
                if stored:
                    pass
                elif settlement is not None:  # it ran to the end: keep its outcome
                    runtime = time.monotonic() - began
                    self._finished.append(_Finished(job, settlement, runtime, True))
                    self.jobs_done += 1
                elif queued and self._queued and self._queued[0] is job:
                    pass  # not taken yet: given back with the rest
                elif isinstance(exc, KeyboardInterrupt) or not self._in_start:
                    self._finished.append(_Finished(job, rules.release(job), 0.0, False))
                with contextlib.suppress(StoreError):
                    self._commit(claim=0, release=True)
            raise
        finally:
            if self._code_done:
                self._code_done = False
                self._critical -= 1
                if not self._critical and self._pending is not None:
                    pending, self._pending = self._pending, None
                    raise pending

    def _hold_over(self) -> bool:
        return bool(self._finished) and time.monotonic() - self._finished[0].at > HOLD_LIMIT

    def _commit(
        self, *, claim: int, force_spawn: bool = False, release: bool = False,
        flexible: bool = True,
    ) -> list[Outcome]:  # fmt: skip
        """One store write: the outcomes waiting, the jobs claimed ahead given back if
        ``release``, and up to ``claim`` new claims. Called with the lock held.

        Outcomes are retried while the store is unavailable (in-process: up to the lease);
        a claim alone reports the outage to the caller. Signals that interrupt the main
        thread (see :meth:`interrupt`) wait until the write and its record are done."""
        main = threading.current_thread() is threading.main_thread()
        if main:
            self._critical += 1
        try:
            return self._commit_locked(claim, force_spawn, release, flexible)
        finally:
            if main:
                self._critical -= 1
                if not self._critical and self._pending is not None:
                    pending, self._pending = self._pending, None
                    raise pending

    def _commit_locked(
        self, claim: int, force_spawn: bool, release: bool, flexible: bool
    ) -> list[Outcome]:
        finished = list(self._finished)
        released = list(self._queued) if release else []
        settles = [(f.job.id, f.job.claim_token or "", f.settlement) for f in finished]
        settles += [(j.id, j.claim_token or "", rules.release(j)) for j in released]
        if not settles and claim <= 0:
            return []
        request = None
        if claim > 0:
            request = ClaimRequest(
                queues=self.queues, node=self.node, worker=self.name,
                token=secrets.token_hex(16), lease=self.lease, limit=claim,
                force_spawn=force_spawn,
            )  # fmt: skip
        done, jobs = self._write(settles, request)
        self._finished = []
        if release:
            self._queued.clear()
        outcomes = [
            Outcome(
                job=f.job,
                settlement=f.settlement,
                settled=ok is not None,
                applied=ok,
                runtime=f.runtime,
                started=f.started,
            )
            for f, ok in zip(finished, done, strict=False)
        ]
        outcomes += [
            Outcome(
                job=j,
                settlement=rules.release(j),
                settled=ok is not None,
                applied=ok,
                started=False,
            )
            for j, ok in zip(released, done[len(finished) :], strict=False)
        ]
        for outcome in outcomes:
            self._report(outcome)
        if request is not None:
            if flexible:
                if len(jobs) == claim and not self._slow:
                    self._ahead = min(self.claim_ahead, claim * 2)
                self._slow = False
            self._queued.extend(jobs)
            if jobs and self.on_claimed is not None:
                self.on_claimed(jobs)
        if self.on_written is not None:
            self.on_written()
        return outcomes

    def _write(
        self, settles: list[tuple[str, str, Transition]], claim: ClaimRequest | None
    ) -> tuple[list[Branch | None], list[JobRecord]]:
        delay = 0.05
        # Settles are fenced by the claim tokens, so trying after the lease is safe: if
        # another node reaped a job meanwhile, it matches nothing. A daemon worker keeps
        # the outcomes until the store takes them (an outage, a full disk: its master
        # renews their leases meanwhile and does not settle them while the worker lives);
        # giving up would turn jobs that ran into "abandoned" attempts. In-process, and
        # once the worker is leaving, give up after the lease. The helper thread does not
        # wait here: it gives the lock back between its attempts.
        limit = time.monotonic() + max(self.lease, 5.0) if self.in_process else None
        helper = threading.current_thread() is self._flusher
        while True:
            try:
                done = self.store.settle_batch(settles, now=time.time(), claim=claim)
            except StoreUnavailable as exc:
                now = time.monotonic()
                deadline = min(
                    (t for t in (limit, self._give_up_at) if t is not None), default=None
                )
                if not settles or (deadline is not None and now > deadline):
                    raise
                self._write_failed(settles, exc, now)
                if helper:
                    raise
                time.sleep(delay / 2 + random.random() * delay / 2)
                delay = min(delay * 2, WRITE_RETRY_MAX)
                continue
            if self._failing_since is not None and settles:
                log.info(
                    "the store took the outcomes it refused", outcomes=len(settles),
                    after=round(time.monotonic() - self._failing_since, 2), worker=self.name,
                )  # fmt: skip
                self._failing_since = None
                self._unstored.clear()
            return done

    def _write_failed(
        self, settles: list[tuple[str, str, Transition]], exc: StoreUnavailable, now: float
    ) -> None:
        """Keep the outcomes, tell on_unstored about new ones, say so in the log (not
        at every try)."""
        if self._failing_since is None:
            self._failing_since = now
            self._failing_logged = 0.0
        if now - self._failing_logged >= WRITE_LOG_EVERY or not self._failing_logged:
            self._failing_logged = now
            log.warning(
                "the store refuses the outcomes; keeping them and retrying", error=str(exc),
                outcomes=len(settles), failing_for=round(now - self._failing_since, 2),
                worker=self.name,
            )  # fmt: skip
        new = [token for _, token, _ in settles if token not in self._unstored]
        if new:
            self._unstored.update(new)
            if self.on_unstored is not None:
                self.on_unstored(new, exc)

    def _report(self, outcome: Outcome) -> None:
        job = outcome.job
        if outcome.started:
            bound = log.bind(
                job_id=job.id, job_class=job.cls, attempt=job.attempt, queue=job.queue,
                node=self.node, worker=self.name,
            )  # fmt: skip
            if outcome.settled:
                bound.info(
                    "job settled", status=outcome.status_name, reason=outcome.reason,
                    runtime=round(outcome.runtime, 6),
                )  # fmt: skip
            else:
                bound.warning("job claim was lost before settling; outcome discarded (fenced)")
        if self.on_settle is not None:
            self.on_settle(outcome)

    # -- the helper thread: long jobs do not hold others ---------------------------------
    def _arm_flusher(self) -> None:
        """A job starts while others are held: have the helper thread store and give them
        back if this one runs longer than HOLD_LIMIT. Called with the lock held."""
        if self._closing:
            return
        if self._flusher is None:
            self._flusher = threading.Thread(
                target=self._flusher_loop, name="claim-ahead", daemon=True
            )
            self._flusher.start()
        if not self._armed:
            self._armed = True
            self._cond.notify()

    def _flusher_loop(self) -> None:
        # The thread lives only while a job runs with others held: a job that forks meets
        # one thread less often (forking a multi-threaded process copies its locks).
        with self._cond:
            while not self._closing:
                if self._running is None or not (self._queued or self._finished):
                    self._armed = False
                    if self._flusher is threading.current_thread():
                        self._flusher = None
                    return
                wait = self._running_since + HOLD_LIMIT - time.monotonic()
                if wait > 0:
                    self._cond.wait(wait)
                    continue
                try:
                    self._commit(claim=0, release=True)
                except StoreUnavailable:  # _write said so; the main thread retries next
                    self._cond.wait(1.0)
                except Exception as exc:  # the leases end it; never kill the thread
                    log.warning("could not store outcomes while a long job runs", error=str(exc))
                    self._cond.wait(1.0)

    def _load(self, path: str) -> type[Job]:
        cls = self._classes.get(path)
        if cls is None:
            cls = load_class(path, self.allowed_modules)
            self._classes[path] = cls
        return cls

    def _dependencies(self, job: JobRecord) -> Mapping[str, Dependency]:
        """The status and result of each of the job's dependencies, read now (statuses a
        page of 500 per store read, then results with their memory bounded: see
        dependency_results)."""
        ids = job.options.depends_on
        if not ids:
            return {}
        return DependencyResults(
            ids, self.store.dependency_states, self.store.dependency_results,
            created=job.created,
        )  # fmt: skip

    def _run(self, job: JobRecord, bound: Any) -> Transition:
        now = time.time()
        if job.corrupt is not None:
            bound.error(
                "stored job does not decode: quarantined, not run"
                + ("; its recurring series ends here" if job.series else ""),
                why=job.corrupt, series=job.series,
            )  # fmt: skip
            return rules.on_corrupt(job, now)
        if rules.is_expired(job, now):
            bound.info("job expired before it could start")
            return rules.on_expired(job, now)
        try:
            cls = self._load(job.cls)
        except JobClassError as exc:
            bound.error("job class cannot be used", error=str(exc))
            info = ErrorInfo(
                attempt=job.attempt,
                type="JobClassError",
                message=str(exc),
                time=now,
                reason="class",
            )
            return rules.on_error(job, info, now, permanent=True)
        token = job.claim_token
        assert token is not None
        try:
            deps = self._dependencies(job)
        except StoreUnavailable as exc:
            # Not the job's fault: given back without using an attempt.
            bound.warning("cannot read the job's dependencies; giving it back", error=str(exc))
            return rules.release(job)

        def report(percent: float) -> None:
            with contextlib.suppress(StoreUnavailable):  # progress is best effort
                self.store.progress(job.id, token, percent, now=time.time())
            if self.on_progress is not None:
                self.on_progress(job, percent)

        renewer = _LeaseRenewer(self.store, job, self.lease) if self.in_process else None
        # In the main thread, SIGALRM stops the job: its timeout, or a lost lease.
        alarm = self.in_process and _can_alarm() and (job.options.timeout > 0 or bool(renewer))

        def on_alarm(signum: int, frame: FrameType | None) -> None:
            if renewer is not None and renewer.lost:
                raise LeaseLost(renewer.lost)
            raise JobTimeoutError()

        restore: list[_Handler] = []  # SIGALRM's handler before ours, until put back
        bound.info("job started")
        try:
            instance = cls()
            instance._bind(
                job_id=job.id, data=job.data, attempt=job.attempt, queue=job.queue,
                context=self.context, reporter=report, dependencies=deps,
            )  # fmt: skip
            if alarm:
                restore.append(_arm(job.options.timeout, on_alarm))
            if renewer:
                renewer.start()
            try:
                self._in_start = True  # from here on the job may have done something
                result = instance.start()
            finally:
                # The job's code is done: a signal (the node stopping now) waits until its
                # outcome is kept (stored with the next write), or it would run again.
                self._critical += 1
                self._code_done = True
                if renewer:
                    renewer.stop()  # after this, no LeaseLost comes
                if restore:
                    _disarm(restore.pop())
            result_json = dump_result(result, self.max_result_size)
        except LeaseLost as exc:
            # Stopped before another node may take it over; the settle is fenced.
            why = (renewer.lost if renewer else None) or str(exc)
            bound.error("job stopped: its lease was not renewed in time", why=why)
            return rules.on_abandoned(job, time.time(), detail=f"lease lost: {why}")
        except JobTimeoutError:
            bound.warning("job timed out", timeout=job.options.timeout)
            return rules.on_timeout(job, time.time())
        except JobDataError as exc:
            info = error_info(exc, job.attempt, time.time(), reason="result")
            return rules.on_error(job, info, time.time(), permanent=True)
        except (KeyboardInterrupt, MasterGone):
            raise  # the caller gives the job back, or leaves it to its lease
        except BaseException as exc:
            bound.warning("job raised", error_type=type(exc).__name__, error=clip(str(exc), 1024))
            return rules.on_error(job, error_info(exc, job.attempt, time.time()), time.time())
        finally:
            if renewer:
                renewer.stop()
            if restore:
                _disarm(restore.pop())
        return rules.on_success(job, result_json, time.time())

    # -- a loop ---------------------------------------------------------------------
    def run(
        self,
        *,
        stop: Callable[[], bool] = lambda: False,
        max_jobs: int | None = None,
        idle_exit: float | None = None,
    ) -> int:
        """Run jobs until ``stop()``; returns how many ran. ``idle_exit``: return after that
        many seconds without work (None: wait forever)."""
        idle_since = time.monotonic()
        waker = self.store.waker()
        started = self.jobs_done
        try:
            while not stop():
                ran = self.jobs_done - started
                if max_jobs is not None and ran >= max_jobs:
                    break
                budget = None if max_jobs is None else max_jobs - ran
                try:
                    if self.step(budget=budget):
                        idle_since = time.monotonic()
                        continue
                except StoreUnavailable as exc:
                    log.warning("store unavailable; retrying", error=str(exc))
                    waker.wait(self.poll_interval)
                    continue
                if idle_exit is not None and time.monotonic() - idle_since >= idle_exit:
                    break
                timeout = self.poll_interval
                try:
                    due = self.store.next_due(self.queues)
                except StoreUnavailable:
                    due = None  # the next claim attempt reports the outage
                if due is not None:
                    timeout = max(0.0, min(timeout, due - time.time()))
                if idle_exit is not None:
                    timeout = min(timeout, max(0.0, idle_exit - (time.monotonic() - idle_since)))
                waker.wait(timeout)
        finally:
            # Stopped: store what waits and give back what was claimed ahead.
            with contextlib.suppress(StoreUnavailable):
                self.flush()
            self.close()
            waker.close()
        return self.jobs_done - started


def _can_alarm() -> bool:
    return threading.current_thread() is threading.main_thread()


_Handler = Callable[[int, FrameType | None], Any] | int | None


def _arm(seconds: float, handler: Callable[[int, FrameType | None], None]) -> _Handler:
    """Install ``handler`` for SIGALRM (and fire it after ``seconds`` if > 0); returns
    the handler it replaced."""
    previous = signal.signal(signal.SIGALRM, handler)
    if seconds > 0:
        signal.setitimer(signal.ITIMER_REAL, seconds)
    return previous


def _disarm(previous: _Handler) -> None:
    signal.setitimer(signal.ITIMER_REAL, 0)
    signal.signal(signal.SIGALRM, signal.SIG_DFL if previous is None else previous)


class _LeaseRenewer:
    """Renews one in-process job's lease every lease/3 while it runs, and stops the job
    (LeaseLost, raised in the thread that runs it) before another node may take it over:
    when no renewal has succeeded by lease - margin after the last one (the store cannot
    be reached), or a renewal finds the claim gone.

    In the main thread the job is interrupted by SIGALRM (its handler is in place while
    the job runs), even inside a blocking call; in another thread it is an asynchronous
    exception, raised when the thread next runs Python code."""

    def __init__(self, store: Store, job: JobRecord, lease: float) -> None:
        assert job.claim_token is not None
        self._store = store
        self._token = job.claim_token
        self._lease = lease
        self._margin = lease_margin(lease)
        mono, wall = time.monotonic(), time.time()
        until = job.lease_until if job.lease_until is not None else wall + lease
        self._deadline = mono + (until - wall)  # monotonic end of the lease
        self._target = threading.get_ident()  # the job runs in the thread that makes us
        self._cond = threading.Condition()
        self._done = False
        self.lost: str | None = None  # why the job was stopped
        self._threads = [
            threading.Thread(target=self._renew, name="lease-renewer", daemon=True),
            threading.Thread(target=self._watch, name="lease-watch", daemon=True),
        ]

    def start(self) -> None:
        # Signals stay with the job's thread (a SIGINT must interrupt the job, not these).
        old = signal.pthread_sigmask(signal.SIG_BLOCK, signal.valid_signals())
        try:
            for thread in self._threads:
                thread.start()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, old)

    def stop(self) -> None:
        """The job's code is done: no LeaseLost is raised once this returns."""
        with self._cond:
            self._done = True
            self._cond.notify_all()
        for thread in self._threads:
            if thread.is_alive() and thread is not threading.current_thread():
                thread.join()

    def _renew(self) -> None:
        wait = self._lease / 3
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._done, wait)
                if self._done:
                    return
            started = time.monotonic()  # before the wall clock of lease_until
            try:
                renewed = self._store.renew([self._token], lease_until=time.time() + self._lease)
            except Exception as exc:
                log.warning("lease renewal failed", error=str(exc))
                wait = self._margin  # try again soon; _watch stops the job in time
                continue
            wait = self._lease / 3
            with self._cond:
                if not renewed:
                    self._stop_job("its claim is gone (another node took the job over)")
                    return
                # A renewal that returned after the kill time may have come after a reap.
                if time.monotonic() < self._deadline - self._margin:
                    self._deadline = max(self._deadline, started + self._lease)
                    self._cond.notify_all()

    def _watch(self) -> None:
        with self._cond:
            while not self._done:
                left = self._deadline - self._margin - time.monotonic()
                if left <= 0:
                    self._stop_job("no renewal succeeded in time")
                    return
                self._cond.wait(left)

    def _stop_job(self, why: str) -> None:
        """Called with the condition held, so never after stop()."""
        if self._done or self.lost is not None:
            return
        self.lost = why
        log.error("lease lost: stopping the job", why=why, token=self._token[:8])
        if self._target == threading.main_thread().ident:
            signal.pthread_kill(self._target, signal.SIGALRM)  # _run's handler raises
        else:
            ctypes.pythonapi.PyThreadState_SetAsyncExc(
                ctypes.c_ulong(self._target), ctypes.py_object(LeaseLost)
            )
