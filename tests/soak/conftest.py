"""Soak tests run only when asked (-m soak, or $TASKSCHED_SOAK_MINUTES): see harness."""

from tests.faults.harness import (  # noqa: F401  (pytest finds hooks by name)
    pytest_runtest_makereport,
    pytest_runtest_setup,
)
