"""What a running job sees of its dependencies (``Job.dependencies``), with its memory
bounded however wide the fan-in.

When the job is claimed, every dependency's status is read (a page of 500 per store
read, without data or results), then results in ``depends_on`` order, a page of 50 per
read, until they add up to ``RESULTS_KEPT`` bytes of JSON. A result past that is read
again when the job asks for it, with its page (one store read per page, never one per
dependency), and only the last page read is kept: a 10,000-wide fan-in of 1 MiB
results costs the worker about RESULTS_KEPT plus a page, not 10 GiB.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from taskschedd.model import Dependency, JobStatus

#: Results kept from the claim on, in bytes of stored JSON (the rest: read on access).
RESULTS_KEPT = 64 * 2**20
#: Dependencies per status read (SQLite before 3.32 binds at most 999 values).
PAGE = 500
#: Dependencies per result read: the most a read may hold is this many results.
RESULT_PAGE = 50

States = Callable[[Sequence[str]], Mapping[str, tuple[JobStatus | None, float | None]]]
Results = Callable[[Sequence[str]], Mapping[str, tuple[Any, int]]]


class DependencyResults(Mapping[str, Dependency]):
    """``id -> Dependency(status, result)`` for each id of a job's ``depends_on``, in
    that order. ``status`` is None (and the result None) when the dependency's record is
    gone, or was replaced by a job created after the dependent (``created``): an id
    reused after a purge names another job."""

    def __init__(
        self,
        ids: Sequence[str],
        states: States,
        results: Results,
        *,
        created: float | None = None,
        budget: int | None = None,
    ) -> None:
        budget = RESULTS_KEPT if budget is None else budget
        self._ids = list(dict.fromkeys(ids))
        self._index = {dep: i for i, dep in enumerate(self._ids)}
        self._results = results
        self._status: dict[str, JobStatus | None] = {}
        for start in range(0, len(self._ids), PAGE):
            chunk = self._ids[start : start + PAGE]
            found = states(chunk)
            for dep in chunk:
                status, born = found.get(dep, (None, None))
                if created is not None and born is not None and born > created:
                    status = None
                self._status[dep] = status
        self.reads = len(range(0, len(self._ids), PAGE))  # store reads so far
        self._kept: dict[str, Any] = {}
        self._page: tuple[int, Mapping[str, tuple[Any, int]]] | None = None
        used = 0
        for page in range(0, len(range(0, len(self._ids), RESULT_PAGE))):
            got = self._read_page(page)
            for dep in self._ids[page * RESULT_PAGE : (page + 1) * RESULT_PAGE]:
                result, size = got.get(dep, (None, 0))
                if used + size > budget:
                    return  # the rest are read on access
                used += size
                self._kept[dep] = result
        self._page = None  # all kept

    def _read_page(self, page: int) -> Mapping[str, tuple[Any, int]]:
        if self._page is None or self._page[0] != page:
            chunk = [
                d
                for d in self._ids[page * RESULT_PAGE : (page + 1) * RESULT_PAGE]
                if self._status[d] is not None
            ]
            self._page = (page, self._results(chunk) if chunk else {})
            self.reads += 1 if chunk else 0
        return self._page[1]

    def __getitem__(self, dep: str) -> Dependency:
        status = self._status[dep]  # KeyError: not a dependency of this job
        if status is None:
            return Dependency(None, None)
        if dep in self._kept:
            return Dependency(status, self._kept[dep])
        result, _ = self._read_page(self._index[dep] // RESULT_PAGE).get(dep, (None, 0))
        # Its status as read at the claim: what the job was released on.
        return Dependency(status, result)

    def __iter__(self) -> Iterator[str]:
        return iter(self._ids)

    def __len__(self) -> int:
        return len(self._ids)

    def __contains__(self, dep: object) -> bool:
        return dep in self._status

    def __repr__(self) -> str:
        return f"<DependencyResults of {len(self._ids)} ({len(self._kept)} results kept)>"
