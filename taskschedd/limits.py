"""Cluster-wide limits: what a named limit is, and the decisions about it.

A limit has a name and caps the jobs that join it (option ``limit``): how many run at
once (``max_running``) and how many start in any window of ``rate.period`` seconds
(``rate.count``: at most that many starts in every such window, so a burst is bounded by
the rate itself). An exclusive key (option ``exclusive_key``) is a limit of one that
needs no definition. The stores apply these decisions atomically at claim time; what a
limit allows is decided here, once.

A limit named ``queue:<queue>`` or ``class:<dotted.path>`` is joined by every job added
to that queue or of that class without a ``limit`` option of its own (at add time).
"""

from __future__ import annotations

import math
import re
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from taskschedd.errors import OptionError
from taskschedd.timeutil import parse_duration

#: Limit names: what the CLI, the config and the metrics labels accept.
_LIMIT_NAME = re.compile(r"[A-Za-z0-9._:-]{1,128}")
_DIGITS = re.compile(r"[0-9]{1,6}")  # ASCII: str.isdigit() takes any script's digits
LIMIT_NAME_HELP = "1-128 letters, digits or . _ : - (e.g. 'reports', 'queue:mail')"
MAX_KEY_LENGTH = 200
MAX_RUNNING = 100_000
#: Starts a rate may allow per period: the store keeps one time per start in the window.
MAX_RATE_COUNT = 10_000
RATE_HELP = "starts per period, like '100/1m', '20/1s', '5/s' or '1000/1h'"
QUEUE_PREFIX = "queue:"
CLASS_PREFIX = "class:"


def check_name(value: Any, what: str = "limit") -> str:
    if not isinstance(value, str) or not _LIMIT_NAME.fullmatch(value):
        raise OptionError(f"{what} name: expected {LIMIT_NAME_HELP}, got {value!r}")
    return value


def check_key(value: Any) -> str:
    if (
        not isinstance(value, str)
        or not value
        or len(value) > MAX_KEY_LENGTH
        or (any(ord(c) < 32 or ord(c) == 127 for c in value))
    ):
        raise OptionError(
            f"option 'exclusive_key': expected a string of 1-{MAX_KEY_LENGTH} printable "
            f"characters (e.g. 'customer:42'), got {value!r}"
        )
    return value


@dataclass(frozen=True)
class Rate:
    """At most ``count`` starts in any window of ``period`` seconds."""

    count: int
    period: float

    @classmethod
    def parse(cls, value: Any) -> Rate:
        if isinstance(value, Rate):
            return value
        text = value.strip() if isinstance(value, str) else None
        if not text or text.count("/") != 1:
            raise OptionError(f"rate: expected {RATE_HELP}, got {value!r}")
        count_text, period_text = (p.strip() for p in text.split("/"))
        if not _DIGITS.fullmatch(count_text) or not (1 <= int(count_text) <= MAX_RATE_COUNT):
            raise OptionError(
                f"rate: the count must be an integer from 1 to {MAX_RATE_COUNT} "
                f"({RATE_HELP}), got {value!r}"
            )
        if period_text and period_text[0].isalpha():
            period_text = "1" + period_text  # "5/s" reads as "5/1s"
        try:
            period = parse_duration(period_text)
        except (ValueError, OptionError):
            raise OptionError(f"rate: expected {RATE_HELP}, got {value!r}") from None
        if not (0.001 <= period <= 86400 * 31):
            raise OptionError(
                f"rate: the period must be from 1ms to 31 days ({RATE_HELP}), got {value!r}"
            )
        return cls(int(count_text), float(period))

    def __str__(self) -> str:
        return f"{self.count}/{format_period(self.period)}"

    def allows(self, starts: Sequence[float], now: float) -> bool:
        """Whether one more start fits at ``now``, given the recent start times."""
        return len(window(starts, now, self.period)) < self.count

    def taken(self, starts: Sequence[float], now: float) -> list[float]:
        """The start times to keep after one more start at ``now``."""
        return [*window(starts, now, self.period), now]

    def next_start(self, starts: Sequence[float], now: float) -> float | None:
        """When the next start fits (None: now)."""
        recent = window(starts, now, self.period)
        if len(recent) < self.count:
            return None
        return sorted(recent)[len(recent) - self.count] + self.period


#: Seconds a logged start may lie ahead of a claimant's clock (claims that landed out of
#: order, clocks a little apart). A start further ahead is another client's value or a
#: clock that jumped: ignored, so that it neither closes the rate until then nor moves
#: the time a claim is logged at.
FUTURE_SLACK = 1.0


def window(starts: Sequence[float], now: float, period: float) -> list[float]:
    """The start times still inside the window that ends at ``now``."""
    since, until = now - period, now + FUTURE_SLACK
    return [t for t in starts if isinstance(t, int | float) and since < t <= until]


def clock(now: float, starts: Iterable[float]) -> float:
    """The time to log a start at: ``now``, or the newest start already logged when that
    is later (within FUTURE_SLACK): claims take their time before their write and land
    in another order, and a start logged before the newest would count in a window the
    newest already trimmed."""
    return max([now, *(t for t in starts if t <= now + FUTURE_SLACK)])


def format_period(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{round(seconds * 1000)}ms" if seconds < 1 else f"{seconds:g}s"


@dataclass(frozen=True)
class LimitSpec:
    """A limit's definition, as set by ``taskschedctl limits set`` or the config."""

    name: str
    max_running: int | None = None  # None: no cap on running jobs
    rate: Rate | None = None  # None: no cap on starts

    def __post_init__(self) -> None:
        check_name(self.name)
        if self.max_running is not None and (
            isinstance(self.max_running, bool)
            or not isinstance(self.max_running, int)
            or not (0 <= self.max_running <= MAX_RUNNING)
        ):
            raise OptionError(
                f"limit {self.name!r}: max_running must be an integer from 0 to "
                f"{MAX_RUNNING} (0 holds every job of the limit), got {self.max_running!r}"
            )
        if self.max_running is None and self.rate is None:
            raise OptionError(
                f"limit {self.name!r}: give max_running, a rate, or both "
                "(taskschedctl limits set NAME --max-running N --rate 100/1m)"
            )

    @classmethod
    def parse(cls, name: Any, given: Any) -> LimitSpec:
        """From the configuration's ``limits:`` mapping (name -> {max_running, rate})."""
        check_name(name)
        if not isinstance(given, dict):
            raise OptionError(
                f"limit {name!r}: expected a mapping with max_running and/or rate, got {given!r}"
            )
        unknown = sorted(set(given) - {"max_running", "rate"})
        if unknown:
            raise OptionError(
                f"limit {name!r}: unknown key {unknown[0]!r}; accepted: max_running, rate"
            )
        rate = given.get("rate")
        return cls(
            name=name,
            max_running=given.get("max_running"),
            rate=None if rate is None else Rate.parse(rate),
        )

    def describe(self) -> str:
        parts = []
        if self.max_running is not None:
            parts.append(f"max_running {self.max_running}")
        if self.rate is not None:
            parts.append(f"rate {self.rate}")
        return ", ".join(parts)


@dataclass(frozen=True)
class LimitState:
    """A limit as a store sees it now."""

    spec: LimitSpec
    running: int  # jobs of the limit running now (leases not over)
    waiting: int  # jobs of the limit queued and due, not running
    starts: tuple[float, ...] = ()  # start times in the rate's current window

    def next_start(self, now: float) -> float | None:
        """When the rate lets the next job start (None: now, or no rate)."""
        rate = self.spec.rate
        return None if rate is None else rate.next_start(self.starts, now)

    def full(self, now: float) -> bool:
        cap = self.spec.max_running
        return (cap is not None and self.running >= cap) or self.next_start(now) is not None


def closed(
    specs: Sequence[LimitSpec],
    running: dict[str, int],
    starts: dict[str, list[float]],
    now: float,
    holding: Collection[str] = (),
) -> set[str]:
    """The names of the limits that let the claimant start no job now: full, or their
    rate used up (``starts``: each limit's stored start times). ``holding``: limits the
    claimant (a worker) already holds a slot of: a worker runs one job at a time, so the
    jobs it claims ahead share its one slot, and only the rate (or a cap of 0) stops it."""
    out = set()
    for spec in specs:
        cap, name = spec.max_running, spec.name
        full = cap is not None and (
            cap == 0 or (running.get(name, 0) >= cap and name not in holding)
        )
        if full or (spec.rate is not None and not spec.rate.allows(starts.get(name, []), now)):
            out.add(name)
    return out


def as_times(value: Any) -> list[float]:
    """Stored start times, as written by any client: anything not a number is dropped."""
    if not isinstance(value, list):
        return []
    return [
        float(t)
        for t in value
        if isinstance(t, int | float) and not isinstance(t, bool) and math.isfinite(t)
    ]


def implied(queue: str, cls: str) -> tuple[str, str]:
    """The limit names a job joins by its queue or class (when defined)."""
    return QUEUE_PREFIX + queue, CLASS_PREFIX + cls
