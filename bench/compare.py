"""taskschedd against an older taskschedd, side by side in one run.

    .venv/bin/python bench/compare.py --base 0.2.0-commit [--reps 5] [-n 5000]

Checks the base commit out into a scratch git worktree and runs the taskschedd daemon's
drain, pickup latency and enqueue figures (bench/run.py --only drain,latency --systems
taskschedd) for the base and for this tree, alternating which goes first in each
repetition, with the same Python and dependencies (this venv). Prints and writes
(bench/results/compare-DATE.{json,md}) the median of each figure and the ratio
this/base. Shared machines are noisy: read the ratios, not the absolute figures.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
FIGURES = {
    "drain_jobs_per_s": ("drain jobs/s", True),
    "enqueue_one_per_s": ("enqueue 1/call jobs/s", True),
    "enqueue_batch_per_s": ("enqueue batch jobs/s", True),
    "p50_ms": ("pickup p50 ms", False),
    "p99_ms": ("pickup p99 ms", False),
}


def git(*args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(REPO), *args], check=True, capture_output=True, text=True
    ).stdout.strip()


def measure(tree: Path, out: Path, n: int) -> dict[str, Any]:
    """One repetition of bench/run.py in ``tree`` with this interpreter: its summary row
    of the taskschedd daemon."""
    env = {**os.environ, "PYTHONPATH": str(tree)}
    argv = [sys.executable, str(tree / "bench/run.py"), "--only", "drain,latency",
            "--systems", "taskschedd", "--reps", "1", "-n", str(n), "--out", str(out)]  # fmt: skip
    subprocess.run(argv, cwd=tree, env=env, check=True, stdout=subprocess.DEVNULL)
    summary = json.loads(out.read_text())["summary"]
    row: dict[str, Any] = summary["systems"]["taskschedd"]
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", required=True, help="the commit to compare with")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("-n", type=int, default=5000, help="jobs per drain")
    args = parser.parse_args()
    base_sha = git("rev-parse", args.base)
    head_sha = git("rev-parse", "HEAD")
    dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    scratch = Path(tempfile.mkdtemp(prefix="taskschedd-compare-"))
    base = scratch / "base"
    git("worktree", "add", "--detach", str(base), base_sha)
    rows: dict[str, list[dict[str, Any]]] = {"base": [], "this": []}
    try:
        for rep in range(args.reps):
            order = [("base", base), ("this", REPO)]
            if rep % 2:
                order.reverse()
            for name, tree in order:
                row = measure(tree, scratch / f"{name}-{rep}.json", args.n)
                rows[name].append(row)
                print(f"rep {rep + 1} {name}: " + ", ".join(
                    f"{k}={row.get(k)}" for k in FIGURES), flush=True)  # fmt: skip
    finally:
        git("worktree", "remove", "--force", str(base))
        shutil.rmtree(scratch, ignore_errors=True)
    table = ["| figure | base median | this median | this/base |", "|---|---|---|---|"]
    result: dict[str, Any] = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "base": base_sha, "this": head_sha + (" (with uncommitted changes)" if dirty else ""),
        "reps": args.reps, "n": args.n, "loadavg": os.getloadavg(), "rows": rows,
        "medians": {},
    }  # fmt: skip
    for key, (label, _higher) in FIGURES.items():
        values = {
            name: [r[key] for r in rs if isinstance(r.get(key), int | float)]
            for name, rs in rows.items()
        }
        if not values["base"] or not values["this"]:
            continue
        b, t = statistics.median(values["base"]), statistics.median(values["this"])
        result["medians"][key] = {"base": b, "this": t, "ratio": t / b if b else None}
        table.append(f"| {label} | {b:.1f} | {t:.1f} | {t / b:.3f} |")
    text = (
        f"taskschedd {head_sha[:8]} against {base_sha[:8]}: {args.reps} repetitions of "
        f"{args.n} jobs, alternating order, medians (higher is better for jobs/s, lower for "
        "ms)\n\n" + "\n".join(table) + "\n"
    )
    out = REPO / "bench/results" / f"compare-{dt.date.today().isoformat()}"
    out.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n")
    out.with_suffix(".md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
