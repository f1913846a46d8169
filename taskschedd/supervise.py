"""Supervision of the jobs the node's workers hold, for what a worker cannot do itself.

The :class:`Supervisor` follows each worker's claims from its reports (jobs claimed
ahead, the job that starts, progress, outcomes stored), renews the leases of every held
claim every lease/3, enforces timeouts and cancel requests (SIGTERM to the worker's
process group, SIGKILL at a deadline: kills escalate by deadline, never by sleeping; a
claimed-ahead job whose cancel is requested is dropped by its worker, not killed) and
memory limits (what the running job added to its process group, sampled every
MEMORY_POLL, :mod:`taskschedd.memwatch`; SIGKILL at once, no grace to grow in), and
settles, through :mod:`taskschedd.rules`, the jobs whose worker is gone. What a worker
holds moves AHEAD -> RUNNING -> RAN (outcome not stored yet) and, when the store refuses
that outcome, UNSTORED (:class:`~taskschedd.children.HeldState`).

A job is settled only once its process group is empty (or SIGKILL has been sent to it),
so a retry never overlaps the remains of the attempt before it. A settlement the master
owes (:class:`Owed`, one of :class:`~taskschedd.children.OwedOutcome`) is kept, with
backoff, until the store takes it or the claim is fenced off.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from taskschedd import memwatch, rules
from taskschedd.children import (
    HeldState,
    Kill,
    KillReason,
    KillWanted,
    OwedOutcome,
    RunningJob,
    WorkerHandle,
)
from taskschedd.config import Config
from taskschedd.errors import JobNotFound, StoreError, StoreReplaced
from taskschedd.messages import Claim, ClaimedJob, Drop, LeaseConfirmed, Progress, Unstored
from taskschedd.model import JobQuery, JobRecord, JobStatus
from taskschedd.osproc import group_alive, killpg
from taskschedd.periodic import Every, store_backoff, store_trouble
from taskschedd.store import Store
from taskschedd.transitions import Transition

CANCEL_POLL = 0.5  # seconds between looks for cancel requests of running jobs
KILL_HOLD = 0.25  # longest a kill waits for a worker to store the outcomes it holds
# Stopping gives back what a worker holds: a job that ran but whose outcome is not stored
# yet would run again. A loaded store (nx-27017 on a busy CI machine) can take longer
# than KILL_HOLD to store a batch, so stopping waits longer; a timeout or cancel does
# not, as it delays the kill of the job it is for.
KILL_HOLD_STOPPING = 2.0


@dataclass
class Owed:
    """A settlement the master owes for a job whose worker is gone."""

    job: RunningJob
    reason: OwedOutcome
    detail: str
    worker: str
    pgid: int | None  # settle once this process group is empty...
    deadline: float  # ...or at this monotonic time, after SIGKILL to it
    next_try: float = 0.0
    failures: int = 0


class Supervisor:
    """The claims of the node's workers (``workers``: the master's live table, read here;
    the master adds and removes workers), kept through ``store``."""

    def __init__(
        self, config: Config, workers: Mapping[int, WorkerHandle], logger: Any, store: Store
    ) -> None:
        self.config = config
        self.workers = workers
        self.log = logger
        self.store = store
        self.owed: list[Owed] = []
        self.renew_timer = Every()
        self.cancel_timer = Every()
        self.memory_next = 0.0  # monotonic: when to sample the running jobs' memory next
        self.unstored_why = ""  # the workers' last word on why the store refuses writes
        self.unstored_error = ""

    def reconfigure(self, config: Config, logger: Any) -> None:
        """A reload: the new configuration and the logger bound to it."""
        self.config, self.log = config, logger

    def timers(self) -> tuple[Every, ...]:
        """The periodic store calls, whose failures say the store is down."""
        return (self.renew_timer, self.cancel_timer)

    def drop_owed(self) -> list[Owed]:
        """Give up the settlements still owed (stopping: their leases return the jobs)."""
        owed, self.owed = self.owed, []
        return owed

    def job_log(self, job: RunningJob, worker: str) -> Any:
        return self.log.bind(
            job_id=job.id, job_class=job.cls, attempt=job.attempt, queue=job.queue,
            worker=worker,
        )  # fmt: skip

    # -- worker reports -----------------------------------------------------------------
    def claimed_ahead(self, w: WorkerHandle, claimed: tuple[ClaimedJob, ...]) -> None:
        """Jobs the worker claimed in one write; each is announced again when it starts."""
        for c in claimed:
            w.held[c.token] = RunningJob(
                id=c.id, token=c.token, cls=c.cls, attempt=c.attempt, queue=c.queue,
                timeout=c.timeout, started=0.0, state=HeldState.AHEAD,
                max_memory=c.max_memory,
            )  # fmt: skip

    def claimed(self, w: WorkerHandle, msg: Claim) -> None:
        """A job it claimed starts. The one before it, if not settled yet, ran: its outcome
        is stored with the worker's next write."""
        token = msg.token
        if w.job is not None and w.job.token != token:
            w.job.state = HeldState.RAN  # RUNNING -> RAN
            w.held[w.job.token] = w.job
        job = w.held.pop(token, None)
        if job is None:  # not announced (cannot happen with our workers): what we know
            job = RunningJob(id="?", token=token, cls="", attempt=0, queue="", timeout=0.0,
                             started=0.0)  # fmt: skip
        job.state = HeldState.RUNNING  # AHEAD -> RUNNING
        job.started = msg.started if msg.started is not None else time.time()
        job.memory_base = msg.rss
        w.job = job

    def unstored(self, w: WorkerHandle, msg: Unstored) -> None:
        """The worker's store write failed (disk full, outage): it keeps these outcomes
        and retries until the store takes them. The jobs no longer run (no timeout or
        cancel applies), their leases are renewed, and the master settles them only if
        the worker dies first (then as "abandoned": their outcome is lost)."""
        self.unstored_why = msg.why
        self.unstored_error = msg.error
        for token in msg.tokens:
            if w.job is not None and w.job.token == token:
                w.job.state = HeldState.UNSTORED  # RUNNING -> UNSTORED
                w.held[token], w.job = w.job, None
            elif token in w.held and w.held[token].state is HeldState.RAN:
                w.held[token].state = HeldState.UNSTORED  # RAN -> UNSTORED

    def outcomes_waiting(self) -> int:
        """Outcomes the workers hold because the store refused them."""
        return sum(
            1
            for w in self.workers.values()
            for j in w.held.values()
            if j.state is HeldState.UNSTORED
        )

    def progressed(self, w: WorkerHandle, msg: Progress) -> None:
        if w.job is not None and w.job.token == msg.token:
            w.job.progress = msg.percent

    def settled(self, w: WorkerHandle, token: str) -> RunningJob | None:
        """The worker stored a job's outcome itself (or gave back a job claimed ahead);
        returns the job if it ran (None: given back unstarted, or not one it held)."""
        if w.job is not None and w.job.token == token:
            job, w.job = w.job, None
            w.idle_since = time.monotonic()
        else:
            held = w.held.pop(token, None)
            if held is None or held.state is HeldState.AHEAD:
                return None
            job = held
        w.jobs_done += 1
        return job

    def worker_died(
        self, w: WorkerHandle, status: int, how: str, now: float, *, shutting_down: bool
    ) -> None:
        """A worker that held jobs is gone: owe their settlements (the running job's after
        its process group is empty). Jobs it claimed ahead never started: they are given
        back (no attempt used). Jobs that ran but whose outcome it had not stored yet (at
        most HOLD_LIMIT old, see taskschedd.worker) are abandoned like the running one:
        the store cannot know their outcome, the retry policy decides (when the node
        stops now, they are given back like the running job)."""
        detail = f"worker pid {w.pid} {how}" + (f": {w.exit_reason}" if w.exit_reason else "")
        signalled = os.WIFSIGNALED(status) and os.WTERMSIG(status) in (
            signal.SIGTERM, signal.SIGKILL, signal.SIGINT,
        )  # fmt: skip
        # Stopping now gives back what the node holds, the running job included.
        giving_back = (w.kill is not None and w.kill.reason is KillReason.RELEASE) or (
            shutting_down and signalled
        )
        held, w.held = list(w.held.values()), {}
        for job in held:
            if job.state is HeldState.AHEAD or giving_back:
                self.owed.append(Owed(job, OwedOutcome.RELEASE, detail, w.name, None, now))
                self.job_log(job, w.name).info("giving back a job it held", state=job.state)
            else:
                ran = f"{detail} after the job ran, before its outcome was stored"
                deadline = w.kill.deadline if w.kill is not None else now
                # Settled once the worker's process group is empty, like the running job.
                self.owed.append(Owed(job, OwedOutcome.ABANDONED, ran, w.name, w.pid, deadline))
                self.job_log(job, w.name).error(
                    "worker gone before it stored the outcome of a job it ran", detail=detail
                )
        skip = {job.token for job in held}
        # A claim of this worker that it never announced never started: one made between
        # a write and its report when it died, or one whose reply the store lost.
        look = w.ready
        if w.job is None:
            if look:
                self._unreported_claim(w, how, now, skip=skip)
            return
        job = w.job
        if w.kill is not None and w.kill.token not in (None, job.token):
            # Killed for a job that ended just before; this one started meanwhile and was
            # cut short by the kill: give it back.
            owed = Owed(job, OwedOutcome.RELEASE, detail, w.name, w.pid, w.kill.deadline)
        elif w.kill is not None:
            reason = OwedOutcome.of(w.kill.reason)
            owed = Owed(job, reason, detail, w.name, w.pid, w.kill.deadline)
        elif shutting_down and signalled:
            # Killed along with us (e.g. systemd KillMode=control-group): give it back.
            deadline = now + self.config.kill_grace
            owed = Owed(job, OwedOutcome.RELEASE, detail, w.name, w.pid, deadline)
        else:
            killpg(w.pid, signal.SIGKILL)  # what the job left behind goes too
            owed = Owed(job, OwedOutcome.ABANDONED, detail, w.name, None, now)
            self.job_log(job, w.name).error(
                "worker died while running a job; settling the job now", detail=detail
            )
        self.owed.append(owed)
        if look:
            self._unreported_claim(w, how, now, skip=skip | {job.token})

    def _unreported_claim(
        self, w: WorkerHandle, how: str, now: float, skip: set[str] | frozenset[str] = frozenset()
    ) -> None:
        """A worker died without a word between a claim's commit and its report (a MongoDB
        claim also writes its event in between): such a job never started (a worker
        announces its claims before it starts one), so give it back now instead of after
        its lease. Best effort; if the store cannot say, the lease still expires."""
        try:
            running = self.store.find(JobQuery(statuses=(JobStatus.PROCESSING,)))
        except StoreError as exc:
            self.log.warning("could not look for a dead worker's claim", error=str(exc))
            return
        for record in running:
            if record.worker != w.name or record.claim_token is None or record.claim_token in skip:
                continue
            job = RunningJob(
                id=record.id, token=record.claim_token, cls=record.cls,
                attempt=record.attempt, queue=record.queue,
                timeout=float(record.options.timeout or 0.0),
                started=record.started or time.time(), state=HeldState.AHEAD,
            )  # fmt: skip
            detail = f"worker pid {w.pid} {how}"
            self.owed.append(Owed(job, OwedOutcome.RELEASE, detail, w.name, None, now))
            self.job_log(job, w.name).warning(
                "worker died right after claiming a job; giving it back", detail=detail
            )

    # -- kills ----------------------------------------------------------------------------
    def kill(self, w: WorkerHandle, reason: KillReason) -> None:
        """SIGTERM the worker's process group (its job and the job's children); for a job
        over its memory limit SIGKILL at once, as the kernel's OOM killer does: a grace
        would let a job that ignores SIGTERM grow for kill_grace more.

        A worker that holds outcomes of jobs it ran and has not stored yet stores them
        within HOLD_LIMIT (taskschedd.worker): the kill waits for that, at most
        KILL_HOLD, so those jobs keep the outcome they had instead of being abandoned."""
        if w.kill is not None:
            return
        now = time.monotonic()
        wanted = w.kill_wanted
        waited = wanted is not None
        if wanted is None:
            # A timeout or cancel is meant for the job running now; stopping, for all.
            release = reason is KillReason.RELEASE
            target = w.job.token if w.job is not None and not release else None
            hold = KILL_HOLD_STOPPING if release else KILL_HOLD
            wanted = KillWanted(reason, now + hold, target)
        elif reason is KillReason.RELEASE and wanted.reason is not KillReason.RELEASE:
            # Stopping outranks, and waits as long as stopping does.
            until = max(wanted.until, now + KILL_HOLD_STOPPING)
            wanted = KillWanted(KillReason.RELEASE, until, None)
        w.kill_wanted = wanted
        if wanted.token is not None and (w.job is None or w.job.token != wanted.token):
            w.kill_wanted = None  # that job ended meanwhile: nothing to kill
            return
        if any(j.state is HeldState.RAN for j in w.held.values()) and now < wanted.until:
            return
        w.kill_wanted = None
        reason = wanted.reason
        if reason is KillReason.MEMORY and waited and w.job is not None:
            self._measure(w, w.job)  # it grew while the kill waited: the most measured
        grace = self.config.kill_grace
        at_once = reason is KillReason.MEMORY
        # The deadline also bounds how long the job's settlement waits for its group to
        # be empty (Owed): a SIGKILLed group empties at once, unless a process is stuck.
        w.kill = Kill(reason=reason, deadline=time.monotonic() + grace, token=wanted.token)
        w.retiring = True
        # Stopping now interrupts the worker (SIGINT): it gives the running job back
        # itself and first stores what ran. A SIGTERM ends it at once: a job whose code
        # had just ended, its outcome not yet stored, would be given back and run again.
        first = signal.SIGINT if reason is KillReason.RELEASE else signal.SIGTERM
        if w.job is not None:
            self.job_log(w.job, w.name).warning(
                "stopping a running job", why=reason,
                signal="SIGKILL" if at_once else first.name, kill_grace=0.0 if at_once else grace,
            )  # fmt: skip
        if not at_once:
            killpg(w.pid, first)
        if at_once or grace <= 0:
            killpg(w.pid, signal.SIGKILL)
            w.kill.hard = True

    def enforce_timeouts(self, now: float) -> None:
        wall = time.time()
        for w in list(self.workers.values()):
            job = w.job
            if job and w.kill is None and job.timeout > 0 and wall >= job.started + job.timeout:
                self.kill(w, KillReason.TIMEOUT)

    def memory_limit(self, job: RunningJob) -> int:
        """Bytes the job may add to its process group: its own max_memory, else the
        node's max_job_memory; 0: no limit."""
        return (job.max_memory or self.config.max_job_memory) * 2**20

    def enforce_memory(self, now: float) -> None:
        """Every MEMORY_POLL, kill the running jobs that added more resident memory to
        their process group than their limit (then settled as "memory", see settlement)."""
        if now < self.memory_next:
            return
        self.memory_next = now + memwatch.MEMORY_POLL
        limits = {
            w.pid: limit
            for w in self.workers.values()
            if w.job is not None and w.kill is None and w.kill_wanted is None
            if (limit := self.memory_limit(w.job))
        }
        if not limits:
            return
        for pid, group in memwatch.group_rss(limits).items():
            w = self.workers[pid]
            job = w.job
            if job is None:
                continue
            used = memwatch.charged(group, job.memory_base)
            if used > limits[pid]:
                job.memory_used, job.memory_limit = max(job.memory_used, used), limits[pid]
                self.job_log(job, w.name).warning(
                    "job over its memory limit", used=used, limit=limits[pid],
                    worker_at_start=job.memory_base,
                    detail=f"{memwatch.size_text(used)} > {memwatch.size_text(limits[pid])}",
                )  # fmt: skip
                self.kill(w, KillReason.MEMORY)

    def _measure(self, w: WorkerHandle, job: RunningJob) -> None:
        """Sample one job again (a memory kill that waited): keep the most it used."""
        group = memwatch.group_rss([w.pid])[w.pid]
        job.memory_used = max(job.memory_used, memwatch.charged(group, job.memory_base))

    def poll_cancels(self, now: float) -> None:
        if now < self.cancel_timer.next:
            return
        held = {w.job.token: w for w in self.workers.values() if w.job and w.kill is None}
        ahead = {
            token: w
            for w in self.workers.values()
            if w.kill is None
            for token, job in w.held.items()
            if job.state is HeldState.AHEAD and token not in w.dropped
        }
        if not held and not ahead:
            self.cancel_timer.done(now, CANCEL_POLL)
            return
        try:
            tokens = self.store.cancel_requested([*held, *ahead])
        except StoreError as exc:
            store_trouble(self.log, "poll cancel requests", self.cancel_timer, now, exc)
            return
        self.cancel_timer.done(now, CANCEL_POLL)
        for token in tokens:
            if token in held:
                w = held[token]
                if w.kill is None:
                    self.kill(w, KillReason.CANCEL)
            elif token in ahead:  # not started: the worker drops it, nothing to kill
                w = ahead[token]
                w.dropped.add(token)
                w.command(Drop((token,)))

    def escalate(self, now: float) -> None:
        """Kills that waited for stored outcomes; SIGKILL the groups whose SIGTERM grace
        is over."""
        for w in list(self.workers.values()):
            if w.kill_wanted is not None and w.kill is None:
                self.kill(w, w.kill_wanted.reason)
        for w in self.workers.values():
            if w.kill is not None and not w.kill.hard and now >= w.kill.deadline:
                killpg(w.pid, signal.SIGKILL)
                w.kill.hard = True

    # -- settlements the master owes --------------------------------------------------
    def settle_owed(self, now: float) -> list[Owed]:
        """Settle what is owed and can be; returns those the master settled itself."""
        settled: list[Owed] = []
        for owed in list(self.owed):
            if owed.next_try > now:
                continue
            if owed.pgid is not None:
                if group_alive(owed.pgid) and now < owed.deadline:
                    continue  # the job's children still get their grace
                killpg(owed.pgid, signal.SIGKILL)
                owed.pgid = None
            done, ours = self._settle(owed)
            if done:
                self.owed.remove(owed)
                if ours:
                    settled.append(owed)
            else:
                owed.failures += 1
                owed.next_try = now + store_backoff(owed.failures)
        return settled

    def _settle(self, owed: Owed) -> tuple[bool, bool]:
        """(done, ours): done when settled, or someone else already did; ours when this
        call stored the settlement."""
        job = owed.job
        bound = self.job_log(job, owed.worker)
        try:
            record = self.store.get(job.id)
            if record.claim_token != job.token or record.status is not JobStatus.PROCESSING:
                bound.info("job was already settled elsewhere", status=record.status.name)
                return True, False
            settlement = self.settlement(record, owed)
            applied = self.store.settle(job.id, job.token, settlement, now=time.time())
        except JobNotFound:
            return True, False
        except StoreReplaced as exc:  # nowhere left to store it: the job runs again
            bound.error("cannot settle the job: the store is gone", error=str(exc))
            return True, False
        except StoreError as exc:
            bound.warning("store unavailable while settling; will retry", error=str(exc))
            return False, False
        if applied is not None:
            log_fn = bound.info if owed.reason is OwedOutcome.RELEASE else bound.warning
            log_fn(
                "job settled by the master",
                why=owed.reason,
                status=applied.status.name if applied.status is not None else None,
                reason=applied.reason,
                detail=owed.detail,
            )
        return True, applied is not None

    @staticmethod
    def settlement(record: JobRecord, owed: Owed) -> Transition:
        now = time.time()
        if record.corrupt is not None:  # never given back to run: quarantined
            return rules.on_corrupt(record, now)
        if owed.reason is OwedOutcome.TIMEOUT:
            return rules.on_timeout(record, now)
        if owed.reason is OwedOutcome.CANCEL:
            return rules.on_cancel_running(record, now)
        if owed.reason is OwedOutcome.MEMORY:
            job = owed.job
            return rules.on_memory(
                record, now, limit=job.memory_limit, used=job.memory_used, base=job.memory_base
            )
        if owed.reason is OwedOutcome.RELEASE:
            return rules.release(record)
        return rules.on_abandoned(record, now, detail=owed.detail)

    # -- leases -------------------------------------------------------------------------
    def held_tokens(self) -> list[str]:
        tokens = [w.job.token for w in self.workers.values() if w.job is not None]
        tokens += [t for w in self.workers.values() for t in w.held]
        return tokens + [o.job.token for o in self.owed]

    def renew(self, now: float) -> None:
        """Renew the leases of every held claim every lease/3, then confirm the renewal to
        each worker, with the claims of its own it covered (taskschedd.leasewatch): a
        worker whose confirmations stop kills its job before the lease can be taken over,
        and claims nothing. With nothing to renew, a confirmation is a sign of life."""
        if now < self.renew_timer.next:
            return
        interval = self.config.lease / 3
        tokens = self.held_tokens()
        theirs = {
            w.pid: ([w.job.token] if w.job is not None else []) + list(w.held)
            for w in self.workers.values()
        }
        started = time.monotonic()  # taken before lease_until's wall clock: never later
        if tokens:
            try:
                renewed = self.store.renew(tokens, lease_until=time.time() + self.config.lease)
            except StoreError as exc:
                store_trouble(self.log, "renew leases", self.renew_timer, now, exc)
                # Leases lapse while the store refuses writes: renew the moment it takes
                # them again (another node's reaper gives owners one lease after an outage).
                self.renew_timer.next = min(self.renew_timer.next, now + interval)
                return
            if renewed < len(tokens):
                self.log.debug("some claims were no longer held", held=len(tokens), renewed=renewed)
        self.renew_timer.done(now, interval)
        done = time.monotonic()
        for w in self.workers.values():
            deadline = started + self.config.lease
            for confirmation in LeaseConfirmed.split(done, deadline, theirs[w.pid]):
                w.command(confirmation)

    def wakeups(self, now: float) -> list[float]:
        """When the supervisor next has something to do (monotonic times)."""
        times = [self.renew_timer.next]
        if any(w.job or w.held for w in self.workers.values()):
            times.append(self.cancel_timer.next)
            for w in self.workers.values():
                if w.job and w.kill is None and w.job.timeout > 0:
                    times.append(now + (w.job.started + w.job.timeout - time.time()))
                if w.job and w.kill is None and self.memory_limit(w.job):
                    times.append(self.memory_next)
        for w in self.workers.values():
            if w.kill is not None and not w.kill.hard:
                times.append(w.kill.deadline)
            if w.kill_wanted is not None:
                times.append(w.kill_wanted.until)
        for owed in self.owed:
            times.append(now + 0.05 if owed.pgid is not None else owed.next_try)
        return times


__all__ = ["CANCEL_POLL", "KILL_HOLD", "Owed", "Supervisor"]
