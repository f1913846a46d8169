"""The library face for applications: :class:`Scheduler` and the :class:`Process` handle."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from taskschedd import holdback, rules, transitions
from taskschedd.errors import (
    JobFailed,
    JobNotFound,
    OptionError,
    StoreError,
    StoreMissing,
    StoreUnavailable,
    TaskSchedError,
    WaitTimeout,
)
from taskschedd.limits import LimitSpec, LimitState, Rate, check_name, implied
from taskschedd.loader import check_allowed, normalize, path_of
from taskschedd.model import (
    ACTIVE,
    RUNNABLE,
    ErrorInfo,
    EventRecord,
    JobQuery,
    JobRecord,
    JobStatus,
    NewJob,
    NodeRecord,
)
from taskschedd.options import (
    DEFAULT_MAX_DATA_SIZE,
    MAX_DATA_SIZE_RANGE,
    Defaults,
    JobOptions,
    dump_data,
    resolve,
)
from taskschedd.store import open_store
from taskschedd.store.base import DuplicateJobId, Store, UnknownDependency, Waker
from taskschedd.storeurl import DEFAULT_PATH, DEFAULT_URL

if TYPE_CHECKING:
    from taskschedd.config import Config

#: How often wait()/listen() look at the store when no wake-up arrives (a safety net).
FALLBACK_POLL = 0.5
#: How long the names of the defined limits are trusted when jobs are added (they decide
#: which queue:/class: limit a job joins): a batch, or a stream of adds, costs one read
#: per this many seconds; a limit defined elsewhere is joined at most this much later.
LIMIT_NAMES_TTL = 5.0

StatusArg = JobStatus | int | str | Iterable[JobStatus | int | str] | None


class _NoData:
    """The default of ``data``: a job added without data gets ``{}`` (as ``taskschedctl
    add CLASS`` does), so that add_job_once matches it with a job given ``{}``; an
    explicit ``None`` stores null."""

    def __repr__(self) -> str:
        return "{}"


NO_DATA: Any = _NoData()


def _data(data: Any) -> Any:
    return {} if data is NO_DATA else data


def new_id() -> str:
    """A UUIDv7 as 32 hex digits: Unix milliseconds, then 74 random bits.

    Time-ordered ids go in at the end of the store's id index (a page already in cache,
    and in the same WAL frame as the previous insert's) instead of at a random leaf."""
    rand = int.from_bytes(os.urandom(10), "big")
    value = (
        (time.time_ns() // 1_000_000) << 80
        | (0x7000 | rand >> 68) << 64  # version 7, 12 random bits
        | 0x8000000000000000  # the RFC 9562 variant, 62 random bits
        | rand & 0x3FFFFFFFFFFFFFFF
    )
    return "%032x" % value


def parse_statuses(status: StatusArg, default: Sequence[JobStatus]) -> tuple[JobStatus, ...]:
    """Statuses from a status, a name, a number, a list of them, or 'all'."""
    if status is None:
        return tuple(default)
    if isinstance(status, str) and status.lower() == "all":
        return ()
    if isinstance(status, JobStatus | int | str):
        status = [status]
    try:
        return tuple(JobStatus.parse(s) if not isinstance(s, JobStatus) else s for s in status)
    except ValueError as exc:
        raise OptionError(str(exc)) from None


@dataclass(frozen=True)
class JobSpec:
    """One job for :meth:`Scheduler.add_jobs`."""

    cls: str | type
    data: Any = NO_DATA  # {}; an explicit None stores null
    options: Mapping[str, Any] | None = None


class Process:
    """A handle on one job: its state as last read, and ways to follow it."""

    def __init__(self, scheduler: Scheduler, record: JobRecord) -> None:
        self._scheduler = scheduler
        self.record = record

    id = property(lambda self: self.record.id)
    cls = property(lambda self: self.record.cls)
    data = property(lambda self: self.record.data)
    queue = property(lambda self: self.record.queue)
    attempt = property(lambda self: self.record.attempt)
    progress = property(lambda self: self.record.progress)
    result = property(lambda self: self.record.result)
    reason = property(lambda self: self.record.reason)
    options = property(lambda self: self.record.options)

    @property
    def status(self) -> JobStatus:
        return self.record.status

    @property
    def errors(self) -> list[ErrorInfo]:
        return list(self.record.errors)

    @property
    def is_final(self) -> bool:
        return self.record.status.is_final

    def refresh(self) -> Process:
        self.record = self._scheduler.store.get(self.record.id)
        return self

    def wait(self, timeout: float | None = None, *, raise_errors: bool = False) -> Process:
        """Block until the job is final (retries included); WaitTimeout after ``timeout``."""
        (done,) = self._scheduler.wait([self.id], timeout=timeout)
        self.record = done.record
        if raise_errors and self.status != JobStatus.DONE:
            last = self.record.errors[-1].message if self.record.errors else self.reason or ""
            raise JobFailed(self.id, self.status.name, last)
        return self

    def cancel(self) -> Process:
        self.record = self._scheduler.cancel_job(self.id).record
        return self

    def to_dict(self) -> dict[str, Any]:
        return self.record.to_dict()

    def __repr__(self) -> str:
        return f"<Process {self.id} {self.cls} {self.status.name} attempt={self.attempt}>"


class Scheduler:
    """Adds, finds, cancels and follows jobs in a store.

    ``store`` is a URL (``sqlite:///path``, ``mongodb://host/db``) or a Store; without
    one, the store of ``config`` (a path or Config), ``$TASKSCHED_STORE``, the file
    named by ``$TASKSCHED_CONFIG``, /etc/taskschedd/taskschedd.yaml, or the default
    SQLite path is used (StoreMissing at once when none of them names a store that
    exists). Keyword
    arguments are the scheduler-wide ``default_*`` job options. ``max_data_size``: the
    largest job data accepted, in bytes of JSON (default: the configuration's
    ``max_data_size``, else 1 MiB); larger data raises DataTooLarge before any write.
    ``create``: make a SQLite store that does not exist yet; without it, a missing file
    is StoreMissing at first use (a mistyped path must not queue jobs into a new file).

    A Scheduler with a configuration (``config``, or the file $TASKSCHED_CONFIG names)
    adds only job classes from its ``allowed_modules``, as its nodes would run them:
    JobClassError before anything is written.
    """

    def __init__(
        self,
        store: str | Store | None = None,
        *,
        config: str | os.PathLike[str] | Config | None = None,
        max_data_size: int | None = None,
        create: bool = False,
        **defaults: Any,
    ) -> None:
        self._create = create
        #: The file the configuration came from, for messages (None: given as a Config).
        self.config_source: str | None = None
        self.config = self._load_config(config) if config is not None else None
        self.max_data_size = _data_size(max_data_size, self.config)
        if isinstance(store, Store):
            self.store = store
        else:
            self.store = self._open(store)
        base: dict[str, Any] = {}
        if self.config is not None:
            base.update(self.config.job_defaults)
        self.defaults = Defaults.parse(base).updated(defaults)
        # The options of a job added without any, for the current defaults: resolved once.
        self._plain: tuple[Defaults, JobOptions] | None = None
        self._paths: dict[str, str] = {}  # class path as given -> normalized
        # The names of the defined limits and when they were read (time.monotonic()).
        self._limit_names: tuple[float, frozenset[str]] | None = None
        # (id of options, class path) -> (those options, them joined to an implied
        # limit): jobs sharing options share the joined ones (and their stored JSON).
        self._joined: dict[tuple[int, str], tuple[JobOptions, JobOptions]] = {}

    def _load_config(self, config: str | os.PathLike[str] | Config) -> Config:
        from taskschedd.config import Config, load

        if isinstance(config, Config):
            return config
        self.config_source = os.fspath(config)
        return load(config)

    def _open(self, url: str | None) -> Store:
        from taskschedd.config import DEFAULT_CONFIG_PATH, open_configured

        create = self._create
        if url is None and self.config is not None:
            return open_configured(self.config, create=create)
        if url is None:
            url = env_store_url()
        if url is None and os.environ.get("TASKSCHED_CONFIG"):
            self.config = self._load_config(os.environ["TASKSCHED_CONFIG"])
            return open_configured(self.config, create=create)
        if url is None and os.path.isfile(DEFAULT_CONFIG_PATH):  # as taskschedctl reads it
            self.config = self._load_config(DEFAULT_CONFIG_PATH)
            return open_configured(self.config, create=create)
        if url is None and not create and not os.path.exists(DEFAULT_PATH):
            # Nothing named a store: say what would have, not only "no store at PATH".
            raise StoreMissing(
                f"no store given: no store argument, $TASKSCHED_STORE, $TASKSCHED_CONFIG or "
                f"{DEFAULT_CONFIG_PATH}, and no store at the default "
                f"{DEFAULT_PATH}; name the node's configuration "
                "(Scheduler(config=PATH) or $TASKSCHED_CONFIG) or its store "
                "(Scheduler('sqlite:///PATH') or 'mongodb://HOST/DB')"
            )
        return open_store(url or DEFAULT_URL, create=create)

    # -- options ------------------------------------------------------------------
    def set_options(self, **defaults: Any) -> None:
        """Change the ``default_*`` options; jobs already added keep theirs."""
        self.defaults = self.defaults.updated(defaults)

    def _path(self, cls: str | type) -> str:
        """The class path a worker will import; JobClassError when it is malformed or
        outside the configuration's ``allowed_modules`` (cached once checked)."""
        if not isinstance(cls, str):
            return self._allowed(path_of(cls))
        path = self._paths.get(cls)
        if path is None:
            path = self._allowed(normalize(cls))
            if len(self._paths) >= 1024:
                self._paths.clear()
            self._paths[cls] = path
        return path

    def _allowed(self, path: str) -> str:
        if self.config is not None:
            check_allowed(path, self.config.allowed_modules, self.config_source)
        return path

    def _resolve(self, options: Mapping[str, Any]) -> tuple[JobOptions, set[str]]:
        if options:
            return resolve(options, self.defaults)
        # JobOptions is frozen: jobs without options share one (and its stored JSON).
        plain = self._plain
        if plain is None or plain[0] is not self.defaults:
            plain = self._plain = (self.defaults, resolve({}, self.defaults)[0])
        return plain[1], set()

    def _prepare(
        self,
        cls: str | type,
        data: Any,
        options: Mapping[str, Any],
        now: float,
        resolved: tuple[JobOptions, set[str]] | None = None,
    ) -> tuple[NewJob, JobOptions, set[str]]:
        path = self._path(cls)
        data_json = dump_data(data, self.max_data_size)
        opts, explicit = resolved or self._resolve(options)
        if opts.limit is None:
            opts = self._join_implied(opts, path)
        if opts.depends_on and not self.store.supports_dependencies:
            raise OptionError(
                f"option 'depends_on': the store {type(self.store).__name__} does not "
                "support job dependencies yet"
            )
        at = rules.first_run_at(opts, now)
        job = NewJob(
            id=opts.id or new_id(),
            cls=path,
            data_json=data_json,
            options=opts,
            at=at,
            created=now,
            # BLOCKED until its dependencies are final: the store decides it at insert.
            status=JobStatus.BLOCKED if opts.depends_on else rules.initial_status(at, now),
        )
        return job, opts, explicit

    # -- limits -------------------------------------------------------------------
    def _join_implied(self, opts: JobOptions, path: str) -> JobOptions:
        """``opts`` joined to the limit its queue or class implies, when one is defined
        (``queue:<queue>`` first, then ``class:<path>``); else ``opts`` itself."""
        names = self._defined_limits()  # first: a new read empties the memo
        memo = self._joined.get((id(opts), path))
        if memo is not None and memo[0] is opts:
            return memo[1]
        joined = opts
        for name in implied(opts.queue, path):
            if name in names:
                joined = replace(opts, limit=name)
                break
        if len(self._joined) >= 256:
            self._joined.clear()
        self._joined[(id(opts), path)] = (opts, joined)
        return joined

    def _defined_limits(self) -> frozenset[str]:
        """The names of the defined limits, read at most every LIMIT_NAMES_TTL seconds."""
        now = time.monotonic()
        cached = self._limit_names
        if cached is not None and now - cached[0] < LIMIT_NAMES_TTL:
            return cached[1]
        names = frozenset(spec.name for spec in self.store.limit_specs())
        if cached is None or names != cached[1]:
            self._joined.clear()  # decided against other definitions
        self._limit_names = (now, names)
        return names

    def _forget_limits(self) -> None:
        self._limit_names = None
        self._joined.clear()

    def set_limit(
        self, name: str, *, max_running: int | None = None, rate: str | Rate | None = None
    ) -> LimitSpec:
        """Create or replace the cluster-wide limit ``name`` and return its definition.

        ``max_running``: at most this many of its jobs run at once (0: none runs);
        ``rate``: at most COUNT starts in any window of PERIOD, like ``"100/1m"`` or a
        :class:`~taskschedd.limits.Rate`. Give one or both: the whole definition is
        replaced (a value left out is no longer capped). OptionError names what is wrong.

        Jobs join a limit with the option ``limit=name``; a limit named
        ``queue:<queue>`` or ``class:<dotted.path>`` is also joined by the jobs added
        afterwards to that queue or of that class without a ``limit`` of their own (by
        this Scheduler at once; by others within LIMIT_NAMES_TTL seconds). Jobs already
        added keep the limit they joined, as do the later occurrences of a recurring job.
        Jobs already running keep running: a lower max_running holds new starts until
        enough of them end.
        """
        spec = LimitSpec(
            check_name(name),
            max_running=max_running,
            rate=None if rate is None else Rate.parse(rate),
        )
        self.store.set_limit(spec)
        self._forget_limits()
        return spec

    def delete_limit(self, name: str) -> bool:
        """Remove the limit ``name`` (its jobs then run without it); False if none exists.
        Jobs that joined it keep its name: they are limited again if it is set again."""
        deleted = self.store.delete_limit(check_name(name))
        self._forget_limits()
        return deleted

    def limits(self) -> list[LimitState]:
        """Every defined limit, sorted by name, with its running and waiting jobs now
        (``LimitState.running``, ``.waiting``; ``.next_start(now)`` for its rate)."""
        return self.store.limits(now=time.time())

    def held_back(self, record: JobRecord | Process) -> str | None:
        """Why a waiting job that is due does not run: "limit 'reports' is full: 2 of 2
        running", "limit 'mail' rate 100/1m: next start at <time>", "exclusive key
        'customer:42' is held by job <id>" (several joined by "; "). None when nothing
        holds it back: it is not waiting, not due yet, or only waits for a free worker."""
        if isinstance(record, Process):
            record = record.record
        opts = record.options
        now = time.time()
        if (
            record.corrupt is not None
            or record.status not in RUNNABLE
            or record.at > now
            or (opts.limit is None and opts.exclusive_key is None)
        ):
            return None  # no store read for what cannot be held back
        states = self.store.limits(now=now) if opts.limit is not None else []
        holders = (
            self.store.key_holders([opts.exclusive_key], now=now)
            if opts.exclusive_key is not None
            else {}
        )
        return holdback.explain(record, states, holders, now)

    def _local_record(self, job: NewJob, data: Any) -> JobRecord:
        return JobRecord(
            id=job.id,
            cls=job.cls,
            data=data,
            status=job.status,
            queue=job.options.queue,
            priority=job.options.priority,
            at=job.at,
            created=job.created,
            options=job.options,
            once_key=job.once_key,
        )

    # -- adding -------------------------------------------------------------------
    def add_job(self, cls: str | type, data: Any = NO_DATA, **options: Any) -> Process:
        """Queue a job; returns its handle. OptionError/JobDataError before anything is written.

        ``data``: JSON-serialisable, dict keys strings at any depth; without it the job's
        data is ``{}`` (``None`` stores null). ``depends_on=[id, ...]``: the job stays
        BLOCKED until those jobs end; it runs once all ended DONE, and is canceled when
        one ends otherwise unless ``on_dependency_failure="run"`` (then it runs once all
        are final). Its ``start()`` reads their results as ``self.dependencies``.
        ``limit="name"`` joins a cluster-wide limit (see :meth:`set_limit`); without one,
        the job joins ``queue:<its queue>`` or else ``class:<its class>`` if defined.
        ``exclusive_key="customer:42"``: no two jobs with that key run at once."""
        data = _data(data)
        job, _, _ = self._prepare(cls, data, options, time.time())
        self._insert([job])
        if job.options.depends_on:  # decided at insert: dependencies may be final already
            return Process(self, self.store.get(job.id))
        return Process(self, self._local_record(job, data))

    def _insert(self, jobs: list[NewJob]) -> None:
        try:
            self.store.insert(jobs)
        except DuplicateJobId as exc:
            raise OptionError(f"option 'id': a job with id {exc.job_id!r} already exists") from None
        except UnknownDependency as exc:
            # Which job, by its place in a batch: its id was often generated here, for a
            # job that was never written.
            where, earlier = "", ""
            if len(jobs) > 1:
                index = next((i for i, j in enumerate(jobs) if j.id == exc.job_id), None)
                where = "" if index is None else f"job #{index}: "
                earlier = " or come earlier in the same call"
            raise OptionError(
                f"{where}option 'depends_on': {exc.what()}; a job can depend only on jobs "
                f"that exist{earlier}"
            ) from None

    def add_jobs(
        self, jobs: Iterable[JobSpec | tuple[Any, ...] | Mapping[str, Any]]
    ) -> list[Process]:
        """Queue many jobs at once, all or none: every job is validated before any is written."""
        now = time.time()
        prepared: list[tuple[NewJob, Any]] = []
        last: tuple[Any, tuple[JobOptions, set[str]]] | None = None
        for index, spec in enumerate(jobs):
            cls, data, options = self._spec(spec, index)
            data = _data(data)
            try:
                # Jobs given the same options share one resolution (and stored JSON).
                key = _options_key(options)
                if last is not None and key is not None and key == last[0]:
                    resolved = last[1]
                else:
                    resolved = self._resolve(options)
                    last = (key, resolved)
                job, _, _ = self._prepare(cls, data, options, now, resolved)
            except StoreError:
                raise  # the store's trouble (the limits read), not this job's
            except TaskSchedError as exc:
                raise type(exc)(f"job #{index}: {exc}") from None
            prepared.append((job, data))
        ids = [j.id for j, _ in prepared]
        if len(set(ids)) != len(ids):
            raise OptionError("option 'id': the same id is given to more than one job in the batch")
        _check_order([j for j, _ in prepared])
        self._insert([j for j, _ in prepared])
        if any(j.options.depends_on for j, _ in prepared):
            found = {r.id: r for r in self.store.find(JobQuery(ids=tuple(ids)))}
            return [Process(self, found.get(j.id) or self._local_record(j, d)) for j, d in prepared]
        return [Process(self, self._local_record(j, d)) for j, d in prepared]

    def chain(self, jobs: Iterable[JobSpec | tuple[Any, ...] | Mapping[str, Any]]) -> list[Process]:
        """Queue jobs that run one after the other: each depends on the one before (and
        reads its result in ``self.dependencies``); a failure cancels the rest unless a
        step has ``on_dependency_failure="run"``. All or none is written."""
        steps: list[JobSpec] = []
        previous: list[str] = []
        for index, spec in enumerate(jobs):
            step, step_id = self._with_id(spec, index)
            steps.append(_depending(step, previous))
            previous = [step_id]
        return self.add_jobs(steps)

    def group(
        self,
        jobs: Iterable[JobSpec | tuple[Any, ...] | Mapping[str, Any]],
        then: JobSpec | tuple[Any, ...] | Mapping[str, Any] | None = None,
    ) -> list[Process]:
        """Queue jobs that may run side by side and, with ``then``, a job that runs after
        all of them (a fan-in, reading their results in ``self.dependencies``); the
        handles of the group, then of ``then``. All or none is written."""
        members = [self._with_id(spec, index) for index, spec in enumerate(jobs)]
        specs = [m for m, _ in members]
        if then is None:
            return self.add_jobs(specs)
        fan_in, _ = self._with_id(then, len(members))
        return self.add_jobs([*specs, _depending(fan_in, [i for _, i in members])])

    def _with_id(self, spec: Any, index: int) -> tuple[JobSpec, str]:
        """``spec`` as a JobSpec with an id of its own (what later steps name), and it."""
        cls, data, options = self._spec(spec, index)
        job_id = options.get("id") or new_id()
        return JobSpec(cls, data, {**options, "id": job_id}), str(job_id)

    @staticmethod
    def _spec(spec: Any, index: int) -> tuple[str | type, Any, Mapping[str, Any]]:
        if isinstance(spec, JobSpec):
            return spec.cls, spec.data, spec.options or {}
        if isinstance(spec, tuple) and 1 <= len(spec) <= 3:
            cls = spec[0]
            data = spec[1] if len(spec) > 1 else NO_DATA
            options = spec[2] if len(spec) > 2 else {}
            return cls, data, options
        if isinstance(spec, Mapping) and "cls" in spec:
            rest = dict(spec)
            return rest.pop("cls"), rest.pop("data", NO_DATA), rest.pop("options", None) or rest
        raise OptionError(
            f"job #{index}: expected JobSpec, (cls, data, options) or "
            f"{{'cls': ..., 'data': ..., **options}}, got {spec!r}"
        )

    def add_job_once(self, cls: str | type, data: Any = NO_DATA, **options: Any) -> Process:
        """Queue a job unless the same one (class and data, or class with ``ignore_data``) is
        already waiting or running; if its explicit options changed, the old one is replaced.
        Safe for overlapping callers (cron): they get the same job. Without ``data`` the
        job's data is ``{}``, as for add_job: null (``None``) is other data."""
        job, opts, explicit = self._prepare(cls, _data(data), options, time.time())
        if opts.depends_on:
            raise OptionError(
                "option 'depends_on' cannot be given to add_job_once: which waiting job "
                "is 'the same' one is not defined for jobs waiting on other jobs"
            )
        key = rules.once_key(job.cls, job.data_json, opts.ignore_data)
        job = NewJob(
            id=job.id,
            cls=job.cls,
            data_json=job.data_json,
            options=job.options,
            at=job.at,
            created=job.created,
            status=job.status,
            once_key=key,
        )

        def same(existing: JobRecord) -> bool:
            return rules.same_request(existing, opts, explicit)

        try:
            record, _ = self.store.insert_once(job, same, transitions.replace_once())
        except DuplicateJobId as exc:
            raise OptionError(f"option 'id': a job with id {exc.job_id!r} already exists") from None
        return Process(self, record)

    # -- finding ------------------------------------------------------------------
    def get_job(self, job_id: str) -> Process:
        """The job with this id; JobNotFound (a LookupError) if there is none."""
        return Process(self, self.store.get(job_id))

    def get_jobs(
        self,
        status: StatusArg = None,
        cls: str | type | Sequence[str | type] | None = None,
        queue: str | Sequence[str] | None = None,
        ids: Sequence[str] | None = None,
        limit: int | None = None,
        since: float | None = None,
        newest_first: bool = False,
    ) -> list[Process]:
        """Jobs matching the filters; by default the active ones (WAITING, POSTPONED,
        PROCESSING) as in the original, or any status when ids are given."""
        statuses = parse_statuses(status, () if ids else ACTIVE)
        classes: list[str] = []
        if cls is not None:
            for c in [cls] if isinstance(cls, str | type) else cls:
                classes.append(normalize(c) if isinstance(c, str) else path_of(c))
        queues = [queue] if isinstance(queue, str) else list(queue or [])
        if limit is not None and limit < 0:
            raise OptionError(f"limit must be >= 0, got {limit}")
        query = JobQuery(
            statuses=statuses,
            classes=tuple(classes),
            queues=tuple(queues),
            ids=tuple(ids or ()),
            since=since,
            limit=limit,
            newest_first=newest_first,
        )
        return [Process(self, r) for r in self.store.find(query)]

    def series_active(self, series_id: str) -> bool:
        """Whether the series ``series_id`` (the id add_job returned for an interval or cron
        job) still has an occurrence waiting, postponed or running."""
        return bool(self.store.find(JobQuery(series=series_id, statuses=ACTIVE, limit=1)))

    # -- changing -----------------------------------------------------------------
    def cancel_job(self, job_id: str) -> Process:
        """Cancel a waiting job now; a running one is killed by its node and ends CANCELED;
        final jobs stay. A job of a recurring series (its first job, whose id is the
        series id, or any occurrence) cancels the whole series: no occurrence is created
        or claimed after this returns; one claimed before (running, or about to start on
        its worker) is killed and ends CANCELED. JobNotFound if there is no such job."""
        now = time.time()
        try:
            series = rules.series_of(self.store.get(job_id))
        except JobNotFound:
            # A series' first job is purged a retention period after it ended; its id
            # still names the series while occurrences of it exist.
            if not self.store.find(JobQuery(series=job_id, limit=1)):
                raise
            self.store.apply_series(job_id, transitions.cancel(), now=now)
            latest = self.store.find(JobQuery(series=job_id, newest_first=True, limit=1))
            return Process(self, latest[0] if latest else self.store.get(job_id))
        if series is None:
            self.store.apply(job_id, transitions.cancel(), now=now)
        else:
            self.store.apply_series(series, transitions.cancel(), now=now)
        return Process(self, self.store.get(job_id))

    def retry_job(self, job_id: str) -> Process:
        """Re-queue a FAILED, TIMEOUT or CANCELED job with a fresh retry budget (not one
        whose stored record does not decode: it would only be quarantined again). A
        retried occurrence of a series creates the next one when it ends: retrying the
        occurrence a cancel ended starts the series again."""
        stored = self.store.get(job_id)
        if stored.corrupt is not None:
            raise TaskSchedError(
                f"job {job_id} cannot be retried: its stored record does not decode "
                f"({stored.corrupt}); fix the record or add the job again"
            )
        # A job with dependencies waits on them again: it is decided against their
        # statuses now (canceled again at once if one of them still failed).
        blocked = bool(stored.options.depends_on)
        record, changed = self.store.requeue(job_id, now=time.time(), blocked=blocked)
        if not changed:
            raise TaskSchedError(
                f"job {job_id} is {record.status.name}; only FAILED, TIMEOUT or CANCELED jobs "
                "can be retried"
            )
        return Process(self, record)

    def purge(self, statuses: StatusArg = None, older_than: float = 0.0) -> int:
        """Delete final jobs that ended more than ``older_than`` seconds ago."""
        from taskschedd.model import FINAL

        chosen = parse_statuses(statuses, FINAL) or FINAL
        active = [s.name for s in chosen if not s.is_final]
        if active:
            raise OptionError(f"only final jobs can be purged, not {', '.join(active)}")
        return self.store.purge(statuses=chosen, ended_before=time.time() - older_than)

    def flush(self) -> None:
        """Delete every job and event (the original's flush()); for tests and resets."""
        self.store.flush()

    # -- following ----------------------------------------------------------------
    def wait(
        self,
        ids: Iterable[str],
        timeout: float | None = None,
        *,
        on_read: Callable[[list[JobRecord]], Any] | None = None,
        on_unavailable: Callable[[StoreUnavailable], float] | None = None,
    ) -> list[Process]:
        """Block until all these jobs are final; WaitTimeout if ``timeout`` passes first,
        JobNotFound for an id no job has.

        ``on_read`` gets the jobs as read, after each look at the store (a progress
        display). ``on_unavailable`` rides out a store outage: it gets each
        StoreUnavailable and returns the seconds to wait before the next look (without
        it, the error is raised); the deadline still holds."""
        wanted = list(dict.fromkeys(ids))
        deadline = None if timeout is None else time.monotonic() + timeout
        latest: dict[str, JobRecord] = {}
        waker = open_waker(self.store)
        try:
            while True:
                pending = [i for i in wanted if i not in latest or not latest[i].is_final]
                delay = FALLBACK_POLL
                try:
                    found = {r.id: r for r in self.store.find(JobQuery(ids=tuple(pending)))}
                except StoreUnavailable as exc:
                    if on_unavailable is None:
                        raise
                    delay = on_unavailable(exc)
                else:
                    for job_id in pending:
                        if job_id not in found:
                            raise JobNotFound(job_id)
                        latest[job_id] = found[job_id]
                    if on_read is not None:
                        on_read([latest[i] for i in wanted])
                    if all(latest[i].is_final for i in wanted):
                        return [Process(self, latest[i]) for i in wanted]
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
            if waker is not None:
                waker.close()

    def listen(
        self,
        callback: Callable[[EventRecord], Any],
        filter: Mapping[str, Any] | Callable[[EventRecord], bool] | None = None,
        *,
        timeout: float | None = None,
        after: int | None = None,
    ) -> int:
        """Call ``callback`` for each new event until it returns True (or ``timeout``).

        ``filter`` is a predicate or a mapping of ``id``, ``class``, ``status``, ``queue``
        (each a value or a list). Returns the seq of the last event seen, to resume from.
        """
        match = _event_filter(filter)
        ids = _listed(filter.get("id")) if isinstance(filter, Mapping) else []
        seq = self.store.last_event_seq() if after is None else after
        deadline = None if timeout is None else time.monotonic() + timeout
        waker = self.store.waker()
        try:
            while True:
                for event in events_of(self.store, after=seq, job_ids=ids):
                    seq = event.seq
                    if match(event) and callback(event) is True:
                        return seq
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return seq
                waker.wait(FALLBACK_POLL if left is None else min(FALLBACK_POLL, left))
        finally:
            waker.close()

    def events(
        self, *, job_ids: Sequence[str] = (), after: int = 0, limit: int = 1000
    ) -> list[EventRecord]:
        return events_of(self.store, after=after, job_ids=job_ids, limit=limit)

    def stats(self) -> dict[str, Any]:
        return self.store.stats(now=time.time())

    def nodes(self, *, alive_within: float | None = None) -> list[NodeRecord]:
        after = None if alive_within is None else time.time() - alive_within
        return self.store.nodes(alive_after=after)

    def close(self) -> None:
        self.store.close()

    def __enter__(self) -> Scheduler:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def env_store_url(*, plain: bool = True) -> str | None:
    """The store named by the environment: $TASKSCHED_STORE (when ``plain``), else the first
    line of the file named by $TASKSCHED_STORE_FILE (which keeps a password out of ps,
    shell history and the environment of every child). ConfigError if that file cannot
    be read."""
    url = os.environ.get("TASKSCHED_STORE") if plain else None
    if url:
        return url
    path = os.environ.get("TASKSCHED_STORE_FILE")
    if not path:
        return None
    from taskschedd.config import read_regular
    from taskschedd.errors import ConfigError

    try:
        raw = read_regular(path, 65536)
        lines = raw.decode("utf-8").splitlines()
    except OSError as exc:
        raise ConfigError(
            f"cannot read {path}: {exc.strerror or exc}", key="TASKSCHED_STORE_FILE"
        ) from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path} is not UTF-8 text", key="TASKSCHED_STORE_FILE") from None
    if len(raw) > 65536 or not lines or not lines[0].strip():
        raise ConfigError(
            f"{path} must hold the store URL on its first line", key="TASKSCHED_STORE_FILE"
        )
    from taskschedd.redact import redact_url

    url = lines[0].strip()
    redact_url(url)  # remembers its password: masked in every message from here on
    return url


def _data_size(given: int | None, config: Config | None) -> int:
    if given is None:
        return config.max_data_size if config is not None else DEFAULT_MAX_DATA_SIZE
    low, high = MAX_DATA_SIZE_RANGE
    if isinstance(given, bool) or not isinstance(given, int) or not low <= given <= high:
        raise OptionError(
            f"max_data_size: expected a number of bytes from {low} to {high}, got {given!r}"
        )
    return given


def _check_order(jobs: Sequence[NewJob]) -> None:
    """OptionError when a job of a batch depends on a job that comes later in it: stores
    insert in order, and would say that job does not exist."""
    if not any(j.options.depends_on for j in jobs):
        return
    position = {j.id: i for i, j in enumerate(jobs)}
    for index, job in enumerate(jobs):
        for dep in job.options.depends_on:
            later = position.get(dep, -1)
            if later > index:
                raise OptionError(
                    f"job #{index} of the batch depends on job #{later} (id {dep!r}), which "
                    "comes later in it: a job may depend only on jobs added before it or "
                    "earlier in the same call; reorder them"
                )


def _depending(spec: JobSpec, after: Sequence[str]) -> JobSpec:
    """``spec`` depending also on ``after`` (before the dependencies it names itself; one
    it names already keeps its place in its own list)."""
    if not after:
        return spec
    options = dict(spec.options or {})
    given = options.get("depends_on") or []
    if isinstance(given, str):
        given = [given]
    if not isinstance(given, list | tuple):
        return spec  # refused with what is accepted when its options are resolved
    named = {i for i in given if isinstance(i, str)}
    options["depends_on"] = [*(i for i in after if i not in named), *given]
    return JobSpec(spec.cls, spec.data, options)


def _options_key(options: Mapping[str, Any]) -> tuple[Any, ...] | None:
    """Equal keys resolve to equal options; types count (True is not 1 to `retry`).
    None when a value is unhashable (no sharing then)."""
    key = tuple((k, v.__class__, v) for k, v in options.items())
    try:
        hash(key)
    except TypeError:
        return None
    return key


def _listed(value: Any) -> list[Any]:
    if value is None:
        return []
    if isinstance(value, str | int | JobStatus):
        return [value]
    return list(value)


def _event_filter(
    spec: Mapping[str, Any] | Callable[[EventRecord], bool] | None,
) -> Callable[[EventRecord], bool]:
    if spec is None:
        return lambda e: True
    if callable(spec):
        return spec
    unknown = set(spec) - {"id", "class", "status", "queue"}
    if unknown:
        raise OptionError(
            f"unknown listen filter key(s) {', '.join(sorted(unknown))}; "
            "accepted: id, class, status, queue"
        )
    statuses = parse_statuses(spec["status"], ()) if spec.get("status") is not None else ()
    return event_matcher(
        ids=_listed(spec.get("id")),
        classes=_listed(spec.get("class")),
        statuses=statuses,
        queues=_listed(spec.get("queue")),
    )


def event_matcher(
    *,
    ids: Iterable[str] = (),
    classes: Iterable[str | type] = (),
    statuses: Iterable[JobStatus] = (),
    queues: Iterable[str] = (),
) -> Callable[[EventRecord], bool]:
    """A predicate on events: each filter given (not empty) must match, any of its values
    (class paths normalized). What :meth:`Scheduler.listen` and taskschedctl events use."""
    want_ids = set(ids)
    want_cls = {normalize(c) if isinstance(c, str) else path_of(c) for c in classes}
    want_status, want_queue = set(statuses), set(queues)

    def match(e: EventRecord) -> bool:
        return (
            (not want_ids or e.job_id in want_ids)
            and (not want_cls or e.cls in want_cls)
            and (not want_status or e.status in want_status)
            and (not want_queue or e.queue in want_queue)
        )

    return match


#: Job ids per read of events: SQLite before 3.32 binds at most 999 values a statement.
IDS_PER_READ = 500


def events_of(
    store: Store,
    *,
    after: int = 0,
    job_ids: Sequence[str] = (),
    limit: int = 1000,
    since: float | None = None,
) -> list[EventRecord]:
    """:meth:`Store.events` for any number of job ids: read for 500 ids at a time and
    merged, the first ``limit`` by seq (each read returns its own first ``limit``)."""
    ids = list(dict.fromkeys(job_ids))
    if len(ids) <= IDS_PER_READ:
        return store.events(after=after, job_ids=ids, limit=limit, since=since)
    merged: list[EventRecord] = []
    for start in range(0, len(ids), IDS_PER_READ):
        chunk = ids[start : start + IDS_PER_READ]
        merged.extend(store.events(after=after, job_ids=chunk, limit=limit, since=since))
    merged.sort(key=lambda e: e.seq)
    return merged[:limit]


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
