"""What every module of the MongoDB store shares: its logger and which errors are transient."""

from __future__ import annotations

from typing import Any

from pymongo.errors import ConnectionFailure, OperationFailure, PyMongoError, WTimeoutError

from taskschedd.log import get_logger

# Server error codes that mean "try again" (a failover, a shutdown, a network problem).
_TRANSIENT_CODES = frozenset(
    {6, 7, 89, 91, 189, 262, 9001, 10107, 11600, 11602, 13435, 13436, 50, 64}
)


def _log() -> Any:
    # Not at import: get_logger() configures logging on first use.
    return get_logger("taskschedd.store.mongo")


def _is_transient(exc: PyMongoError) -> bool:
    if isinstance(exc, ConnectionFailure | WTimeoutError):
        return True
    if exc.has_error_label("RetryableWriteError") or exc.has_error_label(
        "TransientTransactionError"
    ):
        return True
    return isinstance(exc, OperationFailure) and exc.code in _TRANSIENT_CODES
