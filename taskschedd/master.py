"""The master (arbiter): one per node. It forks and supervises the workers, and does for
their jobs what a worker cannot do for itself.

One wake-up source: a selector over the self-pipe that ``signal.set_wakeup_fd`` feeds,
every worker's report pipe and the store's waker. Signal handlers only record the
signal; each pass of the loop then dispatches signals, reaps children with a
``waitpid(-1, WNOHANG)`` loop, enforces timeouts and cancels (SIGTERM to the job's
process group, SIGKILL after ``kill_grace``), settles jobs whose worker is gone (through
:mod:`taskschedd.rules`), renews the leases of its running jobs every lease/3, reaps
expired leases of other nodes, heartbeats, purges old jobs and applies the pm policy of
:mod:`taskschedd.pool`. Kills escalate by deadline, never by sleeping.

The master is a child subreaper: a job's orphaned grandchildren become its children, so
it reaps them and knows when a killed job's process group is really empty; a job is
settled only then (or when SIGKILL has been sent), so a retry never overlaps the
remains of the attempt before it. Store outages are logged and retried with bounded,
jittered backoff; a settlement the master owes is kept until the store takes it or the
claim is fenced off.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import grp
import json
import os
import pwd
import random
import selectors
import signal
import socket
import sys
import time
from collections import deque
from dataclasses import dataclass
from types import FrameType
from typing import Any

from taskschedd import __version__, log, pool, rules, systemd, workerproc
from taskschedd.config import Config, ConfigError
from taskschedd.config import load as load_config
from taskschedd.errors import JobNotFound, StoreError, StoreUnavailable, TaskSchedError
from taskschedd.job import FINAL, JobStatus
from taskschedd.store import Store, open_store
from taskschedd.store.base import JobRecord, NodeRecord, Settlement, Waker

#: Keys a reload cannot change (they need a restart); their old values are kept.
RESTART_KEYS = ("store", "node", "user", "group", "pidfile", "metrics", "mongodb")
#: Keys the workers read: a reload that changes one replaces every worker.
WORKER_KEYS = (
    "queues",
    "lease",
    "poll_interval",
    "allowed_modules",
    "setup_hook",
    "max_jobs_per_worker",
    "max_worker_memory",
)
CANCEL_POLL = 0.5  # seconds between looks for cancel requests of running jobs
PLAN_DEBOUNCE = 0.05  # the store waker fires on every write; plan at most this often
STORE_BACKOFF_MAX = 10.0
LOOP_MAX_WAIT = 1.0


class State(enum.Enum):
    RUNNING = "running"
    DRAINING = "draining"  # SIGTERM: no new claims, running jobs get shutdown_grace
    STOPPING = "stopping"  # stop now: running jobs are killed and released


@dataclass
class RunningJob:
    """A job a worker holds, as it reported the claim."""

    id: str
    token: str
    cls: str
    attempt: int
    queue: str
    timeout: float
    started: float  # wall clock
    progress: float = 0.0


@dataclass
class Kill:
    """A kill in progress: SIGTERM was sent to the group; SIGKILL at ``deadline``."""

    reason: str  # timeout | cancel | release
    deadline: float  # monotonic
    hard: bool = False


@dataclass
class WorkerHandle:
    pid: int
    name: str
    report_fd: int
    control_fd: int
    extra: bool
    spawned: float
    idle_since: float
    ready: bool = False
    retiring: bool = False
    job: RunningJob | None = None
    kill: Kill | None = None
    jobs_done: int = 0
    exit_reason: str | None = None
    buf: bytes = b""
    eof: bool = False

    @property
    def state(self) -> str:
        if self.kill is not None:
            return f"killing ({self.kill.reason})"
        if self.job is not None:
            return "busy"
        if not self.ready:
            return "starting"
        return "retiring" if self.retiring else "idle"


@dataclass
class Owed:
    """A settlement the master owes for a job whose worker is gone."""

    job: RunningJob
    reason: str  # timeout | cancel | release | abandoned
    detail: str
    worker: str
    pgid: int | None  # settle once this process group is empty...
    deadline: float  # ...or at this monotonic time, after SIGKILL to it
    next_try: float = 0.0
    failures: int = 0


@dataclass
class _Every:
    """A periodic duty with backoff while the store is unavailable."""

    next: float = 0.0
    failures: int = 0

    def done(self, now: float, interval: float) -> None:
        self.failures = 0
        self.next = now + interval

    def failed(self, now: float) -> float:
        self.failures += 1
        delay = store_backoff(self.failures)
        self.next = now + delay
        return delay


def store_backoff(failures: int) -> float:
    """Bounded exponential backoff with equal jitter, for store outages."""
    delay = float(min(STORE_BACKOFF_MAX, 0.2 * 2 ** max(0, failures - 1)))
    return delay / 2 + random.random() * delay / 2


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def killpg(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def describe_status(status: int) -> str:
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        try:
            name = signal.Signals(sig).name
        except ValueError:
            name = str(sig)
        return f"died from signal {sig} ({name})"
    code = os.waitstatus_to_exitcode(status)
    reason = workerproc.EXIT_REASONS.get(code)
    return f"exited with code {code}" + (f" ({reason})" if reason else "")


def drop_privileges(user: str | None, group: str | None) -> None:
    """Switch to the configured user/group (setgid, initgroups, setuid), then make sure
    root cannot be regained. Done before any worker is forked."""
    if user is None and group is None:
        return
    pw = pwd.getpwnam(user) if user is not None else None
    gid = grp.getgrnam(group).gr_gid if group is not None else (pw.pw_gid if pw else os.getgid())
    uid = pw.pw_uid if pw is not None else os.getuid()
    if os.getuid() != 0:
        if uid == os.getuid() and gid in (os.getgid(), *os.getgroups()):
            return  # already the configured identity
        raise ConfigError(
            f"cannot switch to user {user or '-'} / group {group or '-'}: "
            "taskschedd must be started as root to change identity",
            key="user" if user else "group",
        )
    if pw is not None:
        os.initgroups(pw.pw_name, gid)
    else:
        os.setgroups([])
    os.setgid(gid)
    os.setuid(uid)
    if uid != 0:
        try:
            os.setuid(0)
        except PermissionError:
            return
        raise TaskSchedError("dropping privileges failed: setuid(0) still works")


class Master:
    """Runs the node until it is told to stop; :meth:`run` returns the exit code."""

    def __init__(
        self,
        config: Config,
        config_path: str | None = None,
        overrides: dict[str, Any] | None = None,
    ) -> None:
        self.config = config
        self.config_path = config_path
        self.overrides = dict(overrides or {})  # command-line settings, kept across reloads
        self.settings = pool.PoolSettings.from_config(config)
        self.log = log.get_logger("taskschedd.master", node=config.node)
        self.state = State.RUNNING
        self.workers: dict[int, WorkerHandle] = {}
        self.owed: list[Owed] = []
        self.store: Store | None = None
        self.waker: Waker | None = None
        self.selector: selectors.BaseSelector | None = None
        self._signals: deque[int] = deque()
        self._sig_r = self._sig_w = -1
        self._old_handlers: dict[int, Any] = {}
        self.started_wall = time.time()
        self.host = socket.gethostname()
        self.boot_failures = 0
        self.spawn_not_before = 0.0
        self.drain_deadline: float | None = None
        self.stop_deadline: float | None = None
        self.pool_dirty = True
        self.pool_next = 0.0
        self.pool_last = 0.0
        self.pool_timer = _Every()
        self.renew_timer = _Every()
        self.cancel_timer = _Every()
        self.reap_timer = _Every()
        self.heartbeat_timer = _Every()
        self.purge_timer = _Every()
        self.heartbeat_soon = False
        self.heartbeat_last = 0.0
        self.watchdog_every = systemd.watchdog_interval()
        self.watchdog_next = 0.0
        self.status_text = ""
        self.status_sent = 0.0

    # -- life cycle -------------------------------------------------------------------
    def run(self) -> int:
        self._start()
        try:
            while not self._finished():
                self._tick()
        finally:
            self._close()
        self.log.info("taskschedd stopped")
        return 0

    def _start(self) -> None:
        workerproc.set_child_subreaper()
        workerproc.set_title(f"taskschedd: master {self.config.node} starting")
        self.log.info(
            "taskschedd starting",
            version=__version__,
            pid=os.getpid(),
            config_file=self.config_path,
            config=self.config.redacted(),
        )
        self.store = open_store(self.config.store, **workerproc.store_options(self.config))
        self._wait_for_store()
        self.selector = selectors.DefaultSelector()
        self._sig_r, self._sig_w = os.pipe()
        for fd in (self._sig_r, self._sig_w):
            os.set_blocking(fd, False)
        self.selector.register(self._sig_r, selectors.EVENT_READ, "signal")
        signal.set_wakeup_fd(self._sig_w, warn_on_full_buffer=False)
        for sig in (
            signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGHUP,
            signal.SIGUSR1, signal.SIGCHLD,
        ):  # fmt: skip
            self._old_handlers[sig] = signal.signal(sig, self._record_signal)
        self.waker = self.store.waker()
        self.selector.register(self.waker.fileno(), selectors.EVENT_READ, "waker")
        now = time.monotonic()
        self.purge_timer.next = now + min(5.0, self._purge_interval())
        self._heartbeat(now)
        self._manage_pool(now)
        systemd.ready(status=self._status_line())
        self.log.info("taskschedd ready", pm=self.config.pm, queues=self.config.queues)

    def _wait_for_store(self) -> None:
        """A store that is down for now (StoreUnavailable) is waited for, with backoff; one
        that cannot work (StoreError: bad path, not a database...) ends the start (exit 69).
        Our signal handlers are not installed yet: SIGTERM still just ends the process."""
        assert self.store is not None
        failures = 0
        while True:
            try:
                self.store.last_event_seq()
                return
            except StoreUnavailable as exc:
                failures += 1
                delay = store_backoff(failures)
                self.log.warning(
                    "store unavailable at start; waiting for it", error=str(exc),
                    retry_in=round(delay, 2),
                )  # fmt: skip
                systemd.status(f"waiting for the store: {exc}")
                time.sleep(delay)

    def _record_signal(self, signum: int, frame: FrameType | None) -> None:
        self._signals.append(signum)  # only record: the loop does the work

    def _finished(self) -> bool:
        return self.state is not State.RUNNING and not self.workers and not self.owed

    def _close(self) -> None:
        with contextlib.suppress(ValueError):
            signal.set_wakeup_fd(-1)
        for sig, handler in self._old_handlers.items():
            with contextlib.suppress(ValueError, TypeError):
                signal.signal(sig, handler)
        if self.store is not None:
            try:
                self.store.remove_node(self.config.node)
            except StoreError as exc:
                self.log.warning("could not remove this node from the registry", error=str(exc))
        if self.waker is not None:
            self.waker.close()
        if self.selector is not None:
            self.selector.close()
        for fd in (self._sig_r, self._sig_w):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        if self.store is not None:
            self.store.close()

    # -- the loop ---------------------------------------------------------------------
    def _tick(self) -> None:
        assert self.selector is not None
        wait = max(0.0, min(LOOP_MAX_WAIT, self._next_wakeup() - time.monotonic()))
        for key, _ in self.selector.select(wait):
            if key.data == "signal":
                with contextlib.suppress(OSError):
                    while os.read(self._sig_r, 512):
                        pass
            elif key.data == "waker":
                assert self.waker is not None
                self.waker.drain()
                self.pool_dirty = True
            else:
                self._read_worker(key.data)
        while self._signals:
            self._dispatch(self._signals.popleft())
        now = time.monotonic()
        self._reap()
        self._enforce_timeouts(now)
        self._poll_cancels(now)
        self._escalate(now)
        self._settle_owed(now)
        self._renew(now)
        self._reap_expired(now)
        self._shutdown_step(now)
        if self.state is State.RUNNING:
            self._manage_pool(now)
        self._heartbeat(now)
        self._purge(now)
        self._watchdog(now)
        self._update_status(now)

    def _next_wakeup(self) -> float:
        now = time.monotonic()
        times = [
            self.renew_timer.next,
            self.reap_timer.next,
            self.heartbeat_timer.next,
            self.purge_timer.next,
            now + LOOP_MAX_WAIT,
        ]
        if self.state is State.RUNNING:
            planned = self.pool_last + PLAN_DEBOUNCE if self.pool_dirty else self.pool_next
            times.append(max(planned, self.pool_timer.next))  # no spinning in a store outage
        if self.heartbeat_soon and not self.heartbeat_timer.failures:
            times.append(now + 0.1)
        if self.status_text != self._status_line():
            times.append(now + 0.1)
        if any(w.job for w in self.workers.values()):
            times.append(self.cancel_timer.next)
            for w in self.workers.values():
                if w.job and w.kill is None and w.job.timeout > 0:
                    times.append(now + (w.job.started + w.job.timeout - time.time()))
        for w in self.workers.values():
            if w.kill is not None and not w.kill.hard:
                times.append(w.kill.deadline)
        for owed in self.owed:
            times.append(now + 0.05 if owed.pgid is not None else owed.next_try)
        if self.drain_deadline is not None:
            times.append(self.drain_deadline)
        if self.stop_deadline is not None:
            times.append(self.stop_deadline)
        if self.watchdog_every:
            times.append(self.watchdog_next)
        return min(times)

    def _dispatch(self, signum: int) -> None:
        if signum in (signal.SIGTERM, signal.SIGINT):
            if self.state is State.RUNNING:
                self._begin_drain(signal.Signals(signum).name)
            else:
                self._begin_stop(f"second {signal.Signals(signum).name}")
        elif signum == signal.SIGQUIT:
            self._begin_stop("SIGQUIT")
        elif signum == signal.SIGHUP:
            if self.state is State.RUNNING:
                self._reload()
            else:
                self.log.info("SIGHUP ignored: shutting down")
        elif signum == signal.SIGUSR1:
            self._dump_status()
        # SIGCHLD: nothing to do here; every pass reaps.

    # -- workers ----------------------------------------------------------------------
    def _spawn(self, *, extra: bool = False) -> WorkerHandle:
        assert self.selector is not None
        report_r, report_w = os.pipe()
        control_r, control_w = os.pipe()
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        master_pid = os.getpid()
        pid = os.fork()
        if pid == 0:  # the worker; never returns into the master's code
            code = workerproc.EXIT_CRASH
            try:
                with contextlib.suppress(ValueError):
                    signal.set_wakeup_fd(-1)
                os.close(report_r)
                os.close(control_w)
                self._forget_in_child()
                spec = workerproc.WorkerSpec(
                    config=self.config,
                    name=f"{self.config.node}/{os.getpid()}",
                    master_pid=master_pid,
                    report_fd=report_w,
                    control_fd=control_r,
                    extra=extra,
                )
                code = workerproc.main(spec)
            except BaseException as exc:
                with contextlib.suppress(BaseException):
                    self.log.error("worker crashed", error=f"{type(exc).__name__}: {exc}",
                                   exc_info=True)  # fmt: skip
            finally:
                os._exit(code)
        os.close(report_w)
        os.close(control_r)
        os.set_blocking(report_r, False)
        os.set_blocking(control_w, False)
        with contextlib.suppress(OSError):
            os.setpgid(pid, pid)  # also done by the child: whoever runs first wins the race
        now = time.monotonic()
        handle = WorkerHandle(
            pid=pid,
            name=f"{self.config.node}/{pid}",
            report_fd=report_r,
            control_fd=control_w,
            extra=extra,
            spawned=now,
            idle_since=now,
        )
        self.workers[pid] = handle
        self.selector.register(report_r, selectors.EVENT_READ, handle)
        self.heartbeat_soon = True
        self.log.info("worker started", worker=handle.name, pid=pid, extra=extra)
        return handle

    def _forget_in_child(self) -> None:
        """Close what belongs to the master; the store connection is left untouched (the
        worker opens its own; SQLite and pymongo connections must not cross a fork)."""
        if self.selector is not None:
            with contextlib.suppress(Exception):
                self.selector.close()
        for fd in (self._sig_r, self._sig_w):
            with contextlib.suppress(OSError):
                os.close(fd)
        if self.waker is not None:
            with contextlib.suppress(Exception):
                self.waker.close()  # closes the socket; the name file is the master's
        for w in self.workers.values():
            for fd in (w.report_fd, w.control_fd):
                with contextlib.suppress(OSError):
                    os.close(fd)

    def _command(self, w: WorkerHandle, cmd: str) -> None:
        with contextlib.suppress(BlockingIOError, BrokenPipeError, OSError):
            os.write(w.control_fd, (cmd + "\n").encode())

    def _retire(self, w: WorkerHandle, why: str) -> None:
        if not w.retiring:
            w.retiring = True
            self._command(w, workerproc.CMD_STOP)
            self.heartbeat_soon = True
            self.log.debug("worker retiring", worker=w.name, why=why)

    def _read_worker(self, w: WorkerHandle) -> None:
        while not w.eof:
            try:
                chunk = os.read(w.report_fd, 65536)
            except BlockingIOError:
                break
            except OSError:
                chunk = b""
            if not chunk:
                w.eof = True
                if self.selector is not None:
                    with contextlib.suppress(KeyError, ValueError):
                        self.selector.unregister(w.report_fd)
                break
            w.buf += chunk
            *lines, w.buf = w.buf.split(b"\n")
            for line in lines:
                if line.strip():
                    try:
                        msg = json.loads(line)
                    except ValueError:
                        self.log.warning("unreadable message from a worker", worker=w.name)
                        continue
                    self._message(w, msg)

    def _message(self, w: WorkerHandle, msg: dict[str, Any]) -> None:
        ev = msg.get("ev")
        if ev == "ready":
            w.ready = True
            if self.boot_failures:
                self.log.info("a worker started again after start-up failures", worker=w.name)
            self.boot_failures = 0
            self.spawn_not_before = 0.0
            self.pool_dirty = True
        elif ev == "claim":
            w.job = RunningJob(
                id=str(msg["id"]),
                token=str(msg["token"]),
                cls=str(msg.get("cls", "")),
                attempt=int(msg.get("attempt", 0)),
                queue=str(msg.get("queue", "")),
                timeout=float(msg.get("timeout") or 0.0),
                started=float(msg.get("started") or time.time()),
            )
            self.pool_dirty = True
            self.heartbeat_soon = True
            if self.state is State.STOPPING:
                self._kill(w, "release")  # it claimed while we were stopping
        elif ev == "progress":
            if w.job is not None and w.job.token == msg.get("token"):
                w.job.progress = float(msg.get("percent", 0.0))
        elif ev == "settle":
            if w.job is not None and w.job.token == msg.get("token"):
                w.job = None
                w.jobs_done += 1
                w.idle_since = time.monotonic()
                self.pool_dirty = True
                self.heartbeat_soon = True
        elif ev == "lost":
            if w.job is not None and w.job.token == msg.get("token"):
                detail = f"worker pid {w.pid} could not store the outcome: {msg.get('error')}"
                self.owed.append(Owed(w.job, "abandoned", detail, w.name, None, 0.0))
                w.job = None
                w.idle_since = time.monotonic()
                self.pool_dirty = True
        elif ev == "exit":
            w.exit_reason = str(msg.get("reason", ""))

    def _job_log(self, job: RunningJob, worker: str) -> Any:
        return self.log.bind(
            job_id=job.id, job_class=job.cls, attempt=job.attempt, queue=job.queue,
            worker=worker,
        )  # fmt: skip

    def _kill(self, w: WorkerHandle, reason: str) -> None:
        """SIGTERM the worker's process group (its job and the job's children)."""
        if w.kill is not None:
            return
        grace = self.config.kill_grace
        w.kill = Kill(reason=reason, deadline=time.monotonic() + grace)
        w.retiring = True
        if w.job is not None:
            self._job_log(w.job, w.name).warning(
                "stopping a running job", why=reason, kill_grace=grace
            )
        killpg(w.pid, signal.SIGTERM)
        if grace <= 0:
            killpg(w.pid, signal.SIGKILL)
            w.kill.hard = True

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            except InterruptedError:
                continue
            if pid == 0:
                return
            w = self.workers.pop(pid, None)
            if w is not None:
                self._worker_gone(w, status)
            # else: an orphaned grandchild of a job (we are its subreaper): reaped, done.

    def _worker_gone(self, w: WorkerHandle, status: int) -> None:
        self._read_worker(w)  # messages it wrote before dying come first
        if self.selector is not None and not w.eof:
            with contextlib.suppress(KeyError, ValueError):
                self.selector.unregister(w.report_fd)
        for fd in (w.report_fd, w.control_fd):
            with contextlib.suppress(OSError):
                os.close(fd)
        how = describe_status(status)
        now = time.monotonic()
        self.pool_dirty = True
        self.heartbeat_soon = True
        if w.job is not None:
            job = w.job
            detail = f"worker pid {w.pid} {how}"
            signalled = os.WIFSIGNALED(status) and os.WTERMSIG(status) in (
                signal.SIGTERM, signal.SIGKILL, signal.SIGINT,
            )  # fmt: skip
            if w.kill is not None:
                owed = Owed(job, w.kill.reason, detail, w.name, w.pid, w.kill.deadline)
            elif self.state is not State.RUNNING and signalled:
                # Killed along with us (e.g. systemd KillMode=control-group): give it back.
                owed = Owed(job, "release", detail, w.name, w.pid, now + self.config.kill_grace)
            else:
                killpg(w.pid, signal.SIGKILL)  # what the job left behind goes too
                owed = Owed(job, "abandoned", detail, w.name, None, now)
                self._job_log(job, w.name).error(
                    "worker died while running a job; settling the job now", detail=detail
                )
            self.owed.append(owed)
        if not w.ready and w.kill is None and not w.retiring:
            self.boot_failures += 1
            delay = pool.backoff_delay(self.boot_failures)
            self.spawn_not_before = now + delay
            self.log.error(
                "worker failed to start; backing off before the next attempt",
                worker=w.name,
                how=how,
                failures=self.boot_failures,
                retry_in=round(delay, 2),
            )
        elif w.job is None and w.exit_reason is None and w.kill is None and not w.retiring:
            self.log.warning("worker died unexpectedly", worker=w.name, how=how)
        else:
            why = w.exit_reason or (f"stopped ({w.kill.reason})" if w.kill else None)
            self.log.info("worker exited", worker=w.name, how=how, reason=why)

    # -- job supervision --------------------------------------------------------------
    def _enforce_timeouts(self, now: float) -> None:
        wall = time.time()
        for w in list(self.workers.values()):
            job = w.job
            if job and w.kill is None and job.timeout > 0 and wall >= job.started + job.timeout:
                self._kill(w, "timeout")

    def _poll_cancels(self, now: float) -> None:
        if now < self.cancel_timer.next:
            return
        held = {w.job.token: w for w in self.workers.values() if w.job and w.kill is None}
        if not held:
            self.cancel_timer.done(now, CANCEL_POLL)
            return
        assert self.store is not None
        try:
            tokens = self.store.cancel_requested(held)
        except StoreError as exc:
            self._store_trouble("poll cancel requests", self.cancel_timer, now, exc)
            return
        self.cancel_timer.done(now, CANCEL_POLL)
        for token in tokens:
            w = held[token]
            if w.kill is None:
                self._kill(w, "cancel")

    def _escalate(self, now: float) -> None:
        for w in self.workers.values():
            if w.kill is not None and not w.kill.hard and now >= w.kill.deadline:
                killpg(w.pid, signal.SIGKILL)
                w.kill.hard = True
        if self.stop_deadline is not None and now >= self.stop_deadline:
            for w in self.workers.values():
                killpg(w.pid, signal.SIGKILL)
            self.stop_deadline = now + 1.0

    def _settle_owed(self, now: float) -> None:
        for owed in list(self.owed):
            if owed.next_try > now:
                continue
            if owed.pgid is not None:
                if group_alive(owed.pgid) and now < owed.deadline:
                    continue  # the job's children still get their grace
                killpg(owed.pgid, signal.SIGKILL)
                owed.pgid = None
            if self._settle(owed):
                self.owed.remove(owed)
            else:
                owed.failures += 1
                owed.next_try = now + store_backoff(owed.failures)

    def _settle(self, owed: Owed) -> bool:
        """True when done (settled, or someone else already did)."""
        assert self.store is not None
        job = owed.job
        bound = self._job_log(job, owed.worker)
        try:
            record = self.store.get(job.id)
            if record.claim_token != job.token or record.status is not JobStatus.PROCESSING:
                bound.info("job was already settled elsewhere", status=record.status.name)
                return True
            settlement = self._settlement(record, owed)
            ok = self.store.settle(job.id, job.token, settlement, now=time.time())
        except JobNotFound:
            return True
        except StoreError as exc:
            bound.warning("store unavailable while settling; will retry", error=str(exc))
            return False
        if ok:
            log_fn = bound.info if owed.reason == "release" else bound.warning
            log_fn(
                "job settled by the master",
                why=owed.reason,
                status=settlement.status.name,
                reason=settlement.reason,
                detail=owed.detail,
            )
        return True

    @staticmethod
    def _settlement(record: JobRecord, owed: Owed) -> Settlement:
        now = time.time()
        if owed.reason == "timeout":
            return rules.on_timeout(record, now)
        if owed.reason == "cancel":
            return rules.on_cancel_running(record, now)
        if owed.reason == "release":
            return rules.release(record)
        return rules.on_abandoned(record, now, detail=owed.detail)

    def _held_tokens(self) -> list[str]:
        tokens = [w.job.token for w in self.workers.values() if w.job is not None]
        return tokens + [o.job.token for o in self.owed]

    def _renew(self, now: float) -> None:
        if now < self.renew_timer.next:
            return
        interval = self.config.lease / 3
        tokens = self._held_tokens()
        if not tokens:
            self.renew_timer.done(now, interval)
            return
        assert self.store is not None
        try:
            renewed = self.store.renew(tokens, lease_until=time.time() + self.config.lease)
        except StoreError as exc:
            self._store_trouble("renew leases", self.renew_timer, now, exc)
            return
        self.renew_timer.done(now, interval)
        if renewed < len(tokens):
            self.log.debug("some claims were no longer held", held=len(tokens), renewed=renewed)

    def _reap_expired(self, now: float) -> None:
        if now < self.reap_timer.next:
            return
        assert self.store is not None
        mine = set(self._held_tokens())
        try:
            expired = self.store.expired(time.time())
            for record in expired:
                if record.claim_token is None or record.claim_token in mine:
                    continue
                detail = f"its lease expired (node {record.node}, worker {record.worker})"
                settlement = rules.on_abandoned(record, time.time(), detail=detail)
                if self.store.settle(record.id, record.claim_token, settlement, now=time.time()):
                    self.log.warning(
                        "reaped a job whose lease expired",
                        job_id=record.id, job_class=record.cls, attempt=record.attempt,
                        queue=record.queue, owner_node=record.node, owner_worker=record.worker,
                        status=settlement.status.name,
                    )  # fmt: skip
        except StoreError as exc:
            self._store_trouble("reap expired leases", self.reap_timer, now, exc)
            return
        self.reap_timer.done(now, self.config.reap_interval)

    def _store_trouble(self, what: str, timer: _Every, now: float, exc: Exception) -> None:
        delay = timer.failed(now)
        self.log.warning("store unavailable", doing=what, error=str(exc), retry_in=round(delay, 2))

    # -- the pool ---------------------------------------------------------------------
    def _manage_pool(self, now: float) -> None:
        if not self.pool_dirty and now < self.pool_next:
            return
        if now < self.pool_timer.next or now - self.pool_last < PLAN_DEBOUNCE:
            return
        self.pool_last = now
        assert self.store is not None
        queues = self.config.queues
        due_at: float | None = None
        try:
            wall = time.time()
            demand = pool.Demand(
                due=self.store.count_due(queues, now=wall, force_spawn=False),
                due_extra=self.store.count_due(queues, now=wall, force_spawn=True),
            )
            if not demand.due and not demand.due_extra:
                due_at = self.store.next_due(queues)
        except StoreError as exc:
            self._store_trouble("count due jobs", self.pool_timer, now, exc)
            demand = pool.Demand()
        else:
            self.pool_timer.done(now, 0.0)
        self.pool_dirty = False
        views = [
            pool.WorkerView(pid=w.pid, busy=w.job is not None, idle_since=w.idle_since,
                            extra=w.extra)
            for w in self.workers.values()
            if not w.retiring
        ]  # fmt: skip
        plan = pool.plan(self.settings, views, demand, now)
        for pid in plan.retire:
            self._retire(self.workers[pid], "idle")
        self._spawn_planned(plan, now)
        nxt = now + self.config.poll_interval
        if plan.recheck_at is not None:
            nxt = min(nxt, plan.recheck_at)
        if due_at is not None:
            nxt = min(nxt, now + max(0.0, due_at - time.time()))
        if self.boot_failures and (plan.spawn or plan.spawn_extra):
            nxt = min(nxt, max(now, self.spawn_not_before))
        self.pool_next = nxt

    def _spawn_planned(self, plan: pool.Plan, now: float) -> None:
        wanted = [False] * plan.spawn + [True] * plan.spawn_extra
        if not wanted:
            return
        if self.boot_failures:
            # Crash loop: one probe at a time, after the backoff, until one boots.
            starting = any(not w.ready for w in self.workers.values())
            if starting or now < self.spawn_not_before:
                return
            wanted = wanted[:1]
        for extra in wanted:
            self._spawn(extra=extra)

    # -- periodic duties --------------------------------------------------------------
    def _heartbeat(self, now: float) -> None:
        soon = (
            self.heartbeat_soon
            and not self.heartbeat_timer.failures
            and now - self.heartbeat_last >= 0.1
        )
        if now < self.heartbeat_timer.next and not soon:
            return
        assert self.store is not None
        busy = [w for w in self.workers.values() if w.job is not None]
        idle = [w for w in self.workers.values() if w.job is None and not w.retiring]
        record = NodeRecord(
            name=self.config.node,
            host=self.host,
            pid=os.getpid(),
            started=self.started_wall,
            heartbeat=time.time(),
            workers_busy=len(busy),
            workers_idle=len(idle),
            running=tuple(w.job.id for w in busy if w.job is not None),
            queues=tuple(self.config.queues),
            version=__version__,
        )
        try:
            self.store.heartbeat(record)
        except StoreError as exc:
            self._store_trouble("heartbeat", self.heartbeat_timer, now, exc)
            return
        self.heartbeat_soon = False
        self.heartbeat_last = now
        self.heartbeat_timer.done(now, self.config.heartbeat_interval)

    def _purge(self, now: float) -> None:
        if now < self.purge_timer.next:
            return
        retention = self.config.retention
        interval = self._purge_interval()
        if retention <= 0:
            self.purge_timer.done(now, interval)
            return
        assert self.store is not None
        try:
            n = self.store.purge(statuses=FINAL, ended_before=time.time() - retention)
        except StoreError as exc:
            self._store_trouble("purge old jobs", self.purge_timer, now, exc)
            return
        self.purge_timer.done(now, interval)
        if n:
            self.log.info("purged finished jobs past their retention", jobs=n, retention=retention)

    def _purge_interval(self) -> float:
        """A tenth of the retention, between 1 s and an hour: one indexed delete is cheap."""
        return min(3600.0, max(1.0, self.config.retention / 10))

    def _watchdog(self, now: float) -> None:
        if self.watchdog_every and now >= self.watchdog_next:
            systemd.watchdog()
            self.watchdog_next = now + self.watchdog_every

    def _status_line(self) -> str:
        busy = sum(1 for w in self.workers.values() if w.job is not None)
        text = f"{len(self.workers)} workers, {busy} busy"
        if self.state is not State.RUNNING:
            text += f"; {self.state.value}"
        if self.boot_failures:
            text += f"; workers fail to start ({self.boot_failures}x), backing off"
        return text

    def _update_status(self, now: float, *, force: bool = False) -> None:
        text = self._status_line()
        if text != self.status_text and (force or now - self.status_sent >= 0.1):
            self.status_text = text
            self.status_sent = now
            systemd.status(text)
            workerproc.set_title(f"taskschedd: master {self.config.node} [{text}]")

    # -- signals: drain, stop, reload, status ------------------------------------------
    def _begin_drain(self, why: str) -> None:
        self.state = State.DRAINING
        grace = self.config.shutdown_grace
        self.drain_deadline = time.monotonic() + grace
        systemd.stopping()
        running = [w.job.id for w in self.workers.values() if w.job is not None]
        self.log.info(
            "draining: no new jobs; running jobs get the shutdown grace",
            signal=why, shutdown_grace=grace, running=running,
        )  # fmt: skip
        for w in self.workers.values():
            self._retire(w, "drain")
        self._update_status(time.monotonic(), force=True)

    def _begin_stop(self, why: str) -> None:
        if self.state is not State.STOPPING:
            if self.state is State.RUNNING:
                systemd.stopping()
            self.state = State.STOPPING
            self.drain_deadline = None
            self.stop_deadline = time.monotonic() + self.config.kill_grace + 1.0
            self.log.info("stopping now: running jobs are stopped and given back", why=why)
            self._update_status(time.monotonic(), force=True)
        for w in self.workers.values():
            if w.job is not None:
                self._kill(w, "release")
            else:
                self._retire(w, "stop")

    def _shutdown_step(self, now: float) -> None:
        if (
            self.state is State.DRAINING
            and self.drain_deadline is not None
            and now >= self.drain_deadline
        ):
            self._begin_stop("shutdown grace over")

    def _reload(self) -> None:
        systemd.reloading()
        old = self.config
        try:
            if self.config_path is None:
                raise ConfigError("no configuration file to reload")
            new = dataclasses.replace(load_config(self.config_path), **self.overrides)
        except ConfigError as exc:
            self.log.error(
                "reload refused: the new configuration is invalid; keeping the old one",
                error=str(exc),
            )
            log.reopen()
            self._command_all(workerproc.CMD_REOPEN)
            systemd.ready(status=self._status_line())
            return
        kept = [k for k in RESTART_KEYS if getattr(new, k) != getattr(old, k)]
        if kept:
            self.log.warning(
                "these settings change only at restart; keeping their running values", keys=kept
            )
            new = dataclasses.replace(new, **{k: getattr(old, k) for k in kept})
        try:
            log.configure(new.logging.format, new.logging.level, new.logging.file)
        except ConfigError as exc:
            log.configure(old.logging.format, old.logging.level, old.logging.file)
            self.log.error("reload refused; keeping the old configuration", error=str(exc))
            systemd.ready(status=self._status_line())
            return
        changed = [
            f.name
            for f in dataclasses.fields(Config)
            if getattr(new, f.name) != getattr(old, f.name)
        ]
        self.config = new
        self.settings = pool.PoolSettings.from_config(new)
        self.log = log.get_logger("taskschedd.master", node=new.node)
        if any(k in changed for k in WORKER_KEYS) or "logging" in changed:
            for w in self.workers.values():
                self._retire(w, "reload")  # replacements start with the new settings
        else:
            self._command_all(workerproc.CMD_REOPEN)
        self.pool_dirty = True
        self.heartbeat_soon = True
        self.log.info("configuration reloaded", changed=changed, config=new.redacted())
        systemd.ready(status=self._status_line())

    def _command_all(self, cmd: str) -> None:
        for w in self.workers.values():
            self._command(w, cmd)

    def _dump_status(self) -> None:
        wall = time.time()
        workers = []
        for w in sorted(self.workers.values(), key=lambda w: w.pid):
            item: dict[str, Any] = {"pid": w.pid, "worker": w.name, "state": w.state,
                                    "extra": w.extra, "jobs_done": w.jobs_done}  # fmt: skip
            if w.job is not None:
                item.update(
                    job_id=w.job.id, job_class=w.job.cls, attempt=w.job.attempt,
                    queue=w.job.queue, running_for=round(wall - w.job.started, 3),
                    progress=w.job.progress,
                )  # fmt: skip
            workers.append(item)
        counts: dict[str, Any] | str
        try:
            assert self.store is not None
            counts = self.store.stats(now=wall).get("by_status", {})
        except StoreError as exc:
            counts = f"unavailable: {exc}"
        self.log.info(
            "status",
            state=self.state.value,
            pm=self.config.pm,
            workers=workers,
            running=sum(1 for w in self.workers.values() if w.job is not None),
            owed_settlements=len(self.owed),
            start_failures=self.boot_failures,
            jobs=counts,
        )


def run(
    config: Config, config_path: str | None = None, overrides: dict[str, Any] | None = None
) -> int:
    """Run a node in the foreground until it is stopped; returns the exit code."""
    return Master(config, config_path, overrides).run()


__all__ = ["Master", "State", "drop_privileges", "run"]
