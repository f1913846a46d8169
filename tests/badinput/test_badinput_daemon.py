"""Bad input to ``taskschedd`` itself: configuration files and command-line arguments.

Each case runs the real entry point and asserts the exit code, the one-line message on
stderr (no traceback) and that nothing was written: no store, no pidfile, no log file.
The validator's value checks are unit-tested (tests/unit/test_config.py, ~70 cases);
tests/e2e/test_daemon_cli.py covers a bad key and a missing file. These cases add the
process level (exit codes, nothing written) for file-level faults, and the arguments and
runtime conditions that only the command meets.
"""

from __future__ import annotations

import os
import socket
import sqlite3
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.e2e.conftest import REPO, TASKSCHEDD
from tests.faults.harness import FaultDaemon, sqlite_kind

Factory = Callable[..., FaultDaemon]


class Run:
    """One ``taskschedd`` invocation in a fresh directory."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.store = tmp / "store" / "taskschedd.db"
        self.pidfile = tmp / "taskschedd.pid"
        self.logfile = tmp / "taskschedd.log"
        self.config = tmp / "taskschedd.yaml"
        self.base: dict[str, Any] = {
            "store": f"sqlite:///{self.store}",
            "node": "bad",
            "pidfile": str(self.pidfile),
            "logging": {"format": "json", "file": str(self.logfile)},
            "allowed_modules": ["taskschedd.examples"],
        }

    def write(self, changes: dict[str, Any] | None = None, text: str | bytes | None = None) -> Path:
        if isinstance(text, bytes):
            self.config.write_bytes(text)
        elif text is not None:
            self.config.write_text(text)
        else:
            self.config.write_text(yaml.safe_dump({**self.base, **(changes or {})}))
        return self.config

    def __call__(self, *args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("TASKSCHED")}
        env["PYTHONPATH"] = str(REPO)
        return subprocess.run(
            [str(TASKSCHEDD), *args], cwd=self.tmp, env=env, capture_output=True, text=True,
            timeout=timeout, stdin=subprocess.DEVNULL,
        )  # fmt: skip

    def written(self) -> list[str]:
        """What exists besides the config file (and the fixtures a case made on purpose)."""
        return sorted(str(p.relative_to(self.tmp)) for p in self.tmp.rglob("*") if p != self.config)


@pytest.fixture
def run(tmp_path: Path) -> Run:
    return Run(tmp_path)


def one_line_error(result: subprocess.CompletedProcess[str], code: int, *fragments: str) -> None:
    assert result.returncode == code, result
    assert result.stdout == "", result
    assert "Traceback" not in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    for fragment in fragments:
        assert fragment in result.stderr, (fragment, result.stderr)


# -- configuration files: exit 78, file + key + reason, nothing written ----------------------
CONFIG_CASES: list[tuple[str, dict[str, Any] | None, str | bytes | None, tuple[str, ...]]] = [
    ("pm", {"pm": "sometimes"}, None, ("pm: expected one of dynamic|static|ondemand",)),
    ("children", {"min_children": 5, "max_children": 2}, None, ("min_children (5) must be <=",)),
    ("lease", {"lease": "0.5s"}, None, ("lease: must be at least 1s",)),
    ("typo", {"leese": "3s"}, None, ("leese", "did you mean 'lease'?")),
    ("job_defaults", {"job_defaults": {"retry": "many"}}, None, ("job_defaults", "retry")),
    ("mongodb", {"store": "mongodb://127.0.0.1:1/db", "mongodb": {"write_concern": "all"}}, None,
     ("mongodb.write_concern",)),
    ("yaml syntax", None, "pm: [static\nlease: 3s\n", ("line",)),
    ("duplicate key", None, "pm: static\npm: dynamic\n", ("duplicate", "pm")),
    ("not a mapping", None, "- pm\n- static\n", ("mapping",)),
    ("not utf-8", None, b"node: \xff\xfe\n", ("UTF-8",)),
    ("logging.file in a missing directory", {"logging": {"file": "/nonexistent/dir/t.log"}},
     None, ("logging.file: directory /nonexistent/dir does not exist",)),
]  # fmt: skip


@pytest.mark.parametrize(("changes", "text", "fragments"), [c[1:] for c in CONFIG_CASES],
                         ids=[c[0] for c in CONFIG_CASES])  # fmt: skip
def test_a_bad_configuration_file_exits_78_and_writes_nothing(
    run: Run, changes: dict[str, Any] | None, text: str | bytes | None, fragments: tuple[str, ...]
) -> None:
    config = run.write(changes, text)
    result = run("-c", str(config))
    one_line_error(result, 78, *fragments)
    assert run.written() == []
    if changes is None or "logging" not in changes:  # --check-config opens no log file
        assert f"taskschedd: {config}: " in result.stderr, result.stderr
        check = run("-c", str(config), "--check-config")  # the same verdict, same code
        one_line_error(check, 78, *fragments)


def test_a_configuration_path_that_is_a_directory_exits_78(run: Run) -> None:
    result = run("-c", str(run.tmp))
    one_line_error(result, 78, str(run.tmp))
    assert run.written() == []


# -- command-line arguments ------------------------------------------------------------------
def test_unknown_options_and_extra_arguments_exit_2_with_usage(run: Run) -> None:
    config = run.write()
    for args, fragment in (
        (["-c", str(config), "--bogus"], "No such option '--bogus'"),
        (["-c", str(config), "extra"], "Got unexpected extra argument (extra)"),
        (["-c"], "Option '-c' requires an argument"),
    ):
        result = run(*args)
        assert result.returncode == 2, result
        assert fragment in result.stderr and "Traceback" not in result.stderr, result
    assert run.written() == []


@pytest.mark.parametrize(
    ("url", "fragment"),
    [
        ("ftp://host/jobs", "--store: unsupported store 'ftp'"),
        ("mongodb:///db", "--store: no host in MongoDB URL"),
        ("sqlite://", "--store: no database path given"),
    ],
)
def test_a_bad_store_argument_exits_78_naming_the_option(run: Run, url: str, fragment: str) -> None:
    result = run("-c", str(run.write()), "--store", url)
    one_line_error(result, 78, fragment)
    assert run.written() == []


def test_a_file_that_is_not_a_taskschedd_store_exits_69_and_is_left_alone(run: Run) -> None:
    garbage = run.tmp / "garbage.db"
    garbage.write_bytes(b"not a database at all " * 200)
    before = garbage.read_bytes()
    result = run("-c", str(run.write()), "--store", str(garbage))
    assert result.returncode == 69, result
    assert "Traceback" not in result.stderr and str(garbage) in result.stderr, result.stderr
    assert garbage.read_bytes() == before
    assert not run.pidfile.exists()


def test_a_store_from_a_newer_taskschedd_exits_69_and_is_left_alone(run: Run) -> None:
    run.store.parent.mkdir()

    def contents() -> list[tuple[str, ...]]:
        conn = sqlite3.connect(run.store)
        try:
            tables = conn.execute("SELECT name FROM sqlite_master ORDER BY name").fetchall()
            return [*tables, *conn.execute("SELECT * FROM meta").fetchall()]
        finally:
            conn.close()

    conn = sqlite3.connect(run.store, isolation_level=None)
    conn.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
    conn.execute("INSERT INTO meta VALUES ('schema', '999')")
    conn.close()
    before = contents()
    result = run("-c", str(run.write()))
    assert result.returncode == 69, result
    assert "newer than this taskschedd understands" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    assert contents() == before  # no table of ours was added to it
    assert not run.pidfile.exists()


def test_a_store_directory_that_cannot_be_created_exits_69(run: Run) -> None:
    blocker = run.tmp / "file"
    blocker.write_text("a file where a directory should be")
    result = run("-c", str(run.write()), "--store", f"sqlite:///{blocker}/sub/t.db")
    assert result.returncode == 69, result
    assert "cannot create the store directory" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    assert not run.pidfile.exists()


def test_a_pidfile_in_a_missing_directory_exits_1_before_touching_the_store(run: Run) -> None:
    result = run("-c", str(run.write()), "--pidfile", "/nonexistent/dir/t.pid")
    one_line_error(result, 1, "cannot write pidfile /nonexistent/dir/t.pid")
    assert not run.store.exists()


@pytest.fixture
def busy_port() -> Iterator[int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def test_a_metrics_port_in_use_is_refused_with_its_address(run: Run, busy_port: int) -> None:
    config = run.write({"metrics": {"listen": f"127.0.0.1:{busy_port}"}})
    result = run("-c", str(config))
    assert result.returncode not in (0, -9), result
    assert f"127.0.0.1:{busy_port}" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    assert not run.pidfile.exists()


def test_a_second_daemon_on_the_same_pidfile_is_refused_and_the_first_keeps_running(
    node_factory: Factory, tmp_path: Path
) -> None:
    pidfile = tmp_path / "shared.pid"
    first = node_factory(sqlite_kind(tmp_path), "first", pidfile=str(pidfile)).start()
    assert pidfile.read_text().strip() == str(first.pid)
    second = Run(tmp_path / "second-run")
    second.tmp.mkdir()
    config = second.write({"pidfile": str(pidfile)})
    result = second("-c", str(config))
    one_line_error(result, 1, f"pidfile {pidfile} names a running process (pid {first.pid})")
    assert first.running() and pidfile.read_text().strip() == str(first.pid)
    assert not second.store.exists()
