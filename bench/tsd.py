"""taskschedd under test (runs in the project's venv): the daemon, bare workers, and the
figures only taskschedd has (taskschedctl add, RSS growth, claim scaling, Mongo round trips).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import sqlite3
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import yaml

from bench import common
from taskschedd import rules
from taskschedd.config import Config
from taskschedd.model import NewJob
from taskschedd.options import Defaults, resolve
from taskschedd.scheduler import JobSpec, Scheduler
from taskschedd.store.sqlite import SQLiteStore

BIN = Path(sys.executable).parent
NOOP = "bench.jobs.Noop"
STAMP = "bench.jobs.Stamp"


def daemon_available() -> bool:
    try:
        import taskschedd.master  # noqa: F401
    except ImportError:
        return False
    return (BIN / "taskschedd").exists()


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(common.REPO), *filter(None, [env.get("PYTHONPATH")])])
    return env


class Taskschedd(common.System):
    """The real daemon: a generated config, pm static with 2 workers, SQLite store at its
    default durability (WAL, synchronous=FULL), logging at its default level into a file."""

    name = "taskschedd"
    batch = True

    def __init__(self, workdir: Path, tag: str = "tsd", extra: dict[str, Any] | None = None):
        self.workdir = workdir
        self.db = workdir / f"{tag}.db"
        self.url = f"sqlite:///{self.db}"
        self.config_path = workdir / f"{tag}.yaml"
        self.log = workdir / f"{tag}.log"
        config: dict[str, Any] = {
            "store": self.url,
            "node": "bench",
            "pm": "static",
            "min_children": 2,
            "max_children": 2,
            "allowed_modules": ["bench.jobs"],
            "logging": {"format": "json", "level": "info", "file": str(self.log)},
        }
        config.update(extra or {})
        self.config_path.write_text(yaml.safe_dump(config))
        self.scheduler = Scheduler(self.url, create=True)
        self.proc: subprocess.Popen[bytes] | None = None

    def reset(self) -> None:
        self.scheduler.flush()

    def enqueue_noop(self) -> None:
        self.scheduler.add_job(NOOP)

    def enqueue_noop_batch(self, k: int) -> None:
        self.scheduler.add_jobs([JobSpec(NOOP)] * k)

    def enqueue_stamp(self, tag: str, t: float) -> None:
        self.scheduler.add_job(STAMP, {"k": tag, "t": t})

    def start(self) -> None:
        argv = [str(BIN / "taskschedd"), "-c", str(self.config_path)]
        self.proc = common.spawn(argv, env=_env(), log=self.workdir / f"{self.name}.out")

    def roots(self) -> list[int]:
        return [self.proc.pid] if self.proc is not None else []

    def backlog(self) -> int:
        return self.scheduler.store.count_due(["default"], now=time.time(), force_spawn=False)

    def done(self) -> int:
        with contextlib.closing(sqlite3.connect(f"file:{self.db}?mode=ro", uri=True)) as c:
            return int(c.execute("SELECT COUNT(*) FROM jobs WHERE status = 3").fetchone()[0])

    def stop(self) -> None:
        if self.proc is not None:
            common.stop(self.proc, grace=30)
            self.proc = None

    def close(self) -> None:
        self.scheduler.close()

    def master_and_workers(self) -> dict[str, Any]:
        if self.proc is None:
            return {}
        workers = common.children(self.proc.pid)
        return {
            "master_mb": common.rss_mb(self.proc.pid),
            "workers_mb": [common.rss_mb(w) for w in workers],
            "master_cpu_s": common.cpu_seconds(self.proc.pid),
            "workers_cpu_s": [common.cpu_seconds(w) for w in workers],
        }


class BareWorkers(Taskschedd):
    """Two processes each running ``taskschedd.Worker(...).run()``: no master."""

    name = "taskschedd-bare"

    def __init__(self, workdir: Path) -> None:
        super().__init__(workdir, tag="bare")
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self) -> None:
        for i in range(2):
            argv = [sys.executable, "-m", "bench.tsd_worker", self.url]
            self.procs.append(
                common.spawn(argv, env=_env(), log=self.workdir / f"{self.name}-{i}.out")
            )

    def roots(self) -> list[int]:
        return [p.pid for p in self.procs]

    def stop(self) -> None:
        for p in self.procs:
            common.stop(p, grace=30)
        self.procs = []


# -- figures only taskschedd has --------------------------------------------------------
def ctl_add(workdir: Path, count: int) -> dict[str, Any]:
    """Wall time of ``taskschedctl add`` (a fresh process each time), against SQLite."""
    ctl = BIN / "taskschedctl"
    if not ctl.exists():
        return {"skipped": "taskschedctl is not installed"}
    url = f"sqlite:///{workdir / 'ctl.db'}"
    env = _env()
    argv = [str(ctl), "--store", url, "add", NOOP, '{"x": 1}']

    def once(cmd: list[str]) -> float:
        t0 = time.perf_counter()
        subprocess.run(cmd, env=env, check=True, capture_output=True, timeout=30, cwd=common.REPO)
        return time.perf_counter() - t0

    for _ in range(2):
        once(argv)  # warm the page cache and create the store
    times = [once(argv) for _ in range(count)]
    python_floor = [once([sys.executable, "-c", "pass"]) for _ in range(5)]
    import_only = [once([sys.executable, "-c", "import taskschedctl.cli"]) for _ in range(5)]
    return {
        "median_s": common.median(times),
        "min_s": min(times),
        "max_s": max(times),
        "n": count,
        "python_startup_median_s": common.median(python_floor),
        "import_taskschedctl_cli_median_s": common.median(import_only),
    }


def rss_growth(workdir: Path, checkpoints: list[int], timeout: float) -> dict[str, Any]:
    """Master and worker RSS after each checkpoint of jobs run by one daemon."""
    system = Taskschedd(workdir, tag="rss")
    system.reset()
    out: dict[str, Any] = {"checkpoints": []}
    system.start()
    try:
        wait_workers(system)
        out["boot"] = system.master_and_workers()
        added = 0
        for target in checkpoints:
            while added < target:
                k = min(common.BATCH, target - added)
                system.enqueue_noop_batch(k)
                added += k
            common.wait_until(
                lambda target=target: system.done() >= target,  # type: ignore[misc]
                timeout,
                f"{target} jobs done",
                interval=0.2,
            )
            out["checkpoints"].append({"jobs": target, **system.master_and_workers()})
    finally:
        system.stop()
        system.close()
    return out


def wait_workers(system: Taskschedd) -> None:
    common.wait_until(
        lambda: system.proc is not None and len(common.children(system.proc.pid)) >= 2,
        30,
        "2 workers",
        interval=0.05,
    )


def _new_jobs(k: int, now: float) -> list[NewJob]:
    opts, _ = resolve({}, Defaults.parse({}))
    return [
        NewJob(id=uuid.uuid4().hex, cls=NOOP, data_json="null", options=opts, at=now, created=now)
        for _ in range(k)
    ]


def claim_scaling(workdir: Path, sizes: list[int], claims: int) -> dict[str, Any]:
    """Median time of one claim() (and of the master's count_due()) with N waiting jobs."""
    out: dict[str, Any] = {}
    for size in sizes:
        path = workdir / f"claim-{size}.db"
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
        store = SQLiteStore(f"sqlite:///{path}", create=True)
        t0 = time.perf_counter()
        now = time.time() - 1
        left = size
        while left > 0:
            k = min(10000, left)
            store.insert(_new_jobs(k, now))
            left -= k
        build = time.perf_counter() - t0
        claim_t: list[float] = []
        for _ in range(claims):
            token = secrets.token_hex(16)
            t0 = time.perf_counter()
            job = store.claim(
                ["default"], node="bench", worker="w", token=token, lease=30.0, now=time.time()
            )
            claim_t.append(time.perf_counter() - t0)
            assert job is not None
        count_t: list[float] = []
        for _ in range(20):
            t0 = time.perf_counter()
            store.count_due(["default"], now=time.time(), force_spawn=False)
            count_t.append(time.perf_counter() - t0)
        store.close()
        out[str(size)] = {
            "build_s": build,
            "claim_median_ms": (common.median(claim_t) or 0) * 1000,
            "claim_p90_ms": (common.percentile(claim_t, 90) or 0) * 1000,
            "count_due_median_ms": (common.median(count_t) or 0) * 1000,
            "db_mb": path.stat().st_size / 2**20,
        }
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
    small, big = (out[str(s)]["claim_median_ms"] for s in (sizes[0], sizes[-1]))
    out["ratio_big_vs_small"] = big / small if small else None
    return out


def mongo_round_trips(jobs: int) -> dict[str, Any]:
    """pymongo commands per job against nx-27017 (``hello`` heartbeats excluded), in the
    steady state the daemon runs in: an app adds jobs one at a time (its own store object,
    as in its own process) while a worker drains the backlog with one settle_batch per
    batch: the outcomes of its previous batch plus a claim of up to ``limit`` jobs (the
    daemon's ``claim_ahead`` under a backlog of short jobs; 1 is the one-at-a-time pattern). Both clients write
    events, so their event-seq guesses collide as they would in two processes."""
    try:
        import taskschedd.store.mongo  # noqa: F401
    except ImportError:
        return {"skipped": "taskschedd/store/mongo does not exist yet"}
    from pymongo import monitoring

    from taskschedd.model import ClaimRequest, JobRecord
    from taskschedd.store import open_store
    from taskschedd.store.base import Store
    from tests.mongo_server import MongoServer

    ignored = ("hello", "isMaster", "ismaster", "endSessions")

    class Counter(monitoring.CommandListener):
        def __init__(self) -> None:
            self.by_name: dict[str, int] = {}

        def started(self, event: monitoring.CommandStartedEvent) -> None:
            if event.command_name not in ignored:
                self.by_name[event.command_name] = self.by_name.get(event.command_name, 0) + 1

        def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
            pass

        def failed(self, event: monitoring.CommandFailedEvent) -> None:
            pass

        def take(self) -> dict[str, int]:
            out, self.by_name = self.by_name, {}
            return out

    def per(d: dict[str, int], n: int) -> float:
        return sum(d.values()) / max(n, 1)

    def drain_pattern(url: str, limit: int) -> dict[str, Any]:
        app_count, worker_count = Counter(), Counter()
        names = {
            "jobs_collection": "taskscheduler_jobs",
            "events_collection": "taskscheduler_events",
            "nodes_collection": "taskscheduler_nodes",
        }
        app_store = open_store(url, client_options={"event_listeners": [app_count]}, **names)
        store: Store = open_store(url, client_options={"event_listeners": [worker_count]}, **names)
        scheduler = Scheduler(app_store)
        held: list[JobRecord] = []

        def batch(n: int) -> tuple[int, int]:
            """The worker's one write: settle what it held, claim up to n more."""
            now = time.time()
            settles = [(j.id, j.claim_token or "", rules.on_success(j, "null", now)) for j in held]
            request = ClaimRequest(
                queues=("default",), node="bench", worker="bench/1",
                token=secrets.token_hex(16), lease=60.0, limit=n,
            )  # fmt: skip
            done, claimed = store.settle_batch(settles, now=now, claim=request)
            assert all(done), "a settle was fenced off"
            held[:] = claimed
            return len(settles), len(claimed)

        try:
            for _ in range(2 * limit + 1):  # a backlog; connects and creates indexes
                scheduler.add_job(NOOP)
            batch(limit)
            app_count.take(), worker_count.take()
            added = settled = 0
            while settled < jobs:
                for _ in range(limit):  # the app keeps the backlog steady
                    scheduler.add_job(NOOP)
                added += limit
                settled += batch(limit)[0]
            add, work = app_count.take(), worker_count.take()
            # What the rest of the report shows: a batch add, and an empty claim.
            scheduler.add_jobs([JobSpec(NOOP)] * jobs)
            add_batch = app_count.take()
            while held or store.count_due(("default",), now=time.time(), force_spawn=False):
                batch(limit)
            worker_count.take()
            idle_polls = 10
            for _ in range(idle_polls):
                batch(limit)
            idle = worker_count.take()
        finally:
            scheduler.close()
            store.close()
        return {
            "limit": limit,
            "jobs": settled,
            "add_per_job": per(add, added),
            "work_per_job": per(work, settled),
            "total_per_job": per(add, added) + per(work, settled),
            "add_batch_per_job": per(add_batch, jobs),
            "idle_claim_attempt": per(idle, idle_polls),
            "commands": {"add": add, "work": work, "add_batch": add_batch},
        }

    with MongoServer() as server:
        base = server.uri.rstrip("/")
        # nx-27017 accepts no dots in collection names (MongoDB's defaults have them).
        limit = Config().claim_ahead  # the daemon's default
        ahead = drain_pattern(f"{base}/benchrt{limit}", limit)
        single = drain_pattern(f"{base}/benchrt1", 1)
    return {
        "jobs": jobs,
        # The daemon's steady state (claim-ahead, its default limit); the old keys, for
        # the report.
        "steady_state_per_job": ahead["total_per_job"],
        "enqueue_one_per_job": ahead["add_per_job"],
        "claim_settle_per_job": ahead["work_per_job"],
        "enqueue_batch_per_job": ahead["add_batch_per_job"],
        "idle_claim_attempt": ahead["idle_claim_attempt"],
        "commands": ahead["commands"],
        "claim_ahead": ahead,
        "one_at_a_time": single,
    }


def wal_pages(jobs: int = 100) -> dict[str, Any]:
    """SQLite WAL pages written per add_job, claim and settle (each one commit, each commit
    one fsync at synchronous=FULL). Deterministic, unlike timings on a shared machine."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="taskschedd-wal-") as d:
        scheduler = Scheduler(f"sqlite:///{d}/w.db", create=True)
        store = scheduler.store
        assert isinstance(store, SQLiteStore)
        for _ in range(300):  # a realistic B-tree depth first
            scheduler.add_job(NOOP)
        conn = store._conn
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        conn.execute("PRAGMA wal_autocheckpoint = 0")
        wal = Path(f"{d}/w.db-wal")

        def frames() -> float:
            return wal.stat().st_size / (4096 + 24) if wal.exists() else 0.0

        from taskschedd.model import ClaimRequest
        from taskschedd.worker import Worker

        worker = Worker(store, allowed_modules=["bench.jobs"], in_process=False)
        f0 = frames()
        for _ in range(jobs):
            scheduler.add_job(NOOP)
        f1 = frames()
        claimed = [worker.claim() for _ in range(jobs)]
        f2 = frames()
        for job in claimed:
            assert job is not None and job.claim_token is not None
            store.settle(job.id, job.claim_token, rules.on_success(job, "null", time.time()),
                         now=time.time())  # fmt: skip
        f3 = frames()
        # Claiming ahead: one write stores 16 outcomes and claims the next 16.
        scheduler.add_jobs([(NOOP, None)] * (2 * 16))
        request = ClaimRequest(("default",), "bench", "bench/1", "t0", 30.0, limit=16)
        _, batch = store.settle_batch([], now=time.time(), claim=request)
        f4 = frames()
        settles = [(j.id, j.claim_token or "", rules.on_success(j, "null", time.time()))
                   for j in batch]  # fmt: skip
        request = ClaimRequest(("default",), "bench", "bench/1", "t1", 30.0, limit=16)
        _, batch = store.settle_batch(settles, now=time.time(), claim=request)
        f5 = frames()
        assert len(batch) == 16
        scheduler.close()
    return {
        "add_job": (f1 - f0) / jobs,
        "claim": (f2 - f1) / jobs,
        "settle": (f3 - f2) / jobs,
        "batch_16_per_job": (f5 - f4) / 16,
        "commits_per_job": 3,
        "drain_commits_per_job": 2,
        "drain_commits_per_job_claim_ahead": 1 / 16,
    }
