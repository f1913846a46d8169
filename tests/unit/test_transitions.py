"""Every transition, as data: its guards and effects (written once, above the stores; how
each store applies them is tests/store/test_transitions_apply.py)."""

from __future__ import annotations

from typing import Any

import pytest

from taskschedd import rules, transitions
from taskschedd.model import ErrorInfo, JobRecord, JobStatus
from taskschedd.options import resolve
from taskschedd.transitions import (
    HELD,
    HELD_CANCELED,
    HELD_NOT_CANCELED,
    KEEP,
    Attempt,
    ClaimFields,
    Ended,
    Transition,
)

NOW = 1_800_000_000.0
RUNNABLE = frozenset({JobStatus.WAITING, JobStatus.POSTPONED})
PROCESSING = frozenset({JobStatus.PROCESSING})


def job(*, cancel_requested: bool = False, attempt: int = 1, **options: Any) -> JobRecord:
    opts, _ = resolve(options)
    return JobRecord(
        id="j", cls="m.C", data=None, status=JobStatus.PROCESSING, queue="default",
        priority=0, at=NOW - 10, created=NOW - 10, options=opts, attempt=attempt,
        started=NOW - 5, claim_token="t", cancel_requested=cancel_requested,
    )  # fmt: skip


ERR = ErrorInfo(attempt=1, type="E", message="m", time=NOW)


def names(t: Transition) -> list[str]:
    return [b.name for b in t.branches]


def test_claim_takes_a_due_runnable_job_and_starts_its_next_attempt() -> None:
    b = transitions.claim(ClaimFields("tok", NOW + 30, "n", "w"))
    assert b.guard == transitions.Guard(RUNNABLE, due=True)
    c = b.change
    assert (c.status, c.attempt, c.progress, c.ended) == (
        JobStatus.PROCESSING, Attempt.NEXT, 0.0, Ended.CLEAR,
    )  # fmt: skip
    assert c.claim == ClaimFields("tok", NOW + 30, "n", "w") and b.event


@pytest.mark.parametrize(
    "make",
    [
        lambda j: rules.on_success(j, "1", NOW),
        lambda j: rules.on_error(j, ERR, NOW),
        lambda j: rules.on_error(j, ERR, NOW, permanent=True),
        lambda j: rules.on_timeout(j, NOW),
        lambda j: rules.on_abandoned(j, NOW),
        lambda j: rules.on_expired(j, NOW),
        lambda j: rules.release(j),
    ],
    ids=["success", "error", "permanent", "timeout", "abandoned", "expired", "release"],
)
def test_every_outcome_has_a_canceled_branch_read_at_write_time(make: Any) -> None:
    """Guarded on the stored cancel flag: a cancel requested after the claim (which the
    worker's record cannot know) still wins, and never has a follow-up."""
    t: Transition = make(job(retry=2, interval=-1))
    assert [b.guard for b in t.branches] == [HELD_NOT_CANCELED, HELD_CANCELED]
    canceled = t.branches[1]
    assert canceled.status is JobStatus.CANCELED and canceled.next_job is None
    assert canceled.change.release_claim and canceled.change.ended is Ended.NOW
    assert canceled.change.release_once and canceled.change.cancel_requested is False


def test_an_outcome_known_canceled_at_claim_time_is_canceled_outright() -> None:
    for t in (
        rules.on_success(job(cancel_requested=True, interval=-1), "1", NOW),
        rules.on_error(job(cancel_requested=True, retry=5), ERR, NOW),
    ):
        assert names(t) == ["canceled"]
        assert t.branches[0].guard == HELD and t.next_job is None


def test_success_of_a_series_occurrence_carries_the_next_one() -> None:
    t = rules.on_success(job(interval=60), '"r"', NOW)
    assert t.status is JobStatus.DONE and t.intended.change.result_json == '"r"'
    nxt = t.next_job
    assert nxt is not None and (nxt.id, nxt.at, nxt.series) == ("j.1", NOW + 60, "j")
    # the canceled branch keeps the result the job produced
    assert t.branches[1].change.result_json == '"r"'


def test_a_retry_requeues_with_the_error_and_frees_nothing() -> None:
    t = rules.on_error(job(retry=1, retry_interval=5), ERR, NOW)
    c = t.intended.change
    assert (c.status, c.at, c.error, c.ended, c.release_once) == (
        JobStatus.POSTPONED, NOW + 5, ERR, Ended.CLEAR, False,
    )  # fmt: skip
    assert c.release_claim and c.cancel_requested is None


def test_final_settles_free_the_claim_cancel_flag_and_once_key() -> None:
    for t in (rules.on_success(job(), "1", NOW), rules.on_timeout(job(), NOW)):
        c = t.intended.change
        assert c.status is not None and c.status.is_final
        assert c.release_claim and c.release_once and c.cancel_requested is False
        assert c.ended is Ended.NOW


def test_release_and_cancel_claimed_give_the_attempt_back() -> None:
    assert rules.release(job()).intended.change.attempt is Attempt.GIVE_BACK
    t = rules.on_cancel_claimed(job(), NOW)
    assert (t.status, t.intended.change.attempt) == (JobStatus.CANCELED, Attempt.GIVE_BACK)


def test_corrupt_replaces_the_errors_and_ends_failed_without_next() -> None:
    broken = job(interval=5)
    broken.corrupt = "bad"
    t = rules.on_corrupt(broken, NOW)
    assert names(t) == ["corrupt"] and t.next_job is None
    c = t.intended.change
    assert (c.status, c.reason, c.reset_errors) == (JobStatus.FAILED, "corrupt", True)


def test_cancel_ends_a_runnable_job_and_asks_a_running_one_to_stop() -> None:
    t = transitions.cancel()
    first, second = t.branches
    assert first.guard == transitions.Guard(RUNNABLE | {JobStatus.BLOCKED})
    assert (first.status, first.reason, first.change.release_once) == (
        JobStatus.CANCELED, "canceled", True,
    )  # fmt: skip
    assert second.guard == transitions.Guard(PROCESSING)
    assert second.change.cancel_requested is True and second.change.status is None
    assert not second.event  # the settle that follows records the CANCELED event


def test_replace_once_frees_the_once_key_in_both_branches() -> None:
    first, second = transitions.replace_once().branches
    assert first.reason == "replaced" and first.change.release_once
    assert second.change.cancel_requested and second.change.release_once


def test_requeue_takes_failed_canceled_or_timeout_but_not_done() -> None:
    (b,) = transitions.requeue(NOW).branches
    assert b.guard.statuses == {JobStatus.FAILED, JobStatus.CANCELED, JobStatus.TIMEOUT}
    c = b.change
    assert (c.status, c.at, c.attempt, c.reason, c.ended) == (
        JobStatus.WAITING, NOW, Attempt.RESET, "retried", Ended.CLEAR,
    )  # fmt: skip
    assert c.clear_result and c.clear_owner and c.cancel_requested is False


def test_progress_and_renew_touch_only_their_field_of_a_held_job() -> None:
    (p,) = transitions.progress(40.0).branches
    assert p.guard == HELD and not p.event and p.change.progress == 40.0
    assert p.change.status is None and p.change.reason is KEEP
    r = transitions.renew(NOW + 30)
    assert r.guard == HELD and not r.event and not r.change.touch
    assert r.change.lease_until == NOW + 30


def test_series_of_a_job() -> None:
    assert rules.series_of(job()) is None
    assert rules.series_of(job(interval=60)) == "j"
    assert rules.series_of(job(cron="* * * * *")) == "j"
    occurrence = job(interval=60)
    occurrence.series = "s"
    assert rules.series_of(occurrence) == "s"
