"""The process-manager policy (``pm``): how many workers a node should have right now.

Pure functions of the pool settings, the workers the master knows and the jobs that are
due, so the policy is unit-tested without processes. The master applies the plan.

- ``static``: always ``min_children`` workers.
- ``dynamic``: ``min_children`` at rest, growing towards ``max_children`` while jobs
  wait; a worker idle for ``idle_timeout`` beyond ``min_children`` is retired (the PHP
  original never shrank).
- ``ondemand``: like dynamic with a floor of 0: no worker until a job is due.

Jobs with ``ignore_max_children`` are run by *extra* one-job workers beyond
``max_children``: every such due job gets its own extra worker at once (a never-ending
listener job must not wait for another to end), up to ``max_extra_children`` extras at
once (default 64; 0: no cap), so a flood of such jobs cannot fork without bound; the
jobs beyond the cap wait for an extra worker to end (:attr:`Plan.extra_capped`). An
``idle_timeout`` of 0 retires idle workers at once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from taskschedd.config import Config

PM_MODES = ("dynamic", "static", "ondemand")
#: Default of ``max_extra_children``: the most extra workers (ignore_max_children) at once.
DEFAULT_MAX_EXTRA_CHILDREN = 64


@dataclass(frozen=True)
class PoolSettings:
    """The configuration keys the policy reads."""

    pm: str = "dynamic"
    min_children: int = 1
    max_children: int = 1
    idle_timeout: float = 60.0
    max_extra_children: int = DEFAULT_MAX_EXTRA_CHILDREN  # 0: no cap

    def __post_init__(self) -> None:
        if self.pm not in PM_MODES:
            raise ValueError(f"pm must be one of {'|'.join(PM_MODES)}, got {self.pm!r}")
        if not 0 <= self.min_children <= self.max_children or self.max_children < 1:
            raise ValueError(
                f"need 0 <= min_children <= max_children and max_children >= 1, got "
                f"{self.min_children} and {self.max_children}"
            )
        if self.max_extra_children < 0:
            raise ValueError(f"need max_extra_children >= 0, got {self.max_extra_children}")

    @classmethod
    def from_config(cls, config: Config) -> PoolSettings:
        return cls(
            pm=config.pm,
            min_children=config.min_children,
            max_children=config.max_children,
            idle_timeout=config.idle_timeout,
            max_extra_children=config.max_extra_children,
        )

    @property
    def floor(self) -> int:
        """Workers kept when there is nothing to do."""
        if self.pm == "ondemand":
            return 0
        return self.min_children

    @property
    def ceiling(self) -> int:
        """Most regular workers at once."""
        return self.min_children if self.pm == "static" else self.max_children


@dataclass(frozen=True)
class WorkerView:
    """What the policy needs to know about one live, non-retiring worker."""

    pid: int
    busy: bool
    idle_since: float  # monotonic: when it last finished a job (or was spawned)
    extra: bool = False


@dataclass(frozen=True)
class Demand:
    """Jobs due now in the served queues."""

    due: int = 0  # for regular workers
    due_extra: int = 0  # with ignore_max_children


@dataclass(frozen=True)
class Plan:
    """What the master should do now."""

    spawn: int = 0  # regular workers to start
    spawn_extra: int = 0  # one-job workers for ignore_max_children jobs
    retire: tuple[int, ...] = ()  # pids of idle workers to stop
    recheck_at: float | None = None  # when time alone may change the plan (idle timeout)
    extra_capped: int = 0  # ignore_max_children jobs that wait: max_extra_children reached


def plan(
    settings: PoolSettings,
    workers: Sequence[WorkerView],
    demand: Demand,
    now: float,
) -> Plan:
    """The plan for this moment; ``now`` is on the same clock as ``idle_since``."""
    regular = [w for w in workers if not w.extra]
    extras = [w for w in workers if w.extra]
    busy = sum(1 for w in regular if w.busy)
    # Longest idle first: they are the ones to retire.
    idle = sorted((w for w in regular if not w.busy), key=lambda w: (w.idle_since, w.pid))

    if settings.pm == "static":
        want = settings.min_children
    else:
        want = max(settings.floor, min(settings.max_children, busy + demand.due))
    spawn = max(0, want - len(regular))

    retire: list[int] = []
    # Above the ceiling (a reload made the pool smaller): idle ones go at once, busy ones
    # are retired when they become idle.
    excess = len(regular) - settings.ceiling
    for w in idle[: max(0, excess)]:
        retire.append(w.pid)

    recheck_at: float | None = None
    if settings.pm != "static" and demand.due == 0:
        remaining = len(regular) - len(retire)
        for w in idle:
            if w.pid in retire:
                continue
            if remaining <= settings.floor:
                break
            expires = w.idle_since + settings.idle_timeout
            if now >= expires:
                retire.append(w.pid)
                remaining -= 1
            else:
                recheck_at = expires if recheck_at is None else min(recheck_at, expires)

    # An extra worker that has not claimed yet is on its way to a due job.
    waiting_extras = sum(1 for w in extras if not w.busy)
    wanted_extra = max(0, demand.due_extra - waiting_extras)
    if settings.max_extra_children:
        spawn_extra = min(max(0, settings.max_extra_children - len(extras)), wanted_extra)
    else:
        spawn_extra = wanted_extra
    return Plan(
        spawn=spawn,
        spawn_extra=spawn_extra,
        retire=tuple(retire),
        recheck_at=recheck_at,
        extra_capped=wanted_extra - spawn_extra,
    )


def backoff_delay(failures: int, *, base: float = 0.5, cap: float = 30.0) -> float:
    """Seconds to wait before the next spawn after ``failures`` start-up failures in a row.

    Capped exponential: 0, base, 2*base, 4*base, ... cap. No jitter: one master, and a
    predictable rhythm reads better in the log.
    """
    if failures <= 0:
        return 0.0
    return float(min(cap, base * 2 ** (failures - 1)))
