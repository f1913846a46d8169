"""Workflow figures (issue 14) against the real daemon on SQLite, and the plain drain of
this tree against the main branch's, side by side in one run.

    .venv/bin/python -m bench.workflows [--reps 5] [--sizes 1000,10000] [--drain-reps 11]
        [--main /work/main] [--only fanout,fanin,drain]

- **fan-out**: a parent P (``bench.jobs.Gate``) and N children (``bench.jobs.Stamp``), each
  ``depends_on=[P]``, added in one ``Scheduler.add_jobs`` call before the daemon starts. P
  holds a worker until the harness has seen both workers up, then ends DONE. Figure: the
  last child's own ``time.time()`` at start minus P's ``ended`` in the store (P's DONE).
- **fan-in**: N no-op jobs and F (``Stamp``) with ``depends_on`` = all N, added in one
  ``Scheduler.group(..., then=F)`` call before the daemon starts. Figure: F's own start
  minus the latest ``ended`` of the N in the store (the last DONE).
- **drain**: ``bench/run.py --only drain --systems taskschedd --reps 1`` of each tree with
  its own venv (this tree's ``.venv``, the main tree's ``.venv``), each with its own store
  in its own scratch directory, alternating which goes first.

Every size of every scenario runs ``--reps`` times (order rotated each repetition, the
drain pairs interleaved); figures are medians. Results: bench/results/workflows-DATE.{json,md}.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench import common, tsd
from taskschedd.scheduler import JobSpec, new_id

RUN_ENV = "BENCH_WORKFLOWS_RUN_ID"
GATE = "bench.jobs.Gate"
SCENARIOS = ["fanout", "fanin", "drain"]


def log(msg: str) -> None:
    print(
        f"[workflows {time.strftime('%H:%M:%S')} load {common.loadavg()[0]:.2f}] {msg}", flush=True
    )


def _ended(db: Path, ids: list[str]) -> list[float]:
    """``ended`` of the given jobs, read from the store file (read-only)."""
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as c:
        out: list[float] = []
        for i in range(0, len(ids), 500):
            chunk = ids[i : i + 500]
            marks = ",".join("?" * len(chunk))
            rows = c.execute(f"SELECT ended FROM jobs WHERE id IN ({marks})", chunk).fetchall()
            out.extend(float(r[0]) for r in rows if r[0] is not None)
        return out


def _lines(path: Path) -> int:
    try:
        return path.read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


def _wait_lines(path: Path, count: int, timeout: float, what: str) -> None:
    """Poll the stamp file's line count (cheap: no parsing while the workers run)."""
    common.wait_until(lambda: _lines(path) >= count, timeout, what, interval=0.02)


def _daemon(workdir: Path, tag: str) -> tuple[tsd.Taskschedd, Path]:
    stamps = workdir / f"{tag}.stamps"
    stamps.unlink(missing_ok=True)
    os.environ[common.STAMP_ENV] = str(stamps)  # the daemon's jobs inherit it
    system = tsd.Taskschedd(workdir, tag=tag)
    system.reset()
    return system, stamps


def fan_out(workdir: Path, n: int) -> dict[str, Any]:
    """P, then N children each depending on P; time from P's DONE to all started."""
    system, stamps = _daemon(workdir, f"fanout-{n}")
    gate = workdir / f"fanout-{n}.gate"
    gate.unlink(missing_ok=True)
    parent = new_id()
    specs = [JobSpec(GATE, {"k": "p", "file": str(gate), "timeout": 300}, {"id": parent})]
    specs += [
        JobSpec(tsd.STAMP, {"k": f"c{i}", "t": 0.0}, {"depends_on": [parent]}) for i in range(n)
    ]
    try:
        t0 = time.perf_counter()
        system.scheduler.add_jobs(specs)
        add_s = time.perf_counter() - t0
        load_before = common.loadavg()
        system.start()
        tsd.wait_workers(system)
        _wait_lines(stamps, 1, 60, "the parent to start")  # p-start
        time.sleep(0.2)  # the other worker idle, as it would be waiting for the children
        gate.touch()
        _wait_lines(stamps, n + 2, 120 + n / 50, f"{n} children to start")
        found = common.read_stamps(stamps)
        (p_ended,) = _ended(system.db, [parent])
        starts = sorted(s for tag, (_, s) in found.items() if tag.startswith("c"))
        assert len(starts) == n, f"{len(starts)} children started, expected {n}"
        common.wait_until(lambda: system.done() >= n + 1, 60, "all jobs DONE", interval=0.05)
    finally:
        system.stop()
        system.close()
    return {
        "n": n,
        "add_s": add_s,
        # The figure: P's DONE (its `ended` in the store) to the last child's start.
        "all_started_s": starts[-1] - p_ended,
        "first_started_ms": (starts[0] - p_ended) * 1000,
        "parent_end_stamp_to_all_s": starts[-1] - found["p-end"][1],
        "children_jobs_per_s": (n - 1) / (starts[-1] - starts[0]) if n > 1 else None,
        "loadavg_before": load_before,
        "loadavg_after": common.loadavg(),
    }


def fan_in(workdir: Path, n: int) -> dict[str, Any]:
    """N jobs and F depending on all of them; time from the last DONE to F started."""
    system, stamps = _daemon(workdir, f"fanin-{n}")
    try:
        t0 = time.perf_counter()
        handles = system.scheduler.group(
            [JobSpec(tsd.NOOP) for _ in range(n)], then=JobSpec(tsd.STAMP, {"k": "f", "t": 0.0})
        )
        add_s = time.perf_counter() - t0
        members = [h.id for h in handles[:n]]
        load_before = common.loadavg()
        system.start()
        _wait_lines(stamps, 1, 120 + n / 50, "the fan-in job to start")
        found = common.read_stamps(stamps)
        common.wait_until(lambda: system.done() >= n + 1, 60, "all jobs DONE", interval=0.05)
        ended = _ended(system.db, members)
        assert len(ended) == n, f"{len(ended)} of {n} dependencies ended"
        with contextlib.closing(sqlite3.connect(f"file:{system.db}?mode=ro", uri=True)) as c:
            first_start = c.execute(
                "SELECT MIN(started) FROM jobs WHERE id != ?", (handles[-1].id,)
            ).fetchone()[0]
    finally:
        system.stop()
        system.close()
    last = max(ended)
    return {
        "n": n,
        "add_s": add_s,
        # The figure: the last dependency's DONE (`ended`) to F's own start.
        "fanin_started_ms": (found["f"][1] - last) * 1000,
        "dependencies_jobs_per_s": (n - 1) / (last - first_start) if first_start else None,
        "loadavg_before": load_before,
        "loadavg_after": common.loadavg(),
    }


def drain(tree: Path, out: Path, n: int, timeout: float) -> dict[str, Any]:
    """One repetition of ``bench/run.py --only drain`` in ``tree`` with ``tree``'s venv."""
    python = tree / ".venv/bin/python"
    env = {**os.environ, "PYTHONPATH": str(tree)}  # that tree's bench and taskschedd only
    argv = [str(python), str(tree / "bench/run.py"), "--only", "drain", "--systems",
            "taskschedd", "--reps", "1", "-n", str(n), "--out", str(out)]  # fmt: skip
    proc = common.spawn(argv, env=env, log=out.with_suffix(".log"))
    try:
        rc = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:g}s"}
    finally:
        common.stop(proc, grace=30)
    if rc != 0 or not out.exists():
        return {"error": f"bench/run.py exited with {rc}; see {out.with_suffix('.log')}"}
    result = json.loads(out.read_text())
    (row,) = result["raw"]["drain"]["taskschedd"]
    version = result.get("versions", {}).get("taskschedd")
    # CPU of the master and its workers (start-up included): far less sensitive to the
    # machine's load than the wall-clock rate.
    procs = [p for p in (row.get("rss_after_drain") or {}).values() if p.get("cpu_s") is not None]
    cpu = sum(p["cpu_s"] for p in procs) if procs else None
    return {
        "drain_jobs_per_s": row.get("drain_jobs_per_s"),
        "cpu_ms_per_job": cpu * 1000 / n if cpu is not None else None,
        "cpu_s_by_process": {p["cmd"][:60]: p["cpu_s"] for p in procs},
        "drain_s": row.get("drain_s"),
        "error": row.get("error"),
        "taskschedd": version,
        "loadavg_before": row.get("loadavg_before"),
        "loadavg_after": row.get("loadavg_after"),
    }


def med(rows: list[dict[str, Any]], key: str) -> float | None:
    return common.median([r[key] for r in rows if isinstance(r.get(key), int | float)])


def summarize(raw: dict[str, Any], sizes: list[int]) -> dict[str, Any]:
    s: dict[str, Any] = {}
    for scenario, key in (("fanout", "all_started_s"), ("fanin", "fanin_started_ms")):
        if scenario not in raw:
            continue
        per = {str(size): med(raw[scenario][str(size)], key) for size in sizes}
        small, big = per[str(sizes[0])], per[str(sizes[-1])]
        s[scenario] = {
            "figure": key,
            "medians": per,
            "ratio": big / small if small and big is not None else None,
            "size_ratio": sizes[-1] / sizes[0],
            "other": {
                str(size): {
                    k: med(raw[scenario][str(size)], k)
                    for k in (
                        "first_started_ms",
                        "parent_end_stamp_to_all_s",
                        "children_jobs_per_s",
                        "dependencies_jobs_per_s",
                        "add_s",
                    )
                    if med(raw[scenario][str(size)], k) is not None
                }
                for size in sizes
            },
        }
    if "drain" in raw:
        this, main = (med(raw["drain"][k], "drain_jobs_per_s") for k in ("this", "main"))
        pairs = [
            t["drain_jobs_per_s"] / m["drain_jobs_per_s"]
            for t, m in zip(raw["drain"]["this"], raw["drain"]["main"], strict=False)
            if t.get("drain_jobs_per_s") and m.get("drain_jobs_per_s")
        ]
        cpu_this, cpu_main = (med(raw["drain"][k], "cpu_ms_per_job") for k in ("this", "main"))
        s["drain"] = {
            "this_median": this,
            "main_median": main,
            "ratio_of_medians": this / main if this and main else None,
            "median_of_pair_ratios": common.median(pairs),
            "pair_ratios": pairs,
            "cpu_ms_per_job": {"this": cpu_this, "main": cpu_main},
            "cpu_ratio": cpu_this / cpu_main if cpu_this and cpu_main else None,
        }
    return s


def fmt(v: Any, digits: int = 0) -> str:
    if v is None:
        return "-"
    return f"{v:,.{digits}f}" if isinstance(v, float) else str(v)


def render(results: dict[str, Any]) -> str:
    s, m, a = results["summary"], results["machine"], results["args"]
    sizes = a["sizes"]
    small, big = str(sizes[0]), str(sizes[-1])
    lines = [
        f"Date {results['date']}; {m['nproc']} CPUs ({m['cpu_model']}); Python "
        f"{results['python']}; SQLite {results['sqlite']}; this tree {results['this']}, main "
        f"{results['main']}; load average at start {m['loadavg'][0]:.2f}, at end "
        f"{m.get('loadavg_end', [0])[0]:.2f}; {a['reps']} repetitions of each workflow size, "
        f"{a['drain_reps']} of each drain (alternating), medians.",
        "",
        f"| figure | {int(small):,} | {int(big):,} | ratio | goal |",
        "|---|---:|---:|---:|---|",
    ]
    fo, fi = s.get("fanout"), s.get("fanin")
    if fo:
        lines.append(
            f"| fan-out: P's DONE to all children started, s | {fmt(fo['medians'][small], 3)} | "
            f"{fmt(fo['medians'][big], 3)} | {fmt(fo['ratio'], 2)} | <= ~{fo['size_ratio']:g} "
            f"({'met' if fo['ratio'] and fo['ratio'] <= fo['size_ratio'] * 1.1 else 'MISSED'}) |"
        )
        o = fo["other"]
        lines.append(
            f"| fan-out: P's DONE to the first child started, ms | "
            f"{fmt(o[small].get('first_started_ms'), 1)} | {fmt(o[big].get('first_started_ms'), 1)} "
            f"| | |"
        )
        lines.append(
            f"| fan-out: children drained, jobs/s | {fmt(o[small].get('children_jobs_per_s'))} | "
            f"{fmt(o[big].get('children_jobs_per_s'))} | | |"
        )
        lines.append(
            f"| fan-out: add_jobs of P and its children, s | {fmt(o[small].get('add_s'), 2)} | "
            f"{fmt(o[big].get('add_s'), 2)} | | |"
        )
    if fi:
        lines.append(
            f"| fan-in: last DONE to F started, ms | {fmt(fi['medians'][small], 1)} | "
            f"{fmt(fi['medians'][big], 1)} | {fmt(fi['ratio'], 2)} | <= ~{fi['size_ratio']:g} "
            f"({'met' if fi['ratio'] and fi['ratio'] <= fi['size_ratio'] * 1.1 else 'MISSED'}) |"
        )
        o = fi["other"]
        lines.append(
            f"| fan-in: dependencies drained, jobs/s | "
            f"{fmt(o[small].get('dependencies_jobs_per_s'))} | "
            f"{fmt(o[big].get('dependencies_jobs_per_s'))} | | |"
        )
        lines.append(
            f"| fan-in: group(..., then=F), s | {fmt(o[small].get('add_s'), 2)} | "
            f"{fmt(o[big].get('add_s'), 2)} | | |"
        )
    d = s.get("drain")
    if d:
        ratio = d["ratio_of_medians"]
        lines += [
            "",
            f"| plain drain of {a['n']:,} no-op jobs | main | this tree | this/main | goal |",
            "|---|---:|---:|---:|---|",
            f"| jobs/s, median | {fmt(d['main_median'])} | {fmt(d['this_median'])} | "
            f"{fmt(ratio, 3)} | >= 0.95 ({'met' if ratio and ratio >= 0.95 else 'MISSED'}) |",
            f"| median of the per-repetition ratios | | | {fmt(d['median_of_pair_ratios'], 3)} | |",
            f"| CPU of master and workers, ms per job (lower is better) | "
            f"{fmt(d['cpu_ms_per_job']['main'], 3)} | {fmt(d['cpu_ms_per_job']['this'], 3)} | "
            f"{fmt(d['cpu_ratio'], 3)} | |",
            "",
            "Per repetition (main, this): "
            + "; ".join(
                f"{fmt(mm.get('drain_jobs_per_s'))}, {fmt(tt.get('drain_jobs_per_s'))}"
                for mm, tt in zip(
                    results["raw"]["drain"]["main"], results["raw"]["drain"]["this"], strict=False
                )
            )
            + " jobs/s.",
        ]
    return "\n".join(lines) + "\n"


def git_head(tree: Path) -> str:
    try:
        out = subprocess.run(
            ["git", "-C", str(tree), "rev-parse", "--short", "HEAD"],
            check=True, capture_output=True, text=True,
        ).stdout.strip()  # fmt: skip
        dirty = subprocess.run(
            ["git", "-C", str(tree), "status", "--porcelain", "--untracked-files=no"],
            check=True, capture_output=True, text=True,
        ).stdout.strip()  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        return "?"
    return out + (" (with uncommitted changes)" if dirty else "")


def main() -> int:
    parser = argparse.ArgumentParser(prog="bench.workflows", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--reps", type=int, default=5, help="repetitions of each workflow size (default 5)"
    )
    parser.add_argument("--sizes", default="1000,10000", help="comma list (default 1000,10000)")
    parser.add_argument("--drain-reps", type=int, default=11, help="drain pairs (default 11)")
    parser.add_argument("-n", type=int, default=20000, help="jobs per drain (default 20000)")
    parser.add_argument("--main", type=Path, default=Path("/work/main"), help="main's tree")
    parser.add_argument("--only", help=f"comma list of: {','.join(SCENARIOS)}")
    parser.add_argument("--out", type=Path, help="default bench/results/workflows-DATE.json")
    parser.add_argument("--keep", action="store_true", help="keep the scratch directory")
    args = parser.parse_args()
    sizes = [int(x) for x in args.sizes.split(",")]
    only = args.only.split(",") if args.only else SCENARIOS
    unknown = set(only) - set(SCENARIOS)
    if unknown:
        parser.error(f"unknown scenario: {', '.join(sorted(unknown))}; accepted: {SCENARIOS}")
    if "drain" in only and not (args.main / ".venv/bin/taskschedd").exists():
        parser.error(f"{args.main}/.venv/bin/taskschedd is missing: --main names main's tree")
    if not tsd.daemon_available():
        parser.error("the taskschedd daemon is not installed in this venv")

    run = common.start_run(RUN_ENV, "taskschedd-workflows-")
    workdir, date = run.workdir, run.date
    results: dict[str, Any] = {
        **run.header,
        "this": git_head(common.REPO),
        "main": git_head(args.main),
        "args": {
            "reps": args.reps,
            "sizes": sizes,
            "drain_reps": args.drain_reps,
            "n": args.n,
            "only": only,
            "main": str(args.main),
        },
        "raw": {},
    }
    raw = results["raw"]
    log(f"scratch {workdir}; {only}; sizes {sizes}; reps {args.reps}; drain reps {args.drain_reps}")
    jobs: list[tuple[str, int]] = [(s, n) for s in ("fanout", "fanin") if s in only for n in sizes]
    try:
        for rep in range(max(args.reps, args.drain_reps if "drain" in only else 0)):
            if rep < args.reps and jobs:
                k = rep % len(jobs)
                for scenario, size in jobs[k:] + jobs[:k]:  # rotated: none always first
                    log(f"rep {rep + 1}: {scenario} {size:,}")
                    fn = fan_out if scenario == "fanout" else fan_in
                    try:
                        r = fn(workdir, size)
                    except Exception as exc:  # one failed figure must not lose the others
                        r = {"n": size, "error": f"{type(exc).__name__}: {exc}"}
                    log(f"  -> {json.dumps({k: v for k, v in r.items() if 'load' not in k})}")
                    raw.setdefault(scenario, {}).setdefault(str(size), []).append(r)
            if "drain" in only and rep < args.drain_reps:
                order = [("main", args.main), ("this", common.REPO)]
                if rep % 2:
                    order.reverse()
                for name, tree in order:
                    log(f"rep {rep + 1}: drain of {args.n:,}, {name} ({tree})")
                    r = drain(tree, workdir / f"drain-{name}-{rep}.json", args.n, 600)
                    log(f"  -> {r.get('drain_jobs_per_s') or r.get('error')}")
                    raw.setdefault("drain", {}).setdefault(name, []).append(r)
    finally:
        common.stop_all()
        run.sweep(log)
        results["finished"] = dt.datetime.now().isoformat(timespec="seconds")
        results["machine"]["loadavg_end"] = common.loadavg()
        results["summary"] = summarize(raw, sizes)
        out = args.out or common.REPO / "bench/results" / f"workflows-{date}.json"
        common.finish(results, out, render, workdir, args.keep, log)
    return 0


if __name__ == "__main__":
    sys.exit(main())
