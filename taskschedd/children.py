"""The master's record of each worker process: its handle, the jobs it holds and in what
state, the kill in progress, its pipes.

A worker runs in its own process group (pgid == pid), and so do the job it runs and the
job's children: signalling the group reaches all of them (:mod:`taskschedd.osproc`).
"""

from __future__ import annotations

import contextlib
import enum
import os
import signal
from collections.abc import Iterator
from dataclasses import dataclass, field

from taskschedd.messages import EXIT_REASONS, Command, MalformedMessage, Report, decode_report


class HeldState(enum.StrEnum):
    """Where a job a worker holds stands (shown in the master's log and status)."""

    RUNNING = "running"
    AHEAD = "ahead"  # claimed, not started
    RAN = "ran"  # its outcome not stored yet
    UNSTORED = "unstored"  # ran; the store refused its outcome: the worker keeps it, retries


class KillReason(enum.StrEnum):
    """Why the master kills a worker's process group (logged as ``why``)."""

    TIMEOUT = "timeout"
    CANCEL = "cancel"
    MEMORY = "memory"  # the job's process group used more than its memory limit
    RELEASE = "release"  # stopping now: the job goes back to the queue


class OwedOutcome(enum.StrEnum):
    """How the master settles a job whose worker is gone (logged as ``why``)."""

    TIMEOUT = "timeout"
    CANCEL = "cancel"
    MEMORY = "memory"
    RELEASE = "release"
    ABANDONED = "abandoned"

    @classmethod
    def of(cls, reason: KillReason) -> OwedOutcome:
        """What a job killed for ``reason`` is owed."""
        return cls(reason.value)


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
    state: HeldState = HeldState.RUNNING
    max_memory: int = 0  # MiB, the job's own limit; 0: the node's max_job_memory
    memory_base: int = 0  # bytes: its worker's own resident memory when it started
    memory_used: int = 0  # bytes it added to its process group, the most measured...
    memory_limit: int = 0  # ...and the limit it had then (bytes)


@dataclass
class Kill:
    """A kill in progress: SIGTERM was sent to the group; SIGKILL at ``deadline`` (a
    memory kill sends SIGKILL at once: ``hard`` from the start)."""

    reason: KillReason
    deadline: float  # monotonic
    hard: bool = False
    token: str | None = None  # the job it was meant for (timeout, cancel)


@dataclass(frozen=True)
class KillWanted:
    """A kill that waits (see Supervisor.kill) until ``until`` (monotonic) at most."""

    reason: KillReason
    until: float
    token: str | None  # the job it is meant for (timeout, cancel); None: all (release)


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
    kill_wanted: KillWanted | None = None
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
        if any(j.state is HeldState.UNSTORED for j in self.held.values()):
            return "storing"
        if not self.ready:
            return "starting"
        return "retiring" if self.retiring else "idle"

    def reports(self) -> Iterator[Report | None]:
        """The complete reports waiting on the report pipe (None for a line that does not
        decode; a kind this version does not know is skipped), as they are read. Sets
        :attr:`eof` when the worker closed its end."""
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
                        report = decode_report(line)
                    except MalformedMessage:
                        yield None
                    else:
                        if report is not None:
                            yield report

    def command(self, cmd: Command) -> None:
        """One line on the control pipe; a worker that is gone or stuck just misses it."""
        with contextlib.suppress(BlockingIOError, BrokenPipeError, OSError):
            os.write(self.control_fd, (cmd.encode() + "\n").encode())

    def close_pipes(self) -> None:
        for fd in (self.report_fd, self.control_fd):
            with contextlib.suppress(OSError):
                os.close(fd)


def describe_status(status: int) -> str:
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        try:
            name = signal.Signals(sig).name
        except ValueError:
            name = str(sig)
        return f"died from signal {sig} ({name})"
    code = os.waitstatus_to_exitcode(status)
    reason = EXIT_REASONS.get(code)
    return f"exited with code {code}" + (f" ({reason})" if reason else "")


__all__ = [
    "HeldState",
    "Kill",
    "KillReason",
    "KillWanted",
    "OwedOutcome",
    "RunningJob",
    "WorkerHandle",
    "describe_status",
]
