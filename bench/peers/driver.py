"""Run one measurement of one peer system; prints one JSON line.

``python -m bench.peers.driver SYSTEM MEASURE [options]`` from the peers virtualenv, with
``BENCH_REDIS_URL`` pointing at the harness's Redis. SYSTEM: huey-sqlite, huey-redis,
celery, rq. MEASURE: drain, latency, idle. Workers run with each project's default
settings, as their own processes (started here, stopped here, whatever happens).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from bench import common

BIN = Path(sys.executable).parent


def _env(extra: dict[str, str]) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(common.REPO), *filter(None, [env.get("PYTHONPATH")])])
    env.update(extra)
    return env


class _Workers(common.System):
    """Bookkeeping for the worker processes a peer system starts."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.procs: list[subprocess.Popen[bytes]] = []

    def _spawn(self, argv: list[str], extra_env: dict[str, str], tag: str) -> None:
        log = self.workdir / f"{self.name}-{tag}.log"
        self.procs.append(common.spawn(argv, env=_env(extra_env), log=log))

    def roots(self) -> list[int]:
        return [p.pid for p in self.procs]

    def stop(self) -> None:
        for p in self.procs:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(p.pid, 15)
        for p in self.procs:
            common.stop(p, grace=15)
        self.procs = []


class Huey(_Workers):
    batch = False

    def __init__(self, workdir: Path, kind: str, redis_url: str) -> None:
        super().__init__(workdir)
        self.name = f"huey-{kind}"
        where = f"sqlite:{workdir / 'huey.db'}" if kind == "sqlite" else f"redis:{redis_url}/1"
        self.env = {"BENCH_HUEY": where}
        os.environ.update(self.env)
        self.app = importlib.import_module("bench.peers.huey_app")

    def reset(self) -> None:
        self.app.huey.flush()

    def enqueue_noop(self) -> None:
        self.app.noop()

    def enqueue_stamp(self, tag: str, t: float) -> None:
        self.app.stamp(tag, t)

    def start(self) -> None:
        argv = [str(BIN / "huey_consumer"), "bench.peers.huey_app.huey", "-w", "2", "-k", "process"]
        self._spawn(argv, self.env, "consumer")

    def backlog(self) -> int:
        return int(self.app.huey.pending_count())


class Celery(_Workers):
    name = "celery"
    batch = False

    def __init__(self, workdir: Path, redis_url: str) -> None:
        super().__init__(workdir)
        self.env = {"BENCH_CELERY_BROKER": f"{redis_url}/2"}
        os.environ.update(self.env)
        self.app = importlib.import_module("bench.peers.celery_app")
        import redis

        self.redis = redis.Redis.from_url(f"{redis_url}/2")

    def reset(self) -> None:
        self.redis.flushdb()

    def enqueue_noop(self) -> None:
        self.app.noop.delay()

    def enqueue_stamp(self, tag: str, t: float) -> None:
        self.app.stamp.delay(tag, t)

    def start(self) -> None:
        argv = [
            str(BIN / "celery"), "-A", "bench.peers.celery_app", "worker",
            "-P", "prefork", "-c", "2", "-l", "warning",
        ]  # fmt: skip
        self._spawn(argv, self.env, "worker")

    def backlog(self) -> int:
        return int(self.redis.llen("celery"))

    def close(self) -> None:
        self.app.app.close()


class RQ(_Workers):
    name = "rq"
    batch = True

    def __init__(self, workdir: Path, redis_url: str) -> None:
        super().__init__(workdir)
        import redis
        import rq

        self.url = f"{redis_url}/3"
        self.redis = redis.Redis.from_url(self.url)
        self.queue = rq.Queue("default", connection=self.redis)
        self.jobs = importlib.import_module("bench.peers.rq_jobs")

    def reset(self) -> None:
        self.redis.flushdb()

    def enqueue_noop(self) -> None:
        self.queue.enqueue(self.jobs.noop)

    def enqueue_noop_batch(self, k: int) -> None:
        data = [self.queue.prepare_data(self.jobs.noop) for _ in range(k)]
        self.queue.enqueue_many(data)

    def enqueue_stamp(self, tag: str, t: float) -> None:
        self.queue.enqueue(self.jobs.stamp, tag, t)

    def start(self) -> None:
        for i in range(2):
            argv = [str(BIN / "rq"), "worker", "-w", "rq.worker.SimpleWorker", "-u", self.url]
            self._spawn(argv, {}, f"worker{i}")

    def backlog(self) -> int:
        return int(self.queue.count)


def make(system: str, workdir: Path) -> common.System:
    redis_url = os.environ["BENCH_REDIS_URL"]
    if system in ("huey-sqlite", "huey-redis"):
        return Huey(workdir, system.split("-")[1], redis_url)
    if system == "celery":
        return Celery(workdir, redis_url)
    if system == "rq":
        return RQ(workdir, redis_url)
    raise SystemExit(f"unknown system {system!r}; accepted: huey-sqlite, huey-redis, celery, rq")


def huey_wal_pages(workdir: Path, jobs: int = 100) -> dict[str, Any]:
    """SQLite WAL pages per Huey enqueue and dequeue (one commit each), as for taskschedd."""
    system = Huey(workdir, "sqlite", os.environ.get("BENCH_REDIS_URL", ""))
    system.reset()
    for _ in range(300):
        system.enqueue_noop()
    conn = system.app.huey.storage.conn
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.execute("PRAGMA wal_autocheckpoint = 0")
    wal = Path(f"{workdir / 'huey.db'}-wal")

    def frames() -> float:
        return wal.stat().st_size / (4096 + 24) if wal.exists() else 0.0

    f0 = frames()
    for _ in range(jobs):
        system.enqueue_noop()
    f1 = frames()
    for _ in range(jobs):
        system.app.huey.storage.dequeue()
    f2 = frames()
    sync = conn.execute("PRAGMA synchronous").fetchone()[0]
    mode = conn.execute("PRAGMA journal_mode").fetchone()[0]
    return {
        "enqueue": (f1 - f0) / jobs,
        "dequeue": (f2 - f1) / jobs,
        "synchronous": sync,
        "journal_mode": mode,
        "commits_per_job": 2,
        "drain_commits_per_job": 1,
    }


def versions() -> dict[str, str]:
    from importlib.metadata import version

    return {p: version(p) for p in ("huey", "celery", "kombu", "rq", "redis")}


def main() -> int:
    parser = argparse.ArgumentParser(prog="bench.peers.driver")
    parser.add_argument("system")
    parser.add_argument("measure", choices=["drain", "latency", "idle", "versions", "walpages"])
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("-n", type=int, default=20000)
    parser.add_argument("--count", type=int, default=500)
    parser.add_argument("--period", type=float, default=0.02)
    parser.add_argument("--seconds", type=float, default=60.0)
    args = parser.parse_args()
    if args.measure == "versions":
        print(json.dumps(versions()))
        return 0
    if args.measure == "walpages":
        args.workdir.mkdir(parents=True, exist_ok=True)
        print(json.dumps(huey_wal_pages(args.workdir)))
        return 0
    common.install_signal_cleanup()
    args.workdir.mkdir(parents=True, exist_ok=True)
    stamps = args.workdir / f"{args.system}-{args.measure}.stamps"
    os.environ[common.STAMP_ENV] = str(stamps)
    system = make(args.system, args.workdir)
    try:
        if args.measure == "drain":
            result: dict[str, Any] = common.measure_drain(system, args.n, stamps)
        elif args.measure == "latency":
            result = common.measure_latency(system, args.count, args.period, stamps)
        else:
            result = common.measure_idle(system, args.seconds, stamps)
    finally:
        system.stop()
        system.close()
        common.stop_all()
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
