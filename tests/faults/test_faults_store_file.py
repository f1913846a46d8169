"""The SQLite store file deleted or replaced under running processes, and stores that do
not exist where a client looks (issue 11, "Store files and disks").

A process that has the file open keeps the deleted inode or the replaced file: its
writes go where nobody reads, while clients that open the path use the other file. So
a node must notice and stop (exit 69: a supervisor starts it again on the right file),
a client must refuse to write, ``taskschedctl check`` must say so, and a client must
never create a store where none exists unless asked (``--create``, ``create=True``).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from taskschedd import Scheduler
from taskschedd.errors import StoreMissing, StoreReplaced
from taskschedd.model import JobStatus
from taskschedd.store.sqlite import SQLiteStore
from taskschedd.store.sqlitefiles import stale_holders
from tests.e2e.conftest import REPO, TASKSCHEDD
from tests.faults.harness import FaultDaemon, sqlite_kind
from tests.helpers import wait_for

Factory = Callable[..., FaultDaemon]
ECHO = "taskschedd.examples.jobs.Echo"


def ctl(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TASKSCHED_")}
    env["PYTHONPATH"] = str(REPO)
    return subprocess.run(
        [sys.executable, "-m", "taskschedctl.cli", *args],
        capture_output=True, text=True, env=env, timeout=60,
    )  # fmt: skip


def other_store(tmp_path: Path) -> Path:
    """A second, valid store file (to move over the first)."""
    path = tmp_path / "other" / "taskschedd.db"
    with SQLiteStore(f"sqlite:///{path}", create=True) as store:
        store.last_event_seq()
    os.chmod(path.parent, 0o700)
    return path


def replace_store(path: Path, tmp_path: Path) -> None:
    """What a restore from backup with ``mv`` does: a new file under the same name."""
    new = other_store(tmp_path)
    for suffix in ("-wal", "-shm"):
        if Path(f"{new}{suffix}").exists():
            os.unlink(f"{new}{suffix}")  # checkpointed on close: the .db is complete
    os.replace(new, path)


@pytest.mark.parametrize("how", ["deleted", "replaced"])
def test_a_node_whose_store_file_goes_away_stops_and_exits_69(
    node_factory: Factory, tmp_path: Path, how: str
) -> None:
    kind = sqlite_kind(tmp_path)
    assert kind.sqlite_path is not None
    path = kind.sqlite_path
    d = node_factory(kind, pm="static", min_children=2, max_children=2).start()
    d.wait_workers(2)
    with kind.scheduler() as s:
        assert s.add_job(ECHO, {"n": 1}).wait(10).status is JobStatus.DONE
    if how == "deleted":
        os.unlink(path)
    else:
        replace_store(path, tmp_path)
    assert d.wait_exit(15) == 69, d.diagnostics()
    (gone,) = d.logged("the store is gone: stopping the node, then exit")
    assert (
        f"the store file {path} was {'deleted' if how == 'deleted' else 'replaced'}"
        in (gone["error"])
    )
    wait_for(lambda: not d.session_pids(), 5, message="workers gone")
    if how == "deleted":
        # Nothing to queue into: clients fail loudly instead of making a new store.
        res = ctl("--store", kind.url, "add", ECHO, "{}")
        assert res.returncode == 69 and f"no store at {path}" in res.stderr, res
        assert "--create" in res.stderr and "Traceback" not in res.stderr
        assert not path.exists()
        res = ctl("--store", kind.url, "check")
        assert res.returncode == 69 and f"no store at {path}" in res.stderr, res
        return
    # Replaced: a job acknowledged by the new file is run by the node once restarted
    # (systemd's Restart=on-failure does it on exit 69).
    res = ctl("--store", kind.url, "add", ECHO, '{"n": 2}')
    assert res.returncode == 0, res
    job_id = res.stdout.strip()
    node_factory(kind, name="n2", pm="static", min_children=1, max_children=1).start()
    with kind.scheduler() as s:
        assert s.get_job(job_id).wait(10).status is JobStatus.DONE


def test_a_client_refuses_to_write_into_a_replaced_store_file(tmp_path: Path) -> None:
    kind = sqlite_kind(tmp_path)
    assert kind.sqlite_path is not None
    with kind.scheduler() as s:
        s.add_job(ECHO, {"n": 1})
        replace_store(kind.sqlite_path, tmp_path)
        assert [pid for pid, _, _ in stale_holders(str(kind.sqlite_path))] == [os.getpid()]
        with pytest.raises(StoreReplaced, match="was replaced by another file"):
            s.add_job(ECHO, {"n": 2})  # would be acknowledged, and lost with the old file
        with pytest.raises(StoreReplaced):  # and stays refused
            s.store.last_event_seq()
        # It let go of the old file (a deleted one would hold its disk space).
        assert stale_holders(str(kind.sqlite_path)) == []
    with Scheduler(kind.url) as fresh:  # a new client uses the file now there
        assert fresh.add_job(ECHO, {"n": 3}).status is JobStatus.WAITING


def test_check_names_processes_that_use_a_deleted_or_replaced_copy(tmp_path: Path) -> None:
    kind = sqlite_kind(tmp_path)
    assert kind.sqlite_path is not None
    with kind.scheduler() as s:
        s.add_job(ECHO, {})
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time\nfrom taskschedd.store.sqlite import SQLiteStore\n"
         f"s = SQLiteStore({kind.url!r}); s.last_event_seq(); print('open', flush=True)\n"
         "time.sleep(60)\n"],
        stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "open\n"
        res = ctl("--store", kind.url, "check")
        assert res.returncode == 0 and "reachable" in res.stdout, res
        replace_store(kind.sqlite_path, tmp_path)
        res = ctl("--store", kind.url, "check")
        assert res.returncode == 69, res
        assert f"pid {holder.pid} (" in res.stderr and "file replaced" in res.stderr, res
        assert f"still use a deleted or replaced copy of {kind.sqlite_path}" in res.stderr
        os.unlink(kind.sqlite_path)
        res = ctl("--store", kind.url, "check")
        assert res.returncode == 69 and f"no store at {kind.sqlite_path}" in res.stderr, res
    finally:
        holder.kill()
        holder.wait()


def test_a_mistyped_store_path_fails_loudly_and_creates_nothing(tmp_path: Path) -> None:
    typo = tmp_path / "var" / "taskshced.db"
    url = f"sqlite:///{typo}"
    res = ctl("--store", url, "add", ECHO, "{}")
    assert res.returncode == 69, res
    assert f"taskschedctl: error: no store at {typo}: its directory does not exist" in res.stderr
    assert "Traceback" not in res.stderr and not typo.parent.exists()
    typo.parent.mkdir(mode=0o700)
    res = ctl("--store", url, "add", "--once", ECHO, "{}")
    assert res.returncode == 69 and f"no store at {typo};" in res.stderr, res
    assert not typo.exists()
    with Scheduler(url) as s, pytest.raises(StoreMissing, match="create=True"):
        s.add_job(ECHO, {})
    assert not typo.exists()
    res = ctl("--store", url, "add", "--create", ECHO, "{}")
    assert res.returncode == 0, res
    with Scheduler(url) as s:
        assert [p.id for p in s.get_jobs()] == [res.stdout.strip()]
    made = tmp_path / "made" / "deeper" / "taskschedd.db"
    with Scheduler(f"sqlite:///{made}", create=True) as s:
        s.add_job(ECHO, {})
    assert made.exists()


def test_the_readme_flow_make_run_then_add_needs_no_create(tmp_path: Path) -> None:
    """``make run`` (the daemon on the reference configuration) creates the store, so the
    README's ``taskschedctl add ... --wait`` in a second terminal works as written."""
    var = tmp_path / "var"
    var.mkdir()
    os.chmod(var, 0o700)  # the Makefile's mkdir -p var && chmod 0700 var
    url = f"sqlite:///{var}/taskschedd.db"
    env = {k: v for k, v in os.environ.items() if not k.startswith("TASKSCHED_")}
    env["PYTHONPATH"] = str(REPO)
    daemon = subprocess.Popen(
        [str(TASKSCHEDD), "-c", str(REPO / "etc" / "taskschedd.yaml"), "--store", url],
        cwd=REPO, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    try:
        wait_for(lambda: (var / "taskschedd.db").exists(), 15, message="the daemon's store")
        res = ctl("--store", url, "add", "taskschedd.examples.jobs.Add", '{"a": 1, "b": 2}',
                  "--wait=30s")  # fmt: skip
        assert res.returncode == 0, res
        daemon.send_signal(15)
        assert daemon.wait(30) == 0
    finally:
        if daemon.poll() is None:
            os.killpg(daemon.pid, 9)
            daemon.wait()


@pytest.mark.parametrize("suffixes", [("-shm",), ("-wal", "-shm")], ids=["shm", "wal+shm"])
def test_a_node_whose_wal_or_shm_is_deleted_stops_and_exits_69(
    node_factory: Factory, tmp_path: Path, suffixes: tuple[str, ...]
) -> None:
    """A cleanup script deletes the -shm (or both side files) under a running node: the
    processes that keep the old ones and those that make new ones no longer see each
    other's commits (acknowledged jobs vanish). The node notices and stops; a client
    that had the store open refuses it too."""
    kind = sqlite_kind(tmp_path)
    assert kind.sqlite_path is not None
    path = kind.sqlite_path
    d = node_factory(kind, pm="static", min_children=1, max_children=1).start()
    d.wait_workers(1)
    client = kind.scheduler()
    assert client.add_job(ECHO, {"n": 1}).wait(10).status is JobStatus.DONE
    for suffix in suffixes:
        os.unlink(f"{path}{suffix}")
    assert d.wait_exit(15) == 69, d.diagnostics()
    (gone,) = d.logged("the store is gone: stopping the node, then exit")
    said = str(gone["error"])
    assert any(f"the store file {path}{s} was deleted" in said for s in suffixes), said
    with pytest.raises(StoreReplaced):
        client.add_job(ECHO, {"n": 2})
    # Restarted (systemd does it on 69), the node serves what is added from then on.
    node_factory(kind, name="n2", pm="static", min_children=1, max_children=1).start()
    with kind.scheduler() as s:
        assert s.add_job(ECHO, {"n": 3}).wait(10).status is JobStatus.DONE


def test_a_node_notices_its_store_directory_link_repointed(
    node_factory: Factory, tmp_path: Path
) -> None:
    """The store's directory is a link (a mount point, a release switch) re-pointed to
    another copy of the store while the node runs: the node compares the path as
    configured, not the directory it resolved at start, so it stops instead of serving
    a file that clients no longer write to."""
    (tmp_path / "data1").mkdir(mode=0o700)
    (tmp_path / "data2").mkdir(mode=0o700)
    link = tmp_path / "store"
    link.symlink_to(tmp_path / "data1")
    kind = sqlite_kind(tmp_path)
    d = node_factory(kind, pm="static", min_children=1, max_children=1).start()
    d.wait_workers(1)
    with kind.scheduler() as s:
        assert s.add_job(ECHO, {"n": 1}).wait(10).status is JobStatus.DONE
    with Scheduler(f"sqlite:///{tmp_path}/data2/taskschedd.db", create=True) as other:
        other.add_job(ECHO, {"n": 0}, at=time.time() + 3600)
    os.symlink(tmp_path / "data2", tmp_path / "store.new")
    os.replace(tmp_path / "store.new", link)
    assert d.wait_exit(15) == 69, d.diagnostics()
