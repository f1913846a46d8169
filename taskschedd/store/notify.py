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

from taskschedd.store.base import Waker

_PREFIX = b"\0taskschedd-"


class NotifyDir:
    """Posts wake-ups to every process listening on one database."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._sock: socket.socket | None = None
        self._pid = -1

    def _sender(self) -> socket.socket:
        if self._sock is None or self._pid != os.getpid():
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            self._sock.setblocking(False)
            self._pid = os.getpid()
        return self._sock

    def post(self) -> None:
        try:
            entries = os.listdir(self.path)
        except FileNotFoundError:
            return
        sock = self._sender()
        for name in entries:
            try:
                sock.sendto(b"!", _PREFIX + name.encode())
            except BlockingIOError:
                pass  # its buffer is full: a wake-up is already pending
            except OSError as exc:
                if exc.errno in (errno.ECONNREFUSED, errno.ENOENT):
                    with contextlib.suppress(OSError):
                        os.unlink(os.path.join(self.path, name))

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
