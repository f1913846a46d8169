"""Commands and Scheduler reads over more job ids than SQLite before 3.32 binds in one
statement (999; the SQLite store holds every version to that limit): a 1,200-wide
fan-in shown, canceled under its dependency, retried; events of 1,200 jobs."""

from __future__ import annotations

import json
import time

import pytest

from taskschedd.model import EventRecord, JobStatus
from taskschedd.scheduler import JobSpec, Scheduler
from tests.ctl.harness import ECHO, CtlHarness

WIDE = 1200


@pytest.fixture
def wide(ctl: CtlHarness) -> tuple[Scheduler, list[str]]:
    sched = ctl.sched()
    added = sched.add_jobs(
        [JobSpec(ECHO, {"n": n}, {"at": time.time() + 3600}) for n in range(WIDE)]
    )
    return sched, [p.id for p in added]


def test_show_and_retry_of_a_wide_fan_in(
    ctl: CtlHarness, wide: tuple[Scheduler, list[str]]
) -> None:
    sched, ids = wide
    fan_in = sched.add_job(ECHO, depends_on=ids).id
    res = ctl.proc("show", fan_in, "--json")
    assert res.code == 0, res
    shown = json.loads(res.out)["dependencies"]
    assert [d["id"] for d in shown] == ids and {d["status"] for d in shown} == {"POSTPONED"}
    sched.cancel_job(ids[-1])  # the fan-in ends CANCELED with it
    assert ctl.job(fan_in).status is JobStatus.CANCELED
    res = ctl.proc("retry", fan_in)
    assert res.code == 1, res
    assert f"dependency {ids[-1]} ended CANCELED; retry {ids[-1]} first" in res.err


def test_cancel_counts_a_wide_fan_out(ctl: CtlHarness) -> None:
    sched = ctl.sched()
    root = sched.add_job(ECHO, at=time.time() + 3600).id
    below = sched.add_jobs([JobSpec(ECHO, {"n": n}, {"depends_on": [root]}) for n in range(WIDE)])
    assert {p.status for p in below} == {JobStatus.BLOCKED}  # read back after the insert
    res = ctl.proc("cancel", root)
    assert res.code == 0, res
    assert res.out.strip() == f"{root} CANCELED, and {WIDE} dependent(s) canceled"


def test_events_of_many_jobs(ctl: CtlHarness, wide: tuple[Scheduler, list[str]]) -> None:
    sched, ids = wide
    events = sched.events(job_ids=ids, limit=5000)
    assert [e.job_id for e in events] == ids  # one "added" event each, in seq order
    assert [e.job_id for e in sched.events(job_ids=ids[::-1], limit=7)] == ids[:7]
    seen: list[EventRecord] = []

    def collect(event: EventRecord) -> bool:
        seen.append(event)
        return len(seen) == WIDE

    sched.listen(collect, filter={"id": ids}, timeout=10, after=0)
    assert len(seen) == WIDE
    res = ctl.proc("events", *(a for i in ids for a in ("--job", i)), "-n", "0", "--jsonl")
    assert res.code == 0, res
    assert [json.loads(line)["job_id"] for line in res.out.splitlines()] == ids
