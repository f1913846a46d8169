"""Fencing in execution: a daemon worker stops running what its lease no longer covers.

The store fences a stale owner's writes (claim tokens); this module keeps a stale owner
from *running*. A job may be taken over by another node once its lease ends, and only
the master renews leases. So a worker keeps, per claim, the monotonic time its lease
ends: from the claimed record's ``lease_until`` when it claims, then from each renewal
its master confirms (:class:`~taskschedd.messages.LeaseConfirmed` control lines). When
the deadline of the job it runs comes within :func:`lease_margin` without a newer
confirmation (master frozen, dead or cut off from the store), a thread that the job does
not block kills the job's process group: the worker, the job and the job's children.
The master settles the attempt when it notices (fenced: if another node took the job
over meanwhile, the settle matches nothing). A job claimed ahead whose deadline has come
that close never starts (it is given back, fenced), and a worker whose master has not
confirmed anything for :func:`gate` claims nothing and gives back what it claimed
ahead.

Clocks. The master and its workers share the host's monotonic clock: a confirmation
carries absolute monotonic times, so a line read late can never stretch a deadline.
The deadline of a renewal is taken *before* the master reads the wall clock for
``lease_until``, so it is never later than the lease the store holds. Other nodes
compare ``lease_until`` with their own wall clocks: the margin (a tenth of the lease)
absorbs clock rate differences (NTP slews by at most 0.05 %), the worker's own
scheduling delay and the kill itself; node clocks are assumed to agree within it.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import threading
import time
from collections.abc import Callable, Iterable

from taskschedd.messages import Command, LeaseConfirmed, MalformedMessage, decode_command
from taskschedd.model import JobRecord

#: A job is killed this fraction of the lease before its lease ends.
MARGIN_FRACTION = 0.1
#: A worker whose master has confirmed nothing for this fraction of the lease (the
#: master confirms every third of it) claims nothing.
GATE_FRACTION = 2 / 3


def lease_margin(lease: float) -> float:
    """How long before its lease ends a job is killed without a newer confirmation."""
    return lease * MARGIN_FRACTION


def gate(lease: float) -> float:
    """How long a worker may go without a confirmation and still claim."""
    return lease * GATE_FRACTION


class LeaseWatch:
    """The leases of one daemon worker's claims, and the thread that enforces them.

    Thread-safe. The worker's core calls :meth:`claimed` after each claim, and, as its
    run guard, :meth:`may_start` before it starts a job and :meth:`ended` after;
    :meth:`forget` when an outcome is stored. :meth:`watch` starts the thread that reads
    the master's control pipe (confirmations) and kills the job when its time is up.
    """

    def __init__(self, lease: float, *, now: float | None = None) -> None:
        self.lease = lease
        self.margin = lease_margin(lease)
        self.gate = gate(lease)
        now = time.monotonic() if now is None else now
        self.confirmed = now  # the master forked this worker: alive then
        self._lock = threading.Lock()
        self._deadlines: dict[str, float] = {}  # claim token -> monotonic end of its lease
        self._running: str | None = None
        self._wake_at = float("inf")  # when the thread looks next (monotonic)
        self._thread: threading.Thread | None = None
        self._poke_r, self._poke_w = -1, -1
        self._closed = False

    # -- state (any thread) -----------------------------------------------------------
    def claimed(self, jobs: Iterable[JobRecord]) -> None:
        """Claims just returned by the store: their leases end at their ``lease_until``."""
        mono, wall = time.monotonic(), time.time()
        with self._lock:
            soonest = float("inf")
            for job in jobs:
                if job.claim_token is None:
                    continue
                until = job.lease_until if job.lease_until is not None else wall
                self._deadlines[job.claim_token] = deadline = mono + (until - wall)
                soonest = min(soonest, deadline - self.margin)
            sooner = soonest < self._wake_at
        if sooner:
            self._poke()

    def forget(self, token: str) -> None:
        """The claim is settled or given back: nothing to watch."""
        with self._lock:
            self._deadlines.pop(token, None)
            if self._running == token:
                self._running = None

    def confirm(self, done: float, deadline: float, tokens: Iterable[str]) -> bool:
        """A renewal the master confirms; True if it ends a silence past the gate.

        A renewal whose write returned before a claim's kill time renewed that claim if
        it was still held (nobody may take a lease over before it ends); one that
        returned later may have come after another node reaped it: it extends nothing."""
        with self._lock:
            silent = done - self.confirmed > self.gate
            self.confirmed = max(self.confirmed, done)
            for token in tokens:
                old = self._deadlines.get(token)
                if old is not None and done < old - self.margin:
                    self._deadlines[token] = max(old, deadline)
            return silent

    def responsive(self, now: float) -> bool:
        """Whether the master confirmed something recently enough to claim more."""
        return now - self.confirmed <= self.gate

    def deadline(self, token: str) -> float | None:
        with self._lock:
            return self._deadlines.get(token)

    def may_start(self, job: JobRecord) -> bool:
        """Start ``job`` (it is then the one the thread watches) unless its lease is about
        to end (or was never seen); checked against the thread's kill under one lock, so
        a job either starts watched or does not start."""
        token = job.claim_token
        with self._lock:
            until = self._deadlines.get(token or "")
            if until is None or time.monotonic() >= until - self.margin:
                return False
            # The thread looks by then at the latest: it waits for the first kill time
            # of all the claims held, this one's included.
            self._running = token
        return True

    def ended(self, job: JobRecord) -> None:
        """The job's code returned (or raised): nothing to kill any more."""
        with self._lock:
            if self._running == job.claim_token:
                self._running = None

    # -- the thread ---------------------------------------------------------------------
    def watch(
        self,
        control_fd: int,
        deliver: Callable[[list[Command], bool], None],
        expire: Callable[[str, float], None],
    ) -> None:
        """Start the thread. It reads the master's control pipe: confirmations it applies
        itself; other commands go to ``deliver(commands, eof)``, lines that do not decode
        nowhere. ``deliver`` is also called with no command when the master is heard again
        after a silence, and with ``eof`` when the pipe ends.
        When the running job's kill time passes it calls ``expire(token, deadline)``,
        holding the lock that :meth:`may_start` and :meth:`ended` take; ``expire`` is
        expected not to return (it kills the process group).

        Signals are blocked in the thread, so they reach the main thread (its handlers
        interrupt the job there)."""
        self._poke_r, self._poke_w = os.pipe()
        os.set_blocking(self._poke_r, False)
        os.set_blocking(self._poke_w, False)
        self._thread = threading.Thread(
            target=self._loop, args=(control_fd, deliver, expire), name="lease-watch",
            daemon=True,
        )  # fmt: skip
        old = signal.pthread_sigmask(signal.SIG_BLOCK, signal.valid_signals())
        try:
            self._thread.start()  # the thread inherits the blocked mask
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, old)

    def close(self) -> None:
        """Stop the thread (at the worker's exit)."""
        self._closed = True
        self._poke()
        if self._thread is not None and self._thread.is_alive():
            self._thread.join(timeout=5)
        for fd in (self._poke_r, self._poke_w):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._poke_r = self._poke_w = -1

    def _poke(self) -> None:
        """Make the thread look at the deadlines again (a claim that ends sooner than
        what it waits for, the end)."""
        if self._poke_w >= 0:
            with contextlib.suppress(OSError):  # full: it is awake anyway
                os.write(self._poke_w, b"!")

    def _next_check(self, now: float) -> float | None:
        """Seconds until the thread must look again (<= 0: kill the running job); None:
        nothing to watch. Called with the lock held. The first kill time of all the
        claims held, so a claim that starts later (may_start, which does not wake the
        thread) is looked at in time; one whose kill time passed cannot start any more."""
        times = [d - self.margin for d in self._deadlines.values() if d - self.margin > now]
        if self._running is not None and self._running in self._deadlines:
            times.append(self._deadlines[self._running] - self.margin)
        return min(times) - now if times else None

    def _loop(
        self,
        control_fd: int,
        deliver: Callable[[list[Command], bool], None],
        expire: Callable[[str, float], None],
    ) -> None:
        buf = b""
        reading = True
        while not self._closed:
            with self._lock:
                now = time.monotonic()
                wait = self._next_check(now)
                due = wait is not None and wait <= 0 and self._running is not None
                # Confirmations that came while this thread could not run (a job that
                # held the GIL) are read before any kill: the master may have renewed
                # all along, and a kill then would stop a healthy node's job.
                pending = due and reading and bool(select.select([control_fd], [], [], 0)[0])
                if due and not pending:
                    assert self._running is not None
                    expire(self._running, self._deadlines[self._running])
                    self._running = None  # only reached when expire returns (tests)
                    continue
                self._wake_at = float("inf") if wait is None else now + wait
            fds = [self._poke_r, control_fd] if reading else [self._poke_r]
            ready, _, _ = select.select(fds, [], [], 0 if pending else wait)
            if self._poke_r in ready:
                with contextlib.suppress(OSError):
                    os.read(self._poke_r, 4096)
            if control_fd not in ready:
                continue
            try:
                chunk = os.read(control_fd, 65536)
            except BlockingIOError:
                continue
            except OSError:
                chunk = b""
            if not chunk:
                reading = False
                deliver([], True)
                continue
            *lines, buf = (buf + chunk).split(b"\n")
            others: list[Command] = []
            woke = False
            for raw in lines:
                try:
                    cmd = decode_command(raw.decode(errors="replace"))
                except MalformedMessage:
                    continue
                if isinstance(cmd, LeaseConfirmed):
                    woke = self.confirm(cmd.done, cmd.deadline, cmd.tokens) or woke
                elif cmd is not None:
                    others.append(cmd)
            if others or woke:
                deliver(others, False)


__all__ = ["GATE_FRACTION", "MARGIN_FRACTION", "LeaseWatch", "gate", "lease_margin"]
