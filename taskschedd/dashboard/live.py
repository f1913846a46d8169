"""The live feed: one reader of the event log per dashboard process, however many
browsers watch. It waits on the store's own wake-ups (not a faster poll), keeps the
last hour's throughput per minute, and recomputes the overview at most once a second,
then pushes both to every subscribed page (Server-Sent Events, see app.py)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from taskschedd.errors import TaskSchedError
from taskschedd.model import EventRecord, JobStatus
from taskschedd.scheduler import Scheduler, events_of, open_waker
from taskschedd.store.base import Waker

log = logging.getLogger("taskschedd.dashboard")

#: Minutes of history the chart shows.
MINUTES = 60
#: Events read per store round trip.
BATCH = 2000
#: Overview recomputed at most this often while jobs change (seconds).
MIN_INTERVAL = 1.0
#: ... and at least this often otherwise (nodes come and go without an event).
IDLE_REFRESH = 5.0
#: The overview's share of the store's time at most: computing it took t seconds, the
#: next waits at least t / SHARE (a count over a large MongoDB collection is not free).
SHARE = 0.1
#: Jobs one "jobs" message names at most (more: pages are told to reload).
JOBS_PER_MESSAGE = 500
#: How soon a stop is seen while the feed waits (seconds).
STOP_SLICE = 0.25
#: Messages a slow page may fall behind before it is told to resynchronize.
QUEUE_SIZE = 64
_FAILED = (JobStatus.FAILED, JobStatus.TIMEOUT)


class Histogram:
    """Jobs ended DONE and ended failed (FAILED, TIMEOUT) per minute, by event time."""

    def __init__(self) -> None:
        self.buckets: dict[int, list[int]] = {}

    def add(self, events: list[EventRecord]) -> None:
        for e in events:
            if e.status is JobStatus.DONE:
                slot = 0
            elif e.status in _FAILED:
                slot = 1
            else:
                continue
            minute = int(e.time // 60)
            self.buckets.setdefault(minute, [0, 0])[slot] += 1

    def series(self, now: float) -> dict[str, Any]:
        last = int(now // 60)
        first = last - MINUTES + 1
        for minute in [m for m in self.buckets if m < first]:
            del self.buckets[minute]
        minutes = [
            {
                "t": m * 60,
                "done": self.buckets.get(m, [0, 0])[0],
                "failed": self.buckets.get(m, [0, 0])[1],
            }
            for m in range(first, last + 1)
        ]
        done = sum(m["done"] for m in minutes)
        failed = sum(m["failed"] for m in minutes)
        return {
            "minutes": minutes,
            "done": done,
            "failed": failed,
            "failure_rate": failed / (done + failed) if done + failed else 0.0,
        }


def sse(kind: str, payload: Any) -> bytes:
    """One Server-Sent Event, encoded once for every page that receives it."""
    return f"event: {kind}\ndata: {json.dumps(payload, separators=(',', ':'))}\n\n".encode()


def public(snap: dict[str, Any]) -> dict[str, Any]:
    """An overview as pages get it (without the raw counts it was folded from)."""
    return {k: v for k, v in snap.items() if k != "rows"}


@dataclass(eq=False)
class Subscription:
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue[bytes] = field(default_factory=lambda: asyncio.Queue(QUEUE_SIZE))
    #: Set when messages were dropped: the page reloads what it shows.
    lost: bool = False

    def offer(self, message: bytes) -> None:
        """Called in the subscriber's event loop."""
        try:
            self.queue.put_nowait(message)
        except asyncio.QueueFull:
            self.lost = True


class Feed:
    """Started on first use; a daemon thread, stopped by :meth:`stop`."""

    def __init__(
        self,
        scheduler: Callable[[], Scheduler],
        snapshot: Callable[[Scheduler, Histogram, float], dict[str, Any]],
    ) -> None:
        self._scheduler = scheduler
        self._snapshot_of = snapshot
        self._subs: set[Subscription] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._snapshot: dict[str, Any] | None = None
        self._snapshot_at = 0.0
        self._cost = 0.0  # seconds the last overview took to compute
        self._last: int | None = None  # the last event read (kept across store errors)
        self._filled = threading.Event()
        self.histogram = Histogram()

    # -- for the web side ------------------------------------------------------------------
    def start(self) -> None:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="dashboard-feed", daemon=True
                )
                self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=5.0)

    def subscribe(self, loop: asyncio.AbstractEventLoop) -> Subscription:
        self.start()
        sub = Subscription(loop)
        with self._lock:
            self._subs.add(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        with self._lock:
            self._subs.discard(sub)

    @property
    def subscribers(self) -> int:
        with self._lock:
            return len(self._subs)

    def snapshot(self, sched: Scheduler, max_age: float = MIN_INTERVAL) -> dict[str, Any]:
        """The overview: the feed's own when fresh, else computed for this request."""
        self.start()
        with self._lock:
            fresh = max(max_age, self.interval)
            if self._snapshot is not None and time.monotonic() - self._snapshot_at <= fresh:
                return self._snapshot
        return self._compute(sched)

    @property
    def interval(self) -> float:
        """How long an overview stays fresh: a second, longer when it is costly."""
        return max(MIN_INTERVAL, self._cost / SHARE)

    def _compute(self, sched: Scheduler) -> dict[str, Any]:
        started = time.monotonic()
        snap = self._snapshot_of(sched, self.histogram, time.time())
        done = time.monotonic()
        with self._lock:
            self._cost = done - started
            self._snapshot, self._snapshot_at = snap, done
        return snap

    def chart_ready(self, timeout: float = 0.0) -> bool:
        return self._filled.wait(timeout)

    # -- the thread -------------------------------------------------------------------------
    def _publish(self, kind: str, payload: Any) -> None:
        with self._lock:
            subs = list(self._subs)
        if not subs:
            return
        message = sse(kind, public(payload) if kind == "overview" else payload)
        for sub in subs:
            try:
                sub.loop.call_soon_threadsafe(sub.offer, message)
            except RuntimeError:  # its loop is closed: the page is gone
                self.unsubscribe(sub)

    def _run(self) -> None:
        """Follows the log until stopped; a store error is reported to the pages and
        retried with backoff (the scheduler is the caller's to close)."""
        delay = 1.0
        while not self._stop.is_set():
            try:
                self._follow(self._scheduler())
                return
            except TaskSchedError as exc:
                log.warning("dashboard feed: %s; retrying in %.0fs", exc, delay)
                self._publish("problem", {"message": str(exc)})
                self._stop.wait(delay)
                delay = min(delay * 2, 30.0)

    def _fill(self, sched: Scheduler, last: int) -> None:
        """The last hour's events into the histogram: found by a binary search on seq (the
        event log has no time index; seqs grow with time), then read in batches."""
        since = time.time() - MINUTES * 60
        low, high = 0, last
        while low < high:
            mid = (low + high) // 2
            first = events_of(sched.store, after=mid, limit=1)
            if not first or first[0].time >= since:
                high = mid
            else:
                low = first[0].seq
        after = low
        while after < last and not self._stop.is_set():
            batch = events_of(sched.store, after=after, limit=BATCH)
            batch = [e for e in batch if e.seq <= last]
            if not batch:
                break
            self.histogram.add([e for e in batch if e.time >= since])
            after = batch[-1].seq

    def _follow(self, sched: Scheduler) -> None:
        store = sched.store
        last = store.last_event_seq() if self._last is None else self._last
        if self._last is not None:
            self._publish("resync", {})  # back after an error: what pages show may be old
        if not self._filled.is_set():
            self._fill(sched, last)
            self._filled.set()
        self._last = last
        waker = open_waker(store)
        try:
            dirty = True
            while not self._stop.is_set():
                read_at = time.monotonic()
                batch = events_of(store, after=last, limit=BATCH)
                if batch:
                    last = self._last = batch[-1].seq
                    self.histogram.add(batch)
                    dirty = True
                    if self.subscribers:
                        self._publish_jobs(batch)
                age = time.monotonic() - self._snapshot_at
                due = (dirty and age >= self.interval) or age >= max(IDLE_REFRESH, self.interval)
                # Nobody watching: a page load computes its own (the store is spared).
                if due and self.subscribers:
                    self._publish("overview", self._compute(sched))
                    dirty = False
                if len(batch) == BATCH:
                    continue
                age = time.monotonic() - self._snapshot_at
                watched = dirty and self.subscribers
                wait = max(0.05, self.interval - age) if watched else IDLE_REFRESH
                self._wait(waker, wait)
                # A busy node commits hundreds of times a second, each a wake-up: the
                # log is read at most once per MIN_INTERVAL, whatever the number of
                # pages, and each read's events go out as one message.
                self._stop.wait(max(0.0, read_at + MIN_INTERVAL - time.monotonic()))
        finally:
            if waker is not None:
                with contextlib.suppress(Exception):
                    waker.close()

    def _publish_jobs(self, batch: list[EventRecord]) -> None:
        """The latest event of each job changed since the last read; a page that shows a
        job left out when there are more than JOBS_PER_MESSAGE reloads what it shows."""
        latest = {e.job_id: e for e in batch}
        if len(latest) > JOBS_PER_MESSAGE:
            self._publish("resync", {})
            return
        self._publish("jobs", [_event(e) for e in latest.values()])

    def _wait(self, waker: Waker | None, seconds: float) -> None:
        """Until the store changes, ``seconds`` pass or :meth:`stop`: the wake-up source
        is watched in slices, so that a stop is seen within one (no store read)."""
        deadline = time.monotonic() + seconds
        while not self._stop.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                return
            if waker is None:
                self._stop.wait(min(left, STOP_SLICE))
            elif waker.wait(min(left, STOP_SLICE)):
                return


def _event(e: EventRecord) -> dict[str, Any]:
    return {
        "seq": e.seq,
        "id": e.job_id,
        "status": e.status.name,
        "attempt": e.attempt,
        "time": e.time,
        "class": e.cls,
        "queue": e.queue,
        "node": e.node,
        "worker": e.worker,
    }
