"""Jobs for the fault-injection and soak tests (their configs allow ``tests.faults.jobs``).

Every run is counted outside the store: :class:`Run` appends ``<job id> <pid> <attempt>``
to ``data["runs"]`` with one O_APPEND write before doing anything else, so a double run
cannot hide behind whatever the store says.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from typing import Any

from taskschedd.job import Job

MODULE = "tests.faults.jobs"


def record_run(path: str, job_id: str, attempt: int) -> None:
    """One line per run, written with a single O_APPEND write (atomic between processes)."""
    line = f"{job_id} {os.getpid()} {attempt}\n".encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


def ran_before(path: str, job_id: str) -> bool:
    try:
        with open(path) as f:
            return any(line.startswith(job_id + " ") for line in f)
    except FileNotFoundError:
        return False


class Run(Job):
    """Records the run, then does what ``data`` asks:

    - ``kill_self``: SIGKILL its own worker (a poison job), on every attempt;
    - ``sleep`` seconds, on the attempts listed in ``sleep_attempts`` (default: all), or
      with ``sleep_once`` only on the job's first run (a released job keeps its attempt);
    - ``progress``: report 50 % after the sleep (a late write when fenced off);
    - ``ends``: a file the run appends the same line to when it is done (after the sleep);
    - returns ``{"pid", "attempt", "echo": data["echo"]}``.
    """

    progress_rate_limit = 0.0

    def start(self) -> Any:
        data = self.data
        first = not ran_before(data["runs"], self.id)
        record_run(data["runs"], self.id, self.attempt)
        if data.get("kill_self"):
            os.kill(os.getpid(), signal.SIGKILL)
        seconds = float(data.get("sleep", 0))
        only = data.get("sleep_attempts")
        if data.get("sleep_once") and not first:
            seconds = 0.0
        if seconds > 0 and (only is None or self.attempt in only):
            time.sleep(seconds)
        if data.get("progress"):
            self.update_progress(50)
        if data.get("ends"):
            record_run(data["ends"], self.id, self.attempt)
        return {"pid": os.getpid(), "attempt": self.attempt, "echo": data.get("echo")}


class Echo(Job):
    """Returns its data unchanged (the JSON round-trip tests)."""

    def start(self) -> Any:
        return self.data


class BadResult(Job):
    """Returns what cannot be stored: ``data["kind"]`` is set, nan or deep."""

    def start(self) -> Any:
        kind = self.data["kind"]
        if kind == "set":
            return {1, 2}
        if kind == "nan":
            return {"x": float("nan")}
        deep: Any = []
        for _ in range(150):
            deep = [deep]
        return deep


class Identity(Job):
    """Who the job runs as, and whether it can become root again."""

    def start(self) -> Any:
        status = {}
        with open("/proc/self/status") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key in ("Uid", "Gid", "Groups"):
                    status[key] = value.split()
        try:
            os.setuid(0)
            regained = True
        except PermissionError:
            regained = False
        return {"pid": os.getpid(), "status": status, "setuid0": regained}


class NotAJob:
    """A class that is not a Job subclass (the worker must refuse it)."""

    def start(self) -> Any:
        return "should never run"


class RaisesInInit(Job):
    """Its constructor raises: the job fails, the worker survives."""

    def __init__(self) -> None:
        raise RuntimeError("constructor refuses on purpose")

    def start(self) -> Any:  # pragma: no cover - never reached
        return None


not_a_class = 42


class Timed(Job):
    """A run that leaves its own time span, even when it is killed: it records the run
    (``data["runs"]``, as :class:`Run`), then rewrites ``<job id> <pid> <attempt> <start>
    <alive>`` (wall clock) in a file of its own under the directory ``data["spans"]``
    every ``TICK`` while it sleeps ``sleep`` seconds (on the attempts in
    ``sleep_attempts``, default all; ``sleep_later`` on the others). A killed run's
    ``alive`` is the last time it was seen running. ``child``: first start a ``sleep``
    child process in the job's process group and write its pid to ``<span file>.child``.
    """

    TICK = 0.01

    def start(self) -> Any:
        data = self.data
        begun = time.time()
        record_run(data["runs"], self.id, self.attempt)
        path = os.path.join(data["spans"], f"{self.id}.{self.attempt}.{os.getpid()}")
        child: subprocess.Popen[bytes] | None = None
        if data.get("child"):
            child = subprocess.Popen(["sleep", "600"])
            with open(path + ".child", "w") as f:
                f.write(str(child.pid))
        only = data.get("sleep_attempts")
        seconds = float(data.get("sleep", 0))
        if only is not None and self.attempt not in only:
            seconds = float(data.get("sleep_later", 0))
        fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o666)
        try:
            ends = time.monotonic() + seconds
            while True:
                line = f"{self.id} {os.getpid()} {self.attempt} {begun:.6f} {time.time():.6f}\n"
                os.pwrite(fd, line.encode(), 0)
                if time.monotonic() >= ends:
                    break
                time.sleep(self.TICK)
        finally:
            os.close(fd)
            if child is not None:  # a run that ends (not killed) takes its child along
                child.kill()
                child.wait()
        return {"pid": os.getpid(), "attempt": self.attempt}


class HugeError(Job):
    """Raises an exception whose message is ``data["size"]`` characters long (a job that
    puts a whole payload into its error)."""

    def start(self) -> Any:
        raise RuntimeError("x" * int(self.data["size"]))


class Escapes(Job):
    """Starts a process in a session of its own (out of the job's process group), writes
    its pid to ``data["pidfile"]``, ignores SIGTERM and sleeps ``data["sleep"]`` s."""

    def start(self) -> Any:
        child = subprocess.Popen(
            ["sleep", "300"], start_new_session=True, stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        with open(self.data["pidfile"], "w") as fh:
            fh.write(str(child.pid))
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        time.sleep(float(self.data.get("sleep", 60)))
        return {"child": child.pid}


class Stamped(Job):
    """Appends ``<job id> start <time>`` to ``data["spans"]``, sleeps ``data["seconds"]``,
    then appends ``<job id> end <time>`` (wall clock, one O_APPEND write each, so the
    lines of concurrent runs never mix). A killed run has a start and no end."""

    def start(self) -> Any:
        path = self.data["spans"]
        _append(path, f"{self.id} start {time.time():.6f}\n")
        time.sleep(float(self.data.get("seconds", 0)))
        _append(path, f"{self.id} end {time.time():.6f}\n")
        return {"pid": os.getpid()}


def _append(path: str, line: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)
