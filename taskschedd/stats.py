"""Job counts (``taskschedctl stats``, the metrics, the master's status line), folded once
above the stores from the raw rows each store reads (:meth:`Store.stat_rows`), so every
store counts the same thing for every figure:

``by_status``, ``by_queue``, ``by_class``
    Every stored job by its status now, in all, per queue and per class.
``oldest_waiting_age``
    Per queue, ``now`` minus the earliest ``at`` of the runnable jobs (WAITING,
    POSTPONED) due by ``now``: how long the oldest due job has waited to be claimed.
``finished_in_window``
    By final status, the jobs whose record is final now and whose ``ended`` time is at or
    after ``now - window``. Counted from the jobs, not from the events: a job counts
    once, by the outcome it has now (a job retried after it ended counts again only when
    it ends again, and not while it waits or runs), which is what the other figures
    count too; each store answers it from an index on (final, ended) in time
    proportional to the jobs that ended in the window, where final events have no
    such index on SQLite. Purged jobs no longer count.

Values that another client stored with the wrong type are shown, never raised on: a
status that is not a job status counts as :data:`UNKNOWN_STATUS`, a queue or class that
is not text under its type's name (``<int>``); they are labelled here only.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from taskschedd.model import FINAL, JobStatus
from taskschedd.store.decode import encodable

#: The status name under which stats count records whose status is not a job status.
UNKNOWN_STATUS = "UNKNOWN"

_STATUSES = {int(s): s for s in JobStatus}
_FINAL_NAMES = frozenset(s.name for s in FINAL)


@dataclass(frozen=True)
class StatRows:
    """What a store reads for :func:`fold`, values as stored (unchecked)."""

    #: (status, queue, class, count) of every job, grouped by the first three.
    groups: Sequence[tuple[Any, Any, Any, int]] = field(default_factory=list)
    #: (queue, earliest at) of the runnable jobs due by ``now``, grouped by queue.
    oldest_due: Sequence[tuple[Any, Any]] = field(default_factory=list)
    #: (status, count) of the final jobs with ``ended >= since``, grouped by status.
    ended: Sequence[tuple[Any, int]] = field(default_factory=list)


def label(value: Any) -> str:
    """A queue or class name as stats show it: text that another client stored as
    something else is shown by its type, not passed on (JSON keys must be text)."""
    if type(value) is str and encodable(value):
        return value
    return f"<{type(value).__name__}>"


def status_name(value: Any) -> str:
    """The name of a stored status, :data:`UNKNOWN_STATUS` for anything else."""
    if type(value) is float and value.is_integer():
        value = int(value)
    status = _STATUSES.get(value) if type(value) is int else None
    return status.name if status is not None else UNKNOWN_STATUS


def fold(rows: StatRows, *, now: float, window: float) -> dict[str, Any]:
    """The stats of ``rows`` (read for ``now`` and ``since = now - window``)."""
    by_status: dict[str, int] = {}
    by_queue: dict[str, dict[str, int]] = {}
    by_class: dict[str, dict[str, int]] = {}
    for status, queue, cls, n in rows.groups:
        name = status_name(status)
        by_status[name] = by_status.get(name, 0) + n
        q = by_queue.setdefault(label(queue), {})
        q[name] = q.get(name, 0) + n
        k = by_class.setdefault(label(cls), {})
        k[name] = k.get(name, 0) + n
    earliest: dict[str, float] = {}
    for queue, at in rows.oldest_due:
        # A time that is not a number was not written by a scheduler: no age to show.
        if type(at) not in (int, float) or not math.isfinite(at):
            continue
        name = label(queue)
        earliest[name] = min(at, earliest.get(name, at))
    finished: dict[str, int] = {}
    for status, n in rows.ended:
        name = status_name(status)
        if name in _FINAL_NAMES and n:
            finished[name] = finished.get(name, 0) + n
    return {
        "by_status": by_status,
        "by_queue": by_queue,
        "by_class": by_class,
        "oldest_waiting_age": {queue: now - at for queue, at in earliest.items()},
        "finished_in_window": finished,
        "window": window,
    }
