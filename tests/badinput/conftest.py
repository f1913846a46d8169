"""Fixtures and hooks of the bad-input tests (defined in tests/faults/harness.py)."""

from tests.faults.harness import (  # noqa: F401  (pytest finds fixtures and hooks by name)
    kind,
    node_factory,
    pytest_runtest_makereport,
    pytest_runtest_setup,
)
