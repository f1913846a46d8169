"""How much memory a running job uses: what it added to its worker's process group.

A worker runs its job in its own process group (pgid == the worker's pid), together with
every child the job starts there. The master samples the group every MEMORY_POLL seconds
while a job with a memory limit (``max_job_memory``, the job option ``max_memory``) runs,
with one pass over ``/proc`` for all groups: the RSS field of ``/proc/<pid>/stat`` of each
process of the group, summed (pages shared between processes count once per process, so
forked children that share their parent's pages overstate a little; a process that left
the group with ``setsid`` is not counted). An address-space rlimit would break many
programs (runtimes reserve far more than they use), and a cgroup is not there on every
host: sampling works everywhere ``/proc`` does.

A job is charged only what it adds (:func:`charged`): the group's resident memory minus
the worker's own when the job started (:func:`own_rss`, read by the worker from
``/proc/self/statm`` right before the job's code runs, and sent with the job's ``claim``
report, so every job claimed ahead gets its own baseline at its own start). What earlier
jobs left in the worker (a module-level cache, the interpreter's heap) is not the new
job's: a worker that grows between jobs is recycled by ``max_worker_memory``.

A job over its limit is killed with SIGKILL at once, as the kernel's OOM killer and
cgroups do: a SIGTERM grace would let a job that ignores it grow for ``kill_grace``
more, unmeasured.

Cost: one read of ``/proc/<pid>/stat`` per process on the host per pass, 20-25 µs each
(measured: 2-3 ms for 110 processes on a busy 2-core host, so ~0.5% of a core at one
pass per 0.5 s), and nothing while no running job has a limit.
"""

from __future__ import annotations

import os
from collections.abc import Collection

#: Seconds between two samples of the running jobs' memory.
MEMORY_POLL = 0.5
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
# In /proc/<pid>/stat after the command's closing parenthesis: state is field 0, the
# process group 2, the resident set size (pages) 21 (proc(5): fields 3, 5 and 24).
_PGRP, _RSS = 2, 21


def group_rss(pgids: Collection[int], proc: str = "/proc") -> dict[int, int]:
    """Resident bytes of each of these process groups (0 for a group with no process)."""
    totals = dict.fromkeys(pgids, 0)
    if not totals:
        return totals
    try:
        entries = os.listdir(proc)
    except OSError:
        return totals
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            fd = os.open(f"{proc}/{entry}/stat", os.O_RDONLY)
        except OSError:  # gone meanwhile, or not ours to read
            continue
        try:
            data = os.read(fd, 4096)
        except OSError:
            continue
        finally:
            os.close(fd)
        fields = data[data.rfind(b")") + 2 :].split()
        try:
            pgrp = int(fields[_PGRP])
            if pgrp in totals:
                totals[pgrp] += int(fields[_RSS]) * PAGE_SIZE
        except (IndexError, ValueError):
            continue
    return totals


def own_rss(statm: str = "/proc/self/statm") -> int:
    """Resident bytes of this process (the same count as the RSS field of
    ``/proc/<pid>/stat`` that :func:`group_rss` sums); 0 when unknown."""
    try:
        with open(statm, "rb") as f:
            return int(f.read().split()[1]) * PAGE_SIZE
    except (OSError, ValueError, IndexError):
        return 0


def charged(group: int, baseline: int) -> int:
    """Bytes a job is charged: its process group's resident bytes (``group``) beyond its
    worker's own when the job started (``baseline``); never below 0 (the worker may have
    given memory back since)."""
    return max(0, group - baseline)


def size_text(size: int) -> str:
    """Bytes for a message: '512 MiB', '1.5 GiB', '700.2 MiB'."""
    for unit, factor in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if size >= factor:
            value = size / factor
            return f"{value:.0f} {unit}" if size % factor == 0 else f"{value:.1f} {unit}"
    return f"{size} bytes"


__all__ = ["MEMORY_POLL", "charged", "group_rss", "own_rss", "size_text"]
