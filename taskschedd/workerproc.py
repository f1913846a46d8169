"""The forked worker process, and the protocol it speaks with its master.

Master -> worker: one control pipe carrying lines ``stop`` (claim no more; exit after the
current job), ``reopen`` (reopen the log file), ``drop TOKEN`` (a job claimed ahead
was canceled: do not start it) and ``lease DONE DEADLINE [TOKEN...]`` (a lease renewal
of these claims was stored: they now end at monotonic DEADLINE; sent every lease/3, also
with no token, as the master's sign of life). EOF on it means the master is gone.

A thread of the worker reads the control pipe (the job does not block it) and fences
the job in execution (:mod:`taskschedd.leasewatch`): when the running job's lease is
within its margin of ending and no renewal was confirmed, it SIGKILLs the worker's
process group (the job, its children) before another node may take the job over, after
an ``exit`` report saying why; the master settles the attempt (fenced) when it reaps the
worker. A claimed job that close to its lease's end is given back instead of started,
and a worker whose master has confirmed nothing for 2/3 of the lease claims nothing and
gives back what it claimed ahead until the master is heard again.

Worker -> master: one report pipe carrying JSON lines::

    {"ev": "ready"}                                        boot done (hook ran, store opened)
    {"ev": "stored", "settled": [[token, status, settled, started, runtime], ...],
     "claimed": [[id, token, cls, attempt, queue, timeout], ...]}
        one store write: outcomes stored (``settled`` false: fenced off; ``started``
        false: a job claimed ahead given back unstarted) and jobs claimed, not started
    {"ev": "unstored", "tokens": [token, ...], "why", "error"}
        a store write failed (``why``: "disk full", "I/O error", "read-only",
        "unavailable"): the worker keeps these outcomes and retries with backoff until
        the store takes them (a "stored" line follows), so the master renews their leases
        and does not settle them while the worker lives
    {"ev": "claim", "token", "started"}                    a claimed job starts
    {"ev": "progress", "id", "token", "percent"}
    {"ev": "exit", "reason"}                               leaving on purpose (stop, recycle...)

One line per store write, not per job: the master's cost per job is a pipe line.

Signals in a worker (the master's are in ``taskschedd --help``):

- SIGTERM: default action, the worker ends at once. The master sends it to the worker's
  process group (the job's, grandchildren included) on timeout, cancel and stop; it
  then settles the job itself, SIGKILL follows after ``kill_grace``.
- SIGINT: the running job is given back to the queue (no attempt used), the outcomes not
  stored yet are stored, the jobs claimed ahead given back, and the worker exits.
- SIGUSR2 (PR_SET_PDEATHSIG), when the master is gone: the running job is interrupted
  and left to its lease (reaped as abandoned); outcomes not stored yet are stored, jobs
  claimed ahead given back, and the worker exits. It also exits when getppid() changes
  or the control pipe reaches EOF. A SIGUSR2 while the master lives is ignored.
- SIGHUP, SIGUSR1: ignored (the master reloads; log reopening comes by pipe).
- A signal that arrives during a store write takes effect right after it.

Exit codes: 0 on purpose, 1 crash, EXIT_SETUP (3) setup hook failed, EXIT_STORE (4) store
unusable at boot. Dying before "ready" counts as a start-up failure: the master backs off.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import importlib
import inspect
import json
import os
import random
import select
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from taskschedd import log
from taskschedd.config import Config
from taskschedd.errors import StoreError, StoreNotWritable, StoreReplaced, StoreUnavailable
from taskschedd.leasewatch import LeaseWatch
from taskschedd.model import JobRecord
from taskschedd.store import Store, open_configured
from taskschedd.worker import MasterGone, Outcome, Worker

EXIT_OK = 0
EXIT_CRASH = 1
EXIT_SETUP = 3
EXIT_STORE = 4
EXIT_REASONS = {
    EXIT_OK: "exited normally",
    EXIT_CRASH: "crashed",
    EXIT_SETUP: "the setup hook failed",
    EXIT_STORE: "the store could not be opened",
}

CMD_STOP = "stop"
CMD_REOPEN = "reopen"
CMD_DROP = "drop"

_PR_SET_PDEATHSIG = 1
_PR_SET_CHILD_SUBREAPER = 36
_STORE_BACKOFF_MAX = 5.0


def prctl(option: int, value: int) -> bool:
    """prctl(2) through libc; False where it is not available (not Linux)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return int(libc.prctl(option, value, 0, 0, 0)) == 0
    except (OSError, AttributeError):
        return False


def set_child_subreaper() -> bool:
    """Orphaned descendants (a job's grandchildren) become our children, so we can reap
    them and see when a job's process group is really empty."""
    return prctl(_PR_SET_CHILD_SUBREAPER, 1)


def set_title(text: str) -> None:
    try:
        import setproctitle

        setproctitle.setproctitle(text)
    except ImportError:  # pragma: no cover - a dependency
        pass


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
        self._lines: list[str] = []
        self._lines_lock = threading.Lock()
        self.master_gone = False
        self._send_lock = threading.Lock()  # the claim-ahead helper thread reports too

    def deliver(self, lines: list[str], eof: bool) -> None:
        """From the lease watch's thread: control lines for the main loop (or just a
        wake-up); ``eof``: the control pipe ended."""
        with self._lines_lock:
            self._lines.extend(lines)
            if eof:
                self.master_gone = True
        with contextlib.suppress(OSError):  # full: the main loop is awake anyway
            os.write(self._wake_w, b"!")

    def send_last(self, ev: str, **fields: Any) -> None:
        """A last report from another thread just before this process dies: never
        blocks (skipped if another send holds the pipe, or the pipe is full)."""
        data = (json.dumps({"ev": ev, **fields}, separators=(",", ":")) + "\n").encode()
        if not self._send_lock.acquire(timeout=0.1):
            return
        try:
            os.set_blocking(self.report_fd, False)
            with contextlib.suppress(OSError):
                os.write(self.report_fd, data)  # under PIPE_BUF: all of it or nothing
        finally:
            self._send_lock.release()

    def send(self, ev: str, **fields: Any) -> None:
        data = (json.dumps({"ev": ev, **fields}, separators=(",", ":")) + "\n").encode()
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

    def commands(self) -> list[str]:
        """Control lines received so far (non-blocking)."""
        with contextlib.suppress(OSError):  # BlockingIOError: drained
            while os.read(self.wake_fd, 4096):
                pass
        with self._lines_lock:
            lines, self._lines = self._lines, []
        return lines


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


def kill_own_group() -> None:
    """SIGKILL this worker's process group: the worker, its job, the job's children (the
    worker leads its group; if it does not, only this process)."""
    pid = os.getpid()
    if os.getpgrp() == pid:
        os.killpg(pid, signal.SIGKILL)
    os.kill(pid, signal.SIGKILL)


def rss_mb() -> float:
    """Resident memory of this process in MiB (0 when unknown)."""
    try:
        with open("/proc/self/statm", "rb") as f:
            pages = int(f.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return 0.0


def main(spec: WorkerSpec) -> int:
    """Body of a forked worker; returns its exit code (the caller calls os._exit)."""
    _reset_signals()
    with contextlib.suppress(OSError):
        os.setpgid(0, 0)  # the job's process group is this worker's own
    prctl(_PR_SET_PDEATHSIG, signal.SIGUSR2)  # ignored until the loop can handle it
    if os.getppid() != spec.master_pid:  # the master died before pdeathsig was set
        return EXIT_OK
    config = spec.config
    bound = log.get_logger("taskschedd.workerproc", node=config.node, worker=spec.name)
    title = f"taskschedd: worker {spec.name}{' (extra)' if spec.extra else ''}"
    set_title(f"{title} starting")
    chan = _Channel(spec.report_fd, spec.control_fd)

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
        self.exit_reason = "stop"
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
        self.written: list[list[Any]] = []
        self.claimed: list[list[Any]] = []

    def _on_claimed(self, jobs: list[JobRecord]) -> None:
        self.watch.claimed(jobs)
        self.claimed = [
            [j.id, j.claim_token, j.cls, j.attempt, j.queue, j.options.timeout] for j in jobs
        ]

    def _on_settle(self, outcome: Outcome) -> None:
        self.watch.forget(outcome.job.claim_token or "")
        self.written.append(
            [
                outcome.job.claim_token,
                outcome.settlement.status.name,
                outcome.settled,
                outcome.started,
                round(outcome.runtime, 6),
            ]
        )

    def _on_written(self) -> None:
        settled, claimed, self.written, self.claimed = self.written, self.claimed, [], []
        if settled or claimed:
            self.chan.send("stored", settled=settled, claimed=claimed)

    def _on_unstored(self, tokens: list[str], exc: StoreUnavailable) -> None:
        why = exc.why if isinstance(exc, StoreNotWritable) else "unavailable"
        self.chan.send("unstored", tokens=tokens, why=why, error=str(exc))

    def _on_claim(self, job: JobRecord) -> None:
        self.current = job
        self.chan.send("claim", token=job.claim_token, started=time.time())
        set_title(f"{self.title} running {job.id} {job.cls}")

    def _on_progress(self, job: JobRecord, percent: float) -> None:
        self.chan.send("progress", id=job.id, token=job.claim_token, percent=percent)

    def _obey(self) -> None:
        for cmd in self.chan.commands():
            if cmd == CMD_STOP:
                self.stopping = True
            elif cmd == CMD_REOPEN:
                log.reopen()
            elif cmd.startswith(CMD_DROP + " "):
                self.worker.drop(cmd.split()[1:])
        if self.chan.master_gone or os.getppid() != self.spec.master_pid:
            self.stopping = True
            self.exit_reason = "master gone"
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
        self.chan.send_last("exit", reason="its job's lease was not renewed in time (killed)")
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
            self.exit_reason = "master gone"
            self.worker.interrupt(MasterGone())
        else:
            self.exit_reason = "interrupted"
            self.worker.interrupt(KeyboardInterrupt())

    def run(self) -> int:
        signal.signal(signal.SIGINT, self._on_signal)
        signal.signal(signal.SIGUSR2, self._on_signal)
        if os.getppid() != self.spec.master_pid:  # died before the handler was in place
            self.stopping = True
            self.exit_reason = "master gone"
        waker = self.store.waker()
        self.watch.watch(self.chan.control_fd, self.chan.deliver, self._lease_expired)
        self.chan.send("ready")
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
            self.chan.send("exit", reason=self.exit_reason)
        self.store.close()
        if self.exit_reason == "master gone":
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
