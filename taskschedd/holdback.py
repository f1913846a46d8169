"""Why a job that is due does not run: its limit is full, its limit's rate allows no start
yet, or a running job holds its exclusive key (what ``taskschedctl show`` prints as
"held back:"). Decided from what the store reports (:meth:`Store.limits`,
:meth:`Store.key_holders`); the claim itself decides the same way, atomically.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from taskschedd.limits import LimitState
from taskschedd.model import RUNNABLE, JobRecord
from taskschedd.timeutil import format_time


def reasons(
    record: JobRecord,
    states: Iterable[LimitState],
    holders: Mapping[str, str],
    now: float,
) -> list[str]:
    """Each thing that holds ``record`` back at ``now`` (empty: nothing does). ``states``:
    the defined limits; ``holders``: exclusive key -> the running job holding it."""
    if record.corrupt is not None or record.status not in RUNNABLE or record.at > now:
        return []  # not waiting to run now: nothing holds it back
    out: list[str] = []
    name = record.options.limit
    state = next((s for s in states if s.spec.name == name), None) if name else None
    if state is not None:
        cap = state.spec.max_running
        if cap is not None and state.running >= cap:
            text = f"limit {name!r} is full: {state.running} of {cap} running"
            if cap == 0:
                text += " (max_running 0 holds every job of the limit)"
            out.append(text)
        opens = state.next_start(now)
        if opens is not None:
            out.append(f"limit {name!r} rate {state.spec.rate}: next start at {format_time(opens)}")
    key = record.options.exclusive_key
    holder = holders.get(key) if key is not None else None
    if holder is not None and holder != record.id:
        out.append(f"exclusive key {key!r} is held by job {holder}")
    return out


def explain(
    record: JobRecord, states: Iterable[LimitState], holders: Mapping[str, str], now: float
) -> str | None:
    """:func:`reasons` as one line ("; " between them), or None when nothing holds it."""
    found = reasons(record, states, holders, now)
    return "; ".join(found) if found else None


__all__ = ["explain", "reasons"]
