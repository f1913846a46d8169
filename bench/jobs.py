"""taskschedd job classes for the benchmark (allowed via ``allowed_modules: [bench.jobs]``)."""

from __future__ import annotations

from typing import Any

from bench.common import write_stamp
from taskschedd.job import Job


class Noop(Job):
    """Does nothing: the drain figures measure the scheduler, not the job."""

    def start(self) -> Any:
        return None


class Stamp(Job):
    """Records when it started (``data = {"k": tag, "t": enqueue time}``)."""

    def start(self) -> Any:
        write_stamp(self.data["k"], self.data["t"])
        return None
