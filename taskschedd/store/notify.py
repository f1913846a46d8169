"""Wake-ups between processes on one host, for the SQLite store.

Each waiting process binds an abstract-namespace datagram socket and drops an empty
file naming it into a directory beside the database; a writer sends one byte to every
name it finds there after a commit. Wake-ups are hints: losing one costs at most a
poll interval, never a job. Abstract sockets sidestep the 108-byte path limit and
leave nothing behind when a process dies; stale names are removed by the first writer
that gets ECONNREFUSED.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import select
import socket
import time

from taskschedd.store.base import Waker

_PREFIX = b"\0taskschedd-"
_RACY_WINDOW = 0.05  # seconds: well above the kernel's timestamp granularity (1-10 ms)


class NotifyDir:
    """Posts wake-ups to every process listening on one database."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._sock: socket.socket | None = None
        self._pid = -1
        # The listeners as last listed, and the directory's (inode, mtime) they are
        # valid for: a post costs one stat, not a listdir, while nobody comes or goes.
        self._names: list[tuple[str, bytes]] = []
        self._seen: tuple[int, int] | None = None

    def _sender(self) -> socket.socket:
        if self._sock is None or self._pid != os.getpid():
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            self._sock.setblocking(False)
            self._pid = os.getpid()
        return self._sock

    def _listeners(self) -> list[tuple[str, bytes]]:
        before = time.time()
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            self._seen = None
            return []
        key = (st.st_ino, st.st_mtime_ns)
        if key == self._seen:
            return self._names
        try:
            names = os.listdir(self.path)
        except FileNotFoundError:
            self._seen = None
            return []
        self._names = [(name, _PREFIX + name.encode()) for name in names]
        # Directory times come from a coarse clock: a listener arriving in the same tick
        # as the one this listing saw would leave the mtime unchanged. Trust the listing
        # only once its mtime is clearly older than the listing itself.
        self._seen = key if before - st.st_mtime_ns / 1e9 > _RACY_WINDOW else None
        return self._names

    def post(self) -> None:
        listeners = self._listeners()
        if not listeners:
            return
        sock = self._sender()
        for name, address in listeners:
            try:
                sock.sendto(b"!", address)
            except BlockingIOError:
                pass  # its buffer is full: a wake-up is already pending
            except OSError as exc:
                if exc.errno in (errno.ECONNREFUSED, errno.ENOENT):
                    with contextlib.suppress(OSError):
                        os.unlink(os.path.join(self.path, name))
                    self._seen = None  # list again next time

    def listen(self) -> SocketWaker:
        os.makedirs(self.path, mode=0o700, exist_ok=True)
        return SocketWaker(self.path)

    def close(self) -> None:
        if self._sock is not None and self._pid == os.getpid():
            self._sock.close()
        self._sock = None


class SocketWaker(Waker):
    def __init__(self, directory: str) -> None:
        self._name = f"{os.getpid()}-{secrets.token_hex(6)}"
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.bind(_PREFIX + self._name.encode())
        self._sock.setblocking(False)
        self._file = os.path.join(directory, self._name)
        fd = os.open(self._file, os.O_CREAT | os.O_WRONLY, 0o600)
        os.close(fd)
        self._pid = os.getpid()

    def fileno(self) -> int:
        return self._sock.fileno()

    def wait(self, timeout: float | None) -> bool:
        try:
            ready, _, _ = select.select([self._sock], [], [], timeout)
        except InterruptedError:  # pragma: no cover - PEP 475 retries; kept for clarity
            return False
        if ready:
            self.drain()
            return True
        return False

    def drain(self) -> None:
        while True:
            try:
                self._sock.recv(64)
            except (BlockingIOError, InterruptedError):
                return

    def close(self) -> None:
        if self._pid == os.getpid():
            with contextlib.suppress(OSError):
                os.unlink(self._file)
        self._sock.close()
