"""The node registry's contract, on every store: one entry per node name, owned by one
instance (a random token per master start). Registration takes a name only when it is
free, stale, or held by the instance the caller found dead, atomically; heartbeats and
removal touch only the caller's own entry."""

from __future__ import annotations

import multiprocessing
import multiprocessing.synchronize
import time
from dataclasses import replace
from pathlib import Path

from taskschedd.model import NodeRecord
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


def register(store: Store, record: NodeRecord, replace_: str | None = None) -> NodeRecord | None:
    return store.register_node(record, stale_before=time.time() - WINDOW, replace=replace_)


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
