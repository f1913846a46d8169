"""The master's record of each worker process: its handle, the job it holds, the kill in
progress, its pipes; and the process-group helpers the master kills and waits with.

A worker runs in its own process group (pgid == pid), and so do the job it runs and the
job's children: signalling the group reaches all of them.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
from collections.abc import Collection, Iterator
from dataclasses import dataclass, field
from typing import Any

from taskschedd import workerproc


@dataclass
class RunningJob:
    """A job a worker holds, as it reported the claim."""

    id: str
    token: str
    cls: str
    attempt: int
    queue: str
    timeout: float
    started: float  # wall clock
    progress: float = 0.0
    # running | ahead (claimed, not started) | ran (outcome not stored yet) | unstored (ran;
    # the store refused its outcome: the worker keeps it and retries)
    state: str = "running"


@dataclass
class Kill:
    """A kill in progress: SIGTERM was sent to the group; SIGKILL at ``deadline``."""

    reason: str  # timeout | cancel | release
    deadline: float  # monotonic
    hard: bool = False
    token: str | None = None  # the job it was meant for (timeout, cancel)


@dataclass
class WorkerHandle:
    pid: int
    name: str
    report_fd: int
    control_fd: int
    extra: bool
    spawned: float
    idle_since: float
    ready: bool = False
    retiring: bool = False
    job: RunningJob | None = None
    held: dict[str, RunningJob] = field(default_factory=dict)  # by token: claimed ahead, ran
    kill: Kill | None = None
    # (reason, monotonic deadline, token of the job it is meant for): see Supervisor.kill()
    kill_wanted: tuple[str, float, str | None] | None = None
    dropped: set[str] = field(default_factory=set)  # claimed-ahead tokens told to drop
    jobs_done: int = 0
    exit_reason: str | None = None
    buf: bytes = b""
    eof: bool = False

    @property
    def state(self) -> str:
        if self.kill is not None:
            return f"killing ({self.kill.reason})"
        if self.job is not None:
            return "busy"
        if any(j.state == "unstored" for j in self.held.values()):
            return "storing"
        if not self.ready:
            return "starting"
        return "retiring" if self.retiring else "idle"

    def reports(self) -> Iterator[dict[str, Any] | None]:
        """The complete messages waiting on the report pipe (None for a line that is not
        JSON), as they are read. Sets :attr:`eof` when the worker closed its end."""
        while not self.eof:
            try:
                chunk = os.read(self.report_fd, 65536)
            except BlockingIOError:
                break
            except OSError:
                chunk = b""
            if not chunk:
                self.eof = True
                break
            self.buf += chunk
            *lines, self.buf = self.buf.split(b"\n")
            for line in lines:
                if line.strip():
                    try:
                        yield json.loads(line)
                    except ValueError:
                        yield None

    def command(self, cmd: str) -> None:
        """One line on the control pipe; a worker that is gone or stuck just misses it."""
        with contextlib.suppress(BlockingIOError, BrokenPipeError, OSError):
            os.write(self.control_fd, (cmd + "\n").encode())

    def close_pipes(self) -> None:
        for fd in (self.report_fd, self.control_fd):
            with contextlib.suppress(OSError):
                os.close(fd)


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def killpg(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def stray_children(known: Collection[int]) -> list[int]:
    """This process's children that are not in ``known`` (its workers): what a job left
    running outside its process group (setsid) and that came to us, the subreaper, when
    its worker died. Linux /proc; [] elsewhere."""
    found: list[int] = []
    try:
        tasks = os.listdir("/proc/self/task")
    except OSError:
        return found
    for tid in tasks:
        try:
            with open(f"/proc/self/task/{tid}/children") as fh:
                found += [int(p) for p in fh.read().split()]
        except (OSError, ValueError):
            continue
    return [p for p in found if p not in known]


def kill_strays(known: Collection[int]) -> list[int]:
    """SIGKILL the stray children (and the process groups they lead): a job that timed
    out, was canceled or lost its lease must not go on through what it started. Returns
    their pids; reaping them is the caller's waitpid loop."""
    killed = []
    for pid in stray_children(known):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if os.getpgid(pid) == pid:
                os.killpg(pid, signal.SIGKILL)
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)
    return killed


def describe_status(status: int) -> str:
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        try:
            name = signal.Signals(sig).name
        except ValueError:
            name = str(sig)
        return f"died from signal {sig} ({name})"
    code = os.waitstatus_to_exitcode(status)
    reason = workerproc.EXIT_REASONS.get(code)
    return f"exited with code {code}" + (f" ({reason})" if reason else "")


__all__ = [
    "Kill",
    "RunningJob",
    "WorkerHandle",
    "describe_status",
    "group_alive",
    "kill_strays",
    "killpg",
    "stray_children",
]
