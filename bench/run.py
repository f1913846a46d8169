"""The benchmark orchestrator: ``bench/run.sh [--quick] [...]`` (see bench/README.md).

Runs in the project's venv. taskschedd is measured in-process (its enqueuer) against the
real daemon; each peer through ``bench.peers.driver`` in the peers venv. Systems are
interleaved within each repetition so that machine noise hits all of them alike; every
figure is the median over repetitions. Raw results go to bench/results/<date>.json.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import common, profile, tsd

PEERS = ["huey-sqlite", "huey-redis", "celery", "rq"]
TSD = ["taskschedd", "taskschedd-bare"]
SECTIONS = ["wal", "drain", "latency", "ctl", "rss", "idle", "claim", "mongo"]
RUN_ENV = "BENCH_RUN_ID"


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')} load {common.loadavg()[0]:.2f}] {msg}", flush=True)


class Peers:
    """Runs the peer driver (peers venv) as a subprocess with a deadline."""

    def __init__(self, python: Path, workdir: Path, redis_url: str) -> None:
        self.python = python
        self.workdir = workdir
        self.env = dict(os.environ, BENCH_REDIS_URL=redis_url)
        self.env["PYTHONPATH"] = str(common.REPO)

    def argv(self, system: str, measure: str, *opts: str) -> list[str]:
        return [
            str(self.python), "-m", "bench.peers.driver", system, measure,
            "--workdir", str(self.workdir / "peers"), *opts,
        ]  # fmt: skip

    def start(self, system: str, measure: str, *opts: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            self.argv(system, measure, *opts),
            env=self.env,
            cwd=common.REPO,
            stdout=subprocess.PIPE,
            stderr=open(self.workdir / f"driver-{system}-{measure}.err", "a"),
            text=True,
            start_new_session=True,
        )

    @staticmethod
    def finish(proc: subprocess.Popen[str], timeout: float) -> dict[str, Any]:
        try:
            out, _ = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            # SIGTERM lets the driver stop its workers; then the whole group goes.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.communicate()
            return {"error": f"timed out after {timeout:g}s"}
        finally:
            if proc.stderr is not None:
                proc.stderr.close()
        if proc.returncode != 0 or not out.strip():
            return {"error": f"driver exited with {proc.returncode}"}
        return dict(json.loads(out.strip().splitlines()[-1]))

    def run(self, system: str, measure: str, timeout: float, *opts: str) -> dict[str, Any]:
        return self.finish(self.start(system, measure, *opts), timeout)


def tsd_system(name: str, workdir: Path) -> common.System:
    return tsd.Taskschedd(workdir) if name == "taskschedd" else tsd.BareWorkers(workdir)


def run_tsd(
    name: str, workdir: Path, fn: Callable[[common.System, Path], dict[str, Any]]
) -> dict[str, Any]:
    stamps = workdir / f"{name}.stamps"
    os.environ[common.STAMP_ENV] = str(stamps)
    system = tsd_system(name, workdir)
    try:
        return fn(system, stamps)
    except Exception as exc:  # one failed figure must not lose the others
        log(f"{name}: {type(exc).__name__}: {exc}")
        return {"error": f"{type(exc).__name__}: {exc}"}
    finally:
        system.stop()
        system.close()


def main() -> int:
    parser = argparse.ArgumentParser(prog="bench/run.sh", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small sizes, short idle window")
    parser.add_argument("--reps", type=int, help="repetitions per figure (default 3; quick 2)")
    parser.add_argument("-n", type=int, help="jobs to drain (default 20000; quick 2000)")
    parser.add_argument("--only", help=f"comma list of sections: {','.join(SECTIONS)}")
    parser.add_argument("--systems", help=f"comma list: {','.join(TSD + PEERS)}")
    parser.add_argument("--profile", action="store_true", help="also profile taskschedd (py-spy)")
    parser.add_argument(
        "--peers-python", type=Path, default=common.REPO / "bench/.venv-peers/bin/python"
    )
    parser.add_argument("--out", type=Path, help="results file (default bench/results/DATE.json)")
    parser.add_argument("--keep", action="store_true", help="keep the scratch directory")
    args = parser.parse_args()

    quick = args.quick
    reps = args.reps or (2 if quick else 3)
    n = args.n or (2000 if quick else 20000)
    sections = args.only.split(",") if args.only else SECTIONS
    systems = args.systems.split(",") if args.systems else TSD + PEERS
    unknown = set(sections) - set(SECTIONS) | set(systems) - set(TSD + PEERS)
    if unknown:
        parser.error(f"unknown section or system: {', '.join(sorted(unknown))}")
    if not tsd.daemon_available() and "taskschedd" in systems:
        log("the taskschedd daemon is not available: measuring 2 bare Worker processes only")
        systems = [s for s in systems if s != "taskschedd"]
        if "taskschedd-bare" not in systems:
            systems.insert(0, "taskschedd-bare")
    peers = [s for s in systems if s in PEERS]
    if peers and not args.peers_python.exists():
        parser.error(f"{args.peers_python} is missing: run bench/run.sh, which creates it")

    run = common.start_run(RUN_ENV, "taskschedd-bench-")
    workdir, date = run.workdir, run.date
    results: dict[str, Any] = {
        **run.header,
        "args": {"quick": quick, "reps": reps, "n": n, "sections": sections, "systems": systems},
        "daemon": "taskschedd" in systems,
        "raw": {},
    }
    log(f"scratch {workdir}; systems {systems}; sections {sections}; reps {reps}; n {n}")
    try:
        with common.redis_server(workdir) as redis_url:
            pe = Peers(args.peers_python, workdir, redis_url)
            if peers:
                results["versions"] = pe.run(peers[0], "versions", 60)
            results["versions"] = {**results.get("versions", {}), **tsd_versions()}
            raw = results["raw"]
            if "wal" in sections:
                log("SQLite WAL pages per write (taskschedd, Huey-SQLite)")
                raw["wal"] = {"taskschedd": tsd.wal_pages()}
                if "huey-sqlite" in peers:
                    raw["wal"]["huey-sqlite"] = pe.run("huey-sqlite", "walpages", 120)
            if "drain" in sections:
                raw["drain"] = section_reps(reps, systems, pe, workdir, "drain", n)
            if "latency" in sections:
                raw["latency"] = section_reps(
                    reps, systems, pe, workdir, "latency", 150 if quick else 500
                )
            if "idle" in sections:
                raw["idle"] = idle_all(systems, pe, workdir, 10.0 if quick else 60.0)
            if "ctl" in sections:
                log("taskschedctl add x20")
                raw["ctl"] = tsd.ctl_add(workdir, 20)
            if "rss" in sections and "taskschedd" in systems:
                points = [1000, 10000] if quick else [10000, 100000]
                log(f"RSS after {points} jobs")
                raw["rss"] = tsd.rss_growth(workdir, points, timeout=600)
            if "claim" in sections:
                sizes = [1000, 100000] if quick else [1000, 1000000]
                log(f"claim time with {sizes} waiting jobs")
                raw["claim"] = tsd.claim_scaling(workdir, sizes, claims=200)
            if "mongo" in sections:
                log("Mongo round trips per job")
                try:
                    raw["mongo"] = tsd.mongo_round_trips(200 if not quick else 50)
                except Exception as exc:
                    raw["mongo"] = {"error": f"{type(exc).__name__}: {exc}"}
            if args.profile and "taskschedd" in systems:
                log("profiling taskschedd with py-spy")
                results["profile"] = profile.run(
                    workdir, args.peers_python.parent / "py-spy", n, date
                )
    finally:
        common.stop_all()
        run.sweep(log)
        results["finished"] = dt.datetime.now().isoformat(timespec="seconds")
        results["machine"]["loadavg_end"] = common.loadavg()
        results["summary"] = summarize(results)
        out = args.out or common.REPO / "bench/results" / f"{date}{'-quick' if quick else ''}.json"
        common.finish(results, out, render, workdir, args.keep, log)
    return 0


def tsd_versions() -> dict[str, str]:
    from importlib.metadata import version

    return {"taskschedd": version("taskschedd")}


def section_reps(
    reps: int, systems: list[str], pe: Peers, workdir: Path, measure: str, size: int
) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {s: [] for s in systems}
    for rep in range(reps):
        # Rotate the order each repetition: no system always runs first (or last).
        order = systems[rep % len(systems) :] + systems[: rep % len(systems)]
        for system in order:
            log(f"{measure} rep {rep + 1}/{reps}: {system}")
            if system in PEERS:
                if measure == "drain":
                    r = pe.run(system, "drain", 300 + size / 50, "-n", str(size))
                else:
                    r = pe.run(system, "latency", 180, "--count", str(size))
            elif measure == "drain":
                r = run_tsd(system, workdir, lambda s, st: common.measure_drain(s, size, st))
            else:
                r = run_tsd(
                    system, workdir, lambda s, st: common.measure_latency(s, size, 0.02, st)
                )
            r["loadavg"] = common.loadavg()
            log(f"  -> {brief(r)}")
            out[system].append(r)
    return out


def brief(r: dict[str, Any]) -> str:
    keys = ("drain_jobs_per_s", "enqueue_one_per_s", "enqueue_batch_per_s", "p50_ms", "p99_ms")
    parts = [f"{k}={r[k]:.1f}" for k in keys if isinstance(r.get(k), float | int)]
    return ", ".join(parts) or str(r.get("error", r))[:200]


def idle_all(
    systems: list[str], pe: Peers, workdir: Path, seconds: float
) -> dict[str, dict[str, Any]]:
    """Idle CPU of every system over the same window (they run side by side: an idle
    process's CPU time hardly depends on its neighbours)."""
    log(f"idle CPU over {seconds:g}s, all systems side by side")
    procs = {s: pe.start(s, "idle", "--seconds", str(seconds)) for s in systems if s in PEERS}
    out: dict[str, dict[str, Any]] = {}
    for s in systems:
        if s not in PEERS:
            out[s] = run_tsd(s, workdir, lambda sy, st: common.measure_idle(sy, seconds, st))
    for s, proc in procs.items():
        out[s] = pe.finish(proc, seconds + 180)
    return out


# -- summary ----------------------------------------------------------------------------
def med(rows: list[dict[str, Any]], key: str) -> float | None:
    vals = [r[key] for r in rows if isinstance(r.get(key), int | float)]
    return common.median(vals)


def summarize(results: dict[str, Any]) -> dict[str, Any]:
    raw = results.get("raw", {})
    s: dict[str, Any] = {"systems": {}}
    for measure in ("drain", "latency"):
        for system, rows in raw.get(measure, {}).items():
            row = s["systems"].setdefault(system, {})
            if measure == "drain":
                for key in ("drain_jobs_per_s", "enqueue_one_per_s", "enqueue_batch_per_s"):
                    row[key] = med(rows, key)
                rss = [
                    sorted(v["rss_mb"] for v in r["rss_after_drain"].values() if v["rss_mb"])
                    for r in rows
                    if "rss_after_drain" in r
                ]
                row["rss_after_drain_mb"] = rss[-1] if rss else None
            else:
                row["p50_ms"] = med(rows, "p50_ms")
                row["p99_ms"] = med(rows, "p99_ms")
    for system, r in raw.get("idle", {}).items():
        s["systems"].setdefault(system, {})["idle_cpu_percent"] = r.get("cpu_percent_of_core")
    base = s["systems"].get("taskschedd") or s["systems"].get("taskschedd-bare") or {}
    for row in s["systems"].values():
        ratios = {}
        for key in ("drain_jobs_per_s", "enqueue_one_per_s", "enqueue_batch_per_s"):
            if base.get(key) and row.get(key):
                ratios[key] = base[key] / row[key]  # > 1: taskschedd is faster
        for key in ("p50_ms", "p99_ms"):
            if base.get(key) and row.get(key):
                ratios[key] = row[key] / base[key]  # > 1: taskschedd is quicker
        row["taskschedd_advantage"] = ratios
    s["targets"] = targets(s, raw)
    return s


def targets(s: dict[str, Any], raw: dict[str, Any]) -> list[dict[str, Any]]:
    sysd = s["systems"]
    t = sysd.get("taskschedd") or sysd.get("taskschedd-bare") or {}
    out: list[dict[str, Any]] = []

    def add(name: str, value: float | None, goal: float, higher: bool, unit: str) -> None:
        met = None if value is None else (value >= goal if higher else value <= goal)
        out.append({"target": name, "value": value, "goal": goal, "met": met, "unit": unit})

    def ratio(peer: str) -> float | None:
        p = sysd.get(peer, {}).get("drain_jobs_per_s")
        return t["drain_jobs_per_s"] / p if p and t.get("drain_jobs_per_s") else None

    add("drain vs Huey-SQLite", ratio("huey-sqlite"), 2.0, True, "x")
    add("drain vs Celery", ratio("celery"), 3.0, True, "x")
    add("pickup p50", t.get("p50_ms"), 2.0, False, "ms")
    add("pickup p99", t.get("p99_ms"), 10.0, False, "ms")
    add("enqueue one at a time", t.get("enqueue_one_per_s"), 5000, True, "jobs/s")
    add("enqueue batch", t.get("enqueue_batch_per_s"), 50000, True, "jobs/s")
    add("taskschedctl add", raw.get("ctl", {}).get("median_s"), 0.3, False, "s")
    cps = raw.get("rss", {}).get("checkpoints") or []
    if cps:
        last = cps[-1]
        add("master RSS", last.get("master_mb"), 50, False, "MiB")
        add("worker RSS (largest)", max(last.get("workers_mb") or [0]), 40, False, "MiB")
        first = cps[0]
        growth = (last.get("master_mb") or 0) - (first.get("master_mb") or 0)
        wgrowth = max(last.get("workers_mb") or [0]) - max(first.get("workers_mb") or [0])
        add("RSS growth 10k->100k (master, worker)", max(growth, wgrowth), 2.0, False, "MiB")
    add("idle CPU", t.get("idle_cpu_percent"), 1.0, False, "% of a core")
    add("claim 1M vs 1k", raw.get("claim", {}).get("ratio_big_vs_small"), 2.0, False, "x")
    add(
        "Mongo round trips per job",
        raw.get("mongo", {}).get("steady_state_per_job"),
        3.0,
        False,
        "",
    )
    return out


def fmt(v: Any, digits: int = 0) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:,.{digits}f}"
    return str(v)


def render(results: dict[str, Any]) -> str:
    s = results["summary"]
    m = results["machine"]
    lines = [
        f"Date {results['date']}; {m['nproc']} CPUs ({m['cpu_model']}); Python "
        f"{results['python']}; SQLite {results['sqlite']}; load average at start "
        f"{m['loadavg'][0]:.2f}, at end {m.get('loadavg_end', [0])[0]:.2f}; "
        f"{results['args']['reps']} repetitions, medians; drain of {results['args']['n']:,} jobs.",
        "",
        "| system | drain jobs/s | x | p50 ms | p99 ms | enqueue 1/call jobs/s | batch jobs/s "
        "| idle CPU % | RSS after drain MiB |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for name, row in s["systems"].items():
        adv = row.get("taskschedd_advantage", {})
        rss = row.get("rss_after_drain_mb")
        lines.append(
            f"| {name} | {fmt(row.get('drain_jobs_per_s'))} | "
            f"{fmt(adv.get('drain_jobs_per_s'), 2)} | {fmt(row.get('p50_ms'), 1)} | "
            f"{fmt(row.get('p99_ms'), 1)} | {fmt(row.get('enqueue_one_per_s'))} | "
            f"{fmt(row.get('enqueue_batch_per_s'))} | {fmt(row.get('idle_cpu_percent'), 2)} | "
            f"{' / '.join(f'{x:.0f}' for x in rss) if rss else '-'} |"
        )
    lines += ["", "| target | goal | measured | met |", "|---|---:|---:|---|"]
    for t in s["targets"]:
        op = ">=" if t["target"].startswith(("drain", "enqueue")) else "<="
        met = {True: "met", False: "MISSED", None: "not measured"}[t["met"]]
        lines.append(
            f"| {t['target']} | {op} {fmt(t['goal'], 1)} {t['unit']} | "
            f"{fmt(t['value'], 2)} {t['unit']} | {met} |"
        )
    lines += ["", *details(results.get("raw", {}))]
    return "\n".join(lines) + "\n"


def details(raw: dict[str, Any]) -> list[str]:
    """One line per taskschedd-only figure."""
    out: list[str] = []
    wal = raw.get("wal", {})
    if "taskschedd" in wal:
        t = wal["taskschedd"]
        line = (
            f"- SQLite WAL pages per commit: taskschedd add_job {t['add_job']:.1f}, claim "
            f"{t['claim']:.1f}, settle {t['settle']:.1f} (one at a time: 2 commits per drained "
            "job)"
        )
        if "batch_16_per_job" in t:
            line += (
                f", claiming ahead {t['batch_16_per_job']:.1f} per job (16 outcomes and 16 "
                "claims in one commit)"
            )
        h = wal.get("huey-sqlite", {})
        if "enqueue" in h:
            line += (
                f"; Huey-SQLite enqueue {h['enqueue']:.1f}, dequeue {h['dequeue']:.1f} "
                f"(1 commit per drained job; synchronous={h['synchronous']}, {h['journal_mode']})"
            )
        out.append(line)
    for system, rows in raw.get("drain", {}).items():
        per_k: list[tuple[float, float]] = []
        for r in rows:
            procs = list(r.get("rss_after_drain", {}).values())
            if not procs or not r.get("n") or any(p.get("cpu_s") is None for p in procs):
                continue
            master = sum(p["cpu_s"] for p in procs if "master" in p["cmd"])
            rest = sum(p["cpu_s"] for p in procs if "master" not in p["cmd"])
            per_k.append((master * 1000 / r["n"], rest * 1000 / r["n"]))
        if per_k:
            m = common.median([x for x, _ in per_k]) or 0.0
            w = common.median([y for _, y in per_k]) or 0.0
            out.append(
                f"- {system} CPU per 1,000 jobs drained (start-up included): "
                + (f"master {m:.2f} s, " if m else "")
                + f"workers {w:.2f} s"
            )
    ctl = raw.get("ctl", {})
    if "median_s" in ctl:
        out.append(
            f"- taskschedctl add: median {ctl['median_s'] * 1000:.0f} ms of {ctl['n']} "
            f"(python -c pass {ctl['python_startup_median_s'] * 1000:.0f} ms, "
            f"import taskschedctl.cli {ctl['import_taskschedctl_cli_median_s'] * 1000:.0f} ms)"
        )
    rss = raw.get("rss", {})
    for cp in rss.get("checkpoints", []):
        workers = ", ".join(f"{w:.1f}" for w in cp.get("workers_mb") or [] if w)
        out.append(
            f"- RSS after {cp['jobs']:,} jobs: master {cp['master_mb']:.1f} MiB, "
            f"workers {workers} MiB"
        )
    claim = raw.get("claim", {})
    for size, c in claim.items():
        if isinstance(c, dict):
            out.append(
                f"- claim() with {int(size):,} waiting jobs: median {c['claim_median_ms']:.2f} ms "
                f"(p90 {c['claim_p90_ms']:.2f}); the master's count_due() "
                f"{c['count_due_median_ms']:.2f} ms"
            )
    mongo = raw.get("mongo", {})
    if "steady_state_per_job" in mongo:
        out.append(
            f"- Mongo round trips per job (an app's add_job next to a worker claiming ahead "
            f"up to {mongo.get('claim_ahead', {}).get('limit', 16)}): "
            f"{mongo['steady_state_per_job']:.2f} = add_job "
            f"{mongo['enqueue_one_per_job']:.2f} + claim and settle "
            f"{mongo['claim_settle_per_job']:.2f} (batch add {mongo['enqueue_batch_per_job']:.2f}/job; "
            f"an empty claim {mongo['idle_claim_attempt']:.1f}); commands {mongo['commands']}"
        )
        single = mongo.get("one_at_a_time")
        if single:
            out.append(
                f"- Mongo round trips per job, one job at a time (claim limit 1): "
                f"{single['total_per_job']:.2f} = add_job {single['add_per_job']:.2f} + claim "
                f"and settle {single['work_per_job']:.2f}; commands {single['commands']}"
            )
    elif mongo:
        out.append(f"- Mongo round trips: {mongo.get('skipped') or mongo.get('error')}")
    return out


if __name__ == "__main__":
    sys.exit(main())
