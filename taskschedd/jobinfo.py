"""What a job's page shows beside its record: why it waits, its dependencies and
dependents, its series. Shared by ``taskschedctl show``/``cancel`` and the dashboard, so
both say the same thing."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from taskschedd.model import JobRecord
    from taskschedd.scheduler import Scheduler


def held_back(sched: Scheduler, job: JobRecord) -> str | None:
    """Why a waiting job that is due does not run (its limit is full, its rate used up,
    its exclusive key held), or None."""
    from taskschedd.model import RUNNABLE

    if job.corrupt is not None or job.status not in RUNNABLE or job.at > time.time():
        return None
    return sched.held_back(job)


def dependency_links(
    sched: Scheduler, job: JobRecord
) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(id, status name) of the job's dependencies (PURGED: no record any more) and of
    its dependents."""
    from taskschedd.model import JobQuery

    ids = job.options.depends_on
    found = {r.id: r.status.name for r in sched.store.find(JobQuery(ids=ids))} if ids else {}
    deps = [(i, found.get(i, "PURGED")) for i in ids]
    return deps, [(r.id, r.status.name) for r in sched.store.dependents(job.id)]


def blocked_below(sched: Scheduler, job_id: str) -> set[str]:
    """Every BLOCKED job that waits on ``job_id``, directly or through others."""
    from taskschedd.model import JobStatus

    found: set[str] = set()
    todo = [job_id]
    while todo:
        for dep in sched.store.dependents(todo.pop()):
            if dep.status is JobStatus.BLOCKED and dep.id not in found:
                found.add(dep.id)
                todo.append(dep.id)
    return found


def series_after_cancel(sched: Scheduler, job: JobRecord) -> str:
    """What became of the job's series (if it has one), for cancel's line."""
    from taskschedd.model import ACTIVE, JobQuery, JobStatus
    from taskschedd.rules import series_of

    series = series_of(job)
    if series is None:
        return ""
    left = sched.store.find(JobQuery(series=series, statuses=ACTIVE, limit=None))
    if not left:
        return f"; series {series} ended"
    if all(j.status == JobStatus.PROCESSING and j.cancel_requested for j in left):
        return f"; series {series} ends when its running occurrence is stopped"
    return f"; series {series} still active ({len(left)} occurrence(s) waiting or running)"


def series_states(sched: Scheduler, jobs: Sequence[JobRecord]) -> dict[str, bool]:
    """Whether each series of these jobs is still active (an occurrence waiting or
    running): known without a query for a series with a listed job that is."""
    from taskschedd.rules import series_of

    states: dict[str, bool] = {}
    for job in jobs:
        series = series_of(job)
        if series is not None and not job.is_final:
            states[series] = True
    for job in jobs:
        series = series_of(job)
        if series is not None and series not in states:
            states[series] = sched.series_active(series)
    return states


def failed_dependency_of(sched: Scheduler, job: JobRecord) -> tuple[str, str] | None:
    """For a job retry_job left final with dependencies that cancel it (it was decided
    again at once), the first dependency that still ended other than DONE (or is gone,
    status MISSING), as (id, status name); None otherwise."""
    from taskschedd.dependencies import failed_dependency
    from taskschedd.model import JobQuery

    ids = job.options.depends_on
    if not job.is_final or not ids or job.options.on_dependency_failure == "run":
        return None
    found = {r.id: r.status for r in sched.store.find(JobQuery(ids=ids))}
    return failed_dependency([(i, found.get(i)) for i in ids])


def canceled_by(sched: Scheduler, job_id: str) -> set[str]:
    """The jobs a failure of ``job_id`` canceled and that are still CANCELED: its
    dependents canceled because of it, and the jobs canceled in turn below them."""
    from taskschedd.model import JobStatus

    found: set[str] = set()
    todo = [job_id]
    while todo:
        dependency = todo.pop()
        for dep in sched.store.dependents(dependency):
            # The reason dependencies.decide gives a job it cancels.
            cascaded = (dep.reason or "").startswith(f"dependency {dependency} ended ")
            if dep.status is JobStatus.CANCELED and cascaded and dep.id not in found:
                found.add(dep.id)
                todo.append(dep.id)
    return found
