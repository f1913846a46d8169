"""A process killed exactly between the writes of a workflow, on every store: between
a dependency's settle and its dependents' release (a worker, a master), and in the
middle of adding a workflow (a client). The process is stopped there by a failpoint
(taskschedd/failpoints.py) and SIGKILLed by the test. Runs are counted by the jobs
themselves (``tests.faults.jobs.Run``) and compared with what the store says."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from taskschedd.model import JobQuery, JobStatus
from tests.e2e.conftest import REPO
from tests.faults.harness import (
    RUN,
    FaultDaemon,
    StoreKind,
    all_jobs,
    audit,
    read_runs,
    run_data,
    wait_all_final,
)
from tests.helpers import wait_for

Factory = Callable[..., FaultDaemon]
ONE_WORKER = {"pm": "static", "min_children": 1, "max_children": 1}


def _arm(tmp_path: Path, point: str) -> tuple[dict[str, str], Path]:
    hit = tmp_path / "failpoint.hit"
    return {"TASKSCHED_FAILPOINT": point, "TASKSCHED_FAILPOINT_FILE": str(hit)}, hit


def _stopped_at(hit: Path, timeout: float = 20) -> int:
    """The pid of the process the failpoint stopped (once it is stopped)."""

    def stopped() -> int | None:
        if not hit.exists() or not hit.read_text().endswith("\n"):
            return None
        pid = int(hit.read_text().split()[1])
        with open(f"/proc/{pid}/stat") as f:
            return pid if f.read().rsplit(")", 1)[1].split()[0] == "T" else None

    return wait_for(stopped, timeout, interval=0.02, message="a process stopped at the failpoint")


def _runs(runs: Path, job_id: str) -> int:
    return [j for j, _, _ in read_runs(runs)].count(job_id)


def test_a_worker_killed_between_a_settle_and_the_release_of_its_dependents(
    kind: StoreKind, node_factory: Factory, tmp_path: Path
) -> None:
    """SQLite: the release is in the settle's transaction, so the kill undoes both and
    the dependency runs again. MongoDB: the settle stands and the dependency sweep
    releases the dependent (within a reap interval). Either way the dependent runs once,
    after its dependency's last run."""
    runs = tmp_path / "runs.log"
    env, hit = _arm(tmp_path, f"{kind.kind}.before_release")
    n1 = node_factory(kind, "n1", **ONE_WORKER).start(env=env)
    s = kind.scheduler()
    first = s.add_job(RUN, run_data(runs), retry=1, retry_interval=0)
    then = s.add_job(RUN, run_data(runs), depends_on=[first.id])
    pid = _stopped_at(hit)
    assert pid != n1.pid and pid in n1.workers()
    if kind.kind == "mongo":
        # The settle stands. The release did not happen in the stopped worker; the node's
        # dependency sweep (every reap interval, 0.3 s here) may already have done it.
        assert s.store.get(first.id).status is JobStatus.DONE
        assert s.store.get(then.id).status in (JobStatus.BLOCKED, JobStatus.WAITING)
    os.kill(pid, signal.SIGKILL)
    final = wait_all_final(s.store, [first.id, then.id], timeout=30)
    result = audit(s.store, [first.id, then.id], runs)
    assert result.ok, result
    assert final[then.id].status is JobStatus.DONE
    assert _runs(runs, then.id) == 1
    assert (final[then.id].started or 0) >= (final[first.id].ended or 0)
    if kind.kind == "mongo":
        assert (final[first.id].status, final[first.id].attempt) == (JobStatus.DONE, 1)
        assert n1.logged("dependency sweep decided a job a crash had left blocked")
    else:  # rolled back with the settle: the worker died holding the job, retried once
        assert (final[first.id].status, final[first.id].attempt) == (JobStatus.DONE, 2)


def test_a_master_killed_between_a_settle_and_the_release_of_its_dependents(
    kind: StoreKind, node_factory: Factory, tmp_path: Path
) -> None:
    """The master settles a job whose worker died (FAILED: no retry) and is killed before
    it releases the dependent (run on failure); the restarted node finishes it."""
    runs = tmp_path / "runs.log"
    env, hit = _arm(tmp_path, f"{kind.kind}.before_release")
    n1 = node_factory(kind, "n1", **ONE_WORKER).start(env=env)
    s = kind.scheduler()
    first = s.add_job(RUN, run_data(runs, kill_self=True), retry=0)
    then = s.add_job(RUN, run_data(runs), depends_on=[first.id], on_dependency_failure="run")
    assert _stopped_at(hit) == n1.pid
    n1.signal(signal.SIGKILL)
    n1.wait_exit(5)
    n1.start(env=env)  # the failpoint was hit: it stops no one again
    final = wait_all_final(s.store, [first.id, then.id], timeout=30)
    assert final[first.id].status is JobStatus.FAILED
    assert final[then.id].status is JobStatus.DONE
    assert _runs(runs, first.id) == 1 and _runs(runs, then.id) == 1
    result = audit(s.store, [first.id, then.id], runs)
    assert result.ok, result


ADDER = """
import json, sys
from taskschedd.scheduler import JobSpec, Scheduler
from taskschedd.store import open_store
url, options, runs, run = json.loads(sys.argv[1])
sched = Scheduler(open_store(url, **options))
sched.group([JobSpec(run, {"runs": runs}) for _ in range(8)], then=JobSpec(run, {"runs": runs}))
print("added", flush=True)
"""


def _adder(kind: StoreKind, runs: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    options = dict(kind.options)
    if kind.kind == "mongo":
        options["workflow_hold"] = 1.0  # how long before a sweep gives up on an add
    args = json.dumps([kind.url, options, str(runs), RUN])
    full_env = {**os.environ, "PYTHONPATH": str(REPO), **env}
    return subprocess.Popen(
        [sys.executable, "-c", ADDER, args], env=full_env, cwd=REPO,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip


def test_a_client_killed_while_adding_a_workflow_leaves_none_of_it(
    kind: StoreKind, node_factory: Factory, tmp_path: Path
) -> None:
    """Killed with every job of the workflow written but not committed: none of it ever
    runs, and none of it stays (SQLite: rolled back; MongoDB: held, then deleted by the
    sweep once its hold has passed)."""
    runs = tmp_path / "runs.log"
    point = (
        "sqlite.workflow.before_commit" if kind.kind == "sqlite" else "mongo.workflow.before_commit"
    )
    n1 = node_factory(kind, "n1", pm="static", min_children=2, max_children=2).start()
    s = kind.scheduler()
    canary = s.add_job(RUN, run_data(runs))  # the node runs jobs meanwhile
    env, hit = _arm(tmp_path, point)
    adder = _adder(kind, runs, env)
    try:
        pid = _stopped_at(hit)
        assert pid == adder.pid
        if kind.kind == "mongo":
            assert len(all_jobs(s.store)) == 1 + 9  # held, not runnable
        adder.kill()
    finally:
        adder.kill()
        adder.wait(5)
    wait_all_final(s.store, [canary.id], timeout=20)
    wait_for(lambda: list(all_jobs(s.store)) == [canary.id], 20, message="only the canary left")
    assert [j for j, _, _ in read_runs(runs)] == [canary.id]
    assert {e.job_id for e in s.store.events()} == {canary.id}  # not even an "added" event
    if kind.kind == "mongo":
        assert n1.logged(
            "deleted a workflow whose add was interrupted before it was whole; none of its jobs ran"
        )


def test_a_client_killed_after_committing_a_workflow_leaves_all_of_it(
    kind: StoreKind, node_factory: Factory, tmp_path: Path
) -> None:
    """MongoDB's other side of the commit: killed after it, before the hold is lifted:
    the sweep lifts it and the whole workflow runs, each job once and in order.
    (SQLite's commit is the transaction's: nothing to kill between.)"""
    if kind.kind == "sqlite":
        import pytest

        pytest.skip("SQLite commits a workflow with its rows: there is no after")
    runs = tmp_path / "runs.log"
    node_factory(kind, "n1", pm="static", min_children=2, max_children=2).start()
    s = kind.scheduler()
    env, hit = _arm(tmp_path, "mongo.workflow.before_release")
    adder = _adder(kind, runs, env)
    try:
        assert _stopped_at(hit) == adder.pid
        adder.kill()
    finally:
        adder.kill()
        adder.wait(5)
    ids = [j.id for j in s.store.find(JobQuery(limit=None))]
    assert len(ids) == 9
    final = wait_all_final(s.store, ids, timeout=30)
    assert {r.status for r in final.values()} == {JobStatus.DONE}
    result = audit(s.store, ids, runs)
    assert result.ok, result
    assert len(read_runs(runs)) == 9
    for job in final.values():
        for dep in job.options.depends_on:
            assert (job.started or 0) >= (final[dep].ended or 0)
