"""Transitions compiled to MongoDB for the Mongo store: a branch's guard becomes a filter
and its change an update; nothing here chooses a value."""

from __future__ import annotations

import json

from taskschedd.model import MAX_ERRORS, RUNNABLE, JobStatus
from taskschedd.store.mongo.documents import DONE, READY, RUNNING, Doc, _date, _state, _t
from taskschedd.transitions import KEEP, Attempt, Change, Ended, Guard

_RUNNABLE = frozenset(RUNNABLE)
_PROCESSING = frozenset({JobStatus.PROCESSING})


def guard_filter(guard: Guard, token: str | None, now: float) -> Doc:
    """The filter conditions (added to the job's address) under which ``guard`` holds.
    The ``state`` field mirrors the status for the indexes; a guard on runnable or
    processing jobs reads it alone, as every claim and settle always has."""
    where: Doc = {}
    if guard.statuses == _RUNNABLE:
        where["state"] = READY
    elif guard.statuses == _PROCESSING:
        where["state"] = RUNNING
    else:
        states = {_state(s) for s in guard.statuses}
        where["state"] = states.pop() if len(states) == 1 else {"$in": sorted(states)}
        where["status"] = {"$in": sorted(int(s) for s in guard.statuses)}
    if guard.held:
        if token is None:
            raise ValueError("a guard on the claim token needs the caller's token")
        where["claim_token"] = token
    if guard.cancel_requested is True:
        where["cancel_requested"] = True
    elif guard.cancel_requested is False:
        where["cancel_requested"] = {"$ne": True}
    if guard.due:
        where["at"] = {"$lte": _t(now)}
    return where


def change_update(change: Change, job_id: str, now: float) -> Doc:
    """The update that makes ``change`` to job ``job_id`` at time ``now`` (rounded)."""
    c = change
    now = _t(now)
    sets: Doc = {}
    update: Doc = {"$set": sets}
    if c.status is not None:
        sets["status"] = int(c.status)
        sets["state"] = _state(c.status)
    if c.at is not None:
        sets["at"] = _t(c.at)
    if c.attempt is Attempt.NEXT:
        update["$inc"] = {"attempt": 1}
    elif c.attempt is Attempt.GIVE_BACK:
        update["$inc"] = {"attempt": -1}
    elif c.attempt is Attempt.RESET:
        sets["attempt"] = 0
    if c.result_json is not None:
        sets["result"] = c.result_json
    elif c.clear_result:
        sets["result"] = None
    if c.error is not None:
        # JSON text: nx-27017 turns a pushed sub-document into a string anyway.
        error = json.dumps(c.error.to_dict())
        if c.reset_errors:
            sets["errors"] = [error]
        else:
            update["$push"] = {"errors": {"$each": [error], "$slice": -MAX_ERRORS}}
    if c.reason is not KEEP:
        sets["reason"] = c.reason
    if c.progress is not None:
        sets["progress"] = float(c.progress)
    if c.ended is Ended.NOW:
        sets["ended"] = now
        sets["ended_at"] = _date(now)  # for the retention TTL index only
    elif c.ended is Ended.CLEAR:
        sets["ended"] = None
        update["$unset"] = {"ended_at": ""}
    if c.claim is not None:
        o = c.claim
        sets.update(
            claim_token=o.token, lease_until=_t(o.lease_until), node=o.node, worker=o.worker,
            started=now,
        )  # fmt: skip
    elif c.release_claim:
        sets.update(claim_token=None, lease_until=None)
    if c.lease_until is not None:
        sets["lease_until"] = _t(c.lease_until)
    if c.cancel_requested is not None:
        sets["cancel_requested"] = c.cancel_requested
    if c.release_once:
        # `once` holds the once key while the job may hold it (a unique index): freed, it
        # names the job itself, unique too.
        sets.update(once_key=None, once=f"j:{job_id}")
    if c.clear_owner:
        sets.update(node=None, worker=None)
    if c.touch:
        sets["updated"] = now
    return update


__all__ = ["DONE", "READY", "RUNNING", "change_update", "guard_filter"]
