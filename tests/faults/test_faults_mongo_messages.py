"""What the daemon's log says about an unreachable MongoDB: one short line per error
(where, what failed, why), never pymongo's topology description.

Real daemons: one against a loopback port nothing listens on, one whose own nx-27017
server is stopped under it while jobs run."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from tests.faults.harness import MONGO_COLLECTIONS, FaultDaemon, StoreKind, mongo_kind
from tests.helpers import wait_for
from tests.mongo_server import MongoServer, external_mongo_uri, pick_free_port

Factory = Callable[..., FaultDaemon]


def store_errors(d: FaultDaemon) -> list[tuple[str, str]]:
    """(event, error) of every log line that carries an error."""
    return [(str(e.get("event")), str(e["error"])) for e in d.events() if "error" in e]


def assert_short(errors: list[tuple[str, str]]) -> None:
    for event, error in errors:
        assert "Topology Description" not in error, (event, error)
        assert "configured timeouts" not in error and "full error" not in error, (event, error)
        assert "\n" not in error and len(error) < 400, (event, error)


def test_a_dead_server_at_start_is_one_line(node_factory: Factory) -> None:
    port = pick_free_port()
    url = f"mongodb://127.0.0.1:{port}/tsd"
    kind = StoreKind("mongo", url, daemon_config={"store": url, "mongodb": MONGO_COLLECTIONS})
    d = node_factory(kind)
    d.start(wait=False)  # the daemon waits for its store
    waiting = wait_for(lambda: d.logged("store unavailable at start; waiting for it"), 20)
    error = str(waiting[0]["error"])
    assert error.startswith(f"MongoDB at 127.0.0.1:{port} is unreachable"), error
    assert "connection refused (after " in error, error
    assert_short(store_errors(d))
    d.signal(15)
    d.wait_exit(10)


def test_a_server_lost_while_running_is_one_line_per_error(
    node_factory: Factory, request: pytest.FixtureRequest
) -> None:
    if external_mongo_uri() is not None:
        pytest.skip("the MongoDB server is someone else's: it cannot be stopped here")
    with MongoServer() as server:
        kind = mongo_kind(server.uri, request, server)
        d = node_factory(kind, pm="static", min_children=2, max_children=2).start()
        d.wait_workers(2)
        server.stop()
        try:
            seen: list[dict[str, Any]] = wait_for(
                lambda: [e for e in d.events() if "unavailable" in str(e.get("event", ""))],
                15,
                message="the master to log the outage",
            )
            wait_for(
                lambda: [e for e in d.events() if "error" in e and "worker" in e],
                15,
                message="a worker to log the outage",
            )
        finally:
            server.start()
        assert seen
        errors = store_errors(d)
        assert any("127.0.0.1" in error for _, error in errors), errors
        assert_short(errors)
        d.signal(15)
        d.wait_exit(15)
