"""Start-up refusals: whatever can refuse a start is checked before ``--daemon`` detaches,
so that its caller gets one line on stderr and a non-zero exit code (and nothing is
started or half-written); a node refuses a name that a live node has in the store.

Every case runs the real ``taskschedd`` (and ``taskschedctl``) as processes.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from taskschedd.model import NodeRecord
from tests.e2e.conftest import BOTH_STORES, REPO, TASKSCHEDD, Daemon, E2EStore, cmdline, pid_gone
from tests.helpers import wait_for

TASKSCHEDCTL = Path(sys.executable).parent / "taskschedctl"
#: Heartbeats every second: a node counts as live for 3 s after its last one, so that a
#: loaded test machine does not make a live node look stale.
BEAT = {"heartbeat_interval": "1s"}
WINDOW = 3.0


def clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TASKSCHED")}
    env["PYTHONPATH"] = str(REPO)
    env.pop("NOTIFY_SOCKET", None)
    return env


def run(*args: str, cwd: Path, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(TASKSCHEDD), *args], cwd=cwd, env=clean_env(), capture_output=True, text=True,
        timeout=timeout, stdin=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip


def one_line_error(result: subprocess.CompletedProcess[str], code: int, *fragments: str) -> None:
    assert result.returncode == code, result
    assert "Traceback" not in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    for fragment in fragments:
        assert fragment in result.stderr, (fragment, result.stderr)


def started_from(config: Path) -> list[int]:
    """Processes of a start with this configuration: its command line names the file, or
    (once a master set its process title) it holds the log file beside it open."""
    log = os.path.realpath(config.parent / "taskschedd.log")
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        pid = int(entry)
        if str(config) in cmdline(pid) or log in open_files(pid):
            found.append(pid)
    return found


def open_files(pid: int) -> list[str]:
    """What the descriptors of ``pid`` name (those we may read)."""
    names = []
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return []
    for fd in fds:
        try:
            names.append(os.readlink(f"/proc/{pid}/fd/{fd}"))
        except OSError:
            continue
    return names


class Attempt:
    """A second start, in a directory of its own: its config, pidfile and log file."""

    def __init__(self, tmp: Path, base: dict[str, Any]) -> None:
        self.dir = tmp
        self.dir.mkdir(parents=True, exist_ok=True)
        self.config = self.dir / "taskschedd.yaml"
        self.pidfile = self.dir / "taskschedd.pid"
        self.log = self.dir / "taskschedd.log"
        self.base = {
            "node": "second",
            "pm": "static",
            "min_children": 1,
            "max_children": 1,
            "allowed_modules": ["taskschedd.examples"],
            "logging": {"format": "json", "file": str(self.log)},
            **BEAT,
            **base,
        }

    def write(self, **changes: Any) -> Path:
        self.config.write_text(yaml.safe_dump({**self.base, **changes}))
        return self.config

    def daemon(self, *args: str, **changes: Any) -> subprocess.CompletedProcess[str]:
        config = self.write(**changes)
        return run("-c", str(config), "--daemon", "--pidfile", str(self.pidfile), *args,
                   cwd=self.dir)  # fmt: skip

    def foreground(self, **changes: Any) -> subprocess.CompletedProcess[str]:
        return run("-c", str(self.write(**changes)), "--pidfile", str(self.pidfile), cwd=self.dir)

    def nothing_started(self, *, detached: bool = True) -> None:
        """No pidfile, no process; before detaching, not even a master's first log line."""
        assert not self.pidfile.exists()
        assert started_from(self.config) == []
        text = self.log.read_text() if self.log.exists() else ""
        assert not detached or "taskschedd starting" not in text, text


@pytest.fixture
def attempt(tmp_path: Path, e2e_store: E2EStore) -> Attempt:
    return Attempt(tmp_path / "attempt", {"store": e2e_store.url, **e2e_store.daemon_config})


@pytest.fixture
def sqlite_attempt(tmp_path: Path) -> Attempt:
    return Attempt(tmp_path / "attempt", {"store": f"sqlite:///{tmp_path}/store/t.db"})


def file_state(path: Path) -> tuple[str, int, int]:
    st = path.stat()
    return path.read_text(), st.st_ino, st.st_mtime_ns


def ctl_nodes(config: Path) -> list[dict[str, Any]]:
    cp = subprocess.run(
        [str(TASKSCHEDCTL), "-c", str(config), "nodes", "--json"], env=clean_env(),
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert cp.returncode == 0, cp
    nodes: list[dict[str, Any]] = json.loads(cp.stdout)
    return nodes


# -- the pidfile ---------------------------------------------------------------------------
def test_daemon_refuses_a_pidfile_held_by_a_running_node_before_detaching(
    daemon_factory: Callable[..., Daemon], attempt: Attempt
) -> None:
    first = daemon_factory("first", pidfile=str(attempt.pidfile), **BEAT).start()
    before = file_state(attempt.pidfile)
    assert before[0].strip() == str(first.pid)
    result = attempt.daemon()
    one_line_error(result, 1, f"pidfile {attempt.pidfile} names a running process "
                              f"(pid {first.pid})")  # fmt: skip
    assert file_state(attempt.pidfile) == before  # not rewritten, not replaced
    assert first.running() and started_from(attempt.config) == []
    log = attempt.log.read_text()
    assert "taskschedd starting" not in log, log
    assert "names a running process" in log, log  # the reason, in the log file too


def test_daemon_refuses_a_pidfile_naming_another_live_process(
    sqlite_attempt: Attempt,
) -> None:
    with subprocess.Popen(["sleep", "60"]) as other:
        try:
            sqlite_attempt.pidfile.write_text(f"{other.pid}\n")
            before = file_state(sqlite_attempt.pidfile)
            result = sqlite_attempt.daemon()
            one_line_error(result, 1, f"names a running process (pid {other.pid})")
            assert file_state(sqlite_attempt.pidfile) == before
            assert started_from(sqlite_attempt.config) == []
        finally:
            other.kill()


def test_a_stale_pidfile_is_taken_and_written_with_the_daemon_s_pid(
    sqlite_attempt: Attempt,
) -> None:
    sqlite_attempt.pidfile.write_text("999999999\n")  # no such process
    os.chmod(sqlite_attempt.pidfile, 0o600)
    result = sqlite_attempt.daemon()
    assert result.returncode == 0, result
    pid = int(wait_for(lambda: sqlite_attempt.pidfile.read_text().strip() != "999999999"
                       and sqlite_attempt.pidfile.read_text().strip(), 10))  # fmt: skip
    try:
        wait_for(lambda: "taskschedd: master" in cmdline(pid), 10)
        assert sqlite_attempt.pidfile.stat().st_mode & 0o777 == 0o644
        # Only the master holds the pidfile (and its lock): its workers closed it.
        workers = wait_for(lambda: [int(p) for p in os.listdir("/proc") if p.isdigit()
                                    and "taskschedd: worker second/" in cmdline(int(p))], 10)  # fmt: skip
        pidfile = os.path.realpath(sqlite_attempt.pidfile)
        assert pidfile in open_files(pid)
        for worker in workers:
            assert pidfile not in open_files(worker), worker
        again = sqlite_attempt.daemon()
        one_line_error(again, 1, f"(pid {pid})")
    finally:
        os.kill(pid, signal.SIGTERM)
    wait_for(lambda: not sqlite_attempt.pidfile.exists(), 15)


@pytest.mark.parametrize("content", ["2147483648", "99999999999999999999", "-5", "12 34"])
def test_a_pidfile_holding_a_number_no_pid_can_be_is_taken_over(
    sqlite_attempt: Attempt, content: str
) -> None:
    sqlite_attempt.pidfile.write_text(f"{content}\n")
    result = sqlite_attempt.daemon()
    assert result.returncode == 0 and "Traceback" not in result.stderr, result
    pid = int(wait_for(lambda: sqlite_attempt.pidfile.read_text().strip() != content
                       and sqlite_attempt.pidfile.read_text().strip(), 10))  # fmt: skip
    try:
        wait_for(lambda: "taskschedd ready" in sqlite_attempt.log.read_text(), 20)
    finally:
        os.kill(pid, signal.SIGTERM)
    wait_for(lambda: not sqlite_attempt.pidfile.exists(), 15)


def test_a_daemon_started_with_a_relative_config_path_reloads_it(
    sqlite_attempt: Attempt,
) -> None:
    """--daemon changes to /: the configuration's path is made absolute before, so that
    a reload (SIGHUP) reads the same file."""
    sqlite_attempt.write()
    result = run("-c", "taskschedd.yaml", "--daemon", "--pidfile", "taskschedd.pid",
                 cwd=sqlite_attempt.dir)  # fmt: skip
    assert result.returncode == 0, result
    pid = int(wait_for(lambda: sqlite_attempt.pidfile.exists()
                       and sqlite_attempt.pidfile.read_text().strip(), 10))  # fmt: skip
    try:
        wait_for(lambda: "taskschedd ready" in sqlite_attempt.log.read_text(), 20)
        sqlite_attempt.write(max_children=2)
        os.kill(pid, signal.SIGHUP)
        wait_for(lambda: "configuration reloaded" in sqlite_attempt.log.read_text()
                 or "reload refused" in sqlite_attempt.log.read_text(), 20,
                 message=lambda: sqlite_attempt.log.read_text()[-2000:])  # fmt: skip
        log = sqlite_attempt.log.read_text()
        assert "reload refused" not in log and "cannot read" not in log, log[-2000:]
        assert str(sqlite_attempt.config) in log
    finally:
        os.kill(pid, signal.SIGTERM)
    wait_for(lambda: not sqlite_attempt.pidfile.exists(), 15)


# -- the store, the log file, the configuration, the user ------------------------------------
def test_daemon_refuses_a_file_that_is_not_a_store_with_69(sqlite_attempt: Attempt) -> None:
    garbage = sqlite_attempt.dir / "garbage.db"
    garbage.write_bytes(b"not a database " * 300)
    result = sqlite_attempt.daemon(store=str(garbage))
    one_line_error(result, 69, str(garbage))
    sqlite_attempt.nothing_started()


def test_daemon_refuses_a_store_directory_it_cannot_create_with_69(
    sqlite_attempt: Attempt,
) -> None:
    blocker = sqlite_attempt.dir / "file"
    blocker.write_text("a file where a directory should be")
    result = sqlite_attempt.daemon(store=f"sqlite:///{blocker}/sub/t.db")
    one_line_error(result, 69, "cannot create the store directory", str(blocker))
    sqlite_attempt.nothing_started()


@pytest.mark.parametrize(
    ("logging", "fragment"),
    [
        (
            {"file": "/nonexistent/dir/t.log"},
            "logging.file: directory /nonexistent/dir does not exist",
        ),
        ({"file": "{dir}"}, "cannot open log file"),
    ],
    ids=["missing directory", "a directory"],
)
def test_daemon_refuses_a_log_file_it_cannot_open_with_78(
    sqlite_attempt: Attempt, logging: dict[str, str], fragment: str
) -> None:
    target = {k: v.format(dir=sqlite_attempt.dir) for k, v in logging.items()}
    result = sqlite_attempt.daemon(logging={"format": "json", **target})
    one_line_error(result, 78, fragment)
    sqlite_attempt.nothing_started()


def test_daemon_refuses_a_bad_configuration_with_78(sqlite_attempt: Attempt) -> None:
    result = sqlite_attempt.daemon(pm="sometimes")
    one_line_error(result, 78, "pm: expected one of dynamic|static|ondemand")
    sqlite_attempt.nothing_started()


@pytest.mark.parametrize(
    ("changes", "fragment"),
    [
        ({"user": "no-such-user-tsd"}, "user: no user 'no-such-user-tsd'"),
        ({"group": "no-such-group-tsd"}, "group: no group 'no-such-group-tsd'"),
    ],
    ids=["user", "group"],
)
def test_daemon_refuses_an_unknown_user_or_group_with_78(
    sqlite_attempt: Attempt, changes: dict[str, str], fragment: str
) -> None:
    result = sqlite_attempt.daemon(**changes)
    one_line_error(result, 78, fragment)
    sqlite_attempt.nothing_started()
    assert not (sqlite_attempt.dir.parent / "store").exists()


def test_daemon_refuses_to_switch_users_when_not_root() -> None:
    """Started as nobody, configured as root: the switch needs root (78)."""
    import pwd
    import shutil
    import site
    import tempfile

    from tests.security.test_security import python_for, readable_by

    if os.geteuid() != 0:
        pytest.skip("needs root to start a process as user nobody")
    python = python_for("nobody")
    if python is None or not readable_by("nobody", REPO):
        pytest.skip("no Python and checkout that user nobody can read")
    nobody = pwd.getpwnam("nobody").pw_uid
    base = Path(tempfile.mkdtemp(prefix="tsd-switch-"))  # pytest's tmp_path is root's, 0700
    try:
        os.chmod(base, 0o777)
        start = Attempt(base / "attempt", {"store": f"sqlite:///{base}/store/t.db"})
        os.chmod(start.dir, 0o777)
        config = start.write(user="root")
        env = clean_env()
        env["PYTHONPATH"] = os.pathsep.join([str(REPO), *site.getsitepackages()])
        entry = "import sys; from taskschedd.cli import main; sys.argv[0] = 'taskschedd'; main()"
        result = subprocess.run(
            [python, "-c", entry, "-c", str(config), "--daemon", "--pidfile",
             str(start.pidfile)], user=nobody, cwd="/", env=env, capture_output=True,
            text=True, timeout=30, stdin=subprocess.DEVNULL,
        )  # fmt: skip
        one_line_error(result, 78, "cannot switch to user root", "must be started as root")
        start.nothing_started()
        assert not (base / "store").exists()
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def busy_port() -> Iterator[int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def test_daemon_refuses_a_metrics_port_in_use_before_detaching(
    sqlite_attempt: Attempt, busy_port: int
) -> None:
    result = sqlite_attempt.daemon(metrics={"listen": f"127.0.0.1:{busy_port}"})
    one_line_error(result, 1, f"cannot serve metrics on 127.0.0.1:{busy_port}")
    sqlite_attempt.nothing_started()


# -- one live node per name ------------------------------------------------------------------
def _refused_for_name(result: subprocess.CompletedProcess[str], first: Daemon) -> None:
    one_line_error(
        result, 78, "node: node name 'web-1' is in use by a live node",
        f"host {socket.gethostname()}", f"pid {first.pid}", "the 'node' key",
        "wait for that node to stop",
    )  # fmt: skip


@BOTH_STORES
def test_a_second_node_of_a_live_name_is_refused_and_the_first_stays_listed(
    daemon_factory: Callable[..., Daemon], attempt: Attempt
) -> None:
    first = daemon_factory("first", node="web-1", **BEAT).start()
    listed = ctl_nodes(first.config_path)
    assert [(n["name"], n["pid"]) for n in listed] == [("web-1", first.pid)]
    for how in ("daemon", "foreground"):
        result = (
            attempt.daemon(node="web-1") if how == "daemon" else attempt.foreground(node="web-1")
        )
        _refused_for_name(result, first)
        attempt.nothing_started(detached=how == "daemon")
        # The refused node removed nothing: the first is still listed, with its instance.
        assert ctl_nodes(first.config_path) and [
            (n["name"], n["pid"], n["instance"]) for n in ctl_nodes(first.config_path)
        ] == [("web-1", first.pid, listed[0]["instance"])]
    assert first.running()
    first.signal(signal.SIGTERM)
    assert first.wait_exit(15) == 0
    assert ctl_nodes(first.config_path) == []  # its own entry, removed at its exit


@BOTH_STORES
def test_the_name_of_a_node_killed_with_sigkill_can_be_reused(
    daemon_factory: Callable[..., Daemon], attempt: Attempt
) -> None:
    """On the same host a dead master's pid tells at once; from another host (forged
    here) the name is free once the entry is older than the liveness window."""
    first = daemon_factory("first", node="web-1", **BEAT).start()
    first.proc.send_signal(signal.SIGKILL)  # type: ignore[union-attr]
    first.wait_exit(10)
    assert [n["pid"] for n in ctl_nodes(first.config_path)] == [first.pid]  # still fresh
    result = attempt.daemon(node="web-1")
    assert result.returncode == 0, result
    pid = int(
        wait_for(lambda: attempt.pidfile.exists() and attempt.pidfile.read_text().strip(), 10)
    )
    try:
        wait_for(lambda: [n["pid"] for n in ctl_nodes(first.config_path)] == [pid], 10,
                 message=lambda: str(ctl_nodes(first.config_path)))  # fmt: skip
    finally:
        os.kill(pid, signal.SIGTERM)
    wait_for(lambda: pid_gone(pid), 15)
    assert not attempt.pidfile.exists()

    # An entry of a node on another host: live, then stale after the window.
    attempt = Attempt(attempt.dir.parent / "from-elsewhere", attempt.base)
    with first.open_store() as store:
        now = time.time()
        forged = NodeRecord(name="web-1", host="elsewhere.example", pid=4242, started=now,
                            heartbeat=now, instance="forged")  # fmt: skip
        assert store.register_node(forged, now=now, window=WINDOW) is None
    result = attempt.daemon(node="web-1")
    one_line_error(result, 78, "host elsewhere.example", "pid 4242")
    attempt.nothing_started()
    wait_for(lambda: ctl_nodes(first.config_path) == [], WINDOW + 10)  # stale: not listed
    result = attempt.daemon(node="web-1")
    assert result.returncode == 0, result
    pid = int(
        wait_for(lambda: attempt.pidfile.exists() and attempt.pidfile.read_text().strip(), 10)
    )
    try:
        wait_for(lambda: [n["pid"] for n in ctl_nodes(first.config_path)] == [pid], 10)
    finally:
        os.kill(pid, signal.SIGTERM)
    wait_for(lambda: pid_gone(pid), 15)


@BOTH_STORES
def test_a_frozen_node_whose_name_was_taken_over_stops_with_78_and_leaves_the_entry(
    daemon_factory: Callable[..., Daemon],
) -> None:
    first = daemon_factory("first", node="web-1", **BEAT).start()
    first.signal(signal.SIGSTOP)
    try:
        wait_for(lambda: ctl_nodes(first.config_path) == [], WINDOW + 10)  # stale
        second = daemon_factory("second", node="web-1", **BEAT).start()
        wait_for(lambda: [n["pid"] for n in ctl_nodes(second.config_path)] == [second.pid], 10)
    finally:
        first.signal(signal.SIGCONT)
    assert first.wait_exit(20) == 78
    taken = first.logged("another node took over this node's name in the registry "
                         "(this node was frozen or cut off from the store for longer than "
                         "its liveness window): stopping this node, exit 78")  # fmt: skip
    assert taken and taken[0]["other_pid"] == second.pid, first.diagnostics()
    # Its exit removed nothing of the node that has the name now.
    assert [n["pid"] for n in ctl_nodes(second.config_path)] == [second.pid]
    assert second.running()


def _heartbeat_age(config: Path) -> float:
    (entry,) = ctl_nodes(config)
    return time.time() - float(entry["heartbeat"])


@BOTH_STORES
def test_a_node_is_live_by_its_own_heartbeat_interval_not_the_observer_s(
    daemon_factory: Callable[..., Daemon], attempt: Attempt
) -> None:
    """A node beating every 20s stays live for a node and a taskschedctl whose own
    interval is 1s (their window: 3s): the second start is refused, nodes lists it."""
    first = daemon_factory("first", node="web-1", heartbeat_interval="20s").start()
    short = attempt.write(node="web-1")  # heartbeat_interval 1s
    wait_for(lambda: _heartbeat_age(first.config_path) > WINDOW + 1, 30)  # past 3s
    listed = ctl_nodes(short)
    assert [(n["pid"], n["stale"]) for n in listed] == [(first.pid, False)], listed
    assert listed[0]["live_until"] >= listed[0]["heartbeat"] + 60 - 0.5
    text = subprocess.run(
        [str(TASKSCHEDCTL), "-c", str(short), "nodes"], env=clean_env(), capture_output=True,
        text=True, timeout=30,
    )  # fmt: skip
    assert text.returncode == 0 and text.stdout.splitlines()[1].split()[:4] == [
        "web-1", socket.gethostname(), str(first.pid), "live"
    ], text  # fmt: skip
    check = subprocess.run(
        [str(TASKSCHEDCTL), "-c", str(short), "check", "--min-nodes", "1"], env=clean_env(),
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert check.returncode == 0 and "no live node" not in check.stderr, check
    result = attempt.daemon(node="web-1")
    _refused_for_name(result, first)
    assert "counts as live for 60s after its last heartbeat" in result.stderr, result.stderr
    attempt.nothing_started()
    assert first.running()
    assert [n["pid"] for n in ctl_nodes(short)] == [first.pid]


def _unshare_works() -> bool:
    try:
        cp = subprocess.run(["unshare", "-p", "-f", "--mount-proc", "true"],
                            capture_output=True, timeout=10)  # fmt: skip
    except (OSError, subprocess.TimeoutExpired):
        return False
    return cp.returncode == 0


def test_a_node_in_another_pid_namespace_does_not_take_a_live_node_s_name(
    daemon_factory: Callable[..., Daemon], attempt: Attempt
) -> None:
    """A container sharing the hostname (unshare -p; Kubernetes hostNetwork pods): the
    first node's pid names nothing there, which must not make it look dead."""
    if not _unshare_works():
        pytest.skip("unshare -p -f --mount-proc does not work here (needs root or user "
                    "namespaces)")  # fmt: skip
    first = daemon_factory("first", node="web-1", **BEAT).start()
    config = attempt.write(node="web-1")
    result = subprocess.run(
        ["unshare", "-p", "-f", "--mount-proc", "--kill-child", str(TASKSCHEDD), "-c",
         str(config), "--pidfile", str(attempt.pidfile)],
        cwd=attempt.dir, env=clean_env(), capture_output=True, text=True, timeout=60,
        stdin=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    _refused_for_name(result, first)
    assert first.running()
    assert [n["pid"] for n in ctl_nodes(first.config_path)] == [first.pid]


def test_of_two_daemons_started_at_once_with_one_name_one_runs(
    tmp_path: Path, daemon_factory: Callable[..., Daemon], e2e_store: E2EStore
) -> None:
    """Both may pass the check before detaching; the store's registration lets one win.
    The other is refused on its stderr, or (having detached) in its log file, and exits."""
    base = {"store": e2e_store.url, **e2e_store.daemon_config, "node": "web-1"}
    for round_ in range(3):
        pair = [Attempt(tmp_path / f"r{round_}-{i}", base) for i in range(2)]
        for a in pair:
            a.write()
        procs = [
            subprocess.Popen(
                [str(TASKSCHEDD), "-c", str(a.config), "--daemon", "--pidfile", str(a.pidfile)],
                cwd=a.dir,
                env=clean_env(),
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
            for a in pair
        ]
        outcomes = [(*p.communicate(timeout=30), p.returncode) for p in procs]
        running: list[int] = []
        try:
            for a, (_, err, code) in zip(pair, outcomes, strict=True):
                if code == 78:
                    assert "node name 'web-1' is in use" in err, err
                    a.nothing_started()
                    continue
                assert code == 0, err

                def settled(a: Attempt = a) -> str | None:
                    log = a.log.read_text() if a.log.exists() else ""
                    if "taskschedd ready" in log:
                        return "ready"
                    if "node name 'web-1' is in use" in log and not a.pidfile.exists():
                        return "refused"
                    return None

                if wait_for(settled, 15) == "ready":
                    running.append(int(a.pidfile.read_text()))
                else:
                    assert '"exit_code": 78' in a.log.read_text()
            assert len(running) == 1, outcomes
            assert [n["pid"] for n in ctl_nodes(pair[0].config)] == running
        finally:
            for pid in running:
                os.kill(pid, signal.SIGTERM)
            for pid in running:
                wait_for(lambda pid=pid: pid_gone(pid), 15)


def test_daemon_refuses_a_link_planted_at_the_pidfile_and_leaves_its_target(
    sqlite_attempt: Attempt,
) -> None:
    target = sqlite_attempt.dir / "target"
    target.write_text("precious\n")
    sqlite_attempt.pidfile.symlink_to(target)
    result = sqlite_attempt.daemon()
    one_line_error(result, 1, f"cannot write pidfile {sqlite_attempt.pidfile}")
    assert target.read_text() == "precious\n"
    assert sqlite_attempt.pidfile.is_symlink()
    assert started_from(sqlite_attempt.config) == []
