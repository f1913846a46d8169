"""The forked worker process, and the protocol it speaks with its master.

Master -> worker: one control pipe carrying the commands of :mod:`taskschedd.messages`:
stop (claim no more; exit after the current job), reopen (reopen the log file), drop (a
job claimed ahead was canceled: do not start it) and lease (a lease renewal of these
claims was stored: they now end at a monotonic deadline; sent every lease/3, also with
no token, as the master's sign of life). EOF on it means the master is gone.

A thread of the worker reads the control pipe (the job does not block it) and fences
the job in execution (:mod:`taskschedd.leasewatch`): when the running job's lease is
within its margin of ending and no renewal was confirmed, it SIGKILLs the worker's
process group (the job, its children) before another node may take the job over, after
an ``exit`` report saying why; the master settles the attempt (fenced) when it reaps the
worker. A claimed job that close to its lease's end is given back instead of started,
and a worker whose master has confirmed nothing for 2/3 of the lease claims nothing and
gives back what it claimed ahead until the master is heard again.

Worker -> master: one report pipe carrying JSON lines (:mod:`taskschedd.messages`):
``ready`` when booted; ``stored`` after each store write (outcomes stored, jobs claimed
ahead); ``unstored`` when a store write failed: the worker keeps those outcomes and
retries with backoff until the store takes them (a ``stored`` line follows), so the
master renews their leases and does not settle them while the worker lives; ``claim``
when a claimed job starts; ``progress``; ``exit`` when leaving on purpose, with why.

One line per store write, not per job: the master's cost per job is a pipe line.

Signals in a worker (the master's are in ``taskschedd --help``):

- SIGTERM: default action, the worker ends at once. The master sends it to the worker's
  process group (the job's, grandchildren included) on timeout and cancel; it
  then settles the job itself, SIGKILL follows after ``kill_grace``. A job over its
  memory limit gets SIGKILL at once instead (no grace in which to grow).
- SIGINT: the running job is given back to the queue (no attempt used), the outcomes not
  stored yet are stored, the jobs claimed ahead given back, and the worker exits. The
  master sends it to the worker's process group when the node stops now (SIGKILL
  follows after ``kill_grace``): a job whose code had ended is never given back to run
  again, as it could be after a SIGTERM that came before its outcome was stored.
- SIGUSR2 (PR_SET_PDEATHSIG), when the master is gone: the running job is interrupted
  and left to its lease (reaped as abandoned); outcomes not stored yet are stored, jobs
  claimed ahead given back, and the worker exits. It also exits when getppid() changes
  or the control pipe reaches EOF. A SIGUSR2 while the master lives is ignored.
- SIGHUP, SIGUSR1: ignored (the master reloads; log reopening comes by pipe).
- A signal that arrives during a store write takes effect right after it.

Exit codes (:data:`taskschedd.messages.EXIT_REASONS`): 0 on purpose, 1 crash, EXIT_SETUP
(3) setup hook failed, EXIT_STORE (4) store unusable at boot. Dying before "ready" counts
as a start-up failure: the master backs off.
"""

from __future__ import annotations

import contextlib
import errno
import importlib
import inspect
import os
import random
import select
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from taskschedd import log
from taskschedd.config import Config, open_configured
from taskschedd.errors import StoreError, StoreNotWritable, StoreReplaced, StoreUnavailable
from taskschedd.leasewatch import LeaseWatch
from taskschedd.loader import refresh_site_paths
from taskschedd.memwatch import own_rss
from taskschedd.messages import (
    EXIT_OK,
    EXIT_SETUP,
    EXIT_STORE,
    Claim,
    ClaimedJob,
    Command,
    Drop,
    Exit,
    Progress,
    Ready,
    Reopen,
    Report,
    Stop,
    Stored,
    StoredOutcome,
    Unstored,
)
from taskschedd.model import JobRecord
from taskschedd.osproc import (
    kill_own_group,
    lead_own_group,
    rss_mb,
    set_parent_death_signal,
    set_title,
)
from taskschedd.store import Store
from taskschedd.worker import MasterGone, Outcome, Worker

#: Fixed reasons a worker gives for leaving (others say how many jobs, how much memory).
REASON_STOP = "stop"
REASON_MASTER_GONE = "master gone"
_STORE_BACKOFF_MAX = 5.0


@dataclass
class WorkerSpec:
    """Everything a forked worker needs; built by the master before fork."""

    config: Config
    name: str
    master_pid: int
    report_fd: int  # write end
    control_fd: int  # read end
    extra: bool = False  # a one-job worker for ignore_max_children jobs


class _Channel:
    """The worker's ends of its two pipes. The lease watch's thread reads the control
    pipe and passes on the lines that are not lease confirmations (:meth:`deliver`); the
    main loop waits on ``wake_fd`` for them."""

    def __init__(self, report_fd: int, control_fd: int) -> None:
        self.report_fd = report_fd
        self.control_fd = control_fd
        os.set_blocking(control_fd, False)
        self.wake_fd, self._wake_w = os.pipe()
        os.set_blocking(self.wake_fd, False)
        os.set_blocking(self._wake_w, False)
        self._commands: list[Command] = []
        self._lines_lock = threading.Lock()
        self.master_gone = False
        self._send_lock = threading.Lock()  # the claim-ahead helper thread reports too

    def deliver(self, commands: list[Command], eof: bool) -> None:
        """From the lease watch's thread: commands for the main loop (or just a wake-up);
        ``eof``: the control pipe ended."""
        with self._lines_lock:
            self._commands.extend(commands)
            if eof:
                self.master_gone = True
        with contextlib.suppress(OSError):  # full: the main loop is awake anyway
            os.write(self._wake_w, b"!")

    def send_last(self, report: Report) -> None:
        """A last report from another thread just before this process dies: never
        blocks (skipped if another send holds the pipe, or the pipe is full)."""
        data = report.encode()
        if not self._send_lock.acquire(timeout=0.1):
            return
        try:
            os.set_blocking(self.report_fd, False)
            with contextlib.suppress(OSError):
                os.write(self.report_fd, data)  # under PIPE_BUF: all of it or nothing
        finally:
            self._send_lock.release()

    def send(self, report: Report) -> None:
        data = report.encode()
        with self._send_lock:
            self._send(data)

    def _send(self, data: bytes) -> None:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(self.report_fd, view) :]
        except OSError as exc:
            if exc.errno == errno.EPIPE:
                self.master_gone = True
            else:
                raise

    def commands(self) -> list[Command]:
        """Commands received so far (non-blocking)."""
        with contextlib.suppress(OSError):  # BlockingIOError: drained
            while os.read(self.wake_fd, 4096):
                pass
        with self._lines_lock:
            commands, self._commands = self._commands, []
        return commands


def _reset_signals() -> None:
    with contextlib.suppress(ValueError):
        signal.set_wakeup_fd(-1)
    for sig in (signal.SIGTERM, signal.SIGQUIT, signal.SIGCHLD, signal.SIGALRM):
        signal.signal(sig, signal.SIG_DFL)
    # As in any Python program: a write to a closed pipe is an EPIPE error, not death. A
    # worker whose master died still has outcomes to store after its report pipe broke.
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    for sig in (signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2):
        signal.signal(sig, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.pthread_sigmask(signal.SIG_SETMASK, set())


def _load_hook(path: str) -> Callable[..., Any]:
    module_name, _, attr = path.partition(":")
    obj: Any = importlib.import_module(module_name)
    for part in attr.split("."):
        obj = getattr(obj, part)
    if not callable(obj):
        raise TypeError(f"setup_hook {path!r} is not callable")
    return obj  # type: ignore[no-any-return]


def run_setup_hook(path: str, config: Config) -> Any:
    """Call ``module:function`` as ``function(config)``, or ``function()`` if it takes no
    arguments; what it returns becomes every job's ``context``."""
    hook = _load_hook(path)
    try:
        params = inspect.signature(hook).parameters.values()
        takes_arg = any(
            p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.VAR_POSITIONAL) for p in params
        )
    except (TypeError, ValueError):
        takes_arg = True
    return hook(config) if takes_arg else hook()


def main(spec: WorkerSpec) -> int:
    """Body of a forked worker; returns its exit code (the caller calls os._exit)."""
    _reset_signals()
    lead_own_group()  # the job's process group is this worker's own
    set_parent_death_signal(signal.SIGUSR2)  # ignored until the loop can handle it
    if os.getppid() != spec.master_pid:  # the master died before pdeathsig was set
        return EXIT_OK
    config = spec.config
    bound = log.get_logger("taskschedd.workerproc", node=config.node, worker=spec.name)
    title = f"taskschedd: worker {spec.name}{' (extra)' if spec.extra else ''}"
    set_title(f"{title} starting")
    chan = _Channel(spec.report_fd, spec.control_fd)

    refresh_site_paths()  # a package installed (pip install -e) since the master started
    context: Any = None
    if config.setup_hook:
        try:
            context = run_setup_hook(config.setup_hook, config)
        except BaseException as exc:
            bound.error(
                "setup hook failed; the worker cannot start",
                setup_hook=config.setup_hook,
                error=f"{type(exc).__name__}: {exc}",
                exc_info=not isinstance(exc, SystemExit | KeyboardInterrupt),
            )
            return EXIT_SETUP
    try:
        store = open_configured(config, daemon=True)  # the master created it
        store.next_due(config.queues)  # connect now: a broken store is a boot failure
    except StoreError as exc:
        bound.error("the store cannot be used; the worker cannot start", error=str(exc))
        return EXIT_STORE
    return _Loop(spec, chan, store, context, title).run()


class _Loop:
    """Claim, run, report; between jobs, obey the master and watch for its death."""

    def __init__(
        self, spec: WorkerSpec, chan: _Channel, store: Store, context: Any, title: str
    ) -> None:
        self.spec = spec
        self.config = spec.config
        self.chan = chan
        self.store = store
        self.title = title
        self.log = log.get_logger("taskschedd.workerproc", node=spec.config.node, worker=spec.name)
        self.stopping = False
        self.exit_reason = REASON_STOP
        self.store_lost = False
        self.memory_checked_at = 0
        self.watch = LeaseWatch(self.config.lease)
        self.held_off = False  # claiming nothing: the master is unresponsive
        self.current: JobRecord | None = None  # the job started last
        self.worker = Worker(
            store,
            allowed_modules=self.config.allowed_modules,
            queues=self.config.queues,
            node=self.config.node,
            name=spec.name,
            lease=self.config.lease,
            context=context,
            in_process=False,
            poll_interval=self.config.poll_interval,
            claim_ahead=1 if spec.extra else self.config.claim_ahead,
            max_result_size=self.config.max_data_size,
            on_claimed=self._on_claimed,
            on_claim=self._on_claim,
            on_settle=self._on_settle,
            on_written=self._on_written,
            on_unstored=self._on_unstored,
            on_progress=self._on_progress,
            guard=self.watch,
        )
        # The reports of the store write in progress (one write per thread at a time:
        # the worker's lock), sent as one line by _on_written.
        self.written: list[StoredOutcome] = []
        self.claimed: list[ClaimedJob] = []

    def _on_claimed(self, jobs: list[JobRecord]) -> None:
        self.watch.claimed(jobs)
        self.claimed = [
            ClaimedJob(j.id, j.claim_token or "", j.cls, j.attempt, j.queue,
                       float(j.options.timeout or 0.0), j.options.max_memory)
            for j in jobs
        ]  # fmt: skip

    def _on_settle(self, outcome: Outcome) -> None:
        self.watch.forget(outcome.job.claim_token or "")
        self.written.append(
            StoredOutcome(
                token=outcome.job.claim_token or "",
                status=outcome.status_name,
                settled=outcome.settled,
                started=outcome.started,
                runtime=outcome.runtime,
            )
        )

    def _on_written(self) -> None:
        settled, claimed, self.written, self.claimed = self.written, self.claimed, [], []
        if settled or claimed:
            self.chan.send(Stored(tuple(settled), tuple(claimed)))

    def _on_unstored(self, tokens: list[str], exc: StoreUnavailable) -> None:
        why = exc.why if isinstance(exc, StoreNotWritable) else "unavailable"
        self.chan.send(Unstored(tuple(tokens), why, str(exc)))

    def _on_claim(self, job: JobRecord) -> None:
        self.current = job
        # The worker's own memory now, before the job's code runs: the job's memory limit
        # counts only what the job adds to it (taskschedd.memwatch).
        self.chan.send(Claim(job.claim_token or "", time.time(), own_rss()))
        set_title(f"{self.title} running {job.id} {job.cls}")

    def _on_progress(self, job: JobRecord, percent: float) -> None:
        self.chan.send(Progress(job.id, job.claim_token or "", percent))

    def _obey(self) -> None:
        for cmd in self.chan.commands():
            match cmd:
                case Stop():
                    self.stopping = True
                case Reopen():
                    log.reopen()
                case Drop(tokens):
                    self.worker.drop(tokens)
        if self.chan.master_gone or os.getppid() != self.spec.master_pid:
            self.stopping = True
            self.exit_reason = REASON_MASTER_GONE
            self.worker.give_up_writes(self.config.lease)  # nobody renews the leases now

    def _wait(self, waker_fd: int, timeout: float) -> None:
        with contextlib.suppress(InterruptedError):
            select.select([self.chan.wake_fd, waker_fd], [], [], max(0.0, timeout))

    def _lease_expired(self, token: str, deadline: float) -> None:
        """From the lease watch's thread: the running job's lease ends within the margin
        and no renewal was confirmed (the master frozen, dead or cut off from the store).
        Another node may take the job over once it ends, so the job, its children and
        this worker die now; the master settles the attempt when it reaps the worker
        (fenced: if the job was taken over, that matches nothing)."""
        now = time.monotonic()
        job = self.current if self.current and self.current.claim_token == token else None
        self.chan.send_last(Exit("its job's lease was not renewed in time (killed)"))
        self.log.error(
            "lease not confirmed in time: killing the job",
            job_id=job.id if job else None, attempt=job.attempt if job else None,
            lease_left=round(deadline - now, 3),
            unconfirmed_for=round(now - self.watch.confirmed, 3),
        )  # fmt: skip
        kill_own_group()

    def _hold_off(self) -> None:
        """The master has confirmed nothing for longer than the gate: a job claimed now
        could not be renewed. Store what waits, give back what was claimed ahead, claim
        nothing until the master is heard again."""
        if not self.held_off:
            self.held_off = True
            self.log.warning(
                "master unresponsive: claiming nothing until it confirms again",
                unconfirmed_for=round(time.monotonic() - self.watch.confirmed, 3),
            )
            set_title(f"{self.title} waiting for the master")
        with contextlib.suppress(StoreError):  # the next step meets the trouble
            self.worker.flush()
        self._wait(self.chan.wake_fd, self.config.poll_interval)

    def _on_signal(self, signum: int, frame: object) -> None:
        """SIGINT and SIGUSR2 (the master died) interrupt the main thread, but never in
        the middle of a store write (Worker.interrupt)."""
        if signum == signal.SIGUSR2:
            if os.getppid() == self.spec.master_pid:
                return  # sent by hand (e.g. to the whole control group): not from the kernel
            self.exit_reason = REASON_MASTER_GONE
            self.worker.interrupt(MasterGone())
        else:
            self.exit_reason = "interrupted"
            self.worker.interrupt(KeyboardInterrupt())

    def run(self) -> int:
        signal.signal(signal.SIGINT, self._on_signal)
        signal.signal(signal.SIGUSR2, self._on_signal)
        if os.getppid() != self.spec.master_pid:  # died before the handler was in place
            self.stopping = True
            self.exit_reason = REASON_MASTER_GONE
        waker = self.store.waker()
        self.watch.watch(self.chan.control_fd, self.chan.deliver, self._lease_expired)
        self.chan.send(Ready())
        set_title(f"{self.title} idle")
        delay = 0.0
        try:
            while True:
                self._obey()
                if self.stopping or self._should_leave():
                    break
                if not self.watch.responsive(time.monotonic()):
                    self._hold_off()
                    continue
                if self.held_off:
                    self.held_off = False
                    self.log.info("master confirms again: claiming")
                try:
                    ran = self.worker.step(budget=self._budget(), force_spawn=self.spec.extra)
                    delay = 0.0
                except StoreReplaced as exc:
                    # Claim nothing more; what is held cannot be stored (the master stops).
                    self.log.error("the store is gone; the worker stops", error=str(exc))
                    self.exit_reason = "store file deleted or replaced"
                    self.store_lost = True
                    break
                except StoreUnavailable as exc:
                    delay = min(_STORE_BACKOFF_MAX, max(0.1, delay * 2))
                    pause = delay / 2 + random.random() * delay / 2
                    self.log.warning("store unavailable; retrying", error=str(exc), retry_in=pause)
                    self._wait(self.chan.wake_fd, pause)
                    continue
                if ran:
                    if self.worker.holding == 0:
                        set_title(f"{self.title} idle")
                    continue
                set_title(f"{self.title} idle")
                if self.spec.extra:  # its job went to someone else
                    self.exit_reason = "nothing to do"
                    break
                waker.drain()
                timeout = self.config.poll_interval
                try:
                    due = self.store.next_due(self.config.queues)
                except StoreError:
                    due = None
                if due is not None:
                    timeout = min(timeout, due - time.time())
                quiet = min(waker.quiet_for(), timeout)
                if quiet > 0:  # wake-ups faster than the waker's rate: coalesce them
                    self._wait(self.chan.wake_fd, quiet)
                self._wait(waker.fileno(), timeout - quiet)
            # Store the outcomes not stored yet; give back what was claimed ahead.
            if not self.store_lost:
                self.worker.flush()
        except (KeyboardInterrupt, MasterGone):
            # The Worker settled what it could when the signal came during a job; the
            # signal may also have come between jobs.
            with contextlib.suppress(StoreError, KeyboardInterrupt, MasterGone):
                self.worker.flush()
        finally:
            self.worker.close()
            waker.close()
        if not self.chan.master_gone:
            self.chan.send(Exit(self.exit_reason))
        # The master may die now too: its signal must not skip the group's kill below.
        with contextlib.suppress(StoreError, KeyboardInterrupt, MasterGone):
            self.store.close()
        if self.exit_reason == REASON_MASTER_GONE:
            kill_own_group()  # a job's children would outlive the lease nobody renews
        self.watch.close()
        return EXIT_STORE if self.store_lost else EXIT_OK

    def _budget(self) -> int | None:
        """How many more jobs this worker may claim before it is recycled."""
        if self.spec.extra:
            return 1
        limit = self.config.max_jobs_per_worker
        return max(0, limit - self.worker.jobs_done) if limit else None

    def _should_leave(self) -> bool:
        config = self.config
        if self.spec.extra and self.worker.jobs_done:
            self.exit_reason = "one job done"
            return True
        done = self.worker.jobs_done
        if config.max_jobs_per_worker and done >= config.max_jobs_per_worker:
            self.exit_reason = f"recycled after {done} jobs"
            return True
        if config.max_worker_memory and done > self.memory_checked_at:
            self.memory_checked_at = done  # after a job, not before the first one
            used = rss_mb()
            if used > config.max_worker_memory:
                self.exit_reason = (
                    f"recycled: {used:.0f} MiB resident > max_worker_memory "
                    f"{config.max_worker_memory} MiB"
                )
                return True
        return False
