"""Transitions compiled to SQL for the SQLite store: how each guard and each field of a
:class:`~taskschedd.transitions.Change` is written; nothing here chooses a value."""

from __future__ import annotations

import functools
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


# The SET fragments a change may write, by number; a change's fragments, in order, name
# its compiled SET list (one per shape of change: a handful).
_FRAGMENTS = (
    "status = ?",  # 0
    "at = ?",
    _NEXT_ATTEMPT,
    "attempt = attempt - 1",
    "attempt = 0",
    "result = ?",  # 5
    "result = NULL",
    "errors = json_array(json(?))",
    _APPEND_ERROR,
    "reason = ?",
    "progress = ?",  # 10
    "ended = ?",
    "ended = NULL",
    "claim_token = ?, lease_until = ?, node = ?, worker = ?, started = ?",
    "claim_token = NULL, lease_until = NULL",
    "lease_until = ?",  # 15
    "cancel_requested = ?",
    "once_key = NULL",
    "node = NULL, worker = NULL",
    "updated = ?",
)
_SETS: dict[tuple[int, ...], str] = {}


def change_sql(change: Change, now: float) -> tuple[str, list[Any]]:
    """The SET list of an UPDATE that makes ``change`` at time ``now``, and its parameters
    (on every settle and claim: kept lean)."""
    c = change
    key: list[int] = []
    args: list[Any] = []
    if c.status is not None:
        key.append(0)
        args.append(int(c.status))
    if c.at is not None:
        key.append(1)
        args.append(c.at)
    attempt = c.attempt
    if attempt is not Attempt.KEEP:
        key.append(2 if attempt is Attempt.NEXT else 3 if attempt is Attempt.GIVE_BACK else 4)
    if c.result_json is not None:
        key.append(5)
        args.append(c.result_json)
    elif c.clear_result:
        key.append(6)
    if c.error is not None:
        error = json.dumps(c.error.to_dict())
        if c.reset_errors:
            key.append(7)
            args.append(error)
        else:
            key.append(8)
            args += (error, error, error)
    if c.reason is not KEEP:
        key.append(9)
        args.append(c.reason)
    if c.progress is not None:
        key.append(10)
        args.append(c.progress)
    if c.ended is not Ended.KEEP:
        if c.ended is Ended.NOW:
            key.append(11)
            args.append(now)
        else:
            key.append(12)
    if c.claim is not None:
        o = c.claim
        key.append(13)
        args += (o.token, o.lease_until, o.node, o.worker, now)
    elif c.release_claim:
        key.append(14)
    if c.lease_until is not None:
        key.append(15)
        args.append(c.lease_until)
    if c.cancel_requested is not None:
        key.append(16)
        args.append(int(c.cancel_requested))
    if c.release_once:
        key.append(17)
    if c.clear_owner:
        key.append(18)
    if c.touch:
        key.append(19)
        args.append(now)
    shape = tuple(key)
    sets = _SETS.get(shape)
    if sets is None:
        sets = _SETS[shape] = ", ".join(_FRAGMENTS[i] for i in shape)
    return sets, args


def _among(column: str, values: list[int]) -> str:
    return (
        f"{column} = {values[0]}"
        if len(values) == 1
        else f"{column} IN ({','.join(map(str, values))})"
    )


@functools.lru_cache(maxsize=64)
def _guard_where(guard: Guard) -> str:
    where = [_among("status", sorted(int(s) for s in guard.statuses))]
    if guard.held:
        where.append("claim_token = ?")
    if guard.cancel_requested is True:
        where.append("cancel_requested = 1")
    elif guard.cancel_requested is False:
        where.append("cancel_requested IS NOT 1")
    if guard.due:
        where.append("at <= ?")
    return " AND ".join(where)


def guard_sql(guard: Guard, token: str | None, now: float) -> tuple[str, list[Any]]:
    """The WHERE conditions (ANDed to the record's address) under which ``guard`` holds."""
    args: list[Any] = []
    if guard.held:
        if token is None:
            raise ValueError("a guard on the claim token needs the caller's token")
        args.append(token)
    if guard.due:
        args.append(now)
    return _guard_where(guard), args
