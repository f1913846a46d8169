"""Jobs for the tests of limits, exclusive keys and rates (tests/e2e/test_daemon_limits.py,
tests/faults/test_faults_limits.py): each run leaves its own time span, read back by
:func:`read_spans`, so how many ran at once is measured from the jobs themselves and not
from what the store says.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from taskschedd.job import Job

MODULE = "tests.faults.limit_jobs"
SPAN = f"{MODULE}.Span"
#: The longest a gated run waits for its gate: a test that failed leaves no job behind.
GATE_MAX = 120.0


class Span(Job):
    """Rewrites ``<start> <alive> <state> <label>`` (wall clock; state ``run`` or ``end``)
    in a file of its own, ``<data["spans"]>/<job id>.<attempt>.<pid>``, every ``TICK``
    while it runs: ``seconds`` long, or until the file ``gate`` exists. A killed run's
    ``alive`` is the last time it was seen running (at most a TICK before it died).
    ``label`` (default ``-``): what the test groups runs by (an exclusive key, a limit)."""

    TICK = 0.01

    def start(self) -> Any:
        data = self.data
        begun = time.time()
        label = str(data.get("label", "-"))
        path = os.path.join(data["spans"], f"{self.id}.{self.attempt}.{os.getpid()}")
        gate = data.get("gate")
        ends = time.monotonic() + (GATE_MAX if gate else float(data.get("seconds", 0)))
        fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o666)
        try:
            while True:
                done = time.monotonic() >= ends or (gate is not None and os.path.exists(gate))
                state = "end" if done else "run"
                line = f"{begun:.6f} {time.time():.6f} {state} {label}\n".ljust(80)
                os.pwrite(fd, line.encode(), 0)
                if done:
                    break
                time.sleep(self.TICK)
        finally:
            os.close(fd)
        return {"pid": os.getpid()}


@dataclass(frozen=True)
class Run:
    """One run of a :class:`Span` job, as its file says."""

    job: str
    attempt: int
    pid: int
    start: float
    alive: float  # the end, when ended
    ended: bool
    label: str


def read_spans(directory: Path) -> list[Run]:
    runs = []
    for path in directory.iterdir():
        job, attempt, pid = path.name.split(".")
        fields = path.read_text().split()
        if len(fields) < 4:
            continue  # created, first line not written yet: it has not started to count
        runs.append(Run(job, int(attempt), int(pid), float(fields[0]), float(fields[1]),
                        fields[2] == "end", fields[3]))  # fmt: skip
    return sorted(runs, key=lambda r: r.start)


def running_at(runs: Iterable[Run], t: float) -> list[Run]:
    return [r for r in runs if r.start <= t <= r.alive]


def samples(runs: Sequence[Run], step: float = 0.02) -> list[tuple[float, int]]:
    """(time, runs running) every ``step`` seconds from the first start to the last end."""
    if not runs:
        return []
    first, last = min(r.start for r in runs), max(r.alive for r in runs)
    out = []
    t = first
    while t <= last:
        out.append((t, sum(1 for r in runs if r.start <= t <= r.alive)))
        t += step
    return out


def most_at_once(runs: Sequence[Run]) -> tuple[int, list[Run]]:
    """The most runs that overlapped at any moment (exact, not sampled), and those runs."""
    best: tuple[int, list[Run]] = (0, [])
    for r in runs:  # the most overlap is reached at some run's start
        now = running_at(runs, r.start)
        if len(now) > best[0]:
            best = (len(now), now)
    return best


def overlaps(runs: Sequence[Run]) -> list[tuple[Run, Run]]:
    """Pairs of runs that overlap in time."""
    ordered = sorted(runs, key=lambda r: r.start)
    out = []
    for i, a in enumerate(ordered):
        for b in ordered[i + 1 :]:
            if b.start > a.alive:
                break
            out.append((a, b))
    return out
