"""The Job base class that applications subclass, and the job statuses."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

from taskschedd.model import ACTIVE, FINAL, RUNNABLE, Dependency, JobStatus

__all__ = ["ACTIVE", "FINAL", "RUNNABLE", "Dependency", "Job", "JobStatus"]


class Job:
    """Base class of application jobs: override :meth:`start`.

    Instances are built by a worker with no arguments, so ``__init__`` may build what
    the job needs; ``id``, ``data``, ``attempt``, ``queue``, ``context`` (what the
    node's setup hook returned) and ``dependencies`` (for a job added with depends_on:
    each dependency's id -> ``Dependency(status, result)``, read when the job was
    claimed; past 64 MiB of results, the rest are read again when asked for, a page of
    50 at a time) are set before :meth:`start` runs. What ``start``
    returns must be JSON-serialisable: it is stored as the job's result.
    """

    #: Minimum seconds between two progress writes (the original's 1000 ms); 0 = no limit.
    progress_rate_limit: ClassVar[float] = 1.0

    id: str
    data: Any
    attempt: int
    queue: str
    context: Any
    dependencies: Mapping[str, Dependency] = {}
    _progress_last: float | None = None

    def start(self) -> Any:
        raise NotImplementedError(f"{type(self).__name__} must implement start()")

    def update_progress(self, percent: float) -> None:
        """Report progress (0-100); writes are rate limited, the last one before 100 may be skipped."""
        percent = max(0.0, min(100.0, float(percent)))
        now = time.monotonic()
        last = getattr(self, "_progress_last", None)
        if last is not None and percent < 100.0 and now - last < self.progress_rate_limit:
            return
        self._progress_last = now
        reporter: Callable[[float], None] | None = getattr(self, "_progress_reporter", None)
        if reporter is not None:
            reporter(percent)

    def _bind(
        self,
        *,
        job_id: str,
        data: Any,
        attempt: int,
        queue: str,
        context: Any,
        reporter: Callable[[float], None] | None,
        dependencies: Mapping[str, Dependency] | None = None,
    ) -> None:
        self.id = job_id
        self.data = data
        self.attempt = attempt
        self.queue = queue
        self.context = context
        self.dependencies = dependencies if dependencies is not None else {}
        self._progress_reporter = reporter
        self._progress_last = None
