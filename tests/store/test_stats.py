"""Stats: the fold above the stores (taskschedd.stats), and every store giving the same
figures for the same history."""

from __future__ import annotations

import math
import os
import time
from collections.abc import Iterator
from typing import Any

import pytest

from taskschedd.model import JobStatus, NewJob
from taskschedd.options import JobOptions, dump_data
from taskschedd.scheduler import Scheduler
from taskschedd.stats import UNKNOWN_STATUS, StatRows, fold, label, status_name
from taskschedd.store.base import Store
from taskschedd.worker import Worker
from tests.mongo_server import ENV_TEST_URI
from tests.store.conftest import StoreSpec
from tests.store.test_corrupt_records import damage

ECHO = "tests.api_jobs.Echo"
FAIL = "tests.api_jobs.Fail"

# -- the fold -----------------------------------------------------------------------------


def test_fold_counts_by_status_queue_and_class() -> None:
    rows = StatRows(
        groups=[
            (0, "q1", "m.A", 2),
            (1, "q1", "m.A", 1),
            (3, "q2", "m.B", 4),
            (3.0, "q1", "m.B", 1),  # a status stored as a float (MongoDB numbers)
        ],
    )
    stats = fold(rows, now=100.0, window=60.0)
    assert stats == {
        "by_status": {"WAITING": 2, "POSTPONED": 1, "DONE": 5},
        "by_queue": {"q1": {"WAITING": 2, "POSTPONED": 1, "DONE": 1}, "q2": {"DONE": 4}},
        "by_class": {"m.A": {"WAITING": 2, "POSTPONED": 1}, "m.B": {"DONE": 5}},
        "oldest_waiting_age": {},
        "finished_in_window": {},
        "window": 60.0,
    }


def test_fold_labels_garbled_values_once() -> None:
    rows = StatRows(
        groups=[
            (99, "q", "m.A", 1),
            ("abc", "q", "m.A", 1),
            (None, None, None, 1),
            (2.5, 7, ["x"], 1),
            (True, "bad\udcff", b"m", 1),
        ],
    )
    stats = fold(rows, now=0.0, window=1.0)
    assert stats["by_status"] == {UNKNOWN_STATUS: 5}
    assert stats["by_queue"] == {
        "q": {UNKNOWN_STATUS: 2},
        "<NoneType>": {UNKNOWN_STATUS: 1},
        "<int>": {UNKNOWN_STATUS: 1},
        "<str>": {UNKNOWN_STATUS: 1},  # text that could not be written out
    }
    assert stats["by_class"] == {
        "m.A": {UNKNOWN_STATUS: 2},
        "<NoneType>": {UNKNOWN_STATUS: 1},
        "<list>": {UNKNOWN_STATUS: 1},
        "<bytes>": {UNKNOWN_STATUS: 1},
    }


def test_status_name_and_label() -> None:
    assert [status_name(int(s)) for s in JobStatus] == [s.name for s in JobStatus]
    assert status_name(4.0) == "FAILED"
    for bad in (4.5, -1, 8, "3", None, True, [3], math.nan):
        assert status_name(bad) == UNKNOWN_STATUS, bad
    assert label("mail") == "mail"
    assert label(3) == "<int>"


def test_fold_oldest_waiting_age_takes_the_earliest_time_per_label() -> None:
    rows = StatRows(
        oldest_due=[
            ("q1", 90.0),
            ("q2", 95),
            (1, 80.0),  # two queues of other types: one label, the earliest time
            (2, 70.0),
            ("q3", "soon"),  # not a time: no age
            ("q4", math.inf),
            ("q5", None),
        ],
    )
    assert fold(rows, now=100.0, window=1.0)["oldest_waiting_age"] == {
        "q1": 10.0,
        "q2": 5.0,
        "<int>": 30.0,
    }


def test_fold_finished_counts_final_statuses_only() -> None:
    rows = StatRows(ended=[(3, 5), (4.0, 2), (6, 1), (5, 0), (2, 7), (99, 1), ("x", 1)])
    assert fold(rows, now=0.0, window=1.0)["finished_in_window"] == {
        "DONE": 5,
        "FAILED": 2,
        "TIMEOUT": 1,
    }


# -- the same history on every store --------------------------------------------------------


@pytest.fixture
def opened(store_spec: StoreSpec) -> Iterator[Store]:
    s = store_spec.open()
    try:
        yield s
    finally:
        s.close()


def job(job_id: str, cls: str, queue: str, at: float, *, retry: int = 0) -> NewJob:
    created = min(at, time.time())
    return NewJob(
        id=job_id,
        cls=cls,
        data_json=dump_data({"message": job_id}),
        options=JobOptions(queue=queue, retry=retry),
        at=at,
        created=created,
        status=JobStatus.WAITING if at <= created else JobStatus.POSTPONED,
    )


def run(worker: Worker, job_id: str, status: JobStatus) -> None:
    outcome = worker.run_one(job_id=job_id)
    assert outcome is not None, f"{job_id} was not claimed"
    assert worker.store.get(job_id).status is status


def make_history(store_spec: StoreSpec, store: Store) -> float:
    """Adds, claims, settles, a cancel, retries (one after it ended, then failed again),
    a held job and two garbled records; returns the time the jobs were added at."""
    sched = Scheduler(store)
    t0 = time.time()
    store.insert(
        [
            job("done-1", ECHO, "work", t0 - 40),
            job("done-2", ECHO, "work", t0 - 39),
            job("failed", FAIL, "work", t0 - 38),
            job("retried-waits", FAIL, "work", t0 - 37),  # fails, is retried: waits again
            job("retried-fails", FAIL, "work", t0 - 36),  # fails, retried, fails again
            job("canceled", ECHO, "work", t0 - 35),
            job("held", ECHO, "work", t0 - 34),
            job("waits", ECHO, "work", t0 - 30),
            job("mail-1", ECHO, "mail", t0 - 50),
            job("mail-2", ECHO, "mail", t0 - 20),
            job("later", ECHO, "mail", t0 + 3600),
            job("garbled-99", ECHO, "odd", t0 + 3600),
            job("garbled-text", ECHO, "odd", t0 + 3600),
        ]
    )
    # Garbled by another client, and made due: counted as UNKNOWN, never as waiting.
    damage(store_spec, "garbled-99", "status 99")
    damage(store_spec, "garbled-text", "status text")

    worker = Worker(store, allowed_modules=["tests"], queues=("work", "mail"), lease=30)
    try:
        run(worker, "done-1", JobStatus.DONE)
        run(worker, "done-2", JobStatus.DONE)
        run(worker, "failed", JobStatus.FAILED)
        run(worker, "retried-waits", JobStatus.FAILED)
        run(worker, "retried-fails", JobStatus.FAILED)
        sched.cancel_job("canceled")
        sched.retry_job("retried-waits")
        sched.retry_job("retried-fails")
        run(worker, "retried-fails", JobStatus.FAILED)
        held = worker.claim(job_id="held")
        assert held is not None and held.status is JobStatus.PROCESSING
    finally:
        worker.close()
    assert store.get("retried-waits").status is JobStatus.WAITING
    return t0


def test_same_history_gives_the_same_stats_on_every_store(
    store_spec: StoreSpec, opened: Store
) -> None:
    store = opened
    t0 = make_history(store_spec, store)
    now = time.time()
    stats = store.stats(now=now, window=300)
    oldest = stats.pop("oldest_waiting_age")
    assert stats == {
        "by_status": {
            "WAITING": 4,
            "POSTPONED": 1,
            "PROCESSING": 1,
            "DONE": 2,
            "FAILED": 2,
            "CANCELED": 1,
            UNKNOWN_STATUS: 2,
        },
        "by_queue": {
            "work": {"WAITING": 2, "PROCESSING": 1, "DONE": 2, "FAILED": 2, "CANCELED": 1},
            "mail": {"WAITING": 2, "POSTPONED": 1},
            "odd": {UNKNOWN_STATUS: 2},
        },
        "by_class": {
            ECHO: {
                "WAITING": 3,
                "POSTPONED": 1,
                "PROCESSING": 1,
                "DONE": 2,
                "CANCELED": 1,
                UNKNOWN_STATUS: 2,
            },
            FAIL: {"WAITING": 1, "FAILED": 2},
        },
        # Each job once, by the outcome it has now: "retried-fails" failed twice in the
        # window and counts once; "retried-waits" is waiting, not finished.
        "finished_in_window": {"DONE": 2, "FAILED": 2, "CANCELED": 1},
        "window": 300,
    }
    # The oldest due runnable job per queue: not the held, canceled or garbled ones.
    assert oldest == {
        "work": pytest.approx(now - (t0 - 30), abs=0.01),
        "mail": pytest.approx(now - (t0 - 50), abs=0.01),
    }
    # Ended before the window: not finished in it.
    assert store.stats(now=now + 400, window=300)["finished_in_window"] == {}


class _CompoundGroups:
    """A jobs collection that answers a $group by a compound key as MongoDB does (for a
    server that does not: nx-27017), and passes everything else on."""

    def __init__(self, coll: Any) -> None:
        self._coll = coll

    def __getattr__(self, name: str) -> Any:
        return getattr(self._coll, name)

    def aggregate(self, pipeline: list[dict[str, Any]], **kwargs: Any) -> Any:
        key = pipeline[0].get("$group", {}).get("_id") if len(pipeline) == 1 else None
        if not isinstance(key, dict):
            return self._coll.aggregate(pipeline, **kwargs)
        counts: dict[str, tuple[dict[str, Any], int]] = {}
        for doc in self._coll.find({}, {"_id": 0, "status": 1, "queue": 1, "cls": 1}):
            # Fields a document lacks are absent from its group key.
            k = {name: doc[path[1:]] for name, path in key.items() if path[1:] in doc}
            seen = counts.get(repr(k), (k, 0))
            counts[repr(k)] = (k, seen[1] + 1)
        return iter([{"_id": k, "n": n} for k, n in counts.values()])


def test_mongo_counts_alike_by_compound_key_and_by_status(
    store_spec: StoreSpec, opened: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Both ways of reading the groups (a server that groups by a compound key, and one
    that does not) give the same stats."""
    if store_spec.kind != "mongo":
        pytest.skip("MongoDB only")
    from taskschedd.store.mongo import MongoStore

    store = opened
    assert isinstance(store, MongoStore)
    make_history(store_spec, store)
    now = time.time()
    compound = store._groups_by_compound_key()
    if os.environ.get(ENV_TEST_URI) is None:
        assert not compound  # nx-27017 answers the key unevaluated
    store._compound_groups = False
    by_status = store.stats(now=now)
    assert by_status["by_status"]["WAITING"] == 4
    if not compound:
        real = MongoStore._jobs
        monkeypatch.setattr(
            MongoStore,
            "_jobs",
            property(lambda s: _CompoundGroups(real.fget(s))),  # type: ignore[attr-defined]
        )
    store._compound_groups = True
    assert store.stats(now=now) == by_status
