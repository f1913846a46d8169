"""Hostile or absurd input (issue 11), through the real commands and daemon, on each store.

- A YAML alias bomb or an absurd number: refused by ``--check-config`` and at start with
  exit 78, and a SIGHUP reload of it keeps the running master on its old configuration.
- Job data and results: one size limit (``max_data_size``, 1 MiB by default) checked
  above the stores, before any write; integers too long for JSON are a clear error.
- Class paths: validated whole (no trailing newline), bounded, without ``__init__``.
- Passwords: never printed, whatever characters they hold; out of ``ps``; from a file.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from taskschedd import Scheduler
from taskschedd.errors import DataTooLarge, JobClassError, JobDataError, OptionError
from taskschedd.model import JobQuery, JobStatus
from taskschedd.store.sqlite import SQLiteStore
from tests.e2e.conftest import REPO, TASKSCHEDD, cmdline
from tests.faults.harness import FaultDaemon, StoreKind
from tests.faults.jobs import MODULE
from tests.helpers import wait_for
from tests.unit.test_config_limits import alias_bomb

Factory = Callable[..., FaultDaemon]
ECHO = f"{MODULE}.Echo"
MiB = 1 << 20


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TASKSCHED")}
    env["PYTHONPATH"] = str(REPO)
    env.update(extra)
    return env


def ctl(
    *args: str, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "taskschedctl.cli", *args], capture_output=True, text=True,
        cwd=REPO, env=env or clean_env(), timeout=timeout, stdin=subprocess.DEVNULL,
    )  # fmt: skip


def daemon(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(TASKSCHEDD), *args], capture_output=True, text=True, cwd=REPO, env=clean_env(),
        timeout=timeout, stdin=subprocess.DEVNULL,
    )  # fmt: skip


def clear_error(result: subprocess.CompletedProcess[str], code: int, *fragments: str) -> None:
    assert result.returncode == code, result
    assert "Traceback" not in result.stderr, result.stderr
    for fragment in fragments:
        assert fragment in result.stderr, (fragment, result.stderr)


def ctl_config(kind: StoreKind, tmp_path: Path, **extra: Any) -> Path:
    """A configuration that points taskschedctl at the store under test."""
    path = tmp_path / "ctl.yaml"
    path.write_text(yaml.safe_dump({**kind.daemon_config, "allowed_modules": [MODULE], **extra}))
    return path


def new_store(url: str) -> SQLiteStore:
    """An empty SQLite store, on disk (taskschedctl and Scheduler are not asked to create
    one)."""
    store = SQLiteStore(url, create=True)
    store.last_event_seq()
    return store


def counts(s: Scheduler) -> tuple[int, int]:
    return len(s.store.find(JobQuery(limit=None))), s.store.last_event_seq()


# -- configuration ---------------------------------------------------------------------------
ABSURD = [
    ("alias bomb", alias_bomb("store"), "aliases"),
    ("max_children", "max_children: 99999999999999999999999\n", "max_children: must be <= 4096"),
    ("poll_interval", "poll_interval: 1e308\n", "poll_interval: must be at most 1h"),
    ("lease", "lease: 99999999999w\n", "lease: must be at most 1d"),
    ("retention", "retention: 1e308\n", "retention: must be at most 3650d"),
    ("memory", "max_worker_memory: 99999999999TB\n", "must be at most 16TiB"),
    ("long integer", "min_children: " + "1" * 5000 + "\n", "a number too long to read"),
]


@pytest.mark.parametrize(("text", "fragment"), [a[1:] for a in ABSURD], ids=[a[0] for a in ABSURD])
def test_check_config_and_start_refuse_absurd_files_with_78(
    tmp_path: Path, text: str, fragment: str
) -> None:
    config = tmp_path / "taskschedd.yaml"
    config.write_text(f"store: sqlite:///{tmp_path}/store/t.db\n{text}")
    for args in (["--check-config"], []):
        start = time.monotonic()
        result = daemon("-c", str(config), *args)
        assert time.monotonic() - start < 15
        clear_error(result, 78, fragment)
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert not (tmp_path / "store").exists()


@pytest.mark.parametrize(
    "text", [alias_bomb("store"), "poll_interval: 1e308\n"], ids=["alias bomb", "1e308"]
)
def test_a_reload_of_a_hostile_file_keeps_the_master_on_its_old_configuration(
    kind: StoreKind, node_factory: Factory, text: str
) -> None:
    d = node_factory(kind, pm="static", min_children=1, max_children=1).start()
    (worker,) = d.wait_workers(1)
    good = d.config_path.read_text()
    d.config_path.write_text(text)
    d.signal(signal.SIGHUP)
    (refusal,) = wait_for(
        lambda: d.logged("reload refused: the new configuration is invalid; keeping the old one"),
        15,
        message="the reload refusal in the log",
    )
    assert ("aliases" in refusal["error"]) or ("at most 1h" in refusal["error"]), refusal
    assert d.running() and d.workers() == [worker]
    s = kind.scheduler()
    assert s.add_job(ECHO, {"after": "reload"}).wait(15).result == {"after": "reload"}
    d.config_path.write_text(good)  # and a good file is taken again
    d.signal(signal.SIGHUP)
    wait_for(lambda: d.logged("configuration reloaded"), 15, message="a reload")
    assert d.running()


# -- job data and results --------------------------------------------------------------------
def test_data_over_the_limit_is_refused_before_any_write_on_each_store(kind: StoreKind) -> None:
    s = kind.scheduler()
    s.add_job(ECHO, "x" * (MiB - 10))  # just under 1 MiB as JSON: accepted
    before = counts(s)
    with pytest.raises(DataTooLarge, match=r"job data is \d+ bytes as JSON, more than .* 1 MiB"):
        s.add_job(ECHO, "x" * MiB)
    with pytest.raises(DataTooLarge, match="job #1: "):
        s.add_jobs([(ECHO, 1), (ECHO, {"big": "x" * MiB})])
    with pytest.raises(DataTooLarge):
        s.add_job_once(ECHO, ["x" * MiB])
    assert counts(s) == before
    # The limit is the caller's to choose, within MongoDB's bounds.
    small = Scheduler(kind.open(), max_data_size=1024)
    with pytest.raises(DataTooLarge, match="1 KiB"):
        small.add_job(ECHO, "x" * 1100)
    big = Scheduler(kind.open(), max_data_size=2 * MiB)
    assert big.add_job(ECHO, "x" * (MiB + 10)).id
    for bad in (0, 8 * MiB, 2**70, "1MiB", True):
        with pytest.raises(OptionError, match="max_data_size"):
            Scheduler(kind.open(), max_data_size=bad)


def test_taskschedctl_refuses_17_mb_of_data_with_exit_2_on_each_store(
    kind: StoreKind, tmp_path: Path
) -> None:
    config = ctl_config(kind, tmp_path)
    with kind.open() as store:  # the store exists: only the data can be refused
        store.last_event_seq()
    data = tmp_path / "data.json"
    data.write_text(json.dumps({"blob": "x" * (17 * 1000 * 1000)}))
    result = ctl("-c", str(config), "add", ECHO, f"@{data}")
    clear_error(result, 2, "job data is 17000011 bytes as JSON", "max_data_size")
    assert result.stdout == ""
    with kind.open() as store:
        assert store.find(JobQuery(limit=None)) == []


def test_a_result_over_the_limit_fails_the_attempt_with_a_clear_error(
    kind: StoreKind, node_factory: Factory
) -> None:
    node_factory(kind, pm="static", min_children=1, max_children=1, max_data_size="1KiB").start()
    s = kind.scheduler()
    ok = s.add_job(ECHO, "y" * 500)
    too_big = s.add_job(ECHO, "x" * 2000, retry=2)  # the Scheduler's own limit is 1 MiB
    assert ok.wait(15).status == JobStatus.DONE
    too_big.wait(15)
    assert too_big.status == JobStatus.FAILED and too_big.attempt == 1  # no retry: permanent
    (error,) = too_big.errors
    assert error.reason == "result" and error.type.endswith(".DataTooLarge"), error
    assert "the job's return value is 2002 bytes as JSON, more than the limit of 1 KiB" in (
        error.message
    )
    assert too_big.result is None


def test_integers_too_long_for_json_are_a_clear_error(tmp_path: Path, sqlite_url: str) -> None:
    with Scheduler(new_store(sqlite_url)) as s:
        with pytest.raises(JobDataError, match="integer of more than 4300 digits"):
            s.add_job(ECHO, {"n": 10**5000})
        assert counts(s) == (0, 0)
    data = tmp_path / "n.json"
    data.write_text('{"n": ' + "7" * 4301 + "}")
    for arg in (f"@{data}", data.read_text()):
        result = ctl("--store", sqlite_url, "add", ECHO, arg)
        clear_error(result, 2, "more than 4300 digits", "give such numbers as strings")


# -- class paths -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("path", "fragment"),
    [
        (f"{MODULE}.Echo\n", "is not valid: expected a dotted path"),
        (f"{MODULE}.Echo\n\n", "is not valid: expected a dotted path"),
        ("a" * 5000 + ".Job", "(5004 characters) is not valid"),
        ("tests.faults.__init__.Job", "must not name __init__"),
    ],
    ids=["newline", "two newlines", "10 KB", "__init__"],
)
def test_bad_class_paths_are_refused_by_the_api_and_taskschedctl(
    sqlite_url: str, path: str, fragment: str
) -> None:
    with Scheduler(new_store(sqlite_url)) as s:
        with pytest.raises(JobClassError, match=fragment.replace("(", r"\(").replace(")", r"\)")):
            s.add_job(path, None)
        assert counts(s) == (0, 0)
    result = ctl("--store", sqlite_url, "add", path)
    clear_error(result, 2, fragment)
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


@pytest.mark.parametrize(("option", "value"), [("queue", "default\n"), ("id", "job-1\n")])
def test_names_with_a_trailing_newline_are_refused(
    sqlite_url: str, option: str, value: str
) -> None:
    with Scheduler(new_store(sqlite_url)) as s, pytest.raises(OptionError, match=option):
        s.add_job(ECHO, None, **{option: value})


# -- passwords -------------------------------------------------------------------------------
@pytest.mark.parametrize("password", ["topsecret/pw", "top secret pw"])
def test_a_password_with_unencoded_characters_is_never_printed(
    tmp_path: Path, password: str
) -> None:
    config = tmp_path / "taskschedd.yaml"
    config.write_text(yaml.safe_dump({"store": f"mongodb://app:{password}@127.0.0.1:1/db"}))
    for result in (
        daemon("-c", str(config), "--check-config"),
        ctl("-c", str(config), "check", timeout=60),
        ctl("--store", f"mongodb://app:{password}@127.0.0.1:1/db", "check", timeout=60),
    ):
        assert result.returncode != 0, result
        assert "Traceback" not in result.stderr, result.stderr
        text = result.stdout + result.stderr
        assert password not in text and "secret" not in text, text
        assert "***" in text or "percent-encoded" in text, text


def test_a_store_password_file_keeps_the_password_out_of_output(tmp_path: Path) -> None:
    (tmp_path / "pw").write_text("top/secret pw\n")
    config = tmp_path / "taskschedd.yaml"
    config.write_text("store: mongodb://app@127.0.0.1:1/db\nstore_password_file: pw\n")
    result = daemon("-c", str(config), "--check-config")
    assert result.returncode == 0, result
    shown = json.loads(result.stdout)
    assert shown["store"] == "mongodb://app:***@127.0.0.1:1/db"
    assert "secret" not in result.stdout + result.stderr


def test_taskschedctl_reads_the_store_from_a_file(tmp_path: Path, sqlite_url: str) -> None:
    url_file = tmp_path / "store-url"
    url_file.write_text(sqlite_url + "\n")
    env = clean_env(TASKSCHED_STORE_FILE=str(url_file))
    new_store(sqlite_url).close()
    added = ctl("add", ECHO, "1", env=env)
    assert added.returncode == 0, added
    listed = ctl("list", "--json", env=env)
    assert listed.returncode == 0 and added.stdout.strip() in listed.stdout, listed
    missing = ctl("list", env=clean_env(TASKSCHED_STORE_FILE=str(tmp_path / "nope")))
    clear_error(missing, 78, "TASKSCHED_STORE_FILE", "cannot read")


def test_a_password_on_the_command_line_is_masked_in_ps() -> None:
    url = "mongodb://app:pa55/word@127.0.0.1:1/db?serverSelectionTimeoutMS=60000"
    proc = subprocess.Popen(
        [sys.executable, "-m", "taskschedctl.cli", "--store", url, "events", "--follow"],
        cwd=REPO, env=clean_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    try:
        shown = wait_for(
            lambda: (lambda c: c if "mongodb://app:***@127.0.0.1:1/db" in c else None)(
                cmdline(proc.pid)
            ),
            20,
            message=lambda: f"a masked command line, have {cmdline(proc.pid)!r}",
        )
        assert "pa55" not in shown and proc.poll() is None
    finally:
        proc.kill()
        _, err = proc.communicate(timeout=10)
    assert b"pa55" not in err


# -- configuration files that are not files ---------------------------------------------------
def test_a_configuration_that_is_not_a_regular_file_is_refused_without_blocking(
    tmp_path: Path,
) -> None:
    """A FIFO with no writer used to hang --check-config (and a reload: the master then
    renewed no lease); a device or a directory is no configuration either."""
    fifo = tmp_path / "taskschedd.yaml"
    os.mkfifo(fifo)
    for path in (fifo, Path("/dev/zero"), tmp_path):
        result = daemon("-c", str(path), "--check-config", timeout=20)
        clear_error(result, 78, "give a regular file")
    config = tmp_path / "ok.yaml"
    config.write_text(f"store: mongodb://app@127.0.0.1:1/jobs\nstore_password_file: {fifo}\n")
    clear_error(daemon("-c", str(config), "--check-config", timeout=20), 78, "regular file")
    env = clean_env(TASKSCHED_STORE_FILE=str(fifo))
    clear_error(ctl("list", env=env, timeout=20), 78, "regular file")


def test_a_reload_of_an_empty_file_keeps_the_running_configuration(
    kind: StoreKind, node_factory: Factory
) -> None:
    """An editor or a deploy caught half way leaves an empty file: taken as 'all defaults'
    it dropped allowed_modules, and every job after it failed for good."""
    d = node_factory(kind, pm="static", min_children=1, max_children=1).start()
    (worker,) = d.wait_workers(1)
    good = d.config_path.read_text()
    for text in ("", "# nothing yet\n"):
        d.config_path.write_text(text)
        d.signal(signal.SIGHUP)
        wait_for(
            lambda text=text: len(d.logged("reload refused: the new configuration is invalid; "
                                           "keeping the old one")) >= (2 if text else 1),
            15, message="the reload refusal in the log",
        )  # fmt: skip
    (refusal, *_) = d.logged(
        "reload refused: the new configuration is invalid; keeping the old one"
    )
    assert "no settings" in refusal["error"], refusal
    assert d.running() and d.workers() == [worker]
    s = kind.scheduler()
    assert s.add_job(ECHO, {"after": "reload"}).wait(15).result == {"after": "reload"}
    d.config_path.write_text(good)
