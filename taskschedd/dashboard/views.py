"""What each dashboard page shows, read from the store through the library (no web types
here): the filters a jobs list accepts, one page of it, a job with everything around it,
the recurring series, the nodes and what they run."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import urlencode

from taskschedd.errors import TaskSchedError
from taskschedd.model import (
    FINAL,
    RUNNABLE,
    EventRecord,
    JobQuery,
    JobRecord,
    JobStatus,
    NodeRecord,
)
from taskschedd.scheduler import Scheduler
from taskschedd.stats import label, status_name
from taskschedd.timeutil import TIME_HELP, parse_duration, parse_time

PAGE = 50
#: Events a job page shows (a job retried every minute for a year has half a million).
MAX_EVENTS = 500
#: Filter values longer than this are refused rather than sent to the store.
MAX_FILTER = 200
STATUS_ORDER = [s.name for s in JobStatus]


class FilterError(TaskSchedError):
    """A jobs-list filter the dashboard cannot apply; shown on the page (400)."""

    exit_code = 2


@dataclass(frozen=True)
class Filters:
    """The jobs list's filters, from the query string (every field optional)."""

    status: JobStatus | None = None
    queue: str | None = None
    cls: str | None = None
    id_prefix: str | None = None
    since: float | None = None
    until: float | None = None
    #: Keyset cursor: jobs older (by insertion) than this seq.
    before: int | None = None

    @classmethod
    def parse(cls, params: Mapping[str, str], now: float | None = None) -> Filters:
        now = time.time() if now is None else now
        unknown = sorted(
            set(params) - {"status", "queue", "class", "id", "since", "until", "before"}
        )
        if unknown:
            raise FilterError(
                f"unknown filter {unknown[0]!r}; accepted: status, queue, class, id, since, until"
            )

        def text(key: str) -> str | None:
            value = params.get(key, "").strip()
            if len(value) > MAX_FILTER:
                raise FilterError(f"{key}: at most {MAX_FILTER} characters")
            return value or None

        status = None
        if (given := text("status")) is not None:
            try:
                status = JobStatus.parse(given)
            except ValueError:
                raise FilterError(
                    f"status: unknown status {given!r}; accepted: {', '.join(STATUS_ORDER).lower()}"
                ) from None
        before = None
        if (cursor := text("before")) is not None:
            if not cursor.isascii() or not cursor.isdigit() or len(cursor) > 20:
                raise FilterError(f"before: expected a page cursor (a number), got {cursor!r}")
            before = int(cursor)
        return cls(
            status=status,
            queue=text("queue"),
            cls=text("class"),
            id_prefix=text("id"),
            since=_when(text("since"), "since", now),
            until=_when(text("until"), "until", now),
            before=before,
        )

    def query(self, limit: int) -> JobQuery:
        return JobQuery(
            statuses=(self.status,) if self.status is not None else (),
            queues=(self.queue,) if self.queue else (),
            classes=(self.cls,) if self.cls else (),
            id_prefix=self.id_prefix,
            since=self.since,
            until=self.until,
            before_seq=self.before,
            newest_first=True,
            limit=limit,
        )

    def params(self) -> dict[str, str]:
        out: dict[str, str] = {}
        if self.status is not None:
            out["status"] = self.status.name.lower()
        for key, value in (("queue", self.queue), ("class", self.cls), ("id", self.id_prefix)):
            if value:
                out[key] = value
        for key, ts in (("since", self.since), ("until", self.until)):
            if ts is not None:
                out[key] = _iso(ts)
        if self.before is not None:
            out["before"] = str(self.before)
        return out

    def link(self, **changes: Any) -> str:
        """The query string of these filters with some changed (None removes)."""
        return urlencode(replace(self, **changes).params())

    @property
    def countable(self) -> bool:
        """Whether the counts table answers the total exactly (no prefix or time)."""
        return self.id_prefix is None and self.since is None and self.until is None


def _iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def _when(value: str | None, key: str, now: float) -> float | None:
    """An ISO 8601 / unix time, or a duration ago (1h, 30m)."""
    if value is None:
        return None
    try:
        return parse_time(value)
    except ValueError:
        pass
    try:
        return now - parse_duration(value)
    except ValueError:
        raise FilterError(
            f"{key}: expected {TIME_HELP}, or a duration ago like 30m or 2h, got {value!r}"
        ) from None


# -- counts ----------------------------------------------------------------------------


@dataclass
class Counts:
    """Jobs by status, and by queue and class (each by status), from the store's exact
    counts (cheap: the stores keep them, they do not count a million rows)."""

    total: int = 0
    by_status: dict[str, int] = field(default_factory=dict)
    by_queue: dict[str, dict[str, int]] = field(default_factory=dict)
    by_class: dict[str, dict[str, int]] = field(default_factory=dict)

    @classmethod
    def of(cls, rows: Sequence[tuple[Any, Any, Any, int]]) -> Counts:
        out = cls()
        for status, queue, klass, n in rows:
            if not isinstance(n, int) or n <= 0:
                continue
            name = status_name(status)
            out.total += n
            out.by_status[name] = out.by_status.get(name, 0) + n
            for table, key in ((out.by_queue, label(queue)), (out.by_class, label(klass))):
                row = table.setdefault(key, {})
                row[name] = row.get(name, 0) + n
        return out

    def matching(self, f: Filters) -> int | None:
        """The number of jobs the filters select, when the counts tell it exactly."""
        if not f.countable:
            return None
        table = self.by_class if f.cls else self.by_queue
        total = 0
        for key, row in table.items():
            if (f.cls and key != f.cls) or (not f.cls and f.queue and key != f.queue):
                continue
            if f.cls and f.queue:
                return None  # by class and by queue are separate tables
            total += row.get(f.status.name, 0) if f.status is not None else sum(row.values())
        return total

    def to_dict(self, top: int = 30) -> dict[str, Any]:
        def biggest(table: dict[str, dict[str, int]]) -> list[dict[str, Any]]:
            rows = sorted(table.items(), key=lambda kv: (-sum(kv[1].values()), kv[0]))[:top]
            return [{"name": k, "total": sum(v.values()), "by_status": v} for k, v in rows]

        return {
            "total": self.total,
            "by_status": {s: self.by_status.get(s, 0) for s in STATUS_ORDER}
            | {k: v for k, v in self.by_status.items() if k not in STATUS_ORDER},
            "queues": biggest(self.by_queue),
            "classes": biggest(self.by_class),
        }


def read_counts(sched: Scheduler) -> Counts:
    return Counts.of(sched.store.counts())


# -- nodes -----------------------------------------------------------------------------


def nodes(sched: Scheduler, now: float) -> list[dict[str, Any]]:
    """Every registered node, live or not, with the jobs its workers run now."""
    running = sched.store.find(JobQuery(statuses=(JobStatus.PROCESSING,), limit=1000))
    by_node: dict[str, list[dict[str, Any]]] = {}
    for job in running:
        by_node.setdefault(job.node or "?", []).append(
            {
                "id": job.id,
                "class": job.cls,
                "worker": job.worker or "?",
                "started": job.started,
                "progress": job.progress,
            }
        )
    out = []
    for node in sorted(sched.nodes(), key=lambda n: n.name):
        out.append(node_dict(node, now, by_node.pop(node.name, [])))
    return out


def node_dict(node: NodeRecord, now: float, jobs: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "name": node.name,
        "host": node.host,
        "pid": node.pid,
        "version": node.version,
        "live": node.live(now, 30.0),
        "started": node.started,
        "heartbeat": node.heartbeat,
        "busy": node.workers_busy,
        "idle": node.workers_idle,
        "queues": list(node.queues),
        "jobs": sorted(jobs, key=lambda j: j["worker"]),
    }


# -- jobs list -------------------------------------------------------------------------


@dataclass
class Page:
    jobs: list[JobRecord]
    #: The cursor of the next (older) page; None on the last page.
    next_before: int | None
    #: How many jobs the filters select, when known exactly and cheaply.
    total: int | None


def jobs_page(sched: Scheduler, f: Filters, counts: Counts | None) -> Page:
    found = sched.store.find(f.query(PAGE + 1))
    more = len(found) > PAGE
    jobs = found[:PAGE]
    total = counts.matching(f) if counts is not None else None
    return Page(jobs=jobs, next_before=jobs[-1].seq if more and jobs else None, total=total)


# -- one job ---------------------------------------------------------------------------


@dataclass
class JobView:
    job: JobRecord
    events: list[EventRecord]
    more_events: bool
    dependencies: list[tuple[str, str]]
    dependents: list[tuple[str, str]]
    held_back: str | None
    series: str | None
    series_active: bool | None
    occurrences: list[JobRecord]
    limit: dict[str, Any] | None
    can_cancel: bool
    can_retry: bool

    @property
    def data_json(self) -> str:
        return pretty(self.job.data)

    @property
    def result_json(self) -> str:
        return pretty(self.job.result)

    @property
    def options(self) -> list[tuple[str, str]]:
        stored = self.job.options.stored()
        return [(k, pretty(v)) for k, v in sorted(stored.items())]


def pretty(value: Any) -> str:
    try:
        return json.dumps(value, indent=2, ensure_ascii=False, sort_keys=True, default=repr)
    except (TypeError, ValueError):
        return repr(value)


def job_view(sched: Scheduler, job_id: str) -> JobView:
    """JobNotFound for an unknown id."""
    from taskschedd.jobinfo import dependency_links, held_back, series_states
    from taskschedd.rules import series_of

    job = sched.get_job(job_id).record
    events = sched.events(job_ids=[job.id], after=0, limit=MAX_EVENTS + 1)
    deps, dependents = ([], []) if job.corrupt else dependency_links(sched, job)
    series = None if job.corrupt else series_of(job)
    occurrences: list[JobRecord] = []
    active = None
    if series is not None:
        occurrences = sched.store.find(JobQuery(series=series, newest_first=True, limit=20))
        active = series_states(sched, [job]).get(series)
    limit = None
    if job.options.limit and not job.corrupt:
        for state in sched.limits():
            if state.spec.name == job.options.limit:
                limit = {
                    "name": state.spec.name,
                    "max_running": state.spec.max_running,
                    "rate": str(state.spec.rate) if state.spec.rate else None,
                    "running": state.running,
                    "waiting": state.waiting,
                }
        if limit is None:
            limit = {"name": job.options.limit, "undefined": True}
    return JobView(
        job=job,
        events=events[:MAX_EVENTS],
        more_events=len(events) > MAX_EVENTS,
        dependencies=deps,
        dependents=dependents,
        held_back=None if job.corrupt else held_back(sched, job),
        series=series,
        series_active=active,
        occurrences=occurrences,
        limit=limit,
        can_cancel=not job.is_final,
        can_retry=job.status in (JobStatus.FAILED, JobStatus.TIMEOUT, JobStatus.CANCELED),
    )


# -- recurring series ------------------------------------------------------------------


def series_list(sched: Scheduler, limit: int = 500) -> list[JobRecord]:
    """The pending occurrence of every recurring series, the next to run first."""
    found = sched.store.find(JobQuery(statuses=RUNNABLE, recurring=True, limit=limit))
    return sorted(found, key=lambda j: (j.at, j.id))


FINAL_NAMES = [s.name for s in FINAL]
