"""The soak test's job: records each run and whether another run of the same job is still
going on at its start (allowed modules of the soak's nodes: ``tests.soak.jobs``).

Lines (each one O_APPEND write): ``S <id> <pid> <start time> <attempt> <overlap> <wall>``
when a run starts, ``E <id> <pid> <start time> <attempt> <ok|error> <wall>`` when start()
returns or raises (``wall``: time.time() when start() was entered, for S, and as the line
is written, for E; the soak compares them with the moment its cancel of a series
returned, on the same host). ``overlap`` counts earlier runs of the job that have no E
line and whose process (same pid and start time, so a reused pid does not count) is still
alive: two runs of one job at once, the thing that must never happen while the owner
lives.
"""

from __future__ import annotations

import os
import signal
import time
from typing import Any

from taskschedd.job import Job

MODULE = "tests.soak.jobs"


def proc_start(pid: int) -> str | None:
    """The start time (clock ticks since boot) of a live, non-zombie process; None if gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return None if fields[0] in ("Z", "X") else fields[19]


def append(path: str, line: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


def running_elsewhere(path: str, job_id: str, me: tuple[int, str]) -> int:
    started: set[tuple[int, str, str]] = set()
    ended: set[tuple[int, str, str]] = set()
    try:
        with open(path) as f:
            for line in f:
                kind, jid, pid, start, attempt, *_ = line.split()
                if jid == job_id:
                    (started if kind == "S" else ended).add((int(pid), start, attempt))
    except FileNotFoundError:
        return 0
    return sum(
        1 for pid, start, _ in started - ended if (pid, start) != me and proc_start(pid) == start
    )


class SoakRun(Job):
    """``sleep`` seconds, then: raise on the attempts in ``fail_on`` (or always with
    ``fail``), or SIGKILL its own worker with ``kill_self``; returns its attempt."""

    def start(self) -> Any:
        began = time.time()  # before the run log is read: that takes a while once it grows
        data = self.data
        pid = os.getpid()
        me = (pid, proc_start(pid) or "?")
        overlap = running_elsewhere(data["runs"], self.id, me)
        line = f"S {self.id} {pid} {me[1]} {self.attempt} {overlap}"
        append(data["runs"], f"{line} {began:.6f}")
        outcome = "error"
        try:
            if data.get("kill_self"):
                os.kill(pid, signal.SIGKILL)
            time.sleep(float(data.get("sleep", 0)))
            if data.get("fail") or self.attempt in data.get("fail_on", ()):
                raise RuntimeError(f"attempt {self.attempt} fails on purpose")
            outcome = "ok"
            return {"attempt": self.attempt}
        finally:
            line = f"E {self.id} {pid} {me[1]} {self.attempt} {outcome}"
            append(data["runs"], f"{line} {time.time():.6f}")
