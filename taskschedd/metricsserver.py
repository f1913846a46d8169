"""The master's HTTP endpoint for ``GET /metrics``: one thread, one selector loop, and
hard bounds, so that no client (or crowd of clients) can hurt the master it lives in.

- One thread whatever the load: sockets are non-blocking and served by a poll loop.
- At most ``max_connections`` open at once; a new one evicts the oldest, so a crowd of
  idle or half-open connections cannot lock a scraper out.
- Each connection has ``timeout`` seconds to send its request and as many again to take
  the answer, counted from its start (a client trickling bytes gains nothing); then it
  is closed. One request per connection (``Connection: close``); requests are at most
  ``MAX_REQUEST`` bytes.
- File descriptors: the endpoint only accepts while the process has at least
  ``fd_reserve`` descriptors to spare beyond the ones it uses, so the master's store,
  pipes and workers always find theirs. Out of descriptors (EMFILE, ENFILE) or buffers
  on accept, it stops listening for a while (connections wait in the kernel's backlog)
  instead of spinning or dying.
- Clients that go away are closed quietly: one debug line each (rate-limited), never a
  traceback.

Forked workers close their copies of every socket (see ``_close_in_children``).
"""

from __future__ import annotations

import contextlib
import errno
import os
import resource
import selectors
import socket
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any

from taskschedd.errors import TaskSchedError
from taskschedd.log import get_logger
from taskschedd.metrics import CONTENT_TYPE

__all__ = [
    "FD_RESERVE",
    "MAX_CONNECTIONS",
    "MAX_REQUEST",
    "TIMEOUT",
    "MetricsServer",
]

#: Open connections at most (the endpoint's own descriptors: this many plus its listener).
MAX_CONNECTIONS = 16
#: Seconds a connection has to send its request, and again to take the answer.
TIMEOUT = 5.0
#: Descriptors the process must still have free for the endpoint to accept another.
FD_RESERVE = 32
#: Largest request (request line and headers) read, in bytes.
MAX_REQUEST = 8192
#: How long the endpoint stops listening after accept() found no descriptor (doubling).
PAUSE_MIN, PAUSE_MAX = 0.1, 2.0
#: Longest wait of the loop (how soon it sees close()).
_TICK = 0.25
#: After the answer, how long to wait for the client's end before closing (so that unread
#: request bytes do not make the kernel reset the connection before the answer is read).
_LINGER = 1.0
_ACCEPT_BATCH = 16
#: At most this many debug lines about clients per _NOTE_WINDOW seconds.
_NOTES_PER_WINDOW, _NOTE_WINDOW = 20, 10.0
_OUT_OF_FDS = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)
_REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
}

_READING, _WRITING, _LINGERING = "reading", "writing", "lingering"


class _Conn:
    __slots__ = ("deadline", "inbuf", "out", "sock", "started", "state")

    def __init__(self, sock: socket.socket, now: float, timeout: float) -> None:
        self.sock = sock
        self.started = now
        self.deadline = now + timeout
        self.state = _READING
        self.inbuf = bytearray()
        self.out = memoryview(b"")


def free_fds() -> int | None:
    """How many more descriptors this process may open (None when /proc cannot tell)."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return None
    try:
        used = len(os.listdir("/proc/self/fd")) - 1  # the listing's own descriptor
    except OSError:
        return None
    return soft - used


class MetricsServer:
    """Serves ``GET /metrics`` from *collect* in one daemon thread until :meth:`close`.

    *listen* is (host, port) as in MetricsConfig.address; port 0 picks a free port (see
    :attr:`address`). A port that cannot be bound is a TaskSchedError naming it.
    """

    def __init__(
        self,
        listen: tuple[str, int],
        collect: Callable[[], str],
        *,
        max_connections: int = MAX_CONNECTIONS,
        timeout: float = TIMEOUT,
        fd_reserve: int = FD_RESERVE,
    ) -> None:
        self.collect = collect
        self.max_connections = max(1, max_connections)
        self.timeout = timeout
        self.fd_reserve = fd_reserve
        self.log: Any = get_logger("taskschedd.metrics")
        self.listener = _bind(*listen)
        host, port = self.listener.getsockname()[:2]
        self._address = (str(host), int(port))
        self._conns: dict[int, _Conn] = {}
        self._selector = selectors.PollSelector()  # no descriptor of its own, unlike epoll
        self._selector.register(self.listener, selectors.EVENT_READ, None)
        self._listening = True
        self._pause = 0.0
        self._resume_at = 0.0
        self._warned_at = -1e9
        self._notes: list[float] = []
        self._suppressed = 0
        self._stop = threading.Event()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="taskschedd-metrics", daemon=True)
        self._thread.start()
        _close_in_children(self)

    @property
    def address(self) -> tuple[str, int]:
        """The bound (host, port)."""
        return self._address

    @property
    def url(self) -> str:
        host, port = self.address
        return f"http://{_show(host, port)}/metrics"

    @property
    def connections(self) -> int:
        """Connections open now."""
        return len(self._conns)

    def close(self) -> None:
        """Stop serving and release the port; safe to call twice."""
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout=5)
        if self._thread.is_alive():
            return  # stuck in collect(); it closes everything when it gets out
        self._close_all()

    def __enter__(self) -> MetricsServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the loop --------------------------------------------------------------------------
    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                try:
                    self._step()
                except Exception as exc:  # a bug here must not end the endpoint, nor spin
                    self.log.error("metrics endpoint error", error=f"{type(exc).__name__}: {exc}")
                    self._stop.wait(0.5)
        finally:
            if self._closed:
                self._close_all()

    def _step(self) -> None:
        now = time.monotonic()
        wait = _TICK
        if self._conns:
            wait = min(wait, min(c.deadline for c in self._conns.values()) - now)
        if not self._listening:
            wait = min(wait, self._resume_at - now)
        events = self._selector.select(max(0.0, wait))
        for key, mask in events:
            if key.data is None:
                self._accept()
                continue
            conn = self._conns.get(key.fd)
            if conn is None or conn.sock is not key.fileobj:
                continue
            try:
                if mask & selectors.EVENT_READ:
                    self._read(conn)
                elif mask & selectors.EVENT_WRITE:
                    self._write(conn)
            except OSError as exc:  # reset, broken pipe, ...: the client went away
                self._note("metrics client went away", conn, error=_reason(exc))
                self._drop(conn)
        now = time.monotonic()
        for conn in [c for c in self._conns.values() if c.deadline <= now]:
            if conn.state != _LINGERING:
                self._note("metrics connection timed out", conn, state=conn.state)
            self._drop(conn)
        if not self._listening and now >= self._resume_at:
            self._listen(True)

    # -- accepting ------------------------------------------------------------------------
    def _accept(self) -> None:
        spare = free_fds()
        allowed = _ACCEPT_BATCH if spare is None else min(_ACCEPT_BATCH, spare - self.fd_reserve)
        if allowed <= 0:
            self._out_of_fds(f"fewer than {self.fd_reserve} file descriptors to spare")
            return
        for _ in range(allowed):
            try:
                sock, _peer = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                if exc.errno in _OUT_OF_FDS:
                    self._out_of_fds(_reason(exc))
                    return
                break  # ECONNABORTED and the like: that client is gone already
            if len(self._conns) >= self.max_connections:
                self._evict()
            sock.setblocking(False)
            conn = _Conn(sock, time.monotonic(), self.timeout)
            self._conns[sock.fileno()] = conn
            self._selector.register(sock, selectors.EVENT_READ, conn)
        self._pause = 0.0

    def _evict(self) -> None:
        """Make room: drop the oldest connection still sending its request, else the
        oldest of all."""
        conns = list(self._conns.values())
        reading = [c for c in conns if c.state == _READING]
        victim = min(reading or conns, key=lambda c: c.started)
        self._note("metrics connection dropped: too many open", victim)
        self._drop(victim)

    def _out_of_fds(self, reason: str) -> None:
        """Stop listening for a while; pending connections wait in the kernel's backlog."""
        self._pause = min(PAUSE_MAX, max(PAUSE_MIN, self._pause * 2))
        self._resume_at = time.monotonic() + self._pause
        self._listen(False)
        now = time.monotonic()
        if now - self._warned_at >= 60.0:
            self._warned_at = now
            self.log.warning(
                "metrics endpoint paused: too few file descriptors",
                reason=reason,
                pause=self._pause,
                hint="raise LimitNOFILE (ulimit -n); the master keeps its own",
            )

    def _listen(self, on: bool) -> None:
        if on == self._listening:
            return
        self._listening = on
        if on:
            self._selector.register(self.listener, selectors.EVENT_READ, None)
        else:
            self._selector.unregister(self.listener)

    # -- one connection ---------------------------------------------------------------------
    def _read(self, conn: _Conn) -> None:
        data = conn.sock.recv(4096)
        if conn.state == _LINGERING:
            if not data:
                self._drop(conn)
            return
        if not data:
            self._drop(conn)  # closed before asking anything
            return
        conn.inbuf += data
        end = conn.inbuf.find(b"\r\n\r\n")
        if end < 0:
            end = conn.inbuf.find(b"\n\n")
        if end < 0:
            if len(conn.inbuf) > MAX_REQUEST:
                self._answer(conn, 431, b"request too large\n", "GET")
            return
        if end > MAX_REQUEST:
            self._answer(conn, 431, b"request too large\n", "GET")
            return
        self._respond(conn, bytes(conn.inbuf[:end]))

    def _respond(self, conn: _Conn, head: bytes) -> None:
        line = head.split(b"\n", 1)[0].strip()
        parts = line.split()
        if len(parts) != 3 or not parts[2].startswith(b"HTTP/"):
            self._answer(conn, 400, b"bad request\n", "GET")
            return
        method, target = parts[0].decode("latin-1"), parts[1].decode("latin-1")
        if method not in ("GET", "HEAD"):
            self._answer(conn, 405, b"only GET and HEAD\n", method, allow="GET, HEAD")
            return
        if target.split("?", 1)[0] != "/metrics":
            self._answer(conn, 404, b"not found; metrics are at /metrics\n", method)
            return
        try:
            body = self.collect().encode("utf-8")
        except Exception as exc:  # a bug in collect must not kill the endpoint
            self._answer(conn, 500, f"collecting metrics failed: {exc}\n".encode(), method)
            return
        self._answer(conn, 200, body, method, content_type=CONTENT_TYPE)

    def _answer(
        self,
        conn: _Conn,
        code: int,
        body: bytes,
        method: str,
        *,
        content_type: str = "text/plain; charset=utf-8",
        allow: str | None = None,
    ) -> None:
        headers = [
            f"HTTP/1.1 {code} {_REASONS[code]}",
            "Server: taskschedd",
            f"Content-Type: {content_type}",
            f"Content-Length: {len(body)}",
            "Cache-Control: no-store",
            "Connection: close",
        ]
        if allow:
            headers.append(f"Allow: {allow}")
        data = ("\r\n".join(headers) + "\r\n\r\n").encode("latin-1")
        if method != "HEAD":
            data += body
        conn.inbuf = bytearray()
        conn.out = memoryview(data)
        conn.state = _WRITING
        conn.deadline = time.monotonic() + self.timeout
        self._selector.modify(conn.sock, selectors.EVENT_WRITE, conn)
        self._write(conn)

    def _write(self, conn: _Conn) -> None:
        if conn.state != _WRITING:
            return
        while conn.out:
            try:
                sent = conn.sock.send(conn.out)
            except (BlockingIOError, InterruptedError):
                return
            conn.out = conn.out[sent:]
        # All sent: half-close and wait briefly for the client's end.
        conn.state = _LINGERING
        conn.deadline = time.monotonic() + _LINGER
        with contextlib.suppress(OSError):
            conn.sock.shutdown(socket.SHUT_WR)
        self._selector.modify(conn.sock, selectors.EVENT_READ, conn)

    def _drop(self, conn: _Conn) -> None:
        fd = conn.sock.fileno()
        if self._conns.get(fd) is conn:
            del self._conns[fd]
        with contextlib.suppress(KeyError, ValueError):
            self._selector.unregister(conn.sock)
        with contextlib.suppress(OSError):
            conn.sock.close()

    def _note(self, event: str, conn: _Conn, **fields: Any) -> None:
        """One debug line about a client, at most _NOTES_PER_WINDOW per window."""
        now = time.monotonic()
        self._notes = [t for t in self._notes if now - t < _NOTE_WINDOW]
        if len(self._notes) >= _NOTES_PER_WINDOW:
            self._suppressed += 1
            return
        self._notes.append(now)
        if self._suppressed:
            fields["suppressed_before"] = self._suppressed
            self._suppressed = 0
        self.log.debug(event, age=round(now - conn.started, 3), **fields)

    def _close_all(self) -> None:
        for conn in list(self._conns.values()):
            self._drop(conn)
        with contextlib.suppress(OSError):
            self.listener.close()
        with contextlib.suppress(Exception):
            self._selector.close()

    def _close_in_child(self) -> None:
        """After fork: close this process's copies; the serving thread is not here."""
        self._closed = True
        self._stop.set()
        for conn in list(self._conns.values()):
            with contextlib.suppress(OSError):
                conn.sock.close()
        self._conns = {}
        with contextlib.suppress(OSError):
            self.listener.close()


def _bind(host: str, port: int) -> socket.socket:
    try:
        family = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM)[0][0]
        if not host:
            family = socket.AF_INET  # ":port": every IPv4 address
        sock = socket.socket(family, socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:
        raise _cannot_serve(host, port, exc) from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(64)
        sock.setblocking(False)
    except (OSError, UnicodeError) as exc:
        sock.close()
        raise _cannot_serve(host, port, exc) from None
    return sock


def _cannot_serve(host: str, port: int, exc: BaseException) -> TaskSchedError:
    reason = getattr(exc, "strerror", None) or str(exc)
    return TaskSchedError(
        f"cannot serve metrics on {_show(host, port)}: {reason}; "
        "change metrics.listen or stop what uses the port"
    )


def _reason(exc: OSError) -> str:
    return exc.strerror or type(exc).__name__


def _show(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _close_in_children(server: MetricsServer) -> None:
    """Forked workers must not keep the endpoint's sockets open (the listener would hold
    the port after the master exits); the serving thread does not exist in them anyway."""
    ref = weakref.ref(server)

    def after_fork() -> None:
        live = ref()
        if live is not None and not live._closed:
            live._close_in_child()

    if hasattr(os, "register_at_fork"):
        os.register_at_fork(after_in_child=after_fork)
