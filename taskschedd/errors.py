"""One error hierarchy: everything taskschedd raises on purpose is a TaskSchedError.

Messages say what is wrong and what to do; the CLIs print them without a traceback.
"""

from __future__ import annotations


class TaskSchedError(Exception):
    """Base class of every error taskschedd raises on purpose."""

    #: Process exit code the CLIs use for this kind of error.
    exit_code: int = 1


class OptionError(TaskSchedError, ValueError):
    """A job option is unknown, ill-typed or contradicts another; nothing was written."""

    exit_code = 2


class JobDataError(TaskSchedError, ValueError):
    """Job data is not JSON-serialisable (taskschedd never pickles)."""

    exit_code = 2


class DataTooLarge(JobDataError):
    """Job data or a job's result is larger than max_data_size; nothing was written."""


class JobClassError(TaskSchedError):
    """A job class path is malformed, not allowed, not importable or not a Job subclass."""

    exit_code = 2


class JobNotFound(TaskSchedError, LookupError):
    """No job has the given id."""

    exit_code = 1

    def __init__(self, job_id: str) -> None:
        super().__init__(f"no job with id {job_id!r}; list jobs with 'taskschedctl list --all'")
        self.job_id = job_id


class ConfigError(TaskSchedError):
    """The configuration file is invalid; the message names file, key and reason."""

    exit_code = 78  # EX_CONFIG

    def __init__(self, message: str, *, path: str | None = None, key: str | None = None) -> None:
        where = ""
        if path:
            where += f"{path}: "
        if key:
            where += f"{key}: "
        super().__init__(where + message)
        self.path = path
        self.key = key
        self.reason = message


class StoreError(TaskSchedError):
    """The store failed or cannot be reached."""

    exit_code = 69  # EX_UNAVAILABLE


class CorruptRecords(TaskSchedError):
    """The store holds records that do not decode (written by another client)."""

    exit_code = 65  # EX_DATAERR


class StoreUnavailable(StoreError):
    """A transient store outage: the caller may retry with backoff."""


class StoreNotWritable(StoreUnavailable):
    """The store answers but cannot write: its disk is full, an I/O error, a read-only
    file or file system. Transient like any outage (space may be freed, the disk
    remounted): callers keep what they meant to write and retry with backoff.
    ``why`` says which, in a few words ("disk full", "I/O error", "read-only")."""

    def __init__(self, message: str, why: str = "not writable") -> None:
        super().__init__(message)
        self.why = why


class StoreMissing(StoreError):
    """No store exists where the URL points, and this caller did not ask to create one."""


class StoreReplaced(StoreError):
    """The store file this process has open was deleted or replaced under it: writes would
    go to a file nobody else reads. Not transient: the process must open the store again."""


class UnsafeStore(StoreError):
    """A store file or directory that another user could write (or own); refused like
    ssh's StrictModes. A set-up problem that a restart does not fix: EX_CONFIG."""

    exit_code = 78  # EX_CONFIG


class WaitTimeout(TaskSchedError, TimeoutError):
    """wait() gave up before the jobs reached a final status."""

    exit_code = 124


class JobFailed(TaskSchedError):
    """Raised by Process.wait(raise_errors=True) when the job did not end DONE."""

    def __init__(self, job_id: str, status: str, message: str) -> None:
        super().__init__(f"job {job_id} ended {status}: {message}")
        self.job_id = job_id
        self.status = status
