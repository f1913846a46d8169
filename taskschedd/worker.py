"""The worker core: claim a job, import its class, run it, settle the outcome.

Used in-process (tests, small apps) and by the daemon's forked workers. The daemon's
master enforces timeouts, cancels and leases from outside; in-process, a worker does
that itself (SIGALRM for timeouts in the main thread, a thread for lease renewal).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import FrameType
from typing import Any

import structlog

from taskschedd import rules
from taskschedd.errors import JobClassError, JobDataError, StoreUnavailable
from taskschedd.job import Job
from taskschedd.loader import load_class
from taskschedd.options import dump_result
from taskschedd.store.base import ClaimRequest, ErrorInfo, JobRecord, Settlement, Store

log = structlog.get_logger("taskschedd.worker")


class JobTimeoutError(BaseException):
    """Raised inside an in-process job when its timeout passes."""


@dataclass
class Outcome:
    """What happened to one claimed job."""

    job: JobRecord
    settlement: Settlement
    settled: bool  # False: the claim was lost (fenced off), nothing was written
    next_job: JobRecord | None = None  # claimed in the settle's transaction (claim_next)


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


class Worker:
    """Runs jobs from ``queues`` (in order of preference) in this process.

    ``on_claim`` / ``on_settle`` / ``on_progress`` let the daemon tell its master what this
    worker holds.
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
        self.jobs_done = 0
        self._classes: dict[str, type[Job]] = {}

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

    def run_one(
        self,
        *,
        force_spawn: bool = False,
        job_id: str | None = None,
        claim_next: Callable[[], bool] | None = None,
    ) -> Outcome | None:
        """Claim and run one due job; None when there is none. See :meth:`execute` for
        ``claim_next``."""
        job = self.claim(force_spawn=force_spawn, job_id=job_id)
        if job is None:
            return None
        return self.execute(job, claim_next=claim_next, force_spawn=force_spawn)

    def execute(
        self,
        job: JobRecord,
        *,
        claim_next: Callable[[], bool] | None = None,
        force_spawn: bool = False,
    ) -> Outcome:
        """Run a claimed job and settle it. If ``claim_next()`` says so just before the
        settle, the next due job is claimed in the same store transaction (one commit
        instead of two) and returned as ``Outcome.next_job``: the caller must execute
        it (or give it back) and report it as claimed only after this outcome."""
        assert job.claim_token is not None
        if self.on_claim is not None:
            self.on_claim(job)
        bound = log.bind(
            job_id=job.id, job_class=job.cls, attempt=job.attempt, queue=job.queue,
            node=self.node, worker=self.name,
        )  # fmt: skip
        settlement = self._run(job, bound)
        want_next = claim_next is not None and claim_next()
        settled, next_job = self._settle(job, settlement, claim_next=want_next,
                                         force_spawn=force_spawn)  # fmt: skip
        self.jobs_done += 1
        outcome = Outcome(job=job, settlement=settlement, settled=settled, next_job=next_job)
        if settled:
            bound.info("job settled", status=settlement.status.name, reason=settlement.reason)
        else:
            bound.warning("job claim was lost before settling; outcome discarded (fenced)")
        if self.on_settle is not None:
            self.on_settle(outcome)
        return outcome

    def release(self, job: JobRecord) -> bool:
        """Give back a claimed job that was not started (no attempt used)."""
        assert job.claim_token is not None
        return self.store.settle(job.id, job.claim_token, rules.release(job), now=time.time())

    def _settle(
        self,
        job: JobRecord,
        settlement: Settlement,
        *,
        claim_next: bool = False,
        force_spawn: bool = False,
    ) -> tuple[bool, JobRecord | None]:
        assert job.claim_token is not None
        delay = 0.05
        # The settle is fenced by the claim token, so trying after the lease is safe: if
        # another node reaped the job meanwhile, it matches nothing. A daemon worker keeps
        # the outcome until the store takes it (its master renews the lease once the store
        # is back, and stops or outlives it); giving up would turn a job that ran into an
        # "abandoned" attempt. In-process, give up after the lease.
        deadline = time.monotonic() + max(self.lease, 5.0) if self.in_process else None
        next_token = secrets.token_hex(16)
        while True:
            try:
                if not claim_next:
                    now = time.time()
                    return self.store.settle(job.id, job.claim_token, settlement, now=now), None
                claim = ClaimRequest(
                    queues=self.queues, node=self.node, worker=self.name, token=next_token,
                    lease=self.lease, force_spawn=force_spawn,
                )  # fmt: skip
                done, jobs = self.store.settle_batch(
                    [(job.id, job.claim_token, settlement)], now=time.time(), claim=claim
                )
                return done[0], (jobs[0] if jobs else None)
            except StoreUnavailable as exc:
                if deadline is not None and time.monotonic() > deadline:
                    raise
                log.warning("store unavailable while settling; retrying", error=str(exc))
                time.sleep(delay)
                delay = min(delay * 2, 2.0)

    def _load(self, path: str) -> type[Job]:
        cls = self._classes.get(path)
        if cls is None:
            cls = load_class(path, self.allowed_modules)
            self._classes[path] = cls
        return cls

    def _run(self, job: JobRecord, bound: Any) -> Settlement:
        now = time.time()
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

        def report(percent: float) -> None:
            with contextlib.suppress(StoreUnavailable):  # progress is best effort
                self.store.progress(job.id, token, percent, now=time.time())
            if self.on_progress is not None:
                self.on_progress(job, percent)

        renewer = _LeaseRenewer(self.store, token, self.lease) if self.in_process else None
        alarm = self.in_process and job.options.timeout > 0 and _can_alarm()
        bound.info("job started")
        try:
            instance = cls()
            instance._bind(
                job_id=job.id, data=job.data, attempt=job.attempt, queue=job.queue,
                context=self.context, reporter=report,
            )  # fmt: skip
            if renewer:
                renewer.start()
            if alarm:
                _arm(job.options.timeout)
            try:
                result = instance.start()
            finally:
                if alarm:
                    _disarm()
            result_json = dump_result(result)
        except JobTimeoutError:
            bound.warning("job timed out", timeout=job.options.timeout)
            return rules.on_timeout(job, time.time())
        except JobDataError as exc:
            info = error_info(exc, job.attempt, time.time(), reason="result")
            return rules.on_error(job, info, time.time(), permanent=True)
        except KeyboardInterrupt:
            # In-process Ctrl-C: give the job back untouched, then stop.
            self._settle(job, rules.release(job))
            raise
        except BaseException as exc:
            bound.warning("job raised", error_type=type(exc).__name__, error=str(exc))
            return rules.on_error(job, error_info(exc, job.attempt, time.time()), time.time())
        finally:
            if renewer:
                renewer.stop()
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
        ran = 0
        idle_since = time.monotonic()
        waker = self.store.waker()
        pending: JobRecord | None = None  # claimed along with the last settle

        def claim_next() -> bool:
            return not stop() and (max_jobs is None or ran + 1 < max_jobs)

        try:
            while pending is not None or (not stop() and (max_jobs is None or ran < max_jobs)):
                try:
                    if pending is not None:
                        job, pending = pending, None
                        outcome: Outcome | None = self.execute(job, claim_next=claim_next)
                    else:
                        outcome = self.run_one(claim_next=claim_next)
                except StoreUnavailable as exc:
                    log.warning("store unavailable; retrying", error=str(exc))
                    waker.wait(self.poll_interval)
                    continue
                if outcome is not None:
                    ran += 1
                    idle_since = time.monotonic()
                    pending = outcome.next_job
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
            if pending is not None:  # interrupted between a settle and the next job's start
                with contextlib.suppress(StoreUnavailable):
                    self.release(pending)
            waker.close()
        return ran


def _can_alarm() -> bool:
    return threading.current_thread() is threading.main_thread()


def _on_alarm(signum: int, frame: FrameType | None) -> None:
    raise JobTimeoutError()


def _arm(seconds: float) -> None:
    signal.signal(signal.SIGALRM, _on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)


def _disarm() -> None:
    signal.setitimer(signal.ITIMER_REAL, 0)
    signal.signal(signal.SIGALRM, signal.SIG_DFL)


class _LeaseRenewer:
    """Renews one job's lease every lease/3 while it runs in this process."""

    def __init__(self, store: Store, token: str, lease: float) -> None:
        self._store = store
        self._token = token
        self._lease = lease
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="lease-renewer", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def _loop(self) -> None:
        while not self._stop.wait(self._lease / 3):
            try:
                self._store.renew([self._token], lease_until=time.time() + self._lease)
            except Exception as exc:
                log.warning("lease renewal failed", error=str(exc))
