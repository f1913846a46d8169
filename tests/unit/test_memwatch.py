"""Sampling a process group's resident memory from /proc (taskschedd.memwatch)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from taskschedd.memwatch import PAGE_SIZE, group_rss, size_text


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
