"""The ``store`` fixture: every contract test runs once per store kind.

A kind is one entry in STORE_KINDS: a function that returns a StoreSpec (URL and open
options) for a fresh, empty store. Tests that need a second connection or a child
process open the same store again with ``store_spec.open()``; a spec is picklable, so
children build their own store (and client) after fork.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from taskschedd.store import open_store
from taskschedd.store.base import Store
from tests.mongo_server import unique_db_name


@dataclass(frozen=True)
class StoreSpec:
    """How to open one test store; ``open()`` gives a new, independent store object."""

    kind: str
    url: str
    options: dict[str, Any] = field(default_factory=dict)

    def open(self) -> Store:
        return open_store(self.url, **self.options)


def make_sqlite(request: pytest.FixtureRequest, tmp_path: Path) -> StoreSpec:
    return StoreSpec("sqlite", f"sqlite:///{tmp_path}/store/jobs.db", {"create": True})


def make_mongo(request: pytest.FixtureRequest, tmp_path: Path) -> StoreSpec:
    uri = request.getfixturevalue("mongo_uri")
    name = unique_db_name()

    def drop() -> None:
        import pymongo

        client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(
            uri, serverSelectionTimeoutMS=5000
        )
        with client:
            client.drop_database(name)

    request.addfinalizer(drop)
    # nx-27017 rejects collection names with dots (the original's defaults); these names
    # are valid on MongoDB too. A short poll interval keeps the waker tests fast.
    options = {
        "database": name,
        "jobs_collection": "taskscheduler_jobs",
        "events_collection": "taskscheduler_events",
        "nodes_collection": "taskscheduler_nodes",
        "poll_interval": 0.1,
    }
    return StoreSpec("mongo", uri, options)


STORE_KINDS: dict[str, Callable[[pytest.FixtureRequest, Path], StoreSpec]] = {
    "sqlite": make_sqlite,
}

try:
    import taskschedd.store.mongo  # noqa: F401  (the MongoDB store joins once it exists)
except ImportError:
    pass
else:
    STORE_KINDS["mongo"] = make_mongo


@pytest.fixture(params=sorted(STORE_KINDS))
def store_spec(request: pytest.FixtureRequest, tmp_path: Path) -> StoreSpec:
    return STORE_KINDS[request.param](request, tmp_path)


@pytest.fixture
def store(store_spec: StoreSpec) -> Iterator[Store]:
    """A fresh, empty store of each kind."""
    s = store_spec.open()
    try:
        yield s
    finally:
        s.close()
