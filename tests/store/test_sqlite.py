"""What only the SQLite store promises: file modes, fork safety, the claim index, locks."""

from __future__ import annotations

import os
import sqlite3
import stat
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from taskschedd.errors import StoreUnavailable
from taskschedd.model import JobQuery, JobStatus
from taskschedd.store.sqlite import SQLiteStore
from tests.store.test_contract import claim, must_claim, new_job


@pytest.fixture
def umask_022() -> Iterator[None]:
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_files_are_0600_in_a_0700_directory(tmp_path: Path, umask_022: None) -> None:
    directory = tmp_path / "var" / "lib" / "taskschedd"
    db = directory / "jobs.db"
    store = SQLiteStore(f"sqlite:///{db}", create=True)
    try:
        store.insert([new_job("a")])
        waker = store.waker()
        waker.close()
        assert mode(directory) == 0o700
        assert mode(db) == 0o600
        for suffix in ("-wal", "-shm"):
            side = Path(str(db) + suffix)
            assert side.exists(), f"{side.name} missing: not in WAL mode?"
            assert mode(side) == 0o600, f"{side.name} is {oct(mode(side))}"
        assert mode(Path(str(db) + "-notify")) == 0o700
        assert store._conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        store.close()


def test_a_connection_is_not_reused_across_fork(tmp_path: Path) -> None:
    store = SQLiteStore(f"sqlite:///{tmp_path}/jobs.db", create=True)
    store.insert([new_job("parent-1")])
    parent_conn = store._conn
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through its exit code
        code = 1
        try:
            store.insert([new_job("child")])
            ok = store._conn is not parent_conn and store.get("parent-1").id == "parent-1"
            code = 0 if ok else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    # The parent's own connection still works and sees the child's commit.
    assert store._conn is parent_conn
    assert store.get("child").status == JobStatus.WAITING
    store.insert([new_job("parent-2")])
    assert must_claim(store, job_id="parent-2").attempt == 1
    store.close()


def test_claim_is_one_statement_served_by_the_partial_index(tmp_path: Path) -> None:
    store = SQLiteStore(f"sqlite:///{tmp_path}/jobs.db", create=True)
    now = time.time()
    store.insert([new_job(f"j{i}", now=now, priority=i % 3) for i in range(50)])
    statements: list[str] = []
    store._conn.set_trace_callback(statements.append)
    assert claim(store, now=now) is not None
    store._conn.set_trace_callback(None)
    updates = [s for s in statements if s.lstrip().upper().startswith("UPDATE")]
    # The trace reports the statement again for each trigger it fires (the job counts of
    # schema 5): one statement, however often it is shown.
    assert len(set(updates)) == 1, statements
    plan_sql = "EXPLAIN QUERY PLAN " + updates[0].split(" RETURNING ")[0]
    plan = " | ".join(row[3] for row in store._conn.execute(plan_sql).fetchall())
    assert "jobs_claim" in plan, plan
    assert "SCAN jobs" not in plan, plan
    store.close()


def test_a_locked_database_raises_store_unavailable_then_recovers(tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"
    store = SQLiteStore(f"sqlite:///{path}", busy_timeout=0.2, create=True)
    store.insert([new_job("before")])
    holder = sqlite3.connect(path, isolation_level=None, timeout=0)
    holder.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(StoreUnavailable) as info:
            store.insert([new_job("blocked")])
        assert "locked" in str(info.value)
        started = time.monotonic()
        with pytest.raises(StoreUnavailable):
            store.cancel("before", now=1.0)
        assert 0.15 <= time.monotonic() - started < 3.0  # waited busy_timeout, not forever
        assert store.get("before").status == JobStatus.WAITING  # WAL: reads go on
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    store.insert([new_job("after")])
    assert store.get("after").status == JobStatus.WAITING
    assert store.get("before").status == JobStatus.WAITING
    assert [j.id for j in store.find(JobQuery())] == ["before", "after"]
    store.close()


def test_a_listener_that_arrives_right_after_a_post_is_woken(tmp_path: Path) -> None:
    # Posts cache the listener directory while its mtime is unchanged; a listener that
    # registers within the same timestamp tick as a listing must not be missed.
    store = SQLiteStore(f"sqlite:///{tmp_path}/jobs.db", create=True)
    writer = SQLiteStore(f"sqlite:///{tmp_path}/jobs.db", create=True)
    try:
        for i in range(20):
            writer.insert([new_job(f"before-{i}")])  # lists (and maybe caches) the listeners
            waker = store.waker()
            try:
                writer.insert([new_job(f"after-{i}")])
                assert waker.wait(2.0), f"round {i}: the new listener was not woken"
            finally:
                waker.close()
        stale = store.waker()
        stale.close()
        writer.insert([new_job("after-close")])  # a listener that left is no trouble
    finally:
        store.close()
        writer.close()
