"""Run a throwaway MongoDB-compatible server (nx-27017) for tests and scripts.

No real ``mongod`` is available in development, so tests talk to
`nx-27017 <https://pypi.org/project/nx-27017/>`_, a MongoDB wire-protocol
server backed by SQLite (see ``docs/nx-27017.md`` for what does and does not
behave like MongoDB). When ``TASKSCHED_TEST_MONGODB_URI`` is set, tests use
that server instead and nothing is started.

Typical pytest use (``tests/conftest.py``)::

    import pytest
    from mongo_server import MongoServer, mongo_uri_for_tests

    @pytest.fixture(scope="session")
    def mongo_uri() -> Iterator[str]:
        with mongo_uri_for_tests() as uri:   # external server or nx-27017
            yield uri

    @pytest.fixture
    def mongo_server() -> Iterator[MongoServer]:
        # Outage tests need a server they own (stop/restart/kill).
        with MongoServer() as server:
            yield server

Script use::

    with MongoServer() as server:
        client = pymongo.MongoClient(server.uri)
        server.restart()          # same port, same data: data survives

Each test (and each xdist worker) should use its own database name, see
``unique_db_name()``; nx-27017 only accepts names matching
``[A-Za-z0-9][A-Za-z0-9_-]{0,63}`` (no dots), a subset of MongoDB's.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Self

import pymongo
from pymongo.errors import PyMongoError

ENV_TEST_URI = "TASKSCHED_TEST_MONGODB_URI"

LOOPBACK = "127.0.0.1"

# Runs nx-27017 with the interpreter running us, so the child's pid is the
# server's pid (no wrapper process) and no PATH lookup is involved.
_NX_MAIN = "import sys; from nx_27017.nx_27017 import main; sys.exit(main())"

_POLL_INTERVAL_S = 0.02


class MongoServerError(RuntimeError):
    """The test server could not be started or stopped."""


def pick_free_port(host: str = LOOPBACK) -> int:
    """Return a TCP port that was free on ``host`` a moment ago.

    There is an unavoidable window between closing the probe socket and the
    server binding the port; ``MongoServer.start`` detects a lost race (the
    server exits, or a different process answers) and retries.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def unique_db_name(prefix: str = "tsd") -> str:
    """A database name valid on both MongoDB and nx-27017 (max 64 chars)."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    name = (
        f"{prefix}_{worker}_{uuid.uuid4().hex[:12]}"
        if worker
        else f"{prefix}_{uuid.uuid4().hex[:12]}"
    )
    return name[:64]


class MongoServer:
    """An nx-27017 subprocess on a loopback port with its own data directory.

    ``start()`` picks a free port (unless one was given) and a temporary run
    directory (unless ``data_dir`` was given), starts the server in its own
    session and returns once a ``ping`` succeeds. ``stop()`` sends SIGTERM and
    SIGKILL after ``stop_timeout``. ``restart()`` keeps port and data, as
    does ``kill()`` followed by ``start()`` (a crash: committed writes
    survive because SQLite runs in WAL mode). ``close()`` stops the server
    and deletes the run directory if this object created it.
    """

    def __init__(
        self,
        *,
        host: str = LOOPBACK,
        port: int | None = None,
        data_dir: str | os.PathLike[str] | None = None,
        startup_timeout: float = 20.0,
        stop_timeout: float = 10.0,
        journal_mode: str = "WAL",
        extra_args: Sequence[str] = (),
        command: Sequence[str] | None = None,
    ) -> None:
        self.host = host
        self._fixed_port = port is not None
        self._port: int | None = port
        self._startup_timeout = startup_timeout
        self._stop_timeout = stop_timeout
        self._journal_mode = journal_mode
        self._extra_args = list(extra_args)
        self._command = list(command) if command is not None else [sys.executable, "-c", _NX_MAIN]
        self._owns_run_dir = False
        self._run_dir: Path | None = None
        self._data_dir: Path | None = Path(data_dir) if data_dir is not None else None
        self._proc: subprocess.Popen[bytes] | None = None
        self._output: IO[bytes] | None = None
        self.startup_seconds: float | None = None

    # -- properties -----------------------------------------------------

    @property
    def port(self) -> int:
        if self._port is None:
            raise MongoServerError("server has no port yet: call start()")
        return self._port

    @property
    def uri(self) -> str:
        """``mongodb://127.0.0.1:PORT/`` (valid across restart())."""
        return f"mongodb://{self.host}:{self.port}/"

    @property
    def data_dir(self) -> Path:
        """Directory holding one ``<database>.db`` SQLite file per database."""
        if self._data_dir is None:
            raise MongoServerError("server has no data dir yet: call start()")
        return self._data_dir

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def log_path(self) -> Path:
        """Server stdout/stderr (its log lines and tracebacks)."""
        return self._ensure_run_dir() / "nx-27017.out"

    # -- lifecycle --------------------------------------------------------

    def start(self) -> Self:
        """Start the server and wait (with a deadline) until it answers ping."""
        if self.running:
            return self
        self._ensure_run_dir()
        attempts = 1 if self._fixed_port else 5
        last_error: MongoServerError | None = None
        for _ in range(attempts):
            if not self._fixed_port:
                self._port = pick_free_port(self.host)
            try:
                self._spawn_and_wait()
                # Later start()/restart() calls reuse this port (stable uri).
                self._fixed_port = True
                return self
            except MongoServerError as exc:
                last_error = exc
                self._terminate(graceful=False)
        assert last_error is not None
        raise last_error

    def stop(self) -> None:
        """SIGTERM the server, SIGKILL it after ``stop_timeout``. Idempotent."""
        self._terminate(graceful=True)

    def kill(self) -> None:
        """SIGKILL the server at once (simulated crash); data dir is kept."""
        self._terminate(graceful=False)

    def restart(self) -> Self:
        """Stop, then start again on the same port with the same data."""
        self.stop()
        return self.start()

    def close(self) -> None:
        """Stop the server and remove the run directory if we created it."""
        self.stop()
        if self._owns_run_dir and self._run_dir is not None:
            shutil.rmtree(self._run_dir, ignore_errors=True)
            self._run_dir = None
            self._data_dir = None
            self._owns_run_dir = False

    def client(self, **kwargs: Any) -> pymongo.MongoClient[dict[str, Any]]:
        """A MongoClient for this server; short timeouts unless overridden."""
        options: dict[str, Any] = {
            "serverSelectionTimeoutMS": 5000,
            "connectTimeoutMS": 2000,
        }
        options.update(kwargs)
        return pymongo.MongoClient(self.uri, **options)

    def log_tail(self, max_chars: int = 4000) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return text[-max_chars:]

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"MongoServer(port={self._port}, data_dir={self._data_dir}, {state})"

    # -- internals --------------------------------------------------------

    def _ensure_run_dir(self) -> Path:
        if self._run_dir is None:
            self._run_dir = Path(tempfile.mkdtemp(prefix="nx27017-"))
            self._owns_run_dir = True
        if self._data_dir is None:
            self._data_dir = self._run_dir / "data"
        return self._run_dir

    def _argv(self) -> list[str]:
        run_dir = self._ensure_run_dir()
        return [
            *self._command,
            "--host",
            self.host,
            "--port",
            str(self.port),
            "--data-dir",
            str(self.data_dir),
            # Defaults are /tmp/nx_27017.{pid,log}: shared between instances,
            # and a live pid in the pid file makes a second server refuse
            # to start. Keep both private to this instance.
            "--pid-file",
            str(run_dir / "nx-27017.pid"),
            "--log-file",
            str(run_dir / "nx-27017.log"),
            "--journal-mode",
            self._journal_mode,
            *self._extra_args,
        ]

    def _spawn_and_wait(self) -> None:
        run_dir = self._ensure_run_dir()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            (run_dir / "nx-27017.pid").unlink()  # stale after a kill()
        output = open(self.log_path, "ab")  # noqa: SIM115 - closed in _terminate
        started = time.monotonic()
        try:
            self._proc = subprocess.Popen(
                self._argv(),
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                cwd=run_dir,
                start_new_session=True,
            )
        except BaseException:
            output.close()
            raise
        self._output = output
        self._wait_ready(started + self._startup_timeout)
        self.startup_seconds = time.monotonic() - started

    def _wait_ready(self, deadline: float) -> None:
        proc = self._proc
        assert proc is not None
        # 1. Wait for the listening socket (cheap; exits early if the child dies).
        while True:
            if proc.poll() is not None:
                raise MongoServerError(
                    f"nx-27017 exited with {proc.returncode} during startup "
                    f"on port {self.port}:\n{self.log_tail()}"
                )
            try:
                with socket.create_connection((self.host, self.port), timeout=0.2):
                    break
            except OSError:
                pass
            if time.monotonic() >= deadline:
                raise MongoServerError(
                    f"nx-27017 not listening on {self.host}:{self.port} within "
                    f"{self._startup_timeout}s:\n{self.log_tail()}"
                )
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=_POLL_INTERVAL_S)
        # 2. Wait for ping, and make sure the answer comes from our child
        #    (serverStatus.pid), not from someone who grabbed the port.
        while True:
            remaining_ms = max(100, int((deadline - time.monotonic()) * 1000))
            client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(
                self.uri,
                serverSelectionTimeoutMS=min(remaining_ms, 1000),
                connectTimeoutMS=1000,
                socketTimeoutMS=5000,
            )
            try:
                client.admin.command("ping")
                status = client.admin.command("serverStatus")
                if status.get("pid") not in (None, proc.pid):
                    raise MongoServerError(
                        f"port {self.port} is served by pid {status.get('pid')}, "
                        f"not by our nx-27017 (pid {proc.pid})"
                    )
                return
            except PyMongoError:
                pass
            finally:
                client.close()
            if proc.poll() is not None:
                raise MongoServerError(
                    f"nx-27017 exited with {proc.returncode} during startup:\n{self.log_tail()}"
                )
            if time.monotonic() >= deadline:
                raise MongoServerError(
                    f"nx-27017 on port {self.port} did not answer ping within "
                    f"{self._startup_timeout}s:\n{self.log_tail()}"
                )
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=_POLL_INTERVAL_S)

    def _signal(self, sig: signal.Signals) -> None:
        proc = self._proc
        if proc is None or proc.poll() is not None:
            return
        # The server runs in its own session: signal its whole process group
        # (it has no children today, but stays correct if that changes).
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass
        except PermissionError:
            proc.send_signal(sig)

    def _terminate(self, *, graceful: bool) -> None:
        proc = self._proc
        if proc is not None:
            if graceful:
                self._signal(signal.SIGTERM)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=self._stop_timeout)
            if proc.poll() is None:
                self._signal(signal.SIGKILL)
                try:
                    proc.wait(timeout=self._stop_timeout)
                except subprocess.TimeoutExpired as exc:
                    raise MongoServerError(f"nx-27017 pid {proc.pid} survived SIGKILL") from exc
            self._proc = None
        output = self._output
        self._output = None
        if output is not None:
            output.close()


def external_mongo_uri() -> str | None:
    """``$TASKSCHED_TEST_MONGODB_URI`` if set and non-empty, else None."""
    return os.environ.get(ENV_TEST_URI) or None


@contextlib.contextmanager
def mongo_uri_for_tests(**server_kwargs: Any) -> Iterator[str]:
    """Yield the MongoDB URI tests should use.

    If ``TASKSCHED_TEST_MONGODB_URI`` is set, yields it and starts nothing
    (the server is someone else's: use unique database names, and skip tests
    that need to stop or restart the server). Otherwise starts an nx-27017
    ``MongoServer`` for the duration of the block. Meant for a
    session-scoped pytest fixture (one server per xdist worker).
    """
    uri = external_mongo_uri()
    if uri is not None:
        yield uri
        return
    with MongoServer(**server_kwargs) as server:
        yield server.uri
