"""Canceling a recurring job stops its series, whatever the timing (issue 12, item 3).

A recurring job (``interval`` or ``cron``) is a series: its id is the id ``add_job``
returned (the head, occurrence 0); later occurrences are ``<series>.<n>`` with
``series`` set. ``cancel_job`` (or ``taskschedctl cancel``) on the series id or on any
occurrence must stop the whole series: a waiting occurrence ends CANCELED at once, a
running one is killed and ends CANCELED (also when it finished its work just as the
cancel arrived: a cancel stored before the settle wins), and no further occurrence is
created.

50 trials per store, run concurrently on one node (``CONCURRENT`` series at a time, each
with a worker of its own): interval -1, interval 1 s and cron (minute resolution: ``at``
now runs the head at once, the next occurrence is up to a minute away) series, whose
occurrences last 0.05 s, 0.3 s or 2 s, canceled at a random moment (seeded: the same
moments each run) through the library or ``taskschedctl cancel`` (exit 0), on the
occurrence running then (the current one if none runs) or on the series id. After the
cancel returned (time ``T1``), no occurrence runs any more, and the series was watched
for 1.5 s more (the MongoDB store inserts a series' next occurrence after its parent
settled, and pending ones in a maintenance pass), the store must say:

- every occurrence is final (none WAITING, POSTPONED or PROCESSING);
- the last occurrence ended CANCELED (the series stopped at the one current then);
- every occurrence that ended after ``T1`` ended CANCELED (the cancel was stored first);
- no occurrence was claimed after ``T1``, and none whose claim came later started its
  work after ``T1`` (the job's own start lines, :class:`tests.faults.jobs.Stamped`);
- nothing appeared or changed during those 1.5 s but an occurrence that never ran and
  ends CANCELED: the next one that a settle just before the cancel created, canceled in
  its pending copy and inserted (MongoDB) after the cancel returned; the summary counts
  them.

Every trial runs to its end; the test fails with the count of each kind of violation.
``$TASKSCHED_SERIES_TRIALS`` and ``$TASKSCHED_SERIES_SEED`` change the count and the
moments (a stress run: ``TASKSCHED_SERIES_TRIALS=500``).
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from taskschedd import Scheduler
from taskschedd.model import ACTIVE, JobQuery, JobRecord, JobStatus
from tests.e2e.conftest import REPO
from tests.faults.harness import FaultDaemon, StoreKind
from tests.faults.jobs import MODULE

Factory = Callable[..., FaultDaemon]
STAMPED = f"{MODULE}.Stamped"
#: Trials per store and the seed of their moments; the environment may ask for more
#: (a stress run) or other moments.
TRIALS = int(os.environ.get("TASKSCHED_SERIES_TRIALS") or 50)
SEED = int(os.environ.get("TASKSCHED_SERIES_SEED") or 20261202)
#: Series run at once; the node has a worker for each, and two more.
CONCURRENT = {"sqlite": 10, "mongo": 8}
SERIES = ("interval -1", "interval 1s", "cron")
SECONDS = (0.05, 0.3, 2.0)
TARGETS = ("occurrence", "series")
#: How long after the series was added the cancel may come (a random moment within).
WINDOW = {0.05: 1.0, 0.3: 1.5, 2.0: 3.0}
#: How long a running occurrence may take to be killed and settled after the cancel.
SETTLE_DEADLINE = 20.0
#: How long the series is watched afterwards for anything new (the issue's ~1.5 s).
QUIET = 1.5


@dataclass(frozen=True)
class Trial:
    index: int
    series: str  # one of SERIES
    seconds: float  # how long each occurrence works
    target: str  # "occurrence": the running (or current) occurrence; "series": the series id
    via: str  # "library" | "taskschedctl"
    delay: float  # seconds after the series was added

    def options(self) -> dict[str, Any]:
        if self.series == "interval -1":
            return {"interval": -1}
        if self.series == "interval 1s":
            return {"interval": 1}
        return {"cron": "* * * * *", "at": time.time()}

    def __str__(self) -> str:
        return (
            f"#{self.index} {self.series} {self.seconds:g}s-occurrences, cancel the "
            f"{self.target} via {self.via} at +{self.delay:.2f}s"
        )


@dataclass
class Outcome:
    trial: Trial
    series_id: str = ""
    canceled: str = ""  # the id passed to cancel
    canceled_was: str = ""  # its status when it was chosen
    canceled_ended: str = ""  # its status at the end
    occurrences: int = 0
    late: int = 0  # occurrences inserted CANCELED (never run) after the cancel returned
    took: float = 0.0  # seconds the cancel took
    raw: str = ""  # on MongoDB, after a failure: the documents as stored
    problems: list[tuple[str, str]] = field(default_factory=list)  # (kind, detail)

    def problem(self, kind: str, detail: str) -> None:
        self.problems.append((kind, detail))


def plan(rng: random.Random) -> list[Trial]:
    """Every (series, length, target) combination in turn; one trial in three through
    taskschedctl; each at a random moment within its window."""
    combos = [(s, sec, t) for s in SERIES for sec in SECONDS for t in TARGETS]
    trials = []
    for i in range(TRIALS):
        series, seconds, target = combos[i % len(combos)]
        window = WINDOW[seconds] if series != "cron" else 1.5 * seconds
        trials.append(
            Trial(
                index=i,
                series=series,
                seconds=seconds,
                target=target,
                via="taskschedctl" if i % 3 == 0 else "library",
                delay=rng.uniform(0.0, window),
            )
        )
    return trials


def occurrences(sched: Scheduler, series_id: str) -> list[JobRecord]:
    """The series' head and occurrences, in order."""
    found = sched.store.find(JobQuery(series=series_id, limit=None))
    return sorted(found, key=lambda r: r.series_seq)


def starts(spans: Path) -> dict[str, list[float]]:
    """Each occurrence's start times, as the job wrote them."""
    out: dict[str, list[float]] = {}
    if spans.exists():
        for line in spans.read_text().splitlines():
            job_id, what, at = line.split()
            if what == "start":
                out.setdefault(job_id, []).append(float(at))
    return out


def ctl_cancel(d: FaultDaemon, job_id: str) -> subprocess.CompletedProcess[str]:
    """taskschedctl with the node's configuration, as a sysadmin runs it."""
    return subprocess.run(
        [sys.executable, "-m", "taskschedctl", "-c", str(d.config_path), "cancel", job_id],
        capture_output=True, text=True, timeout=60,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
    )  # fmt: skip


def choose(sched: Scheduler, series_id: str, target: str, seconds: float) -> JobRecord:
    """What to cancel: the head for "series"; else the occurrence running now, waiting a
    little for one to start (an interval series between occurrences), else the current
    one (a cron series between minutes)."""
    if target == "series":
        return sched.store.get(series_id)
    deadline = time.monotonic() + 1.2
    while True:
        jobs = occurrences(sched, series_id)
        running = [j for j in jobs if j.status == JobStatus.PROCESSING]
        if running:
            return running[-1]
        if time.monotonic() >= deadline:
            active = [j for j in jobs if j.status in ACTIVE]
            return (active or jobs)[-1]
        time.sleep(0.005)


def run_trial(kind: StoreKind, d: FaultDaemon, trial: Trial, spans: Path) -> Outcome:
    out = Outcome(trial)
    with kind.scheduler() as sched:
        data = {"seconds": trial.seconds, "spans": str(spans)}
        out.series_id = series_id = sched.add_job(STAMPED, data, **trial.options()).id
        # The random moment of this trial: a deliberate pause, not a wait for a condition.
        time.sleep(trial.delay)
        victim = choose(sched, series_id, trial.target, trial.seconds)
        out.canceled, out.canceled_was = victim.id, victim.status.name
        sent = time.time()
        if trial.via == "library":
            sched.cancel_job(victim.id)
        else:
            res = ctl_cancel(d, victim.id)
            if res.returncode != 0:
                out.problem("taskschedctl cancel failed", f"exit {res.returncode}: {res.stderr}")
        returned = time.time()  # T1
        out.took = returned - sent
        check_stopped(sched, out, returned, spans)
    if out.problems and kind.kind == "mongo":
        out.raw = mongo_docs(kind, out.series_id, returned)
    return out


def mongo_docs(kind: StoreKind, series_id: str, returned: float) -> str:
    """The series' documents as stored (state, pending next occurrence...), for a failure."""
    import pymongo

    client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(kind.url)
    with client:
        jobs = client[kind.options["database"]][kind.options["jobs_collection"]]
        docs = jobs.find({"$or": [{"series": series_id}, {"_id": series_id}]})
        out = []
        for doc in sorted(docs, key=lambda d: d.get("series_seq", 0)):
            pending = doc.get("next_job") or {}
            times = {k: round(doc[k] - returned, 3) for k in ("started", "ended", "updated")
                     if isinstance(doc.get(k), float)}  # fmt: skip
            out.append(
                f"{doc['_id'][-4:]} state={doc.get('state')} status={doc.get('status')} "
                f"cancel_requested={doc.get('cancel_requested')} {times} "
                f"next_pending={doc.get('next_pending')} next_job.state={pending.get('state')}"
            )
        return f"{len(out)} documents, the last ones: " + "; ".join(out[-4:])


def check_stopped(sched: Scheduler, out: Outcome, returned: float, spans: Path) -> None:
    series_id = out.series_id
    deadline = time.monotonic() + SETTLE_DEADLINE
    while any(j.status == JobStatus.PROCESSING for j in occurrences(sched, series_id)):
        if time.monotonic() >= deadline:
            out.problem("still running", f"an occurrence PROCESSING {SETTLE_DEADLINE:g}s later")
            break
        time.sleep(0.05)
    settled = {j.id: j for j in occurrences(sched, series_id)}
    jobs = watch(sched, out, settled)
    out.occurrences = len(jobs)
    by_id = {j.id: j for j in jobs}
    out.canceled_ended = by_id[out.canceled].status.name if out.canceled in by_id else "gone"
    active = [j for j in jobs if not j.is_final]
    if active:
        out.problem(
            "series goes on",
            "not final: " + ", ".join(f"{j.id} {j.status.name}" for j in active[:3]),
        )
    if jobs and jobs[-1].status != JobStatus.CANCELED:
        last = jobs[-1]
        out.problem("last occurrence not CANCELED", f"{last.id} {last.status.name}")
    for j in jobs:
        if j.ended is not None and j.ended > returned and j.status != JobStatus.CANCELED:
            out.problem(
                "ended after the cancel, not CANCELED",
                f"{j.id} {j.status.name} {j.ended - returned:+.3f}s after it returned",
            )
        if j.started is not None and j.started > returned:
            out.problem("claimed after the cancel", f"{j.id} {j.started - returned:+.3f}s")
    for job_id, times in starts(spans).items():
        claimed = by_id[job_id].started if job_id in by_id else None
        late = [t for t in times if t > returned]
        if late and (claimed is None or claimed > returned):
            out.problem("started after the cancel", f"{job_id} {late[0] - returned:+.3f}s")


def never_ran_canceled(job: JobRecord) -> bool:
    return job.status == JobStatus.CANCELED and job.started is None


def watch(sched: Scheduler, out: Outcome, settled: dict[str, JobRecord]) -> list[JobRecord]:
    """The series ``QUIET`` seconds after it settled (the MongoDB store inserts a pending
    next occurrence after its parent settled; its maintenance pass, later still).

    What appears or changes meanwhile must be an occurrence that never ran and ends
    CANCELED: the next occurrence that the settle of the running one created just before
    the cancel, canceled in its pending copy and inserted after the cancel returned
    (counted in ``out.late``). Anything else new or changed is a series that goes on."""
    series_id = out.series_id
    until = time.monotonic() + QUIET
    while True:
        jobs = occurrences(sched, series_id)
        moved = [j for j in jobs if j.id not in settled or settled[j.id].status != j.status]
        odd = [j for j in moved if not never_ran_canceled(j)]
        if odd and all(j.is_final or j.status == JobStatus.PROCESSING for j in odd):
            break  # it ran or settled otherwise: nothing can make that right any more
        if time.monotonic() >= until:
            break
        time.sleep(0.1)
    out.late = sum(1 for j in moved if never_ran_canceled(j))
    if odd:
        was = {j.id: settled[j.id].status.name if j.id in settled else "absent" for j in odd}
        out.problem(
            "changed afterwards",
            ", ".join(f"{j.id} {was[j.id]} -> {j.status.name}" for j in odd[:3])
            + f" in series {series_id}",
        )
    return jobs


def test_canceling_a_series_or_its_occurrence_stops_the_series(
    kind: StoreKind, node_factory: Factory, tmp_path: Path
) -> None:
    concurrent = CONCURRENT[kind.kind]
    workers = concurrent + 2
    d = node_factory(kind, pm="static", min_children=workers, max_children=workers,
                     lease="5s", logging={"level": "info"}).start()  # fmt: skip
    d.wait_workers(workers, timeout=20)
    trials = plan(random.Random(SEED))
    assert sum(t.via == "taskschedctl" for t in trials) >= TRIALS // 4
    lock = threading.Lock()
    outcomes: list[Outcome] = []

    def one(trial: Trial) -> None:
        result = run_trial(kind, d, trial, tmp_path / f"spans-{trial.index}.log")
        with lock:
            outcomes.append(result)

    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=concurrent) as pool:
        for future in [pool.submit(one, t) for t in trials]:
            future.result()
    took = time.monotonic() - started

    outcomes.sort(key=lambda o: o.trial.index)
    failed = [o for o in outcomes if o.problems]
    kinds = Counter(k for o in failed for k in {k for k, _ in o.problems})
    by_combo = Counter(f"{o.trial.series}/{o.trial.seconds:g}s/{o.trial.target}" for o in failed)
    endings = Counter(f"{o.canceled_was}->{o.canceled_ended}" for o in outcomes)
    late = sum(o.late for o in outcomes)
    summary = (
        f"{kind.kind}: {len(failed)} of {len(outcomes)} trials failed in {took:.0f}s; "
        f"violations {dict(kinds)}; by series/length/target {dict(by_combo)}; "
        f"canceled job was->ended {dict(endings)}; occurrences inserted CANCELED after "
        f"the cancel returned: {late}"
    )
    print(summary)
    details = "\n".join(
        f"  {o.trial}: series {o.series_id} ({o.occurrences} occurrences), canceled "
        f"{o.canceled} ({o.canceled_was} -> {o.canceled_ended}): "
        + "; ".join(f"{k}: {v}" for k, v in o.problems)
        + f"; the cancel took {o.took:.2f}s"
        + (f"\n    stored (times relative to T1): {o.raw}" if o.raw else "")
        for o in failed[:12]
    )
    assert not failed, f"{summary}\n{details}"
