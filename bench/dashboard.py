"""Dashboard figures (issue 16): pages served by the real ``taskschedctl dashboard`` on a
SQLite store of 1,000,000 jobs, and the load its live stream puts on a draining node.

    .venv/bin/python -m bench.dashboard [--jobs 1000000] [--reps 20] [--quick]

1. **Store.** ``--jobs`` jobs (and a tenth as many, to show how each page scales) in
   SQLite files built with ``Store.insert()`` (10,000 NewJobs per call: 5 queues, 20
   classes of skewed sizes, one of them rare, created evenly over 7 days), then bulk
   UPDATEs that go through the counts triggers: most DONE, 2% FAILED with an error and
   its traceback, a few CANCELED and TIMEOUT, the newest 2% (the last 3.4 hours) WAITING,
   a quarter of them scheduled in the future, and 12 recurring series (interval and
   cron) added through ``Scheduler.add_jobs``. The event log holds the adds only: no job
   ended in the last hour, so the overview's chart is empty (the feed's in-memory
   histogram; a page does not read it from the store). Files are cached by (jobs,
   schema version, digest of a new store's schema SQL) under ``--cache`` (default /var/tmp/taskschedd-bench-dashboard): a
   rerun starts at once; a build of 1,000,000 takes minutes (13 on a loaded 2-core box).
2. **Pages.** The ``taskschedctl dashboard`` command (through ``_instrumented`` below:
   the real CLI, with a timing middleware and the store reads counted) on that file.
   Each page: one warm-up, then ``--reps`` rounds that visit every page once each
   (round-robin, so that the machine's noise spreads over all of them): median and p90
   of the request's own time in the dashboard (server) and as a keep-alive httpx client
   on loopback sees it (client). Deep pages are reached by following the "older »"
   links (the keyset cursor), as a browser would. For each jobs list, the store's own
   ``find()`` is also timed in-process with its SQL and query plan: where the time goes.
3. **Live load.** A node (bench/tsd.py's daemon: pm static, 2 workers) drains
   ``--drain-jobs`` no-op jobs, (a) alone, (b) with a dashboard process and ``--clients``
   SSE clients (threads of one more process, reading every event of /live), side by side,
   the order alternating each repetition. Figures: drain jobs/s (first job's start to the
   last one's), the ratio b/a, CPU seconds of the dashboard and of the clients during the
   drain, the dashboard's store reads, events the clients received.

Results: bench/results/dashboard-DATE.{json,md}. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import hashlib
import html
import itertools
import json
import os
import random
import re
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

from bench import common, tsd
from bench.workflows import git_head

RUN_ENV = "BENCH_DASHBOARD_RUN_ID"
CACHE = Path("/var/tmp/taskschedd-bench-dashboard")
GOAL_MS = 300.0
QUEUES = [f"q{i}" for i in range(5)]
#: 19 classes of Zipf-like sizes and one rare one (about 5 jobs in 100,000).
CLASSES = [f"app.tasks.Class{i:02d}" for i in range(19)]
RARE = "app.tasks.RareReport"
RARE_SHARE = 5e-5
SPAN = 7 * 86400.0  # creation times spread over this much, ending at build time
BATCH = 10_000
RECURRING = 12
#: A class with many jobs for the combined filter (status=done&class=X).
COMMON = CLASSES[0]
#: A middling class: FAILED of it is a sparse intersection of two large sets.
MIDDLE = CLASSES[6]


def log(msg: str) -> None:
    print(
        f"[dashboard {time.strftime('%H:%M:%S')} load {common.loadavg()[0]:.2f}] {msg}", flush=True
    )


# -- 1. the store ---------------------------------------------------------------------------


def schema_version() -> int:
    from taskschedd.store.sqlite import SCHEMA_VERSION

    return SCHEMA_VERSION


def schema_digest() -> str:
    """The schema a new store gets (tables, indexes, triggers), hashed: a cached file
    built by other code of the same schema version is not reused."""
    from taskschedd.store.sqlite import SQLiteStore

    with tempfile.TemporaryDirectory() as tmp:
        store = SQLiteStore(f"sqlite:///{tmp}/empty.db", create=True)
        store.close()
        with contextlib.closing(sqlite3.connect(f"{tmp}/empty.db")) as c:
            rows = c.execute("SELECT type, name, sql FROM sqlite_master ORDER BY name").fetchall()
    return hashlib.sha256(repr(rows).encode()).hexdigest()[:10]


def build_store(cache: Path, n: int) -> tuple[Path, dict[str, Any]]:
    """The cached store of ``n`` jobs and what the pages need to know about it (built
    when missing: into a temporary name, renamed when complete)."""
    cache.mkdir(parents=True, exist_ok=True)
    path = cache / f"dash-{n}-s{schema_version()}-{schema_digest()}.db"
    meta_path = path.with_suffix(".json")
    if path.exists() and meta_path.exists():
        meta: dict[str, Any] = json.loads(meta_path.read_text())
        meta["cached"] = True
        return path, meta
    tmp = cache / f"building-{os.getpid()}-{path.name}"
    for suffix in ("", "-wal", "-shm"):
        Path(f"{tmp}{suffix}").unlink(missing_ok=True)
    t0 = time.perf_counter()
    meta = _fill(tmp, n)
    meta["build_s"] = time.perf_counter() - t0
    meta["db_mb"] = tmp.stat().st_size / 2**20
    for suffix in ("-wal", "-shm"):
        Path(f"{tmp}{suffix}").unlink(missing_ok=True)
    with contextlib.suppress(FileNotFoundError):
        (cache / f"{tmp.name}-notify").rmdir()
    tmp.rename(path)
    meta_path.write_text(json.dumps(meta, indent=1) + "\n")
    meta["cached"] = False
    return path, meta


def _fill(path: Path, n: int) -> dict[str, Any]:
    from taskschedd.model import NewJob
    from taskschedd.options import Defaults, resolve
    from taskschedd.scheduler import JobSpec, Scheduler
    from taskschedd.store.sqlite import SQLiteStore

    url = f"sqlite:///{path}"
    rng = random.Random(16)
    defaults = Defaults.parse({})
    options = {q: resolve({"queue": q}, defaults)[0] for q in QUEUES}
    weights = [1.0 / (k + 1) for k in range(len(CLASSES))]
    total_w = sum(weights)
    weights = [w / total_w * (1 - RARE_SHARE) for w in weights] + [RARE_SHARE]
    classes = [*CLASSES, RARE]
    end = time.time()
    start = end - SPAN
    step = SPAN / n
    store = SQLiteStore(url, create=True)
    t0 = time.perf_counter()
    try:
        for first in range(0, n, BATCH):
            k = min(BATCH, n - first)
            picks = rng.choices(classes, weights, k=k)
            jobs = []
            for j in range(k):
                i = first + j
                created = start + i * step
                jobs.append(
                    NewJob(
                        id=uuid.UUID(int=rng.getrandbits(128), version=4).hex,
                        cls=picks[j],
                        data_json=json.dumps({"i": i, "user": i % 977}),
                        options=options[QUEUES[(i * 7 + i // 13) % len(QUEUES)]],
                        at=created,
                        created=created,
                    )
                )
            store.insert(jobs)
    finally:
        store.close()
    insert_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    _statuses(path, n, end)
    update_s = time.perf_counter() - t0
    sched = Scheduler(url)
    try:
        specs = [JobSpec("app.tasks.Hourly", {"i": i}, {"interval": 3600 + i, "queue": QUEUES[i % 5]})
                 for i in range(RECURRING // 2)]  # fmt: skip
        specs += [JobSpec("app.tasks.Cron", {"i": i}, {"cron": f"{i} */2 * * *"})
                  for i in range(RECURRING - len(specs))]  # fmt: skip
        sched.add_jobs(specs)
    finally:
        sched.close()
    with contextlib.closing(sqlite3.connect(path)) as c:
        failed = c.execute(
            "SELECT id FROM jobs WHERE status = 4 ORDER BY seq DESC LIMIT 1 OFFSET ?",
            (n // 10_000,),
        ).fetchone()[0]
        prefix = failed[:3]
        by = dict(c.execute("SELECT cls, SUM(n) FROM job_counts GROUP BY cls").fetchall())
        statuses = dict(c.execute("SELECT status, SUM(n) FROM job_counts GROUP BY status"))
        (events,) = c.execute("SELECT COUNT(*) FROM events").fetchone()
        c.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return {
        "n": n,
        "schema": schema_version(),
        "schema_digest": schema_digest(),
        "start": start,
        "end": end,
        "insert_s": insert_s,
        "update_s": update_s,
        "failed_id": failed,
        "prefix": prefix,
        "classes": {str(k): int(v) for k, v in by.items()},
        "statuses": {str(k): int(v) for k, v in statuses.items()},
        "events": int(events),
    }


def _statuses(path: Path, n: int, end: float) -> None:
    """Final statuses in bulk, in slices of seq (each its own transaction, so the WAL
    stays small); the counts triggers keep job_counts right."""
    waiting_from = int(n * 0.98)
    error = json.dumps(
        {
            "attempt": 1,
            "type": "ValueError",
            "message": "could not parse the report: unexpected '<script>' at line 3",
            "traceback": "Traceback (most recent call last):\n"
            + '  File "app/tasks.py", line 42, in start\n    return parse(self.data)\n' * 8
            + "ValueError: could not parse the report",
            "reason": "exception",
        }
    )
    final = (
        "CASE WHEN seq % 50 = 7 THEN 4 WHEN seq % 500 = 11 THEN 5 "
        "WHEN seq % 1000 = 13 THEN 6 ELSE 3 END"
    )
    with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as c:
        c.execute("PRAGMA journal_mode=WAL")
        c.execute("PRAGMA synchronous=NORMAL")
        for lo in range(0, waiting_from, 100_000):
            hi = min(lo + 100_000, waiting_from)
            c.execute("BEGIN IMMEDIATE")
            c.execute(
                f"UPDATE jobs SET status = {final}, attempt = 1, started = created + 0.002, "
                "ended = created + 0.01 + (seq % 17) * 0.003, node = 'node-a', "
                "worker = 'node-a/' || (seq % 4), "
                "result = CASE WHEN seq % 50 = 7 OR seq % 500 = 11 OR seq % 1000 = 13 "
                "THEN NULL ELSE '{\"ok\": true}' END, "
                "errors = CASE WHEN seq % 50 = 7 THEN json_array(json_set(json(?), "
                "'$.time', created + 0.01)) ELSE '[]' END "
                "WHERE seq > ? AND seq <= ?",
                (error, lo, hi),
            )
            c.execute("COMMIT")
        # A quarter of the waiting ones are scheduled ahead (at in the next hours).
        c.execute(
            "UPDATE jobs SET at = ? + (seq % 97) * 60 WHERE seq > ? AND seq % 4 = 0",
            (end, waiting_from),
        )
        c.execute("PRAGMA wal_checkpoint(TRUNCATE)")


# -- 2. pages ---------------------------------------------------------------------------------


def _iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def pages(meta: dict[str, Any]) -> list[tuple[str, str]]:
    """(name, path) of each page timed; ``@N`` after a path: its N-th page (older links)."""
    mid = meta["start"] + SPAN * 0.5
    far = meta["start"] + SPAN * 0.25
    window = urlencode({"since": _iso(mid), "until": _iso(mid + 600)})
    wide = urlencode({"since": _iso(far), "until": _iso(far + 86400)})
    return [
        ("overview", "/"),
        ("jobs (newest)", "/jobs"),
        ("jobs status=failed", "/jobs?status=failed"),
        ("jobs status=done", "/jobs?status=done"),
        ("jobs queue=q3", "/jobs?queue=q3"),
        ("jobs class=<rare>", f"/jobs?class={RARE}"),
        ("jobs status=done&class=<common>", f"/jobs?status=done&class={COMMON}"),
        ("jobs id=<3-char prefix>", f"/jobs?id={meta['prefix']}"),
        ("jobs 10-min window", f"/jobs?{window}"),
        ("jobs page 2", "/jobs@2"),
        ("jobs page 50", "/jobs@50"),
        ("jobs status=done page 2", "/jobs?status=done@2"),
        ("jobs status=done page 50", "/jobs?status=done@50"),
        ("series", "/series"),
        ("job (failed)", f"/jobs/{meta['failed_id']}"),
        # Beyond the brief: the harder shapes found on the way.
        ("jobs status=failed&class=<middle>", f"/jobs?status=failed&class={MIDDLE}"),
        ("jobs 1-day window 5 days back", f"/jobs?{wide}"),
        ("jobs 1-day window 5 days back, page 50", f"/jobs?{wide}@50"),
    ]


OLDER = re.compile(r'<a href="([^"]*)" id="older">')


def resolve_page(client: Any, path: str) -> tuple[str, int]:
    """``path@N``: follow the "older »" link N-1 times from ``path`` (or to the last
    page, in a store too small); the page's path and its number."""
    if "@" not in path:
        return path, 1
    path, _, nth = path.rpartition("@")
    page = 1
    while page < int(nth):
        r = client.get(path)
        r.raise_for_status()
        found = OLDER.search(r.text)
        if found is None:
            break
        path = html.unescape(found.group(1))
        page += 1
    return path, page


class Dashboard:
    """``taskschedctl dashboard`` on a store, in its own session, through this module's
    ``_instrumented`` wrapper: the real CLI command, with its store reads counted and each
    request's own time (first ASGI call to last byte sent) logged by a middleware."""

    def __init__(self, url: str, workdir: Path, tag: str) -> None:
        self.port = common.free_port()
        self.status = workdir / f"{tag}.reads.json"
        self.timings = workdir / f"{tag}.requests.tsv"
        for path in (self.status, self.timings):
            path.unlink(missing_ok=True)
        args = ["dashboard", "--store", url, "--listen", f"127.0.0.1:{self.port}", "--read-only"]
        argv = [sys.executable, "-m", "bench.dashboard", "_instrumented", str(self.status),
                str(self.timings), *args]  # fmt: skip
        self.log = workdir / f"{tag}.dashboard.log"
        self.proc = common.spawn(argv, env=tsd._env(), log=self.log)
        self.base = f"http://127.0.0.1:{self.port}"

        def up() -> bool:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the dashboard exited: {self.log.read_text()[-2000:]}")
            try:
                import httpx

                return httpx.get(self.base + "/healthz", timeout=1.0).status_code == 200
            except Exception:
                return False

        common.wait_until(up, 60, "the dashboard to answer /healthz", interval=0.05)

    def reads(self) -> int | None:
        with contextlib.suppress(OSError, ValueError):
            return int(json.loads(self.status.read_text())["reads"])
        return None

    def served(self) -> dict[str, list[tuple[float, int]]]:
        """Page label -> (ms, store reads meanwhile) of each request that carried one."""
        out: dict[str, list[tuple[float, int]]] = {}
        with contextlib.suppress(OSError):
            for line in self.timings.read_text().splitlines():
                label, ms, reads = line.split("\t")
                out.setdefault(label, []).append((float(ms), int(reads)))
        return out

    def cpu(self) -> float | None:
        return common.cpu_seconds(self.proc.pid)

    def stop(self) -> None:
        common.stop(self.proc, grace=10)


def time_pages(
    db: Path, meta: dict[str, Any], reps: int, workdir: Path, tag: str
) -> dict[str, Any]:
    """Each page: client-side ms (sent to body read) and server-side ms (the request's
    own time in the dashboard), a warm-up first, then ``reps`` round-robin rounds."""
    import httpx

    dash = Dashboard(f"sqlite:///{db}", workdir, tag)
    out: dict[str, Any] = {}
    try:
        with httpx.Client(base_url=dash.base, timeout=60.0) as client:
            client.get("/")  # the feed starts on first use; its first fill is not a page
            common.wait_until(lambda: client.get("/").status_code == 200, 60, "the overview")
            todo = []
            for name, path in [("floor: /healthz", "/healthz"), *pages(meta)]:
                t0 = time.perf_counter()
                real, page = resolve_page(client, path)
                walk = time.perf_counter() - t0
                t0 = time.perf_counter()
                r = client.get(real, headers={"x-bench-page": f"first {name}"})
                first = (time.perf_counter() - t0) * 1000
                rows = (
                    r.text.count("<tr data-job-id=")
                    if real.startswith("/jobs?") or real == "/jobs"
                    else None
                )
                out[name] = {"path": real, "first_ms": first, "status": r.status_code,
                             "bytes": len(r.content), "rows": rows, "page": page,
                             "walk_s": walk if "@" in path else None, "ms": []}  # fmt: skip
                if r.status_code != 200:
                    log(f"  {name}: HTTP {r.status_code}: {r.text[:300]!r}")
                todo.append((name, real))
            for _ in range(reps):
                for name, real in todo:
                    t0 = time.perf_counter()
                    r = client.get(real, headers={"x-bench-page": name})
                    _ = r.content
                    out[name]["ms"].append((time.perf_counter() - t0) * 1000)
        time.sleep(0.3)
        served = dash.served()
        for name, row in out.items():
            row["median_ms"] = common.median(row["ms"])
            row["p90_ms"] = common.percentile(row["ms"], 90)
            server = [ms for ms, _ in served.get(name, [])]
            row["server_ms"] = server
            row["server_median_ms"] = common.median(server)
            row["server_p90_ms"] = common.percentile(server, 90)
            row["server_first_ms"] = next(iter(served.get(f"first {name}", [])), (None, 0))[0]
            row["store_reads_median"] = common.median([n for _, n in served.get(name, [])])
        out["_dashboard_cpu_s"] = dash.cpu()
    finally:
        dash.stop()
    return out


def store_side(db: Path, meta: dict[str, Any], found: dict[str, Any], reps: int) -> dict[str, Any]:
    """In-process: each jobs list's ``find()`` timed on its own, its SQL and query plan."""
    from taskschedd.dashboard import views
    from taskschedd.store.sqlite import SQLiteStore

    store = SQLiteStore(f"sqlite:///{db}")
    conn: sqlite3.Connection = store._conn
    out: dict[str, Any] = {}
    try:
        for name, row in found.items():
            if name.startswith("_") or not re.fullmatch(r"/jobs(\?.*)?", row["path"]):
                continue
            query = dict(parse_qsl(urlsplit(row["path"]).query))
            f = views.Filters.parse(query)
            q = f.query(views.PAGE + 1)
            statements: list[str] = []
            conn.set_trace_callback(statements.append)
            store.find(q)
            conn.set_trace_callback(None)
            times = []
            for _ in range(reps):
                t0 = time.perf_counter()
                store.find(q)
                times.append((time.perf_counter() - t0) * 1000)
            plans = []
            for sql in statements:
                if sql.lstrip().upper().startswith("SELECT"):
                    plan = conn.execute("EXPLAIN QUERY PLAN " + sql).fetchall()
                    plans.append({"sql": sql[:400], "plan": [p[3] for p in plan]})
            out[name] = {"find_median_ms": common.median(times), "statements": plans}
    finally:
        store.close()
    return out


# -- 3. the live stream's load ------------------------------------------------------------------


def _instrumented(status: Path, timings: Path, argv: list[str]) -> int:
    """``taskschedctl`` with every SQLiteStore read counted into ``status`` (JSON, every
    0.2 s), and the time of each request that names its page (header x-bench-page)
    appended to ``timings``: label, ms, store reads meanwhile (the feed's included)."""
    import taskschedd.dashboard.app as dashboard_app
    from taskschedctl.cli import main as ctl_main
    from taskschedd.store.sqlite import SQLiteStore

    counter = itertools.count(1)
    reads = [0]
    real_read = SQLiteStore._read

    def counted(self: SQLiteStore, fn: Any) -> Any:
        reads[0] = next(counter)  # next() is atomic under the GIL
        return real_read(self, fn)

    SQLiteStore._read = counted  # type: ignore[method-assign]
    out = open(timings, "a", buffering=1)  # noqa: SIM115  (the process's lifetime)

    class Timing:
        def __init__(self, app: Any) -> None:
            self.app = app

        async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
            label = None
            if scope["type"] == "http":
                for key, value in scope.get("headers", []):
                    if key == b"x-bench-page":
                        label = value.decode()
            if label is None:
                await self.app(scope, receive, send)
                return
            r0, t0 = reads[0], time.perf_counter()
            try:
                await self.app(scope, receive, send)
            finally:
                ms = (time.perf_counter() - t0) * 1000
                out.write(f"{label}\t{ms:.3f}\t{reads[0] - r0}\n")

    real_create = dashboard_app.create_app

    def create_app(*args: Any, **kwargs: Any) -> Any:
        app = real_create(*args, **kwargs)
        app.add_middleware(Timing)  # outermost: the guard's work included
        return app

    dashboard_app.create_app = create_app

    def report() -> None:
        while True:
            tmp = status.with_suffix(".tmp")
            tmp.write_text(json.dumps({"reads": reads[0]}))
            tmp.replace(status)
            time.sleep(0.2)

    threading.Thread(target=report, daemon=True).start()
    sys.argv = ["taskschedctl", *argv]
    ctl_main()  # exits


def _sse(url: str, clients: int, status: Path) -> int:
    """``clients`` threads, each reading every event of ``url`` (SSE); their totals into
    ``status`` (JSON, every 0.2 s) until killed."""
    import httpx

    lock = threading.Lock()
    state: dict[str, Any] = {"connected": 0, "events": {}, "bytes": 0, "errors": []}

    def one() -> None:
        try:
            timeout = httpx.Timeout(10.0, read=None)
            with httpx.Client(timeout=timeout) as client, client.stream("GET", url) as r:
                seen = False
                for line in r.iter_lines():
                    if line.startswith("event:"):
                        kind = line[6:].strip()
                        with lock:
                            state["events"][kind] = state["events"].get(kind, 0) + 1
                            if not seen:
                                state["connected"] += 1
                                seen = True
                    with lock:
                        state["bytes"] += len(line) + 1
        except Exception as exc:  # reported, not raised: the harness reads the status
            with lock:
                state["errors"].append(f"{type(exc).__name__}: {exc}")

    for _ in range(clients):
        threading.Thread(target=one, daemon=True).start()
    while True:
        with lock:
            text = json.dumps(state)
        tmp = status.with_suffix(".tmp")
        tmp.write_text(text)
        tmp.replace(status)
        time.sleep(0.2)


def _read_json(path: Path) -> dict[str, Any]:
    with contextlib.suppress(OSError, ValueError):
        value: dict[str, Any] = json.loads(path.read_text())
        return value
    return {}


def drain(workdir: Path, n: int, tag: str, clients: int) -> dict[str, Any]:
    """One drain of ``n`` no-op jobs by a fresh daemon, with ``clients`` SSE clients of a
    dashboard on its store (0: no dashboard)."""
    from taskschedd.scheduler import JobSpec

    stamps = workdir / f"{tag}.stamps"
    stamps.unlink(missing_ok=True)
    os.environ[common.STAMP_ENV] = str(stamps)
    system = tsd.Taskschedd(workdir, tag=tag)
    dash: Dashboard | None = None
    sse: subprocess.Popen[bytes] | None = None
    sse_status = workdir / f"{tag}.sse.json"
    out: dict[str, Any] = {"clients": clients, "n": n}
    try:
        specs = [JobSpec(tsd.STAMP, {"k": "d-first", "t": 0.0})]
        specs += [JobSpec(tsd.NOOP, None)] * (n - 2)
        specs += [JobSpec(tsd.STAMP, {"k": "d-last", "t": 0.0})]
        for i in range(0, n, common.BATCH):
            system.scheduler.add_jobs(specs[i : i + common.BATCH])
        if clients:
            dash = Dashboard(system.url, workdir, tag)
            argv = [sys.executable, "-m", "bench.dashboard", "_sse", dash.base + "/live",
                    str(clients), str(sse_status)]  # fmt: skip
            sse = common.spawn(argv, env=tsd._env(), log=workdir / f"{tag}.sse.log")
            common.wait_until(
                lambda: _read_json(sse_status).get("connected", 0) >= clients,
                60,
                f"{clients} SSE clients",
                interval=0.05,
            )
            _settle(dash.proc.pid)
            out["connect_errors"] = _read_json(sse_status).get("errors", [])
        cpu0 = dash.cpu() if dash else None
        sse_cpu0 = common.cpu_seconds(sse.pid) if sse else None
        reads0 = dash.reads() if dash else None
        ev0 = _read_json(sse_status).get("events", {}) if sse else {}
        load_before = common.loadavg()
        t0 = time.monotonic()
        system.start()
        found = common.wait_stamps(
            stamps,
            lambda s: "d-first" in s and "d-last" in s,
            max(180.0, n / 50.0),
            f"the last of {n} jobs",
        )
        out["wall_s"] = time.monotonic() - t0
        if dash is not None and sse is not None:
            time.sleep(0.3)  # the status files are written every 0.2 s
            out["dashboard_cpu_s"] = (dash.cpu() or 0) - (cpu0 or 0)
            out["clients_cpu_s"] = (common.cpu_seconds(sse.pid) or 0) - (sse_cpu0 or 0)
            out["dashboard_reads"] = (dash.reads() or 0) - (reads0 or 0)
            status = _read_json(sse_status)
            ev1 = status.get("events", {})
            out["events_per_client"] = {
                k: (v - ev0.get(k, 0)) / clients for k, v in sorted(ev1.items())
            }
            out["client_errors"] = status.get("errors", [])
        common.wait_until(lambda: system.done() >= n, 60, "every job DONE", interval=0.05)
        node_cpu = [common.cpu_seconds(p) for p in system.processes()]
    finally:
        if sse is not None:
            common.stop(sse, grace=2)
        if dash is not None:
            dash.stop()
        system.stop()
        system.close()
        for suffix in ("", "-wal", "-shm"):
            Path(f"{system.db}{suffix}").unlink(missing_ok=True)
    elapsed = found["d-last"][1] - found["d-first"][1]
    known = [c for c in node_cpu if c is not None]
    out.update(
        drain_s=elapsed,
        drain_jobs_per_s=(n - 1) / elapsed if elapsed > 0 else None,
        node_cpu_ms_per_job=sum(known) * 1000 / n if known else None,
        loadavg_before=load_before,
        loadavg_after=common.loadavg(),
    )
    return out


def _settle(pid: int, quiet: float = 0.05, timeout: float = 30.0) -> None:
    """Until a process uses under ``quiet`` CPU seconds in half a second (the dashboard
    reads the hour's events when its feed starts: not part of the drain)."""
    last = [common.cpu_seconds(pid) or 0.0]

    def calm() -> bool:
        time.sleep(0.5)
        now = common.cpu_seconds(pid) or 0.0
        ok = now - last[0] < quiet
        last[0] = now
        return ok

    common.wait_until(calm, timeout, "the dashboard to settle", interval=0)


def live(workdir: Path, n: int, reps: int, clients: int) -> dict[str, Any]:
    raw: dict[str, list[dict[str, Any]]] = {"alone": [], "watched": []}
    for rep in range(reps):
        order = ["alone", "watched"] if rep % 2 == 0 else ["watched", "alone"]
        for variant in order:
            log(f"live rep {rep + 1}: {variant}")
            try:
                k = clients if variant == "watched" else 0
                r = drain(workdir, n, f"{variant}-{rep}", k)
            except Exception as exc:  # one failed figure must not lose the others
                r = {"error": f"{type(exc).__name__}: {exc}"}
            shown = {k: v for k, v in r.items() if "load" not in k}
            log(f"  -> {json.dumps(shown)}")
            raw[variant].append(r)
    alone = common.median(
        [r["drain_jobs_per_s"] for r in raw["alone"] if r.get("drain_jobs_per_s")]
    )
    watched = common.median(
        [r["drain_jobs_per_s"] for r in raw["watched"] if r.get("drain_jobs_per_s")]
    )
    pairs = [
        w["drain_jobs_per_s"] / a["drain_jobs_per_s"]
        for a, w in zip(raw["alone"], raw["watched"], strict=False)
        if a.get("drain_jobs_per_s") and w.get("drain_jobs_per_s")
    ]

    def med(key: str) -> float | None:
        return common.median(
            [r[key] for r in raw["watched"] if isinstance(r.get(key), int | float)]
        )

    return {
        "raw": raw,
        "alone_jobs_per_s": alone,
        "watched_jobs_per_s": watched,
        "ratio_of_medians": watched / alone if watched and alone else None,
        "pair_ratios": pairs,
        "median_of_pair_ratios": common.median(pairs),
        "dashboard_cpu_s": med("dashboard_cpu_s"),
        "clients_cpu_s": med("clients_cpu_s"),
        "dashboard_reads": med("dashboard_reads"),
        "drain_s": med("drain_s"),
        "node_cpu_ms_per_job_alone": common.median(
            [r["node_cpu_ms_per_job"] for r in raw["alone"] if r.get("node_cpu_ms_per_job")]
        ),
        "node_cpu_ms_per_job_watched": med("node_cpu_ms_per_job"),
    }


# -- results ----------------------------------------------------------------------------------


def fmt(v: Any, digits: int = 0) -> str:
    if v is None:
        return "-"
    return f"{v:,.{digits}f}" if isinstance(v, float) else str(v)


def render(results: dict[str, Any]) -> str:
    m, a = results["machine"], results["args"]
    lines = [
        f"Date {results['date']}; {m['nproc']} CPUs ({m['cpu_model']}); Python "
        f"{results['python']}; SQLite {results['sqlite']}; tree {results['this']}; load "
        f"average at start {m['loadavg'][0]:.2f}, at end {m.get('loadavg_end', [0])[0]:.2f}.",
        "",
    ]
    stores = results.get("stores", {})
    for size, meta in sorted(stores.items(), key=lambda kv: int(kv[0])):
        lines.append(
            f"- Store of {int(size):,} jobs: {meta.get('db_mb', 0):,.0f} MB, built in "
            f"{fmt(meta.get('build_s'), 1)} s (insert {fmt(meta.get('insert_s'), 1)} s, "
            f"statuses {fmt(meta.get('update_s'), 1)} s){' (cached)' if meta.get('cached') else ''}."
        )
    big, small = str(a["jobs"]), str(a["small"])
    timed = results.get("pages", {})
    if timed.get(big):
        lines += [
            "",
            f"Pages served by `taskschedctl dashboard`, {a['reps']} rounds (each page once per "
            "round), median and p90 in ms. **server**: the request's own time in the "
            "dashboard process (middleware, first ASGI call to last byte); **client**: a "
            "keep-alive httpx client on loopback, sent to body read; **first**: the first "
            "request (client). **find()**: the store's find() for that list, in-process. "
            f"Goal: < {GOAL_MS:.0f} ms server median at {int(big):,} jobs.",
            "",
            f"| page | server median | p90 | client median | p90 | first | find() "
            f"| {int(small):,}: server median | ratio | store reads | rows | goal |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
        ]
        side = results.get("store_side", {}).get(big, {})
        for name, row in timed[big].items():
            if name.startswith("_"):
                continue
            lo = timed.get(small, {}).get(name, {})
            ratio = (
                row["server_median_ms"] / lo["server_median_ms"]
                if row.get("server_median_ms") and lo.get("server_median_ms")
                else None
            )
            ms = row.get("server_median_ms")
            goal = (
                f"HTTP {row.get('status')}"
                if row.get("status") != 200
                else "met"
                if ms is not None and ms < GOAL_MS
                else "MISSED"
            )
            lines.append(
                f"| {name} | {fmt(ms, 1)} | {fmt(row.get('server_p90_ms'), 1)} "
                f"| {fmt(row.get('median_ms'), 1)} | {fmt(row.get('p90_ms'), 1)} "
                f"| {fmt(row.get('first_ms'), 1)} "
                f"| {fmt(side.get(name, {}).get('find_median_ms'), 1)} "
                f"| {fmt(lo.get('server_median_ms'), 1)} | {fmt(ratio, 2)} "
                f"| {fmt(row.get('store_reads_median'), 0)} | {fmt(row.get('rows'))} | {goal} |"
            )
        slow = [
            n
            for n, r in timed[big].items()
            if not n.startswith("_") and (r.get("server_median_ms") or 0) >= GOAL_MS
        ]
        if slow:
            lines += ["", "Query plans of the slow ones:"]
            for name in slow:
                for st in side.get(name, {}).get("statements", []):
                    lines.append(f"- {name}: `{st['sql'][:200]}` -> {'; '.join(st['plan'])}")
    lv = results.get("live")
    if lv:
        lines += [
            "",
            f"Live stream: a node drains {a['drain_jobs']:,} no-op jobs alone and with a "
            f"dashboard and {a['clients']} SSE clients on /live; {a['drain_reps']} repetitions "
            "each, order alternating; medians.",
            "",
            "| drain | jobs/s | vs alone (ratio of medians) | median of pair ratios | node CPU ms/job "
            "| dashboard CPU s | clients CPU s | dashboard store reads |",
            "|---|---:|---:|---:|---:|---:|---:|---:|",
            f"| alone | {fmt(lv['alone_jobs_per_s'])} | 1 | 1 | {fmt(lv['node_cpu_ms_per_job_alone'], 3)} | - | - | - |",
            f"| with dashboard + {a['clients']} SSE clients | {fmt(lv['watched_jobs_per_s'])} "
            f"| {fmt(lv['ratio_of_medians'], 3)} | {fmt(lv['median_of_pair_ratios'], 3)} "
            f"| {fmt(lv['node_cpu_ms_per_job_watched'], 3)} | {fmt(lv['dashboard_cpu_s'], 2)} "
            f"| {fmt(lv['clients_cpu_s'], 2)} | {fmt(lv['dashboard_reads'])} |",
            "",
            "Per repetition, jobs/s:",
            f"- alone: {', '.join(fmt(r.get('drain_jobs_per_s')) for r in lv['raw']['alone'])}",
            f"- watched: {', '.join(fmt(r.get('drain_jobs_per_s')) for r in lv['raw']['watched'])}",
        ]
        ev = [
            r.get("events_per_client") for r in lv["raw"]["watched"] if r.get("events_per_client")
        ]
        if ev:
            lines.append(f"- events per client during the drain (first repetition): {ev[0]}")
    return "\n".join(lines) + "\n"


def main() -> int:
    if len(sys.argv) > 3 and sys.argv[1] == "_instrumented":
        return _instrumented(Path(sys.argv[2]), Path(sys.argv[3]), sys.argv[4:])
    if len(sys.argv) == 5 and sys.argv[1] == "_sse":
        return _sse(sys.argv[2], int(sys.argv[3]), Path(sys.argv[4]))
    parser = argparse.ArgumentParser(prog="bench.dashboard", description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=1_000_000, help="jobs in the big store")
    parser.add_argument("--reps", type=int, default=20, help="rounds of page requests")
    parser.add_argument("--drain-reps", type=int, default=5, help="drains of each kind")
    parser.add_argument("--drain-jobs", type=int, default=20_000, help="jobs per drain")
    parser.add_argument("--clients", type=int, default=20, help="SSE clients on /live")
    parser.add_argument("--quick", action="store_true",
                        help="100,000 jobs, 3 rounds, 3 drains of 5,000")  # fmt: skip
    parser.add_argument("--only", default="pages,live", help="comma list of: pages, live")
    parser.add_argument("--cache", type=Path, default=CACHE, help=f"built stores (default {CACHE})")
    parser.add_argument("--out", type=Path, help="default bench/results/dashboard-DATE.json")
    parser.add_argument("--keep", action="store_true", help="keep the scratch directory")
    args = parser.parse_args()
    if args.quick:
        args.jobs, args.reps, args.drain_reps, args.drain_jobs = 100_000, 3, 3, 5000
    only = set(args.only.split(","))
    if only - {"pages", "live"}:
        parser.error("--only: pages, live")
    if args.jobs < 1000 or args.reps < 1 or args.drain_reps < 1 or args.drain_jobs < 3:
        parser.error("--jobs >= 1000, --reps >= 1, --drain-reps >= 1, --drain-jobs >= 3")
    if not tsd.daemon_available():
        parser.error("the taskschedd daemon is not installed in this venv")
    try:
        import httpx  # noqa: F401

        from taskschedd.dashboard import app  # noqa: F401
    except ImportError as exc:
        parser.error(f"needs the dashboard extra and httpx: {exc}")

    run = common.start_run(RUN_ENV, "taskschedd-dashboard-")
    workdir, date = run.workdir, run.date
    small = args.jobs // 10
    results: dict[str, Any] = {
        **run.header,
        "uptime": subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip(),
        "this": git_head(common.REPO),
        "args": {
            "jobs": args.jobs,
            "small": small,
            "reps": args.reps,
            "only": sorted(only),
            "drain_reps": args.drain_reps,
            "drain_jobs": args.drain_jobs,
            "clients": args.clients,
        },
        "stores": {},
        "pages": {},
        "store_side": {},
    }
    log(f"scratch {workdir}; cache {args.cache}")
    try:
        if "pages" in only:
            for size in (small, args.jobs):
                log(f"store of {size:,} jobs")
                db, meta = build_store(args.cache, size)
                results["stores"][str(size)] = meta
                how = "cached" if meta["cached"] else f"built in {meta['build_s']:.1f} s"
                log(f"  {db} ({how})")
                found = time_pages(db, meta, args.reps, workdir, f"pages-{size}")
                results["pages"][str(size)] = found
                for name, row in found.items():
                    if not name.startswith("_"):
                        log(
                            f"  {name}: median {fmt(row['median_ms'], 1)} ms, p90 {fmt(row['p90_ms'], 1)} ms"
                        )
                results["store_side"][str(size)] = store_side(db, meta, found, min(args.reps, 5))
        if "live" in only:
            results["live"] = live(workdir, args.drain_jobs, args.drain_reps, args.clients)
    finally:
        common.stop_all()
        run.sweep(log)
        results["finished"] = dt.datetime.now().isoformat(timespec="seconds")
        results["machine"]["loadavg_end"] = common.loadavg()
        out = args.out or common.REPO / "bench/results" / f"dashboard-{date}.json"
        common.finish(results, out, render, workdir, args.keep, log)
    return 0


if __name__ == "__main__":
    sys.exit(main())
