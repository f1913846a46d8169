"""The SQLite store's schema: version 2's indexes, the upgrade of a version 1 file in place,
and event seqs that are never handed out twice (followers keep a cursor)."""

from __future__ import annotations

import multiprocessing
import sqlite3
import time
from pathlib import Path

import pytest

from taskschedd.errors import StoreError
from taskschedd.limits import LimitSpec
from taskschedd.model import FINAL, JobQuery, JobStatus
from taskschedd.store.sqlite import SCHEMA_VERSION, SQLiteStore
from tests.helpers import settlement
from tests.store.test_contract import finish, must_claim, new_job

#: The schema 1 DDL as released (taskschedd 0.1), to build files the upgrade must take.
V1_DDL = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE jobs (
    seq INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE, cls TEXT NOT NULL, data TEXT NOT NULL,
    status INTEGER NOT NULL, queue TEXT NOT NULL, priority INTEGER NOT NULL,
    spawn INTEGER NOT NULL, at REAL NOT NULL, created REAL NOT NULL, started REAL,
    ended REAL, attempt INTEGER NOT NULL DEFAULT 0, options TEXT NOT NULL, result TEXT,
    errors TEXT NOT NULL DEFAULT '[]', progress REAL NOT NULL DEFAULT 0, reason TEXT,
    node TEXT, worker TEXT, claim_token TEXT, lease_until REAL,
    cancel_requested INTEGER NOT NULL DEFAULT 0, series TEXT,
    series_seq INTEGER NOT NULL DEFAULT 0, once_key TEXT, updated REAL
);
CREATE INDEX jobs_claim ON jobs(queue, spawn, priority DESC, at, seq) WHERE status IN (0, 1);
CREATE UNIQUE INDEX jobs_token ON jobs(claim_token) WHERE claim_token IS NOT NULL;
CREATE INDEX jobs_lease ON jobs(lease_until) WHERE status = 2;
CREATE UNIQUE INDEX jobs_once ON jobs(once_key) WHERE once_key IS NOT NULL;
CREATE INDEX jobs_status_ended ON jobs(status, ended);
CREATE INDEX jobs_created ON jobs(created);
CREATE INDEX jobs_series ON jobs(series, series_seq);
CREATE TABLE events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, job_id TEXT NOT NULL, time REAL NOT NULL,
    status INTEGER NOT NULL, attempt INTEGER NOT NULL, cls TEXT NOT NULL,
    queue TEXT NOT NULL, node TEXT, worker TEXT, error TEXT, reason TEXT
);
CREATE INDEX events_job ON events(job_id, seq);
CREATE INDEX events_time ON events(time);
CREATE TABLE nodes (
    name TEXT PRIMARY KEY, host TEXT NOT NULL, pid INTEGER NOT NULL, started REAL NOT NULL,
    heartbeat REAL NOT NULL, workers_busy INTEGER NOT NULL, workers_idle INTEGER NOT NULL,
    running TEXT NOT NULL, queues TEXT NOT NULL, version TEXT NOT NULL
);
INSERT INTO meta VALUES ('schema', '1');
"""
OPTS = '{"interval":0.0,"queue":"default"}'
CLS = "taskschedd.examples.jobs.Echo"


def make_v1(path: Path) -> float:
    """A schema 1 store as 0.1 left it: a waiting job, a done job, a series member, and a
    deleted newest event (the AUTOINCREMENT counter is ahead of the newest row)."""
    now = time.time()
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.executescript(V1_DDL)
    jobs = [
        ("waiting", 0, None, None, 0),
        ("done", 3, now - 100, None, 0),
        ("s1", 3, now - 50, "s1", 0),
        ("s1.1", 0, None, "s1", 1),
    ]
    for job_id, status, ended, series, series_seq in jobs:
        conn.execute(
            "INSERT INTO jobs (id, cls, data, status, queue, priority, spawn, at, created, "
            "ended, options, series, series_seq, updated) "
            "VALUES (?, ?, '{\"n\":1}', ?, 'default', 0, 0, ?, ?, ?, ?, ?, ?, ?)",
            (job_id, CLS, status, now - 200, now - 200, ended, OPTS, series, series_seq, now),
        )
        conn.execute(
            "INSERT INTO events (job_id, time, status, attempt, cls, queue, reason) "
            "VALUES (?, ?, 0, 0, ?, 'default', 'added')",
            (job_id, now - 200, CLS),
        )
    conn.execute(
        "INSERT INTO events (job_id, time, status, attempt, cls, queue) "
        "VALUES ('gone', ?, 3, 1, ?, 'default')",
        (now - 10, CLS),
    )
    conn.execute("DELETE FROM events WHERE job_id = 'gone'")  # counter stays at 5
    conn.close()
    return now


def schema_of(store: SQLiteStore) -> dict[str, str]:
    rows = store._conn.execute(
        "SELECT name, sql FROM sqlite_master WHERE type IN ('table', 'index') AND sql IS NOT NULL"
    ).fetchall()
    return {name: sql for name, sql in rows}


def check_v2(store: SQLiteStore) -> None:
    """The schema is the current one (6: version 2's, the dependency tables, limits, the
    counts and list indexes, the claim index in two parts)."""
    conn = store._conn
    assert conn.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone() == ("6",)
    ddl = schema_of(store)
    assert "AUTOINCREMENT" not in ddl["events"]
    assert "events_time" not in ddl and "jobs_status_ended" not in ddl
    assert "WHERE ended IS NOT NULL" in ddl["jobs_ended"]
    assert "WHERE series IS NOT NULL" in ddl["jobs_series"]
    assert {"jobs_token", "jobs_lease", "jobs_once", "jobs_created"} <= set(ddl)
    assert "events_job" in ddl
    assert "PRIMARY KEY (dependency, dependent)" in ddl["job_deps"]
    assert "job_deps_dependent" in ddl
    # Schema 4: limits (the columns a claim counts and skips by, the definitions).
    assert {"lim", "xkey"} <= {r[1] for r in conn.execute("PRAGMA table_info(jobs)")}
    assert "PRIMARY KEY" in ddl["limits"]
    assert {"jobs_lim_running", "jobs_xkey_running", "jobs_lim_waiting"} <= set(ddl)
    # Schema 5: exact counts kept by triggers, the indexes of job lists.
    assert "WITHOUT ROWID" in ddl["job_counts"]
    assert {"jobs_status", "jobs_queue", "jobs_cls", "jobs_recurring"} <= set(ddl)
    triggers = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'")}
    assert triggers == {"jobs_count_insert", "jobs_count_delete", "jobs_count_update"}
    # Schema 6: the claim index in two parts, the jobs without a limit and by limit.
    assert "jobs_claim" not in ddl
    assert "lim IS NULL" in ddl["jobs_claim_free"]
    assert "lim IS NOT NULL" in ddl["jobs_claim_gated"]
    assert "ON jobs(lim, queue, spawn" in ddl["jobs_claim_lim"]


def as_schema_5(conn: sqlite3.Connection) -> None:
    """Make a current store's schema what taskschedd 0.8.0 wrote (one claim index)."""
    conn.execute("DROP INDEX jobs_claim_free")
    conn.execute("DROP INDEX jobs_claim_gated")
    conn.execute("DROP INDEX jobs_claim_lim")
    conn.execute(
        "CREATE INDEX jobs_claim ON jobs(queue, spawn, priority DESC, at, seq) "
        "WHERE status IN (0, 1)"
    )
    conn.execute("UPDATE meta SET value = '5' WHERE key = 'schema'")


def test_a_new_store_has_schema_6(tmp_path: Path) -> None:
    assert SCHEMA_VERSION == 6
    store = SQLiteStore(f"sqlite:///{tmp_path}/jobs.db", create=True)
    try:
        store.insert([new_job("a")])
        check_v2(store)
    finally:
        store.close()


def test_a_v1_store_is_upgraded_in_place_and_keeps_its_jobs_and_events(tmp_path: Path) -> None:
    db = tmp_path / "jobs.db"
    now = make_v1(db)
    store = SQLiteStore(f"sqlite:///{db}", create=True)
    try:
        check_v2(store)
        assert sorted(j.id for j in store.find(JobQuery())) == ["done", "s1", "s1.1", "waiting"]
        assert store.get("done").status == JobStatus.DONE
        assert store.get("waiting").data == {"n": 1}
        assert [j.id for j in store.find(JobQuery(series="s1"))] == ["s1", "s1.1"]
        events = store.events()
        assert [(e.seq, e.job_id) for e in events] == [
            (1, "waiting"),
            (2, "done"),
            (3, "s1"),
            (4, "s1.1"),
        ]
        # The deleted event's seq (5) was handed out under schema 1: never again.
        assert store.last_event_seq() == 5
        job = must_claim(store, job_id="waiting")
        assert job.attempt == 1
        assert [e.seq for e in store.events(after=4)] == [6]
        assert [e.status for e in store.events(job_ids=["waiting"])] == [
            JobStatus.WAITING,
            JobStatus.PROCESSING,
        ]
        assert store.stats(now=now, window=300)["finished_in_window"] == {"DONE": 2}
        assert store.purge(statuses=FINAL, ended_before=now - 60) == 1
        assert store.events(job_ids=["done"]) == []
    finally:
        store.close()


def test_a_v2_store_gets_the_dependency_table_and_keeps_its_jobs(tmp_path: Path) -> None:
    """Schema 2 (taskschedd 0.5) -> 3: the version says so, so that 0.5 refuses the store
    instead of quarantining its BLOCKED jobs as corrupt."""
    db = tmp_path / "jobs.db"
    store = SQLiteStore(f"sqlite:///{db}", create=True)
    store.insert([new_job("a")])
    store._conn.execute("DROP TABLE job_deps")
    store._conn.execute("UPDATE meta SET value = '2' WHERE key = 'schema'")
    store.close()
    store = SQLiteStore(f"sqlite:///{db}", create=True)
    try:
        check_v2(store)
        store.insert([new_job("b", depends_on=("a",), status=JobStatus.BLOCKED)])
        assert [j.id for j in store.dependents("a")] == ["b"]
        assert store.get("a").status is JobStatus.WAITING
    finally:
        store.close()


def _open_and_report(url: str, start: float) -> None:
    while time.time() < start:  # open together, not one after the other
        time.sleep(0.001)
    store = SQLiteStore(url, create=True)
    try:
        store.last_event_seq()
    finally:
        store.close()


def test_processes_opening_a_v1_store_at_once_upgrade_it_once(tmp_path: Path) -> None:
    db = tmp_path / "jobs.db"
    make_v1(db)
    url = f"sqlite:///{db}"
    ctx = multiprocessing.get_context("fork")
    start = time.time() + 0.3
    procs = [ctx.Process(target=_open_and_report, args=(url, start)) for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=30)
    assert [p.exitcode for p in procs] == [0, 0, 0, 0]
    store = SQLiteStore(url, create=True)
    try:
        check_v2(store)
        assert len(store.events()) == 4
        assert store.last_event_seq() == 5
        floor_rows = store._conn.execute("SELECT COUNT(*) FROM events WHERE status < 0")
        assert floor_rows.fetchone() == (1,)
    finally:
        store.close()


def test_a_newer_schema_is_refused_with_the_version(tmp_path: Path) -> None:
    db = tmp_path / "jobs.db"
    store = SQLiteStore(f"sqlite:///{db}", create=True)
    store.insert([new_job("a")])
    store._conn.execute("UPDATE meta SET value = '7' WHERE key = 'schema'")
    store.close()
    with pytest.raises(StoreError, match="has schema 7, newer than this taskschedd understands"):
        SQLiteStore(f"sqlite:///{db}", create=True).get("a")


def test_event_seqs_are_not_reused_after_flush_or_purge(tmp_path: Path) -> None:
    store = SQLiteStore(f"sqlite:///{tmp_path}/jobs.db", create=True)
    try:
        now = time.time()
        store.insert([new_job("old", now=now - 1000), new_job("new", now=now - 1000)])
        finish(store, "old", JobStatus.DONE, now - 900)
        finish(store, "new", JobStatus.DONE, now - 900)  # "new" has the newest events
        top = store.last_event_seq()
        assert store.purge(statuses=FINAL, ended_before=now) == 2
        assert store.events() == [] and store.last_event_seq() == top
        store.insert([new_job("a")])
        (added,) = store.events(after=0)
        assert added.seq == top + 1
        store.flush()
        assert store.events() == [] and store.last_event_seq() == top + 1
        store.flush()  # nothing new: the same floor, still one placeholder row
        store.insert([new_job("b")])
        assert [e.seq for e in store.events()] == [top + 2]
        floor_rows = store._conn.execute("SELECT COUNT(*) FROM events WHERE status < 0")
        assert floor_rows.fetchone() == (1,)
    finally:
        store.close()


def test_a_v3_store_is_upgraded_to_limits_in_place(tmp_path: Path) -> None:
    """A store of 0.6 (schema 3: no limit columns or table) gets them, its jobs kept; a
    job added before runs unlimited."""
    db = tmp_path / "jobs.db"
    store = SQLiteStore(f"sqlite:///{db}", create=True)
    store.insert([new_job("old")])
    conn = store._conn
    as_schema_5(conn)
    for index in ("jobs_lim_running", "jobs_xkey_running", "jobs_lim_waiting"):
        conn.execute(f"DROP INDEX {index}")
    conn.execute("DROP TABLE limits")
    conn.execute("ALTER TABLE jobs DROP COLUMN lim")
    conn.execute("ALTER TABLE jobs DROP COLUMN xkey")
    conn.execute("UPDATE meta SET value = '3' WHERE key = 'schema'")
    store.close()
    store = SQLiteStore(f"sqlite:///{db}", create=True)
    try:
        check_v2(store)
        assert store.get("old").options.limit is None
        assert store.limits(now=time.time()) == []
    finally:
        store.close()


def grouped(store: SQLiteStore) -> list[tuple[object, ...]]:
    """Every job counted by (status, queue, cls) the slow way, as counts() gives them."""
    rows = store._conn.execute(
        "SELECT status, queue, cls, COUNT(*) FROM jobs GROUP BY status, queue, cls"
    ).fetchall()
    return sorted(rows, key=repr)


def test_a_v4_store_gets_exact_counts_that_every_write_keeps(tmp_path: Path) -> None:
    """A store of 0.7 (schema 4), with rows another client wrote of other types, gets
    job_counts filled by the upgrade; from then on every write keeps it equal to a
    GROUP BY of the jobs (writes of raw SQL too)."""
    db = tmp_path / "jobs.db"
    store = SQLiteStore(f"sqlite:///{db}", create=True)
    now = time.time()
    store.insert([new_job(f"w{i}", now=now, queue=f"q{i % 2}") for i in range(6)])
    store.insert([new_job("f", now=now, status=JobStatus.FAILED)])
    conn = store._conn
    for trigger in ("jobs_count_insert", "jobs_count_delete", "jobs_count_update"):
        conn.execute(f"DROP TRIGGER {trigger}")
    for index in ("jobs_status", "jobs_queue", "jobs_cls", "jobs_recurring"):
        conn.execute(f"DROP INDEX {index}")
    conn.execute("DROP TABLE job_counts")
    as_schema_5(conn)
    conn.execute("UPDATE meta SET value = '4' WHERE key = 'schema'")
    conn.execute(  # another client's row: a BLOB class, a REAL status, options not JSON
        "INSERT INTO jobs (id, cls, data, status, queue, priority, spawn, at, created, "
        "options) VALUES ('raw', x'00ff', 'null', 2.5, 'q0', 0, 0, 1, 1, 'retry=3')"
    )
    store.close()
    store = SQLiteStore(f"sqlite:///{db}", create=True)
    try:
        check_v2(store)
        counted = sorted(store.counts(), key=repr)
        assert counted == grouped(store) and len(counted) == 4
        job = must_claim(store, queues=("q0",), now=now)
        assert grouped(store) == sorted(store.counts(), key=repr)
        finish(store, "w1", JobStatus.DONE, now)
        store.cancel("w2", now=now)
        store.settle(
            job.id, job.claim_token or "", settlement(status=JobStatus.DONE, reason="t"), now=now
        )
        assert grouped(store) == sorted(store.counts(), key=repr)
        assert store.purge(statuses=list(FINAL), ended_before=now + 1) >= 3
        assert grouped(store) == sorted(store.counts(), key=repr)
        raw = sqlite3.connect(db, isolation_level=None)
        raw.execute("UPDATE jobs SET status = x'01', queue = 7 WHERE id = 'raw'")
        raw.execute("UPDATE jobs SET cls = 'renamed' WHERE id = 'w3'")
        raw.execute(
            "INSERT INTO jobs (id, cls, data, status, queue, priority, spawn, at, created, "
            "options) VALUES ('raw2', 'c', 'null', 0, x'', 0, 0, 1, 1, x'7b7d')"
        )
        assert grouped(store) == sorted(store.counts(), key=repr)
        raw.execute("DELETE FROM jobs WHERE id IN ('raw', 'w4')")
        raw.close()
        assert grouped(store) == sorted(store.counts(), key=repr)
        store.flush()
        assert store.counts() == []
    finally:
        store.close()


def test_a_v5_store_gets_the_claim_index_in_two_parts_and_claims_past_a_full_limit(
    tmp_path: Path,
) -> None:
    """A store of 0.8.0 (schema 5) with jobs of a full limit ahead of others: upgraded in
    place, the claim skips the held jobs, and a job of the limit runs once it frees."""
    db = tmp_path / "jobs.db"
    store = SQLiteStore(f"sqlite:///{db}", create=True)
    now = time.time()
    store.set_limit(LimitSpec("reports", 1))
    store.insert([new_job(f"r{i}", now=now - 10, priority=9, limit="reports") for i in range(5)])
    store.insert([new_job("plain", now=now)])
    as_schema_5(store._conn)
    store.close()
    store = SQLiteStore(f"sqlite:///{db}", create=True)
    try:
        check_v2(store)
        first = must_claim(store, now=now, worker="n/1")
        assert first.id == "r0"
        assert must_claim(store, now=now, worker="n/2").id == "plain"
        assert store.count_due(("default",), now=now, force_spawn=False) == 0
        store.settle(
            first.id, first.claim_token or "", settlement(status=JobStatus.DONE, reason="t"),
            now=now,
        )  # fmt: skip
        assert must_claim(store, now=now, worker="n/3").id == "r1"
    finally:
        store.close()
