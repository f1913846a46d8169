"""The SQLite store's wake-up sockets (taskschedd.store.notify): private filesystem
sockets, paths longer than sun_path, stale sockets, a flood coalesced to a bounded rate,
and a post that never raises."""

from __future__ import annotations

import errno
import os
import pwd
import socket
import stat
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from taskschedd.errors import StoreError
from taskschedd.store.notify import WAKE_BURST, WAKE_RATE, NotifyDir


@pytest.fixture
def notify_dir(tmp_path: Path) -> Path:
    return tmp_path / "taskschedd.db-notify"


@pytest.fixture
def long_dir(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / ("d" * 100) / "taskschedd.db-notify"
    assert len(str(path)) > 108
    yield path


def test_sockets_are_private_files_in_a_private_directory(notify_dir: Path) -> None:
    notify_dir.mkdir(mode=0o755)
    notify_dir.chmod(0o755)  # left open by someone: closed again
    waker = NotifyDir(str(notify_dir)).listen()
    try:
        assert stat.S_IMODE(notify_dir.stat().st_mode) == 0o700
        (entry,) = notify_dir.iterdir()
        st = entry.lstat()
        assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600
        assert st.st_uid == os.geteuid()
    finally:
        waker.close()
    assert list(notify_dir.iterdir()) == []  # its socket goes with it


@pytest.mark.parametrize("long", [False, True], ids=["short", "longer-than-sun_path"])
def test_a_post_wakes_every_listener(notify_dir: Path, long_dir: Path, long: bool) -> None:
    path = str(long_dir if long else notify_dir)
    wakers = [NotifyDir(path).listen() for _ in range(3)]
    poster = NotifyDir(path)
    try:
        assert not any(w.wait(0) for w in wakers)
        poster.post()
        assert all(w.wait(2.0) for w in wakers)
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child posts with its own descriptors
            try:
                poster.post()
            finally:
                os._exit(0)
        os.waitpid(pid, 0)
        assert all(w.wait(2.0) for w in wakers)
    finally:
        poster.close()
        for w in wakers:
            w.close()


def test_sockets_of_dead_processes_are_removed(notify_dir: Path) -> None:
    dead = NotifyDir(str(notify_dir)).listen()
    dead._sock.close()  # died without cleaning up: the file stays
    alive = NotifyDir(str(notify_dir)).listen()
    stray = notify_dir / "README"  # not a listener's name: left alone
    stray.write_text("x")
    (notify_dir / "123-0123456789ab").write_text("")  # a name file of 0.2.0: refuses too
    poster = NotifyDir(str(notify_dir))
    try:
        poster.post()
        assert alive.wait(2.0)
        assert sorted(p.name for p in notify_dir.iterdir()) == sorted([alive._name, "README"])
    finally:
        poster.close()
        alive.close()


def test_a_symlink_is_refused(tmp_path: Path, notify_dir: Path) -> None:
    target = tmp_path / "elsewhere"
    target.mkdir(mode=0o700)
    notify_dir.symlink_to(target)
    with pytest.raises(StoreError, match="not a directory"):
        NotifyDir(str(notify_dir)).listen()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to own a directory for another user")
@pytest.mark.parametrize("exists", [True, False], ids=["notify-dir-exists", "created-by-root"])
def test_root_waiting_on_another_users_store_lets_that_user_reach_it(
    tmp_path: Path, exists: bool
) -> None:
    nobody = pwd.getpwnam("nobody")
    store_dir = tmp_path / "store"
    store_dir.mkdir(mode=0o700)
    os.chown(store_dir, nobody.pw_uid, nobody.pw_gid)
    notify_dir = store_dir / "taskschedd.db-notify"
    if exists:
        notify_dir.mkdir(mode=0o700)
        os.chown(notify_dir, nobody.pw_uid, nobody.pw_gid)
    waker = NotifyDir(str(notify_dir)).listen()
    try:
        assert notify_dir.lstat().st_uid == nobody.pw_uid
        (entry,) = notify_dir.iterdir()
        assert entry.lstat().st_uid == nobody.pw_uid
    finally:
        waker.close()


def test_a_flood_is_coalesced_to_the_wake_rate(notify_dir: Path) -> None:
    waker = NotifyDir(str(notify_dir)).listen()
    poster = NotifyDir(str(notify_dir))
    stop = threading.Event()

    def flood() -> None:
        while not stop.is_set():
            poster.post()
            time.sleep(0.0001)

    thread = threading.Thread(target=flood)
    thread.start()
    try:
        woken, started = 0, time.monotonic()
        while time.monotonic() - started < 1.0:
            woken += waker.wait(0.2)
        took = time.monotonic() - started
        assert woken <= WAKE_BURST + WAKE_RATE * took + 2, woken
        assert woken >= WAKE_RATE * 0.5  # still woken, at the rate
        assert waker.quiet_for() > 0
    finally:
        stop.set()
        thread.join()
        poster.close()
        waker.close()


def test_a_post_without_a_descriptor_to_spare_does_not_raise(
    notify_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    waker = NotifyDir(str(notify_dir)).listen()
    poster = NotifyDir(str(notify_dir))

    def no_fds(*args: object) -> socket.socket:
        raise OSError(errno.EMFILE, "Too many open files")

    try:
        monkeypatch.setattr(socket, "socket", no_fds)
        poster.post()  # a hint lost, nothing more
        monkeypatch.undo()
        poster.post()
        assert waker.wait(2.0)
    finally:
        poster.close()
        waker.close()


def test_wake_ups_for_real_changes_cost_no_token(notify_dir: Path) -> None:
    changed = [True]
    waker = NotifyDir(str(notify_dir)).listen(changed=lambda: changed[0])
    poster = NotifyDir(str(notify_dir))
    try:
        for _ in range(WAKE_BURST * 3):  # busy real traffic: never slowed down
            poster.post()
            assert waker.wait(1.0)
            assert waker.quiet_for() == 0
        changed[0] = False  # the same datagrams, but nothing changed in the store
        for _ in range(WAKE_BURST + 1):
            poster.post()
            waker.wait(1.0)
        assert waker.quiet_for() > 0
    finally:
        poster.close()
        waker.close()
