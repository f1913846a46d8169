"""taskschedd.probe: what the import check imports and how it reports each failure (the
child is forked from the test process, so a directory put on sys.path here is its too)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from taskschedd import probe
from taskschedd.config import Config, ConfigError

MODULES = {
    "p_ok.py": "def setup():\n    pass\n",
    "p_exit.py": "raise SystemExit(3)\n",
    "p_die.py": "import os\nos._exit(5)\n",
    "p_syntax.py": "def broken(:\n",
}


@pytest.fixture
def code(tmp_path: Path) -> Iterator[Path]:
    for name, text in MODULES.items():
        (tmp_path / name).write_text(text)
    sys.path.insert(0, str(tmp_path))
    try:
        yield tmp_path
    finally:
        sys.path.remove(str(tmp_path))


def test_targets_hook_first_then_allowed_modules_without_star_or_duplicates() -> None:
    cfg = Config(setup_hook="a.b:c.d", allowed_modules=["x", "*", "x", "y.z"])
    assert [(t.key, t.name) for t in probe.targets(cfg)] == [
        ("setup_hook", "a.b:c.d"), ("allowed_modules", "x"), ("allowed_modules", "y.z"),
    ]  # fmt: skip


@pytest.mark.parametrize("value", ["0", "-1", "nan", "inf", "abc", "3601"])
def test_a_bad_timeout_is_refused_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv(probe.TIMEOUT_ENV, value)
    with pytest.raises(ConfigError, match=r"\$TASKSCHED_PROBE_TIMEOUT: expected seconds"):
        probe.probe_timeout()


def test_timeout_default_and_override(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(probe.TIMEOUT_ENV, raising=False)
    assert probe.probe_timeout() == probe.DEFAULT_TIMEOUT
    monkeypatch.setenv(probe.TIMEOUT_ENV, "2.5")
    assert probe.probe_timeout() == 2.5


def test_every_failure_is_one_line(code: Path) -> None:
    cfg = Config(
        setup_hook="p_ok:missing",
        allowed_modules=["p_ok", "p_exit", "p_syntax", "taskschedd.examples", "*"],
    )
    problems = [str(p) for p in probe.check(cfg, 10)]
    assert problems[0] == (
        "setup_hook: 'p_ok:missing' not found: AttributeError: module 'p_ok' has no "
        "attribute 'missing'"
    )
    assert problems[1] == "allowed_modules: cannot import 'p_exit': SystemExit: 3"
    assert problems[2].startswith("allowed_modules: cannot import 'p_syntax': SyntaxError: ")
    assert len(problems) == 3 and all("\n" not in p for p in problems)


def test_a_module_that_ends_the_process_is_named(code: Path) -> None:
    (problem,) = probe.check(Config(allowed_modules=["p_die"]), 10)
    assert str(problem) == (
        "allowed_modules: importing 'p_die' ended the check process (exited with code 5)"
    )


def test_nothing_to_check_is_no_problem() -> None:
    assert probe.check(Config(allowed_modules=["*"]), 10) == []
