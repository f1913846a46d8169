"""Job.dependencies past its memory budget: results read again by page, never one store
read per dependency, only one page kept."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pytest

from taskschedd.dependency_results import PAGE, DependencyResults
from taskschedd.model import Dependency, JobStatus

DONE = JobStatus.DONE


class Store:
    """A loader over ids "d0".."dN" whose results are 100-character strings."""

    def __init__(self, n: int, missing: frozenset[str] = frozenset()) -> None:
        self.records = {f"d{i}": Dependency(DONE, f"{i:0100d}") for i in range(n)}
        self.missing = missing
        self.reads: list[int] = []

    def load(self, ids: Sequence[str]) -> Mapping[str, Dependency]:
        assert len(ids) <= PAGE
        self.reads.append(len(ids))
        return {i: self.records[i] for i in ids if i not in self.missing}


def test_within_the_budget_everything_is_read_once_at_the_claim() -> None:
    store = Store(1200)
    deps = DependencyResults(list(store.records), store.load)
    assert store.reads == [500, 500, 200]
    assert [d.result for d in deps.values()] == [r.result for r in store.records.values()]
    assert len(store.reads) == 3 and deps.reads == 3
    status, result = deps["d7"]
    assert (status, result) == (DONE, f"{7:0100d}")


def test_past_the_budget_results_are_read_by_page_and_one_page_is_kept() -> None:
    store = Store(1200)
    deps = DependencyResults(list(store.records), store.load, budget=102 * 10)  # 10 kept
    assert len(store.reads) == 3  # every status, at the claim
    seen = [deps[f"d{i}"] for i in range(1200)]
    assert seen == list(store.records.values())
    assert len(store.reads) == 3 + 3  # in order: each page once more (d0-d9 were kept)
    assert deps["d600"].result == f"{600:0100d}"  # page 1 again: one more read
    assert len(store.reads) == 7
    assert deps["d3"].result == f"{3:0100d}" and len(store.reads) == 7  # kept


def test_a_missing_record_reads_as_no_status_and_no_result() -> None:
    store = Store(3, missing=frozenset({"d1"}))
    deps = DependencyResults(["d0", "d1", "d2"], store.load, budget=0)
    assert deps["d1"] == Dependency(None, None)
    assert deps["d2"] == Dependency(DONE, f"{2:0100d}")
    assert list(deps) == ["d0", "d1", "d2"] and len(deps) == 3 and "d1" in deps
    with pytest.raises(KeyError):
        deps["d9"]
