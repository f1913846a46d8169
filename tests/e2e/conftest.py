"""Fixtures for end-to-end tests: the real ``taskschedd`` as a subprocess on SQLite.

Each daemon gets its own config and store in tmp_path, runs in its own session, and is
killed at teardown together with everything in that session (workers, grandchildren),
so a failing test never leaves processes behind.
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
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from taskschedd import Scheduler
from taskschedd.store.base import NodeRecord
from tests.helpers import wait_for

REPO = Path(__file__).resolve().parents[2]
TASKSCHEDD = Path(sys.executable).parent / "taskschedd"
JOBS = "tests.e2e.jobs"


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
    """One taskschedd node under test."""

    def __init__(self, tmp_path: Path, name: str, store_url: str, config: dict[str, Any]) -> None:
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

    def node(self) -> NodeRecord | None:
        with Scheduler(self.store_url) as s:
            for record in s.nodes():
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


@pytest.fixture
def store_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path}/store/taskschedd.db"


@pytest.fixture
def daemon_factory(
    tmp_path: Path, store_url: str, request: pytest.FixtureRequest
) -> Iterator[Callable[..., Daemon]]:
    """make(name="n1", **config) -> a Daemon (not started) on this test's store."""
    made: list[Daemon] = []

    def make(name: str = "n1", **config: Any) -> Daemon:
        d = Daemon(tmp_path, name, store_url, config)
        made.append(d)
        return d

    yield make
    failed = getattr(request.node, "rep_call", None)
    for d in made:
        if failed is not None and failed.failed:
            print(d.diagnostics())
        d.kill_all()


@pytest.fixture
def scheduler(store_url: str) -> Iterator[Scheduler]:
    with Scheduler(store_url) as s:
        yield s


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """Keep the call report on the item so fixtures can print diagnostics on failure."""
    report = yield
    if report.when == "call":
        item.rep_call = report  # type: ignore[attr-defined]
    return report
