"""taskschedd.store.mongo.errors: every pymongo error as one short line (what failed,
where, why), never the topology description or the server's full reply.

The texts are pymongo 4's own, copied from real runs (a refused port, a DNS failure, two
seeds, a lost connection, a refused command)."""

from __future__ import annotations

import pytest
from pymongo.errors import (
    AutoReconnect,
    ConfigurationError,
    NetworkTimeout,
    OperationFailure,
    ServerSelectionTimeoutError,
)

from taskschedd.errors import StoreError, StoreNotWritable, StoreUnavailable
from taskschedd.store.mongo.errors import hosts_of, reason, translate

CONFIGURED = "(configured timeouts: socketTimeoutMS: 1000.0ms, connectTimeoutMS: 1000.0ms)"


def selection_error(servers: list[tuple[str, str]], timeout: str = "1.0") -> str:
    head = ",".join(f"{h}: {why} {CONFIGURED}" for h, why in servers)
    described = ", ".join(
        f"<ServerDescription ('{h.rsplit(':', 1)[0]}', {h.rsplit(':', 1)[1]}) server_type: "
        f"Unknown, rtt: None, error=AutoReconnect('{h}: {why} {CONFIGURED}')>"
        for h, why in servers
    )
    return (
        f"{head}, Timeout: {timeout}s, Topology Description: <TopologyDescription id: "
        f"6b0f936f12c3321b45a7b261, topology_type: Unknown, servers: [{described}]>"
    )


def test_refused_port() -> None:
    exc = ServerSelectionTimeoutError(
        selection_error([("127.0.0.1:1", "[Errno 111] Connection refused")])
    )
    err = translate(exc, "connect", "127.0.0.1:1")
    assert isinstance(err, StoreUnavailable)
    assert str(err) == (
        "MongoDB at 127.0.0.1:1 is unreachable (connect): connection refused (after 1.0 s)"
    )


def test_unknown_host_and_odd_timeouts() -> None:
    exc = ServerSelectionTimeoutError(
        selection_error(
            [("nosuchhost.invalid:27017", "[Errno -2] Name or service not known")],
            timeout="0.7992673009975988",
        )
    )
    assert str(translate(exc, "list jobs", "nosuchhost.invalid")) == (
        "MongoDB at nosuchhost.invalid:27017 is unreachable (list jobs): name or service "
        "not known (after 0.8 s)"
    )


def test_several_seeds() -> None:
    same = ServerSelectionTimeoutError(
        selection_error([("h1:27017", "[Errno 111] Connection refused"), ("h2:27017", "timed out")])
    )
    text = str(translate(same, "connect", "h1,h2"))
    assert text.startswith("MongoDB at h1:27017,h2:27017 is unreachable (connect): ")
    assert "h1:27017: connection refused; h2:27017: timed out" in text
    assert "Topology" not in text and "configured" not in text


def test_no_primary_and_no_server_named() -> None:
    exc = ServerSelectionTimeoutError(
        'No replica set members match selector "Primary()", Timeout: 5.0s, Topology '
        "Description: <TopologyDescription id: 1, topology_type: ReplicaSetNoPrimary, "
        "servers: []>"
    )
    assert str(translate(exc, "claim", "a:1,b:2")) == (
        "MongoDB at a:1,b:2 is unreachable (claim): no replica set members match selector "
        '"Primary()" (after 5.0 s)'
    )


def test_lost_connection_and_timeout() -> None:
    lost = AutoReconnect("127.0.0.1:27017: connection closed")
    err = translate(lost, "settle", "127.0.0.1")
    assert isinstance(err, StoreUnavailable)
    assert str(err) == "MongoDB at 127.0.0.1:27017: connection lost (settle): connection closed"
    slow = NetworkTimeout(f"127.0.0.1:27017: timed out {CONFIGURED}")
    assert reason(slow) == "timed out"


def test_refused_command_keeps_the_servers_words_not_its_reply() -> None:
    details = {
        "ok": 0.0,
        "errmsg": 'not authorized on tsd to execute command { find: "jobs" }',
        "code": 13,
        "codeName": "Unauthorized",
    }
    exc = OperationFailure("not authorized ..., full error: " + str(details), 13, details)
    err = translate(exc, "list jobs", "db.example:27017")
    assert type(err) is StoreError
    assert str(err) == (
        "MongoDB at db.example:27017: list jobs failed: not authorized on tsd to execute "
        'command { find: "jobs" } (Unauthorized)'
    )
    auth = OperationFailure("Authentication failed., full error: {...}", 18, {"code": 18})
    assert str(translate(auth, "connect", "db")) == (
        "MongoDB at db: connect failed: authentication failed"
    )


def test_disk_full_is_not_writable() -> None:
    details = {"errmsg": "No space left on device", "code": 14031, "codeName": "OutOfDiskSpace"}
    err = translate(OperationFailure("x", 14031, details), "insert jobs", "h")
    assert isinstance(err, StoreNotWritable) and err.why == "disk full"


def test_passwords_and_long_texts() -> None:
    exc = ConfigurationError("bad option in mongodb://u:s3cret@h/db " + "x" * 1000)
    text = str(translate(exc, "connect", "h"))
    assert "s3cret" not in text and len(text) < 400 and text.endswith("...")


@pytest.mark.parametrize(
    ("url", "hosts"),
    [
        ("mongodb://u:p@h1:27017,h2/db?replicaSet=rs", "h1:27017,h2"),
        ("mongodb+srv://cluster.example.net/db", "cluster.example.net"),
        ("mongodb://[::1]:27017", "[::1]:27017"),
        ("mongodb:///db", "localhost"),
    ],
)
def test_hosts_of(url: str, hosts: str) -> None:
    assert hosts_of(url) == hosts
