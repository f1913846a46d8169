"""End to end through the public API: Scheduler -> store -> Worker -> outcome in the store."""

from __future__ import annotations

import multiprocessing
import threading
import time
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import pytest

from taskschedd import (
    Job,
    JobClassError,
    JobDataError,
    JobFailed,
    JobNotFound,
    JobSpec,
    JobStatus,
    OptionError,
    Scheduler,
    TaskSchedError,
    WaitTimeout,
    Worker,
)
from taskschedd.cron import CronExpr
from taskschedd.model import EventRecord, JobQuery
from taskschedd.store import open_store
from tests import api_jobs
from tests.api_jobs import MODULE
from tests.helpers import wait_for

FORK = multiprocessing.get_context("fork")
ECHO = "tests.api_jobs.Echo"


@pytest.fixture
def scheduler(sqlite_url: str) -> Iterator[Scheduler]:
    with Scheduler(sqlite_url, create=True) as s:
        yield s


@pytest.fixture
def worker(scheduler: Scheduler) -> Worker:
    return Worker(scheduler.store, allowed_modules=[MODULE], node="test", poll_interval=0.05)


def _work_in_child(url: str, max_jobs: int, queues: tuple[str, ...] = ("default",)) -> None:
    store = open_store(url)
    Worker(store, allowed_modules=[MODULE], node="child", queues=queues, poll_interval=0.05).run(
        max_jobs=max_jobs, idle_exit=10
    )
    store.close()


class ChildWorker:
    """A Worker running in a forked process until it ran ``max_jobs`` jobs."""

    def __init__(self, url: str, max_jobs: int) -> None:
        self.proc = FORK.Process(target=_work_in_child, args=(url, max_jobs), daemon=True)

    def __enter__(self) -> ChildWorker:
        self.proc.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.proc.join(15)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join()


def job_count(scheduler: Scheduler) -> tuple[int, int]:
    return len(scheduler.store.find(JobQuery())), scheduler.store.last_event_seq()


# -- outcomes -----------------------------------------------------------------------------------


def test_added_job_runs_to_done_with_its_result(scheduler: Scheduler, worker: Worker) -> None:
    process = scheduler.add_job(ECHO, {"a": [1, 2]})
    assert process.status == JobStatus.WAITING
    assert worker.run_one() is not None
    process.refresh()
    assert process.status == JobStatus.DONE
    assert process.result == {"a": [1, 2]}
    assert (process.attempt, process.errors, process.progress) == (1, [], 100.0)
    by_class = scheduler.add_job(api_jobs.Echo, "x")  # a class object works too
    assert by_class.cls == ECHO
    assert worker.run_one() is not None
    assert scheduler.get_job(by_class.id).result == "x"


def test_failing_job_is_retried_on_the_same_id_and_keeps_every_error(
    scheduler: Scheduler, worker: Worker
) -> None:
    process = scheduler.add_job(api_jobs.Fail, {"message": "nope"}, retry=2, retry_interval=0)
    assert worker.run(max_jobs=3, idle_exit=2) == 3
    process.refresh()
    assert process.status == JobStatus.FAILED
    assert process.attempt == 3
    assert [e.attempt for e in process.errors] == [1, 2, 3]
    for err in process.errors:
        assert (err.type, err.message, err.reason) == ("ValueError", "nope", "exception")
        assert "Traceback (most recent call last)" in err.traceback
        assert "api_jobs.py" in err.traceback and "raise ValueError" in err.traceback
    assert [j.id for j in scheduler.get_jobs(status="all")] == [process.id]
    events = scheduler.events(job_ids=[process.id])
    assert [e.status for e in events] == [
        JobStatus.WAITING,
        JobStatus.PROCESSING,
        JobStatus.WAITING,
        JobStatus.PROCESSING,
        JobStatus.WAITING,
        JobStatus.PROCESSING,
        JobStatus.FAILED,
    ]
    failed = events[-1]
    assert failed.error is not None and failed.error.type == "ValueError"
    assert (failed.node, failed.attempt) == ("test", 3)


def test_a_retry_that_succeeds_ends_done_with_the_earlier_error(
    scheduler: Scheduler, worker: Worker
) -> None:
    process = scheduler.add_job(api_jobs.FailTimes, {"fail": 1}, retry=3, retry_interval=0)
    worker.run(max_jobs=2, idle_exit=2)
    process.refresh()
    assert (process.status, process.result, process.attempt) == (JobStatus.DONE, {"attempt": 2}, 2)
    assert [(e.attempt, e.message) for e in process.errors] == [(1, "attempt 1 failed")]


def test_timeout_ends_timeout(scheduler: Scheduler, worker: Worker) -> None:
    process = scheduler.add_job(api_jobs.Sleep, {"seconds": 30}, timeout=0.3)
    started = time.monotonic()
    worker.run_one()
    assert time.monotonic() - started < 5
    process.refresh()
    assert process.status == JobStatus.TIMEOUT
    assert [(e.type, e.reason) for e in process.errors] == [("Timeout", "timeout")]


def test_a_timed_out_attempt_is_retried(scheduler: Scheduler, worker: Worker) -> None:
    process = scheduler.add_job(
        api_jobs.Sleep, {"seconds": 30, "first_only": True}, timeout=0.3, retry=1, retry_interval=0
    )
    worker.run(max_jobs=2, idle_exit=5)
    process.refresh()
    assert (process.status, process.attempt, process.result) == (
        JobStatus.DONE,
        2,
        {"attempt": 2},
    )
    assert [e.reason for e in process.errors] == ["timeout"]


def test_bad_results_and_classes_fail_without_retries(scheduler: Scheduler, worker: Worker) -> None:
    bad_result = scheduler.add_job(api_jobs.BadResult, retry=3, retry_interval=0)
    not_allowed = scheduler.add_job("os.system", retry=3, retry_interval=0)
    worker.run(max_jobs=2, idle_exit=1)
    got = scheduler.get_job(bad_result.id)
    assert (got.status, got.attempt) == (JobStatus.FAILED, 1)
    assert "not JSON-serialisable" in got.errors[0].message
    got = scheduler.get_job(not_allowed.id)
    assert (got.status, got.attempt) == (JobStatus.FAILED, 1)
    assert got.errors[0].type == "JobClassError" and "not allowed" in got.errors[0].message


def test_progress_is_recorded(scheduler: Scheduler, worker: Worker) -> None:
    process = scheduler.add_job(api_jobs.Progress)
    seen: list[float] = []
    original = scheduler.store.progress

    def spy(job_id: str, token: str, percent: float, *, now: float) -> bool:
        seen.append(percent)
        return original(job_id, token, percent, now=now)

    scheduler.store.progress = spy  # type: ignore[method-assign]
    worker.run_one()
    assert seen == [25.0, 50.0, 75.0]
    assert process.refresh().progress == 100.0


# -- following ----------------------------------------------------------------------------------


def test_wait_follows_retries_to_the_final_outcome(scheduler: Scheduler, sqlite_url: str) -> None:
    process = scheduler.add_job(api_jobs.FailTimes, {"fail": 2}, retry=2, retry_interval=0.1)
    with ChildWorker(sqlite_url, max_jobs=3):
        process.wait(timeout=15)
    assert process.status == JobStatus.DONE
    assert process.attempt == 3
    assert len(process.errors) == 2


def test_wait_times_out(scheduler: Scheduler) -> None:
    process = scheduler.add_job(ECHO)
    started = time.monotonic()
    with pytest.raises(WaitTimeout) as info:
        process.wait(timeout=0.3)
    assert 0.25 <= time.monotonic() - started < 2
    assert isinstance(info.value, TimeoutError) and info.value.exit_code == 124
    assert process.id in str(info.value)


def test_wait_can_raise_the_jobs_failure(scheduler: Scheduler, worker: Worker) -> None:
    failing = scheduler.add_job(api_jobs.Fail, {"message": "disk full"})
    ok = scheduler.add_job(ECHO, 1)
    worker.run(max_jobs=2, idle_exit=1)
    with pytest.raises(JobFailed) as info:
        failing.wait(timeout=5, raise_errors=True)
    assert isinstance(info.value, TaskSchedError)
    assert info.value.job_id == failing.id and info.value.status == "FAILED"
    assert "disk full" in str(info.value)
    assert ok.wait(timeout=5, raise_errors=True).result == 1
    done = scheduler.wait([ok.id, failing.id, ok.id], timeout=5)
    assert [p.id for p in done] == [ok.id, failing.id]


def test_listen_gets_events_and_stops_when_the_callback_says_so(
    scheduler: Scheduler, sqlite_url: str
) -> None:
    seq = scheduler.store.last_event_seq()
    process = scheduler.add_job(ECHO, "hi")
    other = scheduler.add_job(ECHO, "other")
    seen: list[tuple[str, JobStatus]] = []

    def callback(event: EventRecord) -> bool:
        seen.append((event.job_id, event.status))
        return event.status == JobStatus.DONE

    with ChildWorker(sqlite_url, max_jobs=2):
        last = scheduler.listen(callback, {"id": process.id}, timeout=15, after=seq)
    assert seen == [
        (process.id, JobStatus.WAITING),
        (process.id, JobStatus.PROCESSING),
        (process.id, JobStatus.DONE),
    ]
    assert last == scheduler.events(job_ids=[process.id])[-1].seq
    assert scheduler.get_job(other.id).status.is_final
    # Filters by class and status; events already stored are replayed from ``after``.
    done: list[str] = []
    scheduler.listen(
        lambda e: done.append(e.job_id) or len(done) == 2,
        {"class": "tests.api_jobs:Echo", "status": ["done"]},
        after=seq,
        timeout=5,
    )
    assert done == [process.id, other.id]
    with pytest.raises(OptionError, match="unknown listen filter key"):
        scheduler.listen(callback, {"colour": "red"}, timeout=0.1)


def test_listen_latency_is_well_below_a_poll_interval(
    scheduler: Scheduler, sqlite_url: str
) -> None:
    latencies: list[float] = []
    writer = Scheduler(sqlite_url, create=True)
    writer.store.last_event_seq()
    for _ in range(3):
        sent: dict[str, float] = {}

        def add(sent: dict[str, float] = sent) -> None:
            sent["at"] = time.monotonic()
            writer.add_job(ECHO)

        def callback(event: EventRecord, sent: dict[str, float] = sent) -> bool:
            latencies.append(time.monotonic() - sent["at"])
            return True

        timer = threading.Timer(0.1, add)
        timer.start()
        scheduler.listen(callback, timeout=5)
        timer.join()
    writer.close()
    assert len(latencies) == 3
    assert max(latencies) < 0.25, latencies


# -- refusing bad input -------------------------------------------------------------------------


def test_bad_options_are_refused_and_nothing_is_written(scheduler: Scheduler) -> None:
    before = job_count(scheduler)
    cases: list[tuple[dict[str, Any], str]] = [
        ({"retry": "often"}, "option 'retry': expected an integer >= -1 (-1 = endless)"),
        ({"tiemout": 5}, "unknown option 'tiemout' (did you mean 'timeout'?)"),
        ({"cron": "@daily", "interval": 60}, "'cron' and 'interval' exclude each other"),
        ({"at": 100, "expires": 50}, "'expires' must be later than 'at'"),
        ({"queue": "a b"}, "option 'queue': expected a queue name"),
        ({"force_spawn": "sometimes"}, "given as 'force_spawn'"),
    ]
    for options, message in cases:
        with pytest.raises(OptionError) as info:
            scheduler.add_job(ECHO, None, **options)
        assert message in str(info.value)
        assert info.value.exit_code == 2
    with pytest.raises(JobClassError, match="is not valid"):
        scheduler.add_job("not a class path")
    with pytest.raises(JobClassError, match="top level"):
        scheduler.add_job(type("Local", (Job,), {"__qualname__": "f.<locals>.Local"}))
    assert job_count(scheduler) == before


def test_non_json_data_is_refused_and_nothing_is_written(scheduler: Scheduler) -> None:
    before = job_count(scheduler)
    for data in ({"when": datetime.now()}, float("nan"), {1, 2}, b"raw"):
        with pytest.raises(JobDataError, match="JSON-serialisable"):
            scheduler.add_job(ECHO, data)
    assert job_count(scheduler) == before


def test_duplicate_id_is_refused(scheduler: Scheduler) -> None:
    scheduler.add_job(ECHO, 1, id="report-1")
    before = job_count(scheduler)
    with pytest.raises(OptionError, match="a job with id 'report-1' already exists"):
        scheduler.add_job(ECHO, 2, id="report-1")
    assert job_count(scheduler) == before
    assert scheduler.get_job("report-1").data == 1


def test_add_jobs_is_all_or_nothing(scheduler: Scheduler, worker: Worker) -> None:
    scheduler.add_job(ECHO, id="taken")
    before = job_count(scheduler)
    with pytest.raises(OptionError, match=r"job #1: option 'retry'"):
        scheduler.add_jobs([(ECHO, 1), (ECHO, 2, {"retry": "x"}), (ECHO, 3)])
    with pytest.raises(JobDataError, match=r"job #0: "):
        scheduler.add_jobs([(ECHO, object())])
    with pytest.raises(OptionError, match="same id is given to more than one job"):
        scheduler.add_jobs([(ECHO, 1, {"id": "x"}), (ECHO, 2, {"id": "x"})])
    with pytest.raises(OptionError, match="'taken' already exists"):
        scheduler.add_jobs([(ECHO, 1, {"id": "fresh"}), (ECHO, 2, {"id": "taken"})])
    with pytest.raises(OptionError, match=r"job #0: expected JobSpec"):
        scheduler.add_jobs(["tests.api_jobs.Echo"])
    assert job_count(scheduler) == before

    added = scheduler.add_jobs(
        [
            JobSpec(ECHO, "a", {"priority": 1}),
            (api_jobs.Echo, "b"),
            {"cls": ECHO, "data": "c", "queue": "default"},
        ]
    )
    assert [p.data for p in added] == ["a", "b", "c"]
    worker.run(max_jobs=4, idle_exit=1)  # with "taken"
    assert [p.refresh().result for p in added] == ["a", "b", "c"]


def test_job_not_found_is_a_lookup_error(scheduler: Scheduler) -> None:
    for call in (
        lambda: scheduler.get_job("nope"),
        lambda: scheduler.cancel_job("nope"),
        lambda: scheduler.retry_job("nope"),
        lambda: scheduler.wait(["nope"], timeout=1),
    ):
        with pytest.raises(LookupError) as info:
            call()
        assert isinstance(info.value, JobNotFound)
        assert "'nope'" in str(info.value)


# -- scheduling ---------------------------------------------------------------------------------


def test_interval_jobs_create_the_next_occurrence_in_their_series(
    scheduler: Scheduler, worker: Worker
) -> None:
    process = scheduler.add_job(ECHO, "tick", interval=60)
    worker.run_one()
    first = process.refresh()
    assert first.status == JobStatus.DONE
    series = scheduler.store.find(JobQuery(series=process.id))
    assert [j.id for j in series] == [process.id, f"{process.id}.1"]
    nxt = series[1]
    assert (nxt.status, nxt.series, nxt.series_seq, nxt.data) == (
        JobStatus.POSTPONED,
        process.id,
        1,
        "tick",
    )
    assert first.record.ended is not None
    assert nxt.at == pytest.approx(first.record.ended + 60, abs=1)
    assert worker.run_one() is None  # not due yet


def test_interval_minus_one_runs_again_at_once(scheduler: Scheduler, worker: Worker) -> None:
    process = scheduler.add_job(ECHO, interval=-1)
    worker.run(max_jobs=3, idle_exit=1)
    ids = [j.id for j in scheduler.store.find(JobQuery(series=process.id))]
    assert ids == [process.id, f"{process.id}.1", f"{process.id}.2", f"{process.id}.3"]
    assert [scheduler.get_job(i).status for i in ids[:3]] == [JobStatus.DONE] * 3
    scheduler.cancel_job(ids[3])
    assert worker.run_one() is None


def test_cron_job_first_runs_at_the_next_cron_time(scheduler: Scheduler, worker: Worker) -> None:
    before = time.time()
    process = scheduler.add_job(ECHO, cron="*/5 * * * *")
    expected = CronExpr.parse("*/5 * * * *").next_after(before)
    assert process.status == JobStatus.POSTPONED
    assert process.record.at in (expected, CronExpr.parse("*/5 * * * *").next_after(time.time()))
    assert process.record.at % 300 == 0 and before < process.record.at <= before + 300
    assert worker.run_one() is None


def test_expired_jobs_are_not_started(scheduler: Scheduler, worker: Worker) -> None:
    now = time.time()
    process = scheduler.add_job(api_jobs.Fail, at=now - 100, expires=now - 50)
    ok = scheduler.add_job(ECHO, expires=now + 3600)
    worker.run(max_jobs=2, idle_exit=1)
    got = process.refresh()
    assert (got.status, got.reason, got.errors) == (JobStatus.CANCELED, "expired", [])
    assert ok.refresh().status == JobStatus.DONE


def test_higher_priority_runs_first_then_fifo(scheduler: Scheduler, worker: Worker) -> None:
    low = scheduler.add_job(ECHO, "low", priority=-5)
    first = scheduler.add_job(ECHO, "first")
    high = scheduler.add_job(ECHO, "high", priority=10)
    second = scheduler.add_job(ECHO, "second")
    order = []
    while (outcome := worker.run_one()) is not None:
        order.append(outcome.job.id)
    assert order == [high.id, first.id, second.id, low.id]


def test_workers_take_only_their_queues(scheduler: Scheduler) -> None:
    urgent = scheduler.add_job(ECHO, queue="urgent")
    normal = scheduler.add_job(ECHO)
    only_urgent = Worker(scheduler.store, allowed_modules=[MODULE], queues=["urgent"])
    assert only_urgent.run(idle_exit=0.2) == 1
    assert urgent.refresh().status == JobStatus.DONE
    assert normal.refresh().status == JobStatus.WAITING
    assert [p.id for p in scheduler.get_jobs(queue="urgent", status="all")] == [urgent.id]


def test_add_job_once_returns_the_same_job_or_replaces_it(scheduler: Scheduler) -> None:
    first = scheduler.add_job_once(ECHO, {"report": 1}, retry=2)
    same = scheduler.add_job_once(ECHO, {"report": 1}, retry=2, at=time.time() + 60)
    assert same.id == first.id
    other_data = scheduler.add_job_once(ECHO, {"report": 2})
    assert other_data.id != first.id
    replaced = scheduler.add_job_once(ECHO, {"report": 1}, retry=5)
    assert replaced.id != first.id
    old = scheduler.get_job(first.id)
    assert (old.status, old.reason) == (JobStatus.CANCELED, "replaced")
    assert {p.id for p in scheduler.get_jobs()} == {replaced.id, other_data.id}


# -- finding and changing -----------------------------------------------------------------------


def test_get_jobs_defaults_to_active_jobs_and_filters(scheduler: Scheduler, worker: Worker) -> None:
    done = scheduler.add_job(ECHO, "done")
    failed = scheduler.add_job(api_jobs.Fail)
    worker.run(max_jobs=2, idle_exit=1)
    waiting = scheduler.add_job(ECHO, "waiting", queue="q2")
    postponed = scheduler.add_job(api_jobs.Fail, at=time.time() + 600)
    running = scheduler.add_job(ECHO, "running")
    assert worker.claim(job_id=running.id) is not None
    canceled = scheduler.add_job(ECHO).cancel()
    assert canceled.status == JobStatus.CANCELED

    def ids(**kw: Any) -> list[str]:
        return [p.id for p in scheduler.get_jobs(**kw)]

    assert ids() == [waiting.id, postponed.id, running.id]
    assert ids(status="done") == [done.id]
    assert ids(status=["failed", JobStatus.CANCELED]) == [failed.id, canceled.id]
    assert ids(status=2) == [running.id]
    assert len(ids(status="all")) == 6
    assert ids(cls=api_jobs.Fail) == [postponed.id]
    assert ids(cls="tests.api_jobs:Fail", status="all") == [failed.id, postponed.id]
    assert ids(queue="q2") == [waiting.id]
    assert ids(ids=[done.id, waiting.id]) == [done.id, waiting.id]  # any status
    assert ids(limit=2) == [waiting.id, postponed.id]
    assert ids(newest_first=True, limit=1) == [running.id]
    with pytest.raises(OptionError, match="unknown status 'finished'; accepted: waiting"):
        scheduler.get_jobs(status="finished")
    with pytest.raises(OptionError, match="limit must be >= 0"):
        scheduler.get_jobs(limit=-1)


def test_cancel_and_retry_job(scheduler: Scheduler, worker: Worker) -> None:
    waiting = scheduler.add_job(ECHO, "w")
    canceled = scheduler.cancel_job(waiting.id)
    assert (canceled.status, canceled.reason) == (JobStatus.CANCELED, "canceled")
    assert worker.run_one() is None
    again = scheduler.retry_job(waiting.id)
    assert again.status == JobStatus.WAITING
    worker.run_one()
    assert waiting.refresh().status == JobStatus.DONE
    assert scheduler.cancel_job(waiting.id).status == JobStatus.DONE  # final: unchanged
    with pytest.raises(TaskSchedError, match="only FAILED, TIMEOUT or CANCELED"):
        scheduler.retry_job(waiting.id)

    # A retried job gets a fresh retry budget and keeps the errors of earlier runs.
    failing = scheduler.add_job(api_jobs.FailTimes, {"fail": 1}, retry=1, retry_interval=0)
    worker.run(max_jobs=1)
    scheduler.cancel_job(failing.id)
    assert failing.refresh().status == JobStatus.CANCELED
    scheduler.retry_job(failing.id)
    worker.run(max_jobs=2, idle_exit=1)
    got = failing.refresh()
    assert (got.status, got.result) == (JobStatus.DONE, {"attempt": 2})
    assert [e.attempt for e in got.errors] == [1, 1]


def test_cancel_of_a_running_job_is_requested(scheduler: Scheduler, worker: Worker) -> None:
    process = scheduler.add_job(ECHO)
    job = worker.claim()
    assert job is not None
    got = scheduler.cancel_job(process.id)
    assert got.status == JobStatus.PROCESSING and got.record.cancel_requested
    assert scheduler.store.cancel_requested([job.claim_token or ""]) == [job.claim_token]


def test_purge_deletes_only_old_final_jobs(scheduler: Scheduler, worker: Worker) -> None:
    done = scheduler.add_job(ECHO)
    failed = scheduler.add_job(api_jobs.Fail)
    worker.run(max_jobs=2, idle_exit=1)
    waiting = scheduler.add_job(ECHO, at=time.time() + 600)
    assert scheduler.purge(older_than=3600) == 0
    with pytest.raises(OptionError, match="only final jobs can be purged, not WAITING"):
        scheduler.purge(statuses="waiting")
    wait_for(lambda: time.time() > (scheduler.get_job(failed.id).record.ended or 0), 2)
    assert scheduler.purge(statuses="failed") == 1
    assert scheduler.purge() == 1
    assert [p.id for p in scheduler.get_jobs(status="all")] == [waiting.id]
    assert scheduler.events(job_ids=[done.id, failed.id]) == []


def test_flush_deletes_everything(scheduler: Scheduler, worker: Worker) -> None:
    scheduler.add_job(ECHO)
    worker.run_one()
    scheduler.add_job(ECHO)
    scheduler.flush()
    assert scheduler.get_jobs(status="all") == []
    assert scheduler.events() == []
    assert scheduler.stats()["by_status"] == {}
