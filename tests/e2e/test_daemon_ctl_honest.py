"""taskschedctl against a real node, on both stores (issue 13, items 7 and 8): add --wait
and wait print each job's outcome (result, or status, reason and error), and with no
live node add and wait say so, nodes prints an empty-state line and check --min-nodes
fails."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from tests.e2e.conftest import BOTH_STORES, JOBS, REPO, Daemon
from tests.helpers import wait_for

pytestmark = BOTH_STORES

TASKSCHEDCTL = Path(sys.executable).parent / "taskschedctl"


def ctl(d: Daemon, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """``taskschedctl -c <the node's config> ARGS`` as a process."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TASKSCHED_")}
    env["PYTHONPATH"] = str(REPO)
    return subprocess.run(
        [str(TASKSCHEDCTL), "-c", str(d.config_path), *args],
        capture_output=True, text=True, env=env, timeout=timeout, cwd=REPO,
        start_new_session=True,
    )  # fmt: skip


def test_add_wait_and_wait_print_each_outcome(daemon_factory: Callable[..., Daemon]) -> None:
    d = daemon_factory(max_children=3).start()
    ok = ctl(d, "add", "--wait=30s", f"{JOBS}.WhoAmI")
    assert ok.returncode == 0, ok
    job_id, outcome = ok.stdout.splitlines()
    assert outcome.startswith(f"{job_id} DONE result="), ok
    result = json.loads(outcome.split("result=", 1)[1])
    assert result["context"] is None and result["pid"] > 0
    assert "warning" not in ok.stderr, ok  # checked class, live node

    bad = ctl(d, "add", "--wait=30s", f"{JOBS}.Fail", '{"message": "disk full"}')
    assert bad.returncode == 1, bad
    job_id, outcome = bad.stdout.splitlines()
    assert outcome == f"{job_id} FAILED reason=exception error=ValueError: disk full"
    assert f"job {job_id} ended FAILED: ValueError: disk full" in bad.stderr

    slow = ctl(d, "add", "--wait=30s", "--timeout", "0.5s", f"{JOBS}.Sleep", '{"seconds": 30}')
    assert slow.returncode == 1, slow
    job_id, outcome = slow.stdout.splitlines()
    assert outcome.startswith(f"{job_id} TIMEOUT reason=timeout error="), slow

    as_json = ctl(d, "add", "--wait=30s", "--json", f"{JOBS}.Fail", '{"message": "no disk"}')
    assert as_json.returncode == 1, as_json
    doc = json.loads(as_json.stdout)
    assert (doc["status"], doc["reason"], doc["result"]) == ("FAILED", "exception", None)
    assert (doc["error"]["type"], doc["error"]["message"]) == ("ValueError", "no disk")
    assert doc["error"]["traceback"].rstrip().endswith("ValueError: no disk")

    # wait on a running job that is canceled meanwhile
    added = ctl(d, "add", f"{JOBS}.Sleep", '{"seconds": 30}')
    sleeper = added.stdout.strip()
    env = {k: v for k, v in os.environ.items() if not k.startswith("TASKSCHED_")}
    env["PYTHONPATH"] = str(REPO)
    waiter = subprocess.Popen(
        [str(TASKSCHEDCTL), "-c", str(d.config_path), "wait", sleeper, "--timeout", "60s"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=REPO,
        start_new_session=True,
    )  # fmt: skip
    try:
        wait_for(lambda: ctl(d, "list", "--status", "processing").stdout.count(sleeper), 20)
        assert ctl(d, "cancel", sleeper).returncode == 0
        out, err = waiter.communicate(timeout=30)
    finally:
        if waiter.poll() is None:
            os.killpg(waiter.pid, signal.SIGKILL)
            waiter.wait()
    assert waiter.returncode == 1, (out, err)
    assert out.startswith(f"{sleeper} CANCELED"), out
    assert f"job {sleeper} ended CANCELED" in err


def test_no_live_node_is_said_by_add_wait_nodes_and_check(
    daemon_factory: Callable[..., Daemon],
) -> None:
    d = daemon_factory(queues=["critical", "default"]).start()
    nodes = ctl(d, "nodes")
    assert nodes.returncode == 0 and nodes.stdout.splitlines()[1].startswith(d.name), nodes
    assert ctl(d, "check", "--min-nodes", "1").returncode == 0
    served = ctl(d, "add", f"{JOBS}.WhoAmI", "--queue", "critical")
    assert served.returncode == 0 and "no live node" not in served.stderr, served
    unserved = ctl(d, "add", f"{JOBS}.WhoAmI", "--queue", "batch")
    assert unserved.returncode == 0, unserved
    assert "taskschedctl: warning: no live node serves queue batch" in unserved.stderr
    assert "the live nodes serve critical, default" in unserved.stderr

    d.signal(signal.SIGTERM)
    assert d.wait_exit(30) == 0
    wait_for(lambda: ctl(d, "nodes").stdout.startswith("no live node (a node is live for"), 10)
    assert ctl(d, "nodes", "--json").stdout == "[]\n"
    check = ctl(d, "check", "--min-nodes", "1")
    assert check.returncode == 69, check
    assert "0 live nodes, fewer than --min-nodes 1" in check.stderr
    waited = ctl(d, "add", "--wait=1s", f"{JOBS}.WhoAmI")
    assert waited.returncode == 124, waited
    assert "taskschedctl: warning: no live node serves queue default" in waited.stderr
    job_id, outcome = waited.stdout.splitlines()
    assert outcome == f"{job_id} WAITING progress=0%"
    again = ctl(d, "wait", job_id, "--timeout", "0.5s")
    assert again.returncode == 124 and "no live node serves queue default" in again.stderr
