"""The enqueue shortcuts keep their promises: ids, shared options, canonical data."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from taskschedd import Scheduler
from taskschedd.errors import JobDataError, OptionError
from taskschedd.model import JobQuery
from taskschedd.options import MAX_JSON_DEPTH, dump_data, resolve, stored_options
from taskschedd.scheduler import new_id

CLS = "tests.api_jobs.Echo"


@pytest.fixture
def scheduler(tmp_path: Path) -> Iterator[Scheduler]:
    with Scheduler(f"sqlite:///{tmp_path}/s.db", create=True) as s:
        yield s


def test_new_ids_are_uuid7_hex_in_time_order() -> None:
    before = int(time.time() * 1000)
    ids = [new_id() for _ in range(1000)]
    after = int(time.time() * 1000)
    assert len(set(ids)) == 1000
    for job_id in ids:
        assert len(job_id) == 32 and job_id == job_id.lower()
        parsed = uuid.UUID(hex=job_id)
        assert (parsed.version, parsed.variant) == (7, uuid.RFC_4122)
        assert before <= int(job_id[:12], 16) <= after
    stamps = [job_id[:12] for job_id in ids]
    assert stamps == sorted(stamps)


def test_jobs_without_options_follow_the_defaults_of_the_moment(scheduler: Scheduler) -> None:
    first = scheduler.add_job(CLS, 1)
    scheduler.set_options(default_retry=3, default_queue="bulk")
    second = scheduler.add_job(CLS, 2)
    (third,) = scheduler.add_jobs([(CLS, 3)])
    stored = {j.id: j for j in scheduler.store.find(JobQuery())}
    assert (stored[first.id].options.retry, stored[first.id].queue) == (0, "default")
    assert (stored[second.id].options.retry, stored[second.id].queue) == (3, "bulk")
    assert (stored[third.id].options.retry, stored[third.id].queue) == (3, "bulk")


def test_a_batch_resolves_each_distinct_set_of_options(scheduler: Scheduler) -> None:
    shared = {"priority": 5, "queue": "q1"}
    jobs = scheduler.add_jobs(
        [
            (CLS, 1, shared),
            (CLS, 2, shared),
            (CLS, 3, {"priority": 5, "queue": "q1"}),
            (CLS, 4, {"priority": 6, "queue": "q1"}),
            (CLS, 5),
            (CLS, 6, {"retry": 1}),
            (CLS, 7, {"retry": 1.0}),
        ]
    )
    stored = {j.id: j for j in scheduler.store.find(JobQuery())}
    got = [(stored[j.id].priority, stored[j.id].queue, stored[j.id].options.retry) for j in jobs]
    assert got == [
        (5, "q1", 0),
        (5, "q1", 0),
        (5, "q1", 0),
        (6, "q1", 0),
        (0, "default", 0),
        (0, "default", 1),
        (0, "default", 1),
    ]


def test_a_mutated_options_mapping_is_resolved_again(scheduler: Scheduler) -> None:
    options: dict[str, Any] = {"priority": 1}

    def specs() -> Iterator[tuple[str, int, dict[str, Any]]]:
        for n in range(3):
            options["priority"] = n  # the same dict object, changed between jobs
            yield (CLS, n, options)

    jobs = scheduler.add_jobs(specs())
    assert [scheduler.get_job(j.id).record.priority for j in jobs] == [0, 1, 2]


def test_equal_values_of_another_type_are_still_validated(scheduler: Scheduler) -> None:
    # True == 1 in Python, but `retry` takes integers, not booleans.
    with pytest.raises(OptionError, match=r"job #1: option 'retry'"):
        scheduler.add_jobs([(CLS, 1, {"retry": 1}), (CLS, 2, {"retry": True})])
    assert scheduler.store.find(JobQuery()) == []


def test_unhashable_option_values_are_resolved_per_job(scheduler: Scheduler) -> None:
    with pytest.raises(OptionError, match=r"job #0: option 'queue'"):
        scheduler.add_jobs([(CLS, 1, {"queue": ["not", "a", "name"]})])


def test_stored_json_is_the_stored_options() -> None:
    opts, _ = resolve({"retry": 3, "cron": "@daily", "queue": "q", "timeout": "1m"})
    assert json.loads(opts.stored_json) == opts.stored()
    assert opts.stored_json is opts.stored_json  # made once per options object
    assert stored_options(json.loads(opts.stored_json)).timeout == 60.0


def test_dump_data_still_refuses_deep_nesting_and_keeps_its_format() -> None:
    assert dump_data({"b": [1, {"d": 2, "c": None}], "a": "x"}) == (
        '{"a":"x","b":[1,{"c":null,"d":2}]}'
    )
    deep: Any = 1
    for _ in range(MAX_JSON_DEPTH + 1):
        deep = [deep]
    with pytest.raises(JobDataError, match="nested more than"):
        dump_data(deep)
    ok: Any = 1
    for _ in range(MAX_JSON_DEPTH):
        ok = [ok]
    assert dump_data(ok).count("[") == MAX_JSON_DEPTH
    many = {"k": ["[" * 300, "{" * 300]}  # brackets in strings are not nesting
    assert json.loads(dump_data(many)) == many
