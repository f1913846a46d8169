"""sd_notify(3) without libsystemd: readiness, status, reload and watchdog messages.

Every function is a no-op returning False outside systemd (no $NOTIFY_SOCKET) and never
raises: a daemon must not fail because its supervisor cannot be told something.
"""

from __future__ import annotations

import os
import socket
import time

__all__ = [
    "notify",
    "ready",
    "reloading",
    "status",
    "stopping",
    "watchdog",
    "watchdog_interval",
]


def _address() -> str | None:
    """The socket address from $NOTIFY_SOCKET; '@name' is an abstract socket."""
    addr = os.environ.get("NOTIFY_SOCKET", "")
    if addr.startswith("@"):
        return "\0" + addr[1:]
    if addr.startswith("/"):
        return addr
    return None  # unset, empty, or a transport we do not speak (vsock:)


def notify(*lines: str) -> bool:
    """Send the lines as one datagram; True when systemd got it."""
    addr = _address()
    if addr is None or not lines:
        return False
    data = "\n".join(lines).encode("utf-8", "replace")
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            # Never block: with the supervisor's queue full (a slow systemd, a listener that
            # does not read) a blocking sendto() would freeze the master's loop; a dropped
            # status line is harmless.
            sock.setblocking(False)
            sock.sendto(data, addr)
    except (OSError, ValueError):
        return False
    return True


def _one_line(text: str) -> str:
    return " ".join(text.splitlines())


def ready(status: str | None = None, *, mainpid: int | None = None) -> bool:
    """Start-up is complete (Type=notify); mainpid when a forked process reports."""
    lines = ["READY=1"]
    if status is not None:
        lines.append("STATUS=" + _one_line(status))
    if mainpid is not None:
        lines.append(f"MAINPID={mainpid}")
    return notify(*lines)


def status(text: str) -> bool:
    """Free-form status shown by systemctl status (one line)."""
    return notify("STATUS=" + _one_line(text))


def stopping() -> bool:
    """Shutdown began: systemd will not treat the coming exit as a crash."""
    return notify("STOPPING=1")


def reloading() -> bool:
    """A reload began (Type=notify-reload needs MONOTONIC_USEC); send ready() when done."""
    usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    return notify("RELOADING=1", f"MONOTONIC_USEC={usec}")


def watchdog() -> bool:
    """Keep-alive ping for WatchdogSec=."""
    return notify("WATCHDOG=1")


def watchdog_interval() -> float | None:
    """Seconds between watchdog() pings (half of WatchdogSec), None when not requested.

    $WATCHDOG_PID, when set, names the process the watchdog is meant for; other
    processes (a forked worker) must not ping.
    """
    pid = os.environ.get("WATCHDOG_PID")
    if pid:
        try:
            if int(pid) != os.getpid():
                return None
        except ValueError:
            return None
    try:
        usec = int(os.environ.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    if usec <= 0:
        return None
    return usec / 1_000_000 / 2
