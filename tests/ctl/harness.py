"""Helpers for the taskschedctl tests: a SQLite store per test and two ways to run the CLI.

``ctl.run`` runs the real ``run()`` entry in-process (click's isolation: fast, for the many
variations); ``ctl.proc`` runs ``python -m taskschedctl.cli`` as a subprocess (the real
entry point, with a clean environment) at least once per command.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from click.testing import CliRunner

from taskschedctl.cli import run
from taskschedd import Scheduler, Worker
from taskschedd.model import JobQuery, JobRecord
from taskschedd.store.sqlite import SQLiteStore

T = TypeVar("T")
ROOT = Path(__file__).resolve().parents[2]
ALLOWED = ["taskschedd.examples"]
QUEUES = ("critical", "default", "batch")
ECHO = "taskschedd.examples.jobs.Echo"
FAIL = "taskschedd.examples.jobs.Fail"
SLEEP = "taskschedd.examples.jobs.Sleep"


def wait_for(predicate: Callable[[], T], timeout: float = 5.0, what: str = "condition") -> T:
    """Poll until ``predicate()`` is truthy; AssertionError after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(0.01)


@dataclass
class Result:
    code: int
    out: str
    err: str

    def __repr__(self) -> str:
        return f"Result(code={self.code}, out={self.out!r}, err={self.err!r})"


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TASKSCHED_")}
    env["PYTHONPATH"] = str(ROOT)
    env.update(extra)
    return env


class CtlHarness:
    """One test's store and the CLI pointed at it."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp = tmp_path
        self.path = tmp_path / "store" / "taskschedd.db"
        self.url = f"sqlite://{self.path}"  # the path is absolute: sqlite:///tmp/...
        self._stores: list[SQLiteStore] = []

    # -- the CLI ----------------------------------------------------------------------
    def args(self, args: tuple[str, ...], store: bool) -> list[str]:
        """``add`` gets --create: each test starts without a store (as before a daemon's
        first start); tests of a missing store leave ``store`` off or run other commands."""
        if store and args and args[0] == "add" and "--create" not in args:
            args = ("add", "--create", *args[1:])
        return ["--store", self.url, *args] if store else list(args)

    def run(
        self,
        *args: str,
        input: str | None = None,
        env: dict[str, str | None] | None = None,
        store: bool = True,
    ) -> Result:
        """In-process through taskschedctl.cli.run (the function main() exits with)."""
        environ: dict[str, str | None] = {"TASKSCHED_STORE": None, "TASKSCHED_CONFIG": None}
        environ.update(env or {})
        runner = CliRunner()
        with runner.isolation(input=input, env=environ) as (out, err, _):
            code = run(self.args(args, store))
            return Result(code, out.getvalue().decode(), err.getvalue().decode())

    def proc(
        self,
        *args: str,
        input: str | None = None,
        env: dict[str, str] | None = None,
        store: bool = True,
        timeout: float = 20.0,
    ) -> Result:
        """A real process: python -m taskschedctl.cli, with no TASKSCHED_* inherited."""
        cp = subprocess.run(
            [sys.executable, "-m", "taskschedctl.cli", *self.args(args, store)],
            input=input,
            capture_output=True,
            text=True,
            env=clean_env(**(env or {})),
            cwd=self.tmp,
            timeout=timeout,
        )
        return Result(cp.returncode, cp.stdout, cp.stderr)

    def popen(self, *args: str, **kwargs: Any) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [sys.executable, "-m", "taskschedctl.cli", *self.args(args, True)],
            text=True,
            env=clean_env(),
            cwd=self.tmp,
            start_new_session=True,
            **kwargs,
        )

    # -- the store --------------------------------------------------------------------
    def store(self) -> SQLiteStore:
        store = SQLiteStore(self.url, create=True)
        self._stores.append(store)
        return store

    def sched(self) -> Scheduler:
        return Scheduler(self.store())

    def jobs(self) -> list[JobRecord]:
        if not self.path.exists():
            return []
        return self.store().find(JobQuery())

    def job(self, job_id: str) -> JobRecord:
        return self.store().get(job_id)

    def add(self, cls: str = ECHO, data: Any = None, **options: Any) -> str:
        return str(self.sched().add_job(cls, data, **options).id)

    def run_jobs(self, max_jobs: int | None = None) -> int:
        """Run every due job now, in this thread."""
        worker = Worker(self.store(), allowed_modules=ALLOWED, queues=QUEUES, poll_interval=0.05)
        return worker.run(max_jobs=max_jobs, idle_exit=0)

    @contextlib.contextmanager
    def worker(self) -> Iterator[None]:
        """A worker thread running jobs as they come, stopped at the end of the block.

        It logs to stdout: run the CLI as a subprocess (ctl.proc) inside the block."""
        stop = threading.Event()
        worker = Worker(self.store(), allowed_modules=ALLOWED, queues=QUEUES, poll_interval=0.05)
        thread = threading.Thread(target=lambda: worker.run(stop=stop.is_set), daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join(5)

    def config(self, text: str, name: str = "taskschedd.yaml") -> Path:
        path = self.tmp / name
        path.write_text(text)
        return path

    def close(self) -> None:
        for store in self._stores:
            store.close()
