"""Fault injection for tests: stop a process at a named point, so that a test can kill
it exactly there (between two writes that a crash may separate).

Inactive unless ``$TASKSCHED_FAILPOINT`` names the point and ``$TASKSCHED_FAILPOINT_FILE``
names a file that does not exist yet: the first process to reach the point creates the
file, writes "POINT PID" into it and stops itself with SIGSTOP; the test reads the pid
and sends SIGKILL. Every later process (a replacement worker, a restarted node) goes on,
since the file exists. Costs one environment lookup when inactive.
"""

from __future__ import annotations

import os
import signal

#: The points: (store, where).
POINTS = frozenset(
    {
        "sqlite.before_release",  # a settle's transaction, its dependents not decided yet
        "sqlite.workflow.before_commit",  # a workflow's rows written, not committed
        "mongo.before_release",  # a dependency's settle written, its dependents not decided
        "mongo.workflow.before_insert",  # a workflow add: nothing written yet
        "mongo.workflow.before_commit",  # a workflow's jobs inserted held, not committed
        "mongo.workflow.before_release",  # committed, the hold not lifted
    }
)


def hit(point: str) -> None:
    if os.environ.get("TASKSCHED_FAILPOINT") != point:
        return
    path = os.environ.get("TASKSCHED_FAILPOINT_FILE")
    if not path:
        return
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError:
        return  # hit before, by this or another process
    with os.fdopen(fd, "w") as f:
        f.write(f"{point} {os.getpid()}\n")
    os.kill(os.getpid(), signal.SIGSTOP)
