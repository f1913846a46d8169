"""Property tests: what the validators accept is kept exactly, and job data is JSON that
round-trips exactly through add -> store -> worker -> result.

tests/unit/test_config.py and tests/unit/test_options.py already check that random input
raises only ConfigError/OptionError (the validators never crash). These check the other
half: valid input is accepted and survives unchanged, on each store, and through the
daemon's forked workers.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from taskschedd.config import DURATION_RANGES, INT_RANGES, from_mapping, load
from taskschedd.model import JobStatus
from taskschedd.options import JobOptions, resolve, stored_options
from taskschedd.scheduler import JobSpec
from taskschedd.timeutil import parse_duration
from taskschedd.worker import Worker
from tests.faults.harness import FaultDaemon, StoreKind, wait_all_final
from tests.faults.jobs import MODULE

Factory = Callable[..., FaultDaemon]
ECHO = f"{MODULE}.Echo"


def with_fixtures(examples: int) -> settings:
    """Settings for a property test that uses pytest fixtures shared by its examples."""
    return settings(
        max_examples=examples,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )


# -- JSON values ---------------------------------------------------------------------------
# Any JSON text Python can write: unbounded integers, finite floats (-0.0 too), any string
# (lone surrogates included: JSON escapes them), objects with string keys.
json_text = st.text(st.characters(codec=None, exclude_categories=()), max_size=12)
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | json_text,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(json_text, inner, max_size=4),
    max_leaves=16,
)


def same(a: Any, b: Any) -> bool:
    """Equal and of the same JSON type all the way down (True is not 1, 1.0 is not 1,
    -0.0 is not 0.0)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float):
        return math.copysign(1.0, a) == math.copysign(1.0, b) and a == b
    return bool(a == b)


def test_same_tells_json_types_apart() -> None:
    assert same({"a": [1, 2.0, None]}, {"a": [1, 2.0, None]})
    assert not same(True, 1) and not same(1.0, 1) and not same(-0.0, 0.0)
    assert not same({"a": 1}, {"b": 1}) and not same([1], [1, 2])


@with_fixtures(60)
@given(value=json_values)
def test_any_json_value_round_trips_exactly_through_an_in_process_worker(
    kind: StoreKind, value: Any
) -> None:
    with kind.open() as store:
        s = kind.scheduler()
        job = s.add_job(ECHO, value)
        worker = Worker(store, allowed_modules=[MODULE], node="prop", lease=30)
        outcome = worker.run_one(job_id=job.id)
        assert outcome is not None and outcome.settled
        job.refresh()
        assert job.status == JobStatus.DONE, job.errors
        assert same(job.data, value), (job.data, value)
        assert same(job.result, value), (job.result, value)


@pytest.fixture
def echo_node(kind: StoreKind, node_factory: Factory) -> FaultDaemon:
    """One daemon for every example of a test."""
    return node_factory(kind, pm="static", min_children=2, max_children=2).start()


@with_fixtures(2)
@given(values=st.lists(json_values, min_size=25, max_size=25))
def test_json_values_round_trip_exactly_through_the_daemons_workers(
    kind: StoreKind, echo_node: FaultDaemon, values: list[Any]
) -> None:
    s = kind.scheduler()
    jobs = s.add_jobs([JobSpec(ECHO, value) for value in values])
    done = wait_all_final(s.store, [j.id for j in jobs], timeout=30)
    for job, value in zip(jobs, values, strict=True):
        record = done[job.id]
        assert record.status == JobStatus.DONE, record.errors
        assert same(record.data, value) and same(record.result, value), (record.result, value)


# -- job options ---------------------------------------------------------------------------
seconds = st.floats(min_value=0, max_value=10**7, allow_nan=False) | st.integers(0, 10**7)
duration_text = st.builds(
    lambda n, unit: f"{n}{unit}", st.integers(0, 10**4), st.sampled_from(["s", "m", "h", "d"])
)
names = st.from_regex(r"[A-Za-z0-9._-]{1,64}", fullmatch=True)
valid_options = st.fixed_dictionaries(
    {},
    optional={
        "interval": seconds | duration_text | st.just(-1),
        "interval_reference": st.sampled_from(["end", "start"]),
        "retry": st.integers(-1, 2**31),
        "retry_interval": seconds | duration_text,
        "timeout": seconds | duration_text,
        "ignore_max_children": st.booleans(),
        "priority": st.integers(-(2**31), 2**31 - 1),
        "queue": names,
        "id": st.from_regex(r"[A-Za-z0-9._:@-]{1,128}", fullmatch=True),
        "at": st.floats(min_value=1e9, max_value=4e9, allow_nan=False),
    },
)


@settings(max_examples=300, deadline=None)
@given(given_options=valid_options)
def test_valid_options_are_accepted_as_given_and_survive_storing(
    given_options: dict[str, Any],
) -> None:
    opts, explicit = resolve(given_options)
    assert explicit == set(given_options)
    for name, value in given_options.items():
        got = getattr(opts, name)
        if name in ("interval", "retry_interval", "timeout"):
            assert got == (-1.0 if value == -1 else parse_duration(value)), name
        else:
            assert got == value, name
    stored = stored_options(json.loads(json.dumps(opts.stored(), allow_nan=False)))
    assert stored == JobOptions(**{**opts.stored(), "id": None, "at": None})
    again, _ = resolve({**opts.stored(), "id": opts.id, "at": opts.at})
    assert again == opts  # resolving is idempotent


@with_fixtures(40)
@given(given_options=valid_options)
def test_a_stored_job_keeps_its_options_exactly(
    kind: StoreKind, given_options: dict[str, Any]
) -> None:
    given_options.pop("id", None)  # examples share the store: let it choose ids
    opts, _ = resolve(given_options)
    s = kind.scheduler()
    record = s.get_job(s.add_job(ECHO, None, **given_options).id).record
    assert record.options.stored() == opts.stored()
    if opts.at is not None:
        assert abs(record.at - opts.at) < 1e-5  # times are stored to 10 us


# -- node configuration --------------------------------------------------------------------
@st.composite
def valid_configs(draw: st.DrawFn) -> dict[str, Any]:
    pm = draw(st.sampled_from(["dynamic", "static", "ondemand"]))
    low = 1 if pm == "static" else 0
    min_children = draw(st.integers(low, 8))
    config: dict[str, Any] = {
        "pm": pm,
        "min_children": min_children,
        "max_children": draw(st.integers(max(1, min_children), 16)),
        "node": draw(st.from_regex(r"[A-Za-z0-9._@:-]{1,128}", fullmatch=True)),
        "queues": draw(st.lists(names, min_size=1, max_size=4, unique=True)),
        "logging": {
            "format": draw(st.sampled_from(["json", "console"])),
            "level": draw(st.sampled_from(["debug", "info", "warning", "error"])),
        },
    }
    for key, (low, high) in DURATION_RANGES.items():  # anywhere in the documented range
        if draw(st.booleans()):
            units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
            unit = draw(st.sampled_from([u for u, size in units.items() if size <= high]))
            text = st.integers(math.ceil(low / units[unit]), int(high // units[unit])).map(
                lambda n, unit=unit: f"{n}{unit}"
            )
            config[key] = draw(
                st.floats(min_value=low, max_value=high)
                | st.integers(math.ceil(low), int(high))
                | text
            )
    if draw(st.booleans()):
        config["max_jobs_per_worker"] = draw(st.integers(*INT_RANGES["max_jobs_per_worker"]))
    return config


DURATION_KEYS = ("lease", "idle_timeout", "shutdown_grace", "kill_grace", "reap_interval",
                 "poll_interval", "heartbeat_interval", "retention")  # fmt: skip


@settings(max_examples=200, deadline=None)
@given(config=valid_configs())
def test_valid_configurations_are_accepted_with_their_values(config: dict[str, Any]) -> None:
    cfg = from_mapping(config, path="/etc/taskschedd/taskschedd.yaml")
    for key, value in config.items():
        got = getattr(cfg, key)
        if key in DURATION_KEYS:
            assert got == parse_duration(value), key
        elif key == "logging":
            assert (got.format, got.level) == (value["format"], value["level"])
        else:
            assert got == value, key


@with_fixtures(60)
@given(config=valid_configs())
def test_a_configuration_file_means_what_its_mapping_means(
    tmp_path: Path, config: dict[str, Any]
) -> None:
    path = tmp_path / "taskschedd.yaml"
    path.write_text(yaml.safe_dump(config))
    assert load(path) == from_mapping(config, path=str(path))
