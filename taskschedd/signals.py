"""The master's signals: handlers that only record, and a self-pipe that wakes the loop.

``signal.set_wakeup_fd`` writes a byte to the pipe for every signal, so the master's
selector (its one wake-up source) returns at once; the handler itself just appends the
signal number to a queue. The main loop then takes them with :meth:`SignalQueue.pending`
and dispatches each to ``Master.handle_<name>``. Nothing is logged in a handler.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections import deque
from collections.abc import Iterator
from types import FrameType
from typing import Any

#: The signals the master handles (documented in ``taskschedd --help`` and taskschedd(8)).
HANDLED = (
    signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGHUP, signal.SIGUSR1,
    signal.SIGCHLD,
)  # fmt: skip


class SignalQueue:
    """Signals recorded by the handlers, waiting for the main loop."""

    def __init__(self) -> None:
        self._pending: deque[int] = deque()
        self._r = self._w = -1
        self._old_handlers: dict[int, Any] = {}

    def install(self) -> int:
        """Create the self-pipe, point the wake-up fd at it and install the handlers;
        returns the pipe's read end, for the selector."""
        self._r, self._w = os.pipe()
        for fd in (self._r, self._w):
            os.set_blocking(fd, False)
        signal.set_wakeup_fd(self._w, warn_on_full_buffer=False)
        for sig in HANDLED:
            self._old_handlers[sig] = signal.signal(sig, self._record)
        return self._r

    def _record(self, signum: int, frame: FrameType | None) -> None:
        self._pending.append(signum)  # only record: the loop does the work

    def clear_pipe(self) -> None:
        """Empty the self-pipe (its bytes only wake the loop; the queue says which)."""
        with contextlib.suppress(OSError):
            while os.read(self._r, 512):
                pass

    def pending(self) -> Iterator[int]:
        """The recorded signals, oldest first, each taken off the queue."""
        while self._pending:
            yield self._pending.popleft()

    def restore(self) -> None:
        """Stop feeding the pipe and put the previous handlers back."""
        with contextlib.suppress(ValueError):
            signal.set_wakeup_fd(-1)
        for sig, handler in self._old_handlers.items():
            with contextlib.suppress(ValueError, TypeError):
                signal.signal(sig, handler)

    def close(self) -> None:
        for fd in (self._r, self._w):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)

    def forget_in_child(self) -> None:
        """In a forked worker: the pipe is the master's (the worker resets the handlers)."""
        for fd in (self._r, self._w):
            with contextlib.suppress(OSError):
                os.close(fd)


__all__ = ["HANDLED", "SignalQueue"]
