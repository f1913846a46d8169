"""man/: every page renders without warnings; taskschedd.yaml(5) documents every key."""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from taskschedd import config
from taskschedd.config import Config

ROOT = Path(__file__).resolve().parents[2]
MAN = ROOT / "man"
PAGES = sorted(p for p in MAN.glob("*.[158]") if p.is_file())
YAML_PAGE = MAN / "taskschedd.yaml.5"
ENV = {**os.environ, "MANWIDTH": "80", "LC_ALL": "C.UTF-8", "MANPAGER": "cat", "PAGER": "cat"}


def run(cmd: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=ENV)


def test_pages_exist() -> None:
    assert YAML_PAGE in PAGES


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_page_renders_with_man_without_warnings(page: Path) -> None:
    man = shutil.which("man")
    if man is None:
        pytest.skip("man is not installed")
    proc = run([man, "--warnings", "-P", "cat", "-l", str(page)])
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    name, section = page.stem, page.suffix[1:]
    assert proc.stdout.startswith(f"{name.upper()}({section})")
    assert "NAME" in proc.stdout and "SEE ALSO" in proc.stdout
    width = max(len(line) for line in proc.stdout.splitlines())
    assert width <= 80, f"{page.name}: a line of {width} columns at MANWIDTH=80"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_page_passes_groff_all_warnings(page: Path) -> None:
    groff = shutil.which("groff")
    if groff is None:
        pytest.skip("groff is not installed")
    proc = run([groff, "-man", "-ww", "-z", str(page)])
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""


# -- taskschedd.yaml(5) against taskschedd.config --------------------------------------------


def expected_keys() -> set[str]:
    """Every key the configuration accepts, nested ones dotted (logging.format)."""
    keys: set[str] = set()
    defaults = Config()
    for f in dataclasses.fields(Config):
        value = getattr(defaults, f.name)
        if dataclasses.is_dataclass(value):
            keys.update(f"{f.name}.{g.name}" for g in dataclasses.fields(value))
        else:
            keys.add(f.name)
    return keys


def plain(roff: str) -> str:
    """Roff inline markup removed: fonts, escapes for - and quotes."""
    text = re.sub(r"\\f[BIRP]", "", roff)
    return text.replace("\\-", "-").replace("\\(aq", "'").replace('""', '"')


def tags_by_section(path: Path) -> dict[str, list[str]]:
    """The tag lines (.TP/.TQ) of each .SH section, as plain text."""
    sections: dict[str, list[str]] = {}
    current = ""
    lines = path.read_text().splitlines()
    for i, line in enumerate(lines):
        if line.startswith(".SH "):
            current = line[4:].strip('"')
            sections.setdefault(current, [])
        elif line in (".TP", ".TQ") and i + 1 < len(lines):
            tag = lines[i + 1]
            if tag.startswith((".B ", ".I ")):
                tag = tag[3:]
            sections.setdefault(current, []).append(plain(tag))
    return sections


KEY_SECTIONS = (
    "STORE",
    "WORKERS",
    "JOB DEFAULTS",
    "LIMITS",
    "RELIABILITY",
    "LOGGING, METRICS, PROCESS",
    "DASHBOARD",
    "MONGODB",
)
NOT_KEYS = {"dynamic", "static", "ondemand"}  # the pm modes, tagged inside pm


def documented() -> dict[str, str]:
    """key -> its tag line, from the sections that document keys."""
    sections = tags_by_section(YAML_PAGE)
    out: dict[str, str] = {}
    for name in KEY_SECTIONS:
        assert name in sections, f"no section {name}"
        for tag in sections[name]:
            key = tag.split(" ", 1)[0]
            if re.fullmatch(r"[a-z_]+(?:\.[a-z_]+)?", key) and key not in NOT_KEYS:
                assert key not in out, f"{key} documented twice"
                out[key] = tag
    return out


def test_yaml_page_documents_every_key_and_no_other() -> None:
    docs = documented()
    job_defaults = {f"job_defaults.{k}" for k in config.JOB_DEFAULT_KEYS}
    keys = {k if k in expected_keys() else f"job_defaults.{k}" for k in docs}
    assert keys == expected_keys() | job_defaults


def _setting(key: str, value: Any) -> dict[str, Any]:
    section, _, sub = key.partition(".")
    return {section: {sub: value}} if sub else {key: value}


def test_yaml_page_states_the_real_defaults() -> None:
    """A tag "(type, default VALUE)" must name what Config() uses; prose defaults
    ("default: the host name") are for values that depend on the host."""
    defaults = Config()
    checked = 0
    for key, tag in documented().items():
        if key not in expected_keys():
            continue  # a job_defaults option
        m = re.search(r"default (?!:)(.+?)(?:,.*)?\)$", tag)
        if m is None:
            assert "default:" in tag or "(" not in tag, f"{key}: no default in {tag!r}"
            continue
        value = yaml.safe_load(m[1])
        parsed = config.from_mapping(_setting(key, value), path="/etc/taskschedd/x.yaml")
        section, _, sub = key.partition(".")
        got, want = getattr(parsed, section), getattr(defaults, section)
        if sub:
            got, want = getattr(got, sub), getattr(want, sub)
        assert got == want, f"{key}: the page says default {m[1]!r}, the code uses {want!r}"
        checked += 1
    assert checked >= 20


def test_yaml_page_names_every_store_form_and_see_also() -> None:
    text = plain(YAML_PAGE.read_text())
    for form in ("sqlite:///", "sqlite://", "mongodb://", "mongodb+srv://"):
        assert form in text
    see_also = text.split(".SH SEE ALSO", 1)[1]
    assert "taskschedd (8)" in see_also and "taskschedctl (1)" in see_also
    assert ".SH FILES" in text and "/etc/taskschedd/taskschedd.yaml" in text
