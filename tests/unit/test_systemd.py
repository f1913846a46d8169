"""sd_notify: real AF_UNIX datagram sockets (path and abstract), watchdog interval, no systemd."""

from __future__ import annotations

import os
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from taskschedd import systemd


@pytest.fixture
def notify_socket(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = tmp_path / "notify.sock"
    sock.bind(str(path))
    sock.settimeout(2)
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    yield sock
    sock.close()


def received(sock: socket.socket) -> list[str]:
    return sock.recv(4096).decode().split("\n")


def test_ready_status_watchdog(notify_socket: socket.socket) -> None:
    assert systemd.ready("serving 4 workers")
    assert received(notify_socket) == ["READY=1", "STATUS=serving 4 workers"]
    assert systemd.status("draining\n3 jobs left")
    assert received(notify_socket) == ["STATUS=draining 3 jobs left"]
    assert systemd.watchdog()
    assert received(notify_socket) == ["WATCHDOG=1"]
    assert systemd.stopping()
    assert received(notify_socket) == ["STOPPING=1"]


def test_ready_with_mainpid(notify_socket: socket.socket) -> None:
    assert systemd.ready(mainpid=1234)
    assert received(notify_socket) == ["READY=1", "MAINPID=1234"]


def test_reloading_sends_monotonic_usec(notify_socket: socket.socket) -> None:
    assert systemd.reloading()
    first, second = received(notify_socket)
    assert first == "RELOADING=1"
    key, _, value = second.partition("=")
    now = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert key == "MONOTONIC_USEC" and 0 < int(value) <= now


def test_notify_sends_one_datagram(notify_socket: socket.socket) -> None:
    assert systemd.notify("READY=1", "STATUS=x", "MAINPID=1")
    assert received(notify_socket) == ["READY=1", "STATUS=x", "MAINPID=1"]


def test_abstract_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"taskschedd-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(2)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert systemd.ready()
        assert received(sock) == ["READY=1"]


def test_no_env_returns_false(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert systemd.notify("READY=1") is False
    assert systemd.ready() is False
    assert systemd.watchdog() is False
    monkeypatch.setenv("NOTIFY_SOCKET", "")
    assert systemd.stopping() is False
    monkeypatch.setenv("NOTIFY_SOCKET", "vsock:2:1234")
    assert systemd.status("x") is False


def test_send_error_returns_false(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "nobody-listens.sock"))
    assert systemd.ready() is False
    monkeypatch.setenv("NOTIFY_SOCKET", "/" + "x" * 200)  # longer than sun_path
    assert systemd.ready() is False


def test_no_lines_sends_nothing(notify_socket: socket.socket) -> None:
    assert systemd.notify() is False


@pytest.mark.parametrize(
    ("usec", "pid", "expected"),
    [
        ("10000000", None, 5.0),
        ("3000000", "self", 1.5),
        ("3000000", "1", None),  # meant for another process
        ("3000000", "junk", None),
        ("0", None, None),
        ("abc", None, None),
        (None, None, None),
    ],
)
def test_watchdog_interval(
    monkeypatch: pytest.MonkeyPatch, usec: str | None, pid: str | None, expected: float | None
) -> None:
    if usec is None:
        monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    else:
        monkeypatch.setenv("WATCHDOG_USEC", usec)
    if pid is None:
        monkeypatch.delenv("WATCHDOG_PID", raising=False)
    else:
        monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()) if pid == "self" else pid)
    assert systemd.watchdog_interval() == expected
