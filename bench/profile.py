"""Profile the taskschedd daemon's drain and pickup paths with py-spy (from the peers venv).

py-spy samples the master and its workers (``--subprocesses``) in wall-clock mode
(``--idle``), so time blocked in fsync or select shows up too. The raw stacks are kept in
bench/results/profile-DATE/ (ignored by git); the summary (top functions by self and
inclusive share, per process role) goes into the results JSON.
"""

from __future__ import annotations

import os
import re
import signal
import time
from collections import Counter
from pathlib import Path
from typing import Any

from bench import common, tsd

_FRAME = re.compile(r"^(?P<fn>.*?) \((?P<file>[^():]+)(?::(?P<line>\d+))?\)$")
#: Leaf functions that mean "waiting for work", left out of the busy-only tables.
IDLE_LEAVES = {"select", "poll", "wait", "_wait", "sleep", "_tick"}


def _key(frame: str, line: bool = False) -> str:
    """``function (path)``, or ``function (path:line)``, with the install prefix cut."""
    m = _FRAME.match(frame.strip())
    if not m:
        return frame.strip()
    path = m["file"]
    if line and m["line"]:
        path += f":{m['line']}"
    for marker in ("site-packages/", "/lib/python3.11/", "/work/main/"):
        if marker in path:
            path = path.split(marker, 1)[1]
    return f"{m['fn']} ({path})"


def summarize(raw: Path, top: int = 15) -> dict[str, Any]:
    per_role: dict[str, dict[str, Counter[str]]] = {}
    totals: Counter[str] = Counter()
    busy_totals: Counter[str] = Counter()
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count_s = line.rpartition(" ")
        if not stack or not count_s.isdigit():
            continue
        count = int(count_s)
        frames = stack.split(";")
        frames = [f for f in frames if not f.startswith(("process ", "thread "))]
        if not frames:
            continue
        keys = [_key(f) for f in frames]
        # Workers are forked from the master: tell them apart by their loop, not their title.
        role = (
            "worker" if any("workerproc.py" in k and "_Loop.run" in k for k in keys) else "master"
        )
        leaf = keys[-1].split(" (", 1)[0].rsplit(".", 1)[-1]
        busy = leaf not in IDLE_LEAVES
        leaf_key = _key(frames[-1], line=True)
        r = per_role.setdefault(
            role,
            {"self": Counter(), "incl": Counter(), "busy_self": Counter(), "busy_incl": Counter()},
        )
        totals[role] += count
        r["self"][leaf_key] += count
        for k in set(keys):
            r["incl"][k] += count
        if busy:
            busy_totals[role] += count
            r["busy_self"][leaf_key] += count
            for k in set(keys):
                r["busy_incl"][k] += count
    out: dict[str, Any] = {}
    for role, r in per_role.items():
        total = totals[role] or 1
        busy_total = busy_totals[role] or 1
        out[role] = {
            "samples": totals[role],
            "busy_samples": busy_totals[role],
            "self_pct": [(k, round(100 * v / total, 1)) for k, v in r["self"].most_common(top)],
            "busy_incl_pct": [
                (k, round(100 * v / busy_total, 1)) for k, v in r["busy_incl"].most_common(top * 2)
            ],
            "busy_self_pct": [
                (k, round(100 * v / busy_total, 1)) for k, v in r["busy_self"].most_common(top)
            ],
        }
    return out


def _record(pyspy: Path, pid: int, out: Path, log: Path) -> Any:
    argv = [
        str(pyspy), "record", "--pid", str(pid), "--subprocesses", "--idle",
        "--nonblocking", "--rate", "250", "--format", "raw", "-o", str(out),
    ]  # fmt: skip
    return common.spawn(argv, log=log)


def _finish(proc: Any, out: Path) -> None:
    os.killpg(proc.pid, signal.SIGINT)  # py-spy writes its file on SIGINT
    common.wait_until(lambda: proc.poll() is not None, 30, "py-spy to write", 0.1)
    common.stop(proc, grace=1)


def run(workdir: Path, pyspy: Path, n: int, date: str) -> dict[str, Any]:
    if not pyspy.exists():
        return {"skipped": f"{pyspy} is missing"}
    outdir = common.REPO / "bench/results" / f"profile-{date}"
    outdir.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {"dir": str(outdir.relative_to(common.REPO))}

    # Drain: workers idle, py-spy attached, then n jobs in batches (drained as they come).
    stamps = workdir / "prof.stamps"
    os.environ[common.STAMP_ENV] = str(stamps)
    system = tsd.Taskschedd(workdir, tag="prof")
    system.reset()
    system.start()
    try:
        tsd.wait_workers(system)
        assert system.proc is not None
        raw = outdir / "drain.raw"
        spy = _record(pyspy, system.proc.pid, raw, workdir / "pyspy-drain.log")
        time.sleep(1.0)  # py-spy attaches to each process
        t0 = time.perf_counter()
        left = n
        while left > 0:
            k = min(common.BATCH, left)
            system.enqueue_noop_batch(k)
            left -= k
        common.wait_until(lambda: system.done() >= n, 600, f"{n} jobs done", 0.1)
        elapsed = time.perf_counter() - t0
        _finish(spy, raw)
        result["drain"] = {"jobs": n, "jobs_per_s": n / elapsed, **summarize(raw)}

        # Pickup: one job every 20 ms to idle workers.
        raw = outdir / "pickup.raw"
        spy = _record(pyspy, system.proc.pid, raw, workdir / "pyspy-pickup.log")
        time.sleep(1.0)
        count = 300
        for i in common.paced(count, 0.02):
            system.enqueue_stamp(f"p{i}", time.time())
        stamps_read = common.wait_stamps(stamps, lambda s: len(s) >= count, 60, "pickup jobs")
        _finish(spy, raw)
        result["pickup"] = {**common.latency_summary(stamps_read, "p"), **summarize(raw)}
    finally:
        system.stop()
        system.close()
    return result
