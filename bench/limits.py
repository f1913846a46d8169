"""Limit figures (issue 15) against the real daemon on SQLite: the drain of no-op jobs
that join a limit, or carry exclusive keys, side by side with the plain drain in one run.

    .venv/bin/python -m bench.limits [--reps 7] [-n 20000] [--only plain,limit64,...]

Each variant drains ``n`` no-op jobs (``bench.jobs.Noop``; the first and the last are
``bench.jobs.Stamp`` and record their start) with the daemon of bench/tsd.py (pm static,
2 workers, claim_ahead at its default, SQLite at its default durability), every job
added in batches before the daemon starts, each variant with its own store file:

- **plain**: no limit (the reference).
- **limit64**: every job joins the limit ``bench`` of ``max_running: 64`` (the issue's
  figure: >= 0.9x the plain drain).
- **limit-huge**: every job joins a limit of ``max_running: 100000``, which never binds:
  the bare cost of counting a limit at claim.
- **keys100**: every job has one of 100 exclusive keys (job i: key ``k<i % 100>``).

Figure: jobs/s from the first job's start to the last one's (their own ``time.time()``),
and the CPU (utime+stime) of master and workers per job, start-up included. The order of
the variants rotates every repetition; figures are medians, ratios against plain (ratio
of the medians, and the median of the per-repetition ratios). While a drain runs, the
harness samples the store (read-only, every 50 ms) for the most jobs PROCESSING at once.
Results: bench/results/limits-DATE.{json,md}.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import sqlite3
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import common, tsd
from bench.workflows import git_head
from taskschedd.limits import LimitSpec
from taskschedd.scheduler import JobSpec

RUN_ENV = "BENCH_LIMITS_RUN_ID"
LIMIT = "bench"
KEYS = 100
#: variant -> (the limit it defines or None, the options of job i)
VARIANTS: dict[str, tuple[LimitSpec | None, Callable[[int], dict[str, Any]]]] = {
    "plain": (None, lambda i: {}),
    "limit64": (LimitSpec(LIMIT, 64), lambda i: {"limit": LIMIT}),
    "limit-huge": (LimitSpec(LIMIT, 100_000), lambda i: {"limit": LIMIT}),
    "keys100": (None, lambda i: {"exclusive_key": f"k{i % KEYS}"}),
}
GOAL = 0.9  # limit64 / plain


def log(msg: str) -> None:
    print(f"[limits {time.strftime('%H:%M:%S')} load {common.loadavg()[0]:.2f}] {msg}", flush=True)


class Sampler:
    """The most jobs PROCESSING at once, read from the store file every ``period`` s."""

    def __init__(self, db: Path, period: float = 0.05) -> None:
        self.db, self.period = db, period
        self.peak = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        with contextlib.closing(sqlite3.connect(f"file:{self.db}?mode=ro", uri=True)) as c:
            while not self._stop.wait(self.period):
                with contextlib.suppress(sqlite3.Error):
                    (n,) = c.execute("SELECT COUNT(*) FROM jobs WHERE status = 2").fetchone()
                    self.peak = max(self.peak, int(n))
                    self.samples += 1


def drain(workdir: Path, variant: str, n: int, tag: str) -> dict[str, Any]:
    """One drain of ``n`` jobs of ``variant`` by a fresh daemon with its own store."""
    spec, options = VARIANTS[variant]
    stamps = workdir / f"{tag}.stamps"
    stamps.unlink(missing_ok=True)
    os.environ[common.STAMP_ENV] = str(stamps)  # the daemon's jobs inherit it
    system = tsd.Taskschedd(workdir, tag=tag)
    try:
        if spec is not None:
            system.scheduler.store.set_limit(spec)
        t0 = time.perf_counter()
        specs = [JobSpec(tsd.STAMP, {"k": "d-first", "t": 0.0}, options(0))]
        specs += [JobSpec(tsd.NOOP, None, options(i)) for i in range(1, n - 1)]
        specs += [JobSpec(tsd.STAMP, {"k": "d-last", "t": 0.0}, options(n - 1))]
        for i in range(0, n, common.BATCH):
            system.scheduler.add_jobs(specs[i : i + common.BATCH])
        add_s = time.perf_counter() - t0
        load_before = common.loadavg()
        with Sampler(system.db) as sampler:
            system.start()
            found = common.wait_stamps(
                stamps,
                lambda s: "d-first" in s and "d-last" in s,
                max(180.0, n / 50.0),
                f"{variant}: the last of {n} jobs",
            )
            common.wait_until(lambda: system.done() >= n, 60, "every job DONE", interval=0.05)
        cpu = [common.cpu_seconds(p) for p in system.processes()]
    finally:
        system.stop()
        system.close()
        for suffix in ("", "-wal", "-shm"):
            Path(f"{system.db}{suffix}").unlink(missing_ok=True)
    elapsed = found["d-last"][1] - found["d-first"][1]
    known = [c for c in cpu if c is not None]
    return {
        "variant": variant,
        "n": n,
        "drain_s": elapsed,
        "drain_jobs_per_s": (n - 1) / elapsed if elapsed > 0 else None,
        "cpu_ms_per_job": sum(known) * 1000 / n if known else None,
        "peak_processing": sampler.peak,
        "samples": sampler.samples,
        "add_s": add_s,
        "loadavg_before": load_before,
        "loadavg_after": common.loadavg(),
    }


def med(rows: list[dict[str, Any]], key: str) -> float | None:
    return common.median([r[key] for r in rows if isinstance(r.get(key), int | float)])


def summarize(raw: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    plain = raw.get("plain", [])
    base = med(plain, "drain_jobs_per_s")
    base_cpu = med(plain, "cpu_ms_per_job")
    out: dict[str, Any] = {}
    for variant, rows in raw.items():
        rate, cpu = med(rows, "drain_jobs_per_s"), med(rows, "cpu_ms_per_job")
        pairs = [
            r["drain_jobs_per_s"] / p["drain_jobs_per_s"]
            for r, p in zip(rows, plain, strict=False)
            if r.get("drain_jobs_per_s") and p.get("drain_jobs_per_s")
        ]
        out[variant] = {
            "jobs_per_s": rate,
            "ratio_of_medians": rate / base if rate and base else None,
            "median_of_pair_ratios": common.median(pairs),
            "pair_ratios": pairs,
            "cpu_ms_per_job": cpu,
            "cpu_ratio": cpu / base_cpu if cpu and base_cpu else None,
            "peak_processing": max((r.get("peak_processing") or 0 for r in rows), default=None),
            "errors": [r["error"] for r in rows if r.get("error")],
        }
    return out


def fmt(v: Any, digits: int = 0) -> str:
    if v is None:
        return "-"
    return f"{v:,.{digits}f}" if isinstance(v, float) else str(v)


WHAT = {
    "plain": "plain drain (no limit)",
    "limit64": "every job in a limit of max_running 64",
    "limit-huge": "every job in a limit of max_running 100,000",
    "keys100": "100 exclusive keys (job i: key i % 100)",
}


def render(results: dict[str, Any]) -> str:
    s, m, a = results["summary"], results["machine"], results["args"]
    lines = [
        f"Date {results['date']}; {m['nproc']} CPUs ({m['cpu_model']}); Python "
        f"{results['python']}; SQLite {results['sqlite']}; tree {results['this']}; load "
        f"average at start {m['loadavg'][0]:.2f}, at end {m.get('loadavg_end', [0])[0]:.2f}; "
        f"{a['reps']} repetitions of each drain of {a['n']:,} jobs (order rotated), medians.",
        "",
        "| drain | jobs/s | vs plain (ratio of medians) | median of pair ratios "
        "| CPU ms/job | CPU vs plain | most PROCESSING at once | goal |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for variant in a["only"]:
        row = s.get(variant)
        if not row:
            continue
        goal = ""
        if variant == "limit64" and row["ratio_of_medians"] is not None:
            met = row["ratio_of_medians"] >= GOAL
            goal = f">= {GOAL} ({'met' if met else 'MISSED'})"
        lines.append(
            f"| {WHAT[variant]} | {fmt(row['jobs_per_s'])} | {fmt(row['ratio_of_medians'], 3)} "
            f"| {fmt(row['median_of_pair_ratios'], 3)} | {fmt(row['cpu_ms_per_job'], 3)} "
            f"| {fmt(row['cpu_ratio'], 3)} | {fmt(row['peak_processing'])} | {goal} |"
        )
    raw = results["raw"]
    lines += ["", "Per repetition, jobs/s:"]
    for variant in a["only"]:
        shown = [fmt(r.get("drain_jobs_per_s")) for r in raw.get(variant, [])]
        lines.append(f"- {variant}: {', '.join(shown)}")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(prog="bench.limits", description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=7, help="repetitions of each (default 7)")
    parser.add_argument("-n", type=int, default=20000, help="jobs per drain (default 20000)")
    parser.add_argument("--only", help=f"comma list of: {','.join(VARIANTS)} (plain always)")
    parser.add_argument("--out", type=Path, help="default bench/results/limits-DATE.json")
    parser.add_argument("--keep", action="store_true", help="keep the scratch directory")
    args = parser.parse_args()
    only = list(VARIANTS) if not args.only else ["plain", *args.only.split(",")]
    only = list(dict.fromkeys(only))
    unknown = set(only) - set(VARIANTS)
    if unknown:
        parser.error(f"unknown variant: {', '.join(sorted(unknown))}; accepted: {list(VARIANTS)}")
    if args.n < 3 or args.reps < 1:
        parser.error("-n must be at least 3 and --reps at least 1")
    if not tsd.daemon_available():
        parser.error("the taskschedd daemon is not installed in this venv")

    run = common.start_run(RUN_ENV, "taskschedd-limits-")
    workdir, date = run.workdir, run.date
    results: dict[str, Any] = {
        **run.header,
        "this": git_head(common.REPO),
        "args": {"reps": args.reps, "n": args.n, "only": only},
        "raw": {},
    }
    raw: dict[str, list[dict[str, Any]]] = results["raw"]
    log(f"scratch {workdir}; {only}; {args.reps} repetitions of {args.n:,} jobs")
    try:
        for rep in range(args.reps):
            k = rep % len(only)
            for variant in only[k:] + only[:k]:  # rotated: none always first
                log(f"rep {rep + 1}: {variant}")
                try:
                    r = drain(workdir, variant, args.n, f"{variant}-{rep}")
                except Exception as exc:  # one failed figure must not lose the others
                    r = {"variant": variant, "n": args.n, "error": f"{type(exc).__name__}: {exc}"}
                log(f"  -> {json.dumps({k: v for k, v in r.items() if 'load' not in k})}")
                raw.setdefault(variant, []).append(r)
    finally:
        common.stop_all()
        run.sweep(log)
        results["finished"] = dt.datetime.now().isoformat(timespec="seconds")
        results["machine"]["loadavg_end"] = common.loadavg()
        results["summary"] = summarize(raw)
        out = args.out or common.REPO / "bench/results" / f"limits-{date}.json"
        common.finish(results, out, render, workdir, args.keep, log)
    return 0


if __name__ == "__main__":
    sys.exit(main())
