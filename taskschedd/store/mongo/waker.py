"""Wake-ups for the MongoDB store: a pipe written by a background thread.

The thread either follows a change stream on the events collection (a replica set or
sharded cluster, or when forced) or polls ``last_event_seq()`` every ``interval``
seconds. Both are hints: a lost wake-up costs the caller one of its own poll
intervals, never a job. The pipe's read end is what callers select() on, so the
daemon's master can register it like the SQLite store's socket.
"""

from __future__ import annotations

import contextlib
import os
import select
import threading
import time
from collections.abc import Callable
from typing import Any

from pymongo.errors import PyMongoError

from taskschedd.errors import StoreError
from taskschedd.log import get_logger
from taskschedd.store.base import Waker
from taskschedd.store.mongo.errors import reason

#: How long a try_next() that returned at once makes the thread sleep. nx-27017 answers
#: getMore immediately (it ignores maxAwaitTimeMS); a real server blocks for up to
#: STREAM_AWAIT_MS, so this pause only applies when the server does not wait itself.
STREAM_IDLE_PAUSE = 0.05
STREAM_AWAIT_MS = 1000
#: After a change stream failed, poll for this long before trying to reopen it.
STREAM_RETRY_AFTER = 5.0

StreamOpener = Callable[[], Any]


def _log() -> Any:
    return get_logger("taskschedd.store.mongo")


class MongoWaker(Waker):
    """Wakes when the store's event sequence grows (polling) or an event is inserted
    (change stream). ``open_stream`` returns an open change stream, or None when change
    streams are not to be used; it is called once here (so that nothing written after
    this constructor returns is missed) and again after a stream failed."""

    def __init__(
        self,
        *,
        poll: Callable[[], int],
        interval: float,
        open_stream: StreamOpener | None = None,
    ) -> None:
        self._poll = poll
        self._interval = max(0.01, float(interval))
        self._open_stream = open_stream
        self._pid = os.getpid()
        self._r, self._w = os.pipe()
        os.set_blocking(self._r, False)
        os.set_blocking(self._w, False)
        self._stop = threading.Event()
        self._closed = False
        self._last: int | None = None
        with contextlib.suppress(StoreError):
            self._last = poll()
        self._stream: Any = None
        self._stream_retry = 0.0
        if open_stream is not None:
            self._stream = self._try_open()
        self.mode = "change stream" if self._stream is not None else "polling"
        self._thread = threading.Thread(target=self._run, name="mongo-waker", daemon=True)
        self._thread.start()

    # -- the thread --------------------------------------------------------------------
    def _try_open(self) -> Any:
        assert self._open_stream is not None
        try:
            stream = self._open_stream()
            if stream is None:
                self._open_stream = None  # the store decided: no change streams here
            return stream
        except (StoreError, PyMongoError) as exc:
            why = str(exc) if isinstance(exc, StoreError) else reason(exc)
            _log().info("change stream unavailable; polling for wake-ups", error=why)
            self._stream_retry = time.monotonic() + STREAM_RETRY_AFTER
            return None

    def _poke(self) -> None:
        with contextlib.suppress(BlockingIOError, OSError):  # full: a wake-up is pending
            os.write(self._w, b"!")

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                if self._stream is not None:
                    self._follow_stream()
                    continue
                self._poll_once()
                if (
                    self._open_stream is not None
                    and time.monotonic() >= self._stream_retry
                    and not self._stop.is_set()
                ):
                    self._stream = self._try_open()
                    if self._stream is not None:
                        self._poke()  # changes may have been missed while it was down
                        continue
                self._stop.wait(self._interval)
        finally:
            self._close_stream()
            with contextlib.suppress(OSError):
                os.close(self._w)

    def _poll_once(self) -> None:
        try:
            seq = self._poll()
        except StoreError:
            return  # an outage: keep the last value; the first success after it wakes
        if self._last is None or seq != self._last:
            self._last = seq
            self._poke()

    def _follow_stream(self) -> None:
        stream = self._stream
        try:
            while not self._stop.is_set():
                started = time.monotonic()
                change = stream.try_next()
                if change is not None:
                    self._poke()
                    continue
                if time.monotonic() - started < STREAM_IDLE_PAUSE:
                    self._stop.wait(STREAM_IDLE_PAUSE)
        except PyMongoError as exc:
            if not self._stop.is_set():
                _log().info("change stream failed; polling for wake-ups", error=reason(exc))
            self._close_stream()
            self._stream_retry = time.monotonic() + STREAM_RETRY_AFTER
            self._last = None  # the next successful poll wakes (changes may be missed)

    def _close_stream(self) -> None:
        stream, self._stream = self._stream, None
        if stream is not None:
            with contextlib.suppress(Exception):
                stream.close()

    # -- the Waker interface --------------------------------------------------------------
    def fileno(self) -> int:
        return self._r

    def wait(self, timeout: float | None) -> bool:
        try:
            ready, _, _ = select.select([self._r], [], [], timeout)
        except InterruptedError:  # pragma: no cover - PEP 475 retries
            return False
        if ready:
            self.drain()
            return True
        return False

    def drain(self) -> None:
        while True:
            try:
                if not os.read(self._r, 512):
                    return
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        if os.getpid() != self._pid:
            # A forked child holds copies of both ends but not the thread (nor may it use
            # the parent's change stream): close its copies only.
            for fd in (self._r, self._w):
                with contextlib.suppress(OSError):
                    os.close(fd)
            return
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(STREAM_AWAIT_MS / 1000 + 1.0)
        with contextlib.suppress(OSError):
            os.close(self._r)
