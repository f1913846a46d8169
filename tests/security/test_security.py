"""Security: the module allow-list holds before import, nothing is unpickled, workers run
as the configured user and cannot get root back, store files are private, and passwords
in store URLs never reach a log or the output of either command.

Unit-level checks of the loader (tests/unit/test_loader.py), of redact_url
(tests/unit/test_config.py), of SQLite file modes (tests/store/test_sqlite.py) and of
``taskschedctl check`` with a password (tests/ctl/test_ctl_ops.py) exist already; these
tests go through the running daemon and the real entry points.
"""

from __future__ import annotations

import grp
import os
import pwd
import re
import shutil
import stat
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from taskschedd.model import JobStatus
from tests.e2e.conftest import REPO, TASKSCHEDD
from tests.faults.harness import (
    FaultDaemon,
    StoreKind,
    mongo_kind,
    sqlite_kind,
    worker_pid,
)
from tests.faults.jobs import MODULE
from tests.helpers import wait_for

Factory = Callable[..., FaultDaemon]
SECRET = "s3cr3t-pw"
PASSWORD_URL = f"mongodb://tsd:{SECRET}@127.0.0.1:1/tsd"  # nothing listens on port 1
MASKED = "mongodb://tsd:***@127.0.0.1:1/tsd"


def proc_ids(pid: int) -> dict[str, list[int]]:
    """Uid, Gid (real, effective, saved, fs) and Groups of a live process."""
    out: dict[str, list[int]] = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("Uid", "Gid", "Groups"):
                out[key] = [int(v) for v in value.split()]
    return out


# -- the allow-list, before import ---------------------------------------------------------
def test_jobs_naming_modules_outside_the_allow_list_are_refused_before_import_and_logged(
    kind: StoreKind, node_factory: Factory, tmp_path: Path
) -> None:
    code = tmp_path / "code"
    code.mkdir()
    canary = f"canary_{uuid.uuid4().hex[:8]}"
    marker = tmp_path / "imported"
    (code / f"{canary}.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    env = {"PYTHONPATH": os.pathsep.join([str(REPO), str(code)])}
    d = node_factory(kind, pm="static", min_children=1, max_children=1).start(env=env)
    (worker,) = d.wait_workers(1)
    s = kind.scheduler()
    paths = ["os.system", "subprocess.Popen", "builtins.eval", "posix.system",
             f"{canary}.Job", f"{MODULE}_evil.Run"]  # fmt: skip
    jobs = [s.add_job(path, {"cmd": "touch /tmp/pwned"}, retry=2) for path in paths]
    for path, job in zip(paths, jobs, strict=True):
        job.wait(10)
        assert job.status == JobStatus.FAILED and job.reason == "class", path
        assert job.attempt == 1  # refused once, not retried
        (error,) = job.errors
        module = path.rsplit(".", 1)[0]
        assert f"module {module!r} is not in allowed_modules" in error.message, error.message
    refused = {e["job_class"] for e in d.logged("job class cannot be used")}
    assert refused == set(paths)
    assert not marker.exists(), "the canary module was imported"
    assert d.workers() == [worker]  # and the worker is unharmed
    assert s.add_job(f"{MODULE}.Echo", [1]).wait(10).status == JobStatus.DONE


# -- no pickle -----------------------------------------------------------------------------
UNSAFE = re.compile(
    r"^\s*(?:import|from)\s+(?:pickle|cPickle|_pickle|marshal|shelve|dill|cloudpickle|"
    r"jsonpickle|joblib)\b"
    r"|__import__\(\s*['\"](?:pickle|marshal|shelve)"
    r"|import_module\(\s*['\"](?:pickle|marshal|shelve)"
    r"|\byaml\.(?:unsafe_load|full_load|load_all)\("
    r"|\byaml\.load\((?![^)]*Loader=_StrictLoader)"
    r"|\bmultiprocessing\b",  # pickles everything it passes between processes
    re.MULTILINE,
)


def test_no_pickle_marshal_shelve_or_unsafe_yaml_in_the_package_sources() -> None:
    sources = sorted([*REPO.glob("taskschedd/**/*.py"), *REPO.glob("taskschedctl/**/*.py")])
    assert len(sources) > 20
    found = [
        f"{path.relative_to(REPO)}:{text.count(chr(10), 0, m.start()) + 1}: {m.group(0).strip()}"
        for path in sources
        for text in [path.read_text()]
        for m in UNSAFE.finditer(text)
    ]
    assert not found, found
    # The pattern does catch what it is meant to catch.
    for bad in ("import pickle", "from marshal import loads", "  import shelve as s",
                "yaml.load(text)", "yaml.unsafe_load(x)", "__import__('pickle')"):  # fmt: skip
        assert UNSAFE.search(bad), bad


# -- dropping privileges -------------------------------------------------------------------
@pytest.fixture(params=["sqlite", "mongo"])
def kind_for_nobody(request: pytest.FixtureRequest) -> Iterator[StoreKind]:
    """A store that user nobody can use: SQLite in a directory nobody owns (the pytest
    tmp_path is root's, 0700), or a fresh MongoDB database."""
    if request.param == "mongo":
        from tests.faults.harness import HAVE_MONGO

        if not HAVE_MONGO:
            pytest.skip("no MongoDB store")
        yield mongo_kind(request.getfixturevalue("mongo_uri"), request, None)
        return
    base = Path(tempfile.mkdtemp(prefix="tsd-nobody-"))
    try:
        os.chown(base, pwd.getpwnam("nobody").pw_uid, grp.getgrnam("nogroup").gr_gid)
        yield sqlite_kind(base)
    finally:
        shutil.rmtree(base, ignore_errors=True)


def python_for(user: str) -> str | None:
    """An interpreter whose standard library ``user`` can read: the venv's may live under
    /root (pyenv), which nobody else can enter, and the daemon imports lazily after it
    dropped root."""
    uid = pwd.getpwnam(user).pw_uid
    for candidate in (sys.executable, shutil.which(f"python{sys.version_info[0]}."
                                                   f"{sys.version_info[1]}"), "/usr/bin/python3"):  # fmt: skip
        if not candidate:
            continue
        try:
            probe = subprocess.run(
                [candidate, "-c", "import sqlite3, decimal, sys; print(sys.version_info[:2])"],
                user=uid, capture_output=True, text=True, cwd="/", timeout=30,
            )  # fmt: skip
        except OSError:  # not even executable for that user
            continue
        if probe.returncode == 0 and probe.stdout.strip() == str(tuple(sys.version_info[:2])):
            return candidate
    return None


def readable_by(user: str, repo: Path) -> bool:
    """Whether ``user`` can read the package sources (the workers import them after the drop)."""
    probe = subprocess.run(
        ["/bin/cat", str(repo / "taskschedd" / "__init__.py")],
        user=pwd.getpwnam(user).pw_uid, capture_output=True, cwd="/", timeout=30,
    )  # fmt: skip
    return probe.returncode == 0


@pytest.mark.skipif(os.geteuid() != 0, reason="switching users needs root")
def test_workers_run_as_the_configured_user_and_group_and_cannot_regain_root(
    kind_for_nobody: StoreKind, node_factory: Factory
) -> None:
    kind = kind_for_nobody
    python = python_for("nobody")
    if python is None:
        pytest.skip("no Python whose standard library user nobody can read")
    if not readable_by("nobody", REPO):
        pytest.skip(f"this checkout ({REPO}) is not readable by user nobody (a 0700 parent?)")
    nobody, nogroup = pwd.getpwnam("nobody").pw_uid, grp.getgrnam("nogroup").gr_gid
    d = node_factory(kind, pm="static", min_children=1, max_children=1, user="nobody",
                     group="nogroup")  # fmt: skip
    # Readiness by its worker, not by reading the store: a client running as root must not
    # be the one to create the SQLite files (they would be root's).
    d.start(python=python, wait=False)
    (worker,) = d.wait_workers(1, timeout=15)
    for pid in (d.pid, worker):  # the master drops before it forks any worker
        ids = proc_ids(pid)
        assert ids["Uid"] == [nobody] * 4 and ids["Gid"] == [nogroup] * 4, (pid, ids)
        assert set(ids["Groups"]) <= {nogroup}, ids
    s = kind.scheduler()
    job = s.add_job(f"{MODULE}.Identity").wait(10)
    assert job.status == JobStatus.DONE, job.errors
    assert worker_pid(job.record.worker) == worker
    assert job.result["status"]["Uid"] == [str(nobody)] * 4
    assert job.result["status"]["Gid"] == [str(nogroup)] * 4
    assert job.result["setuid0"] is False
    if kind.sqlite_path is not None:  # the store the daemon created is nobody's and private
        for path in store_files(kind.sqlite_path):
            st = path.stat()
            assert (st.st_uid, st.st_gid) == (nobody, nogroup), path


# -- store files ---------------------------------------------------------------------------
def store_files(db: Path) -> list[Path]:
    return [p for p in db.parent.iterdir() if p.name.startswith(db.name) and p.is_file()]


def test_the_daemons_sqlite_files_are_0600_in_a_0700_directory_whatever_the_umask(
    node_factory: Factory, tmp_path: Path
) -> None:
    kind = sqlite_kind(tmp_path)
    old = os.umask(0o002)  # a permissive umask, inherited by the daemon
    try:
        d = node_factory(kind, pm="static", min_children=2, max_children=2).start()
    finally:
        os.umask(old)
    d.wait_workers(2)
    s = kind.scheduler()
    assert s.add_job(f"{MODULE}.Echo", {"x": 1}).wait(10).status == JobStatus.DONE
    assert kind.sqlite_path is not None
    files = store_files(kind.sqlite_path)
    assert {p.name for p in files} >= {"taskschedd.db", "taskschedd.db-wal", "taskschedd.db-shm"}
    for path in files:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, (path, oct(path.stat().st_mode))
    assert stat.S_IMODE(kind.sqlite_path.parent.stat().st_mode) == 0o700
    notify = kind.sqlite_path.parent / "taskschedd.db-notify"
    if notify.exists():  # wake-up names of the listening processes
        assert stat.S_IMODE(notify.stat().st_mode) == 0o700
        for entry in notify.iterdir():
            assert stat.S_IMODE(entry.stat().st_mode) & 0o077 == 0, entry


# -- passwords never shown -----------------------------------------------------------------
def test_the_daemon_never_logs_a_store_password(node_factory: Factory, tmp_path: Path) -> None:
    kind = StoreKind("mongo", PASSWORD_URL, daemon_config={"store": PASSWORD_URL})
    d = node_factory(kind)
    d.start(wait=False)  # the server is unreachable: the daemon waits for it
    waiting = wait_for(
        lambda: len(w := d.logged("store unavailable at start; waiting for it")) >= 2 and w, 20
    )
    assert MASKED in str(waiting[0]["error"]) or "127.0.0.1:1" in str(waiting[0]["error"])
    (start,) = d.logged("taskschedd starting")
    assert start["config"]["store"] == MASKED
    d.signal(15)
    d.wait_exit(10)
    text = d.log_path.read_text() + d.stderr_path.read_text()
    assert SECRET not in text
    assert "***" in text

    # --check-config imports the allowed modules, from where the daemon would (tests.*).
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    check = subprocess.run(
        [str(TASKSCHEDD), "--check-config", "-c", str(d.config_path)],
        capture_output=True, text=True, timeout=60, env=env,
    )  # fmt: skip
    assert check.returncode == 0, check
    assert SECRET not in check.stdout + check.stderr and MASKED in check.stdout
    bad = subprocess.run(
        [str(TASKSCHEDD), "--check-config", "-c", str(d.config_path),
         "--store", f"mongodb://tsd:{SECRET}@/nohost"],
        capture_output=True, text=True, timeout=60, env=env,
    )  # fmt: skip
    assert bad.returncode == 78, bad
    assert SECRET not in bad.stdout + bad.stderr and "tsd:***@" in bad.stderr, bad.stderr


def ctl(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    full = {k: v for k, v in os.environ.items() if not k.startswith("TASKSCHED_")}
    full.update(env or {})
    return subprocess.Popen(
        [sys.executable, "-m", "taskschedctl.cli", *args],
        cwd=REPO, env=full, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def test_taskschedctl_never_prints_a_store_password(tmp_path: Path) -> None:
    config = tmp_path / "taskschedd.yaml"
    config.write_text(f"store: {PASSWORD_URL}\n")
    runs = {  # all at once: each waits out the server selection timeout
        "list --store": ctl("list", "--store", PASSWORD_URL),
        "stats --store": ctl("stats", "--store", PASSWORD_URL),
        "nodes --store": ctl("nodes", "--store", PASSWORD_URL),
        "add --store": ctl("add", f"{MODULE}.Echo", "--store", PASSWORD_URL),
        "show $TASKSCHED_STORE": ctl("show", "x", env={"TASKSCHED_STORE": PASSWORD_URL}),
        "events -c": ctl("-c", str(config), "events"),
        "check -c": ctl("-c", str(config), "check", "--timeout", "1s"),
        "bad scheme": ctl("list", "--store", f"redis://tsd:{SECRET}@host/0"),
    }
    deadline = time.monotonic() + 60
    for what, proc in runs.items():
        out, err = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
        assert proc.returncode in (2, 69), (what, proc.returncode, err)
        assert SECRET not in out + err, (what, out, err)
        # The masked URL, or the server's address alone (a MongoDB error names the host)
        assert "tsd:***@" in err or "MongoDB at 127.0.0.1:1 " in err, (what, err)
        assert "Traceback" not in err, (what, err)
