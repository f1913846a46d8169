"""The SQLite store's wake-up sockets, attacked: another local user must not reach them,
and their owner must not be able to make a worker or the master burn CPU by flooding.

The sockets are found the way an attacker would: the unix sockets the daemon's processes
hold, by inode, in /proc/net/unix (paths, or ``@name`` for the abstract namespace)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from taskschedd import JobStatus, Scheduler
from tests.e2e.conftest import JOBS, Daemon
from tests.helpers import wait_for

CLK_TCK = os.sysconf("SC_CLK_TCK")
#: A flood this long, from the owner, may add at most this much CPU to what a process
#: uses idle over as long.
FLOOD_SECONDS = 3.0
FLOOD_CPU_BUDGET = 0.1


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def datagram_addresses(pid: int) -> list[bytes]:
    """The bound addresses of the unix datagram sockets a process holds."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    found = []
    with open("/proc/net/unix") as f:
        next(f)
        for line in f:
            fields = line.split()
            # Num RefCount Protocol Flags Type St Inode [Path]; Type 0002 = SOCK_DGRAM
            if len(fields) >= 8 and fields[6] in inodes and fields[4] == "0002":
                path = fields[7]
                found.append(b"\0" + path[1:].encode() if path.startswith("@") else path.encode())
    return found


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A directory every user may enter (0755): only the store's own protections count."""
    path = Path(tempfile.mkdtemp(prefix="tsd-wake-"))
    path.chmod(0o755)
    yield path
    subprocess.run(["rm", "-rf", str(path)], check=False)


def store_url(store_dir: Path) -> str:
    return f"sqlite://{store_dir}/taskschedd.db"


def node(daemon_factory: Callable[..., Daemon], store_dir: Path) -> tuple[Daemon, list[int]]:
    d = daemon_factory(
        store=store_url(store_dir),
        pm="static",
        min_children=2,
        max_children=2,
        poll_interval="5s",
    ).start()
    workers = d.wait_workers(2)
    wait_for(
        lambda: all(datagram_addresses(pid) for pid in (d.pid, *workers)),
        10,
        message="every process listening for wake-ups",
    )
    return d, workers


SEND_AS_OTHER = """
import json, socket, sys
out = {}
for address in json.loads(sys.argv[1]):
    raw = address.encode("latin-1")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        s.sendto(b"!", raw)
        out[address] = "sent"
    except OSError as exc:
        out[address] = exc.strerror or type(exc).__name__
    finally:
        s.close()
print(json.dumps(out))
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="sending as another user needs root")
def test_another_local_user_cannot_send_wake_ups(
    daemon_factory: Callable[..., Daemon], open_dir: Path
) -> None:
    d, workers = node(daemon_factory, open_dir)
    addresses = [a for pid in (d.pid, *workers) for a in datagram_addresses(pid)]
    assert len(addresses) >= 3, addresses  # the master's and each worker's
    python = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else None
    if python is None:
        pytest.skip("no system Python that user nobody can run")
    probe = subprocess.run(
        [python, "-c", SEND_AS_OTHER, json.dumps([a.decode("latin-1") for a in addresses])],
        user="nobody",
        capture_output=True,
        text=True,
        cwd="/",
        timeout=30,
    )
    assert probe.returncode == 0, probe.stderr
    results = json.loads(probe.stdout)
    assert "sent" not in results.values(), results
    assert d.running()


def test_a_flood_of_wake_ups_from_the_owner_costs_little_cpu(
    daemon_factory: Callable[..., Daemon], open_dir: Path
) -> None:
    d, workers = node(daemon_factory, open_dir)
    scheduler = Scheduler(store_url(open_dir))
    targets = [a for pid in (d.pid, *workers) for a in datagram_addresses(pid)]
    assert len(targets) >= 3, targets
    # Settle first: start-up work must not count.
    assert scheduler.add_job(f"{JOBS}.Sleep", {"seconds": 0}).wait(10).status == JobStatus.DONE
    pids = (d.pid, *workers)
    # What each process uses idle over as long (heartbeats, housekeeping; more on a loaded
    # machine) is its baseline: the budget is what the flood may add to it.
    before = {pid: cpu_seconds(pid) for pid in pids}
    time.sleep(FLOOD_SECONDS)
    idle = {pid: cpu_seconds(pid) - before[pid] for pid in pids}
    before = {pid: cpu_seconds(pid) for pid in pids}
    tries = sent = 0
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.setblocking(False)
        deadline = time.monotonic() + FLOOD_SECONDS
        while time.monotonic() < deadline:
            for address in targets:
                tries += 1
                try:
                    s.sendto(b"!", address)
                    sent += 1
                except BlockingIOError:
                    pass  # its queue is full: nobody read it yet
            time.sleep(0.0002)
    used = {pid: cpu_seconds(pid) - before[pid] for pid in pids}
    assert tries > 1000, tries
    assert all(used[pid] < idle[pid] + FLOOD_CPU_BUDGET for pid in pids), (tries, sent, used, idle)
    # Wake-ups still work: an idle node picks a new job up well before its poll interval.
    started = time.monotonic()
    job = scheduler.add_job(f"{JOBS}.Sleep", {"seconds": 0})
    assert job.wait(10).status == JobStatus.DONE
    assert time.monotonic() - started < 2.0
    assert d.running() and sorted(d.workers()) == sorted(workers)
    scheduler.close()
