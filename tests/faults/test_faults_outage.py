"""Store outages: the SQLite file write-locked by another process, the MongoDB server
stopped, each for 10 s. The daemon must survive, say so in its log, resume, lose nothing."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from taskschedd.scheduler import JobSpec
from tests.faults.harness import (
    RUN,
    FaultDaemon,
    StoreKind,
    audit,
    read_runs,
    run_data,
    sqlite_locked,
    wait_all_final,
)
from tests.helpers import wait_for

Factory = Callable[..., FaultDaemon]
OUTAGE = 10.0


@contextmanager
def outage(kind: StoreKind, seconds: float) -> Iterator[None]:
    """The store is unusable for ``seconds`` (the block runs at its start)."""
    if kind.kind == "sqlite":
        assert kind.sqlite_path is not None
        with sqlite_locked(kind.sqlite_path, seconds):
            yield
        return
    assert kind.server is not None
    kind.server.stop()
    ends = time.monotonic() + seconds
    try:
        yield
        # The outage itself: nothing to wait for but the clock.
        time.sleep(max(0.0, ends - time.monotonic()))
    finally:
        kind.server.start()


def test_a_ten_second_store_outage_is_survived_logged_and_loses_nothing(
    kind_own_server: StoreKind, node_factory: Factory, tmp_path: Path
) -> None:
    kind = kind_own_server
    runs = tmp_path / "runs.log"
    d = node_factory(kind, pm="static", min_children=2, max_children=2, lease="3s").start()
    s = kind.scheduler()
    ids = [j.id for j in s.add_jobs([JobSpec(RUN, run_data(runs, sleep=0.3), {"retry": 2})] * 30)]
    wait_for(lambda: len(read_runs(runs)) >= 4, 15, message="jobs running before the outage")
    outage_started = time.time()
    with outage(kind, OUTAGE):
        wait_for(
            lambda: [e for e in d.events() if "unavailable" in e.get("event", "")],
            OUTAGE - 1,
            message="the daemon to log that the store is unavailable",
        )
    assert d.running()
    final = wait_all_final(s.store, ids, timeout=60)
    result = audit(s.store, ids, runs)
    assert result.ok, result
    assert result.statuses == {"DONE": 30}, result
    assert all(not r.errors for r in final.values()), [r.errors for r in final.values()]
    back = [e for e in d.events() if "available again" in e.get("event", "")]
    assert back, "the daemon logs when the store is back"
    assert d.running()
    assert time.time() - outage_started >= OUTAGE
