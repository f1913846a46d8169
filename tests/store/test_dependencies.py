"""Job dependencies (depends_on) on every store that supports them: chains, fan-in,
failure and cancel propagation, decisions at add time, results flow, retention.

Jobs run through a real in-process Worker; every outcome is read back from the store.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from taskschedd import rules
from taskschedd.errors import OptionError
from taskschedd.model import ClaimRequest, JobQuery, JobRecord, JobStatus
from taskschedd.options import MAX_DEPENDENCIES
from taskschedd.scheduler import JobSpec, Scheduler
from taskschedd.store.base import Store
from taskschedd.worker import Worker
from tests.api_jobs import MODULE
from tests.mongo_server import ENV_TEST_URI
from tests.store.conftest import StoreSpec
from tests.store.test_contract import must_claim

ADD = f"{MODULE}.Add"
FAIL = f"{MODULE}.Fail"
FAIL_TIMES = f"{MODULE}.FailTimes"
B = JobStatus.BLOCKED


@pytest.fixture
def sched(store: Store) -> Iterator[Scheduler]:
    if not store.supports_dependencies:
        pytest.skip(f"{type(store).__name__}: job dependencies not built yet (issue 14)")
    yield Scheduler(store)


def drain(store: Store, max_jobs: int | None = None) -> int:
    """Run every runnable job (and those it releases) to the end; how many ran."""
    worker = Worker(store, allowed_modules=[MODULE], poll_interval=0.02)
    return worker.run(idle_exit=0, max_jobs=max_jobs)


def get(store: Store, job_id: str) -> JobRecord:
    return store.get(job_id)


def events(store: Store, job_id: str) -> list[tuple[JobStatus, str | None]]:
    return [(e.status, e.reason) for e in store.events(job_ids=[job_id])]


def test_a_chain_of_three_runs_in_order_and_passes_results(sched: Scheduler) -> None:
    store = sched.store
    a = sched.add_job(ADD, {"n": 1})
    b = sched.add_job(ADD, {"n": 2}, depends_on=[a.id])
    c = sched.add_job(ADD, {"n": 3}, depends_on=b.id)  # one id as a list of one
    assert (a.status, b.status, c.status) == (JobStatus.WAITING, B, B)
    assert store.count_due(["default"], now=time.time(), force_spawn=False) == 1
    assert drain(store) == 3
    ra, rb, rc = (get(store, p.id) for p in (a, b, c))
    assert [r.status for r in (ra, rb, rc)] == [JobStatus.DONE] * 3
    assert rc.result["total"] == 6
    assert rc.result["seen"] == {b.id: ["DONE", rb.result]}
    assert rb.result["seen"] == {a.id: ["DONE", {"total": 1, "seen": {}}]}
    assert ra.ended is not None and rb.started is not None and ra.ended <= rb.started
    assert rb.ended is not None and rc.started is not None and rb.ended <= rc.started
    # Released exactly once, with the write that ended its dependency.
    assert events(store, c.id) == [
        (B, "added"), (JobStatus.WAITING, "dependencies done"),
        (JobStatus.PROCESSING, None), (JobStatus.DONE, "done"),
    ]  # fmt: skip


def test_a_diamond_runs_its_fan_in_once_after_both_branches(sched: Scheduler) -> None:
    store = sched.store
    a = sched.add_job(ADD, {"n": 1})
    b = sched.add_job(ADD, {"n": 10}, depends_on=[a.id])
    c = sched.add_job(ADD, {"n": 100}, depends_on=[a.id])
    d = sched.add_job(ADD, {"n": 1000}, depends_on=[b.id, c.id])
    assert drain(store) == 4
    rb, rc, rd = (get(store, p.id) for p in (b, c, d))
    assert rd.status is JobStatus.DONE and rd.attempt == 1
    assert rd.result["total"] == 1000 + 11 + 101
    assert set(rd.result["seen"]) == {b.id, c.id}
    assert rd.started is not None and rb.ended is not None and rc.ended is not None
    assert rd.started >= max(rb.ended, rc.ended)
    assert [s for s, _ in events(store, d.id)].count(JobStatus.WAITING) == 1


def test_a_failed_dependency_cancels_its_dependents_not_its_siblings(sched: Scheduler) -> None:
    store = sched.store
    a = sched.add_job(ADD, {"n": 1})
    b = sched.add_job(FAIL, {"message": "no"}, depends_on=[a.id])
    c = sched.add_job(ADD, {"n": 2}, depends_on=[a.id])
    d = sched.add_job(ADD, depends_on=[b.id, c.id])
    e = sched.add_job(ADD, depends_on=[d.id])  # and so on down the graph
    drain(store)
    rb, rc, rd, re_ = (get(store, p.id) for p in (b, c, d, e))
    assert (rb.status, rc.status) == (JobStatus.FAILED, JobStatus.DONE)
    assert (rd.status, rd.reason) == (JobStatus.CANCELED, f"dependency {b.id} ended FAILED")
    assert (rd.attempt, rd.started) == (0, None)  # never ran
    assert (re_.status, re_.reason) == (JobStatus.CANCELED, f"dependency {d.id} ended CANCELED")
    assert rd.ended is not None and re_.ended is not None


def test_on_dependency_failure_run_runs_and_sees_the_failure(sched: Scheduler) -> None:
    store = sched.store
    bad = sched.add_job(FAIL)
    good = sched.add_job(ADD, {"n": 5})
    after = sched.add_job(ADD, {"n": 1}, depends_on=[bad.id, good.id], on_dependency_failure="run")
    drain(store)
    done = get(store, after.id)
    assert (done.status, done.reason) == (JobStatus.DONE, "done")
    assert done.result["total"] == 6
    assert done.result["seen"][bad.id][0] == "FAILED"
    assert (JobStatus.WAITING, "dependencies final") in events(store, after.id)


def test_cancel_cascades_through_the_graph(sched: Scheduler) -> None:
    store = sched.store
    later = time.time() + 3600
    a = sched.add_job(ADD, at=later)
    b = sched.add_job(ADD, depends_on=[a.id])
    c = sched.add_job(ADD, depends_on=[b.id])
    other = sched.add_job(ADD, at=later)
    d = sched.add_job(ADD, depends_on=[c.id, other.id])
    assert sched.cancel_job(a.id).status is JobStatus.CANCELED
    reasons = {p.id: (get(store, p.id).status, get(store, p.id).reason) for p in (b, c, d)}
    assert reasons == {
        b.id: (JobStatus.CANCELED, f"dependency {a.id} ended CANCELED"),
        c.id: (JobStatus.CANCELED, f"dependency {b.id} ended CANCELED"),
        d.id: (JobStatus.CANCELED, f"dependency {c.id} ended CANCELED"),
    }
    assert get(store, other.id).status is JobStatus.POSTPONED  # not a dependent


def test_canceling_a_blocked_job_ends_it_and_its_dependents(sched: Scheduler) -> None:
    store = sched.store
    a = sched.add_job(ADD, at=time.time() + 3600)
    b = sched.add_job(ADD, depends_on=[a.id])
    c = sched.add_job(ADD, depends_on=[b.id])
    assert sched.cancel_job(b.id).status is JobStatus.CANCELED
    assert (get(store, b.id).reason, get(store, c.id).status) == ("canceled", JobStatus.CANCELED)
    assert get(store, a.id).status is JobStatus.POSTPONED


def test_a_dependency_done_at_add_time_releases_at_once(sched: Scheduler) -> None:
    store = sched.store
    a = sched.add_job(ADD, {"n": 4})
    drain(store)
    b = sched.add_job(ADD, {"n": 1}, depends_on=[a.id])
    assert (b.status, b.reason) == (JobStatus.WAITING, "dependencies done")
    postponed = sched.add_job(ADD, depends_on=[a.id], at=time.time() + 3600)
    assert postponed.status is JobStatus.POSTPONED  # released to its own time
    assert drain(store) == 1
    assert get(store, b.id).result["total"] == 5


def test_a_dependency_failed_at_add_time_cancels_at_once(sched: Scheduler) -> None:
    store = sched.store
    a = sched.add_job(FAIL)
    drain(store)
    b = sched.add_job(ADD, depends_on=[a.id])
    assert (b.status, b.reason) == (JobStatus.CANCELED, f"dependency {a.id} ended FAILED")
    assert drain(store) == 0
    assert events(store, b.id) == [(B, "added"), (JobStatus.CANCELED, b.reason)]


def test_retries_of_a_dependency_delay_the_dependent(sched: Scheduler) -> None:
    store = sched.store
    a = sched.add_job(FAIL_TIMES, {"fail": 1}, retry=1, retry_interval=0)
    b = sched.add_job(ADD, depends_on=[a.id])
    assert drain(store, max_jobs=1) == 1
    assert (get(store, a.id).status, get(store, a.id).reason) == (JobStatus.WAITING, "retrying")
    assert get(store, b.id).status is B
    assert drain(store) == 2
    assert get(store, b.id).result["seen"] == {a.id: ["DONE", {"attempt": 2}]}


def test_a_reaped_or_expired_dependency_decides_its_dependents(sched: Scheduler) -> None:
    """Every write that ends a job releases its dependents, not only a worker's settle."""
    store = sched.store
    a = sched.add_job(ADD)
    b = sched.add_job(ADD, depends_on=[a.id])
    now = time.time()
    held = must_claim(store, now=now)
    store.apply(a.id, rules.on_abandoned(held, now), now=now, token=held.claim_token)
    assert get(store, a.id).status is JobStatus.FAILED
    assert (get(store, b.id).status, get(store, b.id).reason) == (
        JobStatus.CANCELED, f"dependency {a.id} ended FAILED",
    )  # fmt: skip


def test_blocked_jobs_are_listed_counted_and_never_claimed(sched: Scheduler) -> None:
    store = sched.store
    a = sched.add_job(ADD, at=time.time() + 3600)
    b = sched.add_job(ADD, depends_on=[a.id])
    now = time.time()
    assert store.claim(["default"], node="n", worker="w", token="t", lease=30, now=now) is None
    assert store.claim(["default"], node="n", worker="w", token="t", lease=30, now=now,
                       job_id=b.id) is None  # fmt: skip
    assert [p.id for p in sched.get_jobs()] == [a.id, b.id]  # listed by default
    assert [p.id for p in sched.get_jobs(status="blocked")] == [b.id]
    stats = store.stats(now=now)
    assert stats["by_status"]["BLOCKED"] == 1
    assert [r.id for r in store.dependents(a.id)] == [b.id]


def test_a_workflow_added_in_one_batch_may_name_its_own_jobs(sched: Scheduler) -> None:
    store = sched.store
    added = sched.add_jobs(
        [
            JobSpec(ADD, {"n": 1}, {"id": "w1"}),
            JobSpec(ADD, {"n": 2}, {"id": "w2", "depends_on": ["w1"]}),
            JobSpec(ADD, {"n": 3}, {"id": "w3", "depends_on": ["w2"]}),
        ]
    )
    assert [p.status for p in added] == [JobStatus.WAITING, B, B]
    drain(store)
    assert get(store, "w3").result["total"] == 6


def _snapshot(store: Store) -> tuple[list[str], int]:
    return [j.id for j in store.find(JobQuery(limit=None))], store.last_event_seq()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"depends_on": ["nope"]}, "no job with id 'nope'"),
        ({"depends_on": ["me"], "id": "me"}, "cannot depend on itself"),
        ({"depends_on": ["A", "A"]}, "'A' is given more than once"),
        ({"depends_on": ["A"], "interval": 60}, "cannot be given with 'interval' or 'cron'"),
        ({"depends_on": ["A"], "cron": "@hourly"}, "cannot be given with 'interval' or 'cron'"),
        ({"depends_on": [f"j{i}" for i in range(MAX_DEPENDENCIES + 1)]}, "more than 10000"),
        ({"depends_on": [3]}, "expected a list of at most"),
        ({"depends_on": ["A"], "on_dependency_failure": "ignore"}, "expected cancel or run"),
    ],
)
def test_bad_dependencies_are_refused_and_nothing_is_written(
    sched: Scheduler, options: dict[str, Any], message: str
) -> None:
    store = sched.store
    sched.add_job(ADD, id="A")
    before = _snapshot(store)
    with pytest.raises(OptionError, match=message):
        sched.add_job(ADD, **options)
    with pytest.raises(OptionError, match=message):  # a batch: none of it
        sched.add_jobs([JobSpec(ADD, {}, {"id": "first"}), JobSpec(ADD, {}, options)])
    assert _snapshot(store) == before


def test_add_job_once_refuses_dependencies(sched: Scheduler) -> None:
    a = sched.add_job(ADD)
    with pytest.raises(OptionError, match="add_job_once"):
        sched.add_job_once(ADD, depends_on=[a.id])


def test_retention_keeps_a_dependency_until_its_dependents_end(sched: Scheduler) -> None:
    store = sched.store
    a = sched.add_job(ADD, {"n": 7})
    b = sched.add_job(ADD, depends_on=[a.id], at=time.time() + 0.5)
    drain(store)
    assert get(store, b.id).status is JobStatus.POSTPONED  # released, not yet run
    assert store.purge(statuses=[JobStatus.DONE], ended_before=time.time() + 60) == 0
    time.sleep(0.5)
    drain(store)
    assert get(store, b.id).result["seen"] == {a.id: ["DONE", {"total": 7, "seen": {}}]}
    assert store.purge(statuses=[JobStatus.DONE], ended_before=time.time() + 60) == 2
    assert store.dependents(a.id) == []


def _drain_in_child(spec: StoreSpec, start: float) -> None:
    while time.time() < start:  # settle together, not one after the other
        time.sleep(0.001)
    store = spec.open()
    try:
        Worker(store, allowed_modules=[MODULE], poll_interval=0.02, claim_ahead=4).run(
            idle_exit=0.3
        )
    finally:
        store.close()


def test_three_processes_settling_a_fan_in_s_dependencies_release_it_once(
    sched: Scheduler, store_spec: StoreSpec
) -> None:
    store = sched.store
    deps = sched.add_jobs([JobSpec(ADD, {"n": 1}) for _ in range(100)])
    fan_in = sched.add_job(ADD, depends_on=[p.id for p in deps])
    ctx = multiprocessing.get_context("fork")
    start = time.time() + 0.3
    procs = [ctx.Process(target=_drain_in_child, args=(store_spec, start)) for _ in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=60)
    assert [p.exitcode for p in procs] == [0, 0, 0]
    done = get(store, fan_in.id)
    assert (done.status, done.attempt, done.result["total"]) == (JobStatus.DONE, 1, 100)
    # Released once. (On MongoDB an event is written after its change, so another
    # process may claim the released job and write its event first: order aside.)
    seen = events(store, fan_in.id)
    assert (seen[0], seen[-1]) == ((B, "added"), (JobStatus.DONE, "done"))
    assert sorted(seen[1:-1], key=str) == sorted(
        [(JobStatus.WAITING, "dependencies done"), (JobStatus.PROCESSING, None)], key=str
    )
    nodes = {e.worker for e in store.events(job_ids=[p.id for p in deps]) if e.worker}
    assert len(nodes) >= 2  # the dependencies were settled by several processes


def test_a_retried_dependent_waits_on_its_dependencies_again(sched: Scheduler) -> None:
    """retry_job of a job canceled by its dependency must not run it past that
    dependency: it is BLOCKED again and decided against its dependencies as they are."""
    store = sched.store
    a = sched.add_job(ADD, {"n": 2}, at=time.time() + 3600)
    b = sched.add_job(ADD, {"n": 1}, depends_on=[a.id])
    sched.cancel_job(a.id)
    assert get(store, b.id).status is JobStatus.CANCELED
    again = sched.retry_job(b.id)  # a still CANCELED: canceled again at once, never run
    assert (again.status, again.reason) == (JobStatus.CANCELED, f"dependency {a.id} ended CANCELED")
    assert drain(store) == 0
    sched.retry_job(a.id)  # WAITING again, due now
    assert sched.retry_job(b.id).status is B  # waits for it
    assert drain(store) == 2
    done = get(store, b.id)
    assert (done.status, done.attempt, done.result["total"]) == (JobStatus.DONE, 1, 3)


def test_chain_runs_steps_in_order_passing_results(sched: Scheduler) -> None:
    store = sched.store
    steps = sched.chain([JobSpec(ADD, {"n": 1}), (ADD, {"n": 2}), {"cls": ADD, "data": {"n": 3}}])
    assert [p.status for p in steps] == [JobStatus.WAITING, B, B]
    assert get(store, steps[2].id).options.depends_on == (steps[1].id,)
    assert drain(store) == 3
    assert get(store, steps[2].id).result["total"] == 6


def test_group_then_fans_in_after_all_members(sched: Scheduler) -> None:
    store = sched.store
    *members, fan_in = sched.group(
        [JobSpec(ADD, {"n": n}) for n in (1, 2, 3)],
        then=JobSpec(ADD, {"n": 100}, {"on_dependency_failure": "run"}),
    )
    assert fan_in.status is B
    assert get(store, fan_in.id).options.depends_on == tuple(m.id for m in members)
    assert drain(store) == 4
    assert get(store, fan_in.id).result["total"] == 106


def test_a_workflow_with_a_bad_step_writes_nothing(sched: Scheduler) -> None:
    store = sched.store
    before = _snapshot(store)
    with pytest.raises(OptionError, match="no job with id 'nope'"):
        sched.chain([JobSpec(ADD), JobSpec(ADD, {}, {"depends_on": ["nope"]})])
    with pytest.raises(OptionError, match="cannot be given with 'interval'"):
        sched.group([JobSpec(ADD)], then=JobSpec(ADD, {}, {"interval": 60}))
    assert _snapshot(store) == before


def test_a_fan_in_waits_for_a_retried_failure_before_it_runs(sched: Scheduler) -> None:
    """A dependency retried after it failed is not final again: the fan-in (run on
    failure) waits for its new end, however the others settle around it."""
    store = sched.store
    later = time.time() + 3600
    x = sched.add_job(ADD, {"n": 1}, at=later)
    y = sched.add_job(ADD, {"n": 2}, at=later)
    z = sched.add_job(ADD, {"n": 4})
    fan_in = sched.add_job(ADD, depends_on=[x.id, y.id, z.id], on_dependency_failure="run")
    sched.cancel_job(x.id)
    sched.retry_job(x.id)  # due now: WAITING
    sched.cancel_job(y.id)
    assert get(store, fan_in.id).status is B  # x is not final any more
    assert drain(store, max_jobs=1) == 1  # x
    assert get(store, fan_in.id).status is B  # z still to run
    assert drain(store) == 2  # z, then the fan-in
    done = get(store, fan_in.id)
    assert (done.status, done.result["total"]) == (JobStatus.DONE, 5)
    assert done.result["seen"][y.id][0] == "CANCELED"


def test_a_wide_fan_in_settled_in_batches_releases_once(
    sched: Scheduler, store_spec: StoreSpec, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Dependencies settled in batches (as workers claiming ahead do): the fan-in is
    read whole twice in all (when added, and when its last dependency ends), not once
    per dependency (which made a fan-in of n cost n^2 reads). 3000 wide; 300 on
    nx-27017, whose scan of a ``deps`` query (an index on MongoDB) costs n per settle."""
    store: Any = sched.store
    width = 300 if store_spec.kind == "mongo" and not os.environ.get(ENV_TEST_URI) else 3000
    deps = sched.add_jobs([JobSpec(ADD, {"n": 1}) for _ in range(width)])
    reads: list[str] = []
    decide = store._decide_blocked

    def counted(*args: Any, **kwargs: Any) -> Any:
        reads.extend(a for a in args if isinstance(a, str))
        return decide(*args, **kwargs)

    monkeypatch.setattr(store, "_decide_blocked", counted)
    fan_in = sched.add_job(ADD, depends_on=[p.id for p in deps])
    now = time.time()
    per = width // 6
    for batch in range(6):  # FIFO: the dependencies, added first, a sixth at a time
        _, jobs = store.settle_batch([], now=now, claim=ClaimRequest(
            queues=["default"], node="n", worker="w", token=uuid.uuid4().hex, lease=60,
            limit=per,
        ))  # fmt: skip
        assert len(jobs) == per and fan_in.id not in {j.id for j in jobs}
        settles = [(j.id, j.claim_token or "", rules.on_success(j, '{"total": 1}', now))
                   for j in jobs]  # fmt: skip
        store.settle_batch(settles, now=now)
        assert get(store, fan_in.id).status is (JobStatus.WAITING if batch == 5 else B)
    assert reads.count(fan_in.id) <= 2
    assert drain(store) == 1
    assert get(store, fan_in.id).result["total"] == width
    assert [s for s, _ in events(store, fan_in.id)].count(JobStatus.WAITING) == 1


def test_a_crash_between_settle_and_release_is_swept(
    sched: Scheduler, store_spec: StoreSpec, monkeypatch: pytest.MonkeyPatch
) -> None:
    """MongoDB has no transaction over a settle and its dependents' release: a node
    dying between them leaves the dependents BLOCKED, and the dependency sweep decides
    them (once: the decision is guarded on BLOCKED)."""
    if store_spec.kind != "mongo":
        pytest.skip("SQLite releases in the settle's own transaction: nothing to sweep")
    store: Any = sched.store
    a = sched.add_job(ADD, {"n": 1})
    b = sched.add_job(ADD, depends_on=[a.id])
    c = sched.add_job(FAIL, at=time.time() + 3600)
    d = sched.add_job(ADD, depends_on=[c.id])
    with monkeypatch.context() as m:
        m.setattr(store, "_release_logged", lambda *args: None)  # the node dies here
        drain(store, max_jobs=1)
        sched.cancel_job(c.id)
    assert (get(store, a.id).status, get(store, b.id).status) == (JobStatus.DONE, B)
    assert get(store, d.id).status is B
    other = store_spec.open()  # another node's sweep
    try:
        assert other.sweep_dependencies(time.time()) == 2
        assert other.sweep_dependencies(time.time()) == 0
    finally:
        other.close()
    assert events(store, b.id) == [(B, "added"), (JobStatus.WAITING, "dependencies done")]
    assert get(store, d.id).reason == f"dependency {c.id} ended CANCELED"


def test_mongodb_retention_never_expires_a_result_a_dependent_waits_for(
    sched: Scheduler, store_spec: StoreSpec
) -> None:
    """MongoDB expires final jobs by a TTL index on ended_at, which no purge guard
    reaches: a dependency has none while a job depending on it has not ended."""
    if store_spec.kind != "mongo":
        pytest.skip("SQLite has no TTL: its purge keeps them (the retention test above)")
    store: Any = sched.store
    a = sched.add_job(ADD, {"n": 1})
    drain(store)
    a_done = sched.add_job(ADD, {"n": 2})  # final before its dependent is added
    drain(store)
    other = sched.add_job(ADD, at=time.time() + 3600)
    b = sched.add_job(ADD, depends_on=[a_done.id, other.id])
    late = sched.add_job(ADD, depends_on=[a.id, other.id], at=time.time() + 3600)
    running = sched.add_job(ADD, {"n": 3})  # settled while its dependent waits
    sched.add_job(ADD, depends_on=[running.id, other.id])
    drain(store)

    def ended_at(job_id: str) -> Any:
        return store._jobs.find_one({"_id": job_id}).get("ended_at")

    assert get(store, running.id).status is JobStatus.DONE
    assert ended_at(a.id) is None and ended_at(a_done.id) is None
    assert ended_at(running.id) is None
    store._restore_retention()
    assert ended_at(a_done.id) is None  # b still waits
    sched.cancel_job(other.id)  # b and late end CANCELED: nothing waits any more
    assert get(store, b.id).status is JobStatus.CANCELED
    assert get(store, late.id).status is JobStatus.CANCELED
    store._restore_retention()
    assert ended_at(a.id) is not None and ended_at(a_done.id) is not None
    assert ended_at(running.id) is not None
    # Canceled by a cascade, with a dependent that runs on failure still waiting: kept.
    root = sched.add_job(ADD, at=time.time() + 3600)
    mid = sched.add_job(ADD, depends_on=[root.id])
    wait = sched.add_job(ADD, at=time.time() + 3600)
    sched.add_job(ADD, depends_on=[mid.id, wait.id], on_dependency_failure="run")
    sched.cancel_job(root.id)
    assert get(store, mid.id).status is JobStatus.CANCELED
    store._restore_retention()
    assert ended_at(mid.id) is None


class _Crash(BaseException):
    """The adding process dies here (BaseException: nothing on the way catches it)."""


def _crash_at(monkeypatch: pytest.MonkeyPatch, point: str) -> None:
    from taskschedd import failpoints

    def hit(name: str) -> None:
        if name == point:
            raise _Crash(name)

    monkeypatch.setattr(failpoints, "hit", hit)


def _workflow(sched: Scheduler) -> list[JobSpec]:
    return [JobSpec(ADD, {"n": 1}), JobSpec(ADD, {"n": 2}), JobSpec(ADD, {"n": 3})]


def test_mongodb_a_workflow_whose_add_died_before_its_commit_never_runs(
    sched: Scheduler, store_spec: StoreSpec, monkeypatch: pytest.MonkeyPatch
) -> None:
    """All or nothing without transactions: the jobs of a workflow are inserted held,
    then committed by one record. An adder that dies before the commit leaves held jobs
    that nothing claims or decides; once their hold has passed, a sweep deletes them."""
    if store_spec.kind != "mongo":
        pytest.skip("SQLite adds a workflow in one transaction")
    store: Any = sched.store
    before = _snapshot(store)
    with monkeypatch.context() as m:
        _crash_at(m, "mongo.workflow.before_commit")
        with pytest.raises(_Crash):
            sched.chain(_workflow(sched))
    held = [j for j in store.find(JobQuery(limit=None)) if j.id not in before[0]]
    assert len(held) == 3 and {j.status for j in held} == {B}
    assert store.last_event_seq() == before[1]  # no "added" event for what may go
    assert drain(store) == 0  # the root is held too: nothing runs
    assert store.sweep_dependencies(time.time()) == 0  # not past its hold yet
    assert len(store.find(JobQuery(limit=None))) == len(before[0]) + 3
    store.sweep_dependencies(time.time() + store.workflow_hold + 1)
    assert _snapshot(store) == before  # gone, every one of them
    assert drain(store) == 0


def test_mongodb_a_workflow_whose_add_died_after_its_commit_runs_whole(
    sched: Scheduler, store_spec: StoreSpec, monkeypatch: pytest.MonkeyPatch
) -> None:
    if store_spec.kind != "mongo":
        pytest.skip("SQLite adds a workflow in one transaction")
    store: Any = sched.store
    with monkeypatch.context() as m:
        _crash_at(m, "mongo.workflow.before_release")
        with pytest.raises(_Crash):
            sched.chain(_workflow(sched))
    held = store.find(JobQuery(limit=None))
    assert len(held) == 3 and drain(store) == 0
    store.sweep_dependencies(time.time() + store.workflow_hold + 1)
    assert drain(store) == 3
    done = sorted(store.find(JobQuery(limit=None)), key=lambda j: j.started or 0)
    assert [j.status for j in done] == [JobStatus.DONE] * 3
    assert done[-1].result["total"] == 6  # in order, passing results


def test_mongodb_an_adder_slower_than_the_hold_is_told_and_keeps_nothing(
    sched: Scheduler, store_spec: StoreSpec, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The sweep and a late adder race for the one commit record: the sweep won, so the
    adder's commit fails, it says so, and nothing of the workflow stays."""
    if store_spec.kind != "mongo":
        pytest.skip("SQLite adds a workflow in one transaction")
    from taskschedd import failpoints
    from taskschedd.errors import StoreUnavailable

    store: Any = sched.store
    before = _snapshot(store)
    other = store_spec.open()  # another node's sweep, while the adder is stalled

    def stalled(name: str) -> None:
        if name == "mongo.workflow.before_commit":
            other.sweep_dependencies(time.time() + store.workflow_hold + 1)

    monkeypatch.setattr(failpoints, "hit", stalled)
    try:
        with pytest.raises(StoreUnavailable, match="was abandoned; none of its jobs was kept"):
            sched.chain(_workflow(sched))
    finally:
        other.close()
    assert _snapshot(store) == before


def test_mongodb_a_dependent_added_while_a_batch_settles_is_released_by_it(
    sched: Scheduler, store_spec: StoreSpec, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch settle reads its jobs, then writes them: a dependent added between the two
    (its dependency not final yet when it was decided) is released by that settle, not
    left to the sweep."""
    if store_spec.kind != "mongo":
        pytest.skip("SQLite settles and releases in one transaction")
    store: Any = sched.store
    a, _ = sched.add_jobs([JobSpec(ADD, {"n": 1}), JobSpec(ADD, {"n": 2})])
    _, jobs = store.settle_batch([], now=time.time(), claim=ClaimRequest(
        queues=["default"], node="n", worker="w", token=uuid.uuid4().hex, lease=60, limit=2,
    ))  # fmt: skip
    assert len(jobs) == 2
    late: list[str] = []
    by_ids = store._by_ids

    def read_then_add(*args: Any, **kwargs: Any) -> Any:
        found = by_ids(*args, **kwargs)
        if not late:  # the settle's first read: a client adds a dependent now
            with store_spec.open() as client:
                late.append(Scheduler(client).add_job(ADD, depends_on=[a.id]).id)
        return found

    monkeypatch.setattr(store, "_by_ids", read_then_add)
    now = time.time()
    store.settle_batch(
        [(j.id, j.claim_token or "", rules.on_success(j, '{"total": 1}', now)) for j in jobs],
        now=now,
    )
    monkeypatch.undo()
    assert get(store, late[0]).status is JobStatus.WAITING


def test_a_fan_in_past_the_results_budget_still_reads_every_result(
    sched: Scheduler, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past the bytes of results a worker keeps from the claim on, the rest are read
    again by page when the job asks for them: the job sees every result."""
    from taskschedd import dependency_results

    monkeypatch.setattr(dependency_results, "RESULTS_KEPT", 300)  # a few results
    monkeypatch.setattr(dependency_results, "PAGE", 50)
    monkeypatch.setattr(dependency_results, "RESULT_PAGE", 7)
    store = sched.store
    deps = sched.add_jobs([JobSpec(ADD, {"n": n}) for n in range(1, 121)])
    fan_in = sched.add_job(ADD, depends_on=[p.id for p in deps])
    assert drain(store) == 121
    done = get(store, fan_in.id)
    assert (done.status, done.result["total"]) == (JobStatus.DONE, 120 * 121 // 2)
    assert len(done.result["seen"]) == 120


def _raw(store: Any, job_id: str, **fields: Any) -> None:
    """Change a job's record as another client would (None: delete the record)."""
    if store.__class__.__name__ == "SQLiteStore":
        import sqlite3

        conn = sqlite3.connect(store.path, isolation_level=None)
        try:
            if not fields:
                conn.execute("DELETE FROM jobs WHERE id = ?", (job_id,))
            for column, value in fields.items():
                conn.execute(f"UPDATE jobs SET {column} = ? WHERE id = ?", (value, job_id))
        finally:
            conn.close()
    elif not fields:
        store._jobs.delete_one({"_id": job_id})
    else:
        store._jobs.update_one({"_id": job_id}, {"$set": fields})


@pytest.mark.parametrize("on_failure", ["cancel", "run"])
def test_a_dependency_deleted_by_hand_does_not_leave_its_dependent_waiting(
    sched: Scheduler, on_failure: str
) -> None:
    """A record deleted by another client will never end: the dependency sweep decides
    its dependents as if it ended MISSING (review: on SQLite it waited forever)."""
    store: Any = sched.store
    gone = sched.add_job(ADD, at=time.time() + 3600)
    other = sched.add_job(ADD, {"n": 1})
    dependent = sched.add_job(ADD, depends_on=[gone.id, other.id], on_dependency_failure=on_failure)
    _raw(store, gone.id)
    assert drain(store) == 1  # `other`; the dependent still counts `gone` as pending
    assert get(store, dependent.id).status is B
    assert store.sweep_dependencies(time.time()) == 1
    done = get(store, dependent.id)
    if on_failure == "cancel":
        assert (done.status, done.reason) == (
            JobStatus.CANCELED, f"dependency {gone.id} ended MISSING",
        )  # fmt: skip
    else:
        assert drain(store) == 1
        assert get(store, dependent.id).result["seen"][gone.id] == [None, None]


@pytest.mark.parametrize(
    "fields",
    [
        {"options": '{"depends_on": 5}'},
        {"options": '{"depends_on": ["x", 7, null]}'},
        {"options": "not json"},
        {"at": "soon"},
    ],
    ids=["int", "mixed", "not-json", "at"],
)
def test_a_blocked_job_whose_record_cannot_be_decided_on_is_quarantined(
    sched: Scheduler, store_spec: StoreSpec, fields: dict[str, Any]
) -> None:
    """Written wrong by another client: never decided on a guess (a string read as its
    characters' ids), never left BLOCKED forever: the sweep hands it to the nodes'
    quarantine, which ends it FAILED (corrupt) (review)."""
    store: Any = sched.store
    dep = sched.add_job(ADD, {"n": 1})
    job = sched.add_job(ADD, depends_on=[dep.id])
    if store_spec.kind == "mongo" and "options" in fields:
        text = fields["options"]
        try:
            fields = {"options": json.loads(text)}
        except ValueError:
            fields = {"options": text}
    _raw(store, job.id, **fields)
    assert drain(store) == 1  # the dependency runs; the job cannot be decided
    assert get(store, job.id).status is B
    store.sweep_dependencies(time.time())
    now = time.time()
    found = [r for r in store.malformed() if r.id == job.id]
    assert len(found) == 1 and found[0].corrupt
    assert store.quarantine(found[0], rules.on_corrupt(found[0], now), now=now)
    assert (get(store, job.id).status, get(store, job.id).reason) == (JobStatus.FAILED, "corrupt")


def test_an_id_reused_after_a_purge_is_not_the_dependency_it_replaced(
    sched: Scheduler,
) -> None:
    """x waited on y; y was purged and a new job took its id, waiting on x: retrying x
    must not wait on the new y (a cycle: both BLOCKED forever), and the new y has no
    dependents from before it (review)."""
    store: Any = sched.store
    y = sched.add_job(ADD, {"n": 1})
    drain(store)
    x = sched.add_job(FAIL, depends_on=[y.id])
    drain(store)
    assert get(store, x.id).status is JobStatus.FAILED
    assert store.purge(statuses=[JobStatus.DONE], ended_before=time.time() + 1) == 1
    z = sched.add_job(ADD, at=time.time() + 3600)
    sched.add_job(ADD, id=y.id, depends_on=[x.id, z.id], on_dependency_failure="run")
    assert store.dependents(y.id) == []
    sched.retry_job(x.id)
    again = get(store, x.id)
    assert (again.status, again.reason) == (JobStatus.CANCELED, f"dependency {y.id} ended MISSING")
    assert get(store, y.id).status is B  # still waits on z, not on itself


def test_a_workflow_wider_than_999_ids_is_added_shown_and_canceled(sched: Scheduler) -> None:
    """SQLite before 3.32 binds at most 999 values per statement (the store holds every
    version to that): nothing may put a workflow's ids in one statement (review: group
    of 1,200 wrote, then failed)."""
    store: Any = sched.store
    later = time.time() + 3600
    *members, fan_in = sched.group([JobSpec(ADD, {"n": 1}, {"at": later}) for _ in range(1200)],
                                   then=JobSpec(ADD))  # fmt: skip
    assert len(store.find(JobQuery(ids=tuple(m.id for m in members)))) == 1200
    assert len(store.dependency_states([m.id for m in members])) == 1200
    assert get(store, fan_in.id).status is B
    sched.cancel_job(members[0].id)
    assert get(store, fan_in.id).status is JobStatus.CANCELED


def test_a_batch_of_1200_with_a_duplicate_id_names_it(sched: Scheduler) -> None:
    """The duplicate look-up after a refused batch binds no more than SQLite allows."""
    from taskschedd.store.base import DuplicateJobId

    taken = sched.add_job(ADD)
    before = _snapshot(sched.store)
    specs = [JobSpec(ADD) for _ in range(1199)] + [JobSpec(ADD, {}, {"id": taken.id})]
    with pytest.raises((DuplicateJobId, OptionError), match=taken.id):
        sched.add_jobs(specs)
    assert _snapshot(sched.store) == before
