"""A full disk under the SQLite store: a small tmpfs holds the store, a filler file takes
its last byte while jobs run and finish, and is deleted again.

The node must survive without a respawn storm, its workers keep the outcomes they cannot
store and store them when space returns (a job that ran to the end ends DONE, not FAILED
``abandoned``), nothing is lost or run twice, and the log and ``taskschedctl check`` say
that the disk is full. The tests mount a tmpfs, so they need root in a mount namespace
that allows it; elsewhere they skip and say so.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from taskschedd.model import JobStatus
from taskschedd.scheduler import JobSpec
from tests.e2e.conftest import REPO
from tests.faults.disk import fill, free_bytes, mount_tmpfs, umount
from tests.faults.harness import (
    RUN,
    FaultDaemon,
    StoreKind,
    audit,
    read_runs,
    run_data,
    wait_all_final,
    worker_pid,
)
from tests.helpers import wait_for

Factory = Callable[..., FaultDaemon]
TASKSCHEDCTL = Path(sys.executable).parent / "taskschedctl"
DISK_SIZE = "4m"
#: How long the disk stays full once the store noticed: several leases (FAST: 1.5 s).
FULL_FOR = 5.0


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 4 MiB tmpfs, unmounted at teardown (request it before node_factory, so that the
    daemons are killed first)."""
    mnt = tmp_path / "disk"
    why = mount_tmpfs(mnt, DISK_SIZE)
    if why is not None:
        pytest.skip(
            "a small disk to fill needs 'mount -t tmpfs' (root, in a mount namespace that "
            f"allows it): {why}"
        )
    try:
        yield mnt
    finally:
        umount(mnt)


def sqlite_on(disk: Path) -> StoreKind:
    path = disk / "store" / "taskschedd.db"
    url = f"sqlite:///{path}"
    return StoreKind("sqlite", url, {"create": True}, {"store": url}, sqlite_path=path)


def worker_starts(d: FaultDaemon) -> int:
    return len(d.logged("worker started"))


def not_writable(d: FaultDaemon) -> list[dict[str, Any]]:
    return [e for e in d.logged("store not writable") if e.get("why") == "disk full"]


def check(d: FaultDaemon) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(TASKSCHEDCTL), "-c", str(d.config_path), "check", "--timeout", "10s"],
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_a_full_disk_keeps_outcomes_in_the_workers_until_space_returns(
    small_disk: Path, node_factory: Factory, tmp_path: Path
) -> None:
    kind = sqlite_on(small_disk)
    runs, ends = tmp_path / "runs.log", tmp_path / "ends.log"
    d = node_factory(kind, pm="static", min_children=2, max_children=2).start()
    workers = d.wait_workers(2)
    s = kind.scheduler()
    data = run_data(runs, ends=str(ends), sleep=0.4)
    ids = [j.id for j in s.add_jobs([JobSpec(RUN, data, {"retry": 0})] * 40)]
    wait_for(lambda: len(read_runs(ends)) >= 4, 30, message="jobs ending before the disk fills")
    starts = worker_starts(d)

    filler = fill(small_disk)
    assert free_bytes(small_disk) == 0
    # The workers' writes fail (SQLite may first fill the room its WAL file already has):
    # the jobs that end meanwhile keep their outcome in their worker.
    seen = wait_for(
        lambda: [e for e in not_writable(d) if e.get("outcomes_waiting")],
        30,
        message=lambda: f"the log to say the disk is full; log: {d.diagnostics()}",
    )
    ended_while_full = len(read_runs(ends))
    with contextlib.suppress(AssertionError):  # time passing while the disk stays full
        wait_for(lambda: not d.running(), FULL_FOR, message="the disk to stay full a while")
    assert d.running(), d.diagnostics()
    assert d.workers() == workers, "no worker died or was replaced"
    assert worker_starts(d) == starts, "no respawn storm"
    assert "outcomes_waiting" in seen[0]
    probe = check(d)
    assert probe.returncode == 69, probe
    assert "disk full" in probe.stderr + probe.stdout, probe
    assert "Traceback" not in probe.stderr, probe.stderr

    filler.unlink()
    final = wait_all_final(s.store, ids, timeout=120)
    result = audit(s.store, ids, runs)
    assert result.ok, result
    assert result.statuses == {"DONE": len(ids)}, result
    assert all(not r.errors for r in final.values()), [r.errors for r in final.values()]
    assert len(read_runs(ends)) == len(ids) >= ended_while_full
    assert d.running()
    assert d.workers() == workers
    assert worker_starts(d) == starts
    wait_for(lambda: check(d).returncode == 0, 10, message="taskschedctl check to pass again")
    s.close()


def test_the_master_survives_its_own_writes_failing_on_a_full_disk(
    small_disk: Path, node_factory: Factory, tmp_path: Path
) -> None:
    """Heartbeats, lease renewals and the settlement the master owes for a worker killed
    meanwhile all fail while the disk is full, for longer than a lease: the master backs
    off, says why, keeps the settlement it owes, never takes the lease of the outcome its
    worker keeps, and catches up when space returns."""
    kind = sqlite_on(small_disk)
    runs = tmp_path / "runs.log"
    lease = 6.0  # the job below ends well within it, while the disk is full
    d = node_factory(kind, pm="static", min_children=2, max_children=2, lease=f"{lease}s")
    d.start()
    s = kind.scheduler()
    ends = s.add_job(RUN, run_data(runs, sleep=3), retry=0)
    doomed = s.add_job(RUN, run_data(runs, sleep=60, sleep_attempts=[1]), retry=1, retry_interval=0)
    wait_for(lambda: len(read_runs(runs)) == 2, 15, message="both jobs to start")
    with d.open_store() as store:
        beat = store.nodes()[0].heartbeat
        victim = worker_pid(store.get(doomed.id).worker)

    filler = fill(small_disk)
    wait_for(
        lambda: {e.get("doing") for e in d.logged("store unavailable")} >= {"heartbeat"},
        10,
        message="the master to fail a heartbeat",
    )
    os.kill(victim, signal.SIGKILL)  # the master owes the settlement of its job
    wait_for(
        lambda: d.logged("store unavailable while settling; will retry"),
        10,
        message="the master to fail to settle the killed worker's job",
    )
    wait_for(
        lambda: [e for e in not_writable(d) if e.get("outcomes_waiting")],
        10,
        message="the job's outcome to wait in its worker",
    )
    with contextlib.suppress(AssertionError):  # the job's lease lapses in the store
        wait_for(lambda: not d.running(), lease + 1, message="the disk to stay full a while")
    assert d.running(), d.diagnostics()
    assert doomed.refresh().status is JobStatus.PROCESSING, "its settlement waits for space"
    assert ends.refresh().status is JobStatus.PROCESSING, "its outcome waits for space"
    filler.unlink()

    for job in (ends, doomed):
        job.wait(timeout=60)
        assert job.status is JobStatus.DONE, (job.to_dict(), d.diagnostics())
    ran = Counter(job_id for job_id, _, _ in read_runs(runs))
    assert ran == {ends.id: 1, doomed.id: 2}, "the killed job ran again, the other once"
    assert [e.attempt for e in doomed.errors] == [1] and doomed.errors[0].reason == "abandoned"

    def beating() -> bool:
        with d.open_store() as store:
            return any(n.heartbeat > beat for n in store.nodes())

    wait_for(beating, 10, message="heartbeats again")
    wait_for(lambda: d.logged("store writable again"), 10, message="the log to say it is over")
    assert d.running()
    s.close()


def test_a_node_stopped_while_the_disk_is_full_exits_and_its_job_is_recovered(
    small_disk: Path, node_factory: Factory, tmp_path: Path
) -> None:
    """SIGTERM while a worker keeps an outcome the store refuses: the drain ends, the
    worker is killed at the stop deadline (its outcome is lost), and the master gives
    up the settlement it then owes after a lease instead of waiting for space forever.
    The lease returns the job: the next start runs it again."""
    kind = sqlite_on(small_disk)
    runs = tmp_path / "runs.log"
    d = node_factory(kind, pm="static", min_children=1, max_children=1).start()
    s = kind.scheduler()
    job = s.add_job(RUN, run_data(runs, sleep=1), retry=1, retry_interval=0)
    wait_for(lambda: read_runs(runs), 15, message="the job to start")
    filler = fill(small_disk)
    wait_for(
        lambda: [e for e in not_writable(d) if e.get("outcomes_waiting")],
        15,
        message="its outcome to wait in the worker",
    )
    d.signal(signal.SIGTERM)
    # shutdown_grace 1 s + kill_grace 0.3 s + 1 s + a lease of 1.5 s, and the loop's pace
    assert d.wait_exit(timeout=20) == 0
    assert d.logged(
        "stopping without the settlements the store refused; their leases will return the jobs"
    )
    assert job.refresh().status is JobStatus.PROCESSING

    filler.unlink()
    d.start()
    job.wait(timeout=30)
    assert job.status is JobStatus.DONE, (job.to_dict(), d.diagnostics())
    assert [e.reason for e in job.errors] == ["abandoned"]
    assert len(read_runs(runs)) == 2
    s.close()


def test_a_store_that_could_not_be_created_on_a_full_disk_leaves_nothing_behind(
    small_disk: Path,
) -> None:
    """`add --create` on a full disk fails (69) and removes the empty file it made: left
    there, the next `add` without --create (the cron line) would take it for a store."""
    disk = small_disk
    (disk / "store").mkdir(mode=0o700)
    db = disk / "store" / "t.db"
    filler = fill(disk)
    env = {"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"}
    add = [sys.executable, "-m", "taskschedctl", "--store", f"sqlite:///{db}", "add"]
    res = subprocess.run([*add, "--create", "taskschedd.examples.jobs.Echo", "{}"], capture_output=True, text=True,
                         timeout=60, env=env)  # fmt: skip
    assert res.returncode == 69 and "Traceback" not in res.stderr, res
    assert not db.exists() and not Path(f"{db}-wal").exists()
    filler.unlink()
    res = subprocess.run([*add, "taskschedd.examples.jobs.Echo", "{}"], capture_output=True, text=True, timeout=60,
                         env=env)  # fmt: skip
    assert res.returncode == 69 and f"no store at {db}" in res.stderr, res
