"""Transitions compiled to SQL for the SQLite store: how each guard and each field of a
:class:`~taskschedd.transitions.Change` is written; nothing here chooses a value."""

from __future__ import annotations

import json
from typing import Any

from taskschedd.model import MAX_ERRORS
from taskschedd.transitions import KEEP, Attempt, Change, Ended, Guard

# An attempt that is not a count (written by another client) becomes -1, which the
# decoding boundary reports: SQLite's arithmetic would make 1 of a text.
_NEXT_ATTEMPT = (
    "attempt = CASE WHEN typeof(attempt) = 'integer' AND attempt BETWEEN 0 AND 2147483648 "
    "THEN attempt + 1 ELSE -1 END"
)
# Errors are a JSON array of which the last MAX_ERRORS are kept (however long a list
# another client wrote: the same cut as MongoDB's $slice); a value that is not an array
# is replaced.
_APPEND_ERROR = (
    "errors = CASE WHEN NOT json_valid(errors) OR json_type(errors) != 'array' "
    "THEN json_array(json(?)) "
    f"WHEN json_array_length(errors) >= {MAX_ERRORS} "
    "THEN json_insert((SELECT json_group_array(CASE WHEN e.type IN ('object', 'array') "
    "THEN json(e.value) ELSE e.value END) FROM json_each(errors) AS e "
    f"WHERE e.key >= json_array_length(errors) - {MAX_ERRORS - 1}), '$[#]', json(?)) "
    "ELSE json_insert(errors, '$[#]', json(?)) END"
)


def change_sql(change: Change, now: float) -> tuple[str, list[Any]]:
    """The SET list of an UPDATE that makes ``change`` at time ``now``, and its parameters."""
    sets: list[str] = []
    args: list[Any] = []

    def put(sql: str, *values: Any) -> None:
        sets.append(sql)
        args.extend(values)

    c = change
    if c.status is not None:
        put("status = ?", int(c.status))
    if c.at is not None:
        put("at = ?", c.at)
    if c.attempt is Attempt.NEXT:
        put(_NEXT_ATTEMPT)
    elif c.attempt is Attempt.GIVE_BACK:
        put("attempt = attempt - 1")
    elif c.attempt is Attempt.RESET:
        put("attempt = 0")
    if c.result_json is not None:
        put("result = ?", c.result_json)
    elif c.clear_result:
        put("result = NULL")
    if c.error is not None:
        error = json.dumps(c.error.to_dict())
        if c.reset_errors:
            put("errors = json_array(json(?))", error)
        else:
            put(_APPEND_ERROR, error, error, error)
    if c.reason is not KEEP:
        put("reason = ?", c.reason)
    if c.progress is not None:
        put("progress = ?", c.progress)
    if c.ended is Ended.NOW:
        put("ended = ?", now)
    elif c.ended is Ended.CLEAR:
        put("ended = NULL")
    if c.claim is not None:
        o = c.claim
        put(
            "claim_token = ?, lease_until = ?, node = ?, worker = ?, started = ?",
            o.token, o.lease_until, o.node, o.worker, now,
        )  # fmt: skip
    elif c.release_claim:
        put("claim_token = NULL, lease_until = NULL")
    if c.lease_until is not None:
        put("lease_until = ?", c.lease_until)
    if c.cancel_requested is not None:
        put("cancel_requested = ?", int(c.cancel_requested))
    if c.release_once:
        put("once_key = NULL")
    if c.clear_owner:
        put("node = NULL, worker = NULL")
    if c.touch:
        put("updated = ?", now)
    return ", ".join(sets), args


def _among(column: str, values: list[int]) -> str:
    return (
        f"{column} = {values[0]}"
        if len(values) == 1
        else f"{column} IN ({','.join(map(str, values))})"
    )


def guard_sql(guard: Guard, token: str | None, now: float) -> tuple[str, list[Any]]:
    """The WHERE conditions (ANDed to the record's address) under which ``guard`` holds."""
    where = [_among("status", sorted(int(s) for s in guard.statuses))]
    args: list[Any] = []
    if guard.held:
        if token is None:
            raise ValueError("a guard on the claim token needs the caller's token")
        where.append("claim_token = ?")
        args.append(token)
    if guard.cancel_requested is True:
        where.append("cancel_requested = 1")
    elif guard.cancel_requested is False:
        where.append("cancel_requested IS NOT 1")
    if guard.due:
        where.append("at <= ?")
        args.append(now)
    return " AND ".join(where), args
