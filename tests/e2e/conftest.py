"""Fixtures for end-to-end tests: the real ``taskschedd`` as a subprocess.

Each daemon gets its own config in tmp_path and a fresh store, runs in its own session,
and is killed at teardown together with everything in that session (workers,
grandchildren), so a failing test never leaves processes behind.

The store is SQLite (a file in tmp_path) unless a test asks for more kinds with the
``store_kinds`` marker (``@BOTH_STORES`` runs it on SQLite and MongoDB): the MongoDB kind
is a fresh database on the per-xdist-worker server of the ``mongo_uri`` fixture (nx-27017,
or ``$TASKSCHED_TEST_MONGODB_URI``), with nx-safe collection names, dropped at teardown.
The fixtures ``store_url``, ``daemon_factory`` and ``scheduler`` work on either kind;
``e2e_store`` says which one and how to open it.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from taskschedd import Scheduler
from taskschedd.model import NodeRecord
from taskschedd.store import open_store
from taskschedd.store.base import Store
from tests.helpers import wait_for
from tests.mongo_server import unique_db_name

REPO = Path(__file__).resolve().parents[2]
TASKSCHEDD = Path(sys.executable).parent / "taskschedd"
JOBS = "tests.e2e.jobs"

#: Every store kind the daemon tests know; unmarked tests run on SQLite only.
STORE_KINDS = ("sqlite", "mongo")


def __getattr__(name: str) -> Any:
    """``BOTH_STORES``: run a test (or, as ``pytestmark``, a module) once per store kind.

    Made on first use, not at import: with --strict-markers, ``pytest.mark.store_kinds``
    fails until this conftest's pytest_configure registered it, and other test
    directories (tests/faults, tests/mongo) import this module for Daemon.
    """
    if name == "BOTH_STORES":
        return pytest.mark.store_kinds(*STORE_KINDS)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


#: nx-27017 refuses dotted collection names (the defaults have them): docs/nx-27017.md.
MONGO_COLLECTIONS = {
    "jobs_collection": "taskscheduler_jobs",
    "events_collection": "taskscheduler_events",
    "nodes_collection": "taskscheduler_nodes",
}
#: How often clients (the ``scheduler`` fixture, Daemon.node()) poll a MongoDB store for
#: wake-ups: SQLite wakes them at once through its notify socket, MongoDB on a standalone
#: server (nx-27017) only by polling.
MONGO_CLIENT_POLL = 0.1
#: The same for the daemons (master and workers), unless a test sets poll_interval.
MONGO_DAEMON_POLL = "0.2s"


def mongo_client_options(url: str, config: Mapping[str, Any]) -> dict[str, Any]:
    """open_store() options for a client of the store a daemon ``config`` names."""
    if not url.startswith(("mongodb://", "mongodb+srv://")):
        return {}
    section = dict(config.get("mongodb") or {})
    options: dict[str, Any] = {"poll_interval": MONGO_CLIENT_POLL}
    for key in ("database", *MONGO_COLLECTIONS):
        if key in section:
            options[key] = section[key]
    streams = section.get("change_streams")
    if isinstance(streams, bool):  # YAML reads a bare on/off as a boolean
        streams = "on" if streams else "off"
    if streams is not None:
        options["change_streams"] = streams
    return options


def proc_table() -> dict[int, tuple[int, int, str]]:
    """pid -> (ppid, session id, state) for every process (from /proc)."""
    table = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        table[int(entry)] = (int(fields[1]), int(fields[3]), fields[0])
    return table


def cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def pid_gone(pid: int) -> bool:
    """True when the process no longer exists (or is a zombie waiting for its parent)."""
    state = proc_table().get(pid)
    return state is None or state[2] == "Z"


class NotifyListener:
    """A NOTIFY_SOCKET (abstract namespace) collecting sd_notify datagrams."""

    def __init__(self) -> None:
        self.name = f"taskschedd-test-{uuid.uuid4().hex}"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind("\0" + self.name)
        self.sock.setblocking(False)
        self.messages: list[list[str]] = []

    @property
    def address(self) -> str:
        return "@" + self.name

    def poll(self) -> list[list[str]]:
        while True:
            try:
                data = self.sock.recv(65536)
            except BlockingIOError:
                return self.messages
            self.messages.append(data.decode().split("\n"))

    def lines(self) -> list[str]:
        return [line for msg in self.poll() for line in msg]

    def wait_line(self, line: str, timeout: float = 5.0, after: int = 0) -> int:
        """Index (in lines()) of the first ``line`` at or after ``after``."""

        def found() -> int | None:
            lines = self.lines()
            for i in range(after, len(lines)):
                if lines[i] == line:
                    return i + 1  # truthy even for index 0
            return None

        index = wait_for(found, timeout, message=lambda: f"{line!r} in {self.lines()}")
        return index - 1

    def close(self) -> None:
        self.sock.close()


class Daemon:
    """One taskschedd node under test.

    ``store_options`` are how a client opens the daemon's store (``open_store()``); by
    default they follow the config's ``mongodb`` section (database, collection names).
    """

    def __init__(
        self,
        tmp_path: Path,
        name: str,
        store_url: str,
        config: dict[str, Any],
        *,
        store_options: Mapping[str, Any] | None = None,
    ) -> None:
        self.dir = tmp_path / name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.name = name
        self.store_url = store_url
        self.config_path = self.dir / "taskschedd.yaml"
        self.log_path = self.dir / "taskschedd.log"
        self.stderr_path = self.dir / "stderr.txt"
        self.config: dict[str, Any] = {
            "store": store_url,
            "node": name,
            "pm": "static",
            "min_children": 1,
            "max_children": 2,
            "idle_timeout": "0.5s",
            "lease": "3s",
            "shutdown_grace": "5s",
            "kill_grace": "0.5s",
            "reap_interval": "0.5s",
            "poll_interval": "0.5s",
            "heartbeat_interval": "0.2s",
            "retention": 0,
            "allowed_modules": [JOBS, "taskschedd.examples"],
            "logging": {"format": "json", "level": "debug", "file": str(self.log_path)},
        }
        self.config.update(config)
        self.store_options = dict(
            mongo_client_options(store_url, self.config) if store_options is None else store_options
        )
        self.proc: subprocess.Popen[bytes] | None = None
        self.notify: NotifyListener | None = None
        self.write_config()

    def write_config(self, **changes: Any) -> None:
        self.config.update(changes)
        self.config_path.write_text(yaml.safe_dump(self.config))

    def start(
        self, *, notify: bool = True, env: dict[str, str] | None = None, wait: bool = True
    ) -> Daemon:
        full_env = dict(os.environ)
        full_env["PYTHONPATH"] = os.pathsep.join(
            [str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]
        )
        full_env.pop("TASKSCHED_CONFIG", None)
        if notify:
            self.notify = NotifyListener()
            full_env["NOTIFY_SOCKET"] = self.notify.address
        full_env.update(env or {})
        with open(self.stderr_path, "ab") as err:
            self.proc = subprocess.Popen(
                [str(TASKSCHEDD), "-c", str(self.config_path)],
                cwd=REPO,
                env=full_env,
                stdin=subprocess.DEVNULL,
                stdout=err,
                stderr=err,
                start_new_session=True,
            )
        if wait:
            self.wait_ready()
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def wait_ready(self, timeout: float = 10.0) -> None:
        if self.notify is not None:
            self.notify.wait_line("READY=1", timeout)
        else:
            wait_for(lambda: self.node() is not None, timeout, message="node registered")

    def open_store(self) -> Store:
        """A new client of this daemon's store (close it after use)."""
        return open_store(self.store_url, **self.store_options)

    def node(self) -> NodeRecord | None:
        with self.open_store() as store:
            for record in store.nodes():
                if record.name == self.name and record.pid == self.pid:
                    return record
        return None

    def workers(self) -> list[int]:
        """Pids of this master's worker processes (from /proc, not from the daemon)."""
        return sorted(
            pid
            for pid, (ppid, _, state) in proc_table().items()
            if ppid == self.pid and state != "Z" and "taskschedd: worker" in cmdline(pid)
        )

    def wait_workers(self, count: int, timeout: float = 5.0) -> list[int]:
        def check() -> tuple[list[int]] | None:
            pids = self.workers()
            return (pids,) if len(pids) == count else None  # a tuple: truthy even for []

        (pids,) = wait_for(
            check, timeout, message=lambda: f"{count} workers, have {self.workers()}"
        )
        return pids

    def signal(self, sig: int) -> None:
        os.kill(self.pid, sig)

    def wait_exit(self, timeout: float = 10.0) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def events(self) -> list[dict[str, Any]]:
        """The daemon's log lines (JSON)."""
        if not self.log_path.exists():
            return []
        out = []
        for line in self.log_path.read_text().splitlines():
            with contextlib.suppress(ValueError):
                out.append(json.loads(line))
        return out

    def logged(self, event: str) -> list[dict[str, Any]]:
        return [e for e in self.events() if e.get("event") == event]

    def diagnostics(self) -> str:
        text = self.stderr_path.read_text() if self.stderr_path.exists() else ""
        log = self.log_path.read_text() if self.log_path.exists() else ""
        return f"--- {self.name} stderr ---\n{text[-4000:]}\n--- {self.name} log ---\n{log[-8000:]}"

    def kill_all(self) -> None:
        """The guard: SIGKILL the master and everything left in its session."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(5)
        sid = self.proc.pid
        for _ in range(3):
            left = [p for p, (_, s, st) in proc_table().items() if s == sid and st != "Z"]
            if not left:
                break
            for pid in left:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.05)
        if self.notify is not None:
            self.notify.close()


@dataclass
class E2EStore:
    """The store of one test: its URL, how clients open it, what daemons' configs need."""

    kind: str
    url: str
    options: dict[str, Any] = field(default_factory=dict)
    daemon_config: dict[str, Any] = field(default_factory=dict)
    database: str | None = None

    def open(self) -> Store:
        return open_store(self.url, **self.options)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "store_kinds(*kinds): run a daemon test once per store kind (sqlite, mongo)"
    )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Parametrize ``store_kind`` for tests marked ``store_kinds`` (ids: [sqlite], [mongo])."""
    marker = metafunc.definition.get_closest_marker("store_kinds")
    if marker is None or "store_kind" not in metafunc.fixturenames:
        return
    unknown = set(marker.args) - set(STORE_KINDS)
    if unknown:
        raise pytest.UsageError(f"store_kinds: unknown {sorted(unknown)}; known {STORE_KINDS}")
    metafunc.parametrize("store_kind", list(marker.args), indirect=True)


@pytest.fixture
def store_kind(request: pytest.FixtureRequest) -> str:
    """ "sqlite" unless the test is marked ``store_kinds``."""
    return str(getattr(request, "param", "sqlite"))


@pytest.fixture
def e2e_store(store_kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> E2EStore:
    """A fresh, empty store of this test's kind."""
    if store_kind == "sqlite":
        url = f"sqlite:///{tmp_path}/store/taskschedd.db"
        return E2EStore("sqlite", url, {"create": True})
    uri = str(request.getfixturevalue("mongo_uri"))
    database = unique_db_name("e2e")
    section = {"database": database, **MONGO_COLLECTIONS}
    store = E2EStore(
        "mongo",
        uri,
        options={"database": database, **MONGO_COLLECTIONS, "poll_interval": MONGO_CLIENT_POLL},
        daemon_config={"mongodb": section, "poll_interval": MONGO_DAEMON_POLL},
        database=database,
    )

    def drop() -> None:  # runs after daemon_factory's teardown killed the daemons
        import pymongo

        client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(
            uri, serverSelectionTimeoutMS=5000
        )
        with client, contextlib.suppress(Exception):
            client.drop_database(database)

    request.addfinalizer(drop)
    return store


@pytest.fixture
def store_url(e2e_store: E2EStore) -> str:
    return e2e_store.url


@pytest.fixture
def daemon_factory(
    tmp_path: Path, e2e_store: E2EStore, request: pytest.FixtureRequest
) -> Iterator[Callable[..., Daemon]]:
    """make(name="n1", **config) -> a Daemon (not started) on this test's store."""
    made: list[Daemon] = []

    def make(name: str = "n1", **config: Any) -> Daemon:
        merged = {**e2e_store.daemon_config, **config}
        d = Daemon(tmp_path, name, e2e_store.url, merged)
        made.append(d)
        return d

    yield make
    failed = getattr(request.node, "rep_call", None)
    for d in made:
        if failed is not None and failed.failed:
            print(d.diagnostics())
        d.kill_all()


@pytest.fixture
def scheduler(e2e_store: E2EStore) -> Iterator[Scheduler]:
    with Scheduler(e2e_store.open()) as s:
        yield s


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """Keep the call report on the item so fixtures can print diagnostics on failure."""
    report = yield
    if report.when == "call":
        item.rep_call = report  # type: ignore[attr-defined]
    return report
