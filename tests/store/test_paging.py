"""What a dashboard reads, on every store: keyset pages of job lists (before_seq/after_seq)
with each filter and their combinations, and exact counts by (status, queue, class)."""

from __future__ import annotations

import collections
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest

from taskschedd import rules
from taskschedd.model import JobQuery, JobRecord, JobStatus
from taskschedd.store.base import Store
from tests.corrupt_records import damage_mongo, damage_sqlite
from tests.store.conftest import StoreSpec
from tests.store.test_contract import finish, must_claim, new_job

T0 = 1_700_000_000.0
#: Statuses given at insert, in turn (final ones are stored as added).
MIX = (
    JobStatus.WAITING, JobStatus.DONE, JobStatus.POSTPONED, JobStatus.FAILED, JobStatus.DONE,
    JobStatus.CANCELED, JobStatus.WAITING, JobStatus.DONE,
)  # fmt: skip


@dataclass(frozen=True)
class Added:
    id: str
    status: JobStatus
    queue: str
    cls: str
    created: float


@pytest.fixture
def jobs(store: Store) -> list[Added]:
    """250 jobs, oldest first, of mixed statuses, 3 queues and 4 classes; created one
    second apart from T0 (in two inserts: seq order is insertion order across calls)."""
    added = [
        Added(
            f"j{i:03d}",
            MIX[i % len(MIX)],
            f"q{i % 3}",
            f"tests.api_jobs.C{i % 4}",
            T0 + i,
        )
        for i in range(250)
    ]
    made = [
        new_job(
            a.id,
            cls=a.cls,
            now=a.created,
            at=a.created + (10**6 if a.status is JobStatus.POSTPONED else 0),
            status=a.status,
            queue=a.queue,
        )
        for a in added
    ]
    store.insert(made[:120])
    store.insert(made[120:])
    return added


def walk(store: Store, query: JobQuery, *, page: int = 50) -> Iterator[list[JobRecord]]:
    """Every page of ``query`` by keyset, newest first (or oldest first with after_seq)."""
    cursor: int | None = None
    while True:
        if query.newest_first:
            q = replace(query, before_seq=cursor, limit=page)
        else:
            q = replace(query, after_seq=cursor, limit=page)
        got = store.find(q)
        if not got:
            return
        yield got
        cursor = got[-1].seq
        if len(got) < page:
            return


def ids_of(store: Store, query: JobQuery) -> list[str]:
    pages = list(walk(store, query))
    records = [r for p in pages for r in p]
    seqs = [r.seq for r in records]
    ordered = sorted(seqs, reverse=query.newest_first)
    assert seqs == ordered and len(set(seqs)) == len(seqs) and all(s > 0 for s in seqs)
    assert all(len(p) == 50 for p in pages[:-1])
    return [r.id for r in records]


FILTERS: dict[str, tuple[JobQuery, Any]] = {
    "none": (JobQuery(), lambda a: True),
    "status DONE": (JobQuery(statuses=(JobStatus.DONE,)), lambda a: a.status is JobStatus.DONE),
    "rare status": (
        JobQuery(statuses=(JobStatus.CANCELED,)),
        lambda a: a.status is JobStatus.CANCELED,
    ),
    "statuses": (
        JobQuery(statuses=(JobStatus.WAITING, JobStatus.FAILED)),
        lambda a: a.status in (JobStatus.WAITING, JobStatus.FAILED),
    ),
    "queue": (JobQuery(queues=("q1",)), lambda a: a.queue == "q1"),
    "class": (JobQuery(classes=("tests.api_jobs.C2",)), lambda a: a.cls == "tests.api_jobs.C2"),
    "status and class": (
        JobQuery(statuses=(JobStatus.DONE,), classes=("tests.api_jobs.C3",)),
        lambda a: a.status is JobStatus.DONE and a.cls == "tests.api_jobs.C3",
    ),
    "queues, classes, status": (
        JobQuery(
            statuses=(JobStatus.DONE, JobStatus.WAITING),
            queues=("q0", "q2"),
            classes=("tests.api_jobs.C0", "tests.api_jobs.C1"),
        ),
        lambda a: (
            a.status in (JobStatus.DONE, JobStatus.WAITING)
            and a.queue in ("q0", "q2")
            and a.cls in ("tests.api_jobs.C0", "tests.api_jobs.C1")
        ),
    ),
    "nothing matches": (JobQuery(queues=("nowhere",)), lambda a: False),
    "window": (
        JobQuery(since=T0 + 40, until=T0 + 170),
        lambda a: T0 + 40 <= a.created < T0 + 170,
    ),
    "window and queue": (
        JobQuery(since=T0 + 100, until=T0 + 230, queues=("q2",)),
        lambda a: T0 + 100 <= a.created < T0 + 230 and a.queue == "q2",
    ),
    "until only": (JobQuery(until=T0 + 77), lambda a: a.created < T0 + 77),
    "prefix": (JobQuery(id_prefix="j1"), lambda a: a.id.startswith("j1")),
    "prefix and status": (
        JobQuery(id_prefix="j2", statuses=(JobStatus.DONE,)),
        lambda a: a.id.startswith("j2") and a.status is JobStatus.DONE,
    ),
}


@pytest.mark.parametrize("name", sorted(FILTERS))
def test_keyset_pages_list_every_matching_job_once_in_seq_order(
    store: Store, jobs: list[Added], name: str
) -> None:
    query, match = FILTERS[name]
    expected = [a.id for a in jobs if match(a)]
    assert ids_of(store, replace(query, newest_first=True)) == expected[::-1]
    assert ids_of(store, query) == expected


def test_a_page_between_two_cursors_and_the_newer_jobs(store: Store, jobs: list[Added]) -> None:
    by_id = {r.id: r for r in store.find(JobQuery())}
    low, high = by_id["j010"].seq, by_id["j020"].seq
    between = store.find(JobQuery(after_seq=low, before_seq=high, newest_first=True))
    assert [r.id for r in between] == [f"j{i:03d}" for i in range(19, 10, -1)]
    newer = store.find(JobQuery(after_seq=by_id["j247"].seq, newest_first=True))
    assert [r.id for r in newer] == ["j249", "j248"]
    assert store.find(JobQuery(before_seq=by_id["j000"].seq)) == []


def test_an_id_prefix_is_literal_text(store: Store) -> None:
    now = time.time()
    names = ["a%b", "a%", "a_c", "axc", "a%%", "ab", "a", "b", "a\U0010ffff", "a\U0010ffffz"]
    store.insert([new_job(n, now=now) for n in names])

    def prefixed(prefix: str) -> list[str]:
        return sorted(r.id for r in store.find(JobQuery(id_prefix=prefix, newest_first=True)))

    assert prefixed("a%") == ["a%", "a%%", "a%b"]
    assert prefixed("a_") == ["a_c"]
    assert prefixed("a%b") == ["a%b"]  # a whole id
    assert prefixed("a\U0010ffff") == ["a\U0010ffff", "a\U0010ffffz"]  # no next character
    assert prefixed("A") == []  # case-sensitive
    assert len(prefixed("a")) == 9
    both = store.find(JobQuery(id_prefix="a%", ids=("a%", "a%b", "ab")))
    assert sorted(r.id for r in both) == ["a%", "a%b"]


def test_recurring_lists_the_pending_occurrence_of_each_series(store: Store) -> None:
    now = time.time()
    store.insert(
        [
            new_job("plain", now=now),
            new_job("every", now=now, interval=60),
            new_job("hourly", now=now, cron="@hourly", at=now + 3600),
            new_job("later", now=now, at=now + 3600),
        ]
    )
    head = must_claim(store, now=now, job_id="every")
    assert head.id == "every"
    pending = store.find(JobQuery(recurring=True, newest_first=True))
    assert [r.id for r in pending] == ["hourly"]  # "every" runs: no occurrence waits
    store.settle("every", head.claim_token or "", rules.on_success(head, "1", now), now=now)
    pending = store.find(JobQuery(recurring=True, newest_first=True))
    assert [r.id for r in pending] == ["every.1", "hourly"]
    assert pending[0].seq > pending[1].seq
    postponed = store.find(JobQuery(recurring=True, statuses=(JobStatus.POSTPONED,)))
    assert [r.id for r in postponed][::-1] == [
        r.id for r in pending if r.status is JobStatus.POSTPONED
    ]
    assert store.find(JobQuery(recurring=True, statuses=(JobStatus.DONE,))) == []
    assert [r.id for r in store.find(JobQuery(recurring=True, limit=1))] == ["hourly"]
    assert [r.id for r in store.find(JobQuery(recurring=True, series="every"))] == ["every.1"]


def tally(store: Store) -> collections.Counter[tuple[Any, Any, Any]]:
    out: collections.Counter[tuple[Any, Any, Any]] = collections.Counter()
    for status, queue, cls, n in store.counts():
        assert n > 0
        out[int(status), queue, cls] += n
    return out


def found(store: Store) -> collections.Counter[tuple[Any, Any, Any]]:
    return collections.Counter((int(r.status), r.queue, r.cls) for r in store.find(JobQuery()))


def test_counts_stay_exact_through_every_kind_of_write(store: Store, jobs: list[Added]) -> None:
    assert tally(store) == found(store)
    assert sum(tally(store).values()) == 250
    now = time.time()
    store.insert([new_job(f"n{i}", now=now) for i in range(5)])
    assert tally(store) == found(store)
    held = must_claim(store, now=now)
    assert tally(store)[int(JobStatus.PROCESSING), "default", held.cls] == 1
    assert tally(store) == found(store)
    store.settle(held.id, held.claim_token or "", rules.on_success(held, "1", now), now=now)
    finish(store, "n1", JobStatus.FAILED, now)
    finish(store, "n2", JobStatus.CANCELED, now)
    store.cancel("j000", now=now)
    assert tally(store) == found(store)
    purged = store.purge(statuses=[JobStatus.DONE, JobStatus.FAILED], ended_before=now + 10)
    assert purged > 0
    assert tally(store) == found(store)
    store.flush()
    assert tally(store) == collections.Counter()


@pytest.fixture
def damaged(store: Store, store_spec: StoreSpec) -> Iterator[list[str]]:
    """Jobs damaged the ways another client could; their ids."""
    now = time.time()
    cases = ["status text", "status 99", "options ill-typed", "data not JSON"]
    if store_spec.kind == "sqlite":
        cases += ["options not JSON", "data a BLOB"]
    ids = [f"bad{i}" for i in range(len(cases))]
    store.insert([new_job(i, now=now, interval=5) for i in ids])
    store.get(ids[0])  # the SQLite file exists and is of this schema
    for job_id, case in zip(ids, cases, strict=True):
        if store_spec.kind == "sqlite":
            damage_sqlite(store_spec.url.removeprefix("sqlite://"), job_id, case)
        else:
            damage_mongo(store_spec.url, store_spec.options, job_id, case)
    yield ids


def test_damaged_records_are_counted_and_listed(
    store: Store, store_spec: StoreSpec, damaged: list[str]
) -> None:
    statuses = {row[0] for row in store.counts()}
    assert "abc" in statuses and 99 in statuses
    assert sum(row[3] for row in store.counts()) == len(damaged)
    listed = [r for p in walk(store, JobQuery(newest_first=True), page=2) for r in p]
    assert sorted(r.id for r in listed) == sorted(damaged)
    assert all(r.seq > 0 for r in listed)
    recurring = {r.id for r in store.find(JobQuery(recurring=True))}
    assert "bad0" not in recurring and "bad1" not in recurring  # not runnable statuses
    assert store.find(JobQuery(id_prefix="bad", statuses=(JobStatus.WAITING,), limit=50))


def test_sqlite_rows_of_any_type_never_fail_their_writes(tmp_path: Path) -> None:
    """Another client's row with a BLOB status, a REAL queue, options that are not JSON:
    its insert, update and delete go through, and the counts follow it."""
    import sqlite3

    from taskschedd.store.sqlite import SQLiteStore

    path = tmp_path / "jobs.db"
    store = SQLiteStore(str(path), create=True)
    with store:
        store.insert([new_job("ok", now=T0)])
        conn = sqlite3.connect(path, isolation_level=None)
        conn.execute(
            "INSERT INTO jobs (id, cls, data, status, queue, priority, spawn, at, created, "
            "options) VALUES ('raw', x'00ff', 'null', x'01', 2.5, 0, 0, 1, 1, x'7b')"
        )
        conn.execute("UPDATE jobs SET status = 0, options = 'retry=3' WHERE id = 'raw'")
        conn.execute("UPDATE jobs SET queue = 'q', status = 1 WHERE id = 'raw'")
        rows = {(r[0], r[1], r[2]): r[3] for r in store.counts()}
        assert rows[1, "q", b"\x00\xff"] == 1 and sum(rows.values()) == 2
        assert [r.id for r in store.find(JobQuery(recurring=True))] == []
        assert {r.id for r in store.find(JobQuery(statuses=(JobStatus.POSTPONED,)))} == {"raw"}
        conn.execute("DELETE FROM jobs WHERE id = 'raw'")
        assert [r[:3] for r in store.counts()] == [(0, "default", new_job("x").cls)]
        conn.close()


def test_seq_that_does_not_decode_reads_as_0() -> None:
    from taskschedd.store.decode import JOB_FIELDS, decode_job

    good = new_job("s", now=T0)
    values: dict[str, Any] = dict.fromkeys(JOB_FIELDS)
    values.update(
        id="s", cls=good.cls, data="null", status=0, queue="default", priority=0, at=T0,
        created=T0, attempt=0, options="{}", errors="[]", progress=0.0, cancel_requested=0,
        series_seq=0,
    )  # fmt: skip
    for seq, read in ((7, 7), (7.0, 7), ("7", 0), (-3, 0), (None, 0), (2**70, 0), (True, 0)):
        record = decode_job([values[f] if f != "seq" else seq for f in JOB_FIELDS])
        assert (record.seq, record.corrupt) == (read, None)
    broken = decode_job([values[f] if f not in ("seq", "status") else "x" for f in JOB_FIELDS])
    assert broken.corrupt is not None and broken.seq == 0
