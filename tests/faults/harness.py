"""Fault-injection harness: real daemons on each store kind, and an audit of the store.

The conftest.py files of tests/faults, tests/security, tests/badinput and tests/soak
import the fixtures and hooks from here.

``kind`` runs a test once per store: SQLite (a file in tmp_path) and MongoDB (a fresh
database on the per-xdist-worker nx-27017 server; ``kind_own_server`` gives a test its
own server to stop and start). Daemons come from ``tests.e2e.conftest.Daemon`` with the
store's settings merged into their config, and are killed with everything in their
session at teardown.

nx-27017 claims cost O(ready jobs) (docs/nx-27017.md), so MongoDB runs use fewer jobs
than SQLite runs; the counts are in each test.
"""

from __future__ import annotations

import contextlib
import os
import signal
import site
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from taskschedd import Scheduler
from taskschedd.model import JobQuery, JobRecord, JobStatus, NodeRecord
from taskschedd.store import open_store
from taskschedd.store.base import Store
from tests.e2e.conftest import JOBS, REPO, Daemon, proc_table
from tests.faults.jobs import MODULE
from tests.helpers import wait_for
from tests.mongo_server import MongoServer, external_mongo_uri, unique_db_name

try:
    import taskschedd.store.mongo  # noqa: F401
except ImportError:  # pragma: no cover - the MongoDB store joins once it exists
    HAVE_MONGO = False
else:
    HAVE_MONGO = True

SOAK_ENV = "TASKSCHED_SOAK_MINUTES"
KINDS = ["sqlite", "mongo"] if HAVE_MONGO else ["sqlite"]

#: nx-27017 rejects dots in collection names (the defaults have them): docs/nx-27017.md.
MONGO_COLLECTIONS = {
    "jobs_collection": "taskscheduler_jobs",
    "events_collection": "taskscheduler_events",
    "nodes_collection": "taskscheduler_nodes",
}
#: Short leases and intervals: faults are noticed within a second or two.
FAST = {
    "lease": "1.5s",
    "reap_interval": "0.3s",
    "poll_interval": "0.2s",
    "heartbeat_interval": "0.3s",
    "kill_grace": "0.3s",
    "shutdown_grace": "1s",
}


@dataclass
class StoreKind:
    """One store under test: how clients open it and what a daemon's config needs."""

    kind: str
    url: str
    options: dict[str, Any] = field(default_factory=dict)
    daemon_config: dict[str, Any] = field(default_factory=dict)
    server: MongoServer | None = None  # only when the test owns the server
    sqlite_path: Path | None = None

    def open(self) -> Store:
        return open_store(self.url, **self.options)

    def scheduler(self) -> Scheduler:
        return Scheduler(self.open())


def sqlite_kind(tmp_path: Path) -> StoreKind:
    path = tmp_path / "store" / "taskschedd.db"
    url = f"sqlite:///{path}"
    return StoreKind("sqlite", url, {"create": True}, {"store": url}, sqlite_path=path)


def mongo_kind(uri: str, request: pytest.FixtureRequest, server: MongoServer | None) -> StoreKind:
    name = unique_db_name("faults")
    options: dict[str, Any] = {
        "database": name,
        "change_streams": "off",
        "poll_interval": 0.2,
        **MONGO_COLLECTIONS,
    }
    daemon = {
        "store": uri,
        "mongodb": {"database": name, "change_streams": "off", **MONGO_COLLECTIONS},
    }

    def drop() -> None:
        if server is not None:
            return  # the server and its data directory go with the fixture
        import pymongo

        client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(
            uri, serverSelectionTimeoutMS=5000
        )
        with client, contextlib.suppress(Exception):
            client.drop_database(name)

    request.addfinalizer(drop)
    return StoreKind("mongo", uri, options, daemon, server=server)


@pytest.fixture(params=KINDS)
def kind(request: pytest.FixtureRequest, tmp_path: Path) -> StoreKind:
    """Each store kind in turn, fresh and empty."""
    if request.param == "sqlite":
        return sqlite_kind(tmp_path)
    return mongo_kind(request.getfixturevalue("mongo_uri"), request, None)


@pytest.fixture(params=KINDS)
def kind_own_server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StoreKind]:
    """Like ``kind``, but MongoDB runs on a server of this test's own (to stop, restart)."""
    if request.param == "sqlite":
        yield sqlite_kind(tmp_path)
        return
    if external_mongo_uri() is not None:
        pytest.skip("the MongoDB server is someone else's: it cannot be stopped here")
    with MongoServer() as server:
        yield mongo_kind(server.uri, request, server)


class FaultDaemon(Daemon):
    """An e2e Daemon that reads its node record through the store kind (MongoDB needs
    collection options a bare URL cannot carry)."""

    def __init__(self, tmp_path: Path, name: str, kind: StoreKind, config: dict[str, Any]):
        logging = {"format": "json", "level": "debug", "file": str(tmp_path / name / "taskschedd.log"),
                   **config.pop("logging", {})}  # fmt: skip
        merged = {
            **FAST,
            "logging": logging,
            "allowed_modules": [MODULE, JOBS, "taskschedd.examples"],
            **kind.daemon_config,
            **config,
        }
        super().__init__(tmp_path, name, kind.url, merged)
        self.kind = kind

    def start(
        self,
        *,
        notify: bool = False,
        env: dict[str, str] | None = None,
        wait: bool = True,
        python: str | None = None,
    ) -> FaultDaemon:
        """Without a NOTIFY_SOCKET by default: readiness is the node's registration.

        ``python``: run the daemon with this interpreter (the venv's packages on its
        path) instead of the venv's entry point, e.g. one whose standard library a
        service user can read after the daemon dropped root."""
        if python is None:
            super().start(notify=notify, env=env, wait=wait)
            return self
        full_env = dict(os.environ)
        full_env.pop("TASKSCHED_CONFIG", None)
        full_env["PYTHONPATH"] = os.pathsep.join([str(REPO), *site.getsitepackages()])
        full_env.update(env or {})
        entry = "import sys; from taskschedd.cli import main; sys.argv[0] = 'taskschedd'; main()"
        with open(self.stderr_path, "ab") as err:
            self.proc = subprocess.Popen(
                [python, "-c", entry, "-c", str(self.config_path)],
                cwd="/",
                env=full_env,
                stdin=subprocess.DEVNULL,
                stdout=err,
                stderr=err,
                start_new_session=True,
            )
        if wait:
            self.wait_ready()
        return self

    def node(self) -> NodeRecord | None:
        with self.kind.open() as store:
            for record in store.nodes():
                if record.name == self.name and record.pid == self.pid:
                    return record
        return None

    def session_pids(self) -> list[int]:
        """Every live process in this daemon's session (master, workers, job children)."""
        sid = self.pid
        return sorted(p for p, (_, s, st) in proc_table().items() if s == sid and st != "Z")

    def signal_session(self, sig: int) -> None:
        for pid in self.session_pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)

    def kill_all(self) -> None:
        with contextlib.suppress(ProcessLookupError, AssertionError):
            self.signal_session(signal.SIGCONT)  # a stopped process cannot die of SIGKILL late
        super().kill_all()

    def cpu_seconds(self) -> float:
        """utime + stime of the master (from /proc/PID/stat), in seconds."""
        with open(f"/proc/{self.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@pytest.fixture
def node_factory(
    tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[Callable[..., FaultDaemon]]:
    """make(kind, name="n1", **config) -> a FaultDaemon (not started)."""
    made: list[FaultDaemon] = []

    def make(kind: StoreKind, name: str = "n1", **config: Any) -> FaultDaemon:
        d = FaultDaemon(tmp_path, name, kind, config)
        made.append(d)
        return d

    yield make
    failed = getattr(request.node, "rep_call", None)
    for d in made:
        if failed is not None and failed.failed:
            print(d.diagnostics())
        d.kill_all()


def long_runs_requested(config: pytest.Config) -> bool:
    """Slow and soak tests run only when asked: ``-m slow``/``-m soak`` or from the soak
    command ($TASKSCHED_SOAK_MINUTES); the default run stays short."""
    markexpr = str(config.getoption("markexpr", "") or "")
    return "slow" in markexpr or "soak" in markexpr or bool(os.environ.get(SOAK_ENV))


def pytest_runtest_setup(item: pytest.Item) -> None:
    # CI sets TASKSCHED_TEST_SLOW=1 to run the slow tests (not the soak) with the rest.
    if item.get_closest_marker("slow") and os.environ.get("TASKSCHED_TEST_SLOW") == "1":
        return
    if (item.get_closest_marker("slow") or item.get_closest_marker("soak")) and not (
        long_runs_requested(item.config)
    ):
        pytest.skip(f"long run: select it with -m slow (or set {SOAK_ENV})")


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """Keep the call report on the item so fixtures can print diagnostics on failure."""
    report = yield
    if report.when == "call":
        item.rep_call = report  # type: ignore[attr-defined]
    return report


# -- the audit: what the store and the runs file say ---------------------------------------
def read_runs(path: Path) -> list[tuple[str, int, int]]:
    """(job id, pid, attempt) for each run recorded by tests.faults.jobs.Run."""
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        job_id, pid, attempt = line.split()
        out.append((job_id, int(pid), int(attempt)))
    return out


def all_jobs(store: Store) -> dict[str, JobRecord]:
    return {r.id: r for r in store.find(JobQuery(limit=None))}


@dataclass
class Audit:
    """Lost: added but not in the store. Stuck: not final. Duplicated: one attempt of one
    job run twice (a second owner while the first was alive). Unrun: DONE without a run."""

    total: int
    lost: list[str]
    stuck: list[str]
    duplicated: list[tuple[str, int]]
    unrun: list[str]
    statuses: Counter[str]

    @property
    def ok(self) -> bool:
        return not (self.lost or self.stuck or self.duplicated or self.unrun)

    def __str__(self) -> str:
        return (
            f"{self.total} jobs: lost {len(self.lost)}, stuck {len(self.stuck)}, "
            f"duplicated {len(self.duplicated)}, done-without-run {len(self.unrun)}; "
            f"statuses {dict(self.statuses)}; e.g. lost {self.lost[:3]} stuck {self.stuck[:3]} "
            f"duplicated {self.duplicated[:3]}"
        )


def audit(store: Store, ids: Sequence[str], runs_path: Path) -> Audit:
    jobs = all_jobs(store)
    runs = read_runs(runs_path)
    per_attempt = Counter((job_id, attempt) for job_id, _, attempt in runs)
    ran = {job_id for job_id, _, _ in runs}
    wanted = set(ids)
    return Audit(
        total=len(ids),
        lost=sorted(wanted - set(jobs)),
        stuck=sorted(i for i in wanted if i in jobs and not jobs[i].status.is_final),
        duplicated=sorted(k for k, n in per_attempt.items() if n > 1 and k[0] in wanted),
        unrun=sorted(
            i for i in wanted if i in jobs and jobs[i].status == JobStatus.DONE and i not in ran
        ),
        statuses=Counter(jobs[i].status.name for i in wanted if i in jobs),
    )


def wait_all_final(store: Store, ids: Sequence[str], timeout: float) -> dict[str, JobRecord]:
    """Wait until every job in ``ids`` is final; the records."""
    wanted = set(ids)

    def check() -> dict[str, JobRecord] | None:
        jobs = {i: r for i, r in all_jobs(store).items() if i in wanted}
        return jobs if len(jobs) == len(wanted) and all(r.is_final for r in jobs.values()) else None

    def state() -> str:
        jobs = all_jobs(store)
        return f"all final; now {Counter(r.status.name for i, r in jobs.items() if i in wanted)}"

    return wait_for(check, timeout, interval=0.05, message=state)


def run_data(runs: Path, **extra: Any) -> dict[str, Any]:
    return {"runs": str(runs), **extra}


def worker_pid(worker: str | None) -> int:
    assert worker is not None
    return int(worker.rsplit("/", 1)[1])


def wait_pids_gone(pids: Sequence[int], timeout: float) -> float:
    """Seconds until every pid is gone (or a zombie); AssertionError after ``timeout``."""
    start = time.monotonic()

    def gone() -> bool:
        table = proc_table()
        return all(p not in table or table[p][2] == "Z" for p in pids)

    wait_for(gone, timeout, message=lambda: f"pids {list(pids)} to exit")
    return time.monotonic() - start


RUN = f"{MODULE}.Run"


# Holds the database's write lock (BEGIN IMMEDIATE) until stdin closes or the time is up.
LOCKER = """
import sqlite3, sys, time
conn = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=30)
conn.execute("BEGIN IMMEDIATE")
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
conn.execute("COMMIT")
print("released", flush=True)
"""


@contextmanager
def sqlite_locked(path: Path, seconds: float) -> Iterator[None]:
    """Another process holds the write lock of the database for ``seconds``."""
    proc = subprocess.Popen(
        [sys.executable, "-c", LOCKER, str(path), str(seconds)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "locked"
        yield
        assert proc.wait(seconds + 30) == 0  # the lock ends when the holder commits
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
