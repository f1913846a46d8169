"""etc/taskschedd.yaml: valid as shipped, true to the code's defaults, every key documented."""

from __future__ import annotations

import dataclasses
import pwd
import re
from pathlib import Path

import pytest

from taskschedd import config
from taskschedd.config import Config

ROOT = Path(__file__).resolve().parents[2]
REFERENCE = ROOT / "etc" / "taskschedd.yaml"
#: A commented-out setting ("#key: value" or "#- item"): prose comments have "# " instead.
SETTING = re.compile(r"^(?P<indent>\s*)#(?P<body>(?:[a-z_]+:(?:\s.*)?|- \S.*))$")


def nested_keys() -> dict[str, list[str]]:
    """Every key Config accepts, grouped by section ("" is the top level)."""
    keys = {"": [f.name for f in dataclasses.fields(Config)]}
    for f in dataclasses.fields(Config):
        default = getattr(Config(), f.name)
        if dataclasses.is_dataclass(default):
            keys[f.name] = [g.name for g in dataclasses.fields(default)]
    keys["job_defaults"] = list(config.JOB_DEFAULT_KEYS)
    return keys


def uncommented(text: str) -> str:
    """The file with every commented-out setting switched on, replacing the active line of
    the same key at the same indent (the shipped value it is an alternative to)."""
    out: list[str] = []
    for line in text.splitlines():
        m = SETTING.match(line)
        if not m:
            out.append(line)
            continue
        indent, body = m["indent"], m["body"]
        key = body.split(":", 1)[0]
        if key in ("user", "group") and not _account_exists(body.split(":", 1)[1].strip()):
            continue  # an example account that this host does not have
        for i in range(len(out) - 1, -1, -1):
            if re.match(rf"{indent}{key}:", out[i]) and not body.startswith("- "):
                del out[i]
                break
        out.append(indent + body)
    return "\n".join(out) + "\n"


def _account_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


def test_reference_config_loads_and_is_all_defaults() -> None:
    assert config.load(REFERENCE) == Config()


def test_every_key_is_in_the_reference_config() -> None:
    text = REFERENCE.read_text()
    for section, keys in nested_keys().items():
        for key in keys:
            indent = "" if not section else r"\s+"
            pattern = rf"^{indent}#?{key}:"
            assert re.search(pattern, text, re.M), f"{section or 'top level'}: {key} missing"


def test_commented_settings_are_valid_when_switched_on(tmp_path: Path) -> None:
    path = tmp_path / "taskschedd.yaml"
    path.write_text(uncommented(REFERENCE.read_text()))
    cfg = config.load(path)
    assert cfg.node == "web-1"
    assert cfg.max_children == 4
    assert cfg.allowed_modules == ["taskschedd.examples", "myapp.jobs"]
    assert cfg.setup_hook == "myapp.jobs:setup"
    assert cfg.metrics.address == ("127.0.0.1", 9464)
    assert cfg.logging.file == "/var/log/taskschedd/taskschedd.log"
    assert cfg.pidfile == "/run/taskschedd/taskschedd.pid"
    assert set(cfg.job_defaults) == set(config.JOB_DEFAULT_KEYS)


@pytest.mark.parametrize("key", [f.name for f in dataclasses.fields(Config)])
def test_every_top_level_key_is_explained(key: str) -> None:
    """The paragraph (lines between blank lines) holding a key has a prose comment."""
    for paragraph in re.split(r"\n\s*\n", REFERENCE.read_text()):
        if re.search(rf"^#?{key}:", paragraph, re.M):
            break
    else:
        pytest.fail(f"{key} is not in the reference configuration")
    prose = [line for line in paragraph.splitlines() if re.match(r"\s*# \S", line)]
    assert prose, f"{key}: no comment explains it"
