"""taskschedd: a job scheduler for Python whose jobs are never lost and never stuck."""

from taskschedd.errors import (
    ConfigError,
    JobClassError,
    JobDataError,
    JobFailed,
    JobNotFound,
    OptionError,
    StoreError,
    StoreUnavailable,
    TaskSchedError,
    WaitTimeout,
)
from taskschedd.job import Job, JobStatus
from taskschedd.scheduler import JobSpec, Process, Scheduler
from taskschedd.worker import Worker

__version__ = "0.1.0"

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
    "StoreUnavailable",
    "TaskSchedError",
    "WaitTimeout",
    "Worker",
    "__version__",
]
