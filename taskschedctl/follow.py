"""Waiting for jobs and following events, through brief store outages.

A cron line that waits for its job must not fail because the store restarted: reads that
raise StoreUnavailable are retried with backoff (the user is told once per outage), while
the wait's own deadline still holds.
"""

from __future__ import annotations

import sys
from collections import deque
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, NoReturn

from taskschedctl.output import ProgressLine
from taskschedd.errors import StoreUnavailable, WaitTimeout
from taskschedd.model import EventRecord, JobRecord
from taskschedd.scheduler import FALLBACK_POLL, Scheduler, events_of, open_waker, pause
from taskschedd.store.base import Store

if TYPE_CHECKING:
    from typing import TextIO

#: Events read per query when scanning history.
CHUNK = 1000


class Unfinished(WaitTimeout):
    """A wait that timed out, with the jobs as last read (for what wait prints then)."""

    def __init__(self, message: str, jobs: Sequence[JobRecord]) -> None:
        super().__init__(message)
        self.jobs = list(jobs)


class Outage:
    """Backoff for a store that is briefly unavailable; says so once per outage."""

    def __init__(self, first: float = 0.1, cap: float = 5.0, stream: TextIO | None = None) -> None:
        self.first = first
        self.cap = cap
        self.delay = 0.0
        self.stream = stream if stream is not None else sys.stderr
        self.quiet = False  # a progress line shows the outage instead

    @property
    def active(self) -> bool:
        return self.delay > 0

    def failed(self, exc: StoreUnavailable) -> float:
        """Seconds to wait before the next try."""
        if not self.active and not self.quiet:
            from taskschedd.redact import redact_text

            self.stream.write(
                f"taskschedctl: store unavailable, retrying: {redact_text(str(exc))}\n"
            )
            self.stream.flush()
        self.delay = min(self.cap, self.delay * 2) if self.active else self.first
        return self.delay

    def ok(self) -> None:
        if self.active and not self.quiet:
            self.stream.write("taskschedctl: store reachable again\n")
            self.stream.flush()
        self.delay = 0.0


def wait_jobs(
    sched: Scheduler,
    ids: Sequence[str],
    timeout: float | None,
    *,
    progress: bool = True,
    on_first: Callable[[list[JobRecord]], None] | None = None,
) -> list[JobRecord]:
    """:meth:`Scheduler.wait` through brief store outages, with a progress line on stderr
    when it is a terminal (``on_first`` gets the jobs as first read); JobNotFound for an unknown id, WaitTimeout after ``timeout``
    seconds (:class:`Unfinished`, with the jobs as last read)."""
    bar = ProgressLine(len(dict.fromkeys(ids)) if progress else 0)
    outage = Outage()
    outage.quiet = bar.enabled and progress
    seen: list[JobRecord] = []

    def read(jobs: list[JobRecord]) -> None:
        outage.ok()
        first = not seen
        seen[:] = jobs
        if first and on_first is not None:
            on_first(jobs)
        if progress:
            bar.update(jobs)

    def unavailable(exc: StoreUnavailable) -> float:
        delay = outage.failed(exc)
        if progress:
            bar.update(seen, note="store unavailable, retrying")
        return delay

    try:
        done = sched.wait(ids, timeout, on_read=read, on_unavailable=unavailable)
    except WaitTimeout as exc:
        raise Unfinished(str(exc), seen) from None
    finally:
        bar.close()
    return [p.record for p in done]


def recent_events(
    store: Store,
    *,
    lines: int,
    job_ids: Sequence[str],
    since: float | None,
    match: Callable[[EventRecord], bool],
) -> tuple[list[EventRecord], int]:
    """The last ``lines`` matching events (0: all), oldest first, and the seq to follow from.

    Without job ids the history is read backwards in chunks of seq, so asking for the last
    20 events of a large store costs a few indexed queries, not a full scan.
    """
    top = store.last_event_seq()
    keep: deque[EventRecord] = deque(maxlen=lines or None)
    if job_ids:
        after = 0
        while True:
            batch = events_of(store, after=after, job_ids=job_ids, since=since, limit=CHUNK)
            keep.extend(e for e in batch if e.seq <= top and match(e))
            if len(batch) < CHUNK or batch[-1].seq >= top:
                return list(keep), top
            after = batch[-1].seq
    found: list[EventRecord] = []
    hi = top
    while hi > 0 and (not lines or len(found) < lines):
        lo = max(0, hi - CHUNK)
        batch = [e for e in store.events(after=lo, limit=CHUNK) if e.seq <= hi]
        found[:0] = [e for e in batch if match(e) and (since is None or e.time >= since)]
        if since is not None and batch and batch[0].time < since:
            break  # events are in time order, within clock skew: older chunks are older
        hi = lo
    return (found[-lines:] if lines else found), top


def follow_events(
    store: Store,
    *,
    after: int,
    job_ids: Sequence[str],
    match: Callable[[EventRecord], bool],
    emit: Callable[[EventRecord], None],
) -> NoReturn:
    """Emit every new matching event as it comes, until interrupted (Ctrl-C)."""
    waker = open_waker(store)
    outage = Outage()
    seq = after
    try:
        while True:
            try:
                batch = events_of(store, after=seq, job_ids=job_ids, limit=CHUNK)
            except StoreUnavailable as exc:
                pause(waker, outage.failed(exc))
                continue
            outage.ok()
            for event in batch:
                seq = event.seq
                if match(event):
                    emit(event)
            if len(batch) < CHUNK:
                pause(waker, FALLBACK_POLL)
    finally:
        if waker is not None:
            waker.close()
