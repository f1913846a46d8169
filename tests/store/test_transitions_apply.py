"""Each store applies every transition identically: the same scenario, run on SQLite and
on MongoDB, leaves the same records and the same events (times included: the scenario
passes exact times). The transitions themselves are unit-tested in
tests/unit/test_transitions.py; here only how the stores apply them."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from taskschedd import rules, transitions
from taskschedd.model import ErrorInfo, JobRecord, NewJob
from taskschedd.options import resolve
from taskschedd.store.base import Store
from tests.store.conftest import STORE_KINDS

T0 = 1_800_000_000.5
CLS = "tests.api_jobs.Echo"

pytestmark = pytest.mark.skipif("mongo" not in STORE_KINDS, reason="needs both stores")


@pytest.fixture
def stores(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[dict[str, Store]]:
    opened = {
        kind: make(request, tmp_path / kind).open() for kind, make in sorted(STORE_KINDS.items())
    }
    yield opened
    for store in opened.values():
        store.close()


def new_job(job_id: str, *, at: float = T0, once_key: str | None = None, **options: Any) -> NewJob:
    opts, _ = resolve(options)
    return NewJob(
        id=job_id, cls=CLS, data_json='{"x": 1}', options=opts, at=at, created=T0,
        status=rules.initial_status(at, T0), once_key=once_key,
    )  # fmt: skip


def claim(store: Store, job_id: str, token: str, now: float = T0 + 1) -> JobRecord:
    job = store.claim(
        ["default"], node="n1", worker="n1/1", token=token, lease=30.0, now=now, job_id=job_id
    )
    assert job is not None
    return job


def view(store: Store) -> tuple[list[dict[str, Any]], list[tuple[Any, ...]]]:
    """Every record and event, as the scenario left them."""
    from taskschedd.model import JobQuery

    records = []
    for r in store.find(JobQuery()):
        d = r.to_dict()
        d["errors"] = [(e["attempt"], e["type"], e["reason"]) for e in d["errors"]]
        records.append(d)
    events = [
        (e.job_id, e.time, e.status.name, e.attempt, e.reason, e.node, e.worker,
         e.error.type if e.error else None)
        for e in store.events(limit=10_000)
    ]  # fmt: skip
    return sorted(records, key=lambda d: d["id"]), events


def same_on_both(stores: dict[str, Store], scenario: Callable[[Store], Any]) -> Any:
    results = {kind: scenario(store) for kind, store in stores.items()}
    views = {kind: view(store) for kind, store in stores.items()}
    (k1, r1), (k2, r2) = results.items()
    assert r1 == r2, (k1, k2)
    (k1, v1), (k2, v2) = views.items()
    assert v1[0] == v2[0], f"records differ between {k1} and {k2}"
    assert v1[1] == v2[1], f"events differ between {k1} and {k2}"
    return r1, v1


ERR = ErrorInfo(attempt=1, type="ValueError", message="boom", traceback="tb", time=T0 + 2)


def applied(branch: transitions.Branch | None) -> str | None:
    return None if branch is None else branch.name


def test_claim_and_every_settle_outcome(stores: dict[str, Store]) -> None:
    def scenario(store: Store) -> list[str | None]:
        store.insert([new_job(f"j{i}", retry=1, retry_interval=5) for i in range(6)])
        out = []
        j = [claim(store, f"j{i}", f"t{i}") for i in range(6)]
        now = T0 + 2
        out.append(applied(store.settle("j0", "t0", rules.on_success(j[0], '"r"', now), now=now)))
        out.append(applied(store.settle("j1", "t1", rules.on_error(j[1], ERR, now), now=now)))
        out.append(applied(store.settle("j2", "t2", rules.on_timeout(j[2], now), now=now)))
        out.append(applied(store.settle("j3", "t3", rules.on_abandoned(j[3], now), now=now)))
        out.append(applied(store.settle("j4", "t4", rules.release(j[4]), now=now)))
        out.append(applied(store.settle("j5", "wrong", rules.on_success(j[5], "1", now), now=now)))
        out.append(applied(store.settle("j5", "t5", rules.on_cancel_claimed(j[5], now), now=now)))
        return out

    result, (records, _) = same_on_both(stores, scenario)
    assert result == ["done", "retry", "retry", "retry", "release", None, "canceled"]
    status = {r["id"]: (r["status"], r["attempt"], r["reason"]) for r in records}
    assert status["j0"] == ("DONE", 1, "done")
    assert status["j1"] == ("POSTPONED", 1, "retrying")
    assert status["j4"] == ("WAITING", 0, "released")
    assert status["j5"] == ("CANCELED", 0, "canceled")


def test_a_cancel_requested_after_the_claim_wins_over_every_outcome(
    stores: dict[str, Store],
) -> None:
    """The guard is read at the time of the write: the worker's record (from the claim)
    does not know of the cancel, the store does."""

    def scenario(store: Store) -> list[str | None]:
        store.insert([new_job(f"j{i}", retry=3, interval=-1) for i in range(5)])
        jobs = [claim(store, f"j{i}", f"t{i}") for i in range(5)]
        for i in range(5):
            store.cancel(f"j{i}", now=T0 + 1.5)  # running: only requested
        now = T0 + 2
        outcomes = [
            rules.on_success(jobs[0], '"r"', now),
            rules.on_error(jobs[1], ERR, now),
            rules.on_timeout(jobs[2], now),
            rules.on_abandoned(jobs[3], now),
            rules.release(jobs[4]),
        ]
        flags, _ = store.settle_batch(
            [(f"j{i}", f"t{i}", t) for i, t in enumerate(outcomes)], now=now
        )
        return [applied(f) for f in flags]

    result, (records, events) = same_on_both(stores, scenario)
    assert result == ["canceled"] * 5
    assert {r["id"]: r["status"] for r in records} == {f"j{i}": "CANCELED" for i in range(5)}
    by_id = {r["id"]: r for r in records}
    assert by_id["j0"]["result"] == "r"  # the work was done: its result is kept
    assert by_id["j1"]["errors"] == [(1, "ValueError", "exception")]
    assert by_id["j4"]["attempt"] == 0  # never ran
    assert not [e for e in events if e[4] == "added" and e[0] != "j0" and "." in e[0]]
    assert len(records) == 5, "no next occurrence of a canceled series"


def test_cancel_requeue_replace_progress_renew(stores: dict[str, Store]) -> None:
    def scenario(store: Store) -> list[Any]:
        store.insert([new_job("w"), new_job("r"), new_job("f")])
        out: list[Any] = []
        run = claim(store, "r", "tr")
        failed = claim(store, "f", "tf")
        store.settle("f", "tf", rules.on_error(failed, ERR, T0 + 2, permanent=True), now=T0 + 2)
        out.append(applied(store.apply("w", transitions.cancel(), now=T0 + 3)))
        out.append(applied(store.apply("r", transitions.cancel(), now=T0 + 3)))
        out.append(applied(store.apply("w", transitions.cancel(), now=T0 + 3.5)))  # final
        out.append(store.progress("r", "tr", 40.0, now=T0 + 4))
        out.append(store.progress("r", "nope", 60.0, now=T0 + 4))
        out.append(store.renew(["tr", "nope"], lease_until=T0 + 100))
        out.append(applied(store.apply("f", transitions.requeue(T0 + 5), now=T0 + 5)))
        out.append(applied(store.apply("f", transitions.requeue(T0 + 6), now=T0 + 6)))
        out.append(applied(store.apply("w", transitions.requeue(T0 + 7), now=T0 + 7)))
        store.settle("r", "tr", rules.on_cancel_running(run, T0 + 8), now=T0 + 8)
        return out

    result, (records, _) = same_on_both(stores, scenario)
    assert result == ["canceled", "cancel requested", None, True, False, 1, "retried", None,
                      "retried"]  # fmt: skip
    by_id = {r["id"]: r for r in records}
    assert (by_id["f"]["status"], by_id["f"]["attempt"], by_id["f"]["node"]) == (
        "WAITING", 0, None,
    )  # fmt: skip
    assert (by_id["r"]["status"], by_id["r"]["progress"]) == ("CANCELED", 40.0)


def test_insert_once_replaces_a_waiting_and_asks_a_running_job_to_stop(
    stores: dict[str, Store],
) -> None:
    def scenario(store: Store) -> list[Any]:
        out = []
        store.insert_once(new_job("a", once_key="k1"), lambda e: True, transitions.replace_once())
        store.insert_once(new_job("b", once_key="k2"), lambda e: True, transitions.replace_once())
        claim(store, "b", "tb")
        for old, key in (("a", "k1"), ("b", "k2")):
            record, created = store.insert_once(
                new_job(f"{old}2", once_key=key), lambda e: False, transitions.replace_once()
            )
            out.append((record.id, created))
        return out

    result, (records, _) = same_on_both(stores, scenario)
    assert result == [("a2", True), ("b2", True)]
    by_id = {r["id"]: r for r in records}
    assert (by_id["a"]["status"], by_id["a"]["reason"]) == ("CANCELED", "replaced")
    assert (by_id["b"]["status"], by_id["b"]["cancel_requested"]) == ("PROCESSING", True)


def test_canceling_a_series_stops_every_job_of_it(stores: dict[str, Store]) -> None:
    def scenario(store: Store) -> list[Any]:
        store.insert([new_job("s", interval=60), new_job("other", interval=60)])
        head = claim(store, "s", "t1")
        store.settle("s", "t1", rules.on_success(head, "1", T0 + 2), now=T0 + 2)  # s.1 waits
        store.insert([])
        done = store.apply_series("s", transitions.cancel(), now=T0 + 3)
        return sorted((job_id, b.name) for job_id, b in done)

    result, (records, _) = same_on_both(stores, scenario)
    assert result == [("s.1", "canceled")]
    by_id = {r["id"]: r for r in records}
    assert by_id["s.1"]["status"] == "CANCELED"
    assert by_id["other"]["status"] == "WAITING"


def test_a_running_occurrence_of_a_canceled_series_settles_canceled_without_a_next(
    stores: dict[str, Store],
) -> None:
    def scenario(store: Store) -> list[Any]:
        store.insert([new_job("s", interval=-1)])
        head = claim(store, "s", "t1")
        store.settle("s", "t1", rules.on_success(head, "1", T0 + 2), now=T0 + 2)
        occurrence = claim(store, "s.1", "t2", now=T0 + 3)
        done = store.apply_series("s", transitions.cancel(), now=T0 + 4)
        settled = store.settle("s.1", "t2", rules.on_success(occurrence, "2", T0 + 5), now=T0 + 5)
        return [sorted((j, b.name) for j, b in done), applied(settled)]

    result, (records, _) = same_on_both(stores, scenario)
    assert result == [[("s.1", "cancel requested")], "canceled"]
    assert [r["id"] for r in records] == ["s", "s.1"]


def test_a_settle_keeps_the_last_errors_of_a_longer_list_alike(stores: dict[str, Store]) -> None:
    """Another client wrote 40 errors: one more leaves the last MAX_ERRORS on both."""
    from taskschedd.model import MAX_ERRORS

    def scenario(store: Store) -> list[int]:
        store.insert([new_job("j", retry=-1)])
        job = claim(store, "j", "t")
        errors = [ErrorInfo(attempt=i, type=f"E{i}", message="m", time=T0).to_dict()
                  for i in range(40)]  # fmt: skip
        if hasattr(store, "_jobs"):
            import json

            store._jobs.update_one(
                {"_id": "j"}, {"$set": {"errors": [json.dumps(e) for e in errors]}}
            )
        else:
            import json
            import sqlite3

            with sqlite3.connect(store.path) as conn:  # type: ignore[attr-defined]
                conn.execute("UPDATE jobs SET errors = ? WHERE id = 'j'", (json.dumps(errors),))
        store.settle("j", "t", rules.on_error(job, ERR, T0 + 2), now=T0 + 2)
        return [e.attempt for e in store.get("j").errors]

    (result, _) = same_on_both(stores, scenario)
    assert result == [*range(40 - MAX_ERRORS + 1, 40), 1]
