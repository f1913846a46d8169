"""A reload (SIGHUP) and ``--check-config`` check what the workers import before anything
changes (taskschedd.probe), and a reload whose new workers cannot start keeps the old ones.

The daemon runs as a process and gets real signals; hook modules are written to a
directory of the test and put on the daemon's PYTHONPATH.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sysconfig
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from taskschedd import Scheduler
from taskschedd.model import JobStatus
from tests.e2e.conftest import JOBS, REPO, TASKSCHEDD, Daemon, cmdline, proc_table
from tests.helpers import wait_for

PROBE_TIMEOUT = 2.0
REFUSED_IMPORT = (
    "reload refused: the workers cannot import what the new configuration names; keeping "
    "the old configuration and workers"
)
REFUSED_START = (
    "reload refused: a worker with the new configuration failed to start; keeping the old "
    "configuration and workers"
)
CANARY = (
    "reload: a worker with the new configuration starts; the old workers are retired once "
    "it is ready"
)

HOOKS = {
    "goodhooks.py": "def setup(config):\n    return {'hook': 'good'}\n",
    "failhooks.py": "def setup():\n    raise RuntimeError('database down')\n",
    "hanghooks.py": "import time\ntime.sleep(3600)\n\ndef setup():\n    pass\n",
    "slowhooks.py": "import time\n\ndef setup():\n    time.sleep(3600)\n",
    # Starts a process of its own session at import (setsid: out of the check's group).
    "forkhooks.py": (
        "import os, sys, time\n"
        "if os.fork() == 0:\n"
        "    os.setsid()\n"
        "    os.write(1, f'forked {os.getpid()}\\n'.encode())\n"
        "    time.sleep(300)\n"
        "    os._exit(0)\n"
        "time.sleep(0.2)\n\n"
        "def setup():\n    pass\n"
    ),
}


def code_dir(tmp_path: Path) -> Path:
    code = tmp_path / "code"
    code.mkdir(exist_ok=True)
    for name, text in HOOKS.items():
        (code / name).write_text(text)
    return code


def env_for(tmp_path: Path) -> dict[str, str]:
    return {
        "PYTHONPATH": os.pathsep.join([str(REPO), str(code_dir(tmp_path))]),
        "TASKSCHED_PROBE_TIMEOUT": str(PROBE_TIMEOUT),
    }


def start(make: Callable[..., Daemon], tmp_path: Path, **config: Any) -> Daemon:
    d = make(**{"pm": "static", "min_children": 2, "max_children": 4, **config})
    return d.start(env=env_for(tmp_path))


def sighup(d: Daemon) -> None:
    """SIGHUP, and wait until the master says the reload is over (READY=1 again)."""
    assert d.notify is not None
    mark = len(d.notify.lines())
    d.signal(signal.SIGHUP)
    reloading = d.notify.wait_line("RELOADING=1", after=mark)
    d.notify.wait_line("READY=1", after=reloading, timeout=PROBE_TIMEOUT + 10)


def errors_since(d: Daemon, mark: int) -> list[dict[str, Any]]:
    return [e for e in d.events()[mark:] if e.get("level") == "error"]


def no_traceback(d: Daemon) -> None:
    text = d.log_path.read_text()
    assert "Traceback" not in text, text[-3000:]


def check_processes() -> list[int]:
    return [pid for pid in proc_table() if "taskschedd: import check" in cmdline(pid)]


def check_config(config: Path, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **env_for(tmp_path)}
    env.pop("NOTIFY_SOCKET", None)
    return subprocess.run(
        [str(TASKSCHEDD), "--check-config", "-c", str(config)],
        capture_output=True, text=True, timeout=60, cwd=REPO, env=env, start_new_session=True,
    )  # fmt: skip


def wait_replaced(d: Daemon, old: list[int], count: int) -> list[int]:
    """The pids of ``count`` workers, none of them one of ``old`` (retired ones take a
    moment to exit)."""

    def check() -> list[int] | None:
        pids = d.workers()
        return pids if len(pids) == count and not set(pids) & set(old) else None

    return wait_for(check, 10, message=lambda: f"{count} workers not in {old}: {d.workers()}")


def assert_jobs_run(scheduler: Scheduler) -> None:
    assert scheduler.add_job(f"{JOBS}.WhoAmI").wait(10).status == JobStatus.DONE


# -- reload ---------------------------------------------------------------------------------
def test_a_reload_to_a_hook_that_does_not_import_keeps_the_old_workers(
    daemon_factory: Callable[..., Daemon], scheduler: Scheduler, tmp_path: Path
) -> None:
    d = start(daemon_factory, tmp_path)
    pids = d.wait_workers(2)
    mark = len(d.events())
    d.write_config(setup_hook="myapp.hooks:setup", min_children=3)
    sighup(d)
    (refused,) = wait_for(lambda: d.logged(REFUSED_IMPORT), 5)
    assert refused["error"] == (
        "setup_hook: cannot import 'myapp.hooks': ModuleNotFoundError: No module named 'myapp'"
    )
    assert_jobs_run(scheduler)
    assert d.workers() == pids  # the same processes, none added (min_children not applied)
    assert [e["event"] for e in errors_since(d, mark)] == [REFUSED_IMPORT]
    no_traceback(d)
    assert d.notify is not None
    status = [line for line in d.notify.lines() if line.startswith("STATUS=")][-1]
    assert "last reload refused: the workers cannot import" in status, status
    assert "myapp.hooks" in status
    d.signal(signal.SIGUSR1)
    (dump,) = wait_for(lambda: d.logged("status"), 5)
    assert "myapp.hooks" in dump["last_reload_refused"] and dump["reload_pending"] is False

    # Fixed: the next reload applies and clears the status.
    d.write_config(setup_hook="goodhooks:setup")
    sighup(d)
    wait_for(lambda: d.logged("configuration reloaded"), 5)
    wait_replaced(d, pids, 3)
    assert (
        "last reload refused"
        not in [line for line in d.notify.lines() if line.startswith("STATUS=")][-1]
    )


def test_a_reload_whose_hook_raises_in_the_worker_keeps_the_old_workers(
    daemon_factory: Callable[..., Daemon], scheduler: Scheduler, tmp_path: Path
) -> None:
    d = start(daemon_factory, tmp_path)
    pids = d.wait_workers(2)
    d.write_config(setup_hook="failhooks:setup")  # imports fine; raises when called
    sighup(d)
    (refused,) = wait_for(lambda: d.logged(REFUSED_START), 5)
    assert "setup hook failed" in refused["error"], refused
    (canary,) = d.logged(CANARY)
    assert refused["worker"] == canary["worker"]
    (why,) = d.logged("setup hook failed; the worker cannot start")
    assert why["error"] == "RuntimeError: database down"
    assert_jobs_run(scheduler)
    assert d.workers() == pids
    assert not d.logged("worker failed to start; backing off before the next attempt")
    d.signal(signal.SIGUSR1)
    (dump,) = wait_for(lambda: d.logged("status"), 5)
    assert dump["start_failures"] == 0 and "failed to start" in dump["last_reload_refused"]


def test_a_reload_whose_new_worker_never_gets_ready_is_refused_within_the_timeout(
    daemon_factory: Callable[..., Daemon], scheduler: Scheduler, tmp_path: Path
) -> None:
    d = start(daemon_factory, tmp_path)
    pids = d.wait_workers(2)
    d.write_config(setup_hook="slowhooks:setup")  # imports fine; never returns when called
    sighup(d)
    (refused,) = wait_for(lambda: d.logged(
        "reload refused: a worker with the new configuration did not report ready in time; "
        "keeping the old configuration and workers"), 5)  # fmt: skip
    assert refused["error"] == "not ready within 2s ($TASKSCHED_PROBE_TIMEOUT)"
    assert_jobs_run(scheduler)
    wait_for(lambda: d.workers() == pids, 5, message=lambda: f"{pids}, have {d.workers()}")


def test_a_good_reload_starts_a_new_worker_before_retiring_the_old_ones(
    daemon_factory: Callable[..., Daemon], scheduler: Scheduler, tmp_path: Path
) -> None:
    d = start(daemon_factory, tmp_path, min_children=1)
    (old,) = d.wait_workers(1)
    d.write_config(min_children=3, setup_hook="goodhooks:setup", queues=["default", "other"])
    sighup(d)
    (reloaded,) = wait_for(lambda: d.logged("configuration reloaded"), 5)
    assert {"min_children", "setup_hook", "queues"} <= set(reloaded["changed"])
    wait_replaced(d, [old], 3)
    events = d.events()
    canary = next(i for i, e in enumerate(events) if e.get("event") == CANARY)
    retired = next(
        i for i, e in enumerate(events)
        if e.get("event") == "worker retiring" and e.get("worker", "").endswith(f"/{old}")
    )  # fmt: skip
    assert canary < retired  # the old worker went only once the new one was ready
    job = scheduler.add_job(f"{JOBS}.WhoAmI", queue="other").wait(10)
    assert job.status == JobStatus.DONE
    no_traceback(d)


def test_a_reload_to_a_hook_that_hangs_on_import_is_refused_within_the_timeout(
    daemon_factory: Callable[..., Daemon], scheduler: Scheduler, tmp_path: Path
) -> None:
    d = start(daemon_factory, tmp_path)
    pids = d.wait_workers(2)
    d.write_config(setup_hook="hanghooks:setup")
    assert d.notify is not None
    mark = len(d.notify.lines())
    began = time.monotonic()
    d.signal(signal.SIGHUP)
    d.notify.wait_line("RELOADING=1", after=mark)
    # The master's loop goes on while the check runs: it answers SIGUSR1 at once.
    d.signal(signal.SIGUSR1)
    (dump,) = wait_for(lambda: d.logged("status"), PROBE_TIMEOUT / 2)
    assert dump["reload_pending"] is True
    (refused,) = wait_for(lambda: d.logged(REFUSED_IMPORT), PROBE_TIMEOUT + 5)
    took = time.monotonic() - began
    assert PROBE_TIMEOUT <= took < PROBE_TIMEOUT + 4, took
    assert refused["error"] == (
        "setup_hook: importing 'hanghooks' did not finish within 2s "
        "($TASKSCHED_PROBE_TIMEOUT); the check was killed"
    )
    wait_for(lambda: not check_processes(), 5, message="the import check killed")
    assert_jobs_run(scheduler)
    assert d.workers() == pids
    no_traceback(d)


# -- --check-config -------------------------------------------------------------------------
def write(tmp_path: Path, name: str, **config: Any) -> Path:
    path = tmp_path / name
    path.write_text(json.dumps({"store": f"{tmp_path}/store/t.db", **config}))
    return path


def test_check_config_imports_the_hook_and_the_allowed_modules(tmp_path: Path) -> None:
    good = write(tmp_path, "good.yaml", setup_hook="goodhooks:setup",
                 allowed_modules=[JOBS, "taskschedd.examples", "goodhooks"])  # fmt: skip
    result = check_config(good, tmp_path)
    assert result.returncode == 0, result.stderr
    assert "configuration OK" in result.stderr

    missing = write(tmp_path, "missing.yaml", setup_hook="myapp.hooks:setup")
    result = check_config(missing, tmp_path)
    assert result.returncode == 78, result
    assert result.stderr.splitlines() == [
        f"taskschedd: {missing}: setup_hook: cannot import 'myapp.hooks': "
        "ModuleNotFoundError: No module named 'myapp'"
    ]
    assert result.stdout == ""

    allowed = write(
        tmp_path, "allowed.yaml", allowed_modules=["taskschedd.examples", "nosuch.jobs"]
    )
    result = check_config(allowed, tmp_path)
    assert result.returncode == 78, result
    assert result.stderr.splitlines() == [
        f"taskschedd: {allowed}: allowed_modules: cannot import 'nosuch.jobs': "
        "ModuleNotFoundError: No module named 'nosuch'"
    ]

    attr = write(tmp_path, "attr.yaml", setup_hook="goodhooks:nothing")
    result = check_config(attr, tmp_path)
    assert result.returncode == 78 and "setup_hook: 'goodhooks:nothing' not found" in result.stderr
    assert "Traceback" not in result.stderr


def test_check_config_with_a_hook_that_hangs_on_import_is_bounded(tmp_path: Path) -> None:
    hang = write(tmp_path, "hang.yaml", setup_hook="hanghooks:setup")
    began = time.monotonic()
    result = check_config(hang, tmp_path)
    took = time.monotonic() - began
    assert result.returncode == 78, result
    assert took < PROBE_TIMEOUT + 5, took
    assert result.stderr.splitlines() == [
        f"taskschedd: {hang}: setup_hook: importing 'hanghooks' did not finish within 2s "
        "($TASKSCHED_PROBE_TIMEOUT); the check was killed"
    ]
    assert not check_processes()


def test_check_config_leaves_nothing_an_import_started(tmp_path: Path) -> None:
    """What the hook's module started in a session of its own dies with the check."""
    forks = write(tmp_path, "forks.yaml", setup_hook="forkhooks:setup")
    result = check_config(forks, tmp_path)
    assert result.returncode == 0, result.stderr
    forked = [int(line.split()[1]) for line in result.stderr.splitlines()
              if line.startswith("forked ")]  # fmt: skip
    assert len(forked) == 1, result.stderr
    wait_for(lambda: not os.path.exists(f"/proc/{forked[0]}") or "Z" in _state(forked[0]), 10,
             message=lambda: f"process {forked[0]} the import started still runs")  # fmt: skip
    assert not check_processes()


def _state(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "gone"


def test_a_reload_after_an_editable_install_imports_the_new_package(
    daemon_factory: Callable[..., Daemon], scheduler: Scheduler, tmp_path: Path
) -> None:
    """`pip install -e ./myapp` while the node runs writes a .pth file, which Python reads
    only at start: the reload's check and its new workers read it too, so the reload
    applies as after `pip install ./myapp` (the README's step 1 for `make run`)."""
    package = f"tsd_editable_{os.getpid()}_{time.monotonic_ns()}"
    source = tmp_path / "editable-src"
    (source / package).mkdir(parents=True)
    (source / package / "__init__.py").write_text("")
    (source / package / "jobs.py").write_text(
        "from taskschedd import Job\n\n"
        "def setup():\n    return {'from': 'editable'}\n\n"
        "class Hello(Job):\n    def start(self):\n        return self.context\n"
    )
    d = start(daemon_factory, tmp_path)
    pids = d.wait_workers(2)
    pth = Path(sysconfig.get_paths()["purelib"]) / f"__editable__.{package}.pth"
    pth.write_text(f"{source}\n")  # what pip install -e writes
    try:
        d.write_config(setup_hook=f"{package}.jobs:setup",
                       allowed_modules=[JOBS, "taskschedd.examples", package])  # fmt: skip
        sighup(d)
        wait_for(lambda: d.logged("configuration reloaded") or d.logged(REFUSED_IMPORT), 10)
        assert not d.logged(REFUSED_IMPORT), d.logged(REFUSED_IMPORT)
        wait_replaced(d, pids, 2)
        job = scheduler.add_job(f"{package}.jobs.Hello").wait(10)
        assert (job.status, job.result) == (JobStatus.DONE, {"from": "editable"})
    finally:
        pth.unlink()


def test_a_refused_reload_s_reason_is_clipped_in_status_and_whole_in_the_log(
    daemon_factory: Callable[..., Daemon], tmp_path: Path
) -> None:
    """An unknown key's message lists every accepted key (~600 characters): one line of
    ps and systemctl status gets the start of it, the log line all of it."""
    d = start(daemon_factory, tmp_path)
    d.wait_workers(2)
    d.write_config(no_such_key=1)
    sighup(d)
    (refused,) = wait_for(lambda: d.logged("reload refused: the new configuration is invalid; "
                                           "keeping the old one"), 5)  # fmt: skip
    assert "no_such_key" in refused["error"] and len(refused["error"]) > 300, refused
    assert d.notify is not None
    status = [line for line in d.notify.lines() if line.startswith("STATUS=")][-1]
    assert "last reload refused:" in status and status.endswith("..."), status
    assert len(status) < 260, status
