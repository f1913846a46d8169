"""What the master feeds its Prometheus endpoint (:mod:`taskschedd.metrics`), and the
endpoint's life: started when ``metrics.listen`` is set, moved on SIGHUP when the
address changes, closed on exit. Every update comes from the master's main loop.

Outcomes of job runs (``taskschedd_jobs_total{outcome}``): a worker's own settlement
counts by the status it wrote (done, failed, retried, timeout, canceled; lost when its
claim was fenced off and nothing was written); a settlement the master makes for a
worker counts by why (timeout, canceled, abandoned, released). Durations run from the
claim's start to the settlement.

A job class has a ``class`` label of its own only when it is a well-formed class path in
the node's ``allowed_modules`` (and while fewer than ``metrics.MAX_CLASSES`` have one):
jobs added with made-up class names all count under ``class="other"``.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from typing import Any

from taskschedd import __version__
from taskschedd.children import HeldState, OwedOutcome, RunningJob, WorkerHandle
from taskschedd.config import MetricsConfig
from taskschedd.errors import JobClassError, StoreError, TaskSchedError
from taskschedd.loader import is_allowed, split_path
from taskschedd.metrics import Metrics
from taskschedd.metricsserver import MetricsServer
from taskschedd.periodic import Every, store_trouble
from taskschedd.store import Store

#: A worker's settle message carries the status it wrote; a requeue is a retry.
STATUS_OUTCOMES = {
    "DONE": "done",
    "FAILED": "failed",
    "TIMEOUT": "timeout",
    "CANCELED": "canceled",
    "WAITING": "retried",
    "POSTPONED": "retried",
}
#: Why the master settled a job for its worker (supervise.Owed.reason) -> outcome.
OWED_OUTCOMES = {
    OwedOutcome.TIMEOUT: "timeout",
    OwedOutcome.CANCEL: "canceled",
    OwedOutcome.MEMORY: "memory",
    OwedOutcome.ABANDONED: "abandoned",
    OwedOutcome.RELEASE: "released",
}


class NodeMetrics:
    """The node's metrics registry, its HTTP endpoint (if on), and the feeds into them."""

    def __init__(self, logger: Any, allowed_modules: Sequence[str] | None = None) -> None:
        self.log = logger
        self.registry = Metrics(__version__)
        if allowed_modules is not None:
            self.allow_classes(allowed_modules)
        self.server: MetricsServer | None = None
        self.address: tuple[str, int] | None = None
        self.queue_timer = Every()  # backs the stats query off while the store is down
        self._workers: tuple[int, int] | None = None

    def reconfigure(self, logger: Any, allowed_modules: Sequence[str]) -> None:
        """A reload: the logger bound to the new configuration, its allowed modules."""
        self.log = logger
        self.allow_classes(allowed_modules)

    def allow_classes(self, allowed_modules: Sequence[str]) -> None:
        """Classes from these modules may have a label of their own (at start, on reload)."""
        allowed = tuple(allowed_modules)

        def known(cls: str) -> bool:
            try:
                module, _ = split_path(cls)
            except JobClassError:
                return False
            return is_allowed(module, allowed)

        self.registry.known_class = known

    # -- the endpoint ---------------------------------------------------------------------
    def start(self, config: MetricsConfig) -> None:
        """Serve at ``config.address`` (nothing when off); a port that cannot be bound is a
        TaskSchedError naming it."""
        address = config.address
        if address is not None:
            self.server = MetricsServer(address, self.registry.collect)
            self.log.info("serving metrics", url=self.server.url)
        self.address = address

    def move(self, config: MetricsConfig) -> bool:
        """On reload: serve at the new address. False (logged) when it cannot be bound; the
        old endpoint then keeps serving, if it can be bound again."""
        address = config.address
        if address == self.address:
            return True
        old = self.address
        self.close()
        try:
            self.start(config)
        except TaskSchedError as exc:
            self.log.error("metrics endpoint not moved; keeping the old address", error=str(exc))
            try:
                self.start(MetricsConfig(listen=None if old is None else _listen(old)))
            except TaskSchedError as again:
                self.log.error("metrics endpoint lost", error=str(again))
                self.address = None
            return False
        if address is None:
            self.log.info("metrics endpoint closed")
        return True

    def close(self) -> None:
        if self.server is not None:
            self.server.close()
            self.server = None
        self.address = None

    # -- feeds ------------------------------------------------------------------------------
    def worker_settled(self, job: RunningJob, status: str, settled: bool, runtime: Any) -> None:
        """A worker stored a job's outcome (``settled`` False: its claim was fenced off)."""
        outcome = STATUS_OUTCOMES.get(status, status.lower() or "unknown")
        if not settled:
            outcome = "lost"
        if not isinstance(runtime, int | float) or isinstance(runtime, bool):
            runtime = time.time() - job.started
        self.registry.job_finished(job.cls, outcome, float(runtime))

    def master_settled(self, job: RunningJob, reason: OwedOutcome) -> None:
        if job.state is HeldState.AHEAD:
            return  # claimed ahead and given back: it never ran
        outcome = OWED_OUTCOMES.get(reason, reason)
        self.registry.job_finished(job.cls, outcome, time.time() - job.started)

    def lease_reaped(self, count: int) -> None:
        if count:
            self.registry.lease_reaped(count)

    def workers(self, workers: Iterable[WorkerHandle]) -> None:
        """Busy and idle as the node registry counts them (idle: not retiring)."""
        busy = idle = 0
        for w in workers:
            if w.job is not None:
                busy += 1
            elif not w.retiring:
                idle += 1
        if (busy, idle) != self._workers:
            self._workers = (busy, idle)
            self.registry.set_workers(busy, idle)

    def refresh_queues(self, now: float, store: Store, queues: Iterable[str]) -> None:
        """Queue depth and oldest waiting age, and each limit's running, capacity and
        waiting jobs, when a refresh is due and someone can scrape."""
        if self.server is None or now < self.queue_timer.next:
            return
        if not self.registry.queue_refresh_due(now):
            return
        try:
            wall = time.time()
            stats = store.stats(now=wall)
            limits = store.limits(now=wall)
        except StoreError as exc:
            store_trouble(self.log, "refresh queue metrics", self.queue_timer, now, exc)
            return
        self.queue_timer.done(now, 0.0)
        self.registry.set_limits(limits)
        self.registry.set_queue_stats(stats, queues=queues, now=now)


def _listen(address: tuple[str, int]) -> str:
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


__all__ = ["OWED_OUTCOMES", "STATUS_OUTCOMES", "NodeMetrics"]
