"""The README runs as written: its code blocks against the node ``make run`` starts.

A newcomer copies the blocks one after the other into a second terminal; so does this
test, in a directory laid out like a clone (``Makefile``, ``etc/`` and ``.venv``), with the
node started by the command ``make run`` runs. Blocks that need root or a real MongoDB
(systemd, the development section) are checked for what can be checked here: the files
they name exist. Every block of the README must be claimed by one check below, so a new
block cannot go untested.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
import time
import tomllib
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from taskschedd.cron import CronExpr
from taskschedd.model import JobStatus
from taskschedd.rules import series_of
from taskschedd.scheduler import Scheduler
from tests.helpers import wait_for

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
VENV = Path(sys.executable).parent.parent


@dataclass(frozen=True)
class Block:
    section: str
    lang: str
    text: str


def blocks() -> list[Block]:
    found: list[Block] = []
    section = ""
    lines = iter(README.read_text().splitlines())
    for line in lines:
        if line.startswith("## "):
            section = line[3:].strip()
        elif line.startswith("```"):
            lang = line[3:].strip()
            body: list[str] = []
            for inner in lines:
                if inner.startswith("```"):
                    break
                body.append(inner)
            found.append(Block(section, lang, "\n".join(body) + "\n"))
    return found


def claimed(section: str, lang: str, contains: str) -> Block:
    """The one block of ``section`` in ``lang`` holding ``contains``."""
    hits = [b for b in blocks() if b.section == section and b.lang == lang and contains in b.text]
    assert len(hits) == 1, f"README: expected one {lang} block in '{section}' with {contains!r}"
    return hits[0]


# What each check below claims: (section, language, a string the block holds).
CLAIMS = [
    ("Two commands", "sh", "make run"),
    ("Two commands", "sh", "export TASKSCHED_CONFIG"),
    ("Writing jobs", "python", "class SendMail(Job)"),
    ("Writing jobs", "python", "scheduler = Scheduler()"),
    ("Writing jobs", "python", "scheduler.chain("),
    ("Limits, exclusive keys and rates", "sh", "limits set reports"),
    ("The dashboard", "sh", "taskschedctl dashboard"),
    ("From cron", "cron", "add --once"),
    ("Under systemd", "sh", "systemctl enable"),
    ("Development", "sh", "TASKSCHED_TEST_MONGODB_URI"),
]


def test_every_block_of_the_readme_is_checked() -> None:
    claimed_blocks = [claimed(*claim) for claim in CLAIMS]
    unclaimed = [b for b in blocks() if b not in claimed_blocks]
    assert not unclaimed, f"README blocks no test runs or checks: {unclaimed}"


# -- the node of `make run`, in a directory laid out like a clone ----------------------


@dataclass
class Clone:
    path: Path
    node: subprocess.Popen[str]
    log: Path
    config: Path

    def env(self) -> dict[str, str]:
        """A shell's environment, without our test settings (TASKSCHED_*)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("TASKSCHED_")}
        env["PWD"] = str(self.path)
        return env


@pytest.fixture(scope="module")
def clone(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Clone]:
    if not (VENV / "bin" / "taskschedd").exists():
        pytest.skip(f"taskschedd is not installed in {VENV}")
    path = tmp_path_factory.mktemp("clone")
    for name in ("Makefile", "pyproject.toml"):
        (path / name).symlink_to(ROOT / name)
    (path / "etc").symlink_to(ROOT / "etc")
    (path / ".venv").symlink_to(VENV)
    # A newcomer's shell: no test settings, and not inside `make test` (a make run by a
    # make prints "Entering/Leaving directory" lines around its plan).
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("TASKSCHED_") and k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")
    }
    # `make run` = install (pip, skipped here: the suite runs installed), the local
    # configuration (made for real), then the node: run that command as make prints it.
    subprocess.run(
        ["make", "--no-print-directory", "-s", "var/taskschedd.yaml"], cwd=path, env=env, check=True
    )
    plan = subprocess.run(
        ["make", "--no-print-directory", "-n", "run"],
        cwd=path,
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.splitlines()
    command = plan[-1]
    assert command.startswith(".venv/bin/taskschedd "), plan
    log = path / "node.log"
    with log.open("w") as out:
        node = subprocess.Popen(
            shlex.split(command), cwd=path, env=env, stdout=out, stderr=subprocess.STDOUT,
            text=True,
        )  # fmt: skip
    try:
        wait_for(lambda: "taskschedd ready" in log.read_text(), 30, message=log.read_text)
        yield Clone(path, node, log, path / "var" / "taskschedd.yaml")
    finally:
        node.send_signal(signal.SIGINT)  # Ctrl-C, as the README says
        try:
            code = node.wait(30)
        except subprocess.TimeoutExpired:
            node.kill()
            raise
        assert code == 0, log.read_text()[-3000:]
        assert "Traceback" not in log.read_text(), log.read_text()[-3000:]


def scheduler(clone: Clone) -> Scheduler:
    return Scheduler(config=clone.config)


def test_make_run_starts_a_node_with_the_local_configuration(clone: Clone) -> None:
    block = claimed("Two commands", "sh", "make run")
    assert "make run" in block.text and "make test" in block.text
    config = clone.config.read_text()
    assert f"store: sqlite:///{clone.path}/var/taskschedd.db" in config
    assert "setup_hook: taskschedd.examples.mail:setup" in config
    assert (clone.path / "var" / "taskschedd.db").exists()


def test_the_second_terminal_block_runs_as_written(clone: Clone) -> None:
    block = claimed("Two commands", "sh", "export TASKSCHED_CONFIG")
    assert block.text.rstrip().splitlines()[-1].startswith(".venv/bin/taskschedctl events --follow")
    shell = subprocess.Popen(
        ["bash", "-e", "-o", "pipefail", "-c", block.text], cwd=clone.path, env=clone.env(),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )  # fmt: skip
    out: list[str] = []
    try:
        with scheduler(clone) as sched:
            # The block ends in `events --follow`: it is reached (every command before it
            # succeeded, bash -e) once the Sleep job's DONE event is printed; then a job
            # added now must show up live, and Ctrl-C ends it.
            assert shell.stdout is not None
            sleep_id = _read_until(shell, out, lambda: _sleep_done(sched, out))
            late = sched.add_job("taskschedd.examples.jobs.Echo", {"late": True})
            _read_until(shell, out, lambda: any(late.id in line for line in out))
        os.killpg(shell.pid, signal.SIGINT)
        _, err = shell.communicate(timeout=30)
    finally:
        if shell.poll() is None:
            os.killpg(shell.pid, signal.SIGKILL)
            shell.wait()
    assert shell.returncode in (0, 130, -signal.SIGINT), (shell.returncode, err)
    assert "Traceback" not in err, err
    text = "".join(out)
    with scheduler(clone) as sched:
        adds = sched.get_jobs("all")
        add = [p for p in adds if p.record.cls == "taskschedd.examples.jobs.Add"]
        assert [p.status for p in add] == [JobStatus.DONE] and add[0].result == 3
        assert sched.get_job(sleep_id).status is JobStatus.DONE
    assert add[0].id in text and sleep_id in text


def _read_until(shell: subprocess.Popen[str], out: list[str], done: object) -> str:
    """Read the shell's lines until ``done()`` gives a value (60 s at most)."""
    assert shell.stdout is not None and callable(done)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        value = done()
        if value:
            return str(value)
        line = shell.stdout.readline()
        if not line:
            raise AssertionError(f"the block ended (exit {shell.wait()}): {''.join(out)}")
        out.append(line)
    raise AssertionError(f"timed out; output so far: {''.join(out)}")


def _sleep_done(sched: Scheduler, out: list[str]) -> str | None:
    for proc in sched.get_jobs("all"):
        sleep = proc.record.cls == "taskschedd.examples.jobs.Sleep"
        # Printed by `show` (its id), then as a DONE event by `events --follow`.
        printed = any(proc.id in line and "DONE" in line for line in out)
        if sleep and proc.status is JobStatus.DONE and printed:
            return proc.id
    return None


def test_the_job_class_block_is_the_shipped_example() -> None:
    block = claimed("Writing jobs", "python", "class SendMail(Job)")
    source = (ROOT / "taskschedd" / "examples" / "mail.py").read_text()
    cls = block.text[block.text.index("class SendMail") :]
    assert cls in source, "README's SendMail differs from taskschedd/examples/mail.py"
    run = subprocess.run([str(VENV / "bin" / "python"), "-c", block.text], capture_output=True,
                         text=True, timeout=60)  # fmt: skip
    assert run.returncode == 0, run.stderr


def test_the_scheduler_block_runs_as_written(clone: Clone) -> None:
    block = claimed("Writing jobs", "python", "scheduler = Scheduler()")
    env = clone.env() | {"TASKSCHED_CONFIG": str(clone.config)}  # "exported as above"
    run = subprocess.run([str(VENV / "bin" / "python"), "-c", block.text], cwd=clone.path,
                         env=env, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines()[0] == "DONE {'sent_to': 'a@b.c'} []", run.stdout
    assert "mail sent" in clone.log.read_text()
    with scheduler(clone) as sched:
        mails = [p for p in sched.get_jobs("all") if p.record.cls.endswith(".SendMail")]
        assert [(p.status, p.result) for p in mails] == [(JobStatus.DONE, {"sent_to": "a@b.c"})]
        series = [p for p in sched.get_jobs("all") if p.record.options.cron]
        # One series (two jobs of it when the run straddled a quarter hour: the node ran
        # the occurrence due then and added the next).
        assert {p.record.options.cron for p in series} == {"*/15 * * * *"}
        assert len({series_of(p.record) for p in series}) == 1
    # Run again (as a deploy would): still one series.
    again = subprocess.run([str(VENV / "bin" / "python"), "-c", block.text], cwd=clone.path,
                           env=env, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert again.returncode == 0, again.stderr
    with scheduler(clone) as sched:
        series = [p for p in sched.get_jobs("all") if p.record.options.cron]
        assert len({series_of(p.record) for p in series}) == 1


def test_the_workflow_block_runs_after_the_scheduler_block(clone: Clone) -> None:
    """Typed in the same interpreter after the block before it (its ``scheduler``)."""
    setup = "from taskschedd import Scheduler\nscheduler = Scheduler()\n"
    block = claimed("Writing jobs", "python", "scheduler.chain(")
    env = clone.env() | {"TASKSCHED_CONFIG": str(clone.config)}
    run = subprocess.run([str(VENV / "bin" / "python"), "-c", setup + block.text],
                         cwd=clone.path, env=env, capture_output=True, text=True,
                         timeout=120)  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines() == ["6 60"], run.stdout


def test_the_limits_block_runs_as_written(clone: Clone) -> None:
    """Run in the second terminal (TASKSCHED_CONFIG exported): the limits are set, the
    jobs run, and the two jobs of customer 42 never overlap."""
    block = claimed("Limits, exclusive keys and rates", "sh", "limits set reports")
    env = clone.env() | {"TASKSCHED_CONFIG": str(clone.config)}
    run = subprocess.run(["bash", "-e", "-o", "pipefail", "-c", block.text], cwd=clone.path,
                         env=env, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert "Traceback" not in run.stderr, run.stderr
    lines = {line.split()[0]: line.split() for line in run.stdout.splitlines()[1:]}
    assert lines["reports"][1:3] == ["2", "-"] and lines["mail"][1:3] == ["-", "100/1m"]
    with scheduler(clone) as sched:
        limited = [p for p in sched.get_jobs("all") if p.record.options.limit == "reports"]
        assert len(limited) == 3
        sched.wait([p.id for p in limited], timeout=60)
        done = [p.refresh().record for p in limited]
        assert [j.status for j in done] == [JobStatus.DONE] * 3, done
        runs = sorted(
            (j.started, j.ended) for j in done if j.options.exclusive_key == "customer:42"
        )
        assert runs[0][1] <= runs[1][0], runs  # one after the other
        sched.delete_limit("reports")
        sched.delete_limit("mail")


def test_the_dashboard_block_installs_the_extra_and_serves_the_store(clone: Clone) -> None:
    """The extra the block installs is the project's; its command, run in the second
    terminal (on a free port instead of 8080), serves the node's store."""
    block = claimed("The dashboard", "sh", "taskschedctl dashboard")
    lines = [shlex.split(x.split("#", 1)[0]) for x in block.text.splitlines() if x.strip()]
    assert lines[0] == [".venv/bin/pip", "install", "-e", ".[dashboard]"], lines
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    assert {"starlette", "uvicorn", "jinja2"} <= {
        re.split(r"[<>=]", d)[0] for d in extras["dashboard"]
    }
    assert lines[1] == [".venv/bin/taskschedctl", "dashboard"], lines
    if not (ROOT / "docs" / "dashboard.png").read_bytes().startswith(b"\x89PNG"):
        pytest.fail("docs/dashboard.png, the README's screenshot, is not a PNG")
    env = clone.env() | {"TASKSCHED_CONFIG": str(clone.config)}
    proc = subprocess.Popen([*lines[1], "--listen", "127.0.0.1:0"], cwd=clone.path, env=env,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline()
        found = re.search(r"http://127\.0\.0\.1:(\d+)/", line)
        assert found, line
        with urllib.request.urlopen(f"http://127.0.0.1:{found.group(1)}/", timeout=30) as page:
            assert page.status == 200
            assert "Overview" in page.read().decode()
    finally:
        proc.send_signal(signal.SIGINT)  # Ctrl-C, as the block says
        assert proc.wait(30) == 0


def test_the_cron_line_adds_one_job_however_often_it_runs(clone: Clone) -> None:
    """The crontab line's schedule is valid, and its command (pointed at this clone's
    configuration, with a class the node allows: myapp is the reader's) adds one job."""
    block = claimed("From cron", "cron", "add --once")
    line = next(x for x in block.text.splitlines() if x.strip() and not x.startswith("#"))
    fields = line.split(None, 6)
    CronExpr.parse(" ".join(fields[:5]))
    user, command = fields[5], shlex.split(fields[6])
    assert user == "taskschedd" and command[:3] == [
        "taskschedctl",
        "-c",
        "/etc/taskschedd/taskschedd.yaml",
    ]
    assert command[3:6] == ["add", "--once", "myapp.jobs.Nightly"], command
    assert command[6:] in ([], ["{}"]), command  # a missing DATA is {}
    # A job that is still waiting or running when the line runs again: one job for both.
    argv = [str(VENV / "bin" / "taskschedctl"), "-c", str(clone.config), "add", "--once",
            "taskschedd.examples.jobs.Sleep", '{"seconds": 60}']  # fmt: skip
    ids = set()
    for _ in range(2):
        run = subprocess.run(argv, env=clone.env(), capture_output=True, text=True, timeout=60)
        assert run.returncode == 0, run.stderr
        ids.add(run.stdout.split()[0])
    assert len(ids) == 1
    with scheduler(clone) as sched:
        sched.cancel_job(ids.pop()).wait(30)


def test_the_systemd_block_names_files_that_exist() -> None:
    block = claimed("Under systemd", "sh", "systemctl enable")
    named = set(re.findall(r"(?<![\w/])((?:systemd|etc)/[\w@.-]+)", block.text))
    assert named, block.text
    missing = sorted(p for p in named if not (ROOT / p).exists())
    assert not missing, f"README names files the repository does not have: {missing}"


def test_the_development_block_names_what_the_tests_read() -> None:
    block = claimed("Development", "sh", "TASKSCHED_TEST_MONGODB_URI")
    assert "make test" in block.text
    assert "TASKSCHED_TEST_MONGODB_URI" in (ROOT / "tests" / "mongo_server.py").read_text()
