"""Processes die or freeze; the store must still hold every job in exactly one final state.

Each test runs once per store kind (see conftest). Runs are counted by the job itself in
a file (``tests.faults.jobs.Run``), and compared with what the store says.
"""

from __future__ import annotations

import os
import signal
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

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
    wait_pids_gone,
)
from tests.faults.jobs import MODULE
from tests.helpers import wait_for

Factory = Callable[..., FaultDaemon]


def test_a_worker_sigkilled_mid_job_is_settled_at_once_50_times_in_a_row(
    kind: StoreKind, node_factory: Factory, tmp_path: Path
) -> None:
    """50 jobs, each SIGKILLed in its first attempt: with a 30 s lease, only the master's
    SIGCHLD handling can settle them in time; the retry then finishes each one."""
    runs = tmp_path / "runs.log"
    d = node_factory(kind, pm="static", min_children=2, max_children=2, lease="30s").start()
    s = kind.scheduler()
    data = run_data(runs, sleep=60, sleep_attempts=[1])
    jobs = s.add_jobs([JobSpec(RUN, data, {"retry": 1, "retry_interval": 0}) for _ in range(50)])
    ids = [j.id for j in jobs]
    killed: set[int] = set()
    deadline = time.monotonic() + 25  # well inside the 30 s lease
    while len(killed) < 50:
        assert time.monotonic() < deadline, f"killed {len(killed)} of 50"
        for _, pid, attempt in read_runs(runs):
            if attempt == 1 and pid not in killed:
                os.kill(pid, signal.SIGKILL)
                killed.add(pid)
        time.sleep(0.01)
    final = wait_all_final(s.store, ids, timeout=max(1.0, deadline - time.monotonic()))
    result = audit(s.store, ids, runs)
    assert result.ok, result
    assert Counter(r.status for r in final.values()) == {JobStatus.DONE: 50}
    for record in final.values():
        assert record.attempt == 2
        (error,) = record.errors
        assert error.reason == "abandoned" and "died from signal 9" in error.message
    assert sorted(Counter(j for j, _, _ in read_runs(runs)).values()) == [2] * 50
    assert len(d.wait_workers(2)) == 2  # every killed worker was replaced
    assert d.running()


@pytest.mark.parametrize("recovery", ["other node", "restarted node"])
def test_a_sigkilled_master_takes_its_workers_along_and_its_jobs_are_recovered(
    kind: StoreKind, node_factory: Factory, tmp_path: Path, recovery: str
) -> None:
    runs = tmp_path / "runs.log"
    lease, reap = 1.5, 0.3
    config = {"pm": "static", "min_children": 2, "max_children": 2, "lease": f"{lease}s",
              "reap_interval": f"{reap}s"}  # fmt: skip
    n1 = node_factory(kind, "n1", **config).start()
    s = kind.scheduler()
    data = run_data(runs, sleep=60, sleep_attempts=[1])
    ids = [s.add_job(RUN, data, retry=1, retry_interval=0).id for _ in range(2)]
    wait_for(lambda: len(read_runs(runs)) == 2, 10, message="both jobs running")
    workers = n1.workers()
    assert len(workers) == 2

    n1.signal(signal.SIGKILL)
    killed = time.time()
    n1.wait_exit(5)
    assert wait_pids_gone(workers, 2.0) <= 2.0  # PR_SET_PDEATHSIG / parent check

    if recovery == "other node":
        node_factory(kind, "n2", **config).start()
    else:
        n1.start()  # same name, same config, a new master
    final = wait_all_final(s.store, ids, timeout=15)
    result = audit(s.store, ids, runs)
    assert result.ok, result
    for record in final.values():
        assert record.status == JobStatus.DONE and record.attempt == 2
        assert record.errors[0].reason == "abandoned"
        assert "lease expired (node n1" in record.errors[0].message
        reclaimed = [
            e.time
            for e in s.store.events(job_ids=[record.id])
            if e.status == JobStatus.PROCESSING and e.attempt == 2
        ]
        assert len(reclaimed) == 1
        # Within lease + reap interval of the kill, plus the new node's start-up.
        assert reclaimed[0] - killed <= lease + reap + 2.0, reclaimed[0] - killed


def test_a_frozen_node_cannot_overwrite_the_outcome_of_the_node_that_reaped_its_job(
    kind: StoreKind, node_factory: Factory, tmp_path: Path
) -> None:
    """SIGSTOP a whole node past its lease; a second node reaps and re-runs the job; after
    SIGCONT the first node's late progress and completion are fenced off."""
    runs = tmp_path / "runs.log"
    config = {"pm": "static", "min_children": 1, "max_children": 1, "lease": "1s"}
    n1 = node_factory(kind, "n1", **config).start()
    s = kind.scheduler()
    data = run_data(runs, sleep=2, sleep_attempts=[1], progress=True)
    job = s.add_job(RUN, data, retry=1, retry_interval=0)
    wait_for(lambda: read_runs(runs), 10, message="the first run")
    n1.signal_session(signal.SIGSTOP)

    node_factory(kind, "n2", **config).start()
    job.wait(15)
    assert job.status == JobStatus.DONE and job.attempt == 2
    assert job.result["attempt"] == 2 and job.progress == 100
    before = s.store.get(job.id)
    events_before = s.store.events(job_ids=[job.id])

    # Its sleep is over: late writes follow at once, unless the worker's lease watch kills
    # the job first (its lease ran out unrenewed: taskschedd.leasewatch); usually it does.
    n1.signal_session(signal.SIGCONT)
    wait_for(
        lambda: (
            n1.logged("job claim was lost before settling; outcome discarded (fenced)")
            or n1.logged("lease not confirmed in time: killing the job")
        ),
        10,
        message="the first node's fenced settle, or its kill of the stale job",
    )
    after = s.store.get(job.id)
    assert after == before
    assert s.store.events(job_ids=[job.id]) == events_before
    finals = [e for e in events_before if e.status.is_final]
    assert [e.status for e in finals] == [JobStatus.DONE]
    assert [a for _, _, a in read_runs(runs)] == [1, 2]  # attempt 1 on n1, 2 on n2
    assert n1.running()


def test_a_job_running_ten_times_its_lease_is_never_claimed_twice(
    kind: StoreKind, node_factory: Factory, tmp_path: Path
) -> None:
    runs = tmp_path / "runs.log"
    lease = 1.0
    config = {"pm": "static", "min_children": 1, "max_children": 2, "lease": f"{lease}s",
              "reap_interval": "0.2s"}  # fmt: skip
    node_factory(kind, "n1", **config).start()
    node_factory(kind, "n2", **config).start()  # a second node eager to reap
    s = kind.scheduler()
    job = s.add_job(RUN, run_data(runs, sleep=10 * lease), retry=3, retry_interval=0)
    job.wait(10 * lease + 10)
    assert job.status == JobStatus.DONE
    assert job.attempt == 1 and job.errors == []
    assert len(read_runs(runs)) == 1
    claims = [e for e in s.store.events(job_ids=[job.id]) if e.status == JobStatus.PROCESSING]
    assert len(claims) == 1


def test_a_poison_job_ends_after_its_attempts_while_other_jobs_keep_flowing(
    kind: StoreKind, node_factory: Factory, tmp_path: Path
) -> None:
    runs = tmp_path / "runs.log"
    poison_runs = tmp_path / "poison.log"
    d = node_factory(kind, pm="static", min_children=2, max_children=2, lease="30s").start()
    s = kind.scheduler()
    poison = s.add_job(RUN, run_data(poison_runs, kill_self=True), retry=2, retry_interval=0)
    others = s.add_jobs([JobSpec(RUN, run_data(runs, sleep=0.05)) for _ in range(30)])
    ids = [j.id for j in others]
    poison.wait(20)
    assert poison.status == JobStatus.FAILED and poison.reason == "abandoned"
    assert poison.attempt == 3
    assert [e.reason for e in poison.errors] == ["abandoned"] * 3
    assert all("died from signal 9" in e.message for e in poison.errors)
    assert [a for _, _, a in read_runs(poison_runs)] == [1, 2, 3]
    final = wait_all_final(s.store, ids, timeout=20)
    result = audit(s.store, ids, runs)
    assert result.ok, result
    assert all(r.status == JobStatus.DONE and r.attempt == 1 for r in final.values())
    assert d.running() and len(d.wait_workers(2)) == 2


def test_a_supervisor_that_does_not_read_its_notify_socket_never_stalls_the_master(
    kind: StoreKind, node_factory: Factory, tmp_path: Path
) -> None:
    """sd_notify datagrams pile up when systemd is slow (here: nobody reads after READY);
    the master must drop status lines rather than block in sendto() with jobs running."""
    runs = tmp_path / "runs.log"
    d = node_factory(kind, pm="dynamic", min_children=1, max_children=3, idle_timeout="0.2s")
    d.start(notify=True)  # the listener is read once, for READY=1, and then never again
    s = kind.scheduler()
    ids: list[str] = []
    for _ in range(4):  # the pool grows to 3 and shrinks back: each change sends a datagram
        burst = [j.id for j in s.add_jobs([JobSpec(RUN, run_data(runs, sleep=0.2))] * 10)]
        wait_all_final(s.store, burst, timeout=20)
        d.wait_workers(1, timeout=10)
        ids += burst
    result = audit(s.store, ids, runs)
    assert result.ok, result
    assert result.statuses == {"DONE": 40}
    # The workers run jobs on their own; the master's loop must be alive too.
    moment = time.time()
    wait_for(lambda: (n := d.node()) is not None and n.heartbeat > moment, 3, message="heartbeat")
    assert d.notify is not None
    assert len(d.notify.poll()) >= 10  # the queue did fill up (net.unix.max_dgram_qlen)


def test_a_worker_killed_in_a_batch_of_short_jobs_loses_none_and_runs_none_twice(
    kind: StoreKind, node_factory: Factory, tmp_path: Path
) -> None:
    """Workers claim short jobs ahead, several per store write; poison jobs SIGKILL their
    worker in the middle of such batches. The jobs claimed ahead are given back unstarted
    (no attempt used), the ones that ran but whose outcome was not stored yet are abandoned
    and retried: none lost, no attempt run twice, every run accounted for."""
    runs = tmp_path / "runs.log"
    d = node_factory(kind, pm="static", min_children=2, max_children=2, lease="30s").start()
    s = kind.scheduler()
    specs = []
    for i in range(300):
        poison = i % 60 == 30
        data = run_data(runs, kill_self=poison)
        specs.append(JobSpec(RUN, data, {"retry": 0 if poison else 3, "retry_interval": 0}))
    jobs = s.add_jobs(specs)
    ids = [j.id for j, spec in zip(jobs, specs, strict=True) if not spec.data.get("kill_self")]
    poisons = [j.id for j, spec in zip(jobs, specs, strict=True) if spec.data.get("kill_self")]
    final = wait_all_final(s.store, ids + poisons, timeout=60)
    result = audit(s.store, ids + poisons, runs)
    assert result.ok, result
    runs_per_job = Counter(job_id for job_id, _, _ in read_runs(runs))
    for job_id in poisons:
        record = final[job_id]
        assert (record.status, record.reason, record.attempt) == (JobStatus.FAILED, "abandoned", 1)
    for job_id in ids:
        record = final[job_id]
        assert record.status == JobStatus.DONE, record
        # Every attempt the store counts ran once; an abandoned one was retried. The one
        # exception, MongoDB only: a claim whose reply was lost and whose write landed
        # after its worker died and its master looked (nx-27017 queues writes under
        # load) holds the job unseen until its lease expires; that attempt never ran.
        errors = [e.message for e in record.errors]
        unseen = sum("lease expired" in m for m in errors) if kind.kind == "mongo" else 0
        assert runs_per_job[job_id] == record.attempt - unseen, (errors, runs_per_job[job_id])
        assert [e.reason for e in record.errors] == ["abandoned"] * (record.attempt - 1)
    assert d.running() and len(d.wait_workers(2)) == 2


def test_a_sigkilled_master_in_a_drain_of_short_jobs_fails_no_job_that_did_not_run(
    kind: StoreKind, node_factory: Factory, tmp_path: Path
) -> None:
    """Its workers hold jobs claimed ahead and outcomes not stored yet when the master is
    SIGKILLed. They store those outcomes and give back what they did not start before
    they exit: with retry 0, no job ends FAILED without having run, none runs twice."""
    runs = tmp_path / "runs.log"
    # A lease long enough that a slow store (nx-27017 on a loaded machine) does not let
    # the live node's own leases expire; short enough for the recovery to be quick.
    lease, reap = 5.0, 0.3
    config = {"pm": "static", "min_children": 2, "max_children": 2, "lease": f"{lease}s",
              "reap_interval": f"{reap}s"}  # fmt: skip
    n1 = node_factory(kind, "n1", **config).start()
    s = kind.scheduler()
    ids = [j.id for j in s.add_jobs([JobSpec(RUN, run_data(runs), {"retry": 0})] * 1500)]
    wait_for(lambda: len(read_runs(runs)) >= 150, 20, message="a drain under way")
    workers = n1.workers()
    n1.signal(signal.SIGKILL)
    n1.wait_exit(5)
    assert wait_pids_gone(workers, 5.0) <= 5.0
    node_factory(kind, "n2", **config).start()
    final = wait_all_final(s.store, ids, timeout=60)
    result = audit(s.store, ids, runs)
    assert result.ok, result
    failed = [r for r in final.values() if r.status != JobStatus.DONE]
    # At most the job each worker was running (in its start()) is abandoned, after its
    # lease; the jobs claimed ahead were given back, the outcomes held were stored.
    assert len(failed) <= 2, failed[:3]
    for record in failed:
        assert record.reason == "abandoned" and "lease expired" in record.errors[-1].message


def test_stop_now_in_a_drain_of_short_jobs_runs_no_job_twice(
    kind: StoreKind, node_factory: Factory, tmp_path: Path
) -> None:
    """A second SIGTERM stops the node now: running jobs are killed and given back. Jobs
    that ran but whose outcome was not stored yet are stored first (the kill waits for
    them), so none of them runs a second time. Only a job killed in the middle of its run
    starts again (each run records its start, and its end in ``ends``)."""
    runs, ends = tmp_path / "runs.log", tmp_path / "ends.log"
    # A lease long enough that a slow store (nx-27017 on a loaded machine) does not let
    # the node's own leases expire: this test is about the kill, not about outages.
    n1 = node_factory(kind, "n1", pm="static", min_children=2, max_children=2, lease="30s")
    n1.start()
    s = kind.scheduler()
    spec = JobSpec(RUN, run_data(runs, ends=str(ends)), {"retry": 0})
    ids = [j.id for j in s.add_jobs([spec] * 1500)]
    wait_for(lambda: len(read_runs(runs)) >= 150, 20, message="a drain under way")
    n1.signal(signal.SIGTERM)
    n1.signal(signal.SIGTERM)
    assert n1.wait_exit(10) == 0
    killed = {e.get("job_id") for e in n1.logged("stopping a running job")}
    n1.start()
    final = wait_all_final(s.store, ids, timeout=60)
    not_done = [(r.status.name, r.reason, r.attempt, [e.message for e in r.errors])
                for r in final.values() if r.status != JobStatus.DONE]  # fmt: skip
    assert not_done == [], not_done[:3]
    ended = Counter(job_id for job_id, _, _ in read_runs(ends))
    started = Counter(job_id for job_id, _, _ in read_runs(runs))
    # (job, runs ended, runs started, cut short by the stop): every job ends exactly once
    assert [(i, ended[i], started[i], i in killed) for i in ids if ended[i] != 1] == []
    again = {job_id for job_id, n in started.items() if n > 1}
    # A job the stop cut short is given back and starts once more; no other job does.
    assert again <= killed, (sorted(again - killed)[:5], sorted(killed))
    assert all(started[i] == 2 for i in again), [started[i] for i in again]
    assert audit(s.store, ids, ends).ok


def test_what_a_job_started_in_a_session_of_its_own_dies_with_it(
    kind: StoreKind, node_factory: Callable[..., FaultDaemon], tmp_path: Path
) -> None:
    """A job that timed out or was canceled is killed with its process group; a process
    it started with setsid is not in that group, and used to run on after it (and while
    the job ran again elsewhere). It comes to the master when the worker dies: killed."""
    d = node_factory(kind, pm="static", min_children=1, max_children=1).start()
    s = kind.scheduler()
    for how in ("timeout", "cancel"):
        pidfile = tmp_path / f"{how}.pid"
        opts: dict[str, Any] = {"timeout": 1} if how == "timeout" else {}
        job = s.add_job(f"{MODULE}.Escapes", {"pidfile": str(pidfile), "sleep": 60}, **opts)
        wait_for(lambda pidfile=pidfile: pidfile.exists() and pidfile.read_text(), 15,
                 message="the job's escaped child started")  # fmt: skip
        child = int(pidfile.read_text())
        if how == "cancel":
            s.cancel_job(job.id)
        final = job.wait(20)
        assert final.status is (JobStatus.TIMEOUT if how == "timeout" else JobStatus.CANCELED)
        wait_for(lambda child=child: not alive(child), 10,
                 message=f"the escaped child {child} killed after the {how}")  # fmt: skip
        assert d.logged("killed a process a job left running outside its group")


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False
