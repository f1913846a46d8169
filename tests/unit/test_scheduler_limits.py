"""The library side of limits (issue 15): Scheduler.set_limit/delete_limit/limits, the
queue:/class: limits a job joins when it is added, and held_back (why a due job waits).

On real stores of each kind. A kind whose store does not implement the limit methods
yet (abstract) is skipped, naming why: these tests pin what the Store docstrings say,
so they pass on a store as soon as it implements them.
"""

from __future__ import annotations

import inspect
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from taskschedd import rules, scheduler
from taskschedd.errors import OptionError
from taskschedd.limits import LimitSpec, LimitState, Rate
from taskschedd.model import JobRecord
from taskschedd.scheduler import JobSpec, Scheduler
from taskschedd.store.base import Store
from taskschedd.timeutil import format_time
from tests.store.conftest import STORE_KINDS, StoreSpec

CLS = "taskschedd.examples.jobs.Echo"
OTHER_CLS = "taskschedd.examples.jobs.Sleep"


def _abstract(kind: str) -> bool:
    if kind != "mongo":
        return False
    from taskschedd.store.mongo import MongoStore

    return inspect.isabstract(MongoStore)


@pytest.fixture(params=sorted(STORE_KINDS))
def spec(request: pytest.FixtureRequest, tmp_path: Path) -> StoreSpec:
    if _abstract(request.param):
        pytest.skip(f"the {request.param} store does not implement the limit methods yet")
    return STORE_KINDS[request.param](request, tmp_path)


@pytest.fixture
def sched(spec: StoreSpec) -> Iterator[Scheduler]:
    with Scheduler(spec.open()) as s:
        yield s


def claim(store: Store, queue: str = "default", job_id: str | None = None) -> JobRecord | None:
    return store.claim(
        # A worker of its own per claim: the jobs one worker holds may share its slot.
        [queue], node="n1", worker=f"n1/{uuid.uuid4().hex[:8]}", token=uuid.uuid4().hex, lease=60.0,
        now=time.time(), job_id=job_id,
    )  # fmt: skip


def count_reads(store: Store, monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Record each read of the definitions (store.limit_specs(): the time of the call);
    a call of store.limits(), which also counts every limit's jobs, fails the test."""
    calls: list[float] = []
    real: Callable[[], list[LimitSpec]] = store.limit_specs

    def spy() -> list[LimitSpec]:
        calls.append(time.time())
        return real()

    def counting(*, now: float) -> list[LimitState]:
        raise AssertionError("an add read the limits' counts, not only their definitions")

    monkeypatch.setattr(store, "limit_specs", spy)
    monkeypatch.setattr(store, "limits", counting)
    return calls


# -- set, list, delete -----------------------------------------------------------------------


def test_set_list_replace_and_delete(sched: Scheduler) -> None:
    assert sched.limits() == []
    spec = sched.set_limit("reports", max_running=2)
    assert spec == LimitSpec("reports", 2, None)
    mail = sched.set_limit("mail", rate="100/1m")
    assert mail.rate == Rate(100, 60.0)
    both = sched.set_limit("queue:imports", max_running=0, rate=Rate(5, 1.0))
    states = sched.limits()
    assert [s.spec for s in states] == [mail, both, spec]  # by name
    assert all((s.running, s.waiting) == (0, 0) for s in states)
    # set replaces the whole definition: the rate left out is no longer capped.
    assert sched.set_limit("queue:imports", max_running=3) == LimitSpec("queue:imports", 3)
    assert {s.spec.name: s.spec for s in sched.limits()}["queue:imports"].rate is None
    assert sched.delete_limit("mail") is True
    assert sched.delete_limit("mail") is False
    assert [s.spec.name for s in sched.limits()] == ["queue:imports", "reports"]


@pytest.mark.parametrize(
    ("name", "kwargs", "fragment"),
    [
        ("bad name", {"max_running": 1}, "limit name: expected 1-128 letters"),
        ("", {"max_running": 1}, "limit name"),
        (7, {"max_running": 1}, "limit name"),
        ("r", {}, "give max_running, a rate, or both"),
        ("r", {"max_running": -1}, "max_running must be an integer from 0 to"),
        ("r", {"max_running": True}, "max_running must be an integer"),
        ("r", {"max_running": 2.5}, "max_running must be an integer"),
        ("r", {"rate": "lots"}, "rate: expected starts per period"),
        ("r", {"rate": "0/1m"}, "the count must be an integer from 1"),
        ("r", {"rate": 100}, "rate: expected starts per period"),
    ],
)
def test_bad_definitions_are_refused_before_any_write(
    sched: Scheduler, name: Any, kwargs: dict[str, Any], fragment: str
) -> None:
    with pytest.raises(OptionError) as info:
        sched.set_limit(name, **kwargs)
    assert fragment in str(info.value), info.value
    assert sched.limits() == []


def test_delete_checks_the_name(sched: Scheduler) -> None:
    with pytest.raises(OptionError, match="limit name"):
        sched.delete_limit("no such\nname")


# -- the limit a job joins when added --------------------------------------------------------


def stored_limit(sched: Scheduler, job_id: str) -> str | None:
    return sched.get_job(job_id).record.options.limit


def test_a_job_joins_its_queue_limit_then_its_class_limit(sched: Scheduler) -> None:
    sched.set_limit("queue:mail", max_running=1)
    sched.set_limit(f"class:{CLS}", max_running=1)
    in_mail = sched.add_job(CLS, queue="mail")
    plain = sched.add_job(CLS)
    other = sched.add_job(OTHER_CLS)
    named = sched.add_job(CLS, queue="mail", limit="reports")
    assert in_mail.options.limit == stored_limit(sched, in_mail.id) == "queue:mail"
    assert plain.options.limit == stored_limit(sched, plain.id) == f"class:{CLS}"
    assert stored_limit(sched, other.id) is None
    assert stored_limit(sched, named.id) == "reports"  # an explicit limit is kept


def test_a_class_given_as_a_type_joins_by_its_path(sched: Scheduler) -> None:
    from taskschedd.examples.jobs import Echo

    sched.set_limit(f"class:{CLS}", max_running=1)
    assert stored_limit(sched, sched.add_job(Echo).id) == f"class:{CLS}"


def test_a_job_default_limit_counts_as_its_own(spec: StoreSpec) -> None:
    with Scheduler(spec.open(), limit="reports") as s:
        s.set_limit("queue:default", max_running=1)
        assert stored_limit(s, s.add_job(CLS).id) == "reports"


def test_every_way_of_adding_joins(sched: Scheduler) -> None:
    sched.set_limit("queue:q", max_running=1)
    jobs = [
        *sched.add_jobs([(CLS, {"n": 1}, {"queue": "q"}), JobSpec(CLS, {"n": 2}, {"queue": "q"})]),
        *sched.chain([(CLS, {"n": 3}, {"queue": "q"}), (CLS, {"n": 4}, {"queue": "q"})]),
        *sched.group([(CLS, {"n": 5}, {"queue": "q"})], then=(CLS, {"n": 6}, {"queue": "q"})),
        sched.add_job_once(CLS, {"n": 7}, queue="q"),
    ]
    assert [stored_limit(sched, p.id) for p in jobs] == ["queue:q"] * 7


def test_a_batch_reads_the_definitions_once(
    sched: Scheduler, monkeypatch: pytest.MonkeyPatch
) -> None:
    sched.set_limit("queue:q", max_running=1)
    reads = count_reads(sched.store, monkeypatch)
    # A loaded machine may take longer than the 5 s cache to add 520 jobs: the claim is
    # one read per batch and none per add while the cache holds, not a speed.
    monkeypatch.setattr(scheduler, "LIMIT_NAMES_TTL", 3600.0)
    added = sched.add_jobs(
        [(CLS, {"n": i}, {"queue": "q" if i % 2 else "default"}) for i in range(500)]
    )
    assert len(reads) == 1
    for i in range(20):
        sched.add_job(CLS, {"more": i}, queue="q")
    assert len(reads) == 1  # within LIMIT_NAMES_TTL: no read per add
    limits = [stored_limit(sched, p.id) for p in added[:4]]
    assert limits == [None, "queue:q", None, "queue:q"]


def test_jobs_with_their_own_limit_need_no_read(
    sched: Scheduler, monkeypatch: pytest.MonkeyPatch
) -> None:
    reads = count_reads(sched.store, monkeypatch)
    sched.add_jobs([(CLS, {"n": i}, {"limit": "reports"}) for i in range(10)])
    assert reads == []


def test_a_definition_made_elsewhere_is_joined_once_the_cache_expires(
    spec: StoreSpec, monkeypatch: pytest.MonkeyPatch
) -> None:
    with Scheduler(spec.open()) as adder, Scheduler(spec.open()) as admin:
        before = adder.add_job(CLS, queue="q")  # reads: no limits
        admin.set_limit("queue:q", max_running=1)
        cached = adder.add_job(CLS, queue="q")
        monkeypatch.setattr(scheduler, "LIMIT_NAMES_TTL", 0.0)
        after = adder.add_job(CLS, queue="q")
        admin.delete_limit("queue:q")
        gone = adder.add_job(CLS, queue="q")
        # Jobs already added keep what they joined.
        assert [stored_limit(admin, p.id) for p in (before, cached, after, gone)] == [
            None,
            None,
            "queue:q",
            None,
        ]


def test_this_schedulers_own_changes_apply_at_once(sched: Scheduler) -> None:
    assert stored_limit(sched, sched.add_job(CLS, queue="q").id) is None
    sched.set_limit("queue:q", max_running=1)
    assert stored_limit(sched, sched.add_job(CLS, queue="q").id) == "queue:q"
    sched.delete_limit("queue:q")
    assert stored_limit(sched, sched.add_job(CLS, queue="q").id) is None


def test_the_next_occurrence_keeps_the_limit_its_series_joined(sched: Scheduler) -> None:
    sched.set_limit("queue:cron", max_running=1)
    first = sched.add_job(CLS, queue="cron", interval=60)
    record = sched.get_job(first.id).record
    sched.delete_limit("queue:cron")
    following = rules.next_occurrence(record, time.time())
    assert following is not None and following.options.limit == "queue:cron"


# -- held_back ---------------------------------------------------------------------------------


def test_nothing_holds_a_plain_job(sched: Scheduler) -> None:
    job = sched.add_job(CLS)
    assert sched.held_back(job) is None
    assert sched.held_back(sched.add_job(CLS, limit="undefined")) is None
    sched.set_limit("roomy", max_running=5)
    assert sched.held_back(sched.add_job(CLS, limit="roomy")) is None


def test_a_full_limit(sched: Scheduler) -> None:
    sched.set_limit("reports", max_running=1)
    first = sched.add_job(CLS, limit="reports")
    second = sched.add_job(CLS, limit="reports")
    running = claim(sched.store)
    assert running is not None and running.id == first.id
    assert claim(sched.store) is None  # the store agrees: the second is held back
    assert sched.held_back(second) == "limit 'reports' is full: 1 of 1 running"
    assert sched.held_back(running) is None  # running, not waiting
    (state,) = sched.limits()
    assert (state.running, state.waiting) == (1, 1)


def test_max_running_zero_says_it_holds_every_job(sched: Scheduler) -> None:
    sched.set_limit("paused", max_running=0)
    job = sched.add_job(CLS, limit="paused")
    assert sched.held_back(job) == (
        "limit 'paused' is full: 0 of 0 running (max_running 0 holds every job of the limit)"
    )


def test_a_used_up_rate_says_when_the_next_start_is(sched: Scheduler) -> None:
    sched.set_limit("mail", rate="1/1h")
    sched.add_job(CLS, limit="mail")
    waiting = sched.add_job(CLS, limit="mail")
    before = time.time()
    started = claim(sched.store)
    assert started is not None
    (state,) = sched.limits()
    assert len(state.starts) == 1 and before <= state.starts[0] <= time.time()
    assert sched.held_back(waiting) == (
        f"limit 'mail' rate 1/1h: next start at {format_time(state.starts[0] + 3600)}"
    )


def test_a_held_exclusive_key_names_the_holder(sched: Scheduler) -> None:
    holder = sched.add_job(CLS, exclusive_key="customer:42")
    waiting = sched.add_job(CLS, exclusive_key="customer:42")
    free = sched.add_job(CLS, exclusive_key="customer:7")
    running = claim(sched.store)
    assert running is not None and running.id == holder.id
    assert sched.held_back(waiting) == f"exclusive key 'customer:42' is held by job {holder.id}"
    assert sched.held_back(free) is None


def test_every_reason_is_given(sched: Scheduler) -> None:
    sched.set_limit("reports", max_running=1)
    holder = sched.add_job(CLS, limit="reports", exclusive_key="k")
    waiting = sched.add_job(CLS, limit="reports", exclusive_key="k")
    assert claim(sched.store) is not None
    assert sched.held_back(waiting.record) == (
        f"limit 'reports' is full: 1 of 1 running; exclusive key 'k' is held by job {holder.id}"
    )


def test_a_job_not_due_yet_is_not_held_back(sched: Scheduler) -> None:
    sched.set_limit("paused", max_running=0)
    later = sched.add_job(CLS, limit="paused", at=time.time() + 3600)
    assert sched.held_back(later) is None


def test_held_back_reads_nothing_for_a_job_without_limit_or_key(
    sched: Scheduler, monkeypatch: pytest.MonkeyPatch
) -> None:
    job = sched.add_job(CLS)
    reads = count_reads(sched.store, monkeypatch)
    assert sched.held_back(job) is None and reads == []


# -- the metrics endpoint's figures ------------------------------------------------------------


def limit_samples(text: str) -> dict[str, float]:
    import re

    found = re.findall(r'^(taskschedd_limit_\w+)\{limit="([^"]*)"\} (\S+)$', text, re.M)
    return {
        f"{name.removeprefix('taskschedd_limit_')}/{limit}": float(v) for name, limit, v in found
    }


def test_limit_gauges_follow_the_store_and_their_labels_are_bounded() -> None:
    from taskschedd.metrics import MAX_LIMITS, OTHER, Metrics

    metrics = Metrics("test")
    assert "taskschedd_limit_" not in metrics.collect()  # no limits: no families
    metrics.set_limits(
        [
            LimitState(LimitSpec("reports", 2), running=2, waiting=5),
            LimitState(LimitSpec("mail", None, Rate(100, 60)), running=1, waiting=0),
        ]
    )
    text = metrics.collect()
    for family in ("running", "capacity", "waiting"):
        assert f"# TYPE taskschedd_limit_{family} gauge" in text
    assert limit_samples(text) == {
        "running/mail": 1,
        "waiting/mail": 0,
        "running/reports": 2,
        "capacity/reports": 2,
        "waiting/reports": 5,
    }
    # Many limits: the first MAX_LIMITS by name have a label; the rest are summed.
    many = [LimitState(LimitSpec(f"l{i:04d}", 1), 1, 2) for i in range(MAX_LIMITS + 5)]
    many.append(LimitState(LimitSpec(OTHER, None, Rate(1, 1)), 1, 1))
    metrics.set_limits(many)
    got = limit_samples(metrics.collect())
    assert len({k.split("/")[1] for k in got}) == MAX_LIMITS + 1
    assert (got[f"running/{OTHER}"], got[f"waiting/{OTHER}"]) == (6, 11)
    assert f"capacity/{OTHER}" not in got  # one of them has no max_running
    metrics.set_limits([])  # deleted limits disappear
    assert "taskschedd_limit_" not in metrics.collect()
