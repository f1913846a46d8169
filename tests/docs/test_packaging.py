"""pyproject.toml: the license is an SPDX expression (PEP 639), which setuptools reads
from version 77 on; a license table makes setuptools warn at every install."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _pyproject() -> dict[str, object]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_the_license_is_an_spdx_string() -> None:
    license_ = _pyproject()["project"]["license"]  # type: ignore[index]
    assert license_ == "MIT", license_


def test_the_build_requires_a_setuptools_that_reads_spdx_licenses() -> None:
    requires = _pyproject()["build-system"]["requires"]  # type: ignore[index]
    found = [r for r in requires if re.match(r"setuptools\b", r)]
    assert len(found) == 1, requires
    match = re.fullmatch(r"setuptools\s*>=\s*(\d+)(\.\d+)*", found[0])
    assert match is not None and int(match.group(1)) >= 77, found


def test_no_install_disables_build_isolation() -> None:
    """The venv's own setuptools may be older than 77: installs must build in isolation."""
    for name in ("Makefile", ".ci/run"):
        assert "--no-build-isolation" not in (ROOT / name).read_text(), name
