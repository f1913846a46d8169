"""Store files another user could write are refused (ssh StrictModes), files are created
without following planted links, the pidfile is 0644, parent directories 0700, and a
failed store open keeps no file descriptor (issue 11, "Store files and disks").

The daemon refuses an unsafe SQLite store with exit 78 (EX_CONFIG: a set-up problem a
restart does not fix; the systemd unit does not restart on 78) and says why.
"""

from __future__ import annotations

import gc
import os
import stat
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from taskschedd.errors import StoreError, UnsafeStore
from taskschedd.store import open_store
from taskschedd.store.sqlite import SQLiteStore
from tests.e2e.conftest import REPO
from tests.faults.harness import FaultDaemon, StoreKind, sqlite_kind
from tests.helpers import wait_for

Factory = Callable[..., FaultDaemon]
NOBODY = 65534
root_only = pytest.mark.skipif(os.geteuid() != 0, reason="files of another user need root")


def make_store(path: Path) -> None:
    with SQLiteStore(f"sqlite:///{path}", create=True) as store:
        store.last_event_seq()


def refused(d: FaultDaemon, *needles: str) -> str:
    """Start the daemon, expect exit 78 and every needle in its one-line error."""
    d.start(wait=False)
    code = d.wait_exit(20)
    err = d.stderr_path.read_text()
    assert code == 78, (code, err)
    assert "Traceback" not in err, err
    for needle in needles:
        assert needle in err, (needle, err)
    return err


def ctl_check(url: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TASKSCHED_")}
    env["PYTHONPATH"] = str(REPO)
    return subprocess.run(
        [sys.executable, "-m", "taskschedctl.cli", "--store", url, "check"],
        capture_output=True, text=True, env=env, timeout=60,
    )  # fmt: skip


@pytest.fixture
def open_dir(tmp_path: Path) -> Iterator[Path]:
    """A world-writable directory with the sticky bit, like /tmp."""
    path = tmp_path / "shared"
    path.mkdir()
    os.chmod(path, 0o1777)
    yield path


def kind_at(path: Path) -> StoreKind:
    url = f"sqlite:///{path}"
    return StoreKind("sqlite", url, {}, {"store": url}, sqlite_path=path)


@pytest.mark.parametrize("mode", [0o1777, 0o777, 0o770], ids=["1777", "0777", "0770"])
def test_a_store_in_a_directory_others_can_write_is_refused(
    node_factory: Factory, tmp_path: Path, mode: int
) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, mode)
    db = shared / "taskschedd.db"
    refused(
        node_factory(kind_at(db)),
        f"the store directory {shared} is writable by group or others (mode {mode:04o})",
        f"chmod go-w {shared}",
    )
    assert list(shared.iterdir()) == []  # not even created
    make_store_as_if_planted = shared / "planted.db"
    make_store(tmp_path / "planted.db")
    os.replace(tmp_path / "planted.db", make_store_as_if_planted)
    res = ctl_check(f"sqlite:///{make_store_as_if_planted}")
    assert res.returncode == 78 and "writable by group or others" in res.stderr, res


def test_a_store_file_others_can_write_is_refused(node_factory: Factory, tmp_path: Path) -> None:
    kind = sqlite_kind(tmp_path)
    assert kind.sqlite_path is not None
    make_store(kind.sqlite_path)
    os.chmod(kind.sqlite_path, 0o666)
    refused(
        node_factory(kind),
        f"the store file {kind.sqlite_path} is writable by group or others (mode 0666)",
    )
    res = ctl_check(kind.url)
    assert res.returncode == 78 and "writable by group or others" in res.stderr, res
    os.chmod(kind.sqlite_path, 0o600)
    assert ctl_check(kind.url).returncode == 0


@root_only
@pytest.mark.parametrize("which", ["", "-wal", "-shm", "dir"], ids=["db", "wal", "shm", "dir"])
def test_a_root_daemon_refuses_a_store_another_user_owns(
    node_factory: Factory, tmp_path: Path, which: str
) -> None:
    kind = sqlite_kind(tmp_path)
    db = kind.sqlite_path
    assert db is not None
    make_store(db)
    target = db.parent if which == "dir" else Path(f"{db}{which}")
    if which in ("-wal", "-shm"):
        target.write_bytes(b"")
        os.chmod(target, 0o600)
    os.chown(target, NOBODY, NOBODY)
    what = "directory" if which == "dir" else "file"
    refused(node_factory(kind), f"the store {what} {target} is owned by uid {NOBODY}", "chown")
    # Nothing of the daemon's went into the other user's files.
    for suffix in ("-wal", "-shm"):
        side = Path(f"{db}{suffix}")
        if side.exists() and side != target:
            assert side.stat().st_uid == 0, side


@root_only
def test_the_store_may_belong_to_the_user_the_daemon_switches_to(tmp_path: Path) -> None:
    """``user: nobody``: the master checks the files before the switch (``--daemon``) and
    after it, against nobody and root."""
    from taskschedd.store.sqlitefiles import daemon_owners, prepare

    db = tmp_path / "store" / "taskschedd.db"
    make_store(db)
    for path in (db.parent, db):
        os.chown(path, NOBODY, NOBODY)
    assert prepare(str(db), create=False, owners=daemon_owners("nobody"))
    with pytest.raises(UnsafeStore, match=f"owned by uid {NOBODY}"):
        prepare(str(db), create=False, owners=daemon_owners(None))


def test_a_symbolic_link_as_the_store_is_never_followed(
    node_factory: Factory, tmp_path: Path
) -> None:
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    os.chmod(victim, 0o600)
    store_dir = tmp_path / "store"
    store_dir.mkdir(mode=0o700)
    link = store_dir / "taskschedd.db"
    link.symlink_to(victim)
    refused(node_factory(kind_at(link)), f"the store file {link} is a symbolic link")
    assert victim.read_bytes() == b"precious"
    assert sorted(p.name for p in store_dir.iterdir()) == ["taskschedd.db"]  # no -wal, -shm
    wal = tmp_path / "store2" / "taskschedd.db-wal"
    wal.parent.mkdir(mode=0o700)
    make_store(wal.parent / "taskschedd.db")
    wal.symlink_to(victim)
    refused(node_factory(kind_at(wal.parent / "taskschedd.db"), name="n2"),
            f"the store file {wal} is not a regular file")  # fmt: skip
    assert victim.read_bytes() == b"precious"


def test_pidfile_0644_and_store_directories_0700_under_umask_000(
    node_factory: Factory, tmp_path: Path
) -> None:
    db = tmp_path / "var" / "lib" / "tsd" / "taskschedd.db"
    pidfile = tmp_path / "taskschedd.pid"
    d = node_factory(kind_at(db), pidfile=str(pidfile))
    old = os.umask(0)
    try:
        d.start(wait=False)  # no client may create the store first
    finally:
        os.umask(old)
    d.wait_workers(1, timeout=15)
    assert pidfile.read_text() == f"{d.pid}\n"
    assert stat.S_IMODE(pidfile.stat().st_mode) == 0o644
    for directory in (db.parent, db.parent.parent, db.parent.parent.parent):
        assert stat.S_IMODE(directory.stat().st_mode) == 0o700, directory
    assert stat.S_IMODE(db.stat().st_mode) == 0o600
    d.signal(15)
    assert d.wait_exit(15) == 0
    assert not pidfile.exists()


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_failed_sqlite_opens_keep_no_file_descriptor(tmp_path: Path) -> None:
    """Eight failed opens (a file that is no database; a schema that is too new) hold as
    many descriptors as none: the connection is closed at once, not left to the GC."""
    garbage = tmp_path / "store" / "garbage.db"
    garbage.parent.mkdir(mode=0o700)
    garbage.write_bytes(b"this is not a database" * 200)
    os.chmod(garbage, 0o600)
    newer = tmp_path / "store" / "newer.db"
    make_store(newer)
    import sqlite3

    with sqlite3.connect(newer) as conn:
        conn.execute("UPDATE meta SET value = '99' WHERE key = 'schema'")
    conn.close()
    gc.collect()
    gc.disable()  # a reference cycle through the traceback must not hide a leak
    try:
        for path, message in ((garbage, "not a taskschedd SQLite store"), (newer, "schema 99")):
            store = SQLiteStore(f"sqlite:///{path}")
            before = open_fds()
            for _ in range(8):
                with pytest.raises(StoreError, match=message):
                    store.last_event_seq()
            assert open_fds() == before, path
            store.close()
    finally:
        gc.enable()


def test_failed_mongodb_opens_keep_no_file_descriptor() -> None:
    gc.collect()
    gc.disable()
    try:
        store = open_store("mongodb://127.0.0.1:1/tsd", server_selection_timeout=0.1)
        before = open_fds()
        for _ in range(8):
            with pytest.raises(StoreError):
                store.last_event_seq()
        store.close()
        wait_for(lambda: open_fds() <= before, 5, message="descriptors closed")
    finally:
        gc.enable()
