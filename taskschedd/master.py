"""The master (arbiter): one per node. It forks and supervises the workers, and does for
their jobs what a worker cannot do for itself.

One wake-up source: a selector over the self-pipe that ``signal.set_wakeup_fd`` feeds
(:mod:`taskschedd.signals`), every worker's report pipe and the store's waker. Signal
handlers only record the signal; each pass of the loop then dispatches signals to
``handle_<name>``, reaps children with a ``waitpid(-1, WNOHANG)`` loop, lets the
:class:`~taskschedd.supervise.Supervisor` enforce timeouts and cancels, escalate kills,
settle jobs whose worker is gone and renew leases, lets
:class:`~taskschedd.housekeeping.Housekeeping` reap other nodes' expired leases,
heartbeat and purge, applies the pm policy of :mod:`taskschedd.pool`, and feeds the
Prometheus endpoint (:mod:`taskschedd.nodemetrics`; the server thread only reads).

The master is a child subreaper: a job's orphaned grandchildren become its children, so
it reaps them and knows when a killed job's process group is really empty; those that
left the group (setsid) are killed once their worker is gone.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import os
import selectors
import signal
import sys
import time
from typing import Any

from taskschedd import __version__, log, pool, probe, systemd, workerproc
from taskschedd.children import KillReason, WorkerHandle, describe_status
from taskschedd.config import Config, ConfigError
from taskschedd.config import load as load_config
from taskschedd.errors import StoreError, StoreNotWritable, StoreReplaced, StoreUnavailable
from taskschedd.housekeeping import Housekeeping
from taskschedd.messages import (
    EXIT_CRASH,
    Claim,
    Command,
    Exit,
    Progress,
    Ready,
    Reopen,
    Report,
    Stop,
    Stored,
    Unstored,
)
from taskschedd.nodemetrics import NodeMetrics
from taskschedd.osproc import kill_strays, killpg, lead_own_group, set_child_subreaper, set_title
from taskschedd.periodic import Every, store_backoff, store_trouble
from taskschedd.privileges import drop_privileges
from taskschedd.redact import redact_url
from taskschedd.signals import SignalQueue
from taskschedd.store import Store, diskspace, open_store
from taskschedd.store.base import Waker
from taskschedd.store.sqlitefiles import daemon_owners
from taskschedd.supervise import Supervisor

#: Keys a reload cannot change (they need a restart); their old values are kept.
RESTART_KEYS = ("store", "store_password_file", "node", "user", "group", "pidfile", "mongodb")
#: Keys the workers read: a reload that changes one replaces every worker.
WORKER_KEYS = (
    "queues",
    "lease",
    "poll_interval",
    "allowed_modules",
    "setup_hook",
    "max_jobs_per_worker",
    "max_worker_memory",
    "claim_ahead",
    "max_data_size",
)
PLAN_DEBOUNCE = 0.05  # the store waker fires on every write; plan at most this often
LOOP_MAX_WAIT = 1.0
CRASH_RESET = 60.0  # seconds without an unexpected death that end a crash streak
MASTER_STORE_WAIT = 1.0  # seconds a store call of the master may block (lock, server)


class State(enum.Enum):
    RUNNING = "running"
    DRAINING = "draining"  # SIGTERM: no new claims, running jobs get shutdown_grace
    STOPPING = "stopping"  # stop now: running jobs are killed and released


class Retire(enum.StrEnum):
    """Why the master tells an idle worker to leave (logged as ``why``)."""

    IDLE = "idle"  # the pm policy needs fewer workers
    DRAIN = "drain"
    STOP = "stop"
    RELOAD = "reload"  # replaced by a worker with the new settings


@dataclasses.dataclass
class PendingReload:
    """A SIGHUP's configuration on its way in (see Master._reload): the import check runs
    in a child (``check``); then, if the workers must be replaced, one worker started with
    it (``canary``, a pid) has to report ready before the old workers are retired."""

    config: Config
    replace_workers: bool
    timeout: float  # for the import check, then for the canary to be ready
    check: probe.Probe | None = None
    canary: int | None = None
    canary_deadline: float = 0.0


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
        self._strays_next = 0.0  # when to look for what jobs left behind (see _reap)
        self.metrics = NodeMetrics(self.log, config.allowed_modules)
        self.store: Store | None = None
        # Made by _start once the store is open: the claims of the workers, the duties
        # towards the cluster.
        self.jobs: Supervisor
        self.house: Housekeeping
        self.waker: Waker | None = None
        self.waker_muted_until: float | None = None
        self.selector: selectors.BaseSelector | None = None
        self.signals = SignalQueue()
        self.boot_failures = 0
        self.spawn_not_before = 0.0
        # Ready workers dying unexpectedly with nothing to do, one after another (monotonic
        # time of the last): a crash loop after start-up, backed off like start-up failures.
        self.crash_streak = 0
        self.crash_last = 0.0
        self.drain_deadline: float | None = None
        self.stop_deadline: float | None = None
        self.owed_until: float | None = None  # stopping: how long to keep settlements owed
        self.pool_dirty = True
        self.pool_next = 0.0
        self.pool_last = 0.0
        self.pool_timer = Every()
        self.extras_capped = False  # logged once each time max_extra_children is reached
        self.watchdog_every = systemd.watchdog_interval()
        self.watchdog_next = 0.0
        self.status_text = ""
        self.status_sent = 0.0
        self.store_down_since: float | None = None
        # (why, outcomes waiting) while the store refuses writes (disk full...), as logged
        self.unwritable: tuple[str, int] | None = None
        self.unwritable_logged = 0.0
        self.store_lost = False  # the store file was deleted or replaced under us
        self.reload: PendingReload | None = None
        self.reload_refused: str | None = None  # why the last reload was refused (status)
        self.checks: dict[int, probe.Probe] = {}  # import-check children not reaped yet
        self.exit_code = 0

    # -- life cycle -------------------------------------------------------------------
    def run(self) -> int:
        self._start()
        try:
            while not self._finished():
                self._tick()
        finally:
            self._close()
        self.log.info("taskschedd stopped", exit_code=self.exit_code)
        return self.exit_code

    def _start(self) -> None:
        set_child_subreaper()
        set_title(f"taskschedd: master {self.config.node} starting")
        self.log.info(
            "taskschedd starting",
            version=__version__,
            pid=os.getpid(),
            config_file=self.config_path,
            config=self.config.redacted(),
        )
        # The first start creates the store; only this user (or root) may own it.
        self.store = open_store(
            self.config.store,
            create=True,
            owners=daemon_owners(self.config.user),
            **self._store_options(),
        )
        self.jobs = Supervisor(self.config, self.workers, self.log, self.store)
        self.house = Housekeeping(self.config, self.workers, self.log, self.store)
        self._wait_for_store()
        self.house.register()  # NodeNameInUse (78) while a live node has our name
        self.metrics.start(self.config.metrics)
        self.selector = selectors.DefaultSelector()
        self.selector.register(self.signals.install(), selectors.EVENT_READ, "signal")
        self.waker = self.store.waker()
        self.selector.register(self.waker.fileno(), selectors.EVENT_READ, "waker")
        now = time.monotonic()
        self.house.start(now)
        self.house.heartbeat(now)
        self.house.apply_limits(now)  # before this node's first claim, if the store answers
        self._manage_pool(now)
        systemd.ready(status=self._status_line())
        self.log.info("taskschedd ready", pm=self.config.pm, queues=self.config.queues)

    def _store_options(self) -> dict[str, Any]:
        """The workers' store options, but no store call of the master waits longer than
        MASTER_STORE_WAIT: in an outage its loop must keep reaping workers, obeying
        signals and saying what is wrong (SQLite waits 10 s for a lock, MongoDB 5 s for a
        server by default)."""
        options = self.config.store_options()
        if self.config.store_kind == "mongodb":
            options["server_selection_timeout"] = MASTER_STORE_WAIT
        else:
            options["busy_timeout"] = MASTER_STORE_WAIT
        return options

    def _store_health(self, now: float) -> None:
        """Log once when a store outage begins to show and once when it is over."""
        timers = (self.pool_timer, *self.jobs.timers(), *self.house.timers())
        down = any(t.failures for t in timers)
        if down and self.store_down_since is None:
            self.store_down_since = now
            self.log.error("store unavailable: retrying with backoff; running jobs continue")
        elif not down and self.store_down_since is not None:
            self.log.warning(
                "store available again", unavailable_for=round(now - self.store_down_since, 2)
            )
            self.store_down_since = None
            self.house.store_back(now)
        self._store_writable(now, timers)

    def _store_writable(self, now: float, timers: tuple[Every, ...]) -> None:
        """Say why the store refuses writes (disk full, I/O error, read-only: the master's
        own writes or its workers' say so) and how many outcomes the workers keep until it
        takes them; at most once a second while that changes, and once when it is over."""
        waiting = self.jobs.outcomes_waiting()
        errors = [t.error for t in timers if t.failures and isinstance(t.error, StoreNotWritable)]
        why = errors[0].why if errors else ""
        if not why and waiting and self.jobs.unstored_why != "unavailable":
            why = self.jobs.unstored_why
        note = (why, waiting) if why else None
        if note == self.unwritable or now - self.unwritable_logged < 1.0:
            return
        if note is None:
            self.log.warning("store writable again")
        else:
            path = getattr(self.store, "path", None)
            free = diskspace.free_bytes(path) if isinstance(path, str) else None
            self.log.error(
                "store not writable", store=path or redact_url(self.config.store), why=why,
                outcomes_waiting=waiting,
                free=diskspace.size_text(free) if free is not None else None,
                error=str(errors[0]) if errors else self.jobs.unstored_error,
                detail=f"{why}: {waiting} outcomes waiting to be stored; workers keep them, "
                "claim nothing and retry with backoff",
            )  # fmt: skip
        self.unwritable, self.unwritable_logged = note, now

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

    def _finished(self) -> bool:
        return self.state is not State.RUNNING and not self.workers and not self.jobs.owed

    def _close(self) -> None:
        for check in self.checks.values():
            check.kill()
            with contextlib.suppress(ChildProcessError):
                os.waitpid(check.pid, 0)
            check.close()
        self.signals.restore()
        self.metrics.close()
        if self.store is not None:
            try:
                self.house.unregister()  # only our own entry, never a successor's
            except StoreError as exc:
                self.log.warning("could not remove this node from the registry", error=str(exc))
        if self.waker is not None:
            self.waker.close()
        if self.selector is not None:
            self.selector.close()
        self.signals.close()
        if self.store is not None:
            self.store.close()

    # -- the loop ---------------------------------------------------------------------
    def _tick(self) -> None:
        assert self.selector is not None
        wait = max(0.0, min(LOOP_MAX_WAIT, self._next_wakeup() - time.monotonic()))
        for key, _ in self.selector.select(wait):
            if key.data == "signal":
                self.signals.clear_pipe()
            elif key.data == "waker":
                assert self.waker is not None
                self.waker.drain()
                self.pool_dirty = True
                self._mute_waker()
            elif key.data == "check":
                pass  # the import check's report: read by _reload_step
            else:
                self._read_worker(key.data)
        for signum in self.signals.pending():
            self._dispatch(signum)
        self._verify_store()
        now = time.monotonic()
        self._unmute_waker(now)
        self._reap()
        self.jobs.enforce_timeouts(now)
        self.jobs.enforce_memory(now)
        self.jobs.poll_cancels(now)
        self._escalate(now)
        for owed in self.jobs.settle_owed(now):
            self.metrics.master_settled(owed.job, owed.reason)
        self.jobs.renew(now)
        self.metrics.lease_reaped(self.house.reap_expired(now, set(self.jobs.held_tokens())))
        self.house.quarantine(now)
        self.house.apply_limits(now)  # the configured limits, after a start, a reload, an outage
        self._shutdown_step(now)
        self._reload_step(now)
        if self.state is State.RUNNING:
            self._manage_pool(now)
        self.house.heartbeat(now)
        self._taken_over()
        self.house.purge(now)
        self._store_health(now)
        self._watchdog(now)
        self._update_status(now)
        self.metrics.workers(self.workers.values())
        assert self.store is not None
        self.metrics.refresh_queues(now, self.store, self.config.queues)

    def _verify_store(self) -> None:
        """The store file deleted or replaced under the node (one stat per pass): its
        writes would go to a file nobody reads and the jobs added since never run. Stop
        now, and exit 69 so that a supervisor (systemd's Restart=on-failure) starts the
        node again on the store the path names now. Running jobs are stopped too: their
        outcomes cannot be stored, and the jobs run again from the store that is used."""
        if self.store_lost:
            return
        assert self.store is not None
        try:
            self.store.verify()
        except StoreReplaced as exc:
            self.store_lost = True
            self.exit_code = exc.exit_code
            self.log.error("the store is gone: stopping the node, then exit", error=str(exc),
                           exit_code=self.exit_code)  # fmt: skip
            systemd.status(f"stopping: {exc}")
            self._begin_stop("store file deleted or replaced")

    def _taken_over(self) -> None:
        """Another node took this node's name while it was frozen or cut off (Housekeeping
        logged who): two nodes must not share a name, so this one drains and exits 78."""
        if self.house.taken_over and self.state is State.RUNNING:
            self.exit_code = 78
            systemd.status("stopping: another node took over this node's name")
            self._begin_drain("node name taken over")

    def _mute_waker(self) -> None:
        """Wake-ups faster than the waker's rate are coalesced: stop watching it for the
        rest of its quiet time (_unmute_waker watches it again)."""
        assert self.waker is not None and self.selector is not None
        quiet = self.waker.quiet_for()
        if quiet > 0 and self.waker_muted_until is None:
            self.selector.unregister(self.waker.fileno())
            self.waker_muted_until = time.monotonic() + quiet

    def _unmute_waker(self, now: float) -> None:
        if self.waker_muted_until is not None and now >= self.waker_muted_until:
            assert self.waker is not None and self.selector is not None
            self.selector.register(self.waker.fileno(), selectors.EVENT_READ, "waker")
            self.waker_muted_until = None

    def _next_wakeup(self) -> float:
        now = time.monotonic()
        times = [*self.jobs.wakeups(now), *self.house.wakeups(now), now + LOOP_MAX_WAIT]
        if self.waker_muted_until is not None:
            times.append(self.waker_muted_until)
        if self.state is State.RUNNING:
            planned = self.pool_last + PLAN_DEBOUNCE if self.pool_dirty else self.pool_next
            times.append(max(planned, self.pool_timer.next))  # no spinning in a store outage
        if self.status_text != self._status_line():
            times.append(now + 0.1)
        if self.drain_deadline is not None:
            times.append(self.drain_deadline)
        if self.stop_deadline is not None:
            times.append(self.stop_deadline)
        if self.watchdog_every:
            times.append(self.watchdog_next)
        if self.reload is not None:
            check = self.reload.check
            times.append(check.deadline if check else self.reload.canary_deadline)
        return min(times)

    def _escalate(self, now: float) -> None:
        self.jobs.escalate(now)
        if self.stop_deadline is not None and now >= self.stop_deadline:
            for w in self.workers.values():
                killpg(w.pid, signal.SIGKILL)
            self.stop_deadline = now + 1.0

    # -- signals ------------------------------------------------------------------------
    def _dispatch(self, signum: int) -> None:
        name = signal.Signals(signum).name  # SIGTERM -> handle_term
        handler = getattr(self, "handle_" + name.removeprefix("SIG").lower(), None)
        if handler is not None:
            handler(name)

    def handle_term(self, name: str) -> None:
        """Drain; a second one stops now."""
        if self.state is State.RUNNING:
            self._begin_drain(name)
        else:
            self._begin_stop(f"second {name}")

    handle_int = handle_term

    def handle_quit(self, name: str) -> None:
        self._begin_stop(name)

    def handle_hup(self, name: str) -> None:
        if self.state is State.RUNNING:
            self._reload()
        else:
            self.log.info("SIGHUP ignored: shutting down")

    def handle_usr1(self, name: str) -> None:
        self._dump_status()

    def handle_chld(self, name: str) -> None:
        """Nothing to do here: every pass of the loop reaps."""

    # -- workers ----------------------------------------------------------------------
    def _spawn(self, *, extra: bool = False, config: Config | None = None) -> WorkerHandle:
        assert self.selector is not None
        report_r, report_w = os.pipe()
        control_r, control_w = os.pipe()
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        master_pid = os.getpid()
        pid = os.fork()
        if pid == 0:  # the worker; never returns into the master's code
            code = EXIT_CRASH
            try:
                with contextlib.suppress(ValueError):
                    signal.set_wakeup_fd(-1)
                os.close(report_r)
                os.close(control_w)
                self._forget_in_child()
                spec = workerproc.WorkerSpec(
                    config=config or self.config,
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
        lead_own_group(pid)  # also done by the child: whoever runs first wins the race
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
        self.house.pool_changed()
        self.log.info("worker started", worker=handle.name, pid=pid, extra=extra)
        return handle

    def _forget_in_child(self) -> None:
        """Close what belongs to the master; the store connection is left untouched (the
        worker opens its own; SQLite and pymongo connections must not cross a fork)."""
        if self.selector is not None:
            with contextlib.suppress(Exception):
                self.selector.close()
        self.signals.forget_in_child()
        if self.waker is not None:
            with contextlib.suppress(Exception):
                self.waker.close()  # closes the socket; the name file is the master's
        for w in self.workers.values():
            w.close_pipes()

    def _retire(self, w: WorkerHandle, why: Retire) -> None:
        if not w.retiring:
            w.retiring = True
            w.command(Stop())
            self.house.pool_changed()
            self.log.debug("worker retiring", worker=w.name, why=why)

    def _read_worker(self, w: WorkerHandle) -> None:
        for msg in w.reports():
            if msg is None:
                self.log.warning("unreadable message from a worker", worker=w.name)
            else:
                self._message(w, msg)
        if w.eof and self.selector is not None:
            with contextlib.suppress(KeyError, ValueError):
                self.selector.unregister(w.report_fd)

    def _message(self, w: WorkerHandle, msg: Report) -> None:
        match msg:
            case Ready():
                w.ready = True
                if self.boot_failures:
                    self.log.info("a worker started again after start-up failures",
                                  worker=w.name)  # fmt: skip
                self.boot_failures = 0
                self.spawn_not_before = 0.0
                self.pool_dirty = True
            case Stored():
                self._stored(w, msg)
            case Claim():
                self.jobs.claimed(w, msg)
                self.pool_dirty = True
                self.house.pool_changed()
                if self.state is State.STOPPING:
                    self.jobs.kill(w, KillReason.RELEASE)  # it claimed while we were stopping
            case Progress():
                self.jobs.progressed(w, msg)
            case Unstored():
                self.jobs.unstored(w, msg)
                self.house.pool_changed()
            case Exit():
                w.exit_reason = msg.reason

    def _stored(self, w: WorkerHandle, msg: Stored) -> None:
        """One store write of a worker: the outcomes it stored, the jobs it claimed."""
        for _ in range(msg.bad_outcomes):
            self.log.warning("unreadable outcome report from a worker", worker=w.name)
        for outcome in msg.outcomes:
            job = self.jobs.settled(w, outcome.token)
            if job is not None:
                self.metrics.worker_settled(job, outcome.status, outcome.settled, outcome.runtime)
                self.pool_dirty = True
                self.house.pool_changed()
        for _ in range(msg.bad_claims):
            self.log.warning("unreadable claim report from a worker", worker=w.name)
        self.jobs.claimed_ahead(w, msg.claimed)

    def _reap(self) -> None:
        worker_died = False
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            except InterruptedError:
                continue
            if pid == 0:
                break
            w = self.workers.pop(pid, None)
            if w is not None:
                worker_died = True
                self._worker_gone(w, status)
            elif pid in self.checks:
                self.checks.pop(pid).reaped(status)
            # else: an orphaned grandchild of a job (we are its subreaper): reaped, done.
        now = time.monotonic()
        if worker_died or now >= self._strays_next:
            self._strays_next = now + 1.0
            self._kill_strays()

    def _kill_strays(self) -> None:
        """What a job started outside its process group (setsid) comes to us when its
        worker dies: killed, since the job it served has ended (timed out, canceled,
        killed or done) and nothing else may act for it."""
        for pid in kill_strays([*self.workers, *self.checks]):
            self.log.warning("killed a process a job left running outside its group", pid=pid)

    def _worker_gone(self, w: WorkerHandle, status: int) -> None:
        self._read_worker(w)  # messages it wrote before dying come first
        if self.selector is not None and not w.eof:
            with contextlib.suppress(KeyError, ValueError):
                self.selector.unregister(w.report_fd)
        w.close_pipes()
        how = describe_status(status)
        now = time.monotonic()
        self.pool_dirty = True
        self.house.pool_changed()
        self.jobs.worker_died(w, status, how, now, shutting_down=self.state is not State.RUNNING)
        if self.reload is not None and self.reload.canary == w.pid:
            # Not a start-up failure of the running configuration: the new one is refused.
            self._refuse_reload(
                "a worker with the new configuration failed to start", how, worker=w.name
            )
        elif not w.ready and w.kill is None and not w.retiring:
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
            self._crashed(now)
        else:
            why = w.exit_reason or (f"stopped ({w.kill.reason})" if w.kill else None)
            self.log.info("worker exited", worker=w.name, how=how, reason=why)

    def _crashed(self, now: float) -> None:
        """A ready worker died with nothing to do and without saying why (a bug, a store
        error that is not an outage). From the second such death in a row (none for
        CRASH_RESET), the next start waits, as after start-up failures: a crash loop is
        never a respawn storm."""
        if now - self.crash_last > CRASH_RESET:
            self.crash_streak = 0
        self.crash_streak += 1
        self.crash_last = now
        if self.crash_streak > 1:
            delay = pool.backoff_delay(self.crash_streak - 1)
            self.spawn_not_before = max(self.spawn_not_before, now + delay)
            self.log.error(
                "workers keep dying with nothing to do; backing off before the next start",
                crashes=self.crash_streak, retry_in=round(delay, 2),
            )  # fmt: skip

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
            # The plan never needs more than max_children regular and max_extra_children
            # extra workers: a capped count stays cheap behind a backlog of millions (a
            # full one costs ~0.1 s per million).
            cap = self.settings.max_children + 1
            most = self.settings.max_extra_children  # 0: no cap, count them all
            cap_extra = most + 1 + sum(w.extra for w in self.workers.values()) if most else None
            demand = pool.Demand(
                due=self.store.count_due(queues, now=wall, force_spawn=False, limit=cap),
                due_extra=self.store.count_due(queues, now=wall, force_spawn=True, limit=cap_extra),
            )
            if not demand.due and not demand.due_extra:
                due_at = self.store.next_due(queues)
        except StoreError as exc:
            store_trouble(self.log, "count due jobs", self.pool_timer, now, exc)
            demand = pool.Demand()
        else:
            self.pool_timer.done(now, 0.0)
        self.pool_dirty = False
        views = [
            pool.WorkerView(pid=w.pid, busy=w.job is not None, idle_since=w.idle_since,
                            extra=w.extra)
            for w in self.workers.values()
            if not w.retiring and (self.reload is None or w.pid != self.reload.canary)
        ]  # fmt: skip
        plan = pool.plan(self.settings, views, demand, now)
        for pid in plan.retire:
            self._retire(self.workers[pid], Retire.IDLE)
        self._spawn_planned(plan, now)
        if plan.extra_capped and not self.extras_capped:
            self.log.warning(
                "max_extra_children reached: ignore_max_children jobs wait for an extra "
                "worker to end", max_extra_children=self.settings.max_extra_children,
                waiting=plan.extra_capped,
            )  # fmt: skip
        # Said again only once the extras fell below the cap (not when a claim the master
        # has not heard of yet makes one plan look uncapped).
        extras = sum(1 for w in self.workers.values() if w.extra)
        self.extras_capped = bool(plan.extra_capped) or (
            self.extras_capped and extras >= self.settings.max_extra_children
        )
        nxt = now + self.config.poll_interval
        if plan.recheck_at is not None:
            nxt = min(nxt, plan.recheck_at)
        if due_at is not None:
            nxt = min(nxt, now + max(0.0, due_at - time.time()))
        if (self.boot_failures or self.crash_streak) and (plan.spawn or plan.spawn_extra):
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
        elif now < self.spawn_not_before:
            return  # workers crash after they start (_crashed)
        for extra in wanted:
            self._spawn(extra=extra)

    # -- systemd: watchdog and status ---------------------------------------------------
    def _watchdog(self, now: float) -> None:
        if self.watchdog_every and now >= self.watchdog_next:
            systemd.watchdog()
            self.watchdog_next = now + self.watchdog_every

    def _status_line(self) -> str:
        busy = sum(1 for w in self.workers.values() if w.job is not None)
        count = len(self.workers)
        text = f"{count} worker{'' if count == 1 else 's'}, {busy} busy"
        if self.state is not State.RUNNING:
            text += f"; {self.state.value}"
        if self.boot_failures:
            text += f"; workers fail to start ({self.boot_failures}x), backing off"
        if self.reload_refused is not None:
            # The title and STATUS= are one line of ps and systemctl status: the log line
            # has the whole reason (an unknown key's message lists every accepted key).
            why = self.reload_refused
            text += f"; last reload refused: {why if len(why) <= 160 else why[:157] + '...'}"
        if self.unwritable is not None:
            why, waiting = self.unwritable
            text += f"; store not writable ({why}): {waiting} outcomes waiting to be stored"
        return text

    def _update_status(self, now: float, *, force: bool = False) -> None:
        text = self._status_line()
        if text != self.status_text and (force or now - self.status_sent >= 0.1):
            self.status_text = text
            self.status_sent = now
            systemd.status(text)
            set_title(f"taskschedd: master {self.config.node} [{text}]")

    # -- drain, stop, reload, status ----------------------------------------------------
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
            self._retire(w, Retire.DRAIN)
        self._update_status(time.monotonic(), force=True)

    def _begin_stop(self, why: str) -> None:
        if self.state is not State.STOPPING:
            if self.state is State.RUNNING:
                systemd.stopping()
            self.state = State.STOPPING
            self.drain_deadline = None
            self.stop_deadline = time.monotonic() + self.config.kill_grace + 1.0
            self.owed_until = self.stop_deadline + self.config.lease
            self.log.info("stopping now: running jobs are stopped and given back", why=why)
            self._update_status(time.monotonic(), force=True)
        for w in self.workers.values():
            # Told to stop as well: a job that swallows the interrupt must not leave its
            # worker claiming more while the node stops.
            self._retire(w, Retire.STOP)
            if w.job is not None:
                self.jobs.kill(w, KillReason.RELEASE)

    def _shutdown_step(self, now: float) -> None:
        if (
            self.state is State.DRAINING
            and self.drain_deadline is not None
            and now >= self.drain_deadline
        ):
            self._begin_stop("shutdown grace over")
        if (
            self.state is State.STOPPING
            and not self.workers
            and self.jobs.owed
            and self.owed_until is not None
            and now >= self.owed_until
        ):
            # The store has refused them for a lease (a full disk, an outage): stopping
            # must not wait for it. Their leases lapse; any node reaps them (a retry).
            self.log.error(
                "stopping without the settlements the store refused; their leases will "
                "return the jobs", jobs=[o.job.id for o in self.jobs.drop_owed()],
            )  # fmt: skip

    def _reload(self) -> None:
        """SIGHUP: log files are reopened at once. The file is validated, then checked in
        a child (:mod:`taskschedd.probe`: the setup hook and the allowed modules import)
        and, when the workers must be replaced, by one worker started with it, which has
        to report ready before the old workers are retired (_reload_step). Until then the
        old configuration and workers stay; any failure keeps them, with one error line
        that says why (also in STATUS= and the SIGUSR1 dump)."""
        systemd.reloading()
        log.reopen()
        self._command_all(Reopen())
        if self.reload is not None:
            self.log.info("reload: a newer SIGHUP replaces the one still being checked")
            self._drop_reload()
        old = self.config
        try:
            if self.config_path is None:
                raise ConfigError("no configuration file to reload")
            loaded = load_config(self.config_path, allow_empty=False)
            new = dataclasses.replace(loaded, **self.overrides)
            timeout = probe.probe_timeout()
        except ConfigError as exc:
            self._refuse_reload("the new configuration is invalid", str(exc), keeping="old one")
            return
        kept = [k for k in RESTART_KEYS if getattr(new, k) != getattr(old, k)]
        if kept:
            self.log.warning(
                "these settings change only at restart; keeping their running values", keys=kept
            )
            new = dataclasses.replace(new, **{k: getattr(old, k) for k in kept})
        changed = {
            f.name
            for f in dataclasses.fields(Config)
            if getattr(new, f.name) != getattr(old, f.name)
        }
        replace = bool(changed & {*WORKER_KEYS, "logging"})
        self.reload = PendingReload(new, replace_workers=replace, timeout=timeout)
        if probe.targets(new):
            check = probe.Probe.start(new, timeout)
            self.checks[check.pid] = check
            self.reload.check = check
            assert self.selector is not None
            self.selector.register(check.fileno(), selectors.EVENT_READ, "check")
            self.log.debug("reload: checking that the workers can import what it names",
                           pid=check.pid, timeout=timeout)  # fmt: skip
        self._reload_step(time.monotonic())

    def _reload_step(self, now: float) -> None:
        """The reload in progress, one step further: the import check's result, then the
        new worker's start (see _reload)."""
        r = self.reload
        if r is None:
            return
        if self.state is not State.RUNNING:
            self.log.info("reload abandoned: shutting down")
            self._drop_reload()
            return
        if r.check is not None:
            problems = r.check.poll(now)
            if problems is None:
                if r.check.eof:  # the child is gone; wait for _reap, without spinning
                    self._unwatch_check(r.check)
                return
            self._unwatch_check(r.check)
            r.check.close()
            r.check = None
            if problems:
                self._refuse_reload(
                    "the workers cannot import what the new configuration names",
                    probe.summary(problems),
                )
                return
        if r.replace_workers and r.canary is None:
            w = self._spawn(config=r.config)
            r.canary, r.canary_deadline = w.pid, now + r.timeout
            self.log.info(
                "reload: a worker with the new configuration starts; the old workers are "
                "retired once it is ready", worker=w.name,
            )  # fmt: skip
            return
        canary = self.workers.get(r.canary) if r.canary is not None else None
        if canary is not None and not canary.ready:
            if now >= r.canary_deadline:
                self.jobs.kill(canary, KillReason.RELEASE)
                self._refuse_reload(
                    "a worker with the new configuration did not report ready in time",
                    f"not ready within {r.timeout:g}s (${probe.TIMEOUT_ENV})", worker=canary.name,
                )  # fmt: skip
            return
        self.reload = None
        self._apply_reload(r.config, canary)

    def _unwatch_check(self, check: probe.Probe) -> None:
        if self.selector is not None:
            with contextlib.suppress(KeyError, ValueError):
                self.selector.unregister(check.fileno())

    def _drop_reload(self) -> None:
        """Forget the reload in progress: its import check is killed, its worker stopped."""
        r, self.reload = self.reload, None
        if r is None:
            return
        if r.check is not None:
            self._unwatch_check(r.check)
            r.check.kill()  # reaped by _reap
            r.check.close()
        canary = self.workers.get(r.canary) if r.canary is not None else None
        if canary is not None and not canary.ready:
            self.jobs.kill(canary, KillReason.RELEASE)
        elif canary is not None:
            self._retire(canary, Retire.RELOAD)

    def _refuse_reload(self, why: str, error: str, keeping: str = "old configuration and "
                       "workers", **fields: Any) -> None:  # fmt: skip
        """One error line; the running configuration and workers stay."""
        self._drop_reload()
        self.reload_refused = f"{why}: {error}"
        self.log.error(f"reload refused: {why}; keeping the {keeping}", error=error, **fields)
        systemd.ready(status=self._status_line())

    def _apply_reload(self, new: Config, canary: WorkerHandle | None) -> None:
        """Make ``new`` the running configuration; ``canary``, started with it, stays."""
        old = self.config
        try:
            log.configure(new.logging.format, new.logging.level, new.logging.file)
        except ConfigError as exc:
            log.configure(old.logging.format, old.logging.level, old.logging.file)
            if canary is not None:
                self._retire(canary, Retire.RELOAD)
            self._refuse_reload("the new log settings do not work", str(exc),
                                keeping="old configuration")  # fmt: skip
            return
        if new.metrics != old.metrics and not self.metrics.move(new.metrics):
            new = dataclasses.replace(new, metrics=old.metrics)
        changed = [
            f.name
            for f in dataclasses.fields(Config)
            if getattr(new, f.name) != getattr(old, f.name)
        ]
        self.config = new
        self.settings = pool.PoolSettings.from_config(new)
        self.log = log.get_logger("taskschedd.master", node=new.node)
        self.jobs.reconfigure(new, self.log)
        self.house.reconfigure(new, self.log)
        self.metrics.reconfigure(self.log, new.allowed_modules)
        if any(k in changed for k in WORKER_KEYS) or "logging" in changed:
            for w in self.workers.values():
                if w is not canary:
                    self._retire(w, Retire.RELOAD)  # replacements start with the new settings
        if self.boot_failures:
            # Workers fail to start; a reload is how the operator says "fixed": probe now
            # instead of at the end of a backoff of up to 30 s (one probe, as before).
            self.spawn_not_before = 0.0
        self.reload_refused = None
        self.pool_dirty = True
        self.house.pool_changed()
        self.log.info("configuration reloaded", changed=changed, config=new.redacted())
        systemd.ready(status=self._status_line())

    def _command_all(self, cmd: Command) -> None:
        for w in self.workers.values():
            w.command(cmd)

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
            owed_settlements=len(self.jobs.owed),
            outcomes_waiting=self.jobs.outcomes_waiting(),
            start_failures=self.boot_failures,
            last_reload_refused=self.reload_refused,
            reload_pending=self.reload is not None,
            jobs=counts,
        )


def run(
    config: Config, config_path: str | None = None, overrides: dict[str, Any] | None = None
) -> int:
    """Run a node in the foreground until it is stopped; returns the exit code."""
    return Master(config, config_path, overrides).run()


__all__ = ["Master", "State", "drop_privileges", "run"]
