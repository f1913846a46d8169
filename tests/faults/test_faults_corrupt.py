"""Corrupt and foreign records: written into a live store by another client (a script, a
bad migration, a hand edit), they must never crash a worker or the master nor stall the
queue. Each ends quarantined (FAILED, reason "corrupt", the decoding error in its errors);
the other jobs keep running, and the node restarts cleanly on such a store."""

from __future__ import annotations

import contextlib
import json
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

from taskschedd.model import JobStatus
from tests.corrupt_records import (
    MONGO_CASES,
    SQLITE_CASES,
    damage_mongo,
    damage_sqlite,
    quarantined,
)
from tests.e2e.conftest import REPO
from tests.faults.harness import FaultDaemon, StoreKind, all_jobs, run_data, wait_all_final
from tests.faults.jobs import MODULE
from tests.helpers import wait_for

Factory = Callable[..., FaultDaemon]
RUN = f"{MODULE}.Run"
LATER = 3600.0  # added this far ahead, so no node claims them before they are corrupted


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def scrape(port: int) -> str | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
            return str(resp.read().decode())
    except (urllib.error.URLError, ConnectionError):
        return None


def ctl(d: FaultDaemon, *args: str) -> subprocess.CompletedProcess[str]:
    """taskschedctl with the node's configuration (as a sysadmin runs it)."""
    return subprocess.run(
        [sys.executable, "-m", "taskschedctl", "-c", str(d.config_path), *args],
        capture_output=True, text=True, timeout=60,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
    )  # fmt: skip


def cases(kind: StoreKind) -> list[str]:
    return list(SQLITE_CASES if kind.kind == "sqlite" else MONGO_CASES)


def corrupt(kind: StoreKind, job_id: str, case: str) -> None:
    if kind.kind == "sqlite":
        assert kind.sqlite_path is not None
        damage_sqlite(kind.sqlite_path, job_id, case)
    else:
        damage_mongo(kind.url, kind.options, job_id, case)


def worker_starts(d: FaultDaemon) -> int:
    return len(d.logged("worker started"))


def test_corrupt_records_are_quarantined_and_never_stop_the_node(
    kind: StoreKind, node_factory: Factory, tmp_path: Path
) -> None:
    runs = tmp_path / "runs"
    port = free_port()  # with metrics on, the master folds the store's stats often
    d = node_factory(
        kind, pm="static", min_children=2, max_children=2,
        metrics={"listen": f"127.0.0.1:{port}"},
    ).start()  # fmt: skip
    d.wait_ready()
    master = d.pid
    sched = kind.scheduler()
    names = cases(kind)
    later = time.time() + LATER
    bad = {
        name: sched.add_job(RUN, run_data(runs), at=later).id for name in names
    }  # fmt: skip
    started_before = worker_starts(d)
    for name, job_id in bad.items():
        corrupt(kind, job_id, name)
    good = [sched.add_job(RUN, run_data(runs, echo=i)).id for i in range(30)]

    final = wait_all_final(sched.store, good, 60)
    assert all(r.status is JobStatus.DONE for r in final.values()), {
        i: r.status.name for i, r in final.items() if r.status is not JobStatus.DONE
    }

    def state() -> dict[str, str]:
        jobs = all_jobs(sched.store)
        return {n: f"{jobs[i].status.name}/{jobs[i].reason}" for n, i in bad.items()}

    wait_for(
        lambda: all(quarantined(all_jobs(sched.store)[i]) for i in bad.values()),
        30,
        message=lambda: f"every corrupt record quarantined; have {state()}",
    )
    assert d.running and d.pid == master, "the master must survive corrupt records"
    # No crash loop: at most a couple of replacement workers, not one per claim.
    assert worker_starts(d) - started_before <= 2, d.logged("worker started")
    ran = {line.split()[0] for line in runs.read_text().splitlines()}
    assert not ran & set(bad.values()), "a corrupt record must never run"
    for name, job_id in bad.items():
        record = sched.store.get(job_id)
        assert "does not decode" in record.errors[-1].message or record.errors, name

    assert scrape(port) is not None, "the metrics endpoint must still answer"
    # The CLI shows them without a traceback.
    first = bad[names[0]]
    for args in (["list", "--all"], ["show", first], ["stats"], ["cancel", first]):
        out = ctl(d, *args)
        assert "Traceback" not in out.stderr, out.stderr
        assert out.returncode == 0, (args, out.stdout, out.stderr)
    shown = ctl(d, "show", first).stdout
    assert "CORRUPT: the stored record does not decode" in shown, shown


def test_a_node_starts_on_a_store_holding_corrupt_records(
    kind: StoreKind, node_factory: Factory, tmp_path: Path
) -> None:
    runs = tmp_path / "runs"
    first = node_factory(kind, name="first").start()
    first.wait_ready()
    sched = kind.scheduler()
    later = time.time() + LATER
    names = cases(kind)
    bad = {name: sched.add_job(RUN, run_data(runs), at=later).id for name in names}
    first.signal(15)
    assert first.wait_exit(20) == 0
    for name, job_id in bad.items():  # written while no node runs
        corrupt(kind, job_id, name)
    good = [sched.add_job(RUN, run_data(runs, echo=i)).id for i in range(10)]
    # No node runs: `check` reports the records claims cannot handle, and exits 65.
    out = ctl(first, "check")
    assert out.returncode == 65, (out.stdout, out.stderr)
    assert "corrupt job" in out.stderr and "Traceback" not in out.stderr, out.stderr

    d = node_factory(kind, name="second").start()
    d.wait_ready()
    final = wait_all_final(sched.store, good, 60)
    assert all(r.status is JobStatus.DONE for r in final.values())
    wait_for(
        lambda: all(quarantined(all_jobs(sched.store)[i]) for i in bad.values()),
        30,
        message=lambda: "every corrupt record quarantined",
    )
    assert d.running
    out = ctl(d, "check")
    assert out.returncode == 0, (out.stdout, out.stderr)
    d.signal(15)
    assert d.wait_exit(20) == 0
    again = node_factory(kind, name="third").start()
    again.wait_ready()
    assert again.running


@pytest.mark.parametrize("case", ["data not JSON", "status 99"])
def test_sqlite_corrupt_record_reads_are_shown_not_raised(tmp_path: Path, case: str) -> None:
    from taskschedd import Scheduler
    from tests.faults.harness import sqlite_kind

    kind = sqlite_kind(tmp_path)
    sched = Scheduler(kind.url, create=True) if _takes_create() else Scheduler(kind.url)
    job = sched.add_job(RUN, {"runs": str(tmp_path / "runs")}, at=time.time() + LATER)
    corrupt(kind, job.id, case)
    record = sched.store.get(job.id)
    assert record.corrupt is not None and case.split()[0] in record.corrupt
    assert sched.store.stats(now=time.time())["by_status"]  # no crash
    [found] = sched.store.malformed() if case == "status 99" else [record]
    assert found.id == job.id


def _takes_create() -> bool:
    import inspect

    from taskschedd import Scheduler

    return "create" in inspect.signature(Scheduler).parameters


@pytest.mark.parametrize(
    "damage",
    [
        "UPDATE jobs SET cls = x'0102', queue = x'03'",
        "UPDATE nodes SET heartbeat = 'soon'",
        "UPDATE nodes SET heartbeat = 1e300, pid = 'x'",
        "UPDATE meta SET value = 'abc' WHERE key = 'schema'",
    ],
)
def test_taskschedctl_never_prints_a_traceback_on_a_damaged_sqlite_store(
    tmp_path: Path, damage: str
) -> None:
    from taskschedd import Scheduler
    from taskschedd.model import NodeRecord

    url = f"sqlite:///{tmp_path}/store/t.db"
    sched = Scheduler(url, create=True)
    sched.add_job(RUN, {"runs": str(tmp_path / "runs")}, at=time.time() + LATER)
    now = time.time()
    sched.store.heartbeat(NodeRecord("n1", "h", 1, now, now, 0, 1, (), ("default",), "0"))
    sched.store.close()
    with contextlib.closing(sqlite3.connect(f"{tmp_path}/store/t.db")) as conn:
        conn.execute(damage)
        conn.commit()
    env = {"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"}
    schema = "meta" in damage
    for args in (["stats", "--json"], ["stats"], ["nodes"], ["nodes", "--json"], ["list"]):
        out = subprocess.run(
            [sys.executable, "-m", "taskschedctl", "--store", url, *args],
            capture_output=True, text=True, timeout=60, env=env,
        )  # fmt: skip
        assert "Traceback" not in out.stderr, (args, out.stderr)
        if schema:  # the store cannot be used: said so, with the store's exit code
            assert out.returncode == 69 and "schema 'abc'" in out.stderr, (args, out.stderr)
        else:
            assert out.returncode == 0, (args, out.stdout, out.stderr)
    if "nodes" in damage:  # an entry that does not decode is left out, never counted live
        out = subprocess.run(
            [sys.executable, "-m", "taskschedctl", "--store", url, "nodes", "--json"],
            capture_output=True, text=True, timeout=60, env=env,
        )  # fmt: skip
        assert json.loads(out.stdout) == []
