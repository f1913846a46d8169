"""The embedded SQLite store: the default, for one host.

Many processes share one database file: WAL journal, a busy timeout, ``BEGIN
IMMEDIATE`` for every write (so writers queue instead of failing on upgrade), a claim
in one ``UPDATE ... RETURNING``. ``synchronous=FULL``: a state change is on disk when
the call returns, as with Huey's default. Connections never cross a fork: each process
opens its own on first use.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

from taskschedd import dependencies, failpoints, limits, transitions
from taskschedd.errors import (
    JobNotFound,
    OptionError,
    StoreError,
    StoreNotWritable,
    StoreReplaced,
    StoreUnavailable,
)
from taskschedd.limits import LimitSpec, LimitState, Rate
from taskschedd.model import (
    FINAL,
    ClaimRequest,
    ErrorInfo,
    EventRecord,
    JobQuery,
    JobRecord,
    JobStatus,
    NewJob,
    NodeRecord,
)
from taskschedd.stats import StatRows
from taskschedd.store import diskspace, sqlitefiles
from taskschedd.store.base import DuplicateJobId, Store, UnknownDependency, Waker, prefix_end
from taskschedd.store.decode import (
    decode_event,
    decode_job,
    decode_node,
    decode_result,
    decode_state,
)
from taskschedd.store.notify import NotifyDir
from taskschedd.store.sqlitecompile import change_sql, guard_sql
from taskschedd.transitions import Branch, ClaimFields, Transition

SCHEMA_VERSION = 6
#: A claim that waited longer than this for the write lock counts its lease from the end
#: of the wait (shorter waits are noise, and keep the caller's `now` exact).
LOCK_WAIT_SHIFT = 0.5
#: The status of the placeholder row that keeps the highest event seq after a delete.
EVENT_FLOOR = -1
T = TypeVar("T")

# Schema 2 writes about half the pages of schema 1 per add/claim/settle (each page is
# WAL bandwidth and fsync time): indexes that most rows do not need are partial
# (finished jobs for purge and stats, series members), events have no time index
# (nothing needs one: followers and `watch` read by seq), and event seqs come from
# max(seq) + 1 with a placeholder row instead of AUTOINCREMENT's counter row.
#: Only final jobs have `ended` (purge, stats); only series members have `series`.
_V2_INDEXES = """
CREATE INDEX IF NOT EXISTS jobs_ended ON jobs(status, ended) WHERE ended IS NOT NULL;
CREATE INDEX IF NOT EXISTS jobs_series ON jobs(series, series_seq) WHERE series IS NOT NULL;
"""

_EVENTS_TABLE = """
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY,
    job_id TEXT NOT NULL,
    time REAL NOT NULL,
    status INTEGER NOT NULL,
    attempt INTEGER NOT NULL,
    cls TEXT NOT NULL,
    queue TEXT NOT NULL,
    node TEXT,
    worker TEXT,
    error TEXT,
    reason TEXT
);
"""
_EVENTS_INDEX = "CREATE INDEX IF NOT EXISTS events_job ON events(job_id, seq);"

_JOBS_TABLES = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    cls TEXT NOT NULL,
    data TEXT NOT NULL,
    status INTEGER NOT NULL,
    queue TEXT NOT NULL,
    priority INTEGER NOT NULL,
    spawn INTEGER NOT NULL,
    at REAL NOT NULL,
    created REAL NOT NULL,
    started REAL,
    ended REAL,
    attempt INTEGER NOT NULL DEFAULT 0,
    options TEXT NOT NULL,
    result TEXT,
    errors TEXT NOT NULL DEFAULT '[]',
    progress REAL NOT NULL DEFAULT 0,
    reason TEXT,
    node TEXT,
    worker TEXT,
    claim_token TEXT,
    lease_until REAL,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    series TEXT,
    series_seq INTEGER NOT NULL DEFAULT 0,
    once_key TEXT,
    updated REAL
);
CREATE INDEX IF NOT EXISTS jobs_claim ON jobs(queue, spawn, priority DESC, at, seq)
    WHERE status IN (0, 1);
CREATE UNIQUE INDEX IF NOT EXISTS jobs_token ON jobs(claim_token)
    WHERE claim_token IS NOT NULL;
CREATE INDEX IF NOT EXISTS jobs_lease ON jobs(lease_until) WHERE status = 2;
CREATE UNIQUE INDEX IF NOT EXISTS jobs_once ON jobs(once_key) WHERE once_key IS NOT NULL;
CREATE INDEX IF NOT EXISTS jobs_created ON jobs(created);
"""
_NODES_TABLE = """
CREATE TABLE IF NOT EXISTS nodes (
    name TEXT PRIMARY KEY,
    host TEXT NOT NULL,
    pid INTEGER NOT NULL,
    started REAL NOT NULL,
    heartbeat REAL NOT NULL,
    workers_busy INTEGER NOT NULL,
    workers_idle INTEGER NOT NULL,
    running TEXT NOT NULL,
    queues TEXT NOT NULL,
    version TEXT NOT NULL
);
"""
#: The instance (a random token per master start) owning each node's entry; created by
#: the first registry write (not part of the schema: no upgrade, no new schema version).
_NODE_INSTANCES_TABLE = """
CREATE TABLE IF NOT EXISTS node_instances (
    name TEXT PRIMARY KEY,
    instance TEXT NOT NULL
)"""
#: How long each entry counts as live (its own live_until) and where its master runs
#: (pid namespace, boot time); created with node_instances. A row counts only while its
#: heartbeat is the entry's: one written by taskschedd 0.4 after it has none.
_NODE_LIVENESS_TABLE = """
CREATE TABLE IF NOT EXISTS node_liveness (
    name TEXT PRIMARY KEY,
    heartbeat REAL NOT NULL,
    live_until REAL NOT NULL,
    pid_ns TEXT NOT NULL,
    boot REAL NOT NULL
)"""
#: The jobs a claim may take (their statuses: transitions.CLAIMABLE), in the words of
#: the jobs_claim index's WHERE so that every query on them can use it.
_CLAIMABLE = "status IN (%s)" % ", ".join(
    str(int(s)) for s in sorted(transitions.CLAIMABLE.statuses)
)
assert _CLAIMABLE in _JOBS_TABLES
#: Schema 3: which jobs wait on which (depends_on), keyed by the dependency so that the
#: write that makes a job final finds its dependents by index; by the dependent for the
#: purge of its rows. A job's own list, in its order, is its options' depends_on.
#: job_waits counts, per dependent, its dependencies not final yet: a fan-in is read
#: whole once, when the count reaches 0, not on every dependency's settle (which made a
#: fan-in of n cost n^2 reads). The decision reads the statuses; a count left too high
#: (a record changed by hand) is found by the dependency sweep.
_DEPS_TABLE = """
CREATE TABLE IF NOT EXISTS job_deps (
    dependency TEXT NOT NULL,
    dependent TEXT NOT NULL,
    PRIMARY KEY (dependency, dependent)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS job_deps_dependent ON job_deps(dependent);
CREATE TABLE IF NOT EXISTS job_waits (
    dependent TEXT PRIMARY KEY,
    pending INTEGER NOT NULL
) WITHOUT ROWID;
"""
_SCHEMA = _JOBS_TABLES + _V2_INDEXES + _EVENTS_TABLE + _EVENTS_INDEX + _NODES_TABLE + _DEPS_TABLE
#: Schema 4: limits (taskschedd.limits). A job's limit and exclusive key are columns
#: (from its options) so that the claim can count and skip by index; running jobs are
#: counted from the jobs themselves (PROCESSING, lease not over), so a slot is free again
#: the moment its job is settled or its lease ends: nothing else to keep in step.
_LIMITS_TABLE = """
CREATE TABLE IF NOT EXISTS limits (
    name TEXT PRIMARY KEY,
    max_running INTEGER,
    rate_count INTEGER,
    rate_period REAL,
    starts TEXT NOT NULL DEFAULT '[]'
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS jobs_lim_running ON jobs(lim, lease_until)
    WHERE status = 2 AND lim IS NOT NULL;
CREATE INDEX IF NOT EXISTS jobs_xkey_running ON jobs(xkey, lease_until)
    WHERE status = 2 AND xkey IS NOT NULL;
CREATE INDEX IF NOT EXISTS jobs_lim_waiting ON jobs(lim, at)
    WHERE status IN (0, 1) AND lim IS NOT NULL;
"""
#: Schema 5: what a dashboard reads at a million jobs. job_counts holds the exact number
#: of jobs per (status, queue, cls), kept by triggers in the writing statement's own
#: transaction, so every writer keeps it right (older clients and raw SQL too). Its key
#: is the three values as stored: the jobs table holds them NOT NULL, and a key column
#: without a type takes any other value another client stored (REAL, BLOB) as it is, so
#: such a row never fails its write. Rows at n = 0 stay (readers skip them).
#: The three single-column indexes end with the rowid, so that a filter on one value
#: walks it in seq order (keyset pages); queue and cls never change after insert.
#: A job that may recur, as its options JSON is stored (compact, both keys always there:
#: "interval":0.0 and "cron":null when unset): a plain substring test, evaluated at every
#: insert and status change of every job, where json_extract cost 20-40 us a job. A
#: superset: options written otherwise (another client) are candidates, and find() keeps
#: the jobs whose decoded options recur.
_RECURS = "(instr(options, '\"interval\":0.0,') = 0 OR instr(options, '\"cron\":null') = 0)"
#: The pending occurrences of recurring jobs, in the words of jobs_recurring's WHERE (a
#: query must repeat them exactly for SQLite to use that partial index).
_RECURRING = f"status IN (0, 1) AND {_RECURS}"
_UPSERT_COUNT = (
    "INSERT INTO job_counts (status, queue, cls, n) VALUES (NEW.status, NEW.queue, NEW.cls, 1) "
    "ON CONFLICT (status, queue, cls) DO UPDATE SET n = n + 1;"
)
_DROP_COUNT = (
    "UPDATE job_counts SET n = n - 1 "
    "WHERE status = OLD.status AND queue = OLD.queue AND cls = OLD.cls;"
)
#: Statements, not a script: trigger bodies hold semicolons.
_COUNTS_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS job_counts "
    "(status, queue, cls, n INTEGER NOT NULL, PRIMARY KEY (status, queue, cls)) WITHOUT ROWID",
    f"CREATE TRIGGER IF NOT EXISTS jobs_count_insert AFTER INSERT ON jobs "
    f"BEGIN {_UPSERT_COUNT} END",
    f"CREATE TRIGGER IF NOT EXISTS jobs_count_delete AFTER DELETE ON jobs BEGIN {_DROP_COUNT} END",
    "CREATE TRIGGER IF NOT EXISTS jobs_count_update AFTER UPDATE OF status, queue, cls "
    "ON jobs WHEN OLD.status IS NOT NEW.status OR OLD.queue IS NOT NEW.queue "
    f"OR OLD.cls IS NOT NEW.cls BEGIN {_DROP_COUNT} {_UPSERT_COUNT} END",
    "CREATE INDEX IF NOT EXISTS jobs_status ON jobs(status)",
    "CREATE INDEX IF NOT EXISTS jobs_queue ON jobs(queue)",
    "CREATE INDEX IF NOT EXISTS jobs_cls ON jobs(cls)",
    f"CREATE INDEX IF NOT EXISTS jobs_recurring ON jobs(at) WHERE {_RECURRING}",
)
#: The planner has no statistics: given `status = ?` or `queue = ?` it takes the list
#: indexes above (every job of a status or queue) over the partial ones the hot paths
#: were written for (runnable, running, limited jobs only). Those statements name theirs.
#: Schema 6: the claim index in parts, so that no pick walks the jobs of a closed limit
#: (schema 5's one index held them among the others, and every look for work stepped
#: over each: 43 ms behind 100,000). The jobs without a limit in claim order
#: (jobs_claim_free); the jobs of a limit in claim order (jobs_claim_gated), read when
#: no limit is closed; and by limit (jobs_claim_lim), read per open limit when some are
#: closed, if the waiting jobs name at most _PER_LIMIT limits (beyond, the claim-order
#: walk skips the closed limits' jobs row by row, as before). See _Pick.
_CLAIM_FREE = "INDEXED BY jobs_claim_free"
_CLAIM_GATED = "INDEXED BY jobs_claim_gated"
_CLAIM_LIM = "INDEXED BY jobs_claim_lim"
_CLAIM_SCHEMA = (
    "DROP INDEX IF EXISTS jobs_claim",
    "CREATE INDEX IF NOT EXISTS jobs_claim_free ON jobs(queue, spawn, priority DESC, at, seq) "
    f"WHERE {_CLAIMABLE} AND lim IS NULL",
    "CREATE INDEX IF NOT EXISTS jobs_claim_gated ON jobs(queue, spawn, priority DESC, at, seq) "
    f"WHERE {_CLAIMABLE} AND lim IS NOT NULL",
    "CREATE INDEX IF NOT EXISTS jobs_claim_lim "
    f"ON jobs(lim, queue, spawn, priority DESC, at, seq) WHERE {_CLAIMABLE} AND lim IS NOT NULL",
)
_PER_LIMIT = 64
#: The limits named by claimable jobs, one index seek each (a loose scan of
#: jobs_claim_lim), at most _PER_LIMIT + 1 of them. Values stay in SQL: a limit stored
#: by another client (a BLOB, text that is not UTF-8) is compared as it is stored.
_LIMS = (
    "WITH RECURSIVE lims(v) AS (SELECT (SELECT lim FROM jobs INDEXED BY jobs_claim_lim "
    f"WHERE {_CLAIMABLE} AND lim IS NOT NULL ORDER BY lim LIMIT 1) UNION ALL "
    f"SELECT (SELECT lim FROM jobs INDEXED BY jobs_claim_lim WHERE {_CLAIMABLE} "
    f"AND lim > lims.v ORDER BY lim LIMIT 1) FROM lims WHERE lims.v IS NOT NULL "
    f"LIMIT {_PER_LIMIT + 2}) "
)
#: Of those, the open ones (arg: the closed limits as JSON).
_OPEN_LIMS = "FROM lims WHERE lims.v IS NOT NULL AND lims.v NOT IN (SELECT value FROM json_each(?))"
#: Ids of at most this many jobs of a time window are sorted by seq (jobs_created);
#: a wider window is walked in seq order instead.
_WINDOW_SORT = 20000
_BLOCKED = int(JobStatus.BLOCKED)
#: A dependency sweep's page of BLOCKED jobs.
_SWEEP_JOBS = 5000

_COLUMNS = (
    "id, cls, data, status, queue, priority, at, created, started, ended, attempt, options, "
    "result, errors, progress, reason, node, worker, claim_token, lease_until, "
    "cancel_requested, series, series_seq, once_key, updated, seq"
)
_FINAL_SQL = ",".join(str(int(s)) for s in FINAL)
#: A job (alias c) whose exclusive key no other worker's running job holds; arguments:
#: now (leases over free their keys) and the claiming worker (None: any). A worker runs
#: one job at a time: a key it holds itself does not hold back the jobs it claims ahead.
#: Rows of held keys are still stepped over one by one (docs/limits.md).
_KEY_FREE = (
    "(c.xkey IS NULL OR NOT EXISTS (SELECT 1 FROM jobs h WHERE h.status = 2 "
    "AND h.xkey = c.xkey AND h.lease_until >= ? AND h.worker IS NOT ?))"
)
#: Nor held back by its limit; arguments: the names of the closed limits (a JSON list),
#: then _KEY_FREE's (_Gates.args).
_NOT_HELD = f"(c.lim IS NULL OR c.lim NOT IN (SELECT value FROM json_each(?))) AND {_KEY_FREE}"


def _limit_spec(row: Sequence[Any]) -> LimitSpec | None:
    """A ``limits`` row as a definition; None for one another client wrote wrong (its
    jobs then run unlimited, as with no definition: never stuck on a bad row)."""
    name, max_running, count, period = row[:4]
    try:
        rate = None if count is None and period is None else Rate(int(count), float(period))
        if rate is not None:
            Rate.parse(f"{rate.count}/{rate.period}s")
        cap = None if max_running is None else max_running
        return LimitSpec(name, cap, rate)
    except (OptionError, TypeError, ValueError):
        return None


def _starts(text: Any) -> list[float]:
    try:
        return limits.as_times(json.loads(text)) if isinstance(text, str) else []
    except ValueError:
        return []


@dataclass
class _Gates:
    """The limits as one transaction sees them: those that let no job start now, and
    what each claim changes (running counts, a rate's start times), so the next claim of
    the same transaction sees it."""

    specs: dict[str, LimitSpec]
    running: dict[str, int]
    starts: dict[str, list[float]]
    closed: set[str]
    #: The time of a rate's start: never before one already stored. Claims take `now`
    #: before the write lock and commit in another order; a start logged at an older time
    #: than the newest would be counted in a window the newest already trimmed.
    clock: float = 0.0
    worker: str | None = None  # the claiming worker (None: a read for any worker)
    #: The limits the worker holds a slot of (by its jobs PROCESSING, claimed ahead or
    #: running): more of their jobs share that slot (it runs one job at a time).
    holding: set[str] = field(default_factory=set)

    @classmethod
    def read(cls, conn: sqlite3.Connection, now: float, worker: str | None = None) -> _Gates:
        rows = conn.execute(
            "SELECT name, max_running, rate_count, rate_period, starts FROM limits"
        ).fetchall()
        if not rows:
            return cls({}, {}, {}, set(), now, worker)
        specs = {spec.name: spec for spec in map(_limit_spec, rows) if spec is not None}
        starts = {row[0]: _starts(row[4]) for row in rows if row[0] in specs}
        # A limit's slots are held by workers, not jobs: the jobs a worker claimed ahead
        # run one after the other, so they take one slot (jobs PROCESSING whose lease
        # is not over; a lease that ends frees its worker's slot).
        running = {
            name: int(n)
            for name, n in conn.execute(
                "SELECT lim, COUNT(DISTINCT worker) FROM jobs INDEXED BY jobs_lim_running "
                "WHERE status = 2 "
                "AND lim IS NOT NULL AND lease_until >= ? GROUP BY lim",
                (now,),
            )
        }
        holding: set[str] = set()
        if worker is not None:
            holding = {
                str(name)
                for (name,) in conn.execute(
                    "SELECT DISTINCT lim FROM jobs INDEXED BY jobs_lim_running "
                    "WHERE status = 2 AND lim IS NOT NULL "
                    "AND lease_until >= ? AND worker = ?",
                    (now, worker),
                )
            }
        clock = limits.clock(now, (t for times in starts.values() for t in times))
        closed = limits.closed(list(specs.values()), running, starts, clock, holding)
        return cls(specs, running, starts, closed, clock, worker, holding)

    def args(self, now: float) -> list[Any]:
        return [json.dumps(sorted(self.closed)), now, self.worker]

    def key_args(self, now: float) -> list[Any]:
        return [now, self.worker]

    def took(self, conn: sqlite3.Connection, job: JobRecord, now: float) -> None:
        """A job was claimed in this transaction: count it, and take its rate's start."""
        name = job.options.limit
        spec = self.specs.get(name) if name is not None else None
        if spec is None or name is None:
            return
        if name not in self.holding:  # its first job of the limit: one slot more
            self.running[name] = self.running.get(name, 0) + 1
            self.holding.add(name)
        if spec.rate is not None:  # every start counts against a rate
            kept = spec.rate.taken(self.starts.get(name, []), self.clock)
            self.starts[name] = kept
            conn.execute("UPDATE limits SET starts = ? WHERE name = ?", (json.dumps(kept), name))
        self.closed |= limits.closed([spec], self.running, self.starts, self.clock, self.holding)


class _Pick:
    """The due jobs of a queue that no limit or key holds back, read from the parts of
    the claim index (schema 6) without walking the jobs of a closed limit: the best (the
    head of the jobs without a limit against the head of the jobs of a limit, or of
    each open limit's), how many, the earliest. ``gates`` may close a limit between two
    picks of one transaction."""

    def __init__(self, c: sqlite3.Connection, gates: _Gates) -> None:
        self.c = c
        self.gates = gates
        self._few: bool | None = None
        self._gated_any: bool | None = None

    def _any_gated(self) -> bool:
        """Whether any claimable job has a limit (read once: a queue without any reads
        one part per pick, as before schema 6)."""
        if self._gated_any is None:
            row = self.c.execute(
                f"SELECT 1 FROM jobs {_CLAIM_GATED} WHERE {_CLAIMABLE} AND lim IS NOT NULL LIMIT 1"
            ).fetchone()
            self._gated_any = row is not None
        return self._gated_any

    def _few_lims(self) -> bool:
        """Whether the waiting jobs name at most _PER_LIMIT limits (read once)."""
        if self._few is None:
            row = self.c.execute(_LIMS + "SELECT COUNT(*) FROM lims WHERE v IS NOT NULL")
            self._few = int(row.fetchone()[0]) <= _PER_LIMIT
        return self._few

    def _gated(self, one: str, args: list[Any], fold: str) -> tuple[str, list[Any]]:
        """The statement applying ``one`` (a SELECT over ``jobs c`` with a ``{FROM}``
        placeholder for its source and condition) to the jobs of a limit: per open limit
        (``fold`` folds the per-limit values: MIN, TOTAL...) when some limit is closed
        and few are named, else in claim order, skipping the closed limits' jobs."""
        closed = json.dumps(sorted(self.gates.closed))
        if self.gates.closed and self._few_lims():
            per = one.replace(
                "{FROM}", f"jobs c {_CLAIM_LIM} WHERE {_CLAIMABLE} AND c.lim = lims.v"
            )
            return _LIMS + f"SELECT {fold}(({per})) {_OPEN_LIMS}", [*args, closed]
        where = f"jobs c {_CLAIM_GATED} WHERE {_CLAIMABLE} AND lim IS NOT NULL"
        if not self.gates.closed:
            return one.replace("{FROM}", where), args
        skip = where + " AND c.lim NOT IN (SELECT value FROM json_each(?))"
        return one.replace("{FROM}", skip), [closed, *args]

    def best(self, queue: str, spawn: int, now: float) -> int | None:
        """The seq of the job to claim next, or None."""
        c = self.c
        one = (
            "SELECT seq FROM {FROM} AND queue = ? AND spawn = ? AND at <= ? "
            f"AND typeof(id) = 'text' AND {_KEY_FREE} ORDER BY priority DESC, at, seq LIMIT 1"
        )
        args = [queue, spawn, now, *self.gates.key_args(now)]
        free = one.replace("{FROM}", f"jobs c {_CLAIM_FREE} WHERE {_CLAIMABLE} AND lim IS NULL")
        seqs = [row[0] for row in c.execute(free, args)]
        if self._any_gated():
            sql, gargs = self._gated(one, args, "")
            seqs += [row[0] for row in c.execute(sql, gargs) if row[0] is not None]
        if len(seqs) < 2:
            return int(seqs[0]) if seqs else None
        row = c.execute(
            "SELECT seq FROM jobs WHERE seq IN (SELECT value FROM json_each(?)) "
            "ORDER BY priority DESC, at, seq LIMIT 1",
            (json.dumps(seqs),),
        ).fetchone()
        return None if row is None else int(row[0])

    def count(self, queues: Sequence[str], spawn: int, now: float, limit: int | None) -> int:
        """How many due jobs of these queues nothing holds back (at most ``limit``)."""
        cap = -1 if limit is None else limit
        if cap == 0:
            return 0
        marks = ",".join("?" * len(queues))
        one = (
            "SELECT COUNT(*) FROM (SELECT 1 FROM {FROM} "
            f"AND queue IN ({marks}) AND spawn = ? AND at <= ? AND {_KEY_FREE} LIMIT ?)"
        )
        args = [*queues, spawn, now, *self.gates.key_args(now), cap]
        free = one.replace("{FROM}", f"jobs c {_CLAIM_FREE} WHERE {_CLAIMABLE} AND lim IS NULL")
        total = int(self.c.execute(free, args).fetchone()[0])
        if total == cap or not self._any_gated():
            return total
        sql, gargs = self._gated(one, args, "TOTAL")
        total += int(self.c.execute(sql, gargs).fetchone()[0] or 0)
        return total if cap < 0 else min(total, cap)

    def earliest(self, queues: Sequence[str], now: float) -> float | None:
        """The earliest ``at`` of the jobs of these queues due by ``now`` that nothing
        holds back (any spawn), or None."""
        marks = ",".join("?" * len(queues))
        one = f"SELECT MIN(at) FROM {{FROM}} AND queue IN ({marks}) AND at <= ? AND {_KEY_FREE}"
        args = [*queues, now, *self.gates.key_args(now)]
        free = one.replace("{FROM}", f"jobs c {_CLAIM_FREE} WHERE {_CLAIMABLE} AND lim IS NULL")
        found = [self.c.execute(free, args).fetchone()[0]]
        if self._any_gated():
            sql, gargs = self._gated(one, args, "MIN")
            found.append(self.c.execute(sql, gargs).fetchone()[0])
        times = [float(t) for t in found if isinstance(t, int | float)]
        return min(times) if times else None

    def later(self, queues: Sequence[str], now: float) -> float | None:
        """The earliest ``at`` after ``now`` of the jobs of these queues, held back or not
        (a limit may have room by then): the jobs without a limit in claim order, and
        each limit's from jobs_lim_waiting when the waiting jobs name few limits."""
        c = self.c
        marks = ",".join("?" * len(queues))
        found = [
            c.execute(
                f"SELECT MIN(at) FROM jobs {_CLAIM_FREE} WHERE {_CLAIMABLE} AND lim IS NULL "
                f"AND queue IN ({marks}) AND at > ?",
                [*queues, now],
            ).fetchone()[0]
        ]
        if self._few_lims():
            one = (
                f"SELECT at FROM jobs INDEXED BY jobs_lim_waiting WHERE {_CLAIMABLE} "
                f"AND lim = lims.v AND at > ? AND queue IN ({marks}) ORDER BY at LIMIT 1"
            )
            sql = _LIMS + f"SELECT MIN(({one})) FROM lims WHERE lims.v IS NOT NULL"
        else:
            sql = (
                f"SELECT MIN(at) FROM jobs {_CLAIM_GATED} WHERE {_CLAIMABLE} "
                f"AND lim IS NOT NULL AND at > ? AND queue IN ({marks})"
            )
        found.append(c.execute(sql, [now, *queues]).fetchone()[0])
        times = [float(t) for t in found if isinstance(t, int | float)]
        return min(times) if times else None


def path_from_url(url: str) -> str:
    """The file path of a ``sqlite:///abs`` / ``sqlite://rel`` URL or a bare path."""
    if url.startswith("sqlite:///"):
        return "/" + url[len("sqlite:///") :].lstrip("/")
    if url.startswith("sqlite://"):
        return os.path.abspath(url[len("sqlite://") :])
    return os.path.abspath(url)


def _set_wal(conn: sqlite3.Connection, timeout: float) -> None:
    """Switch to WAL. While another connection converts a new database, this pragma fails
    with SQLITE_BUSY at once (the busy handler is not called): retry up to the timeout."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            conn.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() >= deadline:
                raise
            time.sleep(0.01)


def _row_to_job(row: sqlite3.Row | tuple[Any, ...]) -> JobRecord:
    return decode_job(tuple(row))


def _row_to_event(row: tuple[Any, ...]) -> EventRecord:
    return decode_event(row)


def _malformed_why(row: tuple[Any, ...]) -> str:
    """What makes a row that decodes unusable for claims and reaps."""
    status, at, lease_until, token = row[3], row[6], row[19], row[18]
    if status in (0, 1):
        return f"at is {at!r}, or its queue or spawn column has the wrong type"
    if lease_until is None or token is None:
        return "it is PROCESSING without a lease or a claim token"
    return "a column that claims compare has the wrong type"


#: Invalid UTF-8 in a TEXT column (another client wrote it) must not fail the whole
#: read: it decodes with surrogates, which the decoding boundary reports as corrupt.
_TEXT = functools.partial(str, encoding="utf-8", errors="surrogateescape")

#: Records that claims and reaps cannot see or settle, because a field that their
#: statements compare has the wrong type: quarantined by the nodes' sweep.
#: (Times beyond +-1e11, the decoding boundary's bound, would never come due or expire.)
_MALFORMED = (
    "(typeof(status) != 'integer' OR status NOT IN (0, 1, 2, 3, 4, 5, 6, 7) "
    "OR (status IN (0, 1, 2) AND typeof(id) != 'text') "
    "OR (status IN (0, 1) AND (typeof(at) NOT IN ('integer', 'real') OR abs(at) > 1e11 "
    "OR typeof(spawn) != 'integer' OR spawn NOT IN (0, 1) OR typeof(queue) != 'text')) "
    "OR (status = 2 AND (typeof(lease_until) NOT IN ('integer', 'real') "
    "OR abs(lease_until) > 1e11 OR typeof(claim_token) != 'text')))"
)


def _upgrade_v1(conn: sqlite3.Connection) -> None:
    """Schema 1 -> 2, inside the caller's write transaction. Rebuilding the events table
    (to drop AUTOINCREMENT) copies every event: seconds for millions, once."""
    conn.execute("DROP INDEX IF EXISTS jobs_status_ended")
    conn.execute("DROP INDEX IF EXISTS jobs_series")
    for stmt in _V2_INDEXES.split(";"):
        if stmt.strip():
            conn.execute(stmt)
    row = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'events'").fetchone()
    issued = int(row[0]) if row is not None else 0
    conn.execute("ALTER TABLE events RENAME TO events_v1")
    conn.execute(_EVENTS_TABLE)
    conn.execute("INSERT INTO events SELECT * FROM events_v1")
    conn.execute("DROP TABLE events_v1")  # and its indexes, events_time among them
    conn.execute(_EVENTS_INDEX)
    _hold_event_floor(conn, issued)  # deleted events' seqs stay used


def _upgrade_v2(conn: sqlite3.Connection) -> None:
    """Schema 2 -> 3: the dependency tables (no job has dependencies yet). A store of
    schema 3 is refused by taskschedd 0.5 and older, which would quarantine a BLOCKED
    job (a status they do not know) as corrupt."""
    for stmt in _DEPS_TABLE.split(";"):
        if stmt.strip():
            conn.execute(stmt)


def _upgrade_v3(conn: sqlite3.Connection) -> None:
    """Schema 3 -> 4 (and the last step of a new store): the limit columns and table. No
    job has a limit yet. taskschedd 0.6 refuses a store of schema 4: it would run limited
    jobs without their limits."""
    columns = {row[1] for row in conn.execute("PRAGMA table_info(jobs)")}
    for column in ("lim", "xkey"):
        if column not in columns:
            conn.execute(f"ALTER TABLE jobs ADD COLUMN {column} TEXT")
    for stmt in _LIMITS_TABLE.split(";"):
        if stmt.strip():
            conn.execute(stmt)


def _upgrade_v4(conn: sqlite3.Connection) -> None:
    """Schema 4 -> 5 (and a step of a new store): job_counts, its triggers, filled
    with one pass over the jobs, and the list indexes. Grouped by the key the triggers
    compute, so that every later decrement finds its row. taskschedd 0.7 writes a
    schema 5 store correctly (the triggers are the database's), but refuses it."""
    for stmt in _COUNTS_SCHEMA:
        conn.execute(stmt)
    conn.execute("DELETE FROM job_counts")
    conn.execute(
        "INSERT INTO job_counts (status, queue, cls, n) "
        "SELECT status, queue, cls, COUNT(*) FROM jobs GROUP BY status, queue, cls"
    )


def _upgrade_v5(conn: sqlite3.Connection) -> None:
    """Schema 5 -> 6 (and the last step of a new store): the claim index in parts (see
    _CLAIM_SCHEMA). Schema 5 was written by development builds of 0.8.0 only; a
    store of 0.7 takes both steps in one transaction."""
    for stmt in _CLAIM_SCHEMA:
        conn.execute(stmt)


def _plan(c: sqlite3.Connection, q: JobQuery) -> str | None:
    """How find() reads the jobs of ``q``: ``INDEXED BY``/``NOT INDEXED`` for the query,
    ``index!`` to sort the seqs it finds by that index before reading their rows, None to
    leave it to SQLite. The planner has no statistics (no ANALYZE), so it cannot tell a
    status of 10 jobs from one of 900,000; job_counts can, exactly. Rows read are
    estimated for each way, filters taken as independent: an index on one value walks
    in seq order and stops at the limit; several values, an id prefix or a time window
    sort what they match; the rowid walk reads ``limit / selectivity`` rows."""
    if q.recurring:
        return "INDEXED BY jobs_recurring"  # a few series: the smallest set by far
    if q.ids or q.series is not None:
        return None  # a handful of ids: SQLite picks the id or series index
    every: list[tuple[str, int, set[Any]]] = [
        ("jobs_status", 0, {int(s) for s in q.statuses}),
        ("jobs_queue", 1, set(q.queues)),
        ("jobs_cls", 2, set(q.classes)),
    ]
    dims = [d for d in every if d[2]]
    timed = q.since is not None or q.until is not None
    if not dims and not q.id_prefix and not timed:
        return None  # the rowid (seq) alone
    per: list[dict[Any, int]] = [{}, {}, {}]
    total = 0
    for row in c.execute("SELECT status, queue, cls, n FROM job_counts WHERE n > 0"):
        n = int(row[3])
        total += n
        for i in range(3):
            per[i][row[i]] = per[i].get(row[i], 0) + n
    if total == 0:
        return None
    limit = total if q.limit is None else max(q.limit, 1)
    matched = {name: sum(per[i].get(v, 0) for v in values) for name, i, values in dims}
    share = 1.0
    for n in matched.values():
        share *= n / total
    ways: dict[str, float] = {}
    if q.id_prefix:
        prefixed = max(total / 16 ** len(q.id_prefix), 1.0)  # ids are mostly hex
        share *= prefixed / total
        ways["sqlite_autoindex_jobs_1!"] = 2 * prefixed
    skip = 0  # jobs a walk in seq order passes before it reaches a time window
    if timed:

        def created(where: str, bounds: list[float]) -> int:
            """Jobs created in ``where``, counted up to _WINDOW_SORT (index only)."""
            (n,) = c.execute(
                "SELECT COUNT(*) FROM (SELECT 1 FROM jobs INDEXED BY jobs_created "
                f"WHERE {where} LIMIT {_WINDOW_SORT})",
                bounds,
            ).fetchone()
            return int(n)

        window = ["created >= ?"] * (q.since is not None) + ["created < ?"] * (q.until is not None)
        inside = created(" AND ".join(window), [t for t in (q.since, q.until) if t is not None])
        share *= inside / total
        if inside < _WINDOW_SORT:
            ways["jobs_created!"] = 2 * inside
        else:  # wide: seq and created grow together, so a walk from its near end is short
            edge = q.until if q.newest_first else q.since
            if edge is not None:
                skip = created("created >= ?" if q.newest_first else "created < ?", [edge])
                if skip >= _WINDOW_SORT:  # far: read the index of the window instead
                    skip = total  # of rows, each much bigger than an index entry
                    ways["jobs_created!"] = 4 * _WINDOW_SORT
    matching = max(share * total, 1e-9)
    ways["NOT INDEXED"] = min(total, skip + limit * total / matching)
    for name, _, values in dims:
        n = matched[name]
        if len(values) == 1:
            ways[f"INDEXED BY {name}"] = min(n, skip * n / total + limit * n / matching)
        else:
            ways[f"{name}!"] = 2 * n
    return min(ways, key=lambda w: ways[w])


def _hold_event_floor(conn: sqlite3.Connection, top: int | None) -> None:
    """Keep ``top`` as the highest event seq after a delete.

    New events are numbered max(seq) + 1, so deleting the newest events would hand their
    seqs out again, and a follower whose cursor is past them would miss the new ones. A
    placeholder row (status EVENT_FLOOR, no job; never returned) holds the highest seq;
    meta 'event_floor' names it, so there is at most one."""
    if not top:
        return
    (now_top,) = conn.execute("SELECT MAX(seq) FROM events").fetchone()
    if now_top is not None and now_top >= top:
        return
    old = conn.execute("SELECT value FROM meta WHERE key = 'event_floor'").fetchone()
    if old is not None:
        conn.execute("DELETE FROM events WHERE seq = ?", (int(old[0]),))
    conn.execute(
        "INSERT INTO events (seq, job_id, time, status, attempt, cls, queue) "
        "VALUES (?, '', 0, ?, 0, '', '')",
        (top, EVENT_FLOOR),
    )
    conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('event_floor', ?)", (top,))


class SQLiteStore(Store):
    """See the module docstring. ``busy_timeout`` bounds how long a write waits for a lock."""

    supports_dependencies = True

    def __init__(
        self,
        url: str,
        *,
        busy_timeout: float = 10.0,
        create: bool = False,
        owners: Collection[int] | None = None,
    ) -> None:
        """``create``: make the file (and its directories, 0700) if there is none; without
        it a missing file is StoreMissing, so a mistyped path fails instead of queueing
        into a new store. ``owners``: the users who may own the files (the daemon's: see
        :func:`~taskschedd.store.sqlitefiles.daemon_owners`); None checks modes only."""
        self.url = url if "://" in url else f"sqlite://{os.path.abspath(url)}"
        self.path = path_from_url(url)
        self.busy_timeout = busy_timeout
        self._create = create
        self._owners = owners
        self._malformed_seqs: dict[str, int] = {}  # what malformed() found, by record id
        #: BLOCKED jobs the dependency sweep could not decide on: id -> (seq, why).
        self._undecidable: dict[str, tuple[int, str]] = {}
        self._swept_after: str | None = None  # where the next dependency sweep starts
        self._side_ids: list[tuple[str, sqlitefiles.FileId]] = []  # -wal, -shm as opened
        self._file_id: sqlitefiles.FileId | None = None
        self._replaced: str | None = None  # why this store may no longer be used
        self._conn_obj: sqlite3.Connection | None = None
        self._lock_wait = 0.0
        self._node_table_ready = False  # node_instances and node_liveness known to exist
        self._pid = -1
        self._lock = threading.RLock()
        self._notify = NotifyDir(self.path + "-notify")
        self._data_version: object = None  # PRAGMA data_version when last asked

    # -- connection ------------------------------------------------------------------
    def _prepare_file(self) -> sqlitefiles.FileId:
        return sqlitefiles.prepare(self.path, create=self._create, owners=self._owners)

    @property
    def _conn(self) -> sqlite3.Connection:
        conn = self._conn_obj
        if conn is not None and self._pid == os.getpid():
            self._check_file()
            return conn
        # A connection inherited across fork must not be used (or closed) here.
        self._conn_obj = None
        if self._replaced is not None:
            raise StoreReplaced(self._replaced)
        existed = os.path.lexists(self.path)
        opened = self._prepare_file()
        try:
            conn = sqlite3.connect(
                self.path,
                timeout=self.busy_timeout,
                isolation_level=None,
                check_same_thread=False,
            )
        except sqlite3.DatabaseError as exc:
            raise self._error(exc) from None
        try:
            now = sqlitefiles.identity(self.path)
            if now != opened:  # swapped between the check and SQLite's open
                raise StoreReplaced(sqlitefiles.replaced_message(self.path, opened, now))
            conn.text_factory = _TEXT
            # SQLite before 3.32 binds at most 999 values per statement: hold every
            # version to that, so that a statement that would fail there fails in tests.
            conn.setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, 999)
            conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout * 1000)}")
            _set_wal(conn, self.busy_timeout)
            sqlitefiles.check_side_files(self.path, self._owners)  # as SQLite found them
            conn.execute("PRAGMA synchronous = FULL")
            conn.execute("PRAGMA foreign_keys = OFF")
            self._ensure_schema(conn)
        except BaseException as exc:
            conn.close()  # a failed open must not keep its descriptor
            if not existed:
                self._undo_create(opened)
            if isinstance(exc, sqlite3.DatabaseError):
                raise self._error(exc) from None
            raise
        self._conn_obj = conn
        self._file_id = opened
        # The -wal and -shm exist now (WAL mode, after the first read) and keep their
        # identity while any connection is open: deleting one splits the processes'
        # views of the store (each side loses the other's commits).
        self._side_ids = [
            (path, ident)
            for path in (self.path + suffix for suffix in sqlitefiles.SIDE_FILES)
            if (ident := sqlitefiles.identity(path)) is not None
        ]
        self._pid = os.getpid()
        return conn

    def _undo_create(self, made: sqlitefiles.FileId) -> None:
        """Remove the empty file this open created before its schema could be written (a
        full disk): left there, the next client without ``create`` would take it for a
        store, which is what create=False is meant to prevent."""
        with contextlib.suppress(OSError):
            st = os.stat(self.path)
            if sqlitefiles.FileId.of(st) == made and st.st_size == 0:
                for suffix in ("", *sqlitefiles.SIDE_FILES):
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(self.path + suffix)

    def _check_file(self) -> None:
        """StoreReplaced once the path names another file than the one open (deleted or
        replaced), or its -wal or -shm: from then on this store object refuses every call.
        Three stats (~2 us each)."""
        opened = self._file_id
        assert opened is not None
        if self._replaced is None:
            path = self.path
            try:
                st = os.stat(path)
            except (FileNotFoundError, NotADirectoryError):
                now = None
            except OSError:
                return  # cannot tell now (EACCES, EIO...): the store call says what is wrong
            else:
                if st.st_ino == opened.ino and st.st_dev == opened.dev:
                    for path, opened in self._side_ids:
                        try:
                            st = os.stat(path)
                        except (FileNotFoundError, NotADirectoryError):
                            break
                        except OSError:
                            continue
                        if st.st_ino != opened.ino or st.st_dev != opened.dev:
                            break
                    else:
                        return
                now = sqlitefiles.identity(path)
            self._replaced = sqlitefiles.replaced_message(path, opened, now)
            conn = self._conn_obj
            if conn is not None and not conn.in_transaction:
                # Let go of the old file: a deleted one holds its disk space while open.
                with contextlib.suppress(sqlite3.Error):
                    conn.close()
                self._conn_obj = None
        raise StoreReplaced(self._replaced)

    def verify(self) -> None:
        with self._lock:
            if self._replaced is not None:
                raise StoreReplaced(self._replaced)
            if self._conn_obj is not None and self._pid == os.getpid():
                self._check_file()

    def _ensure_schema(self, conn: sqlite3.Connection) -> None:
        """Create the schema, or upgrade an older one in place: in one write transaction,
        deciding again under the lock, so processes opening the store at once do it once."""
        if self._schema_version(conn) == SCHEMA_VERSION:
            return
        conn.execute("BEGIN IMMEDIATE")
        try:
            version = self._schema_version(conn)
            if version is None:
                for stmt in _SCHEMA.split(";"):
                    if stmt.strip():
                        conn.execute(stmt)
                _upgrade_v3(conn)
                _upgrade_v4(conn)
                _upgrade_v5(conn)
                conn.execute(
                    "INSERT OR REPLACE INTO meta (key, value) VALUES ('schema', ?)",
                    (SCHEMA_VERSION,),
                )
            elif version < SCHEMA_VERSION:
                if version < 2:
                    _upgrade_v1(conn)
                if version < 3:
                    _upgrade_v2(conn)
                if version < 4:
                    _upgrade_v3(conn)
                if version < 5:
                    _upgrade_v4(conn)
                _upgrade_v5(conn)
                conn.execute("UPDATE meta SET value = ? WHERE key = 'schema'", (SCHEMA_VERSION,))
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def _schema_version(self, conn: sqlite3.Connection) -> int | None:
        """The store's schema version, None for a new file; StoreError if too new."""
        row = None
        with contextlib.suppress(sqlite3.OperationalError):  # no meta table yet
            row = conn.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
        if row is None:
            return None
        try:
            version = int(row[0])
        except (TypeError, ValueError):
            raise StoreError(
                f"store {self.path} has schema {row[0]!r} in its meta table, not a "
                "taskschedd schema version: another program changed it; restore the "
                "store from a backup or set it back"
            ) from None
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"store {self.path} has schema {row[0]}, newer than this taskschedd "
                f"understands ({SCHEMA_VERSION}); upgrade taskschedd"
            )
        return version

    def _error(self, exc: sqlite3.Error) -> StoreError:
        text = str(exc)
        # Cannot write (SQLITE_FULL, SQLITE_IOERR, SQLITE_READONLY; by text where the
        # driver gives no code): transient, the writer keeps what it meant to write.
        # SQLITE_READONLY_DBMOVED (the file was replaced) is not: it never gets better.
        code = getattr(exc, "sqlite_errorcode", None)
        why = {13: "disk full", 10: "I/O error", 8: "read-only"}.get(
            code & 0xFF if isinstance(code, int) and code != 1032 else -1
        )
        if why is None and not isinstance(code, int):
            texts = (("disk is full", "disk full"), ("disk I/O", "I/O error"),
                     ("readonly database", "read-only"))  # fmt: skip
            why = next((w for t, w in texts if t in text), None)
        if why is not None:
            found = diskspace.trouble(self.path)
            if found is not None:
                if why == "I/O error":  # e.g. no room to grow the -shm file
                    why = "disk full" if found.startswith("disk full") else "read-only"
                text = f"{text}; {found}"
            return StoreNotWritable(f"SQLite store {self.path} cannot write ({why}): {text}", why)
        if isinstance(exc, sqlite3.OperationalError) and (
            "locked" in text or "busy" in text or "unable to open" in text or "disk I/O" in text
        ):
            return StoreUnavailable(f"SQLite store {self.path} is unavailable: {text}")
        if isinstance(exc, sqlite3.DatabaseError) and "not a database" in text:
            return StoreError(f"{self.path} is not a taskschedd SQLite store: {text}")
        return StoreError(f"SQLite store {self.path}: {text}")

    @contextlib.contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction; wakes up listeners after commit."""
        with self._lock:
            conn = self._conn
            asked = time.monotonic()
            try:
                conn.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                raise self._error(exc) from None
            self._lock_wait = time.monotonic() - asked
            try:
                yield conn
            except BaseException:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
                raise
            try:
                conn.execute("COMMIT")
            except sqlite3.Error as exc:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
                raise self._error(exc) from None
        self._notify.post()

    def _read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        with self._lock:
            try:
                return fn(self._conn)
            except sqlite3.Error as exc:
                raise self._error(exc) from None

    def _guard(self, fn: Callable[[], T]) -> T:
        try:
            return fn()
        except sqlite3.Error as exc:
            raise self._error(exc) from None

    @staticmethod
    def _event(
        conn: sqlite3.Connection,
        job_id: str,
        now: float,
        status: int,
        attempt: int,
        cls: str,
        queue: str,
        node: str | None = None,
        worker: str | None = None,
        error: ErrorInfo | None = None,
        reason: str | None = None,
    ) -> None:
        conn.execute(
            SQLiteStore._EVENT_SQL,
            (
                job_id,
                now,
                int(status),
                attempt,
                cls,
                queue,
                node,
                worker,
                json.dumps(error.to_dict()) if error else None,
                reason,
            ),
        )

    _INSERT_SQL = (
        "INTO jobs (id, cls, data, status, queue, priority, spawn, at, created, options, "
        "once_key, series, series_seq, updated, lim, xkey) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)"
    )
    _EVENT_SQL = (
        "INSERT INTO events (job_id, time, status, attempt, cls, queue, node, worker, "
        "error, reason) VALUES (?,?,?,?,?,?,?,?,?,?)"
    )

    @staticmethod
    def _job_row(job: NewJob) -> tuple[Any, ...]:
        opts = job.options
        return (
            job.id,
            job.cls,
            job.data_json,
            int(job.status),
            opts.queue,
            opts.priority,
            int(opts.ignore_max_children),
            job.at,
            job.created,
            opts.stored_json,
            job.once_key,
            job.series,
            job.series_seq,
            job.created,
            opts.limit,
            opts.exclusive_key,
        )

    @staticmethod
    def _added_event(job: NewJob) -> tuple[Any, ...]:
        return (
            job.id, job.created, int(job.status), 0, job.cls, job.options.queue, None, None,
            None, "added",
        )  # fmt: skip

    @staticmethod
    def _insert_row(conn: sqlite3.Connection, job: NewJob, *, ignore: bool = False) -> bool:
        cur = conn.execute(
            f"INSERT {'OR IGNORE ' if ignore else ''}" + SQLiteStore._INSERT_SQL,
            SQLiteStore._job_row(job),
        )
        if cur.rowcount == 0:
            return False
        conn.execute(SQLiteStore._EVENT_SQL, SQLiteStore._added_event(job))
        return True

    # -- writing jobs -------------------------------------------------------------------
    def insert(self, jobs: Sequence[NewJob]) -> None:
        if not jobs:
            return
        try:
            with self._write() as conn:
                if any(j.options.depends_on for j in jobs):
                    for job in jobs:  # in order: a job may depend on an earlier one
                        self._insert_row(conn, job)
                        if job.options.depends_on:
                            self._add_dependencies(conn, job)
                    failpoints.hit("sqlite.workflow.before_commit")
                elif len(jobs) == 1:
                    self._insert_row(conn, jobs[0])
                else:  # one statement per table, not two per job
                    conn.executemany("INSERT " + self._INSERT_SQL, map(self._job_row, jobs))
                    conn.executemany(self._EVENT_SQL, map(self._added_event, jobs))
        except sqlite3.IntegrityError as exc:
            if "jobs.id" in str(exc):
                existing = self._read(
                    lambda c: c.execute(
                        "SELECT id FROM jobs WHERE id IN (SELECT value FROM json_each(?))",
                        (json.dumps([j.id for j in jobs]),),
                    ).fetchone()
                )
                raise DuplicateJobId(existing[0] if existing else jobs[0].id) from None
            raise self._error(exc) from None
        except sqlite3.Error as exc:
            raise self._error(exc) from None

    def _add_dependencies(self, conn: sqlite3.Connection, job: NewJob) -> None:
        """Record what ``job`` (just inserted BLOCKED) waits on, and decide it at once
        against dependencies already final; UnknownDependency (the caller's transaction
        rolls back: nothing written) when one does not exist."""
        deps = job.options.depends_on
        found = dict(self._statuses(conn, deps))
        missing = [d for d in deps if d not in found]
        if missing:
            raise UnknownDependency(job.id, missing)
        conn.executemany(
            "INSERT INTO job_deps (dependency, dependent) VALUES (?, ?)",
            [(d, job.id) for d in deps],
        )
        self._set_pending(conn, job.id, [found[d] for d in deps])
        decision = dependencies.decide(
            [(d, found[d]) for d in deps],
            on_failure=job.options.on_dependency_failure, at=job.at, now=job.created,
        )  # fmt: skip
        if decision is not None:
            self._apply_in(conn, "id = ?", [job.id], decision, None, job.created)

    @staticmethod
    def _statuses(
        conn: sqlite3.Connection, ids: Sequence[str], *, before: float | None = None
    ) -> list[tuple[str, JobStatus | None]]:
        """(id, status) of the jobs of ``ids`` that exist (a status no JobStatus names,
        written by another client, reads as None: it cannot end DONE). ``before``: the
        dependent's creation time; a job created after it bears a reused id (its
        dependency was purged) and is not it: left out, as missing."""
        out: list[tuple[str, JobStatus | None]] = []
        for i in range(0, len(ids), 500):
            chunk = list(ids[i : i + 500])
            rows = conn.execute(
                "SELECT id, status, created FROM jobs WHERE id IN (%s)"
                % ",".join("?" * len(chunk)),
                chunk,
            ).fetchall()
            for job_id, status, created in rows:
                if before is not None and isinstance(created, int | float) and created > before:
                    continue
                try:
                    out.append((job_id, JobStatus(status)))
                except ValueError:
                    out.append((job_id, None))
        return out

    @staticmethod
    def _set_pending(
        conn: sqlite3.Connection, job_id: str, statuses: Sequence[JobStatus | None]
    ) -> None:
        # Only dependencies that exist and have not ended: a missing one will never
        # settle to count itself down (it decides as MISSING, like a failure).
        pending = sum(1 for s in statuses if s is not None and not s.is_final)
        conn.execute(
            "INSERT OR REPLACE INTO job_waits (dependent, pending) VALUES (?, ?)",
            (job_id, pending),
        )

    _COUNT_DOWN = (
        "UPDATE job_waits SET pending = pending + ? "
        "WHERE dependent IN (SELECT dependent FROM job_deps WHERE dependency = ?)"
    )

    def _release_dependents(
        self, conn: sqlite3.Connection, finals: list[tuple[str, JobStatus]], now: float
    ) -> None:
        """Re-decide the BLOCKED dependents of jobs that just became final (id, status),
        inside the write that made them final; each that ends final in turn has its own
        dependents decided (a worklist, not recursion: a chain may be long). A dependency
        that ended DONE decides only dependents it was the last one of. Jobs nothing
        depends on (all of a plain drain's) cost one statement per call, not two per job."""
        failpoints.hit("sqlite.before_release")  # inside the transaction: rolled back
        work = self._with_dependents(conn, finals)
        while work:
            dep_id, status = work.pop()
            conn.execute(self._COUNT_DOWN, (-1, dep_id))
            waiting = conn.execute(
                "SELECT d.dependent, w.pending FROM job_deps d JOIN jobs j "
                f"ON j.id = d.dependent AND j.status = {_BLOCKED} "
                "LEFT JOIN job_waits w ON w.dependent = d.dependent WHERE d.dependency = ?",
                (dep_id,),
            ).fetchall()
            for job_id, pending in waiting:
                if status is JobStatus.DONE and isinstance(pending, int) and pending > 0:
                    continue  # others still to end: nothing to decide yet
                branch = self._decide_blocked(conn, job_id, now)
                if branch is not None and branch.status is not None and branch.status.is_final:
                    work.append((job_id, branch.status))

    @staticmethod
    def _with_dependents(
        conn: sqlite3.Connection, finals: list[tuple[str, JobStatus]]
    ) -> list[tuple[str, JobStatus]]:
        """The (id, status) of ``finals`` that some job depends on (by job_deps' key)."""
        ids = list(dict.fromkeys(i for i, _ in finals))
        named: set[str] = set()
        for i in range(0, len(ids), 500):
            chunk = ids[i : i + 500]
            named.update(
                r[0]
                for r in conn.execute(
                    "SELECT DISTINCT dependency FROM job_deps WHERE dependency IN (%s)"
                    % ",".join("?" * len(chunk)),
                    chunk,
                )
            )
        return [f for f in finals if f[0] in named]

    def _decide_blocked(self, conn: sqlite3.Connection, job_id: str, now: float) -> Branch | None:
        """Decide one BLOCKED job against its dependencies' statuses as stored now."""
        row = conn.execute(
            f"SELECT options, at, created FROM jobs WHERE id = ? AND status = {_BLOCKED}",
            (job_id,),
        ).fetchone()
        if row is None:
            return None
        fields = dependencies.blocked_fields(row[0], row[1])
        if isinstance(fields, str):
            return None  # not decidable: the dependency sweep has it quarantined
        deps, on_failure, at = fields
        created = row[2] if isinstance(row[2], int | float) else None
        found = dict(self._statuses(conn, deps, before=created))
        decision = dependencies.decide(
            [(d, found.get(d)) for d in deps], on_failure=on_failure, at=at, now=now
        )
        if decision is None:
            self._set_pending(conn, job_id, [found.get(d) for d in deps])  # as it is now
            return None
        applied = self._apply_branches(conn, "id = ?", [job_id], decision, None, now)
        return applied[0][1] if applied else None

    def sweep_dependencies(self, now: float) -> int:
        """BLOCKED jobs none of whose dependencies is still to end, decided: the release is
        in the settle's transaction, so only a record changed by hand (a dependency
        deleted, a count written wrong) leaves one waiting. Those whose fields cannot be
        decided on are kept for :meth:`malformed` (the nodes quarantine them). A page of
        ``_SWEEP_JOBS`` a pass, going on from where the last stopped."""
        after = self._swept_after or ""
        rows = self._read(
            lambda c: c.execute(
                f"SELECT j.seq, j.id, j.options, j.at FROM jobs j WHERE j.status = {_BLOCKED} "
                "AND typeof(j.id) = 'text' AND j.id > ? AND NOT EXISTS (SELECT 1 FROM job_deps d "
                "JOIN jobs x ON x.id = d.dependency WHERE d.dependent = j.id "
                "AND x.status NOT IN (3, 4, 5, 6) AND x.created <= j.created) "
                "ORDER BY j.id LIMIT ?",
                (after, _SWEEP_JOBS),
            ).fetchall()
        )
        self._swept_after = rows[-1][1] if len(rows) == _SWEEP_JOBS else None
        decided = 0
        for seq, job_id, options, at in rows:
            why = dependencies.blocked_fields(options, at)
            if isinstance(why, str):
                self._undecidable[job_id] = (seq, why)
                continue

            def run(job_id: str = job_id) -> Branch | None:
                with self._write() as conn:
                    branch = self._decide_blocked(conn, job_id, now)
                    if branch is not None and branch.status is not None and branch.status.is_final:
                        self._release_dependents(conn, [(job_id, branch.status)], now)
                    return branch

            if self._guard(run) is not None:
                decided += 1
        return decided

    def dependency_states(
        self, ids: Sequence[str]
    ) -> dict[str, tuple[JobStatus | None, float | None]]:
        rows = self._read(
            lambda c: c.execute(
                "SELECT id, status, created FROM jobs WHERE id IN (SELECT value FROM json_each(?))",
                (json.dumps(list(ids)),),
            ).fetchall()
        )
        return {r[0]: decode_state(r[1], r[2]) for r in rows if isinstance(r[0], str)}

    def dependency_results(self, ids: Sequence[str]) -> dict[str, tuple[Any, int]]:
        rows = self._read(
            lambda c: c.execute(
                "SELECT id, result FROM jobs WHERE id IN (SELECT value FROM json_each(?))",
                (json.dumps(list(ids)),),
            ).fetchall()
        )
        return {
            r[0]: (decode_result(r[1]), len(r[1]) if isinstance(r[1], str) else 0)
            for r in rows
            if isinstance(r[0], str)
        }

    def dependents(self, job_id: str) -> list[JobRecord]:
        rows = self._read(
            lambda c: c.execute(
                f"SELECT {', '.join('j.' + n.strip() for n in _COLUMNS.split(','))} "
                "FROM job_deps d JOIN jobs j ON j.id = d.dependent WHERE d.dependency = ? "
                "ORDER BY j.seq",
                (job_id,),
            ).fetchall()
        )
        return [_row_to_job(r) for r in rows]

    def insert_once(self, job: NewJob, same: Any, replace: Transition) -> tuple[JobRecord, bool]:
        try:
            with self._write() as conn:
                row = conn.execute(
                    f"SELECT {_COLUMNS} FROM jobs WHERE once_key = ?", (job.once_key,)
                ).fetchone()
                if row is not None:
                    existing = _row_to_job(row)
                    if same(existing):
                        return existing, False
                    self._apply_in(conn, "id = ?", [existing.id], replace, None, job.created)
                self._insert_row(conn, job)
        except sqlite3.IntegrityError as exc:
            if "jobs.id" in str(exc):
                raise DuplicateJobId(job.id) from None
            raise self._error(exc) from None
        except sqlite3.Error as exc:
            raise self._error(exc) from None
        return self.get(job.id), True

    def _apply_in(
        self,
        conn: sqlite3.Connection,
        where: str,
        wargs: list[Any],
        transition: Transition,
        token: str | None,
        now: float,
        finals_out: list[tuple[str, JobStatus]] | None = None,
    ) -> list[tuple[str, Branch]]:
        """:meth:`_apply_branches`, then, in the same transaction: a job it made BLOCKED
        (a retried dependent) decided against its dependencies, and the release or cancel
        of the BLOCKED dependents of every job it made final: exactly once, with the
        write that made their dependency final (settle, cancel, expire, reap...). With
        ``finals_out`` the jobs made final are appended there instead, for the caller to
        release in the same transaction (a batch of settles: one look-up for all)."""
        applied = self._apply_branches(conn, where, wargs, transition, token, now)
        finals = [(i, b.status) for i, b in applied if b.status is not None and b.status.is_final]
        for job_id, branch in applied:
            status = branch.status
            if status is None or status.is_final:
                continue
            if all(s.is_final for s in branch.guard.statuses):
                conn.execute(self._COUNT_DOWN, (1, job_id))  # retried: not final again
            if status is JobStatus.BLOCKED:  # a retried dependent: decided at once
                decided = self._decide_blocked(conn, job_id, now)
                if decided is not None and decided.status is not None and decided.status.is_final:
                    finals.append((job_id, decided.status))
        if finals_out is not None:
            finals_out.extend(finals)
        elif finals:
            self._release_dependents(conn, finals, now)
        return applied

    def _apply_branches(
        self,
        conn: sqlite3.Connection,
        where: str,
        wargs: list[Any],
        transition: Transition,
        token: str | None,
        now: float,
    ) -> list[tuple[str, Branch]]:
        """Apply ``transition`` inside a write transaction to the records ``where``
        addresses: per record, the first branch whose guard holds (each branch one
        guarded UPDATE, so a record changed by an earlier branch is not matched again).
        Records the events and inserts the follow-up jobs; returns (id, branch) applied."""
        applied: list[tuple[str, Branch]] = []
        single = where == "id = ?"
        for branch in transition.branches:
            if single and applied:
                break  # the one record changed: no later branch may apply to it
            sets, sargs = change_sql(branch.change, now)
            guard, gargs = guard_sql(branch.guard, token, now)
            rows = conn.execute(
                f"UPDATE jobs SET {sets} WHERE {where} AND {guard} "
                "RETURNING id, attempt, cls, queue, node, worker",
                [*sargs, *wargs, *gargs],
            ).fetchall()
            for job_id, attempt, cls, queue, node, worker in rows:
                if branch.event:
                    self._event(
                        conn, job_id, now, branch.event_status, attempt, cls, queue,
                        node, worker, branch.change.error, branch.reason,
                    )  # fmt: skip
                if branch.next_job is not None:
                    self._insert_row(conn, branch.next_job, ignore=True)
                applied.append((job_id, branch))
        return applied

    def apply(
        self, job_id: str, transition: Transition, *, now: float, token: str | None = None
    ) -> Branch | None:
        def run() -> Branch | None:
            with self._write() as conn:
                done = self._apply_in(conn, "id = ?", [job_id], transition, token, now)
                return done[0][1] if done else None

        return self._guard(run)

    def apply_series(
        self, series: str, transition: Transition, *, now: float
    ) -> list[tuple[str, Branch]]:
        # One transaction: a settle that would create the next occurrence either ran
        # before (its occurrence is among those changed here) or runs after and finds
        # the cancel request on the job it settles.
        def run() -> list[tuple[str, Branch]]:
            with self._write() as conn:
                return self._apply_in(
                    conn, f"(series = ? OR id = ?) AND status NOT IN ({_FINAL_SQL})",
                    [series, series], transition, None, now,
                )  # fmt: skip

        return self._guard(run)

    # A row whose id is not text (another client's) is left to the quarantine sweep:
    # no later write could address it by the id a claim hands out (_Pick reads only
    # rows with a text id).
    _BY_SEQ = "WHERE seq = ?"

    def _claim_row(
        self,
        conn: sqlite3.Connection,
        where: str,
        wargs: list[Any],
        *,
        token: str,
        lease: float,
        node: str,
        worker: str,
        now: float,
    ) -> JobRecord | None:
        """The claim statement and its event, inside a write transaction."""
        # The lease runs from when the write lock was ours, not from the caller's `now`:
        # BEGIN IMMEDIATE may have waited out a lock for up to busy_timeout, and a lease
        # counted from before that wait could be over at commit (and the job reaped).
        if self._lock_wait > LOCK_WAIT_SHIFT:
            now += self._lock_wait
        branch = transitions.claim(ClaimFields(token, now + lease, node, worker))
        sets, sargs = change_sql(branch.change, now)
        row = conn.execute(
            f"UPDATE jobs SET {sets} " + where + f" RETURNING {_COLUMNS}", [*sargs, *wargs]
        ).fetchone()
        if row is None:
            return None
        job = _row_to_job(row)
        self._event(
            conn, job.id, now, branch.event_status, job.attempt, job.cls, job.queue, node,
            worker,
        )  # fmt: skip
        return job

    def claim(
        self,
        queues: Sequence[str],
        *,
        node: str,
        worker: str,
        token: str,
        lease: float,
        now: float,
        force_spawn: bool = False,
        job_id: str | None = None,
    ) -> JobRecord | None:
        if job_id is not None:
            claimable, cargs = guard_sql(transitions.CLAIMABLE, None, now)
            where = (
                f"WHERE id = ? AND {claimable} AND seq IN (SELECT seq FROM jobs c "
                f"WHERE id = ? AND {_NOT_HELD})"
            )
        spawn = int(force_spawn)

        def due(c: sqlite3.Connection, queue: str) -> bool:
            return _Pick(c, _Gates.read(c, now, worker)).best(queue, spawn, now) is not None

        targets: Sequence[str | None] = [None] if job_id is not None else queues
        with self._lock:
            for queue in targets:
                # A cheap read first keeps idle polling from taking the write lock.
                if queue is not None and not self._read(functools.partial(due, queue=queue)):
                    continue
                try:
                    with self._write() as conn:
                        gates = _Gates.read(conn, now, worker)
                        if queue is None:
                            wargs = [job_id, *cargs, job_id, *gates.args(now)]
                        else:
                            seq = _Pick(conn, gates).best(queue, spawn, now)
                            if seq is None:
                                continue
                            where, wargs = self._BY_SEQ, [seq]
                        # Claimed at the rate's time (its event, its start): a rate's
                        # log and the claims it allowed then tell the same times.
                        job = self._claim_row(
                            conn, where, wargs, token=token, lease=lease,
                            node=node, worker=worker, now=gates.clock,
                        )  # fmt: skip
                        if job is None:
                            continue
                        gates.took(conn, job, now)
                except sqlite3.Error as exc:
                    raise self._error(exc) from None
                return job
        return None

    def _any_due(self, claim: ClaimRequest, now: float) -> bool:
        spawn = int(claim.force_spawn)

        def look(c: sqlite3.Connection) -> bool:
            pick = _Pick(c, _Gates.read(c, now, claim.worker))
            return any(pick.best(q, spawn, now) is not None for q in claim.queues)

        return self._read(look)

    def settle(
        self, job_id: str, token: str, transition: Transition, *, now: float
    ) -> Branch | None:
        return self.apply(job_id, transition, now=now, token=token)

    def settle_batch(
        self,
        settles: Sequence[tuple[str, str, Transition]],
        *,
        now: float,
        claim: ClaimRequest | None = None,
    ) -> tuple[list[Branch | None], list[JobRecord]]:
        """One transaction, one fsync'd commit: the fenced settles (each with its event
        and next occurrence), then the claims (each with its event)."""
        if not settles and (claim is None or not self._any_due(claim, now)):
            return [], []  # idle polling never takes the write lock
        try:
            with self._write() as conn:
                finals: list[tuple[str, JobStatus]] = []
                done = [self._settle_in(conn, j, t, tr, now, finals) for j, t, tr in settles]
                if finals:  # before the claims: a dependent released here may be claimed
                    self._release_dependents(conn, finals, now)
                jobs: list[JobRecord] = []
                if claim is None:
                    return done, jobs
                spawn = int(claim.force_spawn)
                gates = _Gates.read(conn, now, claim.worker)
                pick = _Pick(conn, gates)
                for q in claim.queues:
                    while len(jobs) < claim.limit:
                        seq = pick.best(q, spawn, now)
                        job = None if seq is None else self._claim_row(
                            conn, self._BY_SEQ, [seq],
                            token=claim.token_for(len(jobs)), lease=claim.lease,
                            node=claim.node, worker=claim.worker, now=gates.clock,
                        )  # fmt: skip
                        if job is None:
                            break
                        gates.took(conn, job, now)
                        jobs.append(job)
                return done, jobs
        except sqlite3.Error as exc:
            raise self._error(exc) from None

    def _settle_in(
        self,
        conn: sqlite3.Connection,
        job_id: str,
        token: str,
        tr: Transition,
        now: float,
        finals: list[tuple[str, JobStatus]] | None = None,
    ) -> Branch | None:
        done = self._apply_in(conn, "id = ?", [job_id], tr, token, now, finals)
        return done[0][1] if done else None

    def renew_many(self, tokens: Iterable[str], branch: Branch, *, now: float) -> int:
        toks = list(tokens)
        if not toks:
            return 0
        sets, sargs = change_sql(branch.change, now)

        def run() -> int:
            total = 0
            with self._write() as conn:
                for i in range(0, len(toks), 500):
                    chunk = toks[i : i + 500]
                    guard, gargs = guard_sql(replace(branch.guard, held=False), None, now)
                    cur = conn.execute(
                        f"UPDATE jobs SET {sets} WHERE {guard} AND claim_token IN (%s)"
                        % ",".join("?" * len(chunk)),
                        [*sargs, *gargs, *chunk],
                    )
                    total += cur.rowcount
            return total

        return self._guard(run)  # a statement can fail too (disk full), not only COMMIT

    def expired(self, now: float, limit: int = 100) -> list[JobRecord]:
        rows = self._read(
            lambda c: c.execute(
                f"SELECT {_COLUMNS} FROM jobs INDEXED BY jobs_lease "
                "WHERE status = 2 AND lease_until < ? "
                "ORDER BY lease_until LIMIT ?",
                (now, limit),
            ).fetchall()
        )
        return [_row_to_job(r) for r in rows]

    def malformed(self, limit: int = 100) -> list[JobRecord]:
        rows = self._read(
            lambda c: c.execute(
                f"SELECT seq, {_COLUMNS} FROM jobs WHERE {_MALFORMED} ORDER BY seq LIMIT ?",
                (limit,),
            ).fetchall()
        )
        out = []
        self._malformed_seqs.clear()
        for seq, *row in rows:
            record = _row_to_job(row)
            if record.corrupt is None:  # decodes, yet claims cannot compare its fields
                record.corrupt = _malformed_why(tuple(row))
            self._malformed_seqs[record.id] = seq  # its id may not be text: address by seq
            out.append(record)
        # And the BLOCKED jobs the dependency sweep found it cannot decide on.
        for record in self._still_undecidable(self._undecidable, limit - len(out)):
            seq, why = self._undecidable[record.id]
            record.corrupt = record.corrupt or why
            self._malformed_seqs[record.id] = seq
            out.append(record)
        return out

    def quarantine(self, record: JobRecord, transition: Transition, *, now: float) -> bool:
        seq = self._malformed_seqs.get(record.id)
        if seq is None:
            return False  # not from this store's malformed(): nothing to fence with
        change = transition.intended.change
        # Errors replaced whatever the transition says: they may not be a list to append to.
        change = replace(change, error=None, reset_errors=False)
        sets, sargs = change_sql(change, now)
        error = transition.intended.change.error
        error_json = json.dumps(error.to_dict()) if error else None

        # Still malformed; or, one the dependency sweep could not decide on, still BLOCKED.
        fence = f"status = {_BLOCKED}" if self._undecidable.pop(record.id, None) else _MALFORMED

        def run() -> bool:
            with self._write() as conn:
                cur = conn.execute(
                    f"UPDATE jobs SET {sets}, "
                    "errors = CASE WHEN ? IS NULL THEN '[]' ELSE json_array(json(?)) END "
                    f"WHERE seq = ? AND {fence}",
                    [*sargs, error_json, error_json, seq],
                )
                if cur.rowcount != 1:
                    return False
                self._event(
                    conn, record.id, now, transition.intended.event_status, record.attempt, record.cls,
                    record.queue, record.node, record.worker, error,
                    transition.intended.reason,
                )  # fmt: skip
                status = transition.intended.status
                if status is not None and status.is_final and isinstance(record.id, str):
                    self._release_dependents(conn, [(record.id, status)], now)
                return True

        return self._guard(run)

    # -- reading ----------------------------------------------------------------------
    def get(self, job_id: str) -> JobRecord:
        row = self._read(
            lambda c: c.execute(f"SELECT {_COLUMNS} FROM jobs WHERE id = ?", (job_id,)).fetchone()
        )
        if row is None:
            raise JobNotFound(job_id)
        return _row_to_job(row)

    def find(self, query: JobQuery) -> list[JobRecord]:
        where: list[str] = []
        args: list[Any] = []

        def among(column: str, values: Sequence[Any]) -> None:
            if values:
                where.append(f"{column} IN ({','.join('?' * len(values))})")
                args.extend(values)

        among("status", [int(s) for s in query.statuses])
        among("cls", list(query.classes))
        among("queue", list(query.queues))
        if query.ids:
            # One variable however many: SQLite before 3.32 binds at most 999.
            where.append("id IN (SELECT value FROM json_each(?))")
            args.append(json.dumps(list(query.ids)))
        if query.series is not None:
            where.append("(series = ? OR id = ?)")
            args.extend([query.series, query.series])
        if query.since is not None:
            where.append("created >= ?")
            args.append(query.since)
        if query.until is not None:
            where.append("created < ?")
            args.append(query.until)
        if query.before_seq is not None:
            where.append("seq < ?")
            args.append(query.before_seq)
        if query.after_seq is not None:
            where.append("seq > ?")
            args.append(query.after_seq)
        if query.id_prefix:  # a range on the id index: LIKE would read % and _
            where.append("id >= ?")
            args.append(query.id_prefix)
            end = prefix_end(query.id_prefix)
            if end is not None:
                where.append("id < ?")
                args.append(end)
        if query.recurring:
            where.append(_RECURRING)
        order = " ORDER BY seq DESC" if query.newest_first else " ORDER BY seq"
        limit: list[Any] = [] if query.limit is None else [query.limit]
        cond = (" WHERE " + " AND ".join(where)) if where else ""

        def run(c: sqlite3.Connection) -> list[Any]:
            plan = _plan(c, query) if where else None
            if plan is None:
                sql = f"SELECT {_COLUMNS} FROM jobs{cond}{order}"
            elif plan.endswith("!"):  # sort the matching seqs only, then read those rows
                sql = (
                    f"SELECT {_COLUMNS} FROM jobs WHERE seq IN (SELECT seq FROM jobs "
                    f"INDEXED BY {plan[:-1]}{cond}{order}{' LIMIT ?' if limit else ''}){order}"
                )
                return c.execute(sql, [*args, *limit]).fetchall()
            else:
                sql = f"SELECT {_COLUMNS} FROM jobs {plan}{cond}{order}"
            if limit:
                sql += " LIMIT ?"
            return c.execute(sql, [*args, *limit]).fetchall()

        jobs = [_row_to_job(r) for r in self._read(run)]
        if query.recurring:  # the index holds candidates: keep the jobs that recur
            jobs = [j for j in jobs if j.corrupt is None and (j.options.interval or j.options.cron)]
        return jobs

    def counts(self) -> list[tuple[Any, Any, Any, int]]:
        return self._read(
            lambda c: [
                (status, queue, cls, int(n))
                for status, queue, cls, n in c.execute(
                    "SELECT status, queue, cls, n FROM job_counts WHERE n > 0"
                )
            ]
        )

    def cancel_requested(self, tokens: Iterable[str]) -> list[str]:
        toks = list(tokens)
        if not toks:
            return []
        out: list[str] = []
        for i in range(0, len(toks), 500):
            chunk = toks[i : i + 500]
            rows = self._read(
                lambda c, chunk=chunk: c.execute(  # type: ignore[misc]
                    "SELECT claim_token FROM jobs WHERE cancel_requested = 1 AND status = 2 "
                    "AND claim_token IN (%s)" % ",".join("?" * len(chunk)),
                    chunk,
                ).fetchall()
            )
            out.extend(r[0] for r in rows)
        return out

    def count_due(
        self, queues: Sequence[str], *, now: float, force_spawn: bool, limit: int | None = None
    ) -> int:
        if not queues:
            return 0

        def run(c: sqlite3.Connection) -> int:
            # A held-back job needs no worker. A capped count stays cheap behind a deep
            # backlog (a full one costs ~0.1 s per million jobs; a pool needs no more).
            cap = None if limit is None else max(0, limit)
            return _Pick(c, _Gates.read(c, now)).count(queues, int(force_spawn), now, cap)

        return self._read(run)

    def next_due(self, queues: Sequence[str]) -> float | None:
        if not queues:
            return None
        marks = ",".join("?" * len(queues))
        now = time.time()

        def run(c: sqlite3.Connection) -> float | None:
            gates = _Gates.read(c, now)
            pick = _Pick(c, gates)
            # Due now and not held back: due. Else the earliest job still to come (a
            # held-back one too: its limit may have room by then; a wake-up or a poll
            # tells), or a closed rate's next start. A closed limit's jobs due now are
            # not walked (_Pick).
            due = pick.earliest(queues, now)
            if due is not None:
                return due
            due = pick.later(queues, now)
            for name in gates.closed:  # a rate window that opens later
                spec = gates.specs[name]
                full = (
                    spec.max_running is not None and gates.running.get(name, 0) >= spec.max_running
                )
                opens = None if spec.rate is None else spec.rate.next_start(gates.starts[name], now)
                if full or opens is None:
                    continue
                waiting = c.execute(
                    f"SELECT 1 FROM jobs WHERE {_CLAIMABLE} AND lim = ? AND at <= ? "
                    f"AND queue IN ({marks}) LIMIT 1",
                    [name, now, *queues],
                ).fetchone()
                if waiting and (due is None or opens < due):
                    due = opens
            return due

        return self._read(run)

    # -- limits -------------------------------------------------------------------------
    def set_limit(self, spec: LimitSpec) -> None:
        rate = spec.rate

        def run() -> None:
            with self._write() as conn:
                conn.execute(
                    "INSERT INTO limits (name, max_running, rate_count, rate_period) "
                    "VALUES (?, ?, ?, ?) ON CONFLICT(name) DO UPDATE SET "
                    "max_running = excluded.max_running, rate_count = excluded.rate_count, "
                    "rate_period = excluded.rate_period",
                    (spec.name, spec.max_running, rate and rate.count, rate and rate.period),
                )

        self._guard(run)

    def delete_limit(self, name: str) -> bool:
        def run() -> bool:
            with self._write() as conn:
                return conn.execute("DELETE FROM limits WHERE name = ?", (name,)).rowcount > 0

        return self._guard(run)

    def limits(self, *, now: float) -> list[LimitState]:
        def run(c: sqlite3.Connection) -> list[LimitState]:
            gates = _Gates.read(c, now)
            waiting = {
                name: int(n)
                for name, n in c.execute(
                    "SELECT lim, COUNT(*) FROM jobs INDEXED BY jobs_lim_waiting "
                    f"WHERE {_CLAIMABLE} AND lim IS NOT NULL "
                    "AND at <= ? GROUP BY lim",
                    (now,),
                )
            }
            return [
                LimitState(
                    spec,
                    gates.running.get(name, 0),
                    waiting.get(name, 0),
                    tuple(limits.window(gates.starts.get(name, []), now, spec.rate.period))
                    if spec.rate is not None
                    else (),
                )
                for name, spec in sorted(gates.specs.items())
            ]

        return self._read(run)

    def limit_specs(self) -> list[LimitSpec]:
        def run(c: sqlite3.Connection) -> list[LimitSpec]:
            rows = c.execute("SELECT name, max_running, rate_count, rate_period FROM limits")
            specs = [spec for spec in map(_limit_spec, rows) if spec is not None]
            return sorted(specs, key=lambda spec: spec.name)

        return self._read(run)

    def key_holders(self, keys: Sequence[str], *, now: float) -> dict[str, str]:
        if not keys:
            return {}
        rows = self._read(
            lambda c: c.execute(
                "SELECT xkey, id FROM jobs INDEXED BY jobs_xkey_running "
                "WHERE status = 2 AND xkey IN "
                "(SELECT value FROM json_each(?)) AND lease_until >= ?",
                (json.dumps(list(keys)), now),
            ).fetchall()
        )
        return {str(k): str(i) for k, i in rows}

    def stat_rows(self, *, now: float, since: float) -> StatRows:
        def run(c: sqlite3.Connection) -> StatRows:
            # One read transaction: the three answers are of the same moment.
            groups = c.execute(  # kept exact by triggers: no pass over the jobs
                "SELECT status, queue, cls, n FROM job_counts WHERE n > 0"
            ).fetchall()
            oldest = c.execute(  # the two parts of the claim index
                "SELECT queue, MIN(m) FROM ("
                f"SELECT queue, MIN(at) AS m FROM jobs {_CLAIM_FREE} WHERE {_CLAIMABLE} "
                "AND lim IS NULL AND at <= ? GROUP BY queue UNION ALL "
                f"SELECT queue, MIN(at) FROM jobs {_CLAIM_GATED} WHERE {_CLAIMABLE} "
                "AND lim IS NOT NULL AND at <= ? GROUP BY queue) GROUP BY queue",
                (now, now),
            ).fetchall()
            ended = c.execute(  # the jobs_ended index
                f"SELECT status, COUNT(*) FROM jobs WHERE status IN ({_FINAL_SQL}) "
                "AND ended >= ? GROUP BY status",
                (since,),
            ).fetchall()
            return StatRows(groups=groups, oldest_due=oldest, ended=ended)

        return self._read(run)

    # -- events -------------------------------------------------------------------------
    def events(
        self,
        *,
        after: int = 0,
        job_ids: Sequence[str] = (),
        limit: int = 1000,
        since: float | None = None,
    ) -> list[EventRecord]:
        sql = f"SELECT * FROM events WHERE seq > ? AND status != {EVENT_FLOOR}"
        args: list[Any] = [after]
        if len(job_ids) == 1:
            sql += " AND job_id = ?"
            args.append(job_ids[0])
        elif job_ids:  # one variable however many ids
            sql += " AND job_id IN (SELECT value FROM json_each(?))"
            args.append(json.dumps(list(job_ids)))
        if since is not None:
            sql += " AND time >= ?"
            args.append(since)
        sql += " ORDER BY seq LIMIT ?"
        args.append(limit)
        rows = self._read(lambda c: c.execute(sql, args).fetchall())
        return [_row_to_event(r) for r in rows]

    def last_event_seq(self) -> int:
        row = self._read(lambda c: c.execute("SELECT MAX(seq) FROM events").fetchone())
        return int(row[0] or 0)

    def waker(self) -> Waker:
        return self._notify.listen(self._changed)

    def _changed(self) -> bool:
        """Whether a commit happened since the last call, by another connection or this
        one (a wake-up was for something); True when that cannot be told without waiting
        or connecting."""
        conn = self._conn_obj
        if conn is None or self._pid != os.getpid() or not self._lock.acquire(blocking=False):
            return True
        try:
            version = (conn.execute("PRAGMA data_version").fetchone()[0], self._notify.posts)
        except sqlite3.Error:
            return True
        finally:
            self._lock.release()
        changed = version != self._data_version
        self._data_version = version
        return changed

    # -- housekeeping ----------------------------------------------------------------------
    def purge(self, *, statuses: Sequence[JobStatus], ended_before: float) -> int:
        finals = [int(s) for s in statuses if s.is_final]
        if not finals:
            return 0
        marks = ",".join("?" * len(finals))
        total = 0
        while True:
            # Small batches keep the write lock short while workers claim.
            def batch(conn: sqlite3.Connection) -> int:
                # A job whose dependent has not ended yet stays: the dependent reads its
                # result when claimed (and again on each retry).
                ids = [
                    r[0]
                    for r in conn.execute(
                        f"SELECT id FROM jobs WHERE status IN ({marks}) AND ended < ? "
                        "AND NOT EXISTS (SELECT 1 FROM job_deps d JOIN jobs b "
                        "ON b.id = d.dependent AND b.status NOT IN "
                        f"({_FINAL_SQL}) WHERE d.dependency = jobs.id) LIMIT 500",
                        [*finals, ended_before],
                    )
                ]
                if not ids:
                    return 0
                q = ",".join("?" * len(ids))
                (top,) = conn.execute("SELECT MAX(seq) FROM events").fetchone()
                conn.execute(f"DELETE FROM events WHERE job_id IN ({q})", ids)
                conn.execute(f"DELETE FROM jobs WHERE id IN ({q})", ids)
                conn.execute(f"DELETE FROM job_deps WHERE dependent IN ({q})", ids)
                # And as a dependency (of jobs all ended): a job added later under a
                # purged id is another job, which the ended ones never waited for.
                conn.execute(f"DELETE FROM job_deps WHERE dependency IN ({q})", ids)
                conn.execute(f"DELETE FROM job_waits WHERE dependent IN ({q})", ids)
                _hold_event_floor(conn, top)
                return len(ids)

            def run() -> int:
                with self._write() as conn:
                    return batch(conn)

            n = self._guard(run)
            total += n
            if n == 0:
                return total

    def flush(self) -> None:
        def run() -> None:
            with self._write() as conn:
                (top,) = conn.execute("SELECT MAX(seq) FROM events").fetchone()
                conn.execute("DELETE FROM events")
                conn.execute("DELETE FROM jobs")
                conn.execute("DELETE FROM job_deps")
                conn.execute("DELETE FROM job_waits")
                _hold_event_floor(conn, top)

        self._guard(run)

    # The instance and the liveness of each entry live in tables of their own: a column
    # added to ``nodes`` would break the ``SELECT *`` of taskschedd 0.4 clients reading the
    # same store.
    _ENTRIES = (
        "SELECT n.*, COALESCE(i.instance, ''), l.live_until, l.pid_ns, l.boot FROM nodes n "
        "LEFT JOIN node_instances i ON i.name = n.name "
        "LEFT JOIN node_liveness l ON l.name = n.name AND l.heartbeat = n.heartbeat"
    )
    _INSTANCE_OF = (
        "SELECT COALESCE(i.instance, '') FROM nodes n "
        "LEFT JOIN node_instances i ON i.name = n.name WHERE n.name = ?"
    )

    @staticmethod
    def _node_tables(conn: sqlite3.Connection) -> None:
        """Create the registry's own tables (a store created before 0.5 has neither)."""
        conn.execute(_NODE_INSTANCES_TABLE)
        conn.execute(_NODE_LIVENESS_TABLE)

    @staticmethod
    def _put_node(conn: sqlite3.Connection, node: NodeRecord) -> None:
        conn.execute(
            "INSERT OR REPLACE INTO nodes (name, host, pid, started, heartbeat, "
            "workers_busy, workers_idle, running, queues, version) "
            "VALUES (?,?,?,?,?,?,?,?,?,?)",
            (
                node.name,
                node.host,
                node.pid,
                node.started,
                node.heartbeat,
                node.workers_busy,
                node.workers_idle,
                json.dumps(list(node.running)),
                json.dumps(list(node.queues)),
                node.version,
            ),
        )
        conn.execute(
            "INSERT OR REPLACE INTO node_instances (name, instance) VALUES (?, ?)",
            (node.name, node.instance),
        )
        conn.execute(
            "INSERT OR REPLACE INTO node_liveness (name, heartbeat, live_until, pid_ns, boot) "
            "VALUES (?, ?, ?, ?, ?)",
            (node.name, node.heartbeat, node.live_until, node.pid_ns, node.boot),
        )

    def register_node(
        self, node: NodeRecord, *, now: float, window: float, replace: str | None = None
    ) -> NodeRecord | None:
        def run() -> NodeRecord | None:
            with self._write() as conn:  # BEGIN IMMEDIATE: one registration at a time
                self._node_tables(conn)
                row = conn.execute(f"{self._ENTRIES} WHERE n.name = ?", (node.name,)).fetchone()
                holder = decode_node(tuple(row)) if row is not None else None
                if (
                    holder is not None
                    and holder.live(now, window)
                    and holder.instance not in (node.instance, replace)
                ):
                    return holder
                self._put_node(conn, node)
                return None

        return self._guard(run)

    def heartbeat(self, node: NodeRecord) -> bool:
        def run() -> bool:
            with self._write() as conn:
                if not self._node_table_ready:
                    self._node_tables(conn)
                row = conn.execute(self._INSTANCE_OF, (node.name,)).fetchone()
                if row is not None and row[0] != node.instance:
                    return False
                self._put_node(conn, node)
                return True

        written = self._guard(run)
        self._node_table_ready = True
        return written

    def nodes(self, *, alive_after: float | None = None) -> list[NodeRecord]:
        where, args = (
            ("", []) if alive_after is None else (" WHERE n.heartbeat >= ?", [alive_after])
        )
        joined = f"{self._ENTRIES}{where} ORDER BY n.name"

        def read(conn: sqlite3.Connection) -> list[Any]:
            try:
                return conn.execute(joined, args).fetchall()
            except sqlite3.OperationalError as exc:
                if "no such table: node_" not in str(exc):
                    raise
            # No registry write since the store was created: no instances yet.
            return conn.execute(f"SELECT n.* FROM nodes n{where} ORDER BY n.name", args).fetchall()

        rows = self._read(read)
        nodes = (decode_node(tuple(r)) for r in rows)
        return [n for n in nodes if n is not None]

    def remove_node(self, name: str, instance: str | None = None) -> None:
        def run() -> None:
            with self._write() as conn:
                self._node_tables(conn)
                if instance is not None:
                    row = conn.execute(self._INSTANCE_OF, (name,)).fetchone()
                    if row is None or row[0] != instance:
                        return
                conn.execute("DELETE FROM nodes WHERE name = ?", (name,))
                conn.execute("DELETE FROM node_instances WHERE name = ?", (name,))
                conn.execute("DELETE FROM node_liveness WHERE name = ?", (name,))

        self._guard(run)

    def close(self) -> None:
        if self._conn_obj is not None and self._pid == os.getpid():
            with contextlib.suppress(sqlite3.Error):
                self._conn_obj.close()
        self._conn_obj = None
        self._notify.close()
