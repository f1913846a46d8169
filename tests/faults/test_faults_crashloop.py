"""Crash loops: code that fails at import must not make the master spin, and the node
must recover as soon as the code is fixed."""

from __future__ import annotations

import itertools
import os
import signal
import time
import uuid
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

from taskschedd.model import JobStatus
from tests.e2e.conftest import REPO
from tests.faults.harness import FaultDaemon, StoreKind, worker_pid
from tests.helpers import wait_for

Factory = Callable[..., FaultDaemon]

BROKEN = "raise RuntimeError('broken at import on purpose')\n"
HOOK_OK = "def setup(config):\n    return {'hook': 'fixed'}\n"
JOB_OK = """\
from taskschedd.job import Job


class Hello(Job):
    def start(self):
        return {"hello": self.context}
"""


def wall(event: dict[str, object]) -> float:
    """A log line's timestamp as epoch seconds."""
    return datetime.fromisoformat(str(event["timestamp"])).timestamp()


def code_dir(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """A directory on the daemon's import path, and the environment that puts it there.
    No bytecode cache: a rewritten module of the same size and second must be re-read."""
    path = tmp_path / "code"
    path.mkdir()
    env = {
        "PYTHONPATH": os.pathsep.join([str(REPO), str(path)]),
        "PYTHONDONTWRITEBYTECODE": "1",
    }
    return path, env


def test_a_setup_hook_failing_at_import_backs_off_cheaply_and_recovers_on_sighup(
    kind: StoreKind, node_factory: Factory, tmp_path: Path
) -> None:
    code, env = code_dir(tmp_path)
    module = f"hook_{uuid.uuid4().hex[:8]}"
    (code / f"{module}.py").write_text(BROKEN)
    d = node_factory(kind, pm="static", min_children=2, max_children=2,
                     setup_hook=f"{module}:setup").start(env=env)  # fmt: skip

    def failures() -> list[dict[str, object]]:
        return d.logged("worker failed to start; backing off before the next attempt")

    # Back off until the next probe is 4 s away (0.5, 1, 2, 4: about 4 s of failures).
    wait_for(lambda: any(float(str(f["retry_in"])) >= 4 for f in failures()), 15,
             message=lambda: f"backoff to reach 4 s; have {failures()}")  # fmt: skip
    delays = [float(str(f["retry_in"])) for f in failures()]
    assert all(b == min(30.0, 2 * a) for a, b in itertools.pairwise(delays)), delays
    (first, *_) = d.logged("setup hook failed; the worker cannot start")
    assert first["setup_hook"] == f"{module}:setup"
    assert "RuntimeError: broken at import on purpose" in str(first["error"])
    assert "exited with code 3 (the setup hook failed)" in str(failures()[0]["how"])

    probe_due = wall(failures()[-1]) + delays[-1]  # when the backoff would end

    # While it waits, the master sleeps: well under a tenth of a core.
    cpu, started = d.cpu_seconds(), time.monotonic()
    wait_for(lambda: time.monotonic() - started >= 1.5, 3)
    used = (d.cpu_seconds() - cpu) / (time.monotonic() - started)
    assert used < 0.1, f"master used {used:.0%} of a core while backing off"
    assert len(failures()) == len(delays)  # no attempt before the backoff is over
    assert d.workers() == []

    (code / f"{module}.py").write_text(HOOK_OK)
    d.signal(signal.SIGHUP)  # the operator fixed it: probe now, not when the backoff ends
    (back,) = wait_for(lambda: d.logged("a worker started again after start-up failures"), 8)
    assert wall(back) < probe_due, "the reload did not cut the backoff short"
    d.wait_workers(2, timeout=5)
    s = kind.scheduler()
    job = s.add_job("taskschedd.examples.jobs.Echo", {"x": 1}).wait(10)
    assert job.status == JobStatus.DONE
    assert d.running()


def test_a_job_module_failing_at_import_fails_its_jobs_not_the_worker(
    kind: StoreKind, node_factory: Factory, tmp_path: Path
) -> None:
    code, env = code_dir(tmp_path)
    module = f"jobs_{uuid.uuid4().hex[:8]}"
    (code / f"{module}.py").write_text(BROKEN)
    d = node_factory(kind, pm="static", min_children=1, max_children=1,
                     allowed_modules=[module, "taskschedd.examples"]).start(env=env)  # fmt: skip
    (before,) = d.wait_workers(1)
    s = kind.scheduler()
    cpu = d.cpu_seconds()
    broken = [s.add_job(f"{module}.Hello", retry=3, retry_interval=0) for _ in range(5)]
    for job in broken:
        job.wait(10)
        assert job.status == JobStatus.FAILED and job.reason == "class"
        assert job.attempt == 1  # a class problem is permanent: no retries
        (error,) = job.errors
        assert error.reason == "class"
        assert f"importing {module!r} failed: RuntimeError: broken at import on purpose" in (
            error.message
        )
    assert d.workers() == [before]  # the same worker took them all: no crash, no respawn
    assert d.cpu_seconds() - cpu < 1.0

    (code / f"{module}.py").write_text(JOB_OK)
    fixed = s.add_job(f"{module}.Hello").wait(10)
    assert fixed.status == JobStatus.DONE and fixed.result == {"hello": None}
    assert worker_pid(fixed.record.worker) == before
    assert d.logged("job class cannot be used")


HOOK_DIES_WHEN_READY = """\
import os
import threading


def setup(config):
    threading.Timer(0.3, os._exit, (1,)).start()  # dies soon after it is ready, idle
"""


def test_workers_dying_idle_right_after_they_start_back_off_instead_of_a_respawn_storm(
    kind: StoreKind, node_factory: Factory, tmp_path: Path
) -> None:
    """A worker that boots, says it is ready and then dies with nothing to do (a bug, a
    store error that is not an outage: a full disk was one) is not a start-up failure,
    but dying again and again is a crash loop all the same: the next start backs off."""
    code, env = code_dir(tmp_path)
    module = f"hook_{uuid.uuid4().hex[:8]}"
    (code / f"{module}.py").write_text(HOOK_DIES_WHEN_READY)
    d = node_factory(kind, pm="static", min_children=2, max_children=2,
                     setup_hook=f"{module}:setup").start(env=env)  # fmt: skip

    def backoffs() -> list[dict[str, object]]:
        return d.logged("workers keep dying with nothing to do; backing off before the next start")

    wait_for(lambda: any(float(str(b["retry_in"])) >= 4 for b in backoffs()), 20,
             message=lambda: f"backoff to reach 4 s; have {backoffs()}")  # fmt: skip
    delays = [float(str(b["retry_in"])) for b in backoffs()]
    assert all(b == min(30.0, 2 * a) for a, b in itertools.pairwise(delays)), delays
    starts = len(d.logged("worker started"))
    assert starts <= len(delays) + 3, f"{starts} starts for {len(delays)} backoffs"
    assert d.running()
