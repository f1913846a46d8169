"""Slots come back when their jobs die, on every store: a SIGKILLed worker, a whole node
SIGKILLed (master and workers), a frozen master, a canceled running job (API and
taskschedctl). Each time the capacity is whole again within one lease, and at no moment
do more jobs run than it allows. Each test runs for a limit of 2 (two holders) and for an
exclusive key (one holder, a limit of one that needs no definition).

Jobs record their own time spans (``tests.faults.limit_jobs.Span``, alive every 10 ms:
a killed run shows when it was last alive); the holders run until a gate opens.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from taskschedd.limits import LimitSpec
from taskschedd.model import JobRecord, JobStatus
from taskschedd.scheduler import JobSpec
from tests.e2e.conftest import JOBS, REPO
from tests.faults.harness import FaultDaemon, StoreKind, wait_all_final
from tests.faults.jobs import MODULE as FAULT_JOBS
from tests.faults.limit_jobs import MODULE, SPAN, Run, most_at_once, read_spans
from tests.helpers import wait_for

Factory = Callable[..., FaultDaemon]
LEASE = 3.0
REAP = 0.3
#: A node's reaction on top of the lease: its reaper's interval, a poll, a busy machine.
SLACK = 1.5
CONFIG = {"pm": "static", "min_children": 2, "max_children": 2, "lease": f"{LEASE}s",
          "reap_interval": f"{REAP}s", "allowed_modules": [FAULT_JOBS, JOBS, MODULE]}  # fmt: skip
#: What the jobs share: a limit of 2, or an exclusive key.
GATED = pytest.mark.parametrize("what", ["limit", "key"])


def ctl(d: FaultDaemon, *args: str) -> subprocess.CompletedProcess[str]:
    """taskschedctl with the node's configuration (as a sysadmin runs it)."""
    return subprocess.run(
        [sys.executable, "-m", "taskschedctl", "-c", str(d.config_path), *args],
        capture_output=True, text=True, timeout=60,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
    )  # fmt: skip


class Setup:
    """The capacity (a limit of 2, or a key) taken by gated holders, and followers of
    0.2 s queued behind them."""

    def __init__(self, kind: StoreKind, tmp_path: Path, what: str) -> None:
        self.spans = tmp_path / "spans"
        self.spans.mkdir()
        self.gate = tmp_path / "gate"
        self.s = kind.scheduler()
        self.what = what
        if what == "limit":
            self.s.store.set_limit(LimitSpec("reports", max_running=2))
            self.capacity, self.options = 2, {"limit": "reports", "retry": 0}
        else:
            self.capacity, self.options = 1, {"exclusive_key": "customer:7", "retry": 0}
        self.holders: list[str] = []
        self.followers: list[str] = []

    def hold(self) -> list[Run]:
        """The holders, running: the capacity is taken."""
        data = {"spans": str(self.spans), "gate": str(self.gate), "label": "holder"}
        self.holders = [self.s.add_job(SPAN, data, **self.options).id
                        for _ in range(self.capacity)]  # fmt: skip

        def running() -> list[Run]:
            runs = self.runs("holder")
            return runs if len(runs) == self.capacity else []

        return wait_for(running, 20, message="the holders running")

    def follow(self, count: int = 10, seconds: float = 0.2) -> None:
        data = {"spans": str(self.spans), "seconds": seconds, "label": "follower"}
        spec = JobSpec(SPAN, data, self.options)
        self.followers = [p.id for p in self.s.add_jobs([spec] * count)]

    def runs(self, label: str | None = None) -> list[Run]:
        return [r for r in read_spans(self.spans) if label is None or r.label == label]

    def next_follower(self, after: int = 0, timeout: float = LEASE + 10) -> Run:
        """The run of the follower that starts after ``after`` others had."""

        def started() -> Run | None:
            runs = self.runs("follower")
            return runs[after] if len(runs) > after else None

        run = wait_for(
            started, timeout, message=lambda: f"follower #{after + 1} to start; runs {self.runs()}"
        )
        assert run is not None
        return run

    def never_above(self) -> None:
        """At no moment more runs than the capacity; and it was whole again: as many
        followers ran side by side."""
        most, at_once = most_at_once(self.runs())
        assert most <= self.capacity, [(r.job, r.label, r.start, r.alive) for r in at_once]
        assert most_at_once(self.runs("follower"))[0] == self.capacity

    def final(self, timeout: float = 30) -> dict[str, JobRecord]:
        return wait_all_final(self.s.store, self.holders + self.followers, timeout)

    def followers_done(self, final: dict[str, JobRecord]) -> None:
        statuses = Counter(final[i].status for i in self.followers)
        assert statuses == {JobStatus.DONE: len(self.followers)}, statuses
        assert Counter(r.job for r in self.runs("follower")) == dict.fromkeys(self.followers, 1)
        if self.what == "limit":
            # MongoDB frees a slot just after its job's settle is written (docs of
            # store/mongo/gates.py): the last follower's may still be on its way.
            def use() -> tuple[int, int]:
                (state,) = self.s.store.limits(now=time.time())
                return state.running, state.waiting

            wait_for(lambda: use() == (0, 0), 5, message=lambda: f"the limit's use: {use()}")
        assert self.s.store.key_holders(["customer:7"], now=time.time()) == {}


@GATED
def test_a_sigkilled_worker_s_slot_comes_back_at_once(
    kind: StoreKind, node_factory: Factory, tmp_path: Path, what: str
) -> None:
    """Its master settles the job when the worker dies (SIGCHLD): the slot is free well
    within the lease. Another holder keeps its slot meanwhile: one follower at a time."""
    setup = Setup(kind, tmp_path, what)
    for name in ("n1", "n2"):
        node_factory(kind, name, **CONFIG).start()
    victim, *others = setup.hold()
    setup.follow()
    assert setup.runs("follower") == []  # the capacity is taken
    os.kill(victim.pid, signal.SIGKILL)
    killed = time.time()
    first = setup.next_follower()
    assert first.start - killed <= LEASE, first.start - killed
    second = setup.next_follower(1)
    assert second.start >= first.alive  # one free slot: one follower after the other
    setup.gate.touch()
    final = setup.final()
    assert (final[victim.job].status, final[victim.job].reason) == (JobStatus.FAILED, "abandoned")
    assert [final[r.job].status for r in others] == [JobStatus.DONE] * len(others)
    setup.followers_done(final)
    setup.never_above()


@GATED
def test_a_sigkilled_node_s_slots_come_back_within_one_lease(
    kind: StoreKind, node_factory: Factory, tmp_path: Path, what: str
) -> None:
    """n1 runs every holder; SIGKILL to its master and workers at once. n2's three
    workers start the followers once the holders' leases are over."""
    setup = Setup(kind, tmp_path, what)
    n1 = node_factory(kind, "n1", **CONFIG).start()
    holders = setup.hold()
    assert {r.pid for r in holders} <= set(n1.session_pids())
    node_factory(kind, "n2", **{**CONFIG, "min_children": 3, "max_children": 3}).start()
    setup.follow()
    n1.signal_session(signal.SIGKILL)
    killed = time.time()
    n1.wait_exit(5)
    first = setup.next_follower()
    assert first.start - killed <= LEASE + SLACK, first.start - killed
    final = setup.final()
    for job in setup.holders:
        assert (final[job].status, final[job].reason) == (JobStatus.FAILED, "abandoned")
        assert "lease expired (node n1" in final[job].errors[-1].message
    setup.followers_done(final)
    setup.never_above()
    assert not setup.gate.exists()  # the holders never ended on their own


@GATED
def test_a_frozen_master_s_jobs_are_killed_before_their_slots_are_taken_over(
    kind: StoreKind, node_factory: Factory, tmp_path: Path, what: str
) -> None:
    """n1's master SIGSTOPped, its workers left running with the holders: nobody renews
    their leases. The workers kill the holders before the leases end (taskschedd.
    leasewatch), and only then may n2 start followers: never more than the capacity,
    though n1's workers were alive all along."""
    setup = Setup(kind, tmp_path, what)
    n1 = node_factory(kind, "n1", **CONFIG).start()
    setup.hold()
    node_factory(kind, "n2", **{**CONFIG, "min_children": 3, "max_children": 3}).start()
    setup.follow()
    n1.signal(signal.SIGSTOP)
    stopped = time.time()
    try:
        first = setup.next_follower()
        assert first.start - stopped <= LEASE + SLACK, first.start - stopped
        holders = setup.runs("holder")
        assert all(not r.ended for r in holders)  # killed, not ended by the gate
        assert max(r.alive for r in holders) < first.start
    finally:
        n1.signal(signal.SIGCONT)
    final = setup.final()
    for job in setup.holders:
        assert final[job].status is JobStatus.FAILED, final[job]
    setup.followers_done(final)
    setup.never_above()


@GATED
def test_a_canceled_running_job_gives_its_slot_back_at_once(
    kind: StoreKind, node_factory: Factory, tmp_path: Path, what: str
) -> None:
    """The first holder canceled through the API, the second (a limit's) with taskschedctl
    cancel: each time a follower takes the slot at once."""
    setup = Setup(kind, tmp_path, what)
    n1 = node_factory(kind, "n1", **CONFIG).start()
    node_factory(kind, "n2", **CONFIG).start()
    first_holder, *others = setup.hold()
    setup.follow(12, seconds=0.5)  # some left for two at a time after taskschedctl's start
    setup.s.cancel_job(first_holder.job)
    canceled = time.time()
    first = setup.next_follower()
    assert first.start - canceled <= LEASE, first.start - canceled
    setup.next_follower(1)  # a free slot: followers one after another
    for other in others:
        done = ctl(n1, "cancel", other.job)
        assert done.returncode == 0, done
    final = setup.final()
    assert [final[i].status for i in setup.holders] == [JobStatus.CANCELED] * setup.capacity
    setup.followers_done(final)
    setup.never_above()
    for other in others:  # its slot too went to a follower as soon as it was killed
        (ended,) = [r for r in setup.runs("holder") if r.job == other.job]
        later = [r for r in setup.runs("follower") if r.start >= ended.alive]
        assert later and later[0].start - ended.alive <= LEASE, (ended, later[:1])
    assert not setup.gate.exists()
