"""A configuration's job_defaults reach the jobs taskschedctl -c adds, and a node runs them
by those options (cron, retry_backoff_max and ignore_max_children were refused in
job_defaults once, while Scheduler(**defaults) took them)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from taskschedd import JobStatus, Scheduler
from tests.e2e.conftest import BOTH_STORES, JOBS, REPO, Daemon
from tests.helpers import wait_for

pytestmark = BOTH_STORES
TASKSCHEDCTL = Path(sys.executable).parent / "taskschedctl"


def test_cron_backoff_max_and_ignore_max_children_defaults_work_end_to_end(
    daemon_factory: Callable[..., Daemon], scheduler: Scheduler
) -> None:
    defaults = {"cron": "*/5 * * * *", "retry_backoff_max": "2h", "ignore_max_children": True}
    d = daemon_factory(pm="static", min_children=1, max_children=1, job_defaults=defaults)
    d.start()
    (regular,) = d.wait_workers(1)
    busy = scheduler.add_job(f"{JOBS}.Sleep", {"seconds": 30})  # no config: no defaults
    wait_for(lambda: busy.refresh().status == JobStatus.PROCESSING, 5)
    env = {k: v for k, v in os.environ.items() if not k.startswith("TASKSCHED_")}
    env["PYTHONPATH"] = str(REPO)
    res = subprocess.run(
        [str(TASKSCHEDCTL), "-c", str(d.config_path), "add", f"{JOBS}.WhoAmI",
         "--at", str(time.time()), "--wait=20s", "--json"],
        capture_output=True, text=True, env=env, timeout=30, cwd=REPO,
    )  # fmt: skip
    assert res.returncode == 0, res
    first = json.loads(res.stdout)
    # ignore_max_children: it ran in an extra worker while the only regular one was busy
    assert first["status"] == "DONE" and first["result"]["pid"] != regular
    opts = scheduler.get_job(first["id"]).options
    assert (opts.cron, opts.retry_backoff_max, opts.ignore_max_children) == (
        "*/5 * * * *",
        7200.0,
        True,
    )
    # cron: the series goes on at the next 5-minute mark, with the same options
    following = wait_for(
        lambda: [j for j in scheduler.get_jobs() if j.id not in (first["id"], busy.id)], 5
    )
    (nxt,) = following
    assert nxt.status == JobStatus.POSTPONED and nxt.options == opts
    assert nxt.record.at is not None and nxt.record.at % 300 == 0
    scheduler.cancel_job(busy.id)
