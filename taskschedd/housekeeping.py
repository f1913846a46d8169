"""The node's duties towards the cluster, apart from its own jobs: heartbeats in the
node registry, reaping the expired leases of other nodes (their jobs are settled per
the retry policy with reason "abandoned"), purging finished jobs past retention, and
setting the configured limits in the store (at start and after each reload).

Each duty runs on its own :class:`~taskschedd.periodic.Every` and backs off while the
store is unavailable.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Mapping
from typing import Any

from taskschedd import __version__, registry, rules
from taskschedd.children import WorkerHandle
from taskschedd.config import Config, limits_mapping
from taskschedd.errors import StoreError
from taskschedd.model import FINAL, NodeRecord
from taskschedd.periodic import Every, store_trouble
from taskschedd.store import Store

#: A sweep for malformed records waits at least this many times its own duration.
SWEEP_DUTY = 100.0


class Housekeeping:
    """Heartbeat, lease reaping and purge through ``store`` (``workers``: the master's live
    table, read here for the registry's counts)."""

    def __init__(
        self, config: Config, workers: Mapping[int, WorkerHandle], logger: Any, store: Store
    ) -> None:
        self.config = config
        self.workers = workers
        self.log = logger
        self.store = store
        self.started_wall = time.time()
        self.host = socket.gethostname()
        self.reap_timer = Every()
        self.heartbeat_timer = Every()
        self.purge_timer = Every()
        self.sweep_timer = Every()
        self.limits_timer = Every()
        self.limits_pending = bool(config.limits)  # the configured limits are still to set
        self.unaddressable: set[str] = set()  # malformed records told of once
        self.heartbeat_soon = False  # the registry should see a change in the pool soon
        self.heartbeat_last = 0.0
        self.instance = registry.new_instance()  # this master start's registry entry
        self.taken_over = False  # another node took our name's entry (we froze)

    def start(self, now: float) -> None:
        self.purge_timer.next = now + min(5.0, self.purge_interval())

    def reconfigure(self, config: Config, logger: Any) -> None:
        """A reload: the new configuration and the logger bound to it. Its limits are set
        again even if unchanged: the configuration wins over ``taskschedctl limits set``."""
        self.config, self.log = config, logger
        self.limits_pending = bool(config.limits)
        self.limits_timer.next = 0.0

    def timers(self) -> tuple[Every, ...]:
        """The periodic store calls, whose failures say the store is down (the sweep for
        malformed records is not one: it runs too seldom to tell)."""
        return (self.reap_timer, self.heartbeat_timer, self.purge_timer, self.limits_timer)

    def pool_changed(self) -> None:
        """The node's workers changed (started, busy, idle, retiring, gone): the registry
        should see it soon."""
        self.heartbeat_soon = True

    def store_back(self, now: float) -> None:
        """The store is available again after an outage. Leases lapsed everywhere during
        it: their owners renew first, reaping waits one lease."""
        self.reap_timer.next = max(self.reap_timer.next, now + self.config.lease)

    def wakeups(self, now: float) -> list[float]:
        times = [self.reap_timer.next, self.heartbeat_timer.next, self.purge_timer.next]
        times.append(self.sweep_timer.next)
        if self.limits_pending:
            times.append(self.limits_timer.next)
        if self.heartbeat_soon and not self.heartbeat_timer.failures:
            times.append(now + 0.1)
        return times

    def heartbeat(self, now: float) -> None:
        soon = (
            self.heartbeat_soon
            and not self.heartbeat_timer.failures
            and now - self.heartbeat_last >= 0.1
        )
        if now < self.heartbeat_timer.next and not soon:
            return
        try:
            written = self.store.heartbeat(self._record())
        except StoreError as exc:
            store_trouble(self.log, "heartbeat", self.heartbeat_timer, now, exc)
            return
        if not written and not self.taken_over:
            self.taken_over = True
            holder = next((n for n in self._nodes() if n.name == self.config.node), None)
            self.log.error(
                "another node took over this node's name in the registry (this node "
                "was frozen or cut off from the store for longer than its liveness "
                "window): stopping this node, exit 78",
                node=self.config.node, window=registry.live_window(self.config),
                other_host=holder.host if holder else None,
                other_pid=holder.pid if holder else None,
            )  # fmt: skip
        self.heartbeat_soon = False
        self.heartbeat_last = now
        self.heartbeat_timer.done(now, self.config.heartbeat_interval)

    def apply_limits(self, now: float) -> None:
        """Set the configured limits in the store (every node does, at its start and
        after each reload), retried with backoff while the store is unavailable. Limits
        the configuration does not name are left as they are."""
        if not self.limits_pending or now < self.limits_timer.next:
            return
        wanted = self.config.limits
        try:
            before = {spec.name: spec for spec in self.store.limit_specs()}
            for spec in wanted.values():
                if before.get(spec.name) != spec:
                    self.store.set_limit(spec)
        except StoreError as exc:
            store_trouble(self.log, "set the configured limits", self.limits_timer, now, exc)
            return
        self.limits_pending = False
        self.limits_timer.done(now, 0.0)
        changed = sorted(n for n, spec in wanted.items() if before.get(n) not in (None, spec))
        self.log.info(
            "limits set from the configuration", limits=limits_mapping(wanted),
            new=sorted(n for n in wanted if n not in before), replaced=changed,
        )  # fmt: skip

    def register(self) -> None:
        """Take this node's name in the registry (before any worker starts); raises
        NodeNameInUse while another live node has it."""
        registry.register(self.store, self._record(), self.config)

    def unregister(self) -> None:
        """Remove this node's entry, if it still is this master's."""
        self.store.remove_node(self.config.node, self.instance)

    def _nodes(self) -> list[NodeRecord]:
        try:
            return self.store.nodes()
        except StoreError:
            return []

    def _record(self) -> NodeRecord:
        busy = [w for w in self.workers.values() if w.job is not None]
        idle = [w for w in self.workers.values() if w.job is None and not w.retiring]
        now = time.time()
        return NodeRecord(
            name=self.config.node,
            host=self.host,
            pid=os.getpid(),
            started=self.started_wall,
            heartbeat=now,
            workers_busy=len(busy),
            workers_idle=len(idle),
            running=tuple(w.job.id for w in busy if w.job is not None),
            queues=tuple(self.config.queues),
            version=__version__,
            instance=self.instance,
            live_until=now + registry.live_window(self.config),
            pid_ns=registry.pid_namespace(),
            boot=registry.boot_time(),
        )

    def reap_expired(self, now: float, mine: set[str]) -> int:
        """Settle the jobs of other nodes whose lease expired (``mine``: our own claims);
        returns how many this node reaped."""
        if now < self.reap_timer.next:
            return 0
        if self.reap_timer.failures:
            # The store was down for us, so it was for the owners too and their leases
            # lapsed unrenewed: give them one lease (they renew every lease/3) before
            # taking any job away from a node that is alive.
            self.reap_timer.done(now, self.config.lease)
            return 0
        reaped = 0
        try:
            expired = self.store.expired(time.time())
            for record in expired:
                if record.claim_token is None or record.claim_token in mine:
                    continue
                detail = f"its lease expired (node {record.node}, worker {record.worker})"
                if record.corrupt is not None:
                    settlement = rules.on_corrupt(record, time.time())
                else:
                    settlement = rules.on_abandoned(record, time.time(), detail=detail)
                applied = self.store.settle(
                    record.id, record.claim_token, settlement, now=time.time()
                )
                if applied is not None and applied.status is not None:
                    reaped += 1
                    self.log.warning(
                        "reaped a job whose lease expired",
                        job_id=record.id, job_class=record.cls, attempt=record.attempt,
                        queue=record.queue, owner_node=record.node, owner_worker=record.worker,
                        status=applied.status.name,
                    )  # fmt: skip
            # A store that decides dependents after a settle's write (MongoDB) finishes
            # what a crash between the two left: within one reap interval.
            self.store.sweep_dependencies(time.time())
        except StoreError as exc:
            store_trouble(self.log, "reap expired leases", self.reap_timer, now, exc)
            return reaped
        self.reap_timer.done(now, self.config.reap_interval)
        return reaped

    def quarantine(self, now: float) -> int:
        """Quarantine the records that claims and reaps cannot handle (written by another
        client with a field of the wrong type): they end FAILED with reason "corrupt"
        instead of staying stuck. Returns how many this node quarantined."""
        if now < self.sweep_timer.next:
            return 0
        done = 0
        began = time.monotonic()
        try:
            found = self.store.malformed(limit=100)
            took = time.monotonic() - began
            for record in found:
                settlement = rules.on_corrupt(record, time.time())
                if self.store.quarantine(record, settlement, now=time.time()):
                    done += 1
                    self.log.error(
                        "quarantined a stored job that does not decode",
                        job_id=record.id, job_class=record.cls, why=record.corrupt,
                    )  # fmt: skip
                elif record.id not in self.unaddressable:
                    self.unaddressable.add(record.id)
                    self.log.error(
                        "a malformed stored job cannot be quarantined; fix or delete it",
                        job_id=record.id, why=record.corrupt,
                    )  # fmt: skip
        except StoreError as exc:
            store_trouble(self.log, "quarantine malformed jobs", self.sweep_timer, now, exc)
            return done
        # The look is a scan of every job (about a second per million on SQLite): never
        # more than 1% of the master's time, however large the store.
        self.sweep_timer.done(now, max(self.sweep_interval(), SWEEP_DUTY * took))
        return done

    def sweep_interval(self) -> float:
        """How often to look for malformed records at least: 10 reap intervals (100 s by
        default), 1-300 s."""
        return min(300.0, max(1.0, 10 * self.config.reap_interval))

    def purge(self, now: float) -> None:
        if now < self.purge_timer.next:
            return
        retention = self.config.retention
        interval = self.purge_interval()
        if retention <= 0:
            self.purge_timer.done(now, interval)
            return
        try:
            n = self.store.purge(statuses=FINAL, ended_before=time.time() - retention)
        except StoreError as exc:
            store_trouble(self.log, "purge old jobs", self.purge_timer, now, exc)
            return
        self.purge_timer.done(now, interval)
        if n:
            self.log.info("purged finished jobs past their retention", jobs=n, retention=retention)

    def purge_interval(self) -> float:
        """A tenth of the retention, between 1 s and an hour: one indexed delete is cheap."""
        return min(3600.0, max(1.0, self.config.retention / 10))


__all__ = ["Housekeeping"]
