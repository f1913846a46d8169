"""What only the SQLite store promises: file modes, fork safety, the claim index, locks."""

from __future__ import annotations

import contextlib
import os
import re
import sqlite3
import stat
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest

from taskschedd.errors import StoreUnavailable
from taskschedd.limits import LimitSpec
from taskschedd.model import JobQuery, JobStatus
from taskschedd.store.sqlite import SQLiteStore
from tests.store.test_contract import claim, must_claim, new_job

T = TypeVar("T")


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


def traced_claim(store: SQLiteStore, now: float, worker: str) -> list[str]:
    """A claim's statements, and the query plans of its reads and of its update."""
    statements: list[str] = []
    store._conn.set_trace_callback(statements.append)
    assert claim(store, now=now, worker=worker) is not None
    store._conn.set_trace_callback(None)
    updates = [s for s in statements if s.lstrip().upper().startswith("UPDATE")]
    # The trace reports the statement again for each trigger it fires (the job counts of
    # schema 5): one statement, however often it is shown.
    assert len(set(updates)) == 1, statements
    plans = []
    for sql in [*statements, updates[0].split(" RETURNING ")[0]]:
        if sql.lstrip().upper().startswith(("SELECT", "UPDATE", "WITH")):
            rows = store._conn.execute("EXPLAIN QUERY PLAN " + sql).fetchall()
            plans.append(" | ".join(row[3] for row in rows))
    # No walk of the table (a probe of the first row of an index is a "SCAN ... INDEX").
    assert not any(re.search(r"SCAN (jobs|c)\b(?! USING)", plan) for plan in plans), plans
    return plans


def test_claim_reads_the_claim_index_parts_and_updates_one_row(tmp_path: Path) -> None:
    store = SQLiteStore(f"sqlite:///{tmp_path}/jobs.db", create=True)
    now = time.time()
    store.set_limit(LimitSpec("reports", 1))
    store.insert([new_job(f"j{i}", now=now, priority=i % 3) for i in range(50)])
    store.insert([new_job(f"r{i}", now=now, priority=9, limit="reports") for i in range(50)])
    # No limit closed: the head of the jobs without a limit, and of those with one.
    plans = traced_claim(store, now, "n/1")  # takes r0: the limit is full
    assert any("jobs_claim_free" in plan for plan in plans), plans
    assert any("jobs_claim_gated" in plan for plan in plans), plans
    # A limit closed: read per open limit (none here), the closed one's jobs not walked.
    plans = traced_claim(store, now, "n/2")
    assert any("jobs_claim_lim" in plan for plan in plans), plans
    store.close()


def vm_steps(store: SQLiteStore, call: Callable[[], T]) -> tuple[T, int]:
    """What ``call`` returns, and how many thousand SQLite VM instructions it ran."""
    steps = 0

    def tick() -> int:
        nonlocal steps
        steps += 1
        return 0

    store._conn.set_progress_handler(tick, 1000)
    try:
        return call(), steps
    finally:
        store._conn.set_progress_handler(None, 0)


def costs_behind(path: Path, held: int, priority: int) -> dict[str, int]:
    """VM instructions (thousands) of each look for work in a store where ``held`` jobs
    of a full limit wait, of ``priority`` (the other jobs have 5)."""
    store = SQLiteStore(f"sqlite:///{path}", create=True)
    now = time.time()
    store.set_limit(LimitSpec("reports", 1))
    store.insert([new_job(f"r{i}", now=now - 60, priority=priority, limit="reports")
                  for i in range(held)])  # fmt: skip
    assert must_claim(store, now=now, worker="n/holder").options.limit == "reports"
    store.insert([new_job("later", now=now, at=now + 3600)])
    cost: dict[str, int] = {}
    due, cost["count_due"] = vm_steps(
        store, lambda: store.count_due(("default",), now=now, force_spawn=False, limit=4)
    )
    assert due == 0
    at, cost["next_due"] = vm_steps(store, lambda: store.next_due(("default",)))
    assert at == pytest.approx(now + 3600)
    got, cost["idle claim"] = vm_steps(store, lambda: claim(store, now=now, worker="n/2"))
    assert got is None
    store.insert([new_job("plain", now=now, priority=5)])
    got, cost["claim"] = vm_steps(store, lambda: claim(store, now=now, worker="n/2"))
    assert got is not None and got.id == "plain"
    store.close()
    return cost


@pytest.mark.parametrize("priority", [0, 9])
def test_looking_for_work_never_walks_the_jobs_a_full_limit_holds_back(
    tmp_path: Path, priority: int
) -> None:
    """A claim, count_due and next_due cost the same behind 200 or 20,000 jobs of a full
    limit (ahead of the other jobs in claim order, or behind them): each reads the heads
    of the claim index's parts (schema 6), never each held job. Counted in SQLite VM
    instructions, not time."""
    small = costs_behind(tmp_path / "small.db", 200, priority)
    large = costs_behind(tmp_path / "large.db", 20_000, priority)
    assert all(large[what] <= 2 * small[what] + 5 for what in small), (small, large)


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


def test_a_limit_another_client_stored_as_invalid_utf8_runs_unlimited(tmp_path: Path) -> None:
    """A job whose limit is text that is not UTF-8 (written by another client) names no
    defined limit: it runs unlimited, and looking for work in any queue still works,
    with a limit closed (per-limit reads) as without."""
    path = tmp_path / "jobs.db"
    store = SQLiteStore(f"sqlite:///{path}", create=True)
    now = time.time()
    store.set_limit(LimitSpec("reports", 1))
    store.insert([new_job(f"r{i}", now=now - 5, limit="reports") for i in range(3)])
    store.insert([new_job("odd", now=now - 4, limit="x"), new_job("mail", now=now, queue="mail")])
    with contextlib.closing(sqlite3.connect(path)) as raw, raw:
        raw.execute("UPDATE jobs SET lim = CAST(x'ff61' AS TEXT) WHERE id = 'odd'")
    assert store.count_due(("default",), now=now, force_spawn=False) == 4
    assert must_claim(store, now=now, worker="n/1").id == "r0"  # the limit is full now
    assert store.count_due(("default",), now=now, force_spawn=False) == 1
    assert store.next_due(("default",)) == pytest.approx(now - 4)
    assert must_claim(store, now=now, worker="n/2").id == "odd"
    assert must_claim(store, queues=("mail",), now=now, worker="n/3").id == "mail"
    assert claim(store, now=now, worker="n/4") is None
    store.close()


def test_jobs_naming_many_limits_are_picked_in_claim_order(tmp_path: Path) -> None:
    """More limits named than are read one by one: a closed limit's jobs are skipped in
    claim order (as before schema 6), the best of the others is claimed."""
    store = SQLiteStore(f"sqlite:///{tmp_path}/jobs.db", create=True)
    now = time.time()
    store.set_limit(LimitSpec("full", 1))
    store.insert([new_job("f0", now=now - 9, priority=9, limit="full")])
    assert must_claim(store, now=now, worker="n/0").id == "f0"
    store.insert([new_job(f"f{i}", now=now - 9, priority=9, limit="full") for i in range(1, 50)])
    tenants = [
        new_job(f"t{i}", now=now - 5 + i / 1000, priority=i % 3, limit=f"tenant-{i}")
        for i in range(200)
    ]
    store.insert(tenants)
    assert store.count_due(("default",), now=now, force_spawn=False) == 200
    assert store.count_due(("default",), now=now, force_spawn=False, limit=7) == 7
    assert store.next_due(("default",)) == pytest.approx(now - 5 + 2 / 1000)
    got = [must_claim(store, now=now, worker=f"n/{i + 1}").id for i in range(3)]
    assert got == ["t2", "t5", "t8"]  # priority 2 first, then by time
