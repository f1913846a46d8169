"""Small jobs to try a node with: ``taskschedctl add taskschedd.examples.jobs.Echo '{"x": 1}'``."""

from __future__ import annotations

import os
import subprocess
import time
from typing import Any

from taskschedd.job import Job, JobStatus

DONE = JobStatus.DONE


class Echo(Job):
    """Returns its data: the smallest useful job."""

    def start(self) -> Any:
        return self.data


class Sleep(Job):
    """Sleeps ``data["seconds"]`` (default 1), reporting progress."""

    def start(self) -> Any:
        seconds = float((self.data or {}).get("seconds", 1))
        steps = 10
        for i in range(steps):
            time.sleep(seconds / steps)
            self.update_progress((i + 1) * 100 / steps)
        return {"slept": seconds}


class Fail(Job):
    """Raises, to see retries: ``data["message"]``."""

    def start(self) -> Any:
        raise RuntimeError((self.data or {}).get("message", "this job always fails"))


class Add(Job):
    """Adds ``data["a"]`` and ``data["b"]``."""

    def start(self) -> Any:
        return self.data["a"] + self.data["b"]


class Sum(Job):
    """Adds ``data["n"]`` to the results of its dependencies that ended DONE: a workflow
    step for Scheduler.chain and Scheduler.group(then=...) (see the README)."""

    def start(self) -> Any:
        done = [result for status, result in self.dependencies.values() if status is DONE]
        return int((self.data or {}).get("n", 0)) + sum(done)


class Shell(Job):
    """Runs a command (``data["argv"]``) in a child process; shows that timeouts and
    cancel reach grandchildren."""

    def start(self) -> Any:
        proc = subprocess.run(self.data["argv"], capture_output=True, text=True, check=True)
        return {"stdout": proc.stdout, "pid": os.getpid()}
