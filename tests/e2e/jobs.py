"""Jobs and setup hooks for the end-to-end tests (the test configs allow ``tests.e2e.jobs``)."""

from __future__ import annotations

import os
import subprocess
import time
from typing import Any

from taskschedd.job import Job

MODULE = "tests.e2e.jobs"


class Sleep(Job):
    """Sleeps ``data["seconds"]``; returns its pid so tests can find the worker."""

    def start(self) -> Any:
        time.sleep(float((self.data or {}).get("seconds", 1)))
        return {"pid": os.getpid()}


class WhoAmI(Job):
    """Where it ran: pid, process group, and the setup hook's context."""

    def start(self) -> Any:
        return {"pid": os.getpid(), "pgid": os.getpgid(0), "context": self.context}


class Fail(Job):
    """Raises ValueError(data["message"])."""

    def start(self) -> Any:
        raise ValueError((self.data or {}).get("message", "boom"))


class FailUntil(Job):
    """Fails while ``attempt < data["ok_at"]``, then returns the attempt."""

    def start(self) -> Any:
        if self.attempt < int(self.data["ok_at"]):
            raise RuntimeError(f"attempt {self.attempt} fails on purpose")
        return {"attempt": self.attempt}


class Grandchild(Job):
    """Starts ``sleep 60`` (a grandchild of the worker), writes its pid, then hangs."""

    def start(self) -> Any:
        child = subprocess.Popen(["sleep", "60"])
        tmp = self.data["pidfile"] + ".tmp"
        with open(tmp, "w") as f:
            f.write(str(child.pid))
        os.replace(tmp, self.data["pidfile"])
        time.sleep(60)
        return None


def setup_ok(config: Any) -> dict[str, Any]:
    """A setup hook: what it returns becomes every job's context."""
    return {"hook": "ok", "node": config.node}


def setup_fail() -> None:
    """A setup hook that always fails; logs each call (time) to $TASKSCHEDD_TEST_HOOK_LOG."""
    with open(os.environ["TASKSCHEDD_TEST_HOOK_LOG"], "a") as f:
        f.write(f"{time.monotonic()}\n")
    raise RuntimeError("setup hook failed on purpose")
