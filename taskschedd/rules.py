"""The scheduling rules, in one place: what a job becomes after each outcome.

Pure functions of a job record and the time, returning the :class:`Transition` that the
stores apply (see :mod:`taskschedd.transitions`).
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable
from datetime import tzinfo

from taskschedd.memwatch import size_text
from taskschedd.model import ErrorInfo, JobRecord, JobStatus, NewJob
from taskschedd.options import ONCE_COMPARED, JobOptions, zone
from taskschedd.transitions import Change, Transition, settle, settle_change

Rand = Callable[[], float]


def retries_left(job: JobRecord) -> bool:
    """Whether the attempt that just ended may be followed by another one."""
    retry = job.options.retry
    return retry == -1 or job.attempt <= retry


def retry_delay(opts: JobOptions, attempt: int, rand: Rand = random.random) -> float:
    """Seconds before the next attempt after failed attempt number ``attempt`` (1-based).

    Exponential backoff doubles per attempt up to the cap and keeps a random half of
    the delay ("equal jitter") so that jobs failing together do not retry together.
    """
    if opts.retry_backoff != "exponential":
        return opts.retry_interval
    # A float power capped well below overflow: endless retries reach attempt 1025 and up.
    growth = 2.0 ** min(max(0, attempt - 1), 1000)
    delay = float(min(opts.retry_backoff_max, opts.retry_interval * growth))
    return delay / 2 + rand() * delay / 2


def _canceled(
    error: ErrorInfo | None = None, result_json: str | None = None, *, give_back: bool = False
) -> Change:
    """A held job ends CANCELED: the attempt's error or result is kept; never a follow-up."""
    return settle_change(
        JobStatus.CANCELED, error=error, result_json=result_json, reason="canceled",
        give_back=give_back,
    )  # fmt: skip


def _settle(
    job: JobRecord, name: str, change: Change, next_job: NewJob | None, canceled: Change
) -> Transition:
    """``change`` (with ``next_job``), unless a cancel was requested: known at claim time,
    it is ``canceled`` outright; requested since, the store's guard picks ``canceled``
    at the time of the write. Either way a canceled job is never rescheduled."""
    if job.cancel_requested:
        return settle("canceled", canceled)
    return settle(name, change, next_job, canceled=canceled)


def _requeue(job: JobRecord, error: ErrorInfo, now: float, rand: Rand) -> Transition:
    delay = retry_delay(job.options, job.attempt, rand)
    status = JobStatus.POSTPONED if delay > 0 else JobStatus.WAITING
    change = settle_change(status, at=now + delay, error=error, progress=0.0, reason="retrying")
    return _settle(job, "retry", change, None, _canceled(error))


def on_success(job: JobRecord, result_json: str, now: float) -> Transition:
    change = settle_change(JobStatus.DONE, result_json=result_json, reason="done", progress=100.0)
    return _settle(job, "done", change, next_occurrence(job, now), _canceled(None, result_json))


def _failed(job: JobRecord, status: JobStatus, error: ErrorInfo, now: float) -> Transition:
    change = settle_change(status, error=error, reason=error.reason)
    return _settle(job, status.name.lower(), change, next_occurrence(job, now), _canceled(error))


def on_error(
    job: JobRecord,
    error: ErrorInfo,
    now: float,
    *,
    permanent: bool = False,
    rand: Rand = random.random,
) -> Transition:
    """An exception in start() (or a class that cannot be loaded, when ``permanent``)."""
    if not permanent and retries_left(job):
        return _requeue(job, error, now, rand)
    return _failed(job, JobStatus.FAILED, error, now)


def on_timeout(job: JobRecord, now: float, rand: Rand = random.random) -> Transition:
    """The job ran past its timeout and was killed; a timeout counts as a failed attempt."""
    error = ErrorInfo(
        attempt=job.attempt,
        type="Timeout",
        message=f"the job ran longer than its timeout of {job.options.timeout:g}s and was killed",
        time=now,
        reason="timeout",
    )
    if retries_left(job):
        return _requeue(job, error, now, rand)
    return _failed(job, JobStatus.TIMEOUT, error, now)


#: A job with endless retries (-1) ends FAILED after this many memory kills in a row: one
#: that outgrows its limit on every attempt must not be re-run forever.
MEMORY_KILLS_MAX = 3


def on_memory(
    job: JobRecord,
    now: float,
    *,
    limit: int,
    used: int,
    base: int = 0,
    rand: Rand = random.random,
) -> Transition:
    """The job added more resident memory to its process group (``used`` bytes, the most
    measured, beyond its worker's own ``base`` bytes at the job's start) than its limit
    (``limit`` bytes) and was killed: a failed attempt, retried as after an error; with
    endless retries, the MEMORY_KILLS_MAX-th memory kill in a row ends it FAILED."""
    beyond = f" beyond its worker's {size_text(base)} at the job's start" if base else ""
    error = ErrorInfo(
        attempt=job.attempt,
        type="MemoryLimit",
        message=f"the job used {size_text(used)} of memory ({used} bytes resident in its "
        f"process group{beyond}), more than its limit of {size_text(limit)}, and was killed",
        time=now,
        reason="memory",
    )
    earlier = job.errors[-(MEMORY_KILLS_MAX - 1) :]
    endless_loop = (
        job.options.retry == -1
        and len(earlier) == MEMORY_KILLS_MAX - 1
        and all(e.reason == "memory" for e in earlier)
    )
    if retries_left(job) and not endless_loop:
        return _requeue(job, error, now, rand)
    return _failed(job, JobStatus.FAILED, error, now)


def on_abandoned(
    job: JobRecord, now: float, detail: str = "its lease expired", rand: Rand = random.random
) -> Transition:
    """The job's worker or node died (or stopped renewing): retry it, or end it FAILED."""
    error = ErrorInfo(
        attempt=job.attempt,
        type="WorkerLost",
        message=f"the job was abandoned: {detail}",
        time=now,
        reason="abandoned",
    )
    if retries_left(job):
        return _requeue(job, error, now, rand)
    return _failed(job, JobStatus.FAILED, error, now)


def on_corrupt(job: JobRecord, now: float) -> Transition:
    """A record that does not decode (``job.corrupt``) is quarantined: it ends FAILED with
    reason "corrupt", never runs and is never retried or rescheduled (its options cannot
    be trusted: a recurring series ends with it; add it again to go on); its errors become
    just this one (they may not be a list)."""
    error = ErrorInfo(
        attempt=job.attempt,
        type="CorruptRecord",
        message=f"the stored job does not decode: {job.corrupt}; quarantined (not run)",
        time=now,
        reason="corrupt",
    )
    return settle(
        "corrupt",
        settle_change(JobStatus.FAILED, error=error, reset_errors=True, reason="corrupt"),
    )


def on_cancel_running(job: JobRecord, now: float) -> Transition:
    """A running job was canceled and killed; canceled jobs are never rescheduled."""
    return settle("canceled", _canceled())


def on_cancel_claimed(job: JobRecord, now: float) -> Transition:
    """A claimed job whose cancel was requested before it started: it never runs (and
    used no attempt)."""
    return settle("canceled", _canceled(give_back=True))


def on_expired(job: JobRecord, now: float) -> Transition:
    """Claimed after its `expires` time: it must not start; a series goes on."""
    change = settle_change(JobStatus.CANCELED, reason="expired")
    return _settle(job, "expired", change, next_occurrence(job, now), _canceled())


#: The reason of a job its node gave back when stopping (events and ``show`` say why it
#: is waiting again; its next settle replaces it).
RELEASED = "released"


def release(job: JobRecord) -> Transition:
    """Node shutdown: give the job back without using up an attempt (unless its cancel
    was requested meanwhile: then it ends CANCELED, never having run)."""
    change = settle_change(
        JobStatus.WAITING, at=job.at, give_back=True, progress=0.0, reason=RELEASED
    )
    return _settle(job, "release", change, None, _canceled(give_back=True))


def is_expired(job: JobRecord, now: float) -> bool:
    return job.options.expires is not None and now > job.options.expires


def next_occurrence(job: JobRecord, now: float) -> NewJob | None:
    """The next job of an interval or cron series, or None for one-off jobs.

    Its id is derived from the series and its number, so creating it twice (two nodes
    settling the same occurrence) inserts it once.
    """
    opts = job.options
    if opts.cron:
        from taskschedd.cron import CronExpr

        # From the later of the planned time and now: missed occurrences are skipped,
        # not run in a burst after an outage.
        at = CronExpr.parse(opts.cron).next_after(max(job.at, now), cron_zone(opts))
    elif opts.interval:
        if opts.interval < 0:
            at = now
        else:
            base = job.started if opts.interval_reference == "start" and job.started else now
            at = base + opts.interval
    else:
        return None
    if opts.expires is not None and at > opts.expires:
        return None
    series = job.series or job.id
    seq = job.series_seq + 1
    return NewJob(
        id=f"{series}.{seq}",
        cls=job.cls,
        data_json=_data_json(job),
        options=opts,
        at=at,
        created=now,
        status=JobStatus.POSTPONED if at > now else JobStatus.WAITING,
        once_key=job.once_key,
        series=series,
        series_seq=seq,
    )


def series_of(job: JobRecord) -> str | None:
    """The series a job belongs to: its first job's id (the id add_job returned) for a
    recurring job (interval or cron) and its occurrences; None for a one-off job."""
    if job.series is not None:
        return job.series
    if job.options.interval or job.options.cron:
        return job.id
    return None


def _data_json(job: JobRecord) -> str:
    from taskschedd.options import dump_data

    return dump_data(job.data)


def once_key(cls: str, data_json: str, ignore_data: bool) -> str:
    """What add_job_once compares: the class, and the data unless ignore_data."""
    if ignore_data:
        return f"{cls}#*"
    return f"{cls}#" + hashlib.sha256(data_json.encode()).hexdigest()[:32]


def same_request(existing: JobRecord, opts: JobOptions, explicit: set[str]) -> bool:
    """Whether an active job satisfies add_job_once: the caller's explicit options match."""
    if existing.status.is_final or existing.cancel_requested:
        return False
    for name in explicit & set(ONCE_COMPARED):
        if getattr(existing.options, name) != getattr(opts, name):
            return False
    return True


def initial_status(at: float, now: float) -> JobStatus:
    return JobStatus.POSTPONED if at > now else JobStatus.WAITING


def first_run_at(opts: JobOptions, now: float) -> float:
    """When a new job is first due: `at`, or the next cron time for a cron job without `at`."""
    if opts.at is not None:
        return opts.at
    if opts.cron:
        from taskschedd.cron import CronExpr

        return CronExpr.parse(opts.cron).next_after(now, cron_zone(opts))
    return now


def cron_zone(opts: JobOptions) -> tzinfo | None:
    """The zone a series' cron is read in (None: UTC)."""
    return zone(opts.timezone) if opts.timezone else None
