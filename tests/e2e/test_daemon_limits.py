"""Limits, exclusive keys and rates on real daemons, on both stores (issue 15).

Every job records its own time span (``tests.faults.limit_jobs.Span``): how many ran at
once is measured from the jobs themselves (exactly at every start, and sampled every
20 ms), never taken from what the store says. Each run is also checked against the
store: every job DONE, none run twice. Held-back jobs are held by gates (files the
test creates), so "the unlimited jobs finished while the limit stayed full" is an order
of events, not a timing.
"""

from __future__ import annotations

import os
import signal
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from taskschedd import JobStatus, Scheduler
from taskschedd.limits import LimitSpec, Rate
from taskschedd.model import JobQuery
from taskschedd.scheduler import JobSpec
from tests.e2e.conftest import BOTH_STORES, JOBS, Daemon, E2EStore
from tests.faults.limit_jobs import (
    MODULE,
    SPAN,
    Run,
    most_at_once,
    overlaps,
    read_spans,
    samples,
)
from tests.helpers import wait_for

pytestmark = BOTH_STORES

Factory = Callable[..., Daemon]
#: Three workers a node; the jobs come from tests.faults.limit_jobs. Nothing here kills a
#: node, so the lease is longer than the e2e default of 3 s: on a loaded machine, masters
#: of three nodes on nx-27017 confirmed renewals up to 2.7 s late, and jobs claimed ahead
#: whose lease ran out unstarted were given back too late and reaped as abandoned (a
#: lease is an attempt's bound, and this file is about limits).
NODE = {"pm": "static", "min_children": 3, "max_children": 3, "lease": "10s",
        "allowed_modules": [JOBS, MODULE]}  # fmt: skip
#: The issue's counts with $TASKSCHED_TEST_SLOW (as .ci/run sets); the default run keeps
#: the same shape with fewer jobs.
SLOW = os.environ.get("TASKSCHED_TEST_SLOW") == "1"


def cluster(daemon_factory: Factory, count: int = 3, **config: Any) -> list[Daemon]:
    nodes = [daemon_factory(f"n{i + 1}", **{**NODE, **config}) for i in range(count)]
    for node in nodes:
        node.start()
    return nodes


def span_data(spans: Path, **extra: Any) -> dict[str, Any]:
    return {"spans": str(spans), **extra}


def spans_dir(tmp_path: Path) -> Path:
    spans = tmp_path / "spans"
    spans.mkdir()
    return spans


def finish(scheduler: Scheduler, ids: Sequence[str], timeout: float) -> None:
    """Wait for every job; all must be DONE."""
    done = scheduler.wait(ids, timeout=timeout)
    statuses = Counter(p.status.name for p in done)
    why = {p.id: (p.status.name, p.reason, [e.message for e in p.errors]) for p in done
           if p.status != JobStatus.DONE}  # fmt: skip
    assert statuses == {"DONE": len(ids)}, (statuses, dict(list(why.items())[:5]))


def ran_once(runs: Sequence[Run], ids: Sequence[str]) -> None:
    """Each of ``ids`` ran exactly once, to its end."""
    wanted = set(ids)
    per_job = Counter(r.job for r in runs if r.job in wanted)
    assert set(per_job) == wanted, (len(per_job), len(wanted))
    assert [j for j, n in per_job.items() if n > 1] == []
    assert all(r.ended for r in runs if r.job in wanted)


def limit_state(scheduler: Scheduler, name: str) -> tuple[int, int]:
    """(running, waiting) of a limit, as the store counts them."""
    (state,) = [s for s in scheduler.store.limits(now=time.time()) if s.spec.name == name]
    return state.running, state.waiting


def describe(runs: Sequence[Run]) -> list[tuple[str, str, float, float]]:
    return [(r.job, r.label, round(r.start, 3), round(r.alive, 3)) for r in runs]


def test_three_nodes_never_run_more_jobs_of_a_limit_than_it_allows_and_use_all_of_it(
    daemon_factory: Factory, scheduler: Scheduler, tmp_path: Path, store_kind: str
) -> None:
    """300 jobs of 0.25 s under a limit of 2 on 3 nodes x 3 workers: seven workers always
    idle and eager. At no moment do more than 2 run, and 2 run most of the time. (A job
    of the limit hands its slot over in ~50 ms on nx-27017 under load: with jobs of
    0.25 s, "most of the time" holds with room to spare on a busy 2-core machine.)"""
    spans = spans_dir(tmp_path)
    scheduler.store.set_limit(LimitSpec("reports", max_running=2))
    # MongoDB: nodes poll at the default interval (1 s), not the e2e default of 0.2 s.
    # Every idle worker's poll there is a claim, a next_due and an event-log read, and on
    # nx-27017 (one thread) a claim and a next_due cost time in proportion to the jobs
    # their limit holds back (94 and 27 ms with 3,000 held): seven idle workers polling
    # five times a second kept the server so busy that each hand-over waited ~0.2 s in
    # its queue (2 ran 30 % of the time; 68 % with 1 s polls). The hand-over under test
    # comes with the settle, not from a poll, so the interval does not help it.
    cluster(daemon_factory, **({"poll_interval": "1s"} if store_kind == "mongo" else {}))
    count = 300 if SLOW else 100
    spec = JobSpec(SPAN, span_data(spans, seconds=0.25), {"limit": "reports"})
    ids = [p.id for p in scheduler.add_jobs([spec] * count)]
    finish(scheduler, ids, timeout=count * 0.25 / 2 * 3 + 20)
    runs = read_spans(spans)
    ran_once(runs, ids)
    most, at_once = most_at_once(runs)
    assert most == 2, describe(at_once)
    busy = [n for _, n in samples(runs)]
    assert max(busy) <= 2
    # The limit is used: 2 run for most of the busy time. A hand-over of a whole poll
    # interval (0.5 s on SQLite, 0.2 s on MongoDB) per job would leave 2 running for a
    # third of it at most.
    share = busy.count(2) / len(busy)
    # A hand-over by poll (1 s on MongoDB here) would leave 2 running a fifth of the time
    # at most. MongoDB's floor is lower: nx-27017 serves 12 processes from one thread.
    floor = 0.6 if store_kind == "sqlite" else 0.35
    assert share >= floor, (share, Counter(busy))
    print(f"2 running in {share:.0%} of the busy time; {len({r.pid for r in runs})} workers")
    assert limit_state(scheduler, "reports") == (0, 0)


def test_jobs_sharing_an_exclusive_key_never_overlap_and_other_keys_run_in_parallel(
    daemon_factory: Factory, scheduler: Scheduler, tmp_path: Path
) -> None:
    """200 jobs over 20 keys (added key after key, so that a key's jobs sit side by side
    in the queue) on 3 nodes x 3 workers."""
    spans = spans_dir(tmp_path)
    cluster(daemon_factory)
    keys = [f"customer:{k}" for k in range(20)]
    specs = [
        JobSpec(SPAN, span_data(spans, seconds=0.05, label=key), {"exclusive_key": key})
        for key in keys
        for _ in range(10)
    ]
    ids = [p.id for p in scheduler.add_jobs(specs)]
    finish(scheduler, ids, timeout=60)
    runs = read_spans(spans)
    ran_once(runs, ids)
    for key in keys:
        mine = [r for r in runs if r.label == key]
        assert len(mine) == 10
        clash = overlaps(mine)
        assert clash == [], [describe(pair) for pair in clash[:3]]
    most, at_once = most_at_once(runs)
    assert most >= 3, describe(at_once)  # different keys ran side by side
    assert len({r.label for r in at_once}) == most


def test_a_rate_lets_no_more_than_its_count_start_in_any_window_of_its_period(
    daemon_factory: Factory, scheduler: Scheduler, tmp_path: Path
) -> None:
    """100 instant jobs at 20/1s on 3 nodes x 3 workers (workers that claim ahead, in
    batches of many jobs, when the jobs are short)."""
    spans = spans_dir(tmp_path)
    scheduler.store.set_limit(LimitSpec("mail", rate=Rate.parse("20/1s")))
    cluster(daemon_factory)
    count = 100
    spec = JobSpec(SPAN, span_data(spans), {"limit": "mail"})
    ids = [p.id for p in scheduler.add_jobs([spec] * count)]
    finish(scheduler, ids, timeout=count / 20 + 30)
    runs = read_spans(spans)
    ran_once(runs, ids)
    # The store's starts (its claims, PROCESSING events): every window (t - 1 s, t] holds
    # at most 20, i.e. the 21st start after any start comes a whole period later. A
    # claim given back before it started counts too: the rate counted it.
    wanted = set(ids)
    claims = sorted(
        e.time
        for e in scheduler.store.events(limit=100_000)
        if e.status is JobStatus.PROCESSING and e.job_id in wanted
    )
    assert len(claims) >= count
    crowded = [(claims[i - 20], claims[i]) for i in range(20, len(claims))
               if claims[i] - claims[i - 20] < 1.0 - 1e-3]  # fmt: skip
    assert crowded == [], crowded[:3]
    # The jobs' own start times lag their claims by a worker's start-up of the job; a
    # window shorter by a generous lag never holds more than 20.
    starts = [r.start for r in runs]
    lagged = [(starts[i - 20], starts[i]) for i in range(20, len(starts))
              if starts[i] - starts[i - 20] < 0.75]  # fmt: skip
    assert lagged == [], lagged[:3]


def test_held_back_jobs_of_higher_priority_never_keep_others_waiting(
    daemon_factory: Factory, scheduler: Scheduler, tmp_path: Path
) -> None:
    """A full limit (its 2 jobs run until a gate opens), a held exclusive key and a rate
    used up for the next minute, each with jobs of priority 10 waiting; then 1,000
    unlimited jobs of priority 0. Every unlimited job finishes while the limit stays full
    and no held-back job starts; then the gate opens and the held-back jobs run."""
    spans = spans_dir(tmp_path)
    gate = tmp_path / "gate"
    store = scheduler.store
    store.set_limit(LimitSpec("reports", max_running=2))
    store.set_limit(LimitSpec("mail", rate=Rate.parse("1/1m")))
    cluster(daemon_factory, 2)
    gated = span_data(spans, gate=str(gate))
    holders = [scheduler.add_job(SPAN, {**gated, "label": "reports"}, limit="reports").id
               for _ in range(2)]  # fmt: skip
    key = scheduler.add_job(SPAN, {**gated, "label": "key"}, exclusive_key="customer:7").id
    mail = scheduler.add_job(SPAN, span_data(spans, label="mail"), limit="mail")
    mail.wait(20)
    wait_for(lambda: len(read_spans(spans)) == 4, 20, message="the limit full, the key held")
    waiting = scheduler.add_jobs(
        [JobSpec(SPAN, span_data(spans, label="reports"), {"limit": "reports", "priority": 10})] * 50
        + [JobSpec(SPAN, span_data(spans, label="key"),
                   {"exclusive_key": "customer:7", "priority": 10})] * 20
        + [JobSpec(SPAN, span_data(spans, label="mail"), {"limit": "mail", "priority": 10})] * 20
    )  # fmt: skip
    free = scheduler.add_jobs([JobSpec(SPAN, span_data(spans, label="free"))] * 1000)
    finish(scheduler, [p.id for p in free], timeout=120)
    # The limit stayed full and nothing held back started: the gate is still closed.
    assert not gate.exists()
    runs = read_spans(spans)
    assert Counter(r.label for r in runs) == {"free": 1000, "reports": 2, "key": 1, "mail": 1}
    assert [r.job for r in runs if r.label != "free" and r.job != mail.id and r.ended] == []
    assert limit_state(scheduler, "reports") == (2, 50)
    statuses = Counter(
        r.status.name for r in store.find(JobQuery(ids=tuple(p.id for p in waiting)))
    )
    assert statuses == {"WAITING": 90}, statuses
    gate.touch()
    finish(scheduler, [*holders, key] + [p.id for p in waiting[:70]], timeout=60)
    runs = read_spans(spans)
    assert most_at_once([r for r in runs if r.label == "reports"])[0] == 2
    clash = overlaps([r for r in runs if r.label == "key"])
    assert clash == [], [describe(pair) for pair in clash[:3]]


def activity(pid: int) -> tuple[int, float]:
    """(read and write system calls, CPU seconds) of a process so far."""
    with open(f"/proc/{pid}/io") as f:
        io = dict(line.split(": ") for line in f.read().splitlines())
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return int(io["syscr"]) + int(io["syscw"]), cpu


def idle_activity(pids: Sequence[int], seconds: float) -> dict[int, tuple[int, float]]:
    """What each process did in ``seconds`` (system calls, CPU seconds)."""
    before = {p: activity(p) for p in pids}
    time.sleep(seconds)  # a measuring window, not a wait for a condition
    after = {p: activity(p) for p in pids}
    return {p: (after[p][0] - before[p][0], after[p][1] - before[p][1]) for p in pids}


def test_workers_do_not_spin_while_every_job_left_is_held_back(
    daemon_factory: Factory, scheduler: Scheduler, tmp_path: Path, e2e_store: E2EStore
) -> None:
    """Only held-back jobs queued (a full limit, a held key, a rate used up for the next
    minute): the idle workers look at the store no more often than with an empty queue.
    Measured as their system calls (each look at the store is a few reads and writes,
    a worker that spins makes thousands a second) and CPU time, over 2 s each."""
    spans = spans_dir(tmp_path)
    gate = tmp_path / "gate"
    store = scheduler.store
    store.set_limit(LimitSpec("reports", max_running=1))
    store.set_limit(LimitSpec("mail", rate=Rate.parse("1/1m")))
    (node,) = cluster(daemon_factory, 1, min_children=4, max_children=4)
    workers = node.wait_workers(4)
    wait_for(lambda: node.node() is not None, 10, message="the node registered")
    empty = idle_activity(workers, 2.0)
    held = span_data(spans, gate=str(gate), label="holder")
    scheduler.add_job(SPAN, held, limit="reports")
    scheduler.add_job(SPAN, held, exclusive_key="customer:7")
    scheduler.add_job(SPAN, span_data(spans, label="mail"), limit="mail").wait(20)

    def holders() -> list[Run]:
        runs = [r for r in read_spans(spans) if r.label == "holder"]
        return runs if len(runs) == 2 else []

    busy = {r.pid for r in wait_for(holders, 20, message="the limit full and the key held")}
    waiting = scheduler.add_jobs(
        [JobSpec(SPAN, span_data(spans), {"limit": "reports"})] * 10
        + [JobSpec(SPAN, span_data(spans), {"exclusive_key": "customer:7"})] * 10
        + [JobSpec(SPAN, span_data(spans), {"limit": "mail"})] * 10
    )
    idle = [p for p in workers if p not in busy]
    assert len(idle) == 2
    held_back = idle_activity(idle, 2.0)
    looks = {p: (empty[p][0], held_back[p][0]) for p in idle}
    # A look at the store is ~20 system calls on SQLite, ~3 on MongoDB. Idle, a worker
    # looks each poll interval and, on SQLite, at each write it is woken for (here the
    # holders' renewals): 50 and 160 calls in 2 s measured on SQLite, 24 and 22 on
    # MongoDB. A worker that spins looks hundreds of times a second.
    assert all(h <= max(8 * e, 100) for e, h in looks.values()), (looks, e2e_store.kind)
    assert all(cpu < 0.2 for _, cpu in held_back.values()), held_back
    assert len(read_spans(spans)) == 3  # nothing held back ran meanwhile
    statuses = Counter(
        r.status.name for r in store.find(JobQuery(ids=tuple(p.id for p in waiting)))
    )
    assert statuses == {"WAITING": 30}, statuses
    gate.touch()
    finish(scheduler, [p.id for p in waiting[:20]], timeout=30)


def test_a_limit_from_the_config_caps_a_queue_and_a_reload_changes_it(
    daemon_factory: Factory, scheduler: Scheduler, tmp_path: Path
) -> None:
    """``limits: {queue:reports: {max_running: 1}}`` in both nodes' config: jobs added to
    queue reports (no limit option) join it and run one at a time, the default queue's
    jobs beside them in parallel; ``held_back`` says why one waits. A reload with
    max_running 2 changes the definition in the store."""
    spans = spans_dir(tmp_path)
    gate = tmp_path / "gate"
    limits = {"queue:reports": {"max_running": 1}}
    nodes = cluster(daemon_factory, 2, queues=["reports", "default"], limits=limits)
    wait_for(lambda: [s.spec.max_running for s in scheduler.limits()] == [1], 10,
             message="the configured limit in the store")  # fmt: skip
    first = scheduler.add_job(SPAN, span_data(spans, gate=str(gate), label="reports"),
                              queue="reports")  # fmt: skip
    assert first.options.limit == "queue:reports"
    wait_for(lambda: read_spans(spans), 20, message="the first reports job running")
    reports = scheduler.add_jobs(
        [JobSpec(SPAN, span_data(spans, seconds=0.1, label="reports"), {"queue": "reports"})] * 8
    )
    free = scheduler.add_jobs([JobSpec(SPAN, span_data(spans, seconds=0.3, label="free"))] * 4)
    finish(scheduler, [p.id for p in free], timeout=30)
    assert scheduler.held_back(reports[0].refresh()) == (
        "limit 'queue:reports' is full: 1 of 1 running"
    )
    gate.touch()
    finish(scheduler, [first.id] + [p.id for p in reports], timeout=30)
    runs = read_spans(spans)
    clash = overlaps([r for r in runs if r.label == "reports"])
    assert clash == [], [describe(pair) for pair in clash[:3]]
    assert most_at_once([r for r in runs if r.label == "free"])[0] >= 2
    limits["queue:reports"]["max_running"] = 2
    nodes[0].write_config(limits=limits)
    nodes[0].signal(signal.SIGHUP)
    wait_for(lambda: [s.spec.max_running for s in scheduler.limits()] == [2], 20,
             message="the reloaded limit in the store")  # fmt: skip


def test_a_limit_lowered_while_its_jobs_run_holds_new_starts_until_enough_end(
    daemon_factory: Factory, scheduler: Scheduler, tmp_path: Path
) -> None:
    """max_running 0 holds every job; 3 lets three holders start; lowered to 1 while they
    run, no follower starts until all three ended, then one at a time; raised to 3 again,
    three run at once. That a follower stayed held is shown by order, not by waiting: an
    unlimited probe of lower priority is added and finishes while none has started
    (the claim would have taken a follower first)."""
    spans = spans_dir(tmp_path)
    gates = [tmp_path / f"gate{i}" for i in range(3)]
    cluster(daemon_factory, 2)
    scheduler.set_limit("reports", max_running=0)
    holders = [scheduler.add_job(SPAN, span_data(spans, gate=str(g), label="holder"),
                                 limit="reports", priority=10) for g in gates]  # fmt: skip

    def probe() -> None:
        job = scheduler.add_job(SPAN, span_data(spans, label="probe"))
        job.wait(20)
        assert job.status is JobStatus.DONE

    probe()
    assert [r.label for r in read_spans(spans)] == ["probe"]
    assert scheduler.held_back(holders[0].refresh()) == (
        "limit 'reports' is full: 0 of 0 running (max_running 0 holds every job of the limit)"
    )
    scheduler.set_limit("reports", max_running=3)
    wait_for(lambda: sum(r.label == "holder" for r in read_spans(spans)) == 3, 20,
             message="three holders running")  # fmt: skip
    scheduler.set_limit("reports", max_running=1)
    follower = span_data(spans, seconds=0.4, label="follower")
    followers = scheduler.add_jobs(
        [JobSpec(SPAN, follower, {"limit": "reports", "priority": 10})] * 8
    )
    for gate, holder in zip(gates[:2], holders, strict=False):
        gate.touch()
        holder.wait(20)
        probe()  # 2, then 1 still running: at or above 1, no follower may start
        assert not [r for r in read_spans(spans) if r.label == "follower"]
    assert limit_state(scheduler, "reports") == (1, 8)
    gates[2].touch()
    finish(scheduler, [p.id for p in holders], timeout=20)
    wait_for(lambda: sum(r.label == "follower" for r in read_spans(spans)) >= 3, 20,
             message="followers running one at a time")  # fmt: skip
    scheduler.set_limit("reports", max_running=3)
    raised = time.time()
    finish(scheduler, [p.id for p in followers], timeout=30)
    runs = read_spans(spans)
    last_holder = max(r.alive for r in runs if r.label == "holder")
    assert min(r.start for r in runs if r.label == "follower") >= last_holder
    ran = [r for r in runs if r.label == "follower"]
    assert most_at_once(ran[:3])[0] == 1  # under 1: one after another
    assert most_at_once(runs)[0] <= 3
    assert most_at_once([r for r in ran if r.start >= raised])[0] == 3
