"""The master's Prometheus endpoint, scraped from the running daemon: job outcomes,
durations, workers, queue depth; workers do not hold its socket; SIGHUP moves it."""

from __future__ import annotations

import os
import re
import signal
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Callable

from taskschedd import JobStatus, Scheduler
from tests.e2e.conftest import BOTH_STORES, JOBS, Daemon
from tests.helpers import wait_for

pytestmark = BOTH_STORES

SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{.*\})? (\S+)$")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def scrape(port: int) -> dict[str, float] | None:
    """Samples by series text (``name{labels}``), or None while nothing serves the port."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as resp:
            text = resp.read().decode()
    except (urllib.error.URLError, ConnectionError):
        return None
    samples = {}
    for line in text.splitlines():
        match = SAMPLE.match(line)
        if match and not line.startswith("#"):
            samples[match[1] + (match[2] or "")] = float(match[3])
    return samples


def series(name: str, **labels: str) -> str:
    if not labels:
        return name
    return name + "{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "}"


def listening_inode(port: int) -> str:
    """The inode of the socket listening on 127.0.0.1:port (from /proc/net/tcp)."""
    with open("/proc/net/tcp") as f:
        for line in f.readlines()[1:]:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state == "0A" and local == f"0100007F:{port:04X}":
                return inode
    raise AssertionError(f"nothing listens on 127.0.0.1:{port}")


def holds_socket(pid: int, inode: str) -> bool:
    target = f"socket:[{inode}]"
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}") == target:
                return True
        except OSError:
            continue
    return False


def test_metrics_count_outcomes_durations_workers_and_queue_depth(
    daemon_factory: Callable[..., Daemon], scheduler: Scheduler
) -> None:
    port = free_port()
    later = time.time() + 3600
    for _ in range(2):  # waiting in a served queue, due in an hour
        scheduler.add_job(f"{JOBS}.Sleep", {"seconds": 0}, queue="later", at=later)
    d = daemon_factory(
        min_children=2, queues=["default", "later"], metrics={"listen": f"127.0.0.1:{port}"}
    ).start()
    done = scheduler.add_job(f"{JOBS}.Sleep", {"seconds": 0})
    failed = scheduler.add_job(f"{JOBS}.Fail")
    timed_out = scheduler.add_job(f"{JOBS}.Sleep", {"seconds": 30}, timeout=0.5)
    assert done.wait(10).status == JobStatus.DONE
    assert failed.wait(10).status == JobStatus.FAILED
    assert timed_out.wait(10).status == JobStatus.TIMEOUT

    sleep, fail = f"{JOBS}.Sleep", f"{JOBS}.Fail"
    expected = {
        series("taskschedd_jobs_total", **{"class": sleep, "outcome": "done"}): 1.0,
        series("taskschedd_jobs_total", **{"class": fail, "outcome": "failed"}): 1.0,
        series("taskschedd_jobs_total", **{"class": sleep, "outcome": "timeout"}): 1.0,
        series("taskschedd_job_duration_seconds_count", **{"class": sleep}): 2.0,
        series("taskschedd_job_duration_seconds_count", **{"class": fail}): 1.0,
        series("taskschedd_workers", state="busy"): 0.0,
        series("taskschedd_workers", state="idle"): 2.0,  # the timed-out worker replaced
        series("taskschedd_queue_depth", queue="later"): 2.0,
    }

    def settled() -> dict[str, float] | None:
        samples = scrape(port) or {}
        seen = {key: samples.get(key) for key in expected}
        return samples if seen == expected else None

    samples = wait_for(settled, 5, message=lambda: f"{expected} in {scrape(port)}")
    assert samples is not None
    timeout_run = samples[series("taskschedd_job_duration_seconds_sum", **{"class": sleep})]
    assert 0.5 <= timeout_run < 10  # the timed-out run lasted at least its timeout
    assert samples[series("taskschedd_lease_reaps_total")] == 0

    # The master serves; its forked workers do not hold the listening socket.
    inode = listening_inode(port)
    assert holds_socket(d.pid, inode)
    workers = d.wait_workers(2)
    assert not any(holds_socket(pid, inode) for pid in workers)


def test_sighup_moves_the_endpoint_and_exit_closes_it(
    daemon_factory: Callable[..., Daemon],
) -> None:
    old, new = free_port(), free_port()
    d = daemon_factory(metrics={"listen": f"127.0.0.1:{old}"}).start()
    wait_for(lambda: scrape(old), 5, message=f"metrics on port {old}")
    d.write_config(metrics={"listen": f"127.0.0.1:{new}"})
    d.signal(signal.SIGHUP)
    wait_for(lambda: scrape(new), 5, message=f"metrics on port {new}")
    assert scrape(old) is None
    d.signal(signal.SIGTERM)
    assert d.wait_exit(10) == 0
    assert scrape(new) is None
