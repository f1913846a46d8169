"""Job.dependencies: statuses read at the claim without results, results kept up to a
budget and read again by page past it, never one store read per dependency."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pytest

from taskschedd.dependency_results import PAGE, RESULT_PAGE, DependencyResults
from taskschedd.model import Dependency, JobStatus

DONE = JobStatus.DONE


class Store:
    """Jobs "d0".."dN" created at time 1, whose results are 100-character strings."""

    def __init__(self, n: int, missing: frozenset[str] = frozenset()) -> None:
        self.results = {f"d{i}": f"{i:0100d}" for i in range(n) if f"d{i}" not in missing}
        self.created = dict.fromkeys(self.results, 1.0)
        self.state_reads: list[int] = []
        self.result_reads: list[int] = []

    def states(self, ids: Sequence[str]) -> Mapping[str, tuple[JobStatus | None, float | None]]:
        assert len(ids) <= PAGE
        self.state_reads.append(len(ids))
        return {i: (DONE, self.created[i]) for i in ids if i in self.results}

    def read_results(self, ids: Sequence[str]) -> Mapping[str, tuple[Any, int]]:
        assert len(ids) <= RESULT_PAGE
        self.result_reads.append(len(ids))
        return {i: (self.results[i], 102) for i in ids if i in self.results}

    def deps(self, ids: Sequence[str], **kwargs: Any) -> DependencyResults:
        return DependencyResults(ids, self.states, self.read_results, **kwargs)


def test_within_the_budget_everything_is_read_at_the_claim() -> None:
    store = Store(1200)
    deps = store.deps(list(store.results))
    assert store.state_reads == [500, 500, 200]
    assert len(store.result_reads) == 1200 // RESULT_PAGE
    calls = len(store.result_reads)
    assert [d.result for d in deps.values()] == list(store.results.values())
    assert len(store.result_reads) == calls  # nothing read again
    status, result = deps["d7"]
    assert (status, result) == (DONE, f"{7:0100d}")


def test_past_the_budget_results_are_read_by_page_and_one_page_is_kept() -> None:
    store = Store(1200)
    deps = store.deps(list(store.results), budget=102 * 10)  # 10 kept
    assert (len(store.state_reads), store.result_reads) == (3, [RESULT_PAGE])
    seen = [deps[f"d{i}"] for i in range(1200)]
    assert seen == [Dependency(DONE, r) for r in store.results.values()]
    # In order: every page once (the first one was still the page kept from the claim).
    assert len(store.result_reads) == 1200 // RESULT_PAGE
    deps["d600"]  # an earlier page again: one more read
    assert len(store.result_reads) == 1 + 1200 // RESULT_PAGE
    deps["d3"]  # kept
    assert len(store.result_reads) == 1 + 1200 // RESULT_PAGE


def test_a_missing_record_or_a_reused_id_reads_as_no_status_and_no_result() -> None:
    store = Store(3, missing=frozenset({"d1"}))
    store.created["d2"] = 9.0  # added after the dependent: another job under that id
    deps = store.deps(["d0", "d1", "d2"], created=5.0, budget=0)
    assert deps["d1"] == Dependency(None, None)
    assert deps["d2"] == Dependency(None, None)
    assert deps["d0"] == Dependency(DONE, f"{0:0100d}")
    assert list(deps) == ["d0", "d1", "d2"] and len(deps) == 3 and "d1" in deps
    with pytest.raises(KeyError):
        deps["d9"]
