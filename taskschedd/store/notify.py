"""Wake-ups between processes on one host, for the SQLite store.

Each waiting process binds a unix datagram socket in a private directory beside the
database (``<db>-notify``: mode 0700, owned by the store's user), and a writer sends one
byte to every socket it finds there after a commit. Only that user (and root) can enter
the directory, so no other local user can reach, let alone flood, a worker's socket (an
abstract-namespace socket would have no permissions at all). Wake-ups are hints: losing
one costs at most a poll interval, never a job. A process that dies leaves its socket
file behind; the first writer that gets ECONNREFUSED removes it.

A socket path must fit ``sun_path`` (108 bytes): a longer one is bound and reached
through ``/proc/self/fd/<directory descriptor>/<name>``, which the kernel resolves like
the directory itself (permissions included).

Even the owner cannot make a waiting process burn CPU: a waker reports at most
``WAKE_BURST`` wake-ups at once and ``WAKE_RATE`` per second after that that were for
nothing (a token bucket). A wake-up is for something when the store's ``changed`` check
says a commit happened since the last one (SQLite's ``PRAGMA data_version`` for other
connections, :attr:`NotifyDir.posts` for its own; a few microseconds): those cost no
token, so real traffic is never slowed down, however busy. :meth:`SocketWaker.wait` keeps to the rate by itself; a caller that selects on
:meth:`SocketWaker.fileno` itself should not watch it again for
:meth:`SocketWaker.quiet_for` seconds after a :meth:`SocketWaker.drain`. Wake-ups that
arrive meanwhile are coalesced into the next one.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import secrets
import select
import socket
import stat
import time
from collections.abc import Callable

from taskschedd.errors import StoreError
from taskschedd.store.base import Waker

__all__ = ["WAKE_BURST", "WAKE_RATE", "NotifyDir", "SocketWaker"]

#: Wake-ups for nothing a waker reports at once, and per second after that.
WAKE_BURST = 20
WAKE_RATE = 20.0
_RACY_WINDOW = 0.05  # seconds: well above the kernel's timestamp granularity (1-10 ms)
_SUN_PATH_MAX = 107  # bytes of a path in sockaddr_un, without the terminating NUL
_NAME = re.compile(r"[0-9]+-[0-9a-f]{12}")
_DRAIN_MAX = 256  # datagrams read per drain at most (a flood must not hold the caller)


def _private_dir(path: str) -> os.stat_result:
    """Create *path* 0700 if missing; refuse it unless it is a real directory of this
    user (or of anyone when root), and close it to group and others if it is open.

    Root makes it belong to the owner of the store's directory (a root client waiting
    on the store of a daemon that runs as another user must not lock that user out)."""
    try:
        os.makedirs(path, mode=0o700, exist_ok=True)
        st = os.lstat(path)
        if os.geteuid() == 0 and st.st_uid == 0 and stat.S_ISDIR(st.st_mode):
            parent = os.stat(os.path.dirname(os.path.abspath(path)))
            if parent.st_uid != 0:
                os.chown(path, parent.st_uid, parent.st_gid, follow_symlinks=False)
                st = os.lstat(path)
    except OSError as exc:
        raise StoreError(
            f"cannot create the wake-up directory {path}: {exc.strerror}; "
            "the store's directory must be writable by the daemon's user"
        ) from None
    euid = os.geteuid()
    if not stat.S_ISDIR(st.st_mode):
        raise StoreError(
            f"wake-up directory {path} is not a directory (a symlink or a file); remove it"
        )
    if st.st_uid != euid and euid != 0:
        raise StoreError(
            f"wake-up directory {path} belongs to uid {st.st_uid}, not to this user "
            f"({euid}); run as the store's user, or remove it"
        )
    if st.st_mode & 0o077 and st.st_uid == euid:
        os.chmod(path, 0o700)
    return st


class NotifyDir:
    """Posts wake-ups to every process listening on one database."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._sock: socket.socket | None = None
        self._dir_fd: int | None = None  # for paths too long for sun_path
        self._pid = -1
        # The listeners as last listed, and the directory's (inode, mtime) they are
        # valid for: a post costs one stat, not a listdir, while nobody comes or goes.
        self._names: list[tuple[str, str]] = []
        self._seen: tuple[int, int] | None = None
        self.posts = 0  # commits of this process announced (see SocketWaker's changed)

    def _own(self) -> None:
        """After a fork: close this process's copies of the parent's descriptors, and
        forget names that were built on the parent's directory descriptor."""
        if self._pid == os.getpid():
            return
        if self._dir_fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._dir_fd)
        if self._sock is not None:
            self._sock.close()
        self._sock, self._dir_fd = None, None
        self._names, self._seen = [], None
        self._pid = os.getpid()

    def _sender(self) -> socket.socket | None:
        if self._sock is None:
            try:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            except OSError:
                return None  # out of descriptors: wake-ups are hints, the write stands
            self._sock.setblocking(False)
        return self._sock

    def _prefix(self) -> str | None:
        """How to name a socket of this directory: the directory's path, or for a long
        one /proc/self/fd/N (None when that cannot be had now)."""
        if len(self.path.encode()) + 1 + 20 <= _SUN_PATH_MAX:
            return self.path
        if self._dir_fd is None:
            try:
                self._dir_fd = os.open(self.path, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
            except OSError:
                return None
        return f"/proc/self/fd/{self._dir_fd}"

    def _listeners(self) -> list[tuple[str, str]]:
        before = time.time()
        try:
            st = os.stat(self.path)
        except OSError:
            self._seen = None
            return []
        key = (st.st_ino, st.st_mtime_ns)
        if key == self._seen:
            return self._names
        try:
            names = os.listdir(self.path)
        except OSError:
            self._seen = None
            return []
        prefix = self._prefix()
        if prefix is None:
            self._seen = None
            return []
        self._names = [(name, f"{prefix}/{name}") for name in names if _NAME.fullmatch(name)]
        # Directory times come from a coarse clock: a listener arriving in the same tick
        # as the one this listing saw would leave the mtime unchanged. Trust the listing
        # only once its mtime is clearly older than the listing itself.
        self._seen = key if before - st.st_mtime_ns / 1e9 > _RACY_WINDOW else None
        return self._names

    def post(self) -> None:
        """Wake every listener; never raises (the write this follows has committed)."""
        self._own()
        self.posts += 1
        listeners = self._listeners()
        if not listeners:
            return
        sock = self._sender()
        if sock is None:
            return
        for name, address in listeners:
            try:
                sock.sendto(b"!", address)
            except BlockingIOError:
                pass  # its buffer is full: a wake-up is already pending
            except OSError as exc:
                if exc.errno in (errno.ECONNREFUSED, errno.ENOENT):
                    with contextlib.suppress(OSError):  # its process is gone
                        os.unlink(os.path.join(self.path, name))
                    self._seen = None  # list again next time

    def listen(self, changed: Callable[[], bool] | None = None) -> SocketWaker:
        """A waker for this process; *changed* tells whether the store changed since it
        was last asked (see the module docstring), None: every wake-up costs a token."""
        return SocketWaker(self.path, changed)

    def close(self) -> None:
        self._own()
        if self._sock is not None:
            self._sock.close()
        if self._dir_fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._dir_fd)
        self._sock, self._dir_fd = None, None
        self._names, self._seen = [], None


class SocketWaker(Waker):
    """One process's wake-up socket in the notify directory; see the module docstring."""

    def __init__(self, directory: str, changed: Callable[[], bool] | None = None) -> None:
        st = _private_dir(directory)
        self._changed = changed
        self._name = f"{os.getpid()}-{secrets.token_hex(6)}"
        self._file = os.path.join(directory, self._name)
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            self._bind(directory)
            os.chmod(self._file, 0o600)
            if os.geteuid() == 0 and st.st_uid != 0:
                # root waiting on a store of another user: that user's writers must reach it
                os.chown(self._file, st.st_uid, st.st_gid)
        except OSError as exc:
            self._sock.close()
            with contextlib.suppress(OSError):
                os.unlink(self._file)
            raise StoreError(
                f"cannot listen for wake-ups in {directory}: {exc.strerror or exc}"
            ) from None
        self._sock.setblocking(False)
        self._pid = os.getpid()
        self._tokens = float(WAKE_BURST)
        self._tokens_at = time.monotonic()

    def _bind(self, directory: str) -> None:
        if len(self._file.encode()) <= _SUN_PATH_MAX:
            self._sock.bind(self._file)
            return
        dir_fd = os.open(directory, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            self._sock.bind(f"/proc/self/fd/{dir_fd}/{self._name}")
        finally:
            os.close(dir_fd)

    @property
    def name(self) -> str:
        """The socket's file name in the notify directory."""
        return self._name

    def fileno(self) -> int:
        return self._sock.fileno()

    def quiet_for(self) -> float:
        """Seconds until the next wake-up may be reported (0: now)."""
        tokens = self._refill(time.monotonic())
        return 0.0 if tokens >= 1.0 else (1.0 - tokens) / WAKE_RATE

    def _refill(self, now: float) -> float:
        self._tokens = min(float(WAKE_BURST), self._tokens + (now - self._tokens_at) * WAKE_RATE)
        self._tokens_at = now
        return self._tokens

    def wait(self, timeout: float | None) -> bool:
        started = time.monotonic()
        quiet = self.quiet_for()
        if quiet > 0:
            time.sleep(quiet if timeout is None else max(0.0, min(quiet, timeout)))
        left = None if timeout is None else max(0.0, timeout - (time.monotonic() - started))
        try:
            ready, _, _ = select.select([self._sock], [], [], left)
        except InterruptedError:  # pragma: no cover - PEP 475 retries; kept for clarity
            return False
        if ready:
            self.drain()
            return True
        return False

    def drain(self) -> None:
        got = False
        for _ in range(_DRAIN_MAX):
            try:
                self._sock.recv(64)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                break
            got = True
        if got and (self._changed is None or not self._changed()):
            # One wake-up for nothing, however many datagrams it took.
            self._tokens = max(0.0, self._refill(time.monotonic()) - 1.0)

    def close(self) -> None:
        if self._pid == os.getpid():
            with contextlib.suppress(OSError):
                os.unlink(self._file)
        self._sock.close()
