"""Workflows under process death, on every store: a SIGKILLed master mid-chain, and
three nodes settling the dependencies of one fan-in at once. Runs are counted by the
job itself (``tests.faults.jobs.Run``) and compared with what the store says."""

from __future__ import annotations

import signal
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from taskschedd.model import JobStatus
from taskschedd.scheduler import JobSpec
from tests.faults.harness import (
    RUN,
    FaultDaemon,
    StoreKind,
    audit,
    read_runs,
    run_data,
    wait_all_final,
)
from tests.helpers import wait_for

Factory = Callable[..., FaultDaemon]


def test_a_sigkilled_master_mid_chain_delays_the_chain_and_runs_each_step_once(
    kind: StoreKind, node_factory: Factory, tmp_path: Path
) -> None:
    runs = tmp_path / "runs.log"
    config = {"pm": "static", "min_children": 2, "max_children": 2, "lease": "1.5s",
              "reap_interval": "0.3s"}  # fmt: skip
    n1 = node_factory(kind, "n1", **config).start()
    s = kind.scheduler()
    first = s.add_job(RUN, run_data(runs, sleep=60, sleep_attempts=[1]), retry=1,
                      retry_interval=0)  # fmt: skip
    # A chain hanging off the first job, and a job after both.
    second, third = s.chain(
        [JobSpec(RUN, run_data(runs), {"depends_on": [first.id]}), JobSpec(RUN, run_data(runs))]
    )
    head = s.add_job(RUN, run_data(runs), depends_on=[first.id, third.id])
    s.cancel_job(second.id)  # a canceled branch: its chain and the head end CANCELED
    wait_for(lambda: len(read_runs(runs)) == 1, 10, message="the first job running")
    n1.signal(signal.SIGKILL)
    n1.wait_exit(5)
    assert s.store.get(head.id).status is JobStatus.CANCELED
    other = s.add_job(RUN, run_data(runs), depends_on=[first.id])
    assert s.store.get(other.id).status is JobStatus.BLOCKED
    n1.start()  # a new master: the first job is reaped, retried, then `other` runs
    ids = [first.id, second.id, third.id, head.id, other.id]
    final = wait_all_final(s.store, ids, timeout=20)
    result = audit(s.store, ids, runs)
    assert result.ok, result
    assert (final[first.id].status, final[first.id].attempt) == (JobStatus.DONE, 2)
    assert final[other.id].status is JobStatus.DONE
    assert final[third.id].reason == f"dependency {second.id} ended CANCELED"
    assert final[head.id].reason == f"dependency {third.id} ended CANCELED"
    assert Counter(j for j, _, _ in read_runs(runs)) == {first.id: 2, other.id: 1}


def test_three_nodes_settling_a_fan_in_s_dependencies_run_it_once(
    kind: StoreKind, node_factory: Factory, tmp_path: Path
) -> None:
    runs = tmp_path / "runs.log"
    config = {"pm": "static", "min_children": 2, "max_children": 2}
    for name in ("n1", "n2", "n3"):
        node_factory(kind, name, **config).start()
    s = kind.scheduler()
    # Added together (one batch) to nodes all up: they settle the dependencies together.
    deps = s.add_jobs([JobSpec(RUN, run_data(runs, sleep=0.05)) for _ in range(100)])
    fan_in = s.add_job(RUN, run_data(runs), depends_on=[p.id for p in deps])
    ids = [p.id for p in deps] + [fan_in.id]
    final = wait_all_final(s.store, ids, timeout=60)
    result = audit(s.store, ids, runs)
    assert result.ok, result
    assert final[fan_in.id].status is JobStatus.DONE and final[fan_in.id].attempt == 1
    assert [j for j, _, _ in read_runs(runs)].count(fan_in.id) == 1
    released = [e for e in s.store.events(job_ids=[fan_in.id]) if e.status is JobStatus.WAITING]
    assert len(released) == 1
    assert len({r.node for r in final.values()}) >= 2  # settled by several nodes
