"""Jobs for the cluster tests (workers allow ``tests.mongo.jobs``)."""

from __future__ import annotations

import os
from typing import Any

from taskschedd.job import Job

MODULE = "tests.mongo.jobs"


class Record(Job):
    """Appends ``<job id> <pid> <attempt>`` to ``data["log"]`` (one write, O_APPEND) and
    returns who ran it: a run counted outside the store, so a double run cannot hide."""

    def start(self) -> Any:
        line = f"{self.id} {os.getpid()} {self.attempt}\n".encode()
        fd = os.open(self.data["log"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, line)
        finally:
            os.close(fd)
        return {"pid": os.getpid(), "attempt": self.attempt}
