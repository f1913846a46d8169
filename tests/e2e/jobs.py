"""Jobs and setup hooks for the end-to-end tests (the test configs allow ``tests.e2e.jobs``)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from taskschedd.job import Job

MODULE = "tests.e2e.jobs"


class Sleep(Job):
    """Sleeps ``data["seconds"]``; returns its pid so tests can find the worker."""

    def start(self) -> Any:
        time.sleep(float((self.data or {}).get("seconds", 1)))
        return {"pid": os.getpid()}


class Swallow(Job):
    """Sleeps ``data["seconds"]``, swallowing Ctrl-C (KeyboardInterrupt) once, as a
    careless job does; then sleeps ``data["after"]`` more and returns. Creates the file
    ``data["ready"]`` (if given) once it swallows: before that, an interrupt finds the
    worker, not the job's code, and the job is given back unstarted."""

    def start(self) -> Any:
        with contextlib.suppress(KeyboardInterrupt):
            if self.data.get("ready"):
                Path(self.data["ready"]).touch()
            time.sleep(float(self.data["seconds"]))
        time.sleep(float(self.data.get("after", 0)))
        return "swallowed"


class Pipe(Job):
    """Returns ``data["n"]`` plus the ``total`` of each dependency that ended DONE, with
    the dependencies' statuses as it saw them and its pid (a workflow step)."""

    def start(self) -> Any:
        deps = self.dependencies
        total = int((self.data or {}).get("n", 0))
        total += sum(
            int(d.result.get("total", 0))
            for d in deps.values()
            if d.status is not None and d.status.name == "DONE" and isinstance(d.result, dict)
        )
        seen = {i: d.status.name if d.status else None for i, d in deps.items()}
        return {"total": total, "seen": seen, "pid": os.getpid()}


class WhoAmI(Job):
    """Where it ran: pid, process group, and the setup hook's context."""

    def start(self) -> Any:
        return {"pid": os.getpid(), "pgid": os.getpgid(0), "context": self.context}


class Fail(Job):
    """Raises ValueError(data["message"])."""

    def start(self) -> Any:
        raise ValueError((self.data or {}).get("message", "boom"))


class FailUntil(Job):
    """Fails while ``attempt < data["ok_at"]``, then returns the attempt."""

    def start(self) -> Any:
        if self.attempt < int(self.data["ok_at"]):
            raise RuntimeError(f"attempt {self.attempt} fails on purpose")
        return {"attempt": self.attempt}


class Grandchild(Job):
    """Starts ``sleep 60`` (a grandchild of the worker), writes its pid, then hangs."""

    def start(self) -> Any:
        child = subprocess.Popen(["sleep", "60"])
        tmp = self.data["pidfile"] + ".tmp"
        with open(tmp, "w") as f:
            f.write(str(child.pid))
        os.replace(tmp, self.data["pidfile"])
        time.sleep(60)
        return None


def setup_ok(config: Any) -> dict[str, Any]:
    """A setup hook: what it returns becomes every job's context."""
    return {"hook": "ok", "node": config.node}


def setup_fail() -> None:
    """A setup hook that always fails; logs each call (time) to $TASKSCHEDD_TEST_HOOK_LOG."""
    with open(os.environ["TASKSCHEDD_TEST_HOOK_LOG"], "a") as f:
        f.write(f"{time.monotonic()}\n")
    raise RuntimeError("setup hook failed on purpose")


def _grow(step_mb: int, every: float, max_mb: int, hold: float) -> int:
    """Allocate (and touch) step_mb MiB every ``every`` s up to max_mb, hold it ``hold`` s."""
    held: list[bytearray] = []
    while len(held) * step_mb < max_mb:
        held.append(bytearray(b"\x01") * (step_mb << 20))  # written: resident at once
        time.sleep(every)
    time.sleep(hold)
    return len(held) * step_mb


class GrowMemory(Job):
    """Grows by data["step_mb"] MiB every data["every"] s to data["max_mb"], holds it for
    data["hold"] s, returns the MiB it held (a runaway job, when max_mb is large)."""

    def start(self) -> Any:
        d = self.data
        return {"mb": _grow(int(d["step_mb"]), float(d["every"]), int(d["max_mb"]),
                            float(d.get("hold", 0)))}  # fmt: skip


class StubbornGrowMemory(Job):
    """Ignores SIGTERM and grows like GrowMemory, writing the MiB it holds after each step
    to data["peakfile"] (what it reached before it was killed)."""

    def start(self) -> Any:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        d = self.data
        step_mb, held = int(d["step_mb"]), []
        while len(held) * step_mb < int(d["max_mb"]):
            held.append(bytearray(b"\x01") * (step_mb << 20))
            with open(d["peakfile"], "w") as f:
                f.write(str(len(held) * step_mb))
            time.sleep(float(d["every"]))
        time.sleep(float(d.get("hold", 0)))
        return {"mb": len(held) * step_mb}


#: What CacheMemory jobs keep in their worker after they end (a module-level cache).
_CACHE: list[bytearray] = []


class CacheMemory(Job):
    """Keeps data["mb"] MiB in a module-level cache, which outlives the job in its worker."""

    def start(self) -> Any:
        _CACHE.append(bytearray(b"\x01") * (int(self.data["mb"]) << 20))
        return {"cached_mb": sum(len(b) for b in _CACHE) >> 20, "pid": os.getpid()}


class ForkGrowMemory(Job):
    """Starts a child process (in the job's process group) that grows like GrowMemory and
    writes its pid to data["pidfile"]; waits for it. The job itself stays small."""

    def start(self) -> Any:
        d = self.data
        code = (
            f"import os, sys; sys.path[:0] = {sys.path!r}; "
            f"open({d['pidfile']!r} + '.tmp', 'w').write(str(os.getpid())); "
            f"os.replace({d['pidfile']!r} + '.tmp', {d['pidfile']!r}); "
            "from tests.e2e.jobs import _grow; "
            f"_grow({int(d['step_mb'])}, {float(d['every'])}, {int(d['max_mb'])}, "
            f"{float(d.get('hold', 0))})"
        )
        child = subprocess.run([sys.executable, "-c", code], check=True)
        return {"code": child.returncode}


class FailOnce(Job):
    """Raises ValueError(data["message"]) the first time (it creates data["flag"]), then
    returns "ok": a failed job that a retry brings to DONE, however attempts are counted."""

    def start(self) -> Any:
        flag = self.data["flag"]
        if not os.path.exists(flag):
            with open(flag, "w"):
                pass
            raise ValueError(self.data["message"])
        return "ok"
