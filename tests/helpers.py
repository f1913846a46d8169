"""Small test helpers shared by every test level: wait on conditions, never bare sleeps."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

from taskschedd import transitions
from taskschedd.model import ErrorInfo, JobStatus, NewJob
from taskschedd.transitions import Transition

T = TypeVar("T")


def wait_for(
    predicate: Callable[[], T],
    timeout: float = 5.0,
    *,
    interval: float = 0.01,
    message: str | Callable[[], str] = "condition",
) -> T:
    """Poll ``predicate`` until it returns something truthy; return that value.

    Raises AssertionError naming ``message`` (a string or a callable giving the current
    state, for a useful failure) when ``timeout`` seconds pass first.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            text = message() if callable(message) else message
            raise AssertionError(f"timed out after {timeout:g}s waiting for {text}")
        time.sleep(interval)


def elapsed(fn: Callable[[], T]) -> tuple[T, float]:
    """``fn()``'s value and how many seconds it took (monotonic)."""
    start = time.monotonic()
    value = fn()
    return value, time.monotonic() - start


def settlement(
    status: JobStatus,
    *,
    at: float | None = None,
    result_json: str | None = None,
    error: ErrorInfo | None = None,
    reason: str | None = None,
    progress: float | None = None,
    next_job: NewJob | None = None,
) -> Transition:
    """A settle transition of a held job (the stores' tests settle jobs directly)."""
    change = transitions.settle_change(
        status, at=at, result_json=result_json, error=error, reason=reason, progress=progress
    )
    return transitions.settle("test", change, next_job)
