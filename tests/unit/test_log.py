"""Logging: JSON lines with bound fields, levels, reconfigure, logrotate reopen, fork, redaction."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from taskschedd import log
from taskschedd.errors import ConfigError


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """Leave the global configuration as a later test expects it: console on stderr."""
    yield
    log.configure()


def lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_json_lines_carry_bound_fields(tmp_path: Path) -> None:
    path = tmp_path / "ts.log"
    log.configure(format="json", level="info", file=str(path))
    logger = log.get_logger("taskschedd.test", node="n1")
    logger.info("job started", job_id="j1", attempt=2)
    logger.bind(worker=3).warning("slow", seconds=1.5)
    first, second = lines(path)
    assert first["event"] == "job started"
    assert first["logger"] == "taskschedd.test"
    assert first["level"] == "info"
    assert (first["node"], first["job_id"], first["attempt"]) == ("n1", "j1", 2)
    assert first["timestamp"].endswith("Z") and "T" in first["timestamp"]
    assert (second["level"], second["worker"], second["seconds"]) == ("warning", 3, 1.5)


def test_level_filters_and_reconfigure_applies_to_existing_loggers(tmp_path: Path) -> None:
    path = tmp_path / "ts.log"
    log.configure(format="json", level="warning", file=str(path))
    logger = log.get_logger("taskschedd.test")
    logger.info("dropped")
    logger.error("kept")
    log.configure(format="json", level="debug", file=str(path))  # SIGHUP
    logger.debug("now visible")
    assert [e["event"] for e in lines(path)] == ["kept", "now visible"]


def test_exception_is_rendered(tmp_path: Path) -> None:
    path = tmp_path / "ts.log"
    log.configure(format="json", file=str(path))
    try:
        raise RuntimeError("kaput")
    except RuntimeError:
        log.get_logger("t").exception("failed")
    (entry,) = lines(path)
    assert entry["level"] == "error"
    assert "RuntimeError: kaput" in entry["exception"]


def test_reopen_after_logrotate_rename(tmp_path: Path) -> None:
    path = tmp_path / "ts.log"
    log.configure(format="json", file=str(path))
    logger = log.get_logger("taskschedd.test")
    logger.info("before rotate")
    path.rename(tmp_path / "ts.log.1")
    logger.info("still to the old file")  # until SIGHUP, the open file is the renamed one
    log.reopen()
    logger.info("after rotate")
    assert [e["event"] for e in lines(tmp_path / "ts.log.1")] == [
        "before rotate",
        "still to the old file",
    ]
    assert [e["event"] for e in lines(path)] == ["after rotate"]


def test_configure_again_reopens_file(tmp_path: Path) -> None:
    path = tmp_path / "ts.log"
    log.configure(format="json", file=str(path))
    log.get_logger("t").info("one")
    path.rename(tmp_path / "old.log")
    log.configure(format="json", file=str(path))
    log.get_logger("t").info("two")
    assert [e["event"] for e in lines(path)] == ["two"]


def test_file_is_appended_not_truncated(tmp_path: Path) -> None:
    path = tmp_path / "ts.log"
    path.write_text('{"event": "old"}\n')
    log.configure(format="json", file=str(path))
    log.get_logger("t").info("new")
    assert [e["event"] for e in lines(path)] == ["old", "new"]


def test_redacts_mongodb_password(tmp_path: Path) -> None:
    path = tmp_path / "ts.log"
    log.configure(format="json", file=str(path))
    url = "mongodb://app:s3cret@db1,db2/jobs?replicaSet=rs0"
    log.get_logger("t").info(
        f"connecting to {url}", store=url, hosts=[url], nested={"uri": url}, err=ValueError(url)
    )
    text = path.read_text()
    assert "s3cret" not in text
    (entry,) = lines(path)
    assert entry["store"] == "mongodb://app:***@db1,db2/jobs?replicaSet=rs0"
    assert entry["event"] == "connecting to mongodb://app:***@db1,db2/jobs?replicaSet=rs0"
    assert entry["hosts"] == [entry["store"]] and entry["nested"] == {"uri": entry["store"]}


def test_console_to_stderr_without_colours(capfd: pytest.CaptureFixture[str]) -> None:
    log.configure(format="console", level="info")
    log.get_logger("taskschedd.master", node="n1").info("started", workers=4)
    err = capfd.readouterr().err
    assert "started" in err and "taskschedd.master" in err and "workers=4" in err
    assert "\x1b[" not in err  # not a TTY: no ANSI colour codes


def test_console_to_capsys_stream(capsys: pytest.CaptureFixture[str]) -> None:
    log.configure(format="console")
    log.get_logger("t").warning("visible", url="mongodb://u:pw@h/d")
    err = capsys.readouterr().err
    assert "visible" in err and "mongodb://u:***@h/d" in err


def test_forked_child_writes_whole_lines(tmp_path: Path) -> None:
    path = tmp_path / "ts.log"
    log.configure(format="json", file=str(path))
    logger = log.get_logger("t")
    logger.info("parent before fork")
    pid = os.fork()
    if pid == 0:  # child: log and leave without running pytest's cleanup
        try:
            for i in range(50):
                log.get_logger("child").info("child line", i=i, pad="x" * 200)
        finally:
            os._exit(0)
    for i in range(50):
        logger.info("parent line", i=i, pad="y" * 200)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    entries = lines(path)  # every line parses: nothing interleaved
    assert sum(e["event"] == "child line" for e in entries) == 50
    assert sum(e["event"] == "parent line" for e in entries) == 50


def test_bad_arguments_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"logging\.format"):
        log.configure(format="xml")
    with pytest.raises(ConfigError, match=r"logging\.level"):
        log.configure(level="trace")
    with pytest.raises(ConfigError, match="cannot open log file"):
        log.configure(file=str(tmp_path / "missing-dir" / "x.log"))


def test_get_logger_works_before_configure(capfd: pytest.CaptureFixture[str]) -> None:
    log._STATE.clear()
    log.get_logger("early").info("hello early")
    captured = capfd.readouterr()
    assert "hello early" in captured.err and captured.out == ""


def test_redact_processor_leaves_other_values() -> None:
    event = {"event": "x", "n": 3, "s": "plain", "d": {"k": "http://a:b@c/"}}
    assert log.redact_processor(None, "info", event) == {
        "event": "x",
        "n": 3,
        "s": "plain",
        "d": {"k": "http://a:***@c/"},
    }
