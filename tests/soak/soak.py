"""Soak: N minutes of random load on real daemons while workers and masters are killed,
nodes drained and restarted, and the store is made unavailable; then every job must be
final, none lost, none run twice at once.

    .venv/bin/python -m tests.soak.soak --minutes 10 --store sqlite
    .venv/bin/python -m tests.soak.soak --minutes 10 --store mongo
    .venv/bin/python -m tests.soak.soak --slow        # also the -m slow tests (10,000 jobs)

Load: a random mix of short and long jobs, failures with retries, jobs that time out,
poison jobs that kill their worker, and cancels; and now and then a recurring series
(interval -1, a 0.5-2 s interval, or cron with ``at`` now) of short occurrences, canceled
at a random moment later (half through the series id, half through the occurrence
current then); series still going on when the load ends are canceled before the drain.
Chaos, every few seconds: SIGKILL a worker; SIGKILL a master and restart it; SIGTERM a
node (drain) and restart it; hold the SQLite write lock for 1-5 s, or stop (or SIGKILL)
the MongoDB server for 1-5 s; fill the SQLite store's disk (a tmpfs, when mount is
permitted) for 3-10 s; write a corrupt record.

Counted at the end, in the store and in the jobs' own run log (tests/soak/jobs.py):
lost (added but missing), stuck (not final after the calm drain), duplicated (a run that
started while another run of the same job was still going on), all of one-off jobs. For
every series (see :meth:`Soak.series_problems`), after the drain: no occurrence active,
the last one CANCELED (or the series ended before the cancel), none created (but one
that never ran and is CANCELED: counted apart), claimed or started (its own S line) after
cancel_job returned, none ended otherwise than CANCELED after it returned, no occurrence
run twice at once, no gap in the occurrence numbers, none DONE without a run. Exit
status 1 when any is non-zero. MongoDB runs on its own nx-27017 server; its claims cost
O(ready jobs), so the MongoDB load rate is lower (see --rate).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from taskschedd import Scheduler
from taskschedd.errors import OptionError, TaskSchedError
from taskschedd.model import ACTIVE, JobQuery, JobRecord, JobStatus
from tests.corrupt_records import (
    MONGO_CASES,
    SQLITE_CASES,
    damage_mongo,
    damage_sqlite,
    quarantined,
)
from tests.faults.disk import fill, mount_tmpfs, umount
from tests.faults.harness import (
    LOCKER,
    MONGO_COLLECTIONS,
    FaultDaemon,
    StoreKind,
    all_jobs,
    sqlite_kind,
)
from tests.mongo_server import MongoServer, unique_db_name
from tests.soak.jobs import MODULE

REPO = Path(__file__).resolve().parents[2]
SOAK_RUN = f"{MODULE}.SoakRun"
DISK_SIZE = "256m"  # the SQLite store's tmpfs: room for the run, and quick to fill
NODE_CONFIG: dict[str, Any] = {
    "pm": "static",
    "min_children": 3,
    "max_children": 4,
    "lease": "3s",
    "reap_interval": "0.5s",
    "heartbeat_interval": "0.5s",
    "kill_grace": "0.5s",
    "shutdown_grace": "2s",
    "allowed_modules": [MODULE],
    "logging": {"format": "json", "level": "info"},
}


def job_mix(rng: random.Random, runs: str) -> tuple[dict[str, Any], dict[str, Any], str]:
    """(data, options, kind) of one random job."""
    roll = rng.random()
    data: dict[str, Any] = {"runs": runs, "sleep": round(rng.uniform(0, 0.3), 3)}
    if roll < 0.55:
        return data, {}, "quick"
    if roll < 0.72:
        data["sleep"] = round(rng.uniform(0.5, 3.0), 3)
        return data, {"retry": 1, "retry_interval": 0.2}, "long"
    if roll < 0.84:
        data["fail_on"] = [1]
        return data, {"retry": 2, "retry_interval": 0.5}, "fails once"
    if roll < 0.90:
        data["fail"] = True
        return data, {"retry": 1, "retry_interval": 0.2}, "always fails"
    if roll < 0.95:
        data["sleep"] = 5
        return data, {"timeout": 1}, "times out"
    if roll < 0.98:
        data["kill_self"] = True
        return data, {"retry": 1, "retry_interval": 0.2}, "poison"
    data["sleep"] = round(rng.uniform(1, 4), 3)
    return data, {"priority": rng.randint(-5, 5)}, "prioritised"


#: At most this many series go on at once (each holds about one worker of the 12).
SERIES_AT_ONCE = 3
#: Seconds between two series added (when fewer than SERIES_AT_ONCE go on): by the clock,
#: not per driver tick, whose steps take seconds while the store is down (MongoDB).
SERIES_EVERY = (2.0, 8.0)
#: How long after the series' add the driver cancels it (cron: a minute boundary or not).
SERIES_LIFE = {"interval -1": (0.2, 20.0), "interval": (0.2, 20.0), "cron": (0.2, 75.0)}
#: How long the series are watched after the drain for a late occurrence (MongoDB
#: inserts a next occurrence held, then releases it).
QUIET = 2.0


def series_mix(rng: random.Random, runs: str) -> tuple[dict[str, Any], dict[str, Any], str]:
    """(data, options, kind) of one random series of short occurrences."""
    data: dict[str, Any] = {"runs": runs, "sleep": round(rng.uniform(0.02, 0.4), 3)}
    options: dict[str, Any] = {}
    if rng.random() < 0.3:  # some occurrences fail once and are retried
        data["fail_on"] = [1]
        options = {"retry": 1, "retry_interval": 0.2}
    roll = rng.random()
    if roll < 0.4:
        return data, {**options, "interval": -1}, "interval -1"
    if roll < 0.8:
        return data, {**options, "interval": round(rng.uniform(0.5, 2.0), 2)}, "interval"
    return data, {**options, "cron": "* * * * *", "at": time.time()}, "cron"


@dataclass
class Series:
    """One recurring series the driver added, and its cancel."""

    id: str
    kind: str  # "interval -1" | "interval" | "cron"
    cancel_at: float  # monotonic: when the driver cancels it
    target: str  # "series": cancel the series id; "occurrence": the current occurrence
    by_driver: bool = True  # False: still going on when the load ended
    canceled: str | None = None  # the id given to cancel_job
    called: float | None = None  # time.time() just before the cancel_job that returned
    returned: float | None = None  # time.time() just after it returned
    cancel_failures: int = 0  # cancel_job raised (store down): retried on a later tick


@dataclass
class Outage:
    kind: str
    until: float
    proc: subprocess.Popen[str] | None = None
    filler: Path | None = None  # the file that fills the store's disk


@dataclass
class Soak:
    store: str
    minutes: float
    rate: float
    nodes_n: int
    seed: int
    workdir: Path
    rng: random.Random = field(init=False)
    kind: StoreKind = field(init=False)
    server: MongoServer | None = None
    nodes: list[FaultDaemon] = field(default_factory=list)
    added: list[str] = field(default_factory=list)
    kinds: Counter[str] = field(default_factory=Counter)
    chaos: Counter[str] = field(default_factory=Counter)
    pending: dict[str, tuple[dict[str, Any], dict[str, Any]]] = field(default_factory=dict)
    restart_at: dict[int, float] = field(default_factory=dict)
    outage: Outage | None = None
    add_failures: int = 0
    disk: Path | None = None  # a tmpfs holding the SQLite store, to fill
    corrupted: dict[str, str] = field(default_factory=dict)  # job id -> damage case
    series: dict[str, Series] = field(default_factory=dict)  # series id -> its series
    series_kinds: Counter[str] = field(default_factory=Counter)
    pending_series: dict[str, tuple[dict[str, Any], dict[str, Any], str]] = field(
        default_factory=dict
    )
    run_lines: list[list[str]] = field(default_factory=list)  # runs.log, read by the audit
    late_canceled: int = 0  # occurrences created CANCELED (never run) after the cancel
    #: occurrences claimed before the cancel returned that entered start() after it (killed)
    started_after_claimed_before: int = 0

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)
        self.runs = str(self.workdir / "runs.log")
        if self.store == "sqlite":
            why = mount_tmpfs(self.workdir / "store", DISK_SIZE)
            if why is None:
                self.disk = self.workdir / "store"
            else:
                print(f"soak: no tmpfs for the store, so no 'disk full' events: {why}",
                      file=sys.stderr, flush=True)  # fmt: skip
            self.kind = sqlite_kind(self.workdir)
        else:
            self.server = MongoServer(data_dir=self.workdir / "mongo-data").start()
            name = unique_db_name("soak")
            options = {"database": name, "change_streams": "off", "poll_interval": 0.2,
                       "server_selection_timeout": 1.0, **MONGO_COLLECTIONS}  # fmt: skip
            daemon = {"store": self.server.uri, "poll_interval": "0.2s",
                      "mongodb": {"database": name, "change_streams": "off",
                                  **MONGO_COLLECTIONS}}  # fmt: skip
            self.kind = StoreKind("mongo", self.server.uri, options, daemon, server=self.server)
        self.scheduler = Scheduler(self.kind.open())
        self.nodes = [
            FaultDaemon(self.workdir, f"n{i}", self.kind, dict(NODE_CONFIG))
            for i in range(1, self.nodes_n + 1)
        ]

    # -- the run ---------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        for node in self.nodes:
            node.start(wait=False)
        for node in self.nodes:
            node.wait_ready(30)
        started = time.monotonic()
        end = started + self.minutes * 60
        next_chaos = started + self.rng.uniform(2, 6)
        next_series = started + self.rng.uniform(*SERIES_EVERY)
        last = started
        owed = 0.0
        while (now := time.monotonic()) < end:
            owed += (now - last) * self.rate
            last = now
            while owed >= 1:
                owed -= 1
                self.timed("add", self.add_one)
            self.timed("retry adds", self.retry_pending)
            if self.rng.random() < 0.02:
                self.timed("cancel", self.cancel_one)
            if now >= next_series:
                self.timed("add series", self.add_series)
                next_series = time.monotonic() + self.rng.uniform(*SERIES_EVERY)
            self.timed("series", self.tend_series)
            if now >= next_chaos:
                self.timed("chaos", self.chaos_step)
                next_chaos = time.monotonic() + self.rng.uniform(2, 6)
            self.timed("tend", lambda: self.tend(time.monotonic()))
            time.sleep(0.1)  # pacing of the load generator, not a synchronisation
        load_seconds = time.monotonic() - started
        self.calm()
        self.cancel_remaining_series()
        drained = self.drain(timeout=240)
        report = self.audit(load_seconds, drained)
        return report

    def timed(self, what: str, step: Callable[[], None]) -> None:
        """Run one step of the driver; say so on stderr when it held the driver up."""
        started = time.monotonic()
        step()
        took = time.monotonic() - started
        if took > 2:
            print(f"soak: {what} took {took:.1f}s (chaos so far: {dict(self.chaos)})",
                  file=sys.stderr, flush=True)  # fmt: skip

    def add_one(self, job_id: str | None = None) -> None:
        if job_id is None:
            data, options, what = job_mix(self.rng, self.runs)
            job_id = uuid.uuid4().hex
            self.kinds[what] += 1
            self.pending[job_id] = (data, options)
        data, options = self.pending[job_id]
        try:
            self.scheduler.add_job(SOAK_RUN, data, id=job_id, **options)
        except OptionError as exc:
            if "already exists" not in str(exc):  # a retried add that had been stored
                raise
        except TaskSchedError:
            self.add_failures += 1  # the store is down: retried later, same id
            return
        del self.pending[job_id]
        self.added.append(job_id)

    def retry_pending(self) -> None:
        for job_id in list(self.pending)[:20]:
            self.add_one(job_id)
            if job_id in self.pending:
                return  # still down: try again on a later tick

    def cancel_one(self) -> None:
        if self.added:
            with contextlib.suppress(TaskSchedError):
                self.scheduler.cancel_job(self.rng.choice(self.added[-50:]))
                self.chaos["cancel"] += 1

    # -- series ---------------------------------------------------------------------------
    def active_series(self) -> list[Series]:
        return [s for s in self.series.values() if s.returned is None]

    def add_series(self, series_id: str | None = None) -> None:
        if series_id is None:
            if len(self.active_series()) + len(self.pending_series) >= SERIES_AT_ONCE:
                return
            series_id = uuid.uuid4().hex
            self.pending_series[series_id] = series_mix(self.rng, self.runs)
        data, options, what = self.pending_series[series_id]
        try:
            self.scheduler.add_job(SOAK_RUN, data, id=series_id, **options)
        except OptionError as exc:
            if "already exists" not in str(exc):  # a retried add that had been stored
                raise
        except TaskSchedError:
            self.add_failures += 1  # the store is down: retried later, same id
            return
        del self.pending_series[series_id]
        self.series_kinds[what] += 1
        low, high = SERIES_LIFE[what]
        target = self.rng.choice(["series", "occurrence"])
        cancel_at = time.monotonic() + self.rng.uniform(low, high)
        self.series[series_id] = Series(series_id, what, cancel_at, target)

    def tend_series(self) -> None:
        for series_id in list(self.pending_series):
            self.add_series(series_id)
        now = time.monotonic()
        for series in self.active_series():
            if now >= series.cancel_at:
                self.cancel_series(series)

    def current_occurrence(self, series_id: str) -> str:
        """The id of the series' occurrence current now (the newest active one; the newest
        of all when none is active: the series ended), as the store has it."""
        found = self.scheduler.store.find(JobQuery(series=series_id, limit=None))
        active = [j for j in found if j.status in ACTIVE]
        return max(active or found, key=lambda j: j.series_seq).id

    def cancel_series(self, series: Series) -> bool:
        """cancel_job on the series id or on its current occurrence; the moments just
        before the call and just after it returned. False when the store was down."""
        try:
            if series.target == "occurrence":
                series.canceled = self.current_occurrence(series.id)
            else:
                series.canceled = series.id
            called = time.time()
            self.scheduler.cancel_job(series.canceled)
            returned = time.time()
        except TaskSchedError:
            series.cancel_failures += 1
            return False
        series.called, series.returned = called, returned
        self.chaos["series canceled" if series.by_driver else "series canceled at the end"] += 1
        return True

    def cancel_remaining_series(self) -> None:
        """The series still going on when the load ended are canceled (so the drain can
        end), and then checked as the others."""
        for series_id in list(self.pending_series):
            self.add_series(series_id)
        if self.pending_series:
            raise RuntimeError(f"{len(self.pending_series)} series could not be added")
        deadline = time.monotonic() + 60
        for series in self.active_series():
            series.by_driver = False
            while not self.cancel_series(series):
                if time.monotonic() >= deadline:
                    raise RuntimeError(f"series {series.id} could not be canceled")
                time.sleep(0.5)

    # -- chaos -----------------------------------------------------------------------------
    def live_nodes(self) -> list[FaultDaemon]:
        return [n for n in self.nodes if n.running() and id(n) not in self.restart_at]

    def chaos_step(self) -> None:
        live = self.live_nodes()
        actions = ["kill worker", "kill worker", "kill worker", "kill master", "drain node"]
        actions += ["corrupt record"]
        if self.outage is None:
            actions += ["store outage", "store outage"]
            if self.disk is not None:
                actions += ["disk full"]
        action = self.rng.choice(actions)
        if action in ("kill master", "drain node") and len(live) < 2:
            action = "kill worker"  # keep at least one node serving
        if action == "kill worker":
            pids = [p for n in live for p in n.workers()]
            if pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.rng.choice(pids), signal.SIGKILL)
                self.chaos[action] += 1
        elif action == "kill master":
            node = self.rng.choice(live)
            node.signal(signal.SIGKILL)
            node.wait_exit(10)
            self.restart_at[id(node)] = time.monotonic() + self.rng.uniform(0, 3)
            self.chaos[action] += 1
        elif action == "corrupt record":
            self.corrupt_one()
        elif action == "drain node":
            node = self.rng.choice(live)
            node.signal(signal.SIGTERM)
            self.restart_at[id(node)] = time.monotonic() + self.rng.uniform(3, 5)
            self.chaos[action] += 1
        elif action == "disk full":
            # SQLite first fills the room its WAL file has (up to a few MB): a few seconds
            # more than a lock hold, so that writes do fail.
            self.fill_disk(self.rng.uniform(3, 10))
        else:
            self.start_outage(self.rng.uniform(1, 5))

    def corrupt_one(self) -> None:
        """Another client damages a job's record (see tests/corrupt_records.py): it must
        end quarantined, never run, and stall nothing."""
        sqlite = self.kind.kind == "sqlite"
        case = self.rng.choice(sorted(SQLITE_CASES if sqlite else MONGO_CASES))
        data = {"runs": self.runs, "sleep": 0}
        try:
            job = self.scheduler.add_job(SOAK_RUN, data, at=time.time() + 3600)
            if sqlite:
                assert self.kind.sqlite_path is not None
                damage_sqlite(self.kind.sqlite_path, job.id, case)
            else:
                damage_mongo(self.kind.url, self.kind.options, job.id, case)
        except Exception:  # the store is down (an outage): no damage this time
            return
        self.corrupted[job.id] = case
        self.chaos["corrupt record"] += 1

    def fill_disk(self, seconds: float) -> None:
        """The store's disk has no byte left for ``seconds``: workers keep the outcomes
        the store refuses, nodes stay up, nothing is lost."""
        assert self.disk is not None
        self.outage = Outage("disk full", time.monotonic() + seconds, filler=fill(self.disk))
        self.chaos["disk full"] += 1

    def start_outage(self, seconds: float) -> None:
        now = time.monotonic()
        if self.kind.kind == "sqlite":
            assert self.kind.sqlite_path is not None
            proc = subprocess.Popen(
                [sys.executable, "-c", LOCKER, str(self.kind.sqlite_path), str(seconds)],
                stdout=subprocess.PIPE, text=True,
            )  # fmt: skip
            assert proc.stdout is not None
            proc.stdout.readline()  # "locked"
            self.outage = Outage("sqlite lock", now + seconds, proc)
            self.chaos["sqlite lock"] += 1
            return
        assert self.server is not None
        if self.rng.random() < 0.3:
            self.server.kill()
            self.chaos["mongo server SIGKILL"] += 1
        else:
            self.server.stop()
            self.chaos["mongo server stop"] += 1
        self.outage = Outage("mongo down", now + seconds)

    def end_outage(self) -> None:
        if self.outage is None:
            return
        if self.outage.filler is not None:
            self.outage.filler.unlink(missing_ok=True)
        elif self.outage.proc is not None:
            self.outage.proc.wait(60)
        elif self.server is not None:
            self.server.start()
        self.outage = None

    def tend(self, now: float) -> None:
        if self.outage is not None and now >= self.outage.until:
            self.end_outage()
        for node in self.nodes:
            due = self.restart_at.get(id(node))
            if due is not None and now >= due and not node.running():
                del self.restart_at[id(node)]
                node.start(wait=False)

    def calm(self) -> None:
        """No more chaos: the store back, every node running."""
        self.end_outage()
        deadline = time.monotonic() + 30
        for node in self.nodes:
            if node.running() and id(node) in self.restart_at:  # still draining
                node.wait_exit(max(1.0, deadline - time.monotonic()))
            self.restart_at.pop(id(node), None)
            if not node.running():
                node.start(wait=False)
        for node in self.nodes:
            node.wait_ready(30)
        deadline = time.monotonic() + 60
        while self.pending and time.monotonic() < deadline:
            before = len(self.pending)
            self.retry_pending()
            if len(self.pending) == before:
                time.sleep(0.5)
        if self.pending:
            raise RuntimeError(f"{len(self.pending)} jobs could not be added after the chaos")

    # -- the verdict -----------------------------------------------------------------------
    def drain(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        wanted = set(self.added) | set(self.corrupted)
        while time.monotonic() < deadline:
            jobs = all_jobs(self.scheduler.store)
            occurrences = [j for j in jobs.values() if self.series_id_of(j) is not None]
            if all(i in jobs and jobs[i].is_final for i in wanted) and all(
                j.is_final for j in occurrences
            ):
                return True
            time.sleep(0.5)
        return False

    def series_id_of(self, job: JobRecord) -> str | None:
        """The driver's series this job is the head or an occurrence of (None: one-off)."""
        if job.series is not None and job.series in self.series:
            return job.series
        return job.id if job.id in self.series else None

    @staticmethod
    def never_ran_canceled(job: JobRecord, starts_of: dict[str, list[list[str]]]) -> bool:
        return job.status == JobStatus.CANCELED and job.started is None and job.id not in starts_of

    def series_problems(
        self, jobs: dict[str, JobRecord], starts: list[list[str]], ok_runs: Counter[str]
    ) -> list[tuple[str, str]]:
        """(kind, detail) of every way a series did not stop as cancel_job promises."""
        problems: list[tuple[str, str]] = []
        members: dict[str, list[JobRecord]] = {i: [] for i in self.series}
        for job in jobs.values():
            sid = self.series_id_of(job)
            if sid is not None:
                members[sid].append(job)
        starts_of: dict[str, list[list[str]]] = {}
        for r in starts:
            starts_of.setdefault(r[1], []).append(r)
        ends = {(r[1], r[2], r[3], r[4]): r for r in self.run_lines if r[0] == "E"}
        for sid, series in self.series.items():
            occ = sorted(members[sid], key=lambda j: j.series_seq)
            t1 = series.returned
            what = f"series {sid} ({series.kind}, cancel of the {series.target} {series.canceled})"
            if not occ or t1 is None:
                problems.append(("series lost or never canceled", what))
                continue
            if [j.series_seq for j in occ] != list(range(len(occ))):
                seqs = [j.series_seq for j in occ]
                problems.append(("gap in the occurrences", f"{what}: numbers {seqs[:20]}"))
            active = [j for j in occ if not j.is_final]
            if active:
                problems.append(
                    ("goes on after the drain",
                     f"{what}: " + ", ".join(f"{j.id} {j.status.name}" for j in active[:3]))
                )  # fmt: skip
            last = occ[-1]
            if last.status != JobStatus.CANCELED and (last.ended is None or last.ended > t1):
                ended = "never" if last.ended is None else f"{last.ended - t1:+.3f}s"
                problems.append(
                    ("last occurrence not CANCELED",
                     f"{what}: {last.id} {last.status.name}, ended {ended} after it returned")
                )  # fmt: skip
            for j in occ:
                if j.created > t1 and self.never_ran_canceled(j, starts_of):
                    # The next occurrence a settle just before the cancel created, canceled
                    # in its pending copy, inserted after the cancel returned (MongoDB):
                    # counted, not a violation (as in tests/faults/test_faults_series_cancel).
                    self.late_canceled += 1
                elif j.created > t1:
                    problems.append(
                        ("created after the cancel", f"{what}: {j.id} {j.created - t1:+.3f}s")
                    )
                if j.started is not None and j.started > t1:
                    problems.append(
                        ("claimed after the cancel", f"{what}: {j.id} {j.started - t1:+.3f}s")
                    )
                if j.ended is not None and j.ended > t1 and j.status != JobStatus.CANCELED:
                    problems.append(
                        ("ended after the cancel, not CANCELED",
                         f"{what}: {j.id} {j.status.name} {j.ended - t1:+.3f}s")
                    )  # fmt: skip
                if j.status == JobStatus.DONE and not ok_runs[j.id]:
                    problems.append(("DONE without a run", f"{what}: {j.id}"))
                for r in starts_of.get(j.id, []):
                    if int(r[5]) > 0:
                        problems.append(("run twice at once", f"{what}: {j.id} attempt {r[4]}"))
                    wall = float(r[6])
                    if wall > t1:
                        claim = j.started if int(r[4]) == j.attempt else None
                        claimed = "?" if claim is None else f"{claim - t1:+.3f}s"
                        if claim is not None and claim <= t1 and j.status == JobStatus.CANCELED:
                            # Claimed before the cancel returned: it was running (or about
                            # to start on its worker) when canceled; cancel_job promises it
                            # is killed and ends CANCELED, which it did. Counted apart.
                            self.started_after_claimed_before += 1
                            continue
                        called = series.called
                        early = claim is not None and called is not None and claim < called
                        end = ends.get((r[1], r[2], r[3], r[4]))
                        work = "killed" if end is None else f"{end[5]} {float(end[6]) - t1:+.3f}s"
                        problems.append(
                            ("started after the cancel, claimed before it was called"
                             if early else "started after the cancel",
                             f"{what}: {j.id} attempt {r[4]} started {wall - t1:+.3f}s after "
                             f"cancel_job returned (claimed {claimed}, called "
                             f"{series.called - t1 if series.called else 0:+.3f}s), its "
                             f"work ended {work}, the occurrence {j.status.name}")
                        )  # fmt: skip
        return problems

    def audit(self, load_seconds: float, drained: bool) -> dict[str, Any]:
        # A deliberate pause, not a wait for a condition: a late occurrence (one a store
        # would insert after the drain) gets its chance to appear before the count.
        time.sleep(QUIET)
        jobs: dict[str, JobRecord] = all_jobs(self.scheduler.store)
        wanted = set(self.added)
        runs = [line.split() for line in Path(self.runs).read_text().splitlines()]
        self.run_lines = runs
        all_starts = [r for r in runs if r[0] == "S"]
        starts = [r for r in all_starts if r[1] in wanted]  # one-off jobs' runs
        ok_runs = Counter(r[1] for r in runs if r[0] == "E" and r[5] == "ok")
        overlapping = sorted({r[1] for r in starts if int(r[5]) > 0})
        occurrences = {i: j for i, j in jobs.items() if self.series_id_of(j) is not None}
        occurrence_starts = [r for r in all_starts if r[1] in occurrences]
        series_problems = self.series_problems(jobs, occurrence_starts, ok_runs)
        known = wanted | set(occurrences) | set(self.corrupted)
        strangers = sorted({r[1] for r in all_starts if r[1] not in known})
        lost = sorted(wanted - set(jobs))
        stuck = sorted(i for i in wanted if i in jobs and not jobs[i].is_final)
        unrun = sorted(
            i for i in wanted if i in jobs and jobs[i].status == JobStatus.DONE and not ok_runs[i]
        )
        ran = {r[1] for r in starts}
        unquarantined = sorted(
            f"{i} ({case})"
            for i, case in self.corrupted.items()
            if i not in jobs or not quarantined(jobs[i]) or i in ran
        )
        return {
            "store": self.kind.kind,
            "minutes": round(load_seconds / 60, 2),
            "nodes": self.nodes_n,
            "jobs": len(wanted),
            "mix": dict(self.kinds),
            "runs": len(starts),
            "statuses": dict(Counter(jobs[i].status.name for i in wanted if i in jobs)),
            "chaos": dict(self.chaos),
            "adds retried in outages": self.add_failures,
            "drained": drained,
            "lost": len(lost),
            "duplicated": len(overlapping),
            "stuck": len(stuck),
            "done without a run": len(unrun),
            "corrupt records": len(self.corrupted),
            "corrupt not quarantined or run": len(unquarantined),
            "series": len(self.series),
            "series mix": dict(self.series_kinds),
            "series canceled": sum(s.by_driver for s in self.series.values()),
            "series canceled at the end": sum(not s.by_driver for s in self.series.values()),
            "series canceled via": dict(Counter(s.target for s in self.series.values())),
            "series cancels retried in outages": sum(
                s.cancel_failures for s in self.series.values()
            ),
            "occurrences": len(occurrences),
            "occurrence runs": len(occurrence_starts),
            "occurrence statuses": dict(Counter(j.status.name for j in occurrences.values())),
            "occurrences created CANCELED after the cancel returned (never ran)": (
                self.late_canceled
            ),
            "occurrences claimed before the cancel returned, started after it, CANCELED": (
                self.started_after_claimed_before
            ),
            "series violations": len(series_problems),
            "series violation kinds": dict(Counter(k for k, _ in series_problems)),
            "runs of jobs the soak did not add": len(strangers),
            "examples": {
                "lost": lost[:5],
                "duplicated": overlapping[:5],
                "stuck": stuck[:5],
                "unrun": unrun[:5],
                "corrupt": unquarantined[:5],
                "series": [f"{k}: {d}" for k, d in series_problems[:10]],
                "strangers": strangers[:5],
            },
        }

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.end_outage()
        for node in self.nodes:
            with contextlib.suppress(Exception):
                node.kill_all()
        with contextlib.suppress(Exception):
            self.scheduler.store.close()
        if self.disk is not None:
            umount(self.disk)
        if self.server is not None:
            self.server.close()


def run_slow_tests() -> int:
    """The long fault tests (-m slow: 10,000 jobs on 3 nodes x 4 workers)."""
    return subprocess.call(
        [sys.executable, "-m", "pytest", "-m", "slow", "-q", "-p", "no:cacheprovider",
         "tests/faults"],
        cwd=REPO, env={**os.environ, "TASKSCHED_SOAK_MINUTES": "0"},
    )  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.soak.soak", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("--minutes", type=float, default=float(
        os.environ.get("TASKSCHED_SOAK_MINUTES") or 1))  # fmt: skip
    parser.add_argument("--store", choices=["sqlite", "mongo"], default="sqlite")
    parser.add_argument("--rate", type=float, default=None,
                        help="jobs added per second (default: 8 on SQLite, 3 on MongoDB)")  # fmt: skip
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument("--slow", action="store_true", help="also run the -m slow tests")
    args = parser.parse_args(argv)
    seed = args.seed if args.seed is not None else random.randrange(2**32)
    rate = args.rate if args.rate is not None else (8.0 if args.store == "sqlite" else 3.0)
    code = 0
    if args.slow:
        code = run_slow_tests()
    if args.minutes > 0:
        workdir = Path(tempfile.mkdtemp(prefix=f"taskschedd-soak-{args.store}-"))
        soak = Soak(args.store, args.minutes, rate, args.nodes, seed, workdir)
        try:
            report = soak.run()
        finally:
            soak.close()
            if not args.keep:
                shutil.rmtree(workdir, ignore_errors=True)
        report["seed"] = seed
        print(json.dumps(report, indent=2))
        print(
            f"soak {args.store} {report['minutes']} min: {report['jobs']} jobs, "
            f"{report['runs']} runs, chaos {sum(report['chaos'].values())} events: "
            f"lost {report['lost']}, duplicated {report['duplicated']}, stuck {report['stuck']}, "
            f"corrupt records {report['corrupt records']} "
            f"(not quarantined or run {report['corrupt not quarantined or run']}), "
            f"series {report['series']} ({report['occurrence runs']} occurrence runs, "
            f"violations {report['series violations']})"
            + (f" (work dir {workdir})" if args.keep else "")
        )
        bad = report["lost"] or report["duplicated"] or report["stuck"]
        bad = bad or report["done without a run"] or report["corrupt not quarantined or run"]
        bad = bad or report["series violations"] or report["runs of jobs the soak did not add"]
        code = code or (1 if bad else 0)
    return code


if __name__ == "__main__":
    sys.exit(main())
