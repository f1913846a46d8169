"""taskschedd: a job scheduler for Python whose jobs are never lost and never stuck."""

from typing import TYPE_CHECKING, Any

from taskschedd.errors import (
    ConfigError,
    JobClassError,
    JobDataError,
    JobFailed,
    JobNotFound,
    OptionError,
    StoreError,
    StoreMissing,
    StoreReplaced,
    StoreUnavailable,
    TaskSchedError,
    UnsafeStore,
    WaitTimeout,
)
from taskschedd.job import Job
from taskschedd.model import JobStatus
from taskschedd.scheduler import JobSpec, Process, Scheduler

if TYPE_CHECKING:
    from taskschedd.worker import Worker


def __getattr__(name: str) -> Any:
    # Worker pulls in structlog (and asyncio): loaded on first use so that a cron line
    # running taskschedctl, which never runs jobs, does not pay for it.
    if name == "Worker":
        from taskschedd.worker import Worker

        return Worker
    raise AttributeError(f"module 'taskschedd' has no attribute {name!r}")


__version__ = "0.8.0"

__all__ = [
    "ConfigError",
    "Job",
    "JobClassError",
    "JobDataError",
    "JobFailed",
    "JobNotFound",
    "JobSpec",
    "JobStatus",
    "OptionError",
    "Process",
    "Scheduler",
    "StoreError",
    "StoreMissing",
    "StoreReplaced",
    "StoreUnavailable",
    "TaskSchedError",
    "UnsafeStore",
    "WaitTimeout",
    "Worker",
    "__version__",
]
