"""Bad jobs: class paths, data and results a worker cannot use. Each ends with its error
recorded in the store; the daemon, and the very worker that met it, keep running.

The loader's checks are unit-tested (tests/unit/test_loader.py), bad results and classes
in-process (tests/e2e/test_api.py), bad options and data at the API (tests/unit/
test_options.py) and in taskschedctl (tests/ctl/test_ctl_add.py). These cases go through
the daemon on each store, and add data nested too deeply (which used to crash every
worker that claimed it, and taskschedctl with a traceback).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from taskschedd import Scheduler
from taskschedd.errors import JobDataError
from taskschedd.model import JobQuery, JobStatus, NewJob
from taskschedd.options import MAX_JSON_DEPTH, JobOptions
from taskschedd.scheduler import JobSpec
from tests.e2e.conftest import REPO
from tests.faults.harness import RUN, FaultDaemon, StoreKind, worker_pid
from tests.faults.jobs import MODULE

Factory = Callable[..., FaultDaemon]
NOT_A_JOB = "is not a subclass of taskschedd.Job"


def nested(depth: int) -> Any:
    value: Any = []
    for _ in range(depth - 1):
        value = [value]
    return value


# (name, class path, data, options, status, reason, what the recorded error says)
CASES: list[tuple[str, str, Any, dict[str, Any], JobStatus, str, str]] = [
    ("missing module", f"{MODULE}.missing.Job", None, {}, JobStatus.FAILED, "class",
     f"cannot import module '{MODULE}.missing'"),
    ("missing class", f"{MODULE}.Nope", None, {}, JobStatus.FAILED, "class",
     f"module '{MODULE}' has no 'Nope'"),
    ("colon form, missing class", f"{MODULE}:Nope", None, {}, JobStatus.FAILED, "class",
     "has no 'Nope'"),
    ("not a Job subclass", f"{MODULE}.NotAJob", None, {}, JobStatus.FAILED, "class", NOT_A_JOB),
    ("not a class", f"{MODULE}.not_a_class", None, {}, JobStatus.FAILED, "class", NOT_A_JOB),
    ("a function", f"{MODULE}.record_run", None, {}, JobStatus.FAILED, "class", NOT_A_JOB),
    ("a module", f"{MODULE}.os", None, {}, JobStatus.FAILED, "class", NOT_A_JOB),
    ("raises in __init__", f"{MODULE}.RaisesInInit", None, {"retry": 1, "retry_interval": 0},
     JobStatus.FAILED, "exception", "constructor refuses on purpose"),
    ("data the job cannot use", RUN, {"no": "runs key"}, {}, JobStatus.FAILED, "exception",
     "'runs'"),
    ("result is a set", f"{MODULE}.BadResult", {"kind": "set"}, {"retry": 2},
     JobStatus.FAILED, "result", "not JSON-serialisable"),
    ("result has NaN", f"{MODULE}.BadResult", {"kind": "nan"}, {}, JobStatus.FAILED, "result",
     "not JSON-serialisable"),
    ("result nested too deeply", f"{MODULE}.BadResult", {"kind": "deep"}, {},
     JobStatus.FAILED, "result", f"nested more than {MAX_JSON_DEPTH} levels"),
]  # fmt: skip


def test_bad_classes_data_and_results_are_recorded_and_the_worker_survives(
    kind: StoreKind, node_factory: Factory
) -> None:
    d = node_factory(kind, pm="static", min_children=1, max_children=1).start()
    (worker,) = d.wait_workers(1)
    s = kind.scheduler()
    jobs = [s.add_job(cls, data, **options) for _, cls, data, options, *_ in CASES]
    # A foreign writer (another client version, a manual insert) stores a malformed path:
    # the Scheduler would refuse it, the worker must too.
    raw = NewJob(id="foreign", cls="not a class path!", data_json="null", options=JobOptions(),
                 at=time.time(), created=time.time())  # fmt: skip
    s.store.insert([raw])
    (foreign,) = s.wait(["foreign"], timeout=15)
    assert foreign.status == JobStatus.FAILED and foreign.reason == "class"
    assert "is not valid: expected a dotted path" in foreign.errors[-1].message
    for (name, _, _, options, status, reason, message), job in zip(CASES, jobs, strict=True):
        job.wait(15)
        assert job.status == status, (name, job.status, job.errors)
        assert job.reason == reason or job.errors[-1].reason == reason, (name, job.errors)
        assert message in job.errors[-1].message, (name, job.errors[-1].message)
        assert job.attempt == 1 + options.get("retry", 0) * (reason == "exception"), name
        assert worker_pid(job.record.worker) == worker, name
    refused = {e["job_class"] for e in d.logged("job class cannot be used")}
    expected = {cls.replace(":", ".") for _, cls, *_, reason, _ in CASES if reason == "class"}
    assert refused >= expected | {"not a class path!"}  # stored normalized: module.Class
    assert d.running() and d.workers() == [worker]
    assert s.add_job(f"{MODULE}.Echo", {"still": "working"}).wait(10).result == {"still": "working"}


# -- data refused before anything is written ------------------------------------------------
def counts(s: Scheduler) -> tuple[int, int]:
    return len(s.store.find(JobQuery(limit=None))), s.store.last_event_seq()


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        (nested(MAX_JSON_DEPTH + 1), f"nested more than {MAX_JSON_DEPTH} levels"),
        (nested(5000), "at most 100 levels deep"),  # json.dumps' own RecursionError
        (lambda: None, "JSON-serialisable"),
    ],
    ids=["101 levels", "5000 levels", "a function"],
)
def test_data_nested_too_deeply_is_refused_by_the_api_and_nothing_is_written(
    sqlite_url: str, data: Any, fragment: str
) -> None:
    with Scheduler(sqlite_url, create=True) as s:
        s.add_job(f"{MODULE}.Echo", nested(MAX_JSON_DEPTH))  # the limit itself is fine
        before = counts(s)
        with pytest.raises(JobDataError, match=fragment):
            s.add_job(f"{MODULE}.Echo", data)
        with pytest.raises(JobDataError, match="job #1: "):
            s.add_jobs([JobSpec(f"{MODULE}.Echo", 1), JobSpec(f"{MODULE}.Echo", data)])
        assert counts(s) == before


def test_a_circular_structure_is_refused(sqlite_url: str) -> None:
    loop: dict[str, Any] = {}
    loop["self"] = loop
    with (
        Scheduler(sqlite_url, create=True) as s,
        pytest.raises(JobDataError, match="Circular reference"),
    ):
        s.add_job(f"{MODULE}.Echo", loop)
    with Scheduler(sqlite_url, create=True) as s:
        assert counts(s) == (0, 0)


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("[" * 100_000 + "]" * 100_000, "is nested too deeply (job data takes at most 100"),
        ("[" * 101 + "]" * 101, "job data is nested more than 100 levels deep"),
        ("NaN", "no NaN/Infinity"),
        ('{"a": -Infinity}', "no NaN/Infinity"),
    ],
    ids=["100000 levels", "101 levels", "NaN", "-Infinity"],
)
def test_taskschedctl_refuses_bad_data_files_with_exit_2_and_writes_nothing(
    tmp_path: Path, sqlite_url: str, text: str, fragment: str
) -> None:
    with Scheduler(sqlite_url, create=True) as s:
        kept = s.add_job(f"{MODULE}.Echo", {"keep": True}).id
        before = counts(s)
    data = tmp_path / "data.json"
    data.write_text(text)
    env = {k: v for k, v in os.environ.items() if not k.startswith("TASKSCHED")}
    result = subprocess.run(
        [sys.executable, "-m", "taskschedctl.cli", "--store", sqlite_url, "add",
         f"{MODULE}.Echo", f"@{data}"],
        capture_output=True, text=True, cwd=REPO, env=env, timeout=60,
    )  # fmt: skip
    assert result.returncode == 2, result
    assert fragment in result.stderr and "Traceback" not in result.stderr, result.stderr
    assert result.stdout == ""
    with Scheduler(sqlite_url, create=True) as s:
        assert counts(s) == before
        assert [j.id for j in s.get_jobs(status="all")] == [kept]
