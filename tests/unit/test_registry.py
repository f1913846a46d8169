"""registry.is_dead: when a fresh entry of this host's node may be taken at once."""

from __future__ import annotations

import os
import socket
import subprocess
import time

from taskschedd.model import NodeRecord
from taskschedd.registry import is_dead


def entry(pid: int, started: float, host: str | None = None) -> NodeRecord:
    now = time.time()
    return NodeRecord(name="n", host=host or socket.gethostname(), pid=pid, started=started,
                      heartbeat=now, instance="x")  # fmt: skip


def test_a_live_master_of_this_host_is_not_dead() -> None:
    assert not is_dead(entry(os.getppid(), time.time()))


def test_a_master_whose_process_is_gone_is_dead() -> None:
    with subprocess.Popen(["true"]) as proc:
        proc.wait()
    assert is_dead(entry(proc.pid, time.time() - 10))


def test_a_pid_now_used_by_a_process_started_after_the_master_is_dead() -> None:
    with subprocess.Popen(["sleep", "30"]) as proc:
        try:
            assert is_dead(entry(proc.pid, time.time() - 100))  # the pid was reused
            assert not is_dead(entry(proc.pid, time.time() + 5))
        finally:
            proc.kill()


def test_a_node_of_another_host_is_never_known_dead() -> None:
    with subprocess.Popen(["true"]) as proc:
        proc.wait()
    assert not is_dead(entry(proc.pid, time.time() - 10, host="elsewhere.example"))
