"""The node registry's contract, on every store: one entry per node name, owned by one
instance (a random token per master start). Registration takes a name only when it is
free, stale, or held by the instance the caller found dead, atomically; heartbeats and
removal touch only the caller's own entry."""

from __future__ import annotations

import contextlib
import multiprocessing
import multiprocessing.synchronize
import sqlite3
import time
from dataclasses import replace
from pathlib import Path

from taskschedd import registry
from taskschedd.model import LIVE_AT_MOST, NodeRecord
from taskschedd.store.base import Store
from tests.store.conftest import StoreSpec

FORK = multiprocessing.get_context("fork")
WINDOW = 15.0


def node(
    instance: str, *, name: str = "web-1", beat: float | None = None, pid: int = 10
) -> NodeRecord:
    now = time.time() if beat is None else beat
    return NodeRecord(name=name, host=f"host-{instance}", pid=pid, started=now, heartbeat=now,
                      queues=("default",), version="0.5.0", instance=instance)  # fmt: skip


def register(
    store: Store, record: NodeRecord, replace_: str | None = None, window: float = WINDOW
) -> NodeRecord | None:
    return store.register_node(record, now=time.time(), window=window, replace=replace_)


def test_a_free_name_is_registered_with_its_instance(store: Store) -> None:
    a = node("aaa")
    assert register(store, a) is None
    assert store.nodes() == [a]
    assert register(store, replace(a, heartbeat=time.time())) is None  # its own: again


def test_a_live_entry_of_another_instance_refuses_and_is_left_unchanged(store: Store) -> None:
    a = node("aaa")
    assert register(store, a) is None
    holder = register(store, node("bbb"))
    assert holder == a  # who holds it: host, pid, heartbeat, instance
    assert store.nodes() == [a]


def test_a_stale_entry_is_taken_over(store: Store) -> None:
    dead = node("aaa", beat=time.time() - WINDOW - 5)
    assert register(store, dead) is None
    b = node("bbb")
    assert register(store, b) is None
    assert store.nodes() == [b]


def test_an_entry_is_live_until_its_own_live_until_whatever_the_observer_s_window(
    store: Store,
) -> None:
    """A node with a 20s heartbeat_interval is live for 60s after its heartbeat, also for
    an observer whose own interval is 1s (a window of 3s)."""
    now = time.time()
    slow = replace(node("aaa", beat=now - 20), live_until=now + 40, pid_ns="pid:[1]", boot=1.0)
    assert register(store, slow) is None
    assert store.nodes() == [slow]  # every field back as written
    assert register(store, node("bbb"), window=3.0) == slow  # refused: live by its own
    assert registry.live_nodes(store, time.time(), 3.0) == [slow]
    assert store.nodes() == [slow]


def test_an_entry_past_its_own_live_until_is_stale_whatever_the_observer_s_window(
    store: Store,
) -> None:
    now = time.time()
    fast = replace(node("aaa", beat=now - 4), live_until=now - 1)  # a 1s interval
    assert register(store, fast) is None
    assert registry.live_nodes(store, time.time(), 3600.0) == []
    b = node("bbb")
    assert register(store, b, window=3600.0) is None  # taken: its own time is up
    assert store.nodes() == [b]


def test_an_entry_without_live_until_is_judged_by_the_observer_s_window(store: Store) -> None:
    old = node("aaa", beat=time.time() - 20)  # taskschedd 0.4: live_until 0.0
    assert register(store, old) is None
    assert registry.live_nodes(store, time.time(), 60.0) == [old]
    assert register(store, node("bbb"), window=60.0) == old
    assert registry.live_nodes(store, time.time(), 3.0) == []
    assert register(store, node("bbb"), window=3.0) is None


def test_a_live_entry_is_taken_only_when_the_caller_names_it_dead(store: Store) -> None:
    a = node("aaa")
    assert register(store, a) is None
    b = node("bbb")
    assert register(store, b, replace_="zzz") == a  # another instance than the holder's
    assert register(store, b, replace_="aaa") is None
    assert store.nodes() == [b]


def test_heartbeats_touch_only_their_own_instance_s_entry(store: Store) -> None:
    old = node("aaa", beat=time.time() - WINDOW - 5)
    assert store.heartbeat(old) is True  # no entry: inserted
    new = node("bbb")
    assert register(store, new) is None  # old froze: its entry went stale and was taken
    assert store.heartbeat(replace(old, heartbeat=time.time())) is False  # taken over
    assert store.nodes() == [new]
    later = replace(new, heartbeat=time.time(), workers_busy=2)
    assert store.heartbeat(later) is True
    assert store.nodes() == [later]


def test_one_node_s_exit_never_removes_another_s_entry(store: Store) -> None:
    assert register(store, node("aaa", beat=time.time() - WINDOW - 5)) is None
    b = node("bbb")
    assert register(store, b) is None
    store.remove_node("web-1", "aaa")  # the displaced node exits
    assert store.nodes() == [b]
    store.remove_node("web-1", "bbb")
    assert store.nodes() == []
    assert store.heartbeat(b) is True  # removed under a live node: its next beat re-adds it
    assert store.nodes() == [b]
    store.remove_node("web-1")  # no instance: whichever entry has the name
    assert store.nodes() == []


def test_names_are_independent(store: Store) -> None:
    a, b = node("aaa", name="a"), node("bbb", name="b")
    assert register(store, a) is None and register(store, b) is None
    store.remove_node("a", "bbb")
    assert [n.name for n in store.nodes()] == ["a", "b"]


def _register_at_once(
    spec: StoreSpec, barrier: multiprocessing.synchronize.Barrier, instance: str, out: str
) -> None:
    store = spec.open()
    try:
        store.last_event_seq()
        barrier.wait(30)
        holder = register(store, node(instance))
        Path(out).write_text("won" if holder is None else f"lost to {holder.instance}")
    finally:
        store.close()


def test_of_nodes_registering_one_name_at_once_exactly_one_wins(
    store: Store, store_spec: StoreSpec, tmp_path: Path
) -> None:
    for round_ in range(3):
        store.remove_node("web-1")
        barrier = FORK.Barrier(6)
        outs = [tmp_path / f"r{round_}-{i}" for i in range(6)]
        procs = [
            FORK.Process(target=_register_at_once, args=(store_spec, barrier, f"i{i}", str(o)))
            for i, o in enumerate(outs)
        ]
        for p in procs:
            p.start()
        for p in procs:
            p.join(60)
        assert [p.exitcode for p in procs] == [0] * 6
        results = [o.read_text() for o in outs]
        assert results.count("won") == 1, results
        (entry,) = store.nodes()
        winner = f"i{results.index('won')}"
        assert entry.instance == winner
        assert all(r == "won" or r == f"lost to {winner}" for r in results), results


def test_a_heartbeat_of_taskschedd_0_4_over_an_entry_is_judged_by_the_window(
    store: Store, store_spec: StoreSpec
) -> None:
    """0.4 rewrites the entry without live_until (SQLite: the nodes row only, leaving the
    liveness row of the node before it; MongoDB: a document without the field)."""
    now = time.time()
    slow = replace(node("aaa", beat=now - 30), live_until=now + 30)
    assert register(store, slow) is None
    beat = now - 20
    if store_spec.kind == "sqlite":
        path = store_spec.url.removeprefix("sqlite:///")
        with contextlib.closing(sqlite3.connect(path)) as conn, conn:
            conn.execute("UPDATE nodes SET heartbeat = ? WHERE name = 'web-1'", (beat,))
    else:
        nodes = store._nodes  # type: ignore[attr-defined]
        nodes.update_one({"_id": "web-1"}, {"$set": {"heartbeat": beat},
                                            "$unset": {"live_until": ""}})  # fmt: skip
    (entry,) = store.nodes()
    assert abs(entry.heartbeat - beat) < 0.01 and entry.live_until == 0.0
    assert registry.live_nodes(store, time.time(), 3.0) == []
    assert register(store, node("bbb"), window=60.0) == entry
    assert register(store, node("bbb"), window=3.0) is None


def test_no_live_until_holds_a_name_past_three_of_the_longest_intervals(store: Store) -> None:
    """A live_until far ahead (a wrong clock, another client) lapses all the same."""
    now = time.time()
    odd = replace(node("aaa", beat=now - LIVE_AT_MOST - 1), live_until=now + 10**6)
    assert register(store, odd) is None
    assert registry.live_nodes(store, time.time(), 3.0) == []
    b = node("bbb")
    assert register(store, b) is None
    assert store.nodes() == [b]
