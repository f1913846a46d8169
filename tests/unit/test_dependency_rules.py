"""The dependency decision (taskschedd.dependencies.decide): pure, one case per rule."""

from __future__ import annotations

from taskschedd.dependencies import BLOCKED_GUARD, decide
from taskschedd.model import JobStatus
from taskschedd.transitions import Ended

D, F, C, T = JobStatus.DONE, JobStatus.FAILED, JobStatus.CANCELED, JobStatus.TIMEOUT
W, P = JobStatus.WAITING, JobStatus.PROCESSING
NOW = 1000.0


def test_all_done_releases_to_waiting_or_to_its_own_time() -> None:
    t = decide([("a", D), ("b", D)], on_failure="cancel", at=NOW, now=NOW)
    assert t is not None and len(t.branches) == 1
    assert (t.status, t.reason, t.intended.guard) == (W, "dependencies done", BLOCKED_GUARD)
    later = decide([("a", D)], on_failure="cancel", at=NOW + 1, now=NOW)
    assert later is not None and later.status is JobStatus.POSTPONED


def test_an_unfinished_dependency_keeps_it_waiting_a_retrying_one_too() -> None:
    assert decide([("a", D), ("b", P)], on_failure="cancel", at=NOW, now=NOW) is None
    assert decide([("a", W)], on_failure="run", at=NOW, now=NOW) is None  # retrying


def test_a_failure_cancels_naming_the_first_failed_dependency() -> None:
    for status in (F, C, T):
        t = decide([("a", D), ("b", status), ("c", F)], on_failure="cancel", at=NOW, now=NOW)
        assert t is not None and t.status is JobStatus.CANCELED
        assert t.reason == f"dependency b ended {status.name}"
        change = t.intended.change
        assert (change.ended, change.release_once, t.intended.guard) == (
            Ended.NOW, True, BLOCKED_GUARD,
        )  # fmt: skip
    # At once, even while other dependencies still run.
    early = decide([("a", P), ("b", F)], on_failure="cancel", at=NOW, now=NOW)
    assert early is not None and early.status is JobStatus.CANCELED


def test_a_missing_dependency_counts_as_failed_never_stuck() -> None:
    t = decide([("a", None)], on_failure="cancel", at=NOW, now=NOW)
    assert t is not None and t.reason == "dependency a ended MISSING"
    run = decide([("a", None)], on_failure="run", at=NOW, now=NOW)
    assert run is not None and run.status is W


def test_run_on_failure_waits_for_all_then_releases() -> None:
    assert decide([("a", F), ("b", P)], on_failure="run", at=NOW, now=NOW) is None
    t = decide([("a", F), ("b", D)], on_failure="run", at=NOW, now=NOW)
    assert t is not None and (t.status, t.reason) == (W, "dependencies final")
