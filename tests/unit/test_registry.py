"""registry.is_dead: when a fresh entry of this host's node may be taken at once."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from dataclasses import replace

from taskschedd.model import NodeRecord
from taskschedd.registry import boot_time, is_dead, pid_namespace


def entry(pid: int, started: float, host: str | None = None) -> NodeRecord:
    """An entry written by a master of this host, pid namespace and boot."""
    now = time.time()
    return NodeRecord(name="n", host=host or socket.gethostname(), pid=pid, started=started,
                      heartbeat=now, instance="x", live_until=now + 15,
                      pid_ns=pid_namespace(), boot=boot_time())  # fmt: skip


def _gone_pid() -> int:
    with subprocess.Popen(["true"]) as proc:
        proc.wait()
    return proc.pid


def test_this_process_s_pid_namespace_and_boot_are_known() -> None:
    assert pid_namespace().startswith("pid:[")
    assert abs(boot_time() - boot_time()) < 0.1 and boot_time() < time.time()


def test_a_holder_in_another_pid_namespace_is_not_judged_by_its_pid() -> None:
    """A container sharing the hostname (unshare -p, hostNetwork pods): its pid names
    another process here, or none."""
    gone = entry(_gone_pid(), time.time() - 10)
    assert is_dead(gone)  # the same entry of this namespace: dead
    assert not is_dead(replace(gone, pid_ns="pid:[4026599999]"))
    assert not is_dead(replace(gone, pid_ns=""))  # taskschedd 0.4: the window only


def test_a_holder_of_another_boot_is_not_judged_by_its_pid() -> None:
    """Another machine with the same hostname (a cloned VM), same initial namespace."""
    gone = entry(_gone_pid(), time.time() - 10)
    assert not is_dead(replace(gone, boot=gone.boot - 3600))
    assert not is_dead(replace(gone, boot=0.0))


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


def test_a_holder_whose_pid_no_process_can_have_is_dead_not_an_error() -> None:
    """Another client's record may hold any integer: os.kill raised OverflowError."""
    for pid in (2**31, 10**20):
        assert is_dead(entry(pid, time.time() - 10))
