"""What a running job sees of its dependencies (``Job.dependencies``), with its memory
bounded however wide the fan-in.

Read when the job is claimed, a page of dependencies per store read. Every status is
kept; results are kept in ``depends_on`` order until they add up to ``budget`` bytes (as
JSON). A result past that is read again when the job asks for it, with its page (one
store read per page, never one per dependency), and only the last page read is kept: a
10,000-wide fan-in of 1 MiB results costs the worker a bounded amount, not 10 GiB.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from taskschedd.model import Dependency, JobStatus

#: Results kept from the claim on, in bytes of JSON (the rest are read on access).
RESULTS_KEPT = 64 * 2**20
#: Dependencies per store read (SQLite before 3.32 binds at most 999 values).
PAGE = 500

Loader = Callable[[Sequence[str]], Mapping[str, Dependency]]


def _size(result: Any) -> int:
    if result is None or isinstance(result, bool | int | float):
        return 8
    if isinstance(result, str):
        return len(result) + 2
    return len(json.dumps(result, separators=(",", ":"), ensure_ascii=False))


class DependencyResults(Mapping[str, Dependency]):
    """``id -> Dependency(status, result)`` for each id of a job's ``depends_on``, in
    that order. ``status`` is None when the dependency's record is gone."""

    def __init__(self, ids: Sequence[str], load: Loader, *, budget: int | None = None) -> None:
        budget = RESULTS_KEPT if budget is None else budget
        self._ids = list(dict.fromkeys(ids))
        self._index = {dep: i for i, dep in enumerate(self._ids)}
        self._load = load
        self._status: dict[str, JobStatus | None] = {}
        self._kept: dict[str, Any] = {}
        self._page: tuple[int, dict[str, Any]] | None = None  # (page number, results)
        used = 0
        for start in range(0, len(self._ids), PAGE):
            chunk = self._ids[start : start + PAGE]
            found = load(chunk)
            for dep in chunk:
                got = found.get(dep, Dependency(None, None))
                self._status[dep] = got.status
                if used < budget:
                    size = _size(got.result)
                    if used + size <= budget:
                        self._kept[dep] = got.result
                    used += size  # once over, nothing more is kept
        self.reads = len(range(0, len(self._ids), PAGE))  # store reads so far

    def __getitem__(self, dep: str) -> Dependency:
        status = self._status[dep]  # KeyError: not a dependency of this job
        if dep in self._kept:
            return Dependency(status, self._kept[dep])
        page = self._index[dep] // PAGE
        if self._page is None or self._page[0] != page:
            chunk = self._ids[page * PAGE : (page + 1) * PAGE]
            found = self._load(chunk)
            self.reads += 1
            self._page = (page, {d: found[d].result for d in chunk if d in found})
        # Its status as read at the claim: what the job was released on.
        return Dependency(status, self._page[1].get(dep))

    def __iter__(self) -> Iterator[str]:
        return iter(self._ids)

    def __len__(self) -> int:
        return len(self._ids)

    def __contains__(self, dep: object) -> bool:
        return dep in self._status

    def __repr__(self) -> str:
        return f"<DependencyResults of {len(self._ids)} ({len(self._kept)} results kept)>"
