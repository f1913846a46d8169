"""What a newcomer's review of taskschedctl found (issue 13): exit 141 when the reader of
the output goes away, the empty ``nodes --all`` line, one-line fields that stay one line
in ``show`` and ``events``, the man page on creating a store, and taskschedd's exit codes
in its --help. The CLI and the daemon run as real processes."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from taskschedd.model import NodeRecord
from tests.ctl.harness import ECHO, FAIL, ROOT, CtlHarness, clean_env, wait_for

MESSAGE = "échec 💥\nline2"


def _many_jobs(ctl: CtlHarness, count: int = 1500) -> str:
    """Enough jobs that list and events print far more than a pipe holds (64 KiB)."""
    sched = ctl.sched()
    ids = [str(sched.add_job(ECHO, [i]).id) for i in range(count)]
    return ids[0]


def _first_line_then_close(ctl: CtlHarness, *args: str) -> tuple[int, str, str]:
    """``taskschedctl ARGS | head -1``: read one line, close the pipe, wait for the exit."""
    proc = ctl.popen(*args, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    line = proc.stdout.readline()
    proc.stdout.close()
    try:
        code = proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    err = proc.stderr.read()
    proc.stderr.close()
    return code, line, err


# -- 1: the reader went away: 141, silently ------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ("events", "-n", "0"),
        ("list", "--limit", "0"),
        ("list", "--limit", "0", "--json"),
        ("list", "--limit", "0", "--jsonl"),
    ],
    ids=" ".join,
)
def test_a_reader_that_goes_away_ends_with_141_and_says_nothing(
    ctl: CtlHarness, args: tuple[str, ...]
) -> None:
    _many_jobs(ctl)
    code, line, err = _first_line_then_close(ctl, *args)
    assert line  # it did print
    assert (code, err) == (141, ""), (code, err)


def test_show_of_a_long_job_piped_into_head_ends_with_141(ctl: CtlHarness) -> None:
    job_id = ctl.add(ECHO, [f"item {i:05d} " + "x" * 40 for i in range(4000)])
    assert len(ctl.proc("show", job_id).out) > 200_000  # far more than a pipe holds
    code, line, err = _first_line_then_close(ctl, "show", job_id)
    assert line.startswith("id:")
    assert (code, err) == (141, ""), (code, err)


def test_a_reader_that_stays_gets_everything_and_0(ctl: CtlHarness) -> None:
    """Writing in pieces loses nothing: the whole table, every line whole."""
    _many_jobs(ctl, 600)
    res = ctl.proc("list", "--limit", "0")
    assert res.code == 0 and res.err == "", res
    lines = res.out.splitlines()
    assert len(lines) == 601 and lines[0].startswith("ID ")
    assert all(line.split()[1] == ECHO for line in lines[1:])


# -- 2: nodes --all with no entry ----------------------------------------------------------


def test_nodes_all_without_entries_says_nodes_remove_theirs_when_they_stop(
    ctl: CtlHarness,
) -> None:
    store = ctl.store()
    now = time.time()
    store.heartbeat(
        NodeRecord(name="n1", host="h", pid=1, started=now - 60, heartbeat=now, queues=("a",))
    )
    assert "n1" in ctl.proc("nodes", "--all").out
    store.remove_node("n1")  # what a node does when it stops cleanly
    res = ctl.proc("nodes", "--all")
    assert res.code == 0, res
    assert res.out == "no node registered (a node removes its entry when it stops)\n", res
    assert "ever" not in res.out


# -- 3: one-line fields stay one line ------------------------------------------------------


def _failed(ctl: CtlHarness, message: str) -> str:
    job_id = ctl.add(FAIL, {"message": message})
    ctl.run_jobs()
    assert ctl.job(job_id).status.name == "FAILED"
    return job_id


def test_show_escapes_newlines_in_an_attempts_error_line(ctl: CtlHarness) -> None:
    job_id = _failed(ctl, MESSAGE)
    res = ctl.proc("show", job_id)
    assert res.code == 0, res
    lines = res.out.splitlines()
    (attempt,) = [line for line in lines if line.startswith("    attempt 1 ")]
    assert attempt.endswith("[exception]: RuntimeError: échec 💥\\nline2"), attempt
    following = lines[lines.index(attempt) + 1]
    assert following.startswith("        Traceback"), following  # the traceback block
    # "line2" is only in the traceback, a block of its own (indented 8), as it was raised
    stray = [line for line in lines if line.lstrip().startswith("line2")]
    assert stray == ["        line2"], res.out


def test_events_show_the_whole_message_escaped_and_bounded(ctl: CtlHarness) -> None:
    job_id = _failed(ctl, MESSAGE)
    res = ctl.proc("events", "--job", job_id)
    assert res.code == 0, res
    (failed,) = [line for line in res.out.splitlines() if " FAILED " in line]
    assert failed.endswith("error=RuntimeError: échec 💥\\nline2"), failed
    long_id = _failed(ctl, "\n".join(f"line {i}" for i in range(400)))
    res = ctl.proc("events", "--job", long_id)
    (failed,) = [line for line in res.out.splitlines() if " FAILED " in line]
    assert "error=RuntimeError: line 0\\nline 1\\n" in failed and failed.endswith("..."), failed
    assert len(failed) < 900, len(failed)  # 500 characters of the message at most
    assert len(res.out.splitlines()) == 3  # WAITING, PROCESSING, FAILED: one line each


# -- 4: the man page on creating a store ---------------------------------------------------


def _section(page: str, name: str) -> str:
    return page.split(f".SH {name}\n", 1)[1].split("\n.SH ", 1)[0]


def test_man_description_says_add_needs_create_as_it_does(ctl: CtlHarness) -> None:
    page = (ROOT / "man" / "taskschedctl.1").read_text()
    description = _section(page, "DESCRIPTION")
    assert "creates an SQLite store that does not exist yet" not in description
    assert '.B "add \\-\\-create"' in description
    res = ctl.proc("add", ECHO, store=False, env={"TASKSCHED_STORE": ctl.url})
    assert res.code == 69 and "add --create" in res.err, res
    assert not ctl.path.exists()


# -- 5: taskschedd's exit codes in --help --------------------------------------------------


def _daemon(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", "from taskschedd.cli import main; main()", *args],
        capture_output=True,
        text=True,
        env=clean_env(),
        timeout=30,
    )


def test_taskschedd_help_lists_the_exit_codes_of_the_man_page() -> None:
    res = _daemon("--help")
    assert res.returncode == 0, res
    line = res.stdout.split("Exit codes:", 1)[1].split("\n\n", 1)[0]
    in_help = set(re.findall(r"\b(\d+) [a-z]", line))
    page = (ROOT / "man" / "taskschedd.8").read_text()
    in_man = set(re.findall(r"^\.TP\n\.B (\d+)\n", _section(page, "EXIT STATUS"), re.M))
    assert in_help == in_man == {"0", "1", "2", "69", "78", "130"}, (in_help, in_man)


def test_taskschedd_usage_error_exits_2() -> None:
    res = _daemon("--no-such-option")
    assert res.returncode == 2, res
    assert "No such option" in res.stderr and "Traceback" not in res.stderr


def test_taskschedd_ctrl_c_before_the_master_runs_exits_130(tmp_path: Path) -> None:
    config = tmp_path / "taskschedd.yaml"
    config.write_text('store: "mongodb://127.0.0.1:1/db"\n')  # refused: waited for
    err_path = tmp_path / "stderr"
    with err_path.open("w") as err:
        proc = subprocess.Popen(
            [sys.executable, "-c", "from taskschedd.cli import main; main()", "-c", str(config)],
            stdout=subprocess.DEVNULL,
            stderr=err,
            env=clean_env(),
            start_new_session=True,
        )
    try:
        wait_for(
            lambda: "waiting for it" in err_path.read_text(),
            timeout=20,
            what="the node waiting for its store",
        )
        proc.send_signal(signal.SIGINT)
        code = proc.wait(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert code == 130, err_path.read_text()[-2000:]
    assert "Traceback" not in err_path.read_text()
