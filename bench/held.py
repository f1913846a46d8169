"""What an idle worker's look for work costs behind jobs a full limit holds back, on
SQLite, for this tree and (``--main``) another, side by side in one run.

    .venv/bin/python -m bench.held [--sizes 1000,10000,100000] [--reps 15] [--main TREE]

For each size N, a store holds N jobs of the limit ``reports`` (``max_running: 2``,
both slots held by two other workers) and one job due in an hour. Then one store object
of a third worker times, ``reps`` times each: a claim (``settle_batch`` claiming 4, as a
daemon worker does; it finds nothing), ``count_due`` (a master's plan) and ``next_due``
(the worker's wait). Every daemon worker does the claim and next_due at each wake-up
and poll, and every settle wakes every idle worker: this cost is paid per job per idle
worker. Figures: medians in milliseconds. Each tree is measured in a process of its own
(``PYTHONPATH`` naming the tree), the trees alternating for each size.
Results: bench/results/held-DATE.{json,md}.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

#: The measurement runs as ``python bench/held.py _measure ...`` under each tree's
#: PYTHONPATH: it imports nothing from bench/, which the other tree may not have.
SIZES = (1000, 10_000, 100_000)
WHAT = ("claim", "count_due", "next_due")


def _measure(size: int, reps: int) -> dict[str, float]:
    import secrets
    import statistics
    import tempfile

    from taskschedd.limits import LimitSpec
    from taskschedd.model import ClaimRequest
    from taskschedd.scheduler import JobSpec, Scheduler
    from taskschedd.store import open_store

    def request(worker: str, limit: int) -> ClaimRequest:
        return ClaimRequest(
            queues=("default",), node="bench", worker=worker, token=secrets.token_hex(16),
            lease=3600, limit=limit, force_spawn=False,
        )  # fmt: skip

    with tempfile.TemporaryDirectory(prefix="taskschedd-held-") as scratch:
        url = f"sqlite:///{scratch}/store.db"
        store = open_store(url, create=True)
        store.set_limit(LimitSpec("reports", 2))
        spec = JobSpec("bench.jobs.Noop", None, {"limit": "reports", "priority": 5})
        for start in range(0, size, 10_000):
            Scheduler(store).add_jobs([spec] * min(10_000, size - start))
        now = time.time()
        Scheduler(store).add_job("bench.jobs.Noop", at=now + 3600)
        for holder in ("bench/holder-1", "bench/holder-2"):
            assert len(store.settle_batch([], now=now, claim=request(holder, 1))[1]) == 1
        idle = open_store(url)
        calls: dict[str, Callable[[], object]] = {
            "claim": lambda: idle.settle_batch([], now=time.time(), claim=request("bench/3", 4)),
            "count_due": lambda: idle.count_due(
                ("default",), now=time.time(), force_spawn=False, limit=4
            ),
            "next_due": lambda: idle.next_due(("default",)),
        }
        out: dict[str, float] = {}
        for name, call in calls.items():
            times = []
            for _ in range(reps):
                began = time.perf_counter()
                call()
                times.append((time.perf_counter() - began) * 1000)
            out[name] = statistics.median(times)
        assert idle.settle_batch([], now=time.time(), claim=request("bench/3", 4))[1] == []
        idle.close()
        store.close()
    return out


def measure_in(tree: Path, size: int, reps: int) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    done = subprocess.run(
        [sys.executable, __file__, "_measure", str(size), str(reps)],
        env=env, capture_output=True, text=True, check=False, cwd=tree,
    )  # fmt: skip
    if done.returncode != 0:
        raise SystemExit(f"measuring {tree} failed:\n{done.stderr[-3000:]}")
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def render(results: dict[str, Any]) -> str:
    trees = results["trees"]
    head = "| held jobs | " + " | ".join(f"{w} ({t}), ms" for t in trees for w in WHAT) + " |"
    lines = [
        f"Date {results['date']}; {results['machine']['nproc']} CPUs; Python "
        f"{results['python']}; SQLite {results['sqlite']}; trees: "
        + ", ".join(f"{t} {results['heads'][t]}" for t in trees)
        + f"; {results['args']['reps']} calls of each, medians.",
        "",
        head,
        "|" + "---|" * (1 + len(trees) * len(WHAT)),
    ]
    for size in results["args"]["sizes"]:
        row = results["raw"][str(size)]
        cells = [f"{row[t][w]:.2f}" for t in trees for w in WHAT]
        lines.append(f"| {size:,} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> int:
    if len(sys.argv) == 4 and sys.argv[1] == "_measure":
        print(json.dumps(_measure(int(sys.argv[2]), int(sys.argv[3]))))
        return 0
    from bench import common
    from bench.workflows import git_head

    parser = argparse.ArgumentParser(prog="bench.held", description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default=",".join(map(str, SIZES)), help="held jobs")
    parser.add_argument("--reps", type=int, default=15, help="calls of each (default 15)")
    parser.add_argument("--main", type=Path, help="another tree, measured beside this one")
    parser.add_argument("--out", type=Path, help="default bench/results/held-DATE.json")
    args = parser.parse_args()
    try:
        sizes = [int(s) for s in args.sizes.split(",")]
    except ValueError:
        parser.error("--sizes: a comma list of whole numbers")
    if args.reps < 1 or any(s < 1 for s in sizes):
        parser.error("--reps and --sizes must be at least 1")
    trees = {"this": common.REPO}
    if args.main is not None:
        if not (args.main / "taskschedd" / "store" / "sqlite.py").is_file():
            parser.error(f"{args.main} is not a taskschedd tree")
        trees["main"] = args.main.resolve()
    run = common.start_run("BENCH_HELD_RUN_ID", "taskschedd-held-")
    results: dict[str, Any] = {
        **run.header,
        "heads": {name: git_head(tree) for name, tree in trees.items()},
        "trees": list(trees),
        "args": {"sizes": sizes, "reps": args.reps},
        "raw": {},
    }
    for size in sizes:
        order = list(trees) if sizes.index(size) % 2 == 0 else list(reversed(trees))
        row: dict[str, dict[str, float]] = {}
        for name in order:
            print(f"[held {time.strftime('%H:%M:%S')}] {size:,} held, {name}", flush=True)
            row[name] = measure_in(trees[name], size, args.reps)
        results["raw"][str(size)] = row
    results["finished"] = dt.datetime.now().isoformat(timespec="seconds")
    out = args.out or common.REPO / "bench" / "results" / f"held-{run.date}.json"
    common.finish(results, out, render, run.workdir, False, print)
    return 0


if __name__ == "__main__":
    sys.exit(main())
