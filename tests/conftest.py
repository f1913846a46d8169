"""Fixtures shared by all tests: light ones only (a store URL, a MongoDB server on demand)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.mongo_server import mongo_uri_for_tests


@pytest.fixture(autouse=True)
def _forget_secrets() -> Iterator[None]:
    """Passwords a test made taskschedd remember (redact.remember_secret) are masked in
    every later message of the process: forget them, so tests do not mask each other's
    words."""
    from taskschedd import redact

    before = set(redact._SECRETS)
    yield
    redact._SECRETS.intersection_update(before)


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    """A fresh SQLite store URL in this test's own directory. Nothing is there yet: a
    daemon creates it at start, a client only with create=True (StoreMissing otherwise)."""
    return f"sqlite:///{tmp_path}/store/taskschedd.db"


@pytest.fixture(scope="session")
def mongo_uri() -> Iterator[str]:
    """One MongoDB-compatible server per xdist worker ($TASKSCHED_TEST_MONGODB_URI or nx-27017).

    Started only when a test asks for it; tests share it and use unique database names.
    """
    with mongo_uri_for_tests() as uri:
        yield uri
