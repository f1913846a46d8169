"""The ``ctl`` fixture: one SQLite store per test and the CLI pointed at it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.ctl.harness import CtlHarness


@pytest.fixture
def ctl(tmp_path: Path) -> Iterator[CtlHarness]:
    harness = CtlHarness(tmp_path)
    yield harness
    harness.close()
