"""Jobs with ignore_max_children (force_spawn) each get an extra worker of their own, as in
the original (its example: a never-ending listener), up to ``max_extra_children``."""

from __future__ import annotations

import time
from collections.abc import Callable

from taskschedd import JobStatus, Scheduler
from tests.e2e.conftest import BOTH_STORES, JOBS, Daemon
from tests.helpers import wait_for

pytestmark = BOTH_STORES

#: A listener that never ends while the test runs.
LISTENER = (f"{JOBS}.Sleep", {"seconds": 120})


def test_every_listener_gets_its_own_extra_worker_beyond_max_children(
    daemon_factory: Callable[..., Daemon], scheduler: Scheduler
) -> None:
    d = daemon_factory(pm="static", min_children=1, max_children=1).start()
    (regular,) = d.wait_workers(1)
    listeners = [scheduler.add_job(*LISTENER, ignore_max_children=True) for _ in range(3)]
    wait_for(
        lambda: all(j.refresh().status == JobStatus.PROCESSING for j in listeners),
        10,
        message=lambda: f"three listeners running: {[j.status for j in listeners]}",
    )
    workers = {j.record.worker for j in listeners}
    assert len(workers) == 3 and f"{d.name}/{regular}" not in workers
    # The regular pool (max_children: 1) still serves normal jobs meanwhile.
    normal = scheduler.add_job(f"{JOBS}.WhoAmI").wait(10)
    assert normal.status == JobStatus.DONE and normal.result["pid"] == regular
    assert len(d.workers()) == 4
    assert not d.logged("max_extra_children reached: ignore_max_children jobs wait for an "
                        "extra worker to end")  # fmt: skip


def test_max_extra_children_caps_the_extra_workers_and_says_so(
    daemon_factory: Callable[..., Daemon], scheduler: Scheduler
) -> None:
    d = daemon_factory(pm="static", min_children=1, max_children=1, max_extra_children=2).start()
    d.wait_workers(1)
    listeners = [scheduler.add_job(*LISTENER, ignore_max_children=True) for _ in range(3)]
    wait_for(
        lambda: sum(j.refresh().status == JobStatus.PROCESSING for j in listeners) == 2,
        10,
        message=lambda: f"two listeners running: {[j.status for j in listeners]}",
    )
    event = "max_extra_children reached: ignore_max_children jobs wait for an extra worker to end"
    (logged,) = wait_for(lambda: d.logged(event), 5, message="the cap to be logged")
    assert logged["max_extra_children"] == 2 and logged["waiting"] == 1
    normal = scheduler.add_job(f"{JOBS}.WhoAmI").wait(10)
    assert normal.status == JobStatus.DONE
    # Time enough for more planning passes: the third still waits, and no 4th worker.
    moment = time.time() + 1.0
    wait_for(lambda: (n := d.node()) is not None and n.heartbeat > moment, 5)
    statuses = sorted(j.refresh().status.name for j in listeners)
    assert statuses == ["PROCESSING", "PROCESSING", "WAITING"]
    assert len(d.workers()) == 3
    # One listener ends (canceled): the waiting one gets its extra worker.
    running = [j for j in listeners if j.status == JobStatus.PROCESSING]
    running[0].cancel()
    waiting = next(j for j in listeners if j.status == JobStatus.WAITING)
    wait_for(lambda: waiting.refresh().status == JobStatus.PROCESSING, 10,
             message="the third listener to start")  # fmt: skip
