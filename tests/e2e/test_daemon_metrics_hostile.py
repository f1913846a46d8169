"""The metrics endpoint under hostile clients, against the real daemon: half-open
connections, a connection flood under a low descriptor limit, made-up job classes,
clients that reset the connection. None of it may hurt the master."""

from __future__ import annotations

import os
import resource
import signal
import socket
import struct
import time
from collections.abc import Callable, Iterator

import pytest

from taskschedd import JobStatus, Scheduler
from taskschedd.metricsserver import MAX_CONNECTIONS, TIMEOUT
from tests.e2e.conftest import JOBS, Daemon
from tests.e2e.test_daemon_metrics import free_port, scrape
from tests.helpers import elapsed, wait_for

CLK_TCK = os.sysconf("SC_CLK_TCK")


def threads(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


def fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (all its threads), from /proc/PID/stat."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def closed_by_peer(sock: socket.socket) -> bool:
    """True once the server closed (or reset) this connection; never blocks."""
    try:
        return sock.recv(1, socket.MSG_DONTWAIT) == b""
    except BlockingIOError:
        return False
    except ConnectionError:
        return True


def fetch(port: int) -> bytes:
    """GET /metrics with a plain socket: the whole answer (headers and body)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


@pytest.fixture
def clients() -> Iterator[list[socket.socket]]:
    socks: list[socket.socket] = []
    yield socks
    for s in socks:
        s.close()


def metrics_daemon(factory: Callable[..., Daemon], **config: object) -> tuple[Daemon, int]:
    port = free_port()
    d = factory(metrics={"listen": f"127.0.0.1:{port}"}, **config).start()
    wait_for(lambda: scrape(port), 5, message=f"metrics on port {port}")
    return d, port


def test_300_half_open_connections_cost_no_threads_and_are_closed_after_the_timeout(
    daemon_factory: Callable[..., Daemon], scheduler: Scheduler, clients: list[socket.socket]
) -> None:
    d, port = metrics_daemon(daemon_factory)
    d.wait_workers(1)
    threads_before, fds_before = threads(d.pid), fds(d.pid)
    for _ in range(300):  # connect, never send a request
        clients.append(socket.create_connection(("127.0.0.1", port), timeout=5))

    samples, took = elapsed(lambda: scrape(port))
    assert samples is not None and took < 2.0, took  # a scraper still gets in, at once
    assert scheduler.add_job(f"{JOBS}.Sleep", {"seconds": 0}).wait(10).status == JobStatus.DONE
    assert threads(d.pid) <= threads_before
    assert fds(d.pid) <= fds_before + MAX_CONNECTIONS + 2

    # The server drops every one of them: at once when evicted, after its timeout else.
    wait_for(
        lambda: all(closed_by_peer(s) for s in clients),
        TIMEOUT + 5,
        message=lambda: f"{sum(not closed_by_peer(s) for s in clients)} connections still open",
    )
    assert fds(d.pid) <= fds_before + 2
    assert d.running()


def test_a_connection_flood_under_a_low_descriptor_limit_does_not_hurt_the_master(
    daemon_factory: Callable[..., Daemon], scheduler: Scheduler, clients: list[socket.socket]
) -> None:
    d, port = metrics_daemon(daemon_factory, min_children=2, pm="static")
    workers = d.wait_workers(2)
    # Room for the master's own work and a little more; far less than the flood needs.
    limit = fds(d.pid) + 40
    resource.prlimit(d.pid, resource.RLIMIT_NOFILE, (limit, limit))
    cpu_before, started = cpu_seconds(d.pid), time.monotonic()
    for _ in range(300):
        try:
            clients.append(socket.create_connection(("127.0.0.1", port), timeout=2))
        except OSError:
            break  # the backlog is full: the master is not accepting for now
    # The master keeps doing its own work: a replacement worker, jobs, heartbeats.
    os.kill(workers[0], signal.SIGKILL)
    wait_for(lambda: workers[0] not in d.workers() and len(d.workers()) == 2, 10)
    done = [scheduler.add_job(f"{JOBS}.Sleep", {"seconds": 0}) for _ in range(5)]
    assert all(p.wait(10).status == JobStatus.DONE for p in done)
    assert fds(d.pid) < limit
    # ... without spinning on a listener it cannot serve.
    busy = cpu_seconds(d.pid) - cpu_before
    assert busy < 0.5 * (time.monotonic() - started) + 0.5, busy
    for s in clients:
        s.close()
    clients.clear()
    wait_for(lambda: scrape(port), TIMEOUT + 5, message="metrics served again")
    assert d.running()
    assert d.logged("metrics endpoint paused: too few file descriptors")
    assert "Traceback" not in d.stderr_path.read_text()


def test_made_up_job_classes_do_not_grow_the_metrics(
    daemon_factory: Callable[..., Daemon], scheduler: Scheduler
) -> None:
    d, port = metrics_daemon(daemon_factory, max_children=4)
    base = len(fetch(port))
    jobs = [scheduler.add_job(f"{JOBS}.Sleep", {"seconds": 0})]
    # In an allowed module but no such class, and in a module that is not allowed.
    jobs += [scheduler.add_job(f"{JOBS}.NoSuchClass{i}_{'x' * 60}") for i in range(150)]
    jobs += [scheduler.add_job(f"elsewhere.jobs.Made{i}_{'y' * 60}") for i in range(150)]
    for p in jobs:
        p.wait(30)
    assert [p.status for p in jobs[1:]] == [JobStatus.FAILED] * 300

    def counted() -> bytes | None:
        text = fetch(port)
        failed = sum(
            float(line.rsplit(b" ", 1)[1])
            for line in text.splitlines()
            if line.startswith(b"taskschedd_jobs_total{") and b'outcome="failed"' in line
        )
        return text if failed == 300 else None

    body = wait_for(counted, 5, message=lambda: fetch(port).decode(errors="replace")[-3000:])
    assert body is not None
    assert len(body) < base + 40_000, len(body)  # 300 classes of their own: about 1 MB
    assert f'class="{JOBS}.Sleep",outcome="done"}} 1'.encode() in body
    assert b'class="other",outcome="failed"} 290' in body  # all but 10 not seen to run
    assert d.running()


def test_clients_that_reset_the_connection_leave_no_traceback(
    daemon_factory: Callable[..., Daemon],
) -> None:
    d, port = metrics_daemon(daemon_factory)
    linger_reset = struct.pack("ii", 1, 0)  # close() sends RST
    for i in range(60):
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger_reset)
        if i % 3 == 0:
            s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        elif i % 3 == 1:
            s.sendall(b"GET /metr")
        else:  # asked, and read a little of the answer
            s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            s.recv(10)
        s.close()
    assert scrape(port) is not None
    assert d.running()
    logs = d.stderr_path.read_text() + d.log_path.read_text()
    assert "Traceback" not in logs
    assert "Exception occurred" not in logs
    for event in d.events():
        assert event.get("level") in ("debug", "info"), event
