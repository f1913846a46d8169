"""Helpers shared by the orchestrator (project venv) and the peer drivers (peers venv).

Standard library only, so both virtualenvs can import it. Every wait has a deadline;
every process is started in its own session so that stopping it takes its whole group
(workers, pool children) with it.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import platform
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")
REPO = Path(__file__).resolve().parents[1]
CLK_TCK = os.sysconf("SC_CLK_TCK")
STAMP_ENV = "BENCH_STAMP_FILE"


# -- timing and statistics ------------------------------------------------------------
def median(values: Sequence[float]) -> float | None:
    return float(statistics.median(values)) if values else None


def percentile(values: Sequence[float], p: float) -> float | None:
    """Linear-interpolated percentile (p in 0..100)."""
    if not values:
        return None
    s = sorted(values)
    k = (len(s) - 1) * p / 100.0
    lo = int(k)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def wait_until(pred: Callable[[], T], timeout: float, what: str, interval: float = 0.005) -> T:
    """Poll ``pred`` until it returns something truthy; TimeoutError after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)


# -- stamps: jobs that record when they started -----------------------------------------
def write_stamp(tag: Any, t_enqueued: float) -> None:
    """Append ``tag t_enqueued t_started`` to $BENCH_STAMP_FILE (one write, O_APPEND)."""
    now = time.time()
    fd = os.open(os.environ[STAMP_ENV], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, f"{tag} {t_enqueued!r} {now!r}\n".encode())
    finally:
        os.close(fd)


def read_stamps(path: str | Path) -> dict[str, tuple[float, float]]:
    """tag -> (enqueued, started); a torn last line is ignored."""
    out: dict[str, tuple[float, float]] = {}
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        return out
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 3:
            with contextlib.suppress(ValueError):
                out[parts[0]] = (float(parts[1]), float(parts[2]))
    return out


def wait_stamps(
    path: str | Path,
    done: Callable[[dict[str, tuple[float, float]]], bool],
    timeout: float,
    what: str,
) -> dict[str, tuple[float, float]]:
    """Poll the stamp file until ``done(stamps)``; returns the stamps."""
    found: dict[str, tuple[float, float]] = {}

    def check() -> bool:
        nonlocal found
        found = read_stamps(path)
        return done(found)

    wait_until(check, timeout, what, interval=0.05)
    return found


def latency_summary(stamps: dict[str, tuple[float, float]], prefix: str) -> dict[str, Any]:
    lat = [(s - e) * 1000.0 for tag, (e, s) in stamps.items() if tag.startswith(prefix)]
    return {
        "n": len(lat),
        "p50_ms": percentile(lat, 50),
        "p99_ms": percentile(lat, 99),
        "max_ms": max(lat) if lat else None,
    }


def paced(count: int, period: float) -> Iterator[int]:
    """Yield 0..count-1, the i-th at start + i*period (absolute schedule, no drift)."""
    start = time.monotonic()
    for i in range(count):
        delay = start + i * period - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        yield i


# -- /proc ------------------------------------------------------------------------------
def rss_mb(pid: int) -> float | None:
    """VmRSS of a process in MiB (None if it is gone)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        return None
    return None


def cpu_seconds(pid: int) -> float | None:
    """utime + stime of a process, in seconds (None if it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def children(pid: int) -> list[int]:
    out: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tasks:
        with contextlib.suppress(OSError), open(f"/proc/{pid}/task/{tid}/children") as f:
            out.extend(int(x) for x in f.read().split())
    return out


def descendants(pid: int) -> list[int]:
    out: list[int] = []
    todo = [pid]
    while todo:
        kids = children(todo.pop())
        out.extend(kids)
        todo.extend(kids)
    return out


def kill_carrying(name: str, value: str) -> list[tuple[int, str]]:
    """SIGKILL every process but this one whose environment holds ``name=value`` (only
    processes a run started carry its id); (pid, command line) of each."""
    needle = f"{name}={value}".encode()
    killed: list[tuple[int, str]] = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                if needle not in f.read().split(b"\0"):
                    continue
        except OSError:
            continue
        command = cmdline(int(entry))
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(int(entry), signal.SIGKILL)
            killed.append((int(entry), command))
    return killed


def cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def tree_rss(pid: int) -> dict[str, Any]:
    """RSS of a process and each of its descendants (MiB)."""
    kids = descendants(pid)
    return {
        "root_mb": rss_mb(pid),
        "children_mb": [rss_mb(k) for k in kids],
        "total_mb": sum(filter(None, [rss_mb(p) for p in [pid, *kids]])),
    }


def finish(
    results: dict[str, Any],
    out: Path,
    render: Callable[[dict[str, Any]], str],
    workdir: Path,
    keep: bool,
    log: Callable[[str], None],
) -> None:
    """Write a run's results (``out``: JSON, and its table beside it as .md), print the
    table, and remove the scratch directory unless ``keep``."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1, sort_keys=True) + "\n")
    table = render(results)
    out.with_suffix(".md").write_text(table)
    print(table)
    log(f"results: {out}")
    if keep:
        log(f"scratch kept: {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)


@dataclass(frozen=True)
class Run:
    """One benchmark run: its id (in the environment variable ``env`` of every process it
    starts, so that :meth:`sweep` finds their leftovers), its scratch directory and the
    head of its results."""

    env: str
    id: str
    workdir: Path
    date: str
    header: dict[str, Any]

    def sweep(self, log: Callable[[str], None]) -> None:
        """Kill any process still carrying this run's id (belt and braces after the
        per-process cleanup): only processes this run started have it."""
        for pid, command in kill_carrying(self.env, self.id):
            log(f"killed leftover process {pid}: {command[:80]}")


def start_run(env: str, prefix: str) -> Run:
    """Begin a run: an id exported in ``env``, cleanup on SIGINT/SIGTERM, a scratch
    directory named ``prefix``..., and the results' header (date, start, machine with
    its load, Python and SQLite versions)."""
    run_id = uuid.uuid4().hex
    os.environ[env] = run_id
    install_signal_cleanup()
    workdir = Path(tempfile.mkdtemp(prefix=prefix))
    date = dt.date.today().isoformat()
    header = {
        "date": date,
        "started": dt.datetime.now().isoformat(timespec="seconds"),
        "machine": machine(),
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
    }
    return Run(env, run_id, workdir, date, header)


def loadavg() -> list[float]:
    with open("/proc/loadavg") as f:
        return [float(x) for x in f.read().split()[:3]]


def machine() -> dict[str, Any]:
    model = "unknown"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {"nproc": os.cpu_count(), "cpu_model": model, "loadavg": loadavg()}


# -- processes --------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


_LIVE: dict[int, subprocess.Popen[bytes]] = {}


def spawn(
    argv: Sequence[str], *, env: dict[str, str] | None = None, log: Path | None = None
) -> subprocess.Popen[bytes]:
    """Start a process in its own session (so stop() reaches its whole group)."""
    out = open(log, "ab") if log is not None else subprocess.DEVNULL  # noqa: SIM115
    try:
        proc = subprocess.Popen(
            list(argv),
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=REPO,
        )
    finally:
        if log is not None:
            out.close()  # type: ignore[union-attr]
    _LIVE[proc.pid] = proc
    return proc


def stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM, grace: float = 15.0) -> None:
    """``sig`` to the process group; SIGKILL to the group after ``grace``; reap."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=grace)
    # Whatever is left of the group (pool children, grandchildren) goes too.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=5)
    _LIVE.pop(proc.pid, None)


def stop_all() -> None:
    """Kill every process spawn() started that is still registered (cleanup path)."""
    for proc in list(_LIVE.values()):
        stop(proc, signal.SIGKILL, grace=2)


def install_signal_cleanup() -> None:
    """SIGTERM/SIGHUP end the run through the normal ``finally`` cleanup paths."""

    def handler(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, handler)


@contextlib.contextmanager
def redis_server(workdir: Path) -> Iterator[str]:
    """A throwaway Redis on a free loopback port, no persistence; yields its URL."""
    port = free_port()
    proc = spawn(
        [
            "redis-server",
            "--port", str(port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "no",
            "--dir", str(workdir),
            "--daemonize", "no",
            "--databases", "16",
        ],
        log=workdir / "redis.log",
    )  # fmt: skip
    try:

        def up() -> bool:
            if proc.poll() is not None:
                raise RuntimeError(f"redis-server exited; see {workdir / 'redis.log'}")
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
                    s.sendall(b"PING\r\n")
                    return s.recv(16).startswith(b"+PONG")
            except OSError:
                return False

        wait_until(up, 15, "redis-server to answer PING", interval=0.05)
        yield f"redis://127.0.0.1:{port}"
    finally:
        stop(proc, grace=5)


# -- the measurements, the same for every system ------------------------------------------
class System:
    """One job system under test. Subclasses start real worker processes."""

    name = "?"
    batch = False  # has a batch enqueue API

    def reset(self) -> None:
        """Empty the queue and all state."""

    def enqueue_noop(self) -> None:
        raise NotImplementedError

    def enqueue_noop_batch(self, k: int) -> None:
        raise NotImplementedError

    def enqueue_stamp(self, tag: str, t: float) -> None:
        raise NotImplementedError

    def start(self) -> None:
        """Start the workers (returns at once; jobs show when they are ready)."""
        raise NotImplementedError

    def roots(self) -> list[int]:
        """Pids of the processes started (their descendants are counted too)."""
        raise NotImplementedError

    def backlog(self) -> int:
        """Jobs waiting (not yet taken by a worker)."""
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Drop client connections."""

    def processes(self) -> list[int]:
        pids: list[int] = []
        for root in self.roots():
            pids.append(root)
            pids.extend(descendants(root))
        return pids

    def rss(self) -> dict[str, Any]:
        return {
            str(p): {"rss_mb": rss_mb(p), "cpu_s": cpu_seconds(p), "cmd": cmdline(p)[:120]}
            for p in self.processes()
        }


ONE_AT_A_TIME = 2000  # enqueue-rate sample (one job per call)
BATCH = 1000  # jobs per batch call


def measure_drain(system: System, n: int, stamp_file: Path) -> dict[str, Any]:
    """Enqueue ``n`` jobs (the first and last record their start), then start the workers
    and time from the first job's start to the last one's: jobs/s. Enqueue rates are
    measured on the way (one per call for the first ONE_AT_A_TIME jobs, then batches)."""
    system.reset()
    stamp_file.unlink(missing_ok=True)
    system.enqueue_stamp("d-first", time.time())
    m = min(ONE_AT_A_TIME, (n - 2) // 4)  # the rest goes in batches (where there are any)
    t0 = time.perf_counter()
    for _ in range(m):
        system.enqueue_noop()
    one = m / (time.perf_counter() - t0)
    rest = n - 2 - m
    batch: float | None = None
    if rest > 0:
        t0 = time.perf_counter()
        if system.batch:
            left = rest
            while left > 0:
                k = min(BATCH, left)
                system.enqueue_noop_batch(k)
                left -= k
            batch = rest / (time.perf_counter() - t0)
        else:
            for _ in range(rest):
                system.enqueue_noop()
    system.enqueue_stamp("d-last", time.time())
    load_before = loadavg()
    system.start()
    try:
        stamps = wait_stamps(
            stamp_file,
            lambda s: "d-last" in s and "d-first" in s,
            max(180.0, n / 50.0),
            f"{system.name}: the last of {n} jobs",
        )
        elapsed = stamps["d-last"][1] - stamps["d-first"][1]
        wait_until(lambda: system.backlog() == 0, 30, f"{system.name}: an empty queue", 0.05)
        rss = system.rss()
    finally:
        system.stop()
    return {
        "n": n,
        "drain_s": elapsed,
        "drain_jobs_per_s": (n - 1) / elapsed if elapsed > 0 else None,
        "enqueue_one_per_s": one,
        "enqueue_batch_per_s": batch,
        "rss_after_drain": rss,
        "loadavg_before": load_before,
        "loadavg_after": loadavg(),
    }


def measure_latency(system: System, count: int, period: float, stamp_file: Path) -> dict[str, Any]:
    """Idle workers; one job every ``period`` s; latency = job start - just before enqueue."""
    system.reset()
    stamp_file.unlink(missing_ok=True)
    system.start()
    try:
        for i in paced(10, 0.05):
            system.enqueue_stamp(f"w{i}", time.time())
        wait_until(
            lambda: sum(1 for k in read_stamps(stamp_file) if k.startswith("w")) >= 10,
            90,
            f"{system.name}: warm-up jobs",
            interval=0.05,
        )
        time.sleep(1.0)  # let the workers go idle: the figure is for idle workers
        for i in paced(count, period):
            system.enqueue_stamp(f"l{i}", time.time())
        stamps = wait_stamps(
            stamp_file,
            lambda s: sum(1 for k in s if k.startswith("l")) >= count,
            60 + count * period,
            f"{system.name}: {count} latency jobs",
        )
    finally:
        system.stop()
    out = latency_summary(stamps, "l")
    out["period_ms"] = period * 1000
    return out


def measure_idle(system: System, seconds: float, stamp_file: Path) -> dict[str, Any]:
    """CPU used by the idle workers (and master) over ``seconds``, in % of one core."""
    system.reset()
    stamp_file.unlink(missing_ok=True)
    system.start()
    try:
        for i in range(3):
            system.enqueue_stamp(f"w{i}", time.time())
        wait_until(lambda: len(read_stamps(stamp_file)) >= 3, 90, f"{system.name}: warm-up", 0.05)
        time.sleep(2.0)  # settle: the first idle seconds are not steady state
        pids = system.processes()
        before = {p: cpu_seconds(p) for p in pids}
        t0 = time.monotonic()
        time.sleep(seconds)
        dt = time.monotonic() - t0
        after = {p: cpu_seconds(p) for p in pids}
        rss = system.rss()
    finally:
        system.stop()
    per = {
        str(p): (after[p] - before[p]) / dt * 100  # type: ignore[operator]
        for p in pids
        if before[p] is not None and after[p] is not None
    }
    return {
        "seconds": dt,
        "cpu_percent_of_core": sum(per.values()),
        "per_process": per,
        "rss_idle": rss,
    }
