"""The soak as a test (not in the default run): ``pytest -m soak tests/soak`` runs one
minute per store, ``TASKSCHED_SOAK_MINUTES=10 pytest -m soak tests/soak`` ten."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.faults.harness import KINDS, SOAK_ENV
from tests.soak.soak import REPO


@pytest.mark.soak
@pytest.mark.timeout(0)
@pytest.mark.parametrize("store", KINDS)
def test_soak_loses_nothing_runs_nothing_twice_and_leaves_nothing_stuck(store: str) -> None:
    minutes = os.environ.get(SOAK_ENV) or "1"
    result = subprocess.run(
        [sys.executable, "-m", "tests.soak.soak", "--minutes", minutes, "--store", store],
        cwd=REPO, capture_output=True, text=True,
    )  # fmt: skip
    print(result.stdout[-3000:], result.stderr[-3000:])
    assert result.returncode == 0, result.stdout[-2000:]
    assert "lost 0, duplicated 0, stuck 0" in result.stdout
