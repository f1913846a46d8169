"""The operating-system calls the master and its workers share: prctl(2), process titles,
process groups and their signals, the children a subreaper inherits, memory use.

Each helper tolerates what it cannot change (a process already gone, a platform without
the call) and says so by its return value instead of raising.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys
from collections.abc import Collection

_PR_SET_PDEATHSIG = 1
_PR_SET_CHILD_SUBREAPER = 36


def prctl(option: int, value: int) -> bool:
    """prctl(2) through libc; False where it is not available (not Linux)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return int(libc.prctl(option, value, 0, 0, 0)) == 0
    except (OSError, AttributeError):
        return False


def set_child_subreaper() -> bool:
    """Orphaned descendants (a job's grandchildren) become our children, so we can reap
    them and see when a job's process group is really empty."""
    return prctl(_PR_SET_CHILD_SUBREAPER, 1)


def set_parent_death_signal(sig: int) -> bool:
    """Have the kernel send ``sig`` to this process when its parent dies."""
    return prctl(_PR_SET_PDEATHSIG, sig)


def set_title(text: str) -> bool:
    """The title ps and top show for this process; False when it cannot be set."""
    try:
        import setproctitle
    except ImportError:  # pragma: no cover - a dependency; missing only in odd installs
        return False
    setproctitle.setproctitle(text)
    return True


def lead_own_group(pid: int = 0) -> None:
    """Make process ``pid`` (0: this one) the leader of a process group of its own. Done
    by both the master and the forked worker: whoever runs first wins the race."""
    with contextlib.suppress(OSError):
        os.setpgid(pid, pid)


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists (another user's counts). A number no pid can be,
    from a pidfile or a store record, is not a live process, not an error."""
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):
        return False
    except PermissionError:
        return True
    return True


def group_alive(pgid: int) -> bool:
    """Whether any process is left in the group."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def killpg(pgid: int, sig: int) -> None:
    """Signal a process group; one that is gone (or not ours) is left alone."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def kill_own_group() -> None:
    """SIGKILL this process's group: a worker, its job, the job's children (the worker
    leads its group; if it does not, only this process)."""
    pid = os.getpid()
    if os.getpgrp() == pid:
        os.killpg(pid, signal.SIGKILL)
    os.kill(pid, signal.SIGKILL)


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


def rss_mb() -> float:
    """Resident memory of this process in MiB (0 when unknown)."""
    try:
        with open("/proc/self/statm", "rb") as f:
            pages = int(f.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return 0.0


__all__ = [
    "group_alive",
    "kill_own_group",
    "kill_strays",
    "killpg",
    "lead_own_group",
    "pid_alive",
    "prctl",
    "rss_mb",
    "set_child_subreaper",
    "set_parent_death_signal",
    "set_title",
    "stray_children",
]
