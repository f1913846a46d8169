"""taskschedd job classes for the benchmark (allowed via ``allowed_modules: [bench.jobs]``)."""

from __future__ import annotations

import os
import time
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


class Gate(Job):
    """Holds a worker until a file exists (``data = {"k": tag, "file": path, "timeout": s}``):
    the parent of the fan-out figure, released by the harness once the daemon's workers are
    up. Records its start (tag ``K-start``) and its end (tag ``K-end``) like Stamp."""

    def start(self) -> Any:
        tag, path = self.data["k"], self.data["file"]
        write_stamp(f"{tag}-start", 0.0)
        deadline = time.monotonic() + float(self.data.get("timeout", 120))
        while not os.path.exists(path):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{path} did not appear")
            time.sleep(0.001)
        write_stamp(f"{tag}-end", 0.0)
        return None
