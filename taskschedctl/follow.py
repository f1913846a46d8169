"""Waiting for jobs and following events, through brief store outages.

A cron line that waits for its job must not fail because the store restarted: reads that
raise StoreUnavailable are retried with backoff (the user is told once per outage), while
the wait's own deadline still holds.
"""

from __future__ import annotations

import sys
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, NoReturn

from taskschedctl.output import ProgressLine
from taskschedd.errors import JobNotFound, StoreError, StoreUnavailable, WaitTimeout
from taskschedd.model import EventRecord, JobQuery, JobRecord
from taskschedd.store.base import Store, Waker

if TYPE_CHECKING:
    from typing import TextIO

#: Seconds between two looks at the store when no wake-up arrives (a safety net).
POLL = 0.5
#: Events read per query when scanning history.
CHUNK = 1000


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


def open_waker(store: Store) -> Waker | None:
    """The store's wake-up source, or None (then we poll) if it cannot be had right now."""
    try:
        return store.waker()
    except (OSError, StoreError):
        return None


def pause(waker: Waker | None, seconds: float) -> None:
    seconds = max(0.0, seconds)
    if waker is not None:
        waker.wait(seconds)
    else:
        time.sleep(seconds)


def wait_jobs(
    store: Store, ids: Sequence[str], timeout: float | None, *, progress: bool = True
) -> list[JobRecord]:
    """Block until every job is final; JobNotFound for an unknown id, WaitTimeout after
    ``timeout`` seconds. A progress line is drawn on stderr when it is a terminal."""
    wanted = list(dict.fromkeys(ids))
    deadline = None if timeout is None else time.monotonic() + timeout
    latest: dict[str, JobRecord] = {}
    bar = ProgressLine(len(wanted) if progress else 0)
    outage = Outage()
    outage.quiet = bar.enabled and progress
    waker = open_waker(store)
    try:
        while True:
            pending = [i for i in wanted if i not in latest or not latest[i].is_final]
            delay = POLL
            try:
                found = {r.id: r for r in store.find(JobQuery(ids=tuple(pending)))}
            except StoreUnavailable as exc:
                delay = outage.failed(exc)
                if progress:
                    bar.update(list(latest.values()), note="store unavailable, retrying")
            else:
                outage.ok()
                for job_id in pending:
                    if job_id not in found:
                        raise JobNotFound(job_id)
                    latest[job_id] = found[job_id]
                if progress:
                    bar.update([latest[i] for i in wanted])
                if all(latest[i].is_final for i in wanted):
                    return [latest[i] for i in wanted]
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                missing = [i for i in wanted if i not in latest or not latest[i].is_final]
                raise WaitTimeout(
                    f"{len(missing)} of {len(wanted)} job(s) not final after {timeout:g}s: "
                    + ", ".join(missing[:5])
                    + (" ..." if len(missing) > 5 else "")
                )
            pause(waker, delay if left is None else min(delay, left))
    finally:
        bar.close()
        if waker is not None:
            waker.close()


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
            batch = store.events(after=after, job_ids=job_ids, since=since, limit=CHUNK)
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
                batch = store.events(after=seq, job_ids=job_ids, limit=CHUNK)
            except StoreUnavailable as exc:
                pause(waker, outage.failed(exc))
                continue
            outage.ok()
            for event in batch:
                seq = event.seq
                if match(event):
                    emit(event)
            if len(batch) < CHUNK:
                pause(waker, POLL)
    finally:
        if waker is not None:
            waker.close()
