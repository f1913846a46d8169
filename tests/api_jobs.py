"""Job classes for tests (importable as ``tests.api_jobs``; allow ``tests.api_jobs``)."""

from __future__ import annotations

import time
from typing import Any

from taskschedd.job import Job

MODULE = "tests.api_jobs"


class Echo(Job):
    """Returns its data."""

    def start(self) -> Any:
        return self.data


class Fail(Job):
    """Always raises ValueError with ``data["message"]``."""

    def start(self) -> Any:
        raise ValueError((self.data or {}).get("message", "boom"))


class FailTimes(Job):
    """Raises on the first ``data["fail"]`` attempts, then returns the attempt number."""

    def start(self) -> Any:
        if self.attempt <= int(self.data["fail"]):
            raise RuntimeError(f"attempt {self.attempt} failed")
        return {"attempt": self.attempt}


class Sleep(Job):
    """Sleeps ``data["seconds"]``; with ``data["first_only"]`` only on the first attempt."""

    def start(self) -> Any:
        data = self.data or {}
        if not data.get("first_only") or self.attempt == 1:
            time.sleep(float(data.get("seconds", 1)))
        return {"attempt": self.attempt}


class Progress(Job):
    """Reports progress steps and returns."""

    progress_rate_limit = 0.0

    def start(self) -> Any:
        for percent in (25, 50, 75):
            self.update_progress(percent)
        return "ok"


class BadResult(Job):
    """Returns something that is not JSON."""

    def start(self) -> Any:
        return object()


class Add(Job):
    """Returns ``data["n"]`` plus the results of its dependencies that ended DONE, and
    records what it saw of each (a chain that passes results)."""

    def start(self) -> Any:
        seen = {
            i: [d.status.name if d.status else None, d.result] for i, d in self.dependencies.items()
        }
        total = int((self.data or {}).get("n", 0))
        for dep in self.dependencies.values():
            if dep.status is not None and dep.status.name == "DONE":
                total += int(dep.result.get("total", 0))
        return {"total": total, "seen": seen}


class NotAJob:
    """A class that is not a Job subclass (loader tests)."""

    def start(self) -> Any:
        return None


NOT_A_CLASS = 42
