"""The store reads of the web dashboard (issue 16) on a big SQLite store: counts() and
keyset pages of job lists, each filter, timed.

    .venv/bin/python -m bench.dashboard_store [--jobs 1000000] [--reps 20] [--store FILE]

Builds a store of ``--jobs`` jobs (store.insert in batches of 10,000, then statuses set
by direct SQL UPDATEs: the triggers keep the counts): 5 queues, 20 classes (one rare),
created 0.5 s apart, about 88 % DONE, 0.5 % FAILED, 1 % CANCELED, 1 % PROCESSING, the
rest WAITING or POSTPONED; every 1,000th job recurs (interval 60): those still waiting
are pending occurrences (the plan column: how find() read each list). ``--store`` keeps the file and reuses it when it has jobs.
Then times (median of ``--reps``, ms) counts(), stats() and find() of the first page
(50, newest first) and the second (before_seq of the first's last) of each list a
dashboard shows. The target is < 50 ms for each (the page's rendering comes on top).
"""

from __future__ import annotations

import argparse
import functools
import os
import random
import shutil
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from taskschedd.model import JobQuery, JobStatus, NewJob
from taskschedd.options import JobOptions
from taskschedd.store.sqlite import SQLiteStore, _plan

T0 = 1_700_000_000.0
STEP = 0.5  # seconds between two jobs' creation
QUEUES = [f"q{i}" for i in range(5)]
#: Class 19 is rare (1 job in 2,000); the others share the rest.
CLASSES = [f"bench.jobs.Task{i}" for i in range(20)]
RARE = CLASSES[19]
BATCH = 10_000
PAGE = 50


def _cls(i: int) -> str:
    return RARE if i % 2000 == 1999 else CLASSES[i % 19]


def build(store: SQLiteStore, n: int) -> float:
    """Fill ``store`` with ``n`` jobs; seconds taken."""
    options = {q: JobOptions(queue=q) for q in QUEUES}
    recurring = {q: JobOptions(queue=q, interval=60) for q in QUEUES}
    rng = random.Random(16)
    started = time.perf_counter()
    for lo in range(0, n, BATCH):
        jobs = []
        for i in range(lo, min(n, lo + BATCH)):
            queue = QUEUES[i % 5]
            created = T0 + i * STEP
            jobs.append(
                NewJob(
                    id=uuid.UUID(int=rng.getrandbits(128)).hex,
                    cls=_cls(i),
                    data_json='{"n":%d}' % i,
                    options=(recurring if i % 1000 == 5 else options)[queue],
                    at=created,
                    created=created,
                )
            )
        store.insert(jobs)
    conn = store._conn
    with store._write():
        # All but the newest 10 % ended; of the newest, some run, some wait for later.
        old = int(n * 0.9)
        conn.execute(
            "UPDATE jobs SET status = 3, ended = created + 1, started = created "
            "WHERE seq <= ? AND seq % 200 NOT IN (7, 8, 9) AND seq % 100 != 3",
            (old,),
        )
        conn.execute("UPDATE jobs SET status = 4, ended = created + 1 WHERE seq % 200 = 7")
        conn.execute("UPDATE jobs SET status = 5, ended = created WHERE seq % 100 = 3")
        conn.execute(
            "UPDATE jobs SET status = 2, claim_token = 'tok' || seq, lease_until = 1e10, "
            "node = 'n', worker = 'n/1', started = created WHERE seq > ? AND seq % 10 = 1",
            (old,),
        )
        conn.execute(
            "UPDATE jobs SET status = 1, at = at + 86400 WHERE seq > ? AND seq % 10 = 2", (old,)
        )
    return time.perf_counter() - started


def timed(fn: Callable[[], Any], reps: int) -> tuple[float, Any]:
    """Median ms of ``reps`` calls, and the last call's answer."""
    out: Any = None
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        out = fn()
        times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times), out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=1_000_000)
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument("--store", type=Path, help="keep the store here (reused if filled)")
    parser.add_argument("--build-only", action="store_true", help="build, report, stop")
    args = parser.parse_args()
    scratch = None
    if args.store is None:
        scratch = tempfile.mkdtemp(prefix="dashboard-store-")
        path = Path(scratch) / "jobs.db"
    else:
        path = args.store
    store = SQLiteStore(str(path), create=True)
    try:
        (have,) = store._conn.execute("SELECT COUNT(*) FROM jobs").fetchone()
        if have == 0:
            seconds = build(store, args.jobs)
            print(f"built {args.jobs:,} jobs in {seconds:.1f} s ({args.jobs / seconds:,.0f}/s)")
        else:
            print(f"reusing {path}: {have:,} jobs")
            args.jobs = have
        print(f"file {os.path.getsize(path) / 2**20:,.0f} MiB")
        if args.build_only:
            return
        report(store, args.jobs, args.reps)
    finally:
        store.close()
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)


def report(store: SQLiteStore, n: int, reps: int) -> None:
    newest = store.find(JobQuery(newest_first=True, limit=1))[0]
    prefix = newest.id[:3]
    end = T0 + n * STEP
    recent = (end - 600, end)  # the last 10 minutes
    middle = (T0 + n * STEP / 2, T0 + n * STEP / 2 + 600)  # 10 minutes, days ago
    lists: dict[str, JobQuery] = {
        "newest": JobQuery(),
        "status=FAILED": JobQuery(statuses=(JobStatus.FAILED,)),
        "status=DONE": JobQuery(statuses=(JobStatus.DONE,)),
        "status=WAITING": JobQuery(statuses=(JobStatus.WAITING,)),
        "active (4 statuses)": JobQuery(
            statuses=(
                JobStatus.WAITING,
                JobStatus.POSTPONED,
                JobStatus.PROCESSING,
                JobStatus.BLOCKED,
            )
        ),
        "queue=q3": JobQuery(queues=("q3",)),
        "cls=rare": JobQuery(classes=(RARE,)),
        "status=FAILED+cls": JobQuery(statuses=(JobStatus.FAILED,), classes=(CLASSES[3],)),
        "status=DONE+cls=rare": JobQuery(statuses=(JobStatus.DONE,), classes=(RARE,)),
        "queue+cls+status": JobQuery(
            statuses=(JobStatus.DONE,), queues=("q1",), classes=(CLASSES[6],)
        ),
        f"id_prefix {prefix!r}": JobQuery(id_prefix=prefix),
        "10 min, newest": JobQuery(since=recent[0], until=recent[1]),
        "10 min, days ago": JobQuery(since=middle[0], until=middle[1]),
        "10 min + status=DONE": JobQuery(
            since=middle[0], until=middle[1], statuses=(JobStatus.DONE,)
        ),
        "since 1 day (wide)": JobQuery(since=end - 86400),
        "wide, old (30-60 %)": JobQuery(since=T0 + n * STEP * 0.3, until=T0 + n * STEP * 0.6),
        "recurring": JobQuery(recurring=True),
    }
    rows: list[tuple[str, float, float | None, int | None, str]] = []
    took, counted = timed(store.counts, reps)
    rows.append(("counts()", took, None, len(counted), ""))
    took, _ = timed(lambda: store.stats(now=end), reps)
    rows.append(("stats()", took, None, None, ""))
    for name, query in lists.items():
        first = replace(query, newest_first=True, limit=PAGE)
        took, page = timed(functools.partial(store.find, first), reps)
        second = replace(first, before_seq=page[-1].seq) if page else first
        took2, page2 = timed(functools.partial(store.find, second), reps)
        plan = _plan(store._conn, first) or "(SQLite's)"
        rows.append((name, took, took2, len(page) + len(page2), plan))
    print(f"{n:,} jobs, median of {reps} (ms); page = {PAGE} jobs, newest first")
    print(f"{'read':28} {'page 1':>8} {'page 2':>8} {'rows':>6}  plan")
    for name, a, b, got, plan in rows:
        second_ms = f"{b:8.2f}" if b is not None else " " * 8
        print(f"{name:28} {a:8.2f} {second_ms} {got if got is not None else '':>6}  {plan}")
    worst = max(max(a, b or 0) for _, a, b, _, _ in rows[2:])
    print(f"slowest find: {worst:.2f} ms ({'within' if worst < 50 else 'OVER'} 50 ms)")


if __name__ == "__main__":
    main()
