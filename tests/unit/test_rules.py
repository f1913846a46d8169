"""The scheduling rules: what a job becomes after each outcome (pure functions)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from taskschedd import rules
from taskschedd.model import ErrorInfo, JobRecord, JobStatus
from taskschedd.options import JobOptions, resolve
from taskschedd.transitions import Attempt

NOW = datetime(2026, 3, 10, 12, 0, 30, tzinfo=UTC).timestamp()


def job(
    *,
    attempt: int = 1,
    status: JobStatus = JobStatus.PROCESSING,
    at: float = NOW - 10,
    started: float | None = NOW - 5,
    series: str | None = None,
    series_seq: int = 0,
    cancel_requested: bool = False,
    data: Any = None,
    **options: Any,
) -> JobRecord:
    opts, _ = resolve(options)
    return JobRecord(
        id="j1",
        cls="tests.api_jobs.Echo",
        data={"x": 1} if data is None else data,
        status=status,
        queue=opts.queue,
        priority=opts.priority,
        at=at,
        created=at,
        options=opts,
        attempt=attempt,
        started=started,
        claim_token="tok",
        cancel_requested=cancel_requested,
        series=series,
        series_seq=series_seq,
        once_key="k",
    )


ERR = ErrorInfo(attempt=1, type="ValueError", message="boom", traceback="tb", time=NOW)


def zero() -> float:
    return 0.0


def one() -> float:
    return 1.0


# -- outcomes ------------------------------------------------------------------------------------


def test_success_is_done_with_result_and_full_progress() -> None:
    s = rules.on_success(job(), '{"r": 1}', NOW)
    assert s.status == JobStatus.DONE
    assert s.intended.change.result_json == '{"r": 1}'
    assert s.intended.change.progress == 100.0
    assert s.reason == "done"
    assert (
        s.intended.change.error is None
        and s.next_job is None
        and s.intended.change.attempt is Attempt.KEEP
    )


def test_error_without_retries_fails() -> None:
    s = rules.on_error(job(retry=0), ERR, NOW)
    assert s.status == JobStatus.FAILED
    assert s.intended.change.error == ERR
    assert s.reason == "exception"
    assert s.next_job is None


def test_error_with_retries_requeues_the_same_job_after_the_interval() -> None:
    record = job(retry=2, retry_interval=30)
    for attempt in (1, 2):
        record.attempt = attempt
        s = rules.on_error(record, ERR, NOW)
        assert s.status == JobStatus.POSTPONED
        assert s.intended.change.at == NOW + 30
        assert s.intended.change.error == ERR
        assert s.reason == "retrying"
        assert s.intended.change.progress == 0.0
        assert s.next_job is None
    record.attempt = 3
    assert rules.on_error(record, ERR, NOW).status == JobStatus.FAILED


def test_retry_with_zero_interval_is_waiting_at_once() -> None:
    s = rules.on_error(job(retry=1, retry_interval=0), ERR, NOW)
    assert (s.status, s.intended.change.at) == (JobStatus.WAITING, NOW)


def test_endless_retry() -> None:
    s = rules.on_error(job(retry=-1, retry_interval=1, attempt=100_000), ERR, NOW)
    assert s.status == JobStatus.POSTPONED
    assert rules.retries_left(job(retry=-1, attempt=10**9))


def test_permanent_errors_are_not_retried() -> None:
    s = rules.on_error(job(retry=5), ERR, NOW, permanent=True)
    assert s.status == JobStatus.FAILED


def test_error_after_cancel_was_requested_cancels_instead_of_retrying() -> None:
    s = rules.on_error(job(retry=5, interval=60, cancel_requested=True), ERR, NOW)
    assert s.status == JobStatus.CANCELED
    assert s.next_job is None  # canceled jobs are never rescheduled
    assert s.intended.change.error == ERR  # the attempt's error is kept


def test_fixed_backoff_ignores_the_attempt() -> None:
    opts = JobOptions(retry_interval=42)
    assert [rules.retry_delay(opts, a, one) for a in (1, 2, 10)] == [42, 42, 42]


def test_exponential_backoff_doubles_up_to_the_cap_with_equal_jitter() -> None:
    opts = JobOptions(retry_backoff="exponential", retry_interval=10, retry_backoff_max=100)
    assert [rules.retry_delay(opts, a, one) for a in (1, 2, 3, 4, 5, 6)] == [
        10,
        20,
        40,
        80,
        100,
        100,
    ]
    assert [rules.retry_delay(opts, a, zero) for a in (1, 2, 5)] == [5, 10, 50]
    s = rules.on_error(
        job(retry=3, retry_backoff="exponential", retry_interval=10, attempt=3), ERR, NOW, rand=one
    )
    assert s.intended.change.at == NOW + 40


@settings(max_examples=300, deadline=None)
@given(
    interval=st.floats(min_value=0, max_value=1e7),
    extra=st.floats(min_value=0, max_value=1e7),
    attempt=st.integers(min_value=1, max_value=100_000),
    rand=st.floats(min_value=0, max_value=1, exclude_max=True),
)
def test_exponential_backoff_stays_within_its_bounds(
    interval: float, extra: float, attempt: int, rand: float
) -> None:
    cap = interval + extra
    opts = JobOptions(retry_backoff="exponential", retry_interval=interval, retry_backoff_max=cap)
    delay = rules.retry_delay(opts, attempt, lambda: rand)
    full = min(cap, interval * 2.0 ** min(attempt - 1, 1000))
    assert 0 <= delay <= cap
    assert full / 2 - 1e-6 <= delay <= full + 1e-6


def test_timeout_with_and_without_retries() -> None:
    s = rules.on_timeout(job(timeout=5, retry=1, retry_interval=7), NOW)
    assert (s.status, s.intended.change.at) == (JobStatus.POSTPONED, NOW + 7)
    assert s.intended.change.error is not None
    assert (
        s.intended.change.error.type,
        s.intended.change.error.reason,
        s.intended.change.error.attempt,
    ) == ("Timeout", "timeout", 1)
    assert "timeout of 5s" in s.intended.change.error.message
    s = rules.on_timeout(job(timeout=5, retry=1, attempt=2), NOW)
    assert (s.status, s.reason) == (JobStatus.TIMEOUT, "timeout")
    assert s.intended.change.error is not None and s.intended.change.error.attempt == 2


def test_abandoned_with_and_without_retries() -> None:
    s = rules.on_abandoned(job(retry=1, retry_interval=0), NOW, detail="node n1 died")
    assert (s.status, s.intended.change.at) == (JobStatus.WAITING, NOW)
    assert s.intended.change.error is not None
    assert (s.intended.change.error.type, s.intended.change.error.reason) == (
        "WorkerLost",
        "abandoned",
    )
    assert "node n1 died" in s.intended.change.error.message
    s = rules.on_abandoned(job(retry=0), NOW)
    assert (s.status, s.reason) == (JobStatus.FAILED, "abandoned")


MIB = 1 << 20


def memory_error(**kw: Any) -> ErrorInfo:
    return ErrorInfo(attempt=1, type="MemoryLimit", message="m", time=NOW, reason="memory", **kw)


def test_memory_kill_fails_the_attempt_naming_the_limit_and_the_size() -> None:
    used = 300 * MIB + 12345
    s = rules.on_memory(job(retry=1, retry_interval=0), NOW, limit=200 * MIB, used=used)
    assert (s.status, s.reason) == (JobStatus.WAITING, "retrying")  # retried like an error
    s = rules.on_memory(job(retry=1, attempt=2), NOW, limit=200 * MIB, used=used)
    assert (s.status, s.reason) == (JobStatus.FAILED, "memory")
    error = s.intended.change.error
    assert error is not None and (error.type, error.reason, error.attempt) == (
        "MemoryLimit", "memory", 2,
    )  # fmt: skip
    assert "limit of 200 MiB" in error.message and "300.0 MiB" in error.message
    assert str(used) in error.message
    # a series goes on after a failed occurrence, as after an error
    assert rules.on_memory(job(interval=60), NOW, limit=MIB, used=2 * MIB).next_job is not None


def test_endless_retries_end_after_three_memory_kills_in_a_row() -> None:
    def outcome(errors: list[ErrorInfo]) -> Any:
        record = job(retry=-1, retry_interval=0, attempt=len(errors) + 1)
        record.errors = errors
        return rules.on_memory(record, NOW, limit=MIB, used=2 * MIB).status

    other = ErrorInfo(attempt=1, type="ValueError", message="boom", time=NOW)
    assert outcome([]) == JobStatus.WAITING
    assert outcome([memory_error()]) == JobStatus.WAITING
    assert outcome([memory_error(), memory_error()]) == JobStatus.FAILED
    assert outcome([memory_error(), other, memory_error()]) == JobStatus.WAITING  # not in a row
    # a finite retry budget is the budget, memory kills or not
    record = job(retry=5, retry_interval=0, attempt=3)
    record.errors = [memory_error(), memory_error()]
    assert rules.on_memory(record, NOW, limit=MIB, used=2 * MIB).status == JobStatus.WAITING


@pytest.mark.parametrize(
    "outcome",
    [
        lambda j: rules.on_memory(j, NOW, limit=MIB, used=2 * MIB),
        lambda j: rules.on_timeout(j, NOW),
        lambda j: rules.on_abandoned(j, NOW),
        lambda j: rules.on_cancel_running(j, NOW),
    ],
)
def test_cancel_requested_short_circuits(outcome: Any) -> None:
    s = outcome(job(retry=3, interval=60, cancel_requested=True))
    assert (s.status, s.reason, s.next_job) == (JobStatus.CANCELED, "canceled", None)


def test_expired_is_canceled_but_the_series_goes_on() -> None:
    record = job(interval=60, expires=NOW + 3600)
    assert not rules.is_expired(record, NOW)
    assert rules.is_expired(record, NOW + 3601)
    s = rules.on_expired(record, NOW + 3601)
    assert (s.status, s.reason) == (JobStatus.CANCELED, "expired")
    assert rules.on_expired(job(interval=60), NOW).next_job is not None
    assert not rules.is_expired(job(), NOW + 10**6)


def test_release_gives_the_attempt_back() -> None:
    s = rules.release(job(attempt=3, at=NOW - 100))
    assert (s.status, s.intended.change.at, s.intended.change.attempt) == (
        JobStatus.WAITING, NOW - 100, Attempt.GIVE_BACK,
    )  # fmt: skip
    assert s.intended.change.error is None and s.next_job is None


# -- recurrence ----------------------------------------------------------------------------------


def test_interval_from_end() -> None:
    s = rules.on_success(job(interval=60), "null", NOW)
    nxt = s.next_job
    assert nxt is not None
    assert nxt.at == NOW + 60
    assert nxt.status == JobStatus.POSTPONED
    assert (nxt.id, nxt.series, nxt.series_seq) == ("j1.1", "j1", 1)
    assert nxt.cls == "tests.api_jobs.Echo" and nxt.data_json == '{"x":1}'
    assert nxt.options == job(interval=60).options
    assert nxt.once_key == "k"


def test_interval_from_start() -> None:
    nxt = rules.next_occurrence(job(interval=60, interval_reference="start"), NOW)
    assert nxt is not None and nxt.at == NOW - 5 + 60
    # Never started (expired before it ran): from now.
    nxt = rules.next_occurrence(job(interval=60, interval_reference="start", started=None), NOW)
    assert nxt is not None and nxt.at == NOW + 60


def test_interval_minus_one_runs_again_at_once() -> None:
    nxt = rules.next_occurrence(job(interval=-1), NOW)
    assert nxt is not None
    assert (nxt.at, nxt.status) == (NOW, JobStatus.WAITING)


def test_one_off_jobs_do_not_recur_and_series_end_at_expires() -> None:
    assert rules.next_occurrence(job(), NOW) is None
    assert rules.next_occurrence(job(interval=60, expires=NOW + 30), NOW) is None
    assert rules.on_error(job(interval=60), ERR, NOW).next_job is not None  # failures recur
    assert rules.on_timeout(job(interval=60, timeout=1), NOW).next_job is not None


def test_recurrence_after_retries_are_spent_only() -> None:
    s = rules.on_error(job(interval=60, retry=1), ERR, NOW)
    assert s.status == JobStatus.POSTPONED and s.next_job is None


def test_cron_next_occurrence_skips_missed_runs() -> None:
    planned = datetime(2026, 3, 10, 9, 0, tzinfo=UTC).timestamp()
    late = datetime(2026, 3, 10, 12, 20, tzinfo=UTC).timestamp()
    nxt = rules.next_occurrence(job(cron="0 * * * *", at=planned), late)
    assert nxt is not None
    assert nxt.at == datetime(2026, 3, 10, 13, 0, tzinfo=UTC).timestamp()
    # Settled before its planned time (ran early): the next one is after the planned time.
    early = rules.next_occurrence(job(cron="0 * * * *", at=planned), planned - 600)
    assert early is not None
    assert early.at == datetime(2026, 3, 10, 10, 0, tzinfo=UTC).timestamp()


def test_first_run_at() -> None:
    assert rules.first_run_at(JobOptions(), NOW) == NOW
    assert rules.first_run_at(JobOptions(at=NOW + 5), NOW) == NOW + 5
    assert rules.first_run_at(JobOptions(cron="*/15 * * * *"), NOW) == (
        datetime(2026, 3, 10, 12, 15, tzinfo=UTC).timestamp()
    )
    assert rules.first_run_at(JobOptions(cron="@daily", at=NOW + 5), NOW) == NOW + 5
    assert rules.initial_status(NOW, NOW) == JobStatus.WAITING
    assert rules.initial_status(NOW + 1, NOW) == JobStatus.POSTPONED


def test_series_ids_are_deterministic() -> None:
    first = rules.next_occurrence(job(interval=60), NOW)
    again = rules.next_occurrence(job(interval=60), NOW + 1)
    assert first is not None and again is not None
    assert first.id == again.id == "j1.1"
    later = rules.next_occurrence(job(interval=60, series="j1", series_seq=7), NOW)
    assert later is not None
    assert (later.id, later.series, later.series_seq) == ("j1.8", "j1", 8)


# -- add_job_once -------------------------------------------------------------------------------


def test_once_key_compares_class_and_data_unless_ignore_data() -> None:
    key = rules.once_key("m.A", '{"a":1}', False)
    assert key == rules.once_key("m.A", '{"a":1}', False)
    assert key != rules.once_key("m.A", '{"a":2}', False)
    assert key != rules.once_key("m.B", '{"a":1}', False)
    assert rules.once_key("m.A", '{"a":1}', True) == rules.once_key("m.A", '{"a":2}', True)
    assert rules.once_key("m.A", "1", True) != rules.once_key("m.B", "1", True)


def test_same_request_compares_only_explicit_options() -> None:
    existing = job(status=JobStatus.WAITING, priority=5, retry=2)
    opts, explicit = resolve({"retry": 2})
    assert rules.same_request(existing, opts, explicit)  # priority not given: not compared
    opts, explicit = resolve({"retry": 3})
    assert not rules.same_request(existing, opts, explicit)
    opts, explicit = resolve({"priority": 5, "queue": "default"})
    assert rules.same_request(existing, opts, explicit)
    opts, explicit = resolve({"queue": "other"})
    assert not rules.same_request(existing, opts, explicit)


def test_same_request_ignores_at_and_id() -> None:
    existing = job(status=JobStatus.POSTPONED, at=NOW + 600)
    opts, explicit = resolve({"at": NOW + 1200, "id": "another", "ignore_data": True})
    assert rules.same_request(existing, opts, explicit)


def test_same_request_is_false_for_final_or_canceling_jobs() -> None:
    opts, explicit = resolve({})
    assert rules.same_request(job(status=JobStatus.PROCESSING), opts, explicit)
    assert not rules.same_request(job(status=JobStatus.DONE), opts, explicit)
    assert not rules.same_request(job(cancel_requested=True), opts, explicit)
