"""Sampling a process group's resident memory from /proc (taskschedd.memwatch)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from taskschedd.memwatch import PAGE_SIZE, charged, group_rss, own_rss, size_text


def stat_line(pid: int, comm: str, pgrp: int, rss_pages: int) -> str:
    # proc(5): pid (comm) state ppid pgrp session ... rss is field 24
    rest = ["S", "1", str(pgrp)] + ["0"] * 18 + [str(rss_pages)] + ["0"] * 20
    return f"{pid} ({comm}) " + " ".join(rest) + "\n"


def test_sums_the_rss_of_every_process_of_each_group(tmp_path: Path) -> None:
    for pid, comm, pgrp, rss in [
        (10, "python3", 10, 100),
        (11, "odd) name (x", 10, 50),  # a command name may hold parentheses and spaces
        (12, "sleep", 12, 7),
        (13, "other", 99, 1000),
    ]:
        (tmp_path / str(pid)).mkdir()
        (tmp_path / str(pid) / "stat").write_text(stat_line(pid, comm, pgrp, rss))
    (tmp_path / "14").mkdir()  # gone meanwhile: no stat file
    (tmp_path / "self").mkdir()
    (tmp_path / "15").mkdir()
    (tmp_path / "15" / "stat").write_text("15 (short) S")  # truncated: skipped
    totals = group_rss([10, 12, 77], proc=str(tmp_path))
    assert totals == {10: 150 * PAGE_SIZE, 12: 7 * PAGE_SIZE, 77: 0}
    assert group_rss([], proc=str(tmp_path)) == {}
    assert group_rss([10], proc=str(tmp_path / "missing")) == {10: 0}


def test_a_child_in_the_group_counts() -> None:
    code = "b = bytearray(b'x') * (64 << 20); import sys; sys.stdout.write('ok\\n'); "
    code += "sys.stdout.flush(); sys.stdin.read()"
    child = subprocess.Popen(
        [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        process_group=0,
    )  # fmt: skip
    try:
        assert child.stdout is not None and child.stdout.readline() == b"ok\n"
        used = group_rss([child.pid])[child.pid]
        assert 64 << 20 < used < 256 << 20
        assert group_rss([os.getpgrp()])[os.getpgrp()] > 0
    finally:
        child.kill()
        child.wait()


def test_size_text() -> None:
    assert size_text(512 << 20) == "512 MiB"
    assert size_text(3 << 29) == "1.5 GiB"
    assert size_text((300 << 20) + 12345) == "300.0 MiB"
    assert size_text(2048) == "2 KiB"
    assert size_text(100) == "100 bytes"


def test_a_job_is_charged_what_its_group_holds_beyond_its_worker_at_its_start() -> None:
    mib = 1 << 20
    # A worker of 225 MiB (an earlier job's cache) runs a job that adds nothing.
    assert charged(225 * mib, 225 * mib) == 0
    # The job adds 100 MiB, itself or in a child of its group.
    assert charged(325 * mib, 225 * mib) == 100 * mib
    # The worker gave memory back meanwhile (the cache was freed): never below 0.
    assert charged(30 * mib, 225 * mib) == 0
    # No baseline told: the whole group.
    assert charged(325 * mib, 0) == 325 * mib


def test_own_rss_is_the_resident_count_group_rss_sums(tmp_path: Path) -> None:
    (tmp_path / "statm").write_text("5000 1234 300 10 0 900 0\n")
    assert own_rss(str(tmp_path / "statm")) == 1234 * PAGE_SIZE
    (tmp_path / "bad").write_text("5000\n")
    assert own_rss(str(tmp_path / "bad")) == 0
    assert own_rss(str(tmp_path / "missing")) == 0
    stat = Path("/proc/self/stat").read_bytes()
    rss = int(stat[stat.rfind(b")") + 2 :].split()[21]) * PAGE_SIZE  # what group_rss reads
    mine = own_rss()
    assert mine > 0 and abs(mine - rss) < 8 << 20  # the same count, moments apart
