"""The master's Prometheus metrics: a registry of the node's metrics and its exposition.

No client library: the text exposition format (version 0.0.4) is a few lines of code, and
the master should not grow a dependency for it (prometheus-client's HTTP server would also
spend a thread per connection). The master updates :class:`Metrics` from its main loop
(never from a signal handler: the methods take a lock); the endpoint's thread
(:mod:`taskschedd.metricsserver`) renders it on every ``GET /metrics``.

Label values come from the store, which anyone who can add a job writes to, so their
number is bounded: a job class gets a ``class`` label of its own only when
``known_class`` accepts it (the node's allowed modules), its path is at most
``MAX_LABEL_LENGTH`` long and fewer than ``MAX_CLASSES`` classes have one. A class whose
runs have all failed so far may be made up (a class that cannot be imported fails at
once): only ``MAX_UNPROVEN`` such classes have a label; a class is proven by a run
that ended done, retried, timeout or canceled. The rest count under ``class="other"``. Queues likewise: the node's own queues always, others
while fewer than ``MAX_QUEUES`` are shown, the rest summed under ``queue="other"``; and
limits: the first ``MAX_LIMITS`` by name, the rest summed under ``limit="other"``.
Queue and limit figures are read from the store together, at most every
``QUEUE_REFRESH_INTERVAL`` seconds and only while someone scrapes.

Exported (all prefixed ``taskschedd_``):

- ``jobs_total{class,outcome}`` counter: job runs that ended, by class and outcome
  (done, failed, retried, timeout, canceled, abandoned, released ...);
- ``job_duration_seconds{class}`` histogram: how long those runs took;
- ``queue_depth{queue}`` gauge: jobs waiting (WAITING or POSTPONED, due or not);
- ``queue_oldest_waiting_seconds{queue}`` gauge: age of the oldest due waiting job, 0 if none;
- ``limit_running{limit}`` gauge: jobs of the limit running now, cluster-wide;
- ``limit_capacity{limit}`` gauge: the limit's max_running (no sample for a limit with
  a rate only);
- ``limit_waiting{limit}`` gauge: jobs of the limit waiting and due (queued behind it)
  (the three ``limit_`` families are left out while no limit is defined);
- ``workers{state="busy"|"idle"}`` gauge;
- ``lease_reaps_total`` counter: jobs recovered after their lease expired;
- ``build_info{version}`` gauge, always 1.
"""

from __future__ import annotations

import math
import re
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from taskschedd.limits import LimitState

__all__ = [
    "CONTENT_TYPE",
    "DURATION_BUCKETS",
    "MAX_CLASSES",
    "MAX_LABEL_LENGTH",
    "MAX_LIMITS",
    "MAX_QUEUES",
    "MAX_UNPROVEN",
    "OTHER",
    "Metrics",
    "MetricsWriter",
]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
DURATION_BUCKETS = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
)  # fmt: skip
#: A queue-stats refresh is due this often while someone scrapes ...
QUEUE_REFRESH_INTERVAL = 5.0
#: ... and not at all once nobody has scraped for this long (the stats query is not free).
QUEUE_REFRESH_IDLE = 600.0
#: Job classes with a label of their own, at most; the others count as OTHER.
MAX_CLASSES = 50
#: ... of which at most this many have not been seen to run (only failed so far).
MAX_UNPROVEN = 10
#: Outcomes that show a class exists (it was imported and its job ran).
PROVING_OUTCOMES = frozenset({"done", "retried", "timeout", "canceled"})
#: Queues shown, at most, besides the node's own; the others are summed as OTHER.
MAX_QUEUES = 50
#: Limits shown, at most (by name); the others are summed as OTHER.
MAX_LIMITS = 100
#: Longer class or queue names are shown as OTHER.
MAX_LABEL_LENGTH = 200
OTHER = "other"

_METRIC_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
_TYPES = ("counter", "gauge", "histogram", "summary", "untyped")


def format_value(value: float) -> str:
    """A sample value as Prometheus writes it: integers without a fraction, +Inf, NaN."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if float(value).is_integer() and abs(value) < 2**53:
        return str(int(value))
    return repr(float(value))


def _format_le(bound: float) -> str:
    """A bucket bound the way the official clients write it (1.0, not 1), so le labels
    stay the same series across exporters."""
    return "+Inf" if math.isinf(bound) else repr(float(bound))


def escape_label_value(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


class MetricsWriter:
    """Builds one exposition text: a family header, then its samples."""

    def __init__(self) -> None:
        self._lines: list[str] = []
        self._family: str | None = None

    def family(self, name: str, kind: str, help_text: str) -> None:
        if not _METRIC_NAME.fullmatch(name) or kind not in _TYPES:
            raise ValueError(f"bad metric family {name!r} of type {kind!r}")
        self._family = name
        self._lines.append(f"# HELP {name} {_escape_help(help_text)}")
        self._lines.append(f"# TYPE {name} {kind}")

    def sample(
        self,
        value: float,
        labels: Mapping[str, str] | None = None,
        *,
        suffix: str = "",
    ) -> None:
        """A sample of the current family; suffix is _bucket, _sum or _count for histograms."""
        if self._family is None:
            raise ValueError("sample() before family()")
        text = self._family + suffix
        if labels:
            pairs = []
            for key, label in labels.items():
                if not _LABEL_NAME.fullmatch(key) or key.startswith("__"):
                    raise ValueError(f"bad label name {key!r}")
                pairs.append(f'{key}="{escape_label_value(str(label))}"')
            text += "{" + ",".join(pairs) + "}"
        self._lines.append(f"{text} {format_value(value)}")

    def text(self) -> str:
        return "\n".join(self._lines) + "\n" if self._lines else ""


def _number(value: Any) -> float:
    """A count or age from the store's stats; 0 for what is not a finite number."""
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        return 0.0
    return number if math.isfinite(number) else 0.0


class _Histogram:
    __slots__ = ("count", "counts", "sum")

    def __init__(self, buckets: int) -> None:
        self.counts = [0] * buckets  # not cumulative; summed when rendered
        self.sum = 0.0
        self.count = 0


class Metrics:
    """The node's metrics; every method is thread-safe (one lock, held briefly).

    Call from the master's main loop, never from a signal handler (the lock could be held
    by the interrupted code). Label values are free text; they are escaped when rendered,
    and their number is bounded (see the module docstring). ``known_class`` may be
    replaced (a reload); classes already shown keep their label.
    """

    def __init__(
        self,
        version: str,
        *,
        buckets: Sequence[float] = DURATION_BUCKETS,
        known_class: Callable[[str], bool] | None = None,
        max_classes: int = MAX_CLASSES,
        max_queues: int = MAX_QUEUES,
    ) -> None:
        if list(buckets) != sorted(set(buckets)) or not buckets:
            raise ValueError("histogram buckets must be increasing and not empty")
        self.version = version
        self.buckets = tuple(float(b) for b in buckets)
        self.known_class = known_class
        self.max_classes = max_classes
        self.max_queues = max_queues
        self._classes: set[str] = set()  # proven
        self._unproven: set[str] = set()
        self._lock = threading.Lock()
        self._jobs: dict[tuple[str, str], int] = {}
        self._durations: dict[str, _Histogram] = {}
        self._depth: dict[str, float] = {}
        self._oldest: dict[str, float] = {}
        # limit -> (running, capacity or None, waiting)
        self._limits: dict[str, tuple[float, float | None, float]] = {}
        self._busy = 0
        self._idle = 0
        self._reaps = 0
        self._queues_refreshed: float | None = None
        self._scraped: float | None = None

    # -- updates from the master -------------------------------------------------------
    def job_finished(self, cls: str, outcome: str, duration: float | None = None) -> None:
        """One run of a job of class *cls* ended with *outcome* (done, failed, retried,
        timeout, canceled, abandoned, released...); *duration* in seconds if it ran."""
        with self._lock:
            cls = self._class_label(cls, outcome)
            key = (cls, outcome[:MAX_LABEL_LENGTH])
            self._jobs[key] = self._jobs.get(key, 0) + 1
            if duration is not None and math.isfinite(duration):
                hist = self._durations.get(cls)
                if hist is None:
                    hist = self._durations[cls] = _Histogram(len(self.buckets) + 1)
                duration = max(0.0, duration)
                index = next(
                    (i for i, b in enumerate(self.buckets) if duration <= b), len(self.buckets)
                )
                hist.counts[index] += 1
                hist.sum += duration
                hist.count += 1

    def _class_label(self, cls: str, outcome: str) -> str:
        """*cls*, or OTHER when it may not have a label of its own (lock held)."""
        if cls in self._classes:
            return cls
        proven = outcome in PROVING_OUTCOMES
        if cls in self._unproven:
            if proven:
                self._unproven.discard(cls)
                self._classes.add(cls)
            return cls
        known = self.known_class
        if (
            len(self._classes) + len(self._unproven) >= self.max_classes
            or len(cls) > MAX_LABEL_LENGTH
            or cls == OTHER
            or (known is not None and not known(cls))
        ):
            return OTHER
        if proven:
            self._classes.add(cls)
        elif len(self._unproven) < MAX_UNPROVEN:
            self._unproven.add(cls)
        else:
            return OTHER
        return cls

    def lease_reaped(self, count: int = 1) -> None:
        """*count* jobs were recovered after their lease expired."""
        if count < 0:
            raise ValueError("count must be >= 0")
        with self._lock:
            self._reaps += count

    def set_workers(self, busy: int, idle: int) -> None:
        with self._lock:
            self._busy, self._idle = busy, idle

    def queue_refresh_due(self, now: float | None = None) -> bool:
        """True when the master should call store.stats() and :meth:`set_queue_stats`: at
        most every QUEUE_REFRESH_INTERVAL seconds, and only while someone scrapes.

        *now* is ``time.monotonic()``.
        """
        now = time.monotonic() if now is None else now
        with self._lock:
            last, scraped = self._queues_refreshed, self._scraped
        if last is None:
            return True
        if now - last < QUEUE_REFRESH_INTERVAL:
            return False
        return scraped is not None and now - scraped < QUEUE_REFRESH_IDLE

    def set_queue_stats(
        self,
        stats: Mapping[str, Any],
        queues: Iterable[str] = (),
        now: float | None = None,
    ) -> None:
        """Take queue depth and oldest waiting age from ``store.stats()``; *queues* (the
        node's configured ones) are always exported, at 0 when they have no jobs.
        Queues missing from *stats* and *queues* disappear, so stale series do not linger.
        Beyond ``max_queues`` other queues (and names too long), depths are summed and the
        oldest age is the largest under ``queue="other"``.
        """
        own = {q for q in queues if len(q) <= MAX_LABEL_LENGTH}
        depth = dict.fromkeys(own, 0.0)
        oldest = dict.fromkeys(own, 0.0)
        shown: set[str] = set()
        by_queue = stats.get("by_queue") or {}
        ages = stats.get("oldest_waiting_age") or {}

        def label(queue: Any) -> str:
            name = str(queue)
            if name in own or name in shown:
                return name
            if len(name) > MAX_LABEL_LENGTH or name == OTHER or len(shown) >= self.max_queues:
                return OTHER
            shown.add(name)
            return name

        for queue in sorted(set(by_queue) | set(ages), key=str):
            name = label(queue)
            counts = by_queue.get(queue) or {}
            waiting = sum(_number(counts.get(s, 0)) for s in ("WAITING", "POSTPONED"))
            depth[name] = depth.get(name, 0.0) + waiting
            age = max(0.0, _number(ages.get(queue, 0.0)))
            oldest[name] = max(oldest.get(name, 0.0), age)
        with self._lock:
            self._depth, self._oldest = depth, oldest
            self._queues_refreshed = time.monotonic() if now is None else now

    def set_limits(self, states: Iterable[LimitState]) -> None:
        """Take each limit's running, capacity (max_running) and waiting jobs from
        ``store.limits()`` (:class:`~taskschedd.limits.LimitState`); limits no longer
        defined disappear. Beyond ``MAX_LIMITS`` (and for names too long), figures are
        summed under ``limit="other"`` (a capacity only if each of them has one)."""
        out: dict[str, tuple[float, float | None, float]] = {}
        for state in sorted(states, key=lambda s: s.spec.name):
            name = state.spec.name
            if len(name) > MAX_LABEL_LENGTH or name == OTHER or len(out) >= MAX_LIMITS:
                name = OTHER
            cap = state.spec.max_running
            running, waiting = _number(state.running), _number(state.waiting)
            capacity = None if cap is None else _number(cap)
            if name in out:
                was = out[name]
                both = None if was[1] is None or capacity is None else was[1] + capacity
                out[name] = (was[0] + running, both, was[2] + waiting)
            else:
                out[name] = (running, capacity, waiting)
        with self._lock:
            self._limits = out

    # -- rendering ---------------------------------------------------------------------
    def collect(self) -> str:
        """The exposition text; called by the server thread on every scrape."""
        with self._lock:
            self._scraped = time.monotonic()
            jobs = sorted(self._jobs.items())
            durations = sorted(
                (cls, list(h.counts), h.sum, h.count) for cls, h in self._durations.items()
            )
            depth, oldest = sorted(self._depth.items()), sorted(self._oldest.items())
            busy, idle, reaps = self._busy, self._idle, self._reaps
            limits = sorted(self._limits.items())
        w = MetricsWriter()
        w.family("taskschedd_jobs_total", "counter", "Job runs that ended, by class and outcome.")
        for (cls, outcome), n in jobs:
            w.sample(n, {"class": cls, "outcome": outcome})
        w.family(
            "taskschedd_job_duration_seconds", "histogram", "How long job runs took, by class."
        )
        for cls, counts, total, count in durations:
            cumulative = 0
            for bound, n in zip((*self.buckets, math.inf), counts, strict=True):
                cumulative += n
                w.sample(cumulative, {"class": cls, "le": _format_le(bound)}, suffix="_bucket")
            w.sample(total, {"class": cls}, suffix="_sum")
            w.sample(count, {"class": cls}, suffix="_count")
        w.family(
            "taskschedd_queue_depth", "gauge", "Jobs waiting in the queue (due or scheduled later)."
        )
        for queue, value in depth:
            w.sample(value, {"queue": queue})
        w.family(
            "taskschedd_queue_oldest_waiting_seconds",
            "gauge",
            "Age of the oldest due job still waiting in the queue; 0 when none waits.",
        )
        for queue, value in oldest:
            w.sample(value, {"queue": queue})
        if limits:  # no families for a cluster without limits
            self._write_limits(w, limits)
        w.family("taskschedd_workers", "gauge", "Worker processes of this node, by state.")
        w.sample(busy, {"state": "busy"})
        w.sample(idle, {"state": "idle"})
        w.family(
            "taskschedd_lease_reaps_total",
            "counter",
            "Jobs recovered by this node after their lease expired.",
        )
        w.sample(reaps)
        w.family("taskschedd_build_info", "gauge", "The taskschedd version; always 1.")
        w.sample(1, {"version": self.version})
        return w.text()

    @staticmethod
    def _write_limits(
        w: MetricsWriter, limits: Sequence[tuple[str, tuple[float, float | None, float]]]
    ) -> None:
        w.family(
            "taskschedd_limit_running", "gauge", "Jobs of the limit running now, cluster-wide."
        )
        for name, (running, _, _) in limits:
            w.sample(running, {"limit": name})
        w.family(
            "taskschedd_limit_capacity",
            "gauge",
            "The limit's max_running: at most this many of its jobs run at once.",
        )
        for name, (_, capacity, _) in limits:
            if capacity is not None:
                w.sample(capacity, {"limit": name})
        w.family(
            "taskschedd_limit_waiting",
            "gauge",
            "Jobs of the limit that are due and wait to start, cluster-wide.",
        )
        for name, (_, _, waiting) in limits:
            w.sample(waiting, {"limit": name})
