"""Job dependencies (``depends_on``): what a BLOCKED job becomes, decided once, here.

A job added with ``depends_on`` starts BLOCKED. Every store re-decides a BLOCKED job
with :func:`decide` whenever one of its dependencies becomes final (and once when it is
added, for dependencies that are final already), and applies the transition it returns
in the same write as the change that made the dependency final. Every branch is guarded
on BLOCKED, so a job is released or canceled once however many writers decide it at
the same moment. A job that ends CANCELED here is final in turn: its own dependents are
decided next, which is how a failure or a cancel cascades down the graph.

Pure functions of what the store read; no store access.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

from taskschedd.errors import OptionError
from taskschedd.model import JobStatus
from taskschedd.options import stored_options
from taskschedd.transitions import Branch, Change, Ended, Guard, Transition

#: What a decision takes a job from: only a BLOCKED job is released or canceled, once.
BLOCKED_GUARD = Guard(frozenset({JobStatus.BLOCKED}))
#: Where a store has no record of a dependency (flushed or deleted by hand): it cannot
#: end DONE any more, so it counts as failed (a workflow is never left stuck on it).
MISSING = "MISSING"


def blocked_fields(options: Any, at: Any) -> tuple[tuple[str, ...], str, float] | str:
    """(depends_on, on_dependency_failure, at) of a BLOCKED job's stored fields, checked at
    the same boundary as every stored option (``options``: the stored JSON text or
    mapping); or why they cannot be decided on (another client wrote them): such a job
    is quarantined, never decided on a guess (a string iterated as ids, say). No
    dependencies at all is decidable: nothing to wait for (a workflow's first jobs, held
    while it is added on MongoDB, are such jobs)."""
    try:
        if isinstance(options, str | bytes):
            options = json.loads(options)
        if not isinstance(options, Mapping):
            return f"its options are {type(options).__name__}, not an object"
        opts = stored_options(options)
    except (ValueError, TypeError, RecursionError, OptionError) as exc:
        return f"its options do not decode: {exc}"
    if type(at) not in (int, float) or not math.isfinite(at) or abs(at) > 1e11:
        return f"its at is {at!r}, not a time"
    return opts.depends_on, opts.on_dependency_failure, float(at)


def failed_dependency(
    statuses: Sequence[tuple[str, JobStatus | None]],
) -> tuple[str, str] | None:
    """The first dependency (in ``depends_on`` order) that ended other than DONE, or is
    missing, as (id, status name); None when there is none."""
    for dep_id, status in statuses:
        if status is None:
            return dep_id, MISSING
        if status.is_final and status is not JobStatus.DONE:
            return dep_id, status.name
    return None


def decide(
    statuses: Sequence[tuple[str, JobStatus | None]],
    *,
    on_failure: str,
    at: float,
    now: float,
) -> Transition | None:
    """What a BLOCKED job becomes, given each dependency's status (None: no record).

    - a dependency ended FAILED, CANCELED or TIMEOUT (or is missing) and ``on_failure``
      is "cancel": CANCELED, the reason naming that dependency and its status;
    - every dependency final (all DONE, or ``on_failure`` is "run"): runnable, WAITING
      or POSTPONED when its ``at`` is still ahead;
    - otherwise None: it keeps waiting (a retried dependency is not final: it delays).
    """
    failed = failed_dependency(statuses)
    if failed is not None and on_failure != "run":
        dep_id, status = failed
        return _cancel(f"dependency {dep_id} ended {status}")
    if all(s is None or s.is_final for _, s in statuses):
        runnable = JobStatus.POSTPONED if at > now else JobStatus.WAITING
        reason = "dependencies done" if failed is None else "dependencies final"
        change = Change(status=runnable, reason=reason)
        return Transition("release", (Branch("released", BLOCKED_GUARD, change),))
    return None


def _cancel(reason: str) -> Transition:
    change = Change(status=JobStatus.CANCELED, reason=reason, ended=Ended.NOW, release_once=True)
    return Transition("dependency failed", (Branch("canceled", BLOCKED_GUARD, change),))
