"""A store that answers but cannot write (disk full, I/O error, read-only).

SQLite's codes become StoreNotWritable, a transient StoreUnavailable; a worker keeps the
outcomes such a store refuses and stores them when it takes writes again (the full-disk
daemon tests are in tests/faults/test_faults_disk_full.py); the master's supervisor keeps
the jobs whose outcome waits in a worker out of timeouts and cancels.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Any, cast

import pytest
import structlog

from taskschedd import Scheduler, worker
from taskschedd.children import HeldState, RunningJob, WorkerHandle
from taskschedd.config import Config
from taskschedd.errors import StoreNotWritable, StoreUnavailable
from taskschedd.messages import Unstored
from taskschedd.model import JobStatus
from taskschedd.store import diskspace
from taskschedd.store.base import Store
from taskschedd.store.sqlite import SQLiteStore
from taskschedd.supervise import Supervisor
from taskschedd.worker import Worker

ADD = "taskschedd.examples.jobs.Add"


def coded(text: str, code: int | None) -> sqlite3.OperationalError:
    exc = sqlite3.OperationalError(text)
    if code is not None:
        exc.sqlite_errorcode = code
    return exc


@pytest.mark.parametrize(
    ("text", "code", "why"),
    [
        ("database or disk is full", 13, "disk full"),  # SQLITE_FULL
        ("disk I/O error", 10, "I/O error"),  # SQLITE_IOERR
        ("disk I/O error", 10 | (3 << 8), "I/O error"),  # SQLITE_IOERR_WRITE
        ("attempt to write a readonly database", 8, "read-only"),  # SQLITE_READONLY
        ("database or disk is full", None, "disk full"),  # no code: by the text
        ("disk I/O error", None, "I/O error"),
    ],
)
def test_sqlite_errors_that_mean_it_cannot_write_are_transient(
    tmp_path: Path, text: str, code: int | None, why: str
) -> None:
    store = SQLiteStore(f"sqlite:///{tmp_path}/store.db", create=True)
    error = store._error(coded(text, code))
    assert isinstance(error, StoreNotWritable)
    assert isinstance(error, StoreUnavailable)  # every caller that backs off, backs off
    assert error.why == why
    assert why in str(error) and str(tmp_path) in str(error)


def test_a_database_file_that_moved_is_not_a_transient_read_only_store(tmp_path: Path) -> None:
    store = SQLiteStore(f"sqlite:///{tmp_path}/store.db", create=True)
    moved = coded("attempt to write a readonly database", 8 | (4 << 8))  # READONLY_DBMOVED
    assert not isinstance(store._error(moved), StoreUnavailable)


class Refusing:
    """A real SQLite store whose settle_batch refuses writes that hold outcomes while
    ``refuse`` is above zero (counting down), as a full disk does."""

    def __init__(self, store: Store, refuse: int) -> None:
        self._store = store
        self.refuse = refuse
        self.refused = 0

    def settle_batch(self, settles: Any, **kwargs: Any) -> Any:
        if settles and self.refuse:
            self.refuse -= 1
            self.refused += 1
            raise StoreNotWritable("store x cannot write (disk full): full", "disk full")
        return self._store.settle_batch(settles, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)


def daemon_like_worker(store: Refusing, reports: list[tuple[list[str], str]]) -> Worker:
    return Worker(
        cast(Store, store), allowed_modules=["taskschedd.examples"], in_process=False,
        on_unstored=lambda tokens, exc: reports.append((tokens, getattr(exc, "why", ""))),
    )  # fmt: skip


def test_a_worker_keeps_the_outcome_the_store_refuses_and_stores_it_later(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(worker, "WRITE_RETRY_MAX", 0.05)
    real = SQLiteStore(f"sqlite:///{tmp_path}/store.db", create=True)
    job = Scheduler(real).add_job(ADD, {"a": 1, "b": 2})
    store = Refusing(real, refuse=5)
    reports: list[tuple[list[str], str]] = []
    outcome = daemon_like_worker(store, reports).run_one()
    assert outcome is not None and outcome.settled
    assert store.refused == 5
    assert reports == [([outcome.job.claim_token], "disk full")], "told once, with why"
    record = real.get(job.id)
    assert record.status is JobStatus.DONE and record.result == 3 and not record.errors


def test_a_leaving_worker_gives_up_on_a_store_that_keeps_refusing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(worker, "WRITE_RETRY_MAX", 0.05)
    real = SQLiteStore(f"sqlite:///{tmp_path}/store.db", create=True)
    job = Scheduler(real).add_job(ADD, {"a": 1, "b": 2})
    store = Refusing(real, refuse=10**9)
    w = daemon_like_worker(store, [])
    w.step()  # claims it, runs it; its outcome waits for the next write
    assert w.holding == 1
    w.give_up_writes(0.3)  # e.g. its master is gone: nobody renews the lease
    began = time.monotonic()
    with pytest.raises(StoreUnavailable):
        w.flush()
    assert 0.25 <= time.monotonic() - began < 5
    assert w.holding == 1, "still held: the lease decides now"
    assert real.get(job.id).status is JobStatus.PROCESSING


def test_the_master_keeps_a_job_whose_outcome_waits_in_its_worker_out_of_timeouts() -> None:
    now = time.monotonic()
    w = WorkerHandle(pid=999999, name="n/999999", report_fd=-1, control_fd=-1, extra=False,
                     spawned=now, idle_since=now, ready=True)  # fmt: skip
    ran = RunningJob(id="a", token="ta", cls="x.Y", attempt=1, queue="q", timeout=0.001,
                     started=time.time() - 10, state=HeldState.RAN)  # fmt: skip
    running = RunningJob(id="b", token="tb", cls="x.Y", attempt=1, queue="q", timeout=0.001,
                         started=time.time() - 10)  # fmt: skip
    w.held["ta"], w.job = ran, running
    no_store = cast(Store, None)  # nothing here reaches the store
    jobs = Supervisor(Config(), {w.pid: w}, structlog.get_logger("test"), no_store)
    jobs.unstored(w, Unstored(("ta", "tb"), why="disk full", error="full"))
    assert set(w.held) == {"ta", "tb"}
    assert w.state == "storing", "not busy: its job ran"
    assert jobs.outcomes_waiting() == 2 and jobs.unstored_why == "disk full"
    jobs.enforce_timeouts(now)  # both are past their timeout: they ran, nothing to kill
    assert w.kill is None and w.kill_wanted is None
    assert set(jobs.held_tokens()) == {"ta", "tb"}, "their leases are still renewed"
    assert jobs.settled(w, "tb") is running and jobs.outcomes_waiting() == 1


def test_a_full_or_read_only_file_system_is_named(tmp_path: Path) -> None:
    assert diskspace.trouble(str(tmp_path / "store.db")) is None  # a test machine has room
    free = diskspace.free_bytes(str(tmp_path))
    assert free is not None and free > 0
    assert diskspace.size_text(0) == "0 bytes"
    assert diskspace.size_text(1536) == "1.5 KiB"
    assert diskspace.size_text(3 * 2**20) == "3.0 MiB"


def test_a_full_mongodb_disk_is_a_store_that_cannot_write() -> None:
    """OutOfDiskSpace (14031) from the server is transient, named, like SQLite's full disk:
    workers keep their outcomes instead of crashing; other failures stay what they were."""
    from pymongo.errors import OperationFailure

    from taskschedd.store.mongo.store import MongoStore

    store = MongoStore("mongodb://u:secret@127.0.0.1:9/")
    full = store._translate("settle", OperationFailure("Out of disk space", code=14031))
    assert isinstance(full, StoreNotWritable) and full.why == "disk full"
    assert "secret" not in str(full)
    wt = OperationFailure("WiredTiger error: No space left on device", code=8)
    assert isinstance(store._translate("claim", wt), StoreNotWritable)
    other = store._translate("claim", OperationFailure("bad query", code=2))
    assert not isinstance(other, StoreUnavailable)
