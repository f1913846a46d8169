"""pymongo errors as one line a person can read: what failed, where, and why.

pymongo's own text for an unreachable server is the whole topology description (600+
characters for one host, repeating the same error twice) and an OperationFailure ends in
the server's full reply document. Every StoreError of the MongoDB store and every log
line that names a driver error goes through :func:`translate` or :func:`reason`, so a
CLI user and a daemon's log see the same short line, e.g. ``MongoDB at 127.0.0.1:1 is
unreachable (connect): connection refused (after 1.0 s)``.
"""

from __future__ import annotations

import re

from pymongo.errors import (
    ConnectionFailure,
    NetworkTimeout,
    OperationFailure,
    PyMongoError,
    ServerSelectionTimeoutError,
)

from taskschedd.errors import StoreError, StoreNotWritable, StoreUnavailable
from taskschedd.redact import redact_text
from taskschedd.store.mongo.common import _is_transient

#: MongoDB's OutOfDiskSpace: the server's volume is full.
_OUT_OF_DISK_SPACE = 14031
_AUTH_FAILED = 18
_MAX_REASON = 300

# Parts of pymongo's messages that repeat what the rest says or dump internal state.
_TOPOLOGY = re.compile(r",?\s*Topology Description: .*\Z", re.S)
_TIMEOUT = re.compile(r",\s*Timeout: (?P<seconds>[0-9.]+)s\s*\Z")
_CONFIGURED = re.compile(r"\s*\(configured timeouts: [^)]*\)")
_FULL_ERROR = re.compile(r",\s*full error: .*\Z", re.S)
# "host:port: reason" entries of a server selection error, joined by ",".
_SERVER = re.compile(r"(?:^|,\s*)(?P<host>\[[^\]]+\]:\d+|[\w.\-]+:\d+): ")
_ERRNO = re.compile(r"\[Errno -?\d+\]\s*")


def hosts_of(url: str) -> str:
    """The host list of a MongoDB URL ("h1:27017,h2"), without user, password or path:
    the address a message names when the error itself names none."""
    rest = url.split("://", 1)[-1]
    rest = re.split(r"[/?]", rest, maxsplit=1)[0]
    return rest.rpartition("@")[2] or "localhost"


def reason(exc: BaseException) -> str:
    """The short reason of a driver error: "connection refused", "timed out",
    "authentication failed", a server's errmsg (code name), never the topology dump."""
    if isinstance(exc, OperationFailure):
        details = exc.details or {}
        if exc.code == _AUTH_FAILED:
            return "authentication failed"
        message = str(details.get("errmsg") or _FULL_ERROR.sub("", str(exc)))
        name = details.get("codeName")
        return _clip(f"{message} ({name})" if name else message)
    text = _CONFIGURED.sub("", _TOPOLOGY.sub("", str(exc)))
    text = _TIMEOUT.sub("", text)
    servers = _split_servers(text)
    if servers:
        reasons = {why for _, why in servers}
        if len(reasons) == 1:
            return _clip(reasons.pop())
        return _clip("; ".join(f"{host}: {why}" for host, why in servers))
    if isinstance(exc, NetworkTimeout) and "timed out" in text:
        return "timed out"
    return _clip(_plain(text))


def translate(exc: PyMongoError, doing: str, hosts: str) -> StoreError:
    """The StoreError for a pymongo error met while ``doing`` something with the servers
    ``hosts``: StoreNotWritable for a full disk, StoreUnavailable for what may pass (an
    outage, a failover), StoreError for the rest (a refused command, bad credentials)."""
    where = _servers_named(exc) or hosts
    why = reason(exc)
    if isinstance(exc, OperationFailure) and (
        exc.code == _OUT_OF_DISK_SPACE or "No space left on device" in str(exc)
    ):  # transient like any outage: space may be freed; writers keep what they hold
        return StoreNotWritable(
            redact_text(f"MongoDB at {where} cannot write ({doing}): disk full: {why}"),
            "disk full",
        )
    if isinstance(exc, ServerSelectionTimeoutError):
        after = _TIMEOUT.search(_CONFIGURED.sub("", _TOPOLOGY.sub("", str(exc))))
        took = f" (after {float(after['seconds']):.1f} s)" if after else ""
        return StoreUnavailable(
            redact_text(f"MongoDB at {where} is unreachable ({doing}): {why}{took}")
        )
    if isinstance(exc, ConnectionFailure):
        return StoreUnavailable(
            redact_text(f"MongoDB at {where}: connection lost ({doing}): {why}")
        )
    if _is_transient(exc):
        return StoreUnavailable(redact_text(f"MongoDB at {where} is unavailable ({doing}): {why}"))
    return StoreError(redact_text(f"MongoDB at {where}: {doing} failed: {why}"))


def _split_servers(text: str) -> list[tuple[str, str]]:
    """The (host, reason) entries of a "h1:1: why, h2:2: why" message; [] if it has none."""
    found = list(_SERVER.finditer(text))
    if not found or found[0].start() != 0:
        return []
    out = []
    for i, m in enumerate(found):
        end = found[i + 1].start() if i + 1 < len(found) else len(text)
        out.append((m["host"], _plain(text[m.end() : end])))
    return out


def _servers_named(exc: PyMongoError) -> str:
    if isinstance(exc, OperationFailure):
        return ""
    text = _CONFIGURED.sub("", _TOPOLOGY.sub("", str(exc)))
    return ",".join(dict.fromkeys(host for host, _ in _split_servers(_TIMEOUT.sub("", text))))


def _plain(text: str) -> str:
    """Without the errno: "[Errno 111] Connection refused" -> "connection refused"."""
    text = _ERRNO.sub("", text.strip().rstrip(","))
    return text[:1].lower() + text[1:] if text[:2] != text[:2].upper() else text


def _clip(text: str) -> str:
    text = redact_text(" ".join(text.split()))
    return text if len(text) <= _MAX_REASON else text[: _MAX_REASON - 3] + "..."
