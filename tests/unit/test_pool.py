"""The pm policy: how many workers for given settings, workers and due jobs."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given
from hypothesis import strategies as st

from taskschedd.pool import Demand, PoolSettings, WorkerView, backoff_delay, plan

NOW = 1000.0


def idle(pid: int, since: float = NOW, extra: bool = False) -> WorkerView:
    return WorkerView(pid=pid, busy=False, idle_since=since, extra=extra)


def busy(pid: int, extra: bool = False) -> WorkerView:
    return WorkerView(pid=pid, busy=True, idle_since=NOW - 100, extra=extra)


def settings(pm: str, lo: int = 1, hi: int = 4, idle_timeout: float = 10.0) -> PoolSettings:
    return PoolSettings(pm=pm, min_children=lo, max_children=hi, idle_timeout=idle_timeout)


@pytest.mark.parametrize(("pm", "expected"), [("static", 2), ("dynamic", 2), ("ondemand", 0)])
def test_start_up(pm: str, expected: int) -> None:
    assert plan(settings(pm, lo=2), [], Demand(), NOW).spawn == expected


def test_static_ignores_demand_and_never_retires_idle_workers() -> None:
    s = settings("static", lo=2, hi=4, idle_timeout=1)
    workers = [idle(1, NOW - 999), idle(2, NOW - 999)]
    p = plan(s, workers, Demand(due=50), NOW)
    assert (p.spawn, p.retire) == (0, ())
    assert plan(s, workers, Demand(), NOW).retire == ()


def test_static_replaces_a_missing_worker() -> None:
    assert plan(settings("static", lo=3), [busy(1), idle(2)], Demand(), NOW).spawn == 1


def test_dynamic_grows_with_waiting_jobs_up_to_max_children() -> None:
    s = settings("dynamic", lo=1, hi=4)
    assert plan(s, [idle(1)], Demand(due=1), NOW).spawn == 0  # the idle one takes it
    assert plan(s, [busy(1)], Demand(due=1), NOW).spawn == 1
    assert plan(s, [busy(1)], Demand(due=2), NOW).spawn == 2
    assert plan(s, [busy(1)], Demand(due=100), NOW).spawn == 3
    assert plan(s, [busy(1), busy(2), busy(3), busy(4)], Demand(due=100), NOW).spawn == 0


def test_dynamic_shrinks_idle_workers_to_min_children_after_idle_timeout() -> None:
    s = settings("dynamic", lo=1, hi=4, idle_timeout=10)
    workers = [idle(1, NOW - 20), idle(2, NOW - 15), idle(3, NOW - 5)]
    p = plan(s, workers, Demand(), NOW)
    assert p.retire == (1, 2)  # the longest idle first; one stays (min_children)
    assert p.recheck_at is None
    p = plan(s, [busy(9), idle(2, NOW - 15), idle(3, NOW - 5)], Demand(), NOW)
    assert p.retire == (2,)
    assert p.recheck_at == NOW + 5  # worker 3 becomes retirable then


def test_no_shrinking_while_jobs_wait() -> None:
    s = settings("dynamic", lo=1, hi=4, idle_timeout=1)
    assert plan(s, [idle(1, NOW - 99), idle(2, NOW - 99)], Demand(due=1), NOW).retire == ()


def test_ondemand_grows_from_zero_and_shrinks_to_zero() -> None:
    s = settings("ondemand", lo=0, hi=3, idle_timeout=2)
    assert plan(s, [], Demand(due=2), NOW).spawn == 2
    assert plan(s, [idle(1, NOW - 3), idle(2, NOW - 1)], Demand(), NOW).retire == (1,)
    assert plan(s, [idle(1, NOW - 3), idle(2, NOW - 3)], Demand(), NOW).retire == (1, 2)


def test_idle_timeout_zero_retires_at_once() -> None:
    s = settings("ondemand", lo=0, hi=3, idle_timeout=0)
    assert plan(s, [idle(1, NOW)], Demand(), NOW).retire == (1,)


def test_a_smaller_pool_after_reload_retires_idle_workers_beyond_the_ceiling() -> None:
    static = settings("static", lo=1, hi=4)
    p = plan(static, [busy(1), idle(2, NOW), idle(3, NOW - 1)], Demand(due=5), NOW)
    assert p.retire == (3, 2)
    dynamic = settings("dynamic", lo=1, hi=2, idle_timeout=99)
    p = plan(dynamic, [busy(1), busy(2), idle(3, NOW)], Demand(due=5), NOW)
    assert (p.spawn, p.retire) == (0, (3,))


def test_extra_workers_for_ignore_max_children_jobs() -> None:
    s = settings("static", lo=1, hi=2)
    full = [busy(1)]
    assert plan(s, full, Demand(due_extra=1), NOW).spawn_extra == 1
    # an extra worker that has not claimed yet is already on its way
    assert plan(s, [*full, idle(5, extra=True)], Demand(due_extra=1), NOW).spawn_extra == 0
    # every due job gets its own extra worker, beyond max_children...
    extras = [busy(5, extra=True), busy(6, extra=True)]
    p = plan(s, full + extras, Demand(due_extra=9), NOW)
    assert (p.spawn_extra, p.extra_capped) == (9, 0)
    # ...up to max_extra_children at once; the plan says how many wait
    capped = dataclasses.replace(s, max_extra_children=3)
    p = plan(capped, full + extras, Demand(due_extra=9), NOW)
    assert (p.spawn_extra, p.extra_capped) == (1, 8)
    p = plan(capped, [*full, *extras, busy(7, extra=True)], Demand(due_extra=9), NOW)
    assert (p.spawn_extra, p.extra_capped) == (0, 9)
    assert plan(capped, full, Demand(due_extra=2), NOW).extra_capped == 0
    # 0: no cap
    unbounded = dataclasses.replace(s, max_extra_children=0)
    assert plan(unbounded, full + extras, Demand(due_extra=500), NOW).spawn_extra == 500
    # extras never count against the pool
    assert plan(s, full + extras, Demand(), NOW).spawn == 0
    assert plan(settings("static", lo=2), extras, Demand(), NOW).spawn == 2


def test_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="pm must be one of"):
        PoolSettings(pm="sometimes")
    with pytest.raises(ValueError, match="min_children <= max_children"):
        PoolSettings(pm="dynamic", min_children=3, max_children=2)
    with pytest.raises(ValueError, match="max_extra_children >= 0"):
        PoolSettings(max_extra_children=-1)


def test_backoff_is_capped_exponential() -> None:
    delays = [backoff_delay(n, base=0.5, cap=4) for n in range(7)]
    assert delays == [0.0, 0.5, 1.0, 2.0, 4.0, 4.0, 4.0]


@given(
    pm=st.sampled_from(["static", "dynamic", "ondemand"]),
    lo=st.integers(0, 5),
    extra_hi=st.integers(0, 5),
    states=st.lists(st.tuples(st.booleans(), st.floats(0, 50), st.booleans()), max_size=12),
    due=st.integers(0, 20),
    due_extra=st.integers(0, 20),
    extra_cap=st.integers(0, 6),
)
def test_invariants(
    pm: str,
    lo: int,
    extra_hi: int,
    states: list[tuple[bool, float, bool]],
    due: int,
    due_extra: int,
    extra_cap: int,
) -> None:
    if pm == "static":
        lo = max(lo, 1)
    hi = max(lo + extra_hi, 1)
    s = PoolSettings(
        pm=pm, min_children=lo, max_children=hi, idle_timeout=10, max_extra_children=extra_cap
    )
    workers = [
        WorkerView(pid=i, busy=b, idle_since=NOW - age, extra=x)
        for i, (b, age, x) in enumerate(states)
    ]
    p = plan(s, workers, Demand(due=due, due_extra=due_extra), NOW)
    regular = [w for w in workers if not w.extra]
    extras = [w for w in workers if w.extra]
    by_pid = {w.pid: w for w in workers}
    assert all(not by_pid[pid].busy and not by_pid[pid].extra for pid in p.retire)
    assert len(set(p.retire)) == len(p.retire)
    after = len(regular) + p.spawn - len(p.retire)
    assert p.spawn == 0 or not p.retire  # never both at once
    assert after <= max(s.ceiling, sum(w.busy for w in regular))  # busy ones are not killed
    assert after >= min(s.floor, len(regular) + p.spawn)
    if p.spawn:
        assert len(regular) + p.spawn <= s.ceiling
    if extra_cap:
        assert len(extras) + p.spawn_extra <= max(extra_cap, len(extras))
    waiting_extras = sum(not w.busy for w in extras)
    assert p.spawn_extra + p.extra_capped == max(0, due_extra - waiting_extras)
