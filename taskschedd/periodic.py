"""Periodic duties of the master, and the backoff they use while the store is down.

Every duty (lease renewal, cancel polls, reaping, heartbeat, purge, pool planning) keeps
an :class:`Every`: the monotonic time it is next due, pushed back with bounded, jittered
backoff while the store is unavailable so that an outage never makes the master spin.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

STORE_BACKOFF_MAX = 10.0


def store_backoff(failures: int) -> float:
    """Bounded exponential backoff with equal jitter, for store outages."""
    delay = float(min(STORE_BACKOFF_MAX, 0.2 * 2 ** max(0, failures - 1)))
    return delay / 2 + random.random() * delay / 2


@dataclass
class Every:
    """A periodic duty with backoff while the store is unavailable."""

    next: float = 0.0
    failures: int = 0
    error: Exception | None = None  # the last failure's (meaningful while failures > 0)

    def done(self, now: float, interval: float) -> None:
        self.failures = 0
        self.error = None
        self.next = now + interval

    def failed(self, now: float) -> float:
        self.failures += 1
        delay = store_backoff(self.failures)
        self.next = now + delay
        return delay


def store_trouble(logger: Any, what: str, timer: Every, now: float, exc: Exception) -> None:
    """Back the duty off and say so (at the 1st, 2nd, 4th, 8th... failure in a row: a duty
    that retries often, like lease renewal, does not flood the log)."""
    delay = timer.failed(now)
    timer.error = exc
    say = logger.warning if timer.failures & (timer.failures - 1) == 0 else logger.debug
    say("store unavailable", doing=what, error=str(exc), retry_in=round(delay, 2))


__all__ = ["STORE_BACKOFF_MAX", "Every", "store_backoff", "store_trouble"]
