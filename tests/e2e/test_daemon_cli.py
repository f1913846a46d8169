"""The taskschedd command line: config errors, --check-config, --help, --version, pidfile."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path

from tests.e2e.conftest import REPO, TASKSCHEDD, Daemon, cmdline
from tests.helpers import wait_for


def taskschedd(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    full_env.pop("NOTIFY_SOCKET", None)
    return subprocess.run(
        [str(TASKSCHEDD), *args],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=REPO,
        env=full_env,
        start_new_session=True,
    )


def test_a_bad_config_exits_78_naming_file_key_and_reason(tmp_path: Path) -> None:
    config = tmp_path / "bad.yaml"
    store = tmp_path / "store" / "t.db"
    config.write_text(f"store: {store}\nmin_children: many\n")
    result = taskschedd("-c", str(config))
    assert result.returncode == 78
    (line,) = result.stderr.splitlines()
    assert line.startswith(f"taskschedd: {config}: min_children: ")
    assert "expected an integer" in line
    assert "Traceback" not in result.stderr + result.stdout
    assert not store.parent.exists()  # nothing was created


def test_a_missing_config_file_exits_78(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    result = taskschedd(env={"TASKSCHED_CONFIG": str(missing)})
    assert result.returncode == 78
    assert str(missing) in result.stderr and "cannot read" in result.stderr


def test_check_config_validates_without_starting(tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text(f"store: {tmp_path}/store/t.db\nnode: checked\npm: static\n")
    result = taskschedd("--check-config", "-c", str(good))
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["node"] == "checked"
    assert "configuration OK" in result.stderr
    assert not (tmp_path / "store").exists()
    bad = tmp_path / "bad.yaml"
    bad.write_text("pm: sometimes\n")
    result = taskschedd("--check-config", "-c", str(bad))
    assert (
        result.returncode == 78 and "pm: expected one of dynamic|static|ondemand" in result.stderr
    )


def test_check_config_refuses_a_log_file_in_a_missing_directory(tmp_path: Path) -> None:
    config = tmp_path / "logs.yaml"
    config.write_text(
        f"store: {tmp_path}/t.db\nlogging:\n  file: {tmp_path}/missing/taskschedd.log\n"
    )
    for args in (["--check-config"], []):
        result = taskschedd(*args, "-c", str(config))
        assert result.returncode == 78, result.stderr
        assert f"logging.file: directory {tmp_path}/missing does not exist" in result.stderr
        assert "Traceback" not in result.stderr
    assert not (tmp_path / "t.db").exists()


def test_help_documents_every_signal_and_version_prints() -> None:
    result = taskschedd("--help")
    assert result.returncode == 0
    for name in ("SIGTERM", "SIGINT", "SIGQUIT", "SIGHUP", "SIGUSR1", "SIGCHLD"):
        assert name in result.stdout
    assert "--check-config" in result.stdout and "--daemon" in result.stdout
    version = taskschedd("--version")
    assert version.returncode == 0 and "taskschedd" in version.stdout


def test_short_help_option_is_the_help() -> None:
    """`taskschedd -h` was "No such option" while `taskschedctl -h` worked."""
    short, long = taskschedd("-h"), taskschedd("--help")
    assert (short.returncode, short.stdout) == (0, long.stdout)
    assert "Usage: taskschedd" in short.stdout and not short.stderr


def test_a_node_of_one_worker_says_one_worker(daemon_factory: Callable[..., Daemon]) -> None:
    d = daemon_factory()
    d.write_config(pm="static", min_children=1, max_children=1)
    d.start()
    wait_for(lambda: "[1 worker, 0 busy]" in cmdline(d.pid), 10, message=lambda: cmdline(d.pid))


def test_pidfile_is_written_and_removed(daemon_factory: Callable[..., Daemon]) -> None:
    d = daemon_factory()
    pidfile = d.dir / "taskschedd.pid"
    d.write_config(pidfile=str(pidfile))
    d.start()
    assert pidfile.read_text().strip() == str(d.pid)
    second = taskschedd("-c", str(d.config_path))
    assert second.returncode == 1 and "already running" in second.stderr
    d.signal(signal.SIGTERM)
    assert d.wait_exit(5) == 0
    assert not pidfile.exists()


def test_daemon_mode_detaches_and_runs(tmp_path: Path) -> None:
    store = tmp_path / "store" / "t.db"
    log = tmp_path / "d.log"
    pidfile = tmp_path / "d.pid"
    config = tmp_path / "d.yaml"
    config.write_text(
        f"store: {store}\nnode: detached\npm: static\nheartbeat_interval: 0.2s\n"
        f"logging: {{file: {log}, format: json}}\n"
    )
    result = taskschedd("-c", str(config), "--daemon", "--pidfile", str(pidfile))
    assert result.returncode == 0, result.stderr
    pid = int(wait_for(lambda: pidfile.exists() and pidfile.read_text().strip(), 5))
    try:
        wait_for(lambda: "taskschedd ready" in log.read_text(), 5)
        # The command returned while the node runs on, detached, in "/".
        assert os.readlink(f"/proc/{pid}/cwd") == "/"
        assert os.getsid(pid) != os.getsid(0)
    finally:
        os.kill(pid, signal.SIGTERM)
    wait_for(lambda: not pidfile.exists(), 5)


def test_store_option_overrides_the_config_file(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(f"store: {tmp_path}/from-file.db\n")
    result = taskschedd("--check-config", "-c", str(config), "--store", f"{tmp_path}/cli.db")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["store"] == f"sqlite://{tmp_path}/cli.db"
    bad = taskschedd("--check-config", "-c", str(config), "--store", "ftp://nowhere")
    assert bad.returncode == 78 and bad.stderr.startswith("taskschedd: --store: unsupported")
