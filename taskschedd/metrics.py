"""The master's Prometheus endpoint: a registry of the node's metrics and a tiny HTTP server.

No client library: the text exposition format (version 0.0.4) is a few lines of code, and
the master should not grow a dependency for it. The master updates :class:`Metrics` from
its main loop (never from a signal handler: the methods take a lock); a
:class:`MetricsServer` thread renders it on every ``GET /metrics``.

Exported (all prefixed ``taskschedd_``):

- ``jobs_total{class,outcome}`` counter: job runs that ended, by class and outcome
  (done, failed, retried, timeout, canceled, abandoned, released ...);
- ``job_duration_seconds{class}`` histogram: how long those runs took;
- ``queue_depth{queue}`` gauge: jobs waiting (WAITING or POSTPONED, due or not);
- ``queue_oldest_waiting_seconds{queue}`` gauge: age of the oldest due waiting job, 0 if none;
- ``workers{state="busy"|"idle"}`` gauge;
- ``lease_reaps_total`` counter: jobs recovered after their lease expired;
- ``build_info{version}`` gauge, always 1.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import socket
import socketserver
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from taskschedd.errors import TaskSchedError

__all__ = [
    "CONTENT_TYPE",
    "DURATION_BUCKETS",
    "Metrics",
    "MetricsServer",
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


class _Histogram:
    __slots__ = ("count", "counts", "sum")

    def __init__(self, buckets: int) -> None:
        self.counts = [0] * buckets  # not cumulative; summed when rendered
        self.sum = 0.0
        self.count = 0


class Metrics:
    """The node's metrics; every method is thread-safe (one lock, held briefly).

    Call from the master's main loop, never from a signal handler (the lock could be held
    by the interrupted code). Label values are free text; they are escaped when rendered.
    """

    def __init__(self, version: str, *, buckets: Sequence[float] = DURATION_BUCKETS) -> None:
        if list(buckets) != sorted(set(buckets)) or not buckets:
            raise ValueError("histogram buckets must be increasing and not empty")
        self.version = version
        self.buckets = tuple(float(b) for b in buckets)
        self._lock = threading.Lock()
        self._jobs: dict[tuple[str, str], int] = {}
        self._durations: dict[str, _Histogram] = {}
        self._depth: dict[str, float] = {}
        self._oldest: dict[str, float] = {}
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
            key = (cls, outcome)
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
        """
        depth = dict.fromkeys(queues, 0.0)
        oldest = dict.fromkeys(queues, 0.0)
        for queue, counts in (stats.get("by_queue") or {}).items():
            waiting = sum(counts.get(s, 0) for s in ("WAITING", "POSTPONED"))
            depth[str(queue)] = float(waiting)
            oldest.setdefault(str(queue), 0.0)
        for queue, age in (stats.get("oldest_waiting_age") or {}).items():
            oldest[str(queue)] = max(0.0, float(age))
            depth.setdefault(str(queue), 0.0)
        with self._lock:
            self._depth, self._oldest = depth, oldest
            self._queues_refreshed = time.monotonic() if now is None else now

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


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"
    server_version = "taskschedd"
    sys_version = ""

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path != "/metrics":
            self._reply(404, b"not found; metrics are at /metrics\n", "text/plain; charset=utf-8")
            return
        try:
            body = self.server.collect().encode("utf-8")
        except Exception as exc:  # a bug in collect must not kill the endpoint
            self._reply(500, f"collecting metrics failed: {exc}\n".encode(), "text/plain")
            return
        self._reply(200, body, CONTENT_TYPE)

    def do_HEAD(self) -> None:
        self.do_GET()

    def _reply(self, code: int, body: bytes, content_type: str) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: scrapes every few seconds would drown the daemon's log."""


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    collect: Callable[[], str]

    def server_bind(self) -> None:
        # HTTPServer.server_bind does a reverse DNS lookup (getfqdn): not at start-up.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name, self.server_port = str(host), int(port)


class _Server6(_Server):
    address_family = socket.AF_INET6


class MetricsServer:
    """Serves ``GET /metrics`` from *collect* in a daemon thread until :meth:`close`.

    *listen* is (host, port) as in MetricsConfig.address; port 0 picks a free port (see
    :attr:`address`). A port that cannot be bound is a TaskSchedError naming it.
    """

    def __init__(self, listen: tuple[str, int], collect: Callable[[], str]) -> None:
        host, port = listen
        try:
            infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM)
            family = infos[0][0]
            cls = _Server6 if family == socket.AF_INET6 else _Server
            self._server = cls((host, port), _Handler)
        except (OSError, UnicodeError) as exc:
            reason = getattr(exc, "strerror", None) or str(exc)
            raise TaskSchedError(
                f"cannot serve metrics on {_show(host, port)}: {reason}; "
                "change metrics.listen or stop what uses the port"
            ) from None
        self._server.collect = collect
        self._closed = False
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.2},
            name="taskschedd-metrics",
            daemon=True,
        )
        self._thread.start()
        _close_in_children(self)

    @property
    def address(self) -> tuple[str, int]:
        """The bound (host, port)."""
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    @property
    def url(self) -> str:
        host, port = self.address
        return f"http://{_show(host, port)}/metrics"

    def close(self) -> None:
        """Stop serving and release the port; safe to call twice."""
        if self._closed:
            return
        self._closed = True
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def _close_socket_in_child(self) -> None:
        self._closed = True  # no serving thread here: shutdown() would wait forever
        with contextlib.suppress(OSError):
            self._server.socket.close()

    def __enter__(self) -> MetricsServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _show(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _close_in_children(server: MetricsServer) -> None:
    """Forked workers must not keep the listening socket open (it would hold the port
    after the master exits); the serving thread does not exist in them anyway."""
    ref = weakref.ref(server)

    def after_fork() -> None:
        live = ref()
        if live is not None and not live._closed:
            live._close_socket_in_child()

    if hasattr(os, "register_at_fork"):
        os.register_at_fork(after_in_child=after_fork)
