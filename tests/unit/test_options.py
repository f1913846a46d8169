"""Job options: every option good and bad, aliases, combinations, defaults, fuzzing."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from taskschedd import Scheduler
from taskschedd.errors import JobDataError, OptionError
from taskschedd.model import JobQuery
from taskschedd.options import (
    ALIASES,
    DEFAULT_NAMES,
    OPTION_NAMES,
    Defaults,
    JobOptions,
    dump_data,
    resolve,
    stored_options,
)
from taskschedd.timeutil import format_time

ISO = "2026-01-31T08:00:00Z"
ISO_TS = datetime(2026, 1, 31, 8, 0, tzinfo=UTC).timestamp()

# (option, given value, resolved value)
GOOD: list[tuple[str, Any, Any]] = [
    ("depends_on", ["a", "b"], ("a", "b")),
    ("depends_on", "a", ("a",)),
    ("depends_on", None, ()),
    ("on_dependency_failure", "run", "run"),
    ("at", 1700000000, 1700000000.0),
    ("at", "1700000000.5", 1700000000.5),
    ("at", ISO, ISO_TS),
    ("at", None, None),
    ("interval", 10, 10.0),
    ("interval", "5m", 300.0),
    ("interval", -1, -1.0),
    ("interval", "-1", -1.0),
    ("interval", 0, 0.0),
    ("interval_reference", "start", "start"),
    ("interval_reference", "end", "end"),
    ("cron", "*/5 * * * *", "*/5 * * * *"),
    ("cron", " @hourly ", "@hourly"),
    ("cron", None, None),
    ("timezone", "Europe/Zurich", "Europe/Zurich"),
    ("timezone", " America/New_York ", "America/New_York"),
    ("timezone", "UTC", "UTC"),
    ("timezone", None, None),
    ("limit", "reports", "reports"),
    ("limit", "queue:mail", "queue:mail"),
    ("limit", None, None),
    ("exclusive_key", "customer:42", "customer:42"),
    ("exclusive_key", None, None),
    ("retry", 3, 3),
    ("retry", -1, -1),
    ("retry", "2", 2),
    ("retry", 4.0, 4),
    ("retry_interval", "10s", 10.0),
    ("retry_interval", 0, 0.0),
    ("retry_backoff", "exponential", "exponential"),
    ("retry_backoff", "fixed", "fixed"),
    ("retry_backoff_max", "2h", 7200.0),
    ("timeout", 5, 5.0),
    ("timeout", "1m30s", 90.0),
    ("max_memory", "512M", 512),
    ("max_memory", "2G", 2048),
    ("max_memory", "1.5GiB", 1536),
    ("max_memory", 300, 300),
    ("max_memory", 64.0, 64),
    ("max_memory", "100kb", 1),
    ("max_memory", 0, 0),
    ("ignore_max_children", True, True),
    ("ignore_max_children", "yes", True),
    ("ignore_max_children", 0, False),
    ("ignore_data", "false", False),
    ("id", "job-1:a@b.c_d", "job-1:a@b.c_d"),
    ("id", None, None),
    ("priority", 5, 5),
    ("priority", -3, -3),
    ("priority", "7", 7),
    ("queue", "mail.high-1_x", "mail.high-1_x"),
    ("expires", ISO, ISO_TS),
]

# (option, bad value, words the message must contain: what is accepted)
BAD: list[tuple[str, Any, tuple[str, ...]]] = [
    ("at", "tomorrow", ("ISO 8601", "unix timestamp")),
    ("at", True, ("ISO 8601",)),
    ("at", -5, ("ISO 8601",)),
    ("at", [], ("ISO 8601",)),
    ("interval", -2, ("duration", "-1")),
    ("interval", "soon", ("duration", "-1")),
    ("interval", True, ("duration",)),
    ("interval", float("inf"), ("duration",)),
    ("interval_reference", "middle", ("end or start",)),
    ("interval_reference", 1, ("end or start",)),
    ("cron", "* *", ("5 fields",)),
    ("cron", "61 * * * *", ("minute", "0-59")),
    ("cron", 5, ("cron expression",)),
    ("timezone", "Mars/Olympus_Mons", ("IANA time zone name",)),
    ("timezone", "../../etc/passwd", ("IANA time zone name",)),
    ("timezone", "", ("IANA time zone name",)),
    ("timezone", 1, ("IANA time zone name",)),
    ("limit", "", ("limit name",)),
    ("limit", "a b", ("limit name",)),
    ("limit", 7, ("limit name",)),
    ("limit", "x" * 129, ("limit name",)),
    ("exclusive_key", "", ("exclusive_key", "printable")),
    ("exclusive_key", "a\nb", ("printable",)),
    ("exclusive_key", "k" * 201, ("1-200",)),
    ("exclusive_key", 42, ("exclusive_key",)),
    ("retry", -2, ("integer >= -1",)),
    ("retry", 1.5, ("integer >= -1",)),
    ("retry", True, ("integer >= -1",)),
    ("retry", "x", ("integer >= -1",)),
    ("retry_interval", -1, ("duration",)),
    ("retry_interval", "1y", ("duration",)),
    ("retry_interval", float("nan"), ("duration",)),
    ("retry_backoff", "linear", ("fixed or exponential",)),
    ("retry_backoff_max", "x", ("duration",)),
    ("timeout", -3, ("duration",)),
    ("timeout", float("inf"), ("duration",)),
    ("timeout", {}, ("duration",)),
    ("max_memory", "lots", ("megabytes", "512MB", "16TiB")),
    ("max_memory", -1, ("megabytes",)),
    ("max_memory", "17TiB", ("16TiB",)),
    ("max_memory", -1.5, ("megabytes",)),
    ("max_memory", True, ("megabytes",)),
    ("ignore_max_children", "maybe", ("true or false",)),
    ("ignore_max_children", 2, ("true or false",)),
    ("ignore_data", None, ("true or false",)),
    ("id", "has space", ("letters, digits",)),
    ("id", "", ("letters, digits",)),
    ("id", 5, ("letters, digits",)),
    ("id", "x" * 129, ("1-128",)),
    ("priority", 2**31, ("integer from",)),
    ("priority", 1.5, ("integer from",)),
    ("priority", False, ("integer from",)),
    ("queue", "", ("queue name",)),
    ("queue", "a b", ("queue name",)),
    ("queue", 5, ("queue name",)),
    ("queue", "x" * 65, ("1-64",)),
    ("expires", "never", ("ISO 8601",)),
    ("depends_on", {"a": 1}, ("list of at most 10000 distinct job ids",)),
    ("depends_on", ["a b"], ("1-128 letters",)),
    ("depends_on", ["a", "a"], ("given more than once",)),
    ("depends_on", ["x"] * 10_001, ("more than 10000",)),
    ("on_dependency_failure", "skip", ("cancel or run",)),
]


@pytest.mark.parametrize(("name", "value", "expected"), GOOD)
def test_good_values_are_normalised(name: str, value: Any, expected: Any) -> None:
    needs = {"on_dependency_failure": {"depends_on": ["a"]}, "timezone": {"cron": "@daily"}}
    given = {name: value, **needs.get(name, {})}
    opts, explicit = resolve(given)
    assert getattr(opts, name) == expected
    assert explicit == set(given)


@pytest.mark.parametrize(("name", "value", "accepted"), BAD)
def test_bad_values_name_the_option_and_what_is_accepted(
    name: str, value: Any, accepted: tuple[str, ...]
) -> None:
    with pytest.raises(OptionError) as info:
        resolve({name: value})
    message = str(info.value)
    assert name in message or (name == "cron" and message.startswith("cron:"))
    for word in accepted:
        assert word in message


def test_every_option_is_covered_good_and_bad() -> None:
    assert {n for n, _, _ in GOOD} == set(OPTION_NAMES)
    assert {n for n, _, _ in BAD} == set(OPTION_NAMES)


def test_force_spawn_is_an_alias_of_ignore_max_children() -> None:
    assert ALIASES == {"force_spawn": "ignore_max_children"}
    opts, explicit = resolve({"force_spawn": True})
    assert opts.ignore_max_children is True
    assert explicit == {"ignore_max_children"}
    with pytest.raises(OptionError, match=r"given twice.*force_spawn"):
        resolve({"force_spawn": True, "ignore_max_children": False})
    with pytest.raises(
        OptionError, match=r"'ignore_max_children': expected true or false.*given as 'force_spawn'"
    ):
        resolve({"force_spawn": "sometimes"})


def test_unknown_option_suggests_the_closest_and_lists_accepted() -> None:
    with pytest.raises(OptionError) as info:
        resolve({"retyr": 3})
    message = str(info.value)
    assert "unknown option 'retyr'" in message
    assert "did you mean 'retry'?" in message
    for name in (*OPTION_NAMES, "force_spawn"):
        assert name in message
    with pytest.raises(OptionError, match=r"unknown option 'zzzzzz'; accepted: at, "):
        resolve({"zzzzzz": 1})
    with pytest.raises(OptionError, match=r"option names must be strings"):
        resolve({1: 2})  # type: ignore[dict-item]


def test_cron_and_interval_exclude_each_other() -> None:
    with pytest.raises(OptionError, match=r"'cron' and 'interval' exclude each other"):
        resolve({"cron": "@hourly", "interval": 60})
    # A default of one gives way to the other given explicitly.
    opts, _ = resolve({"cron": "@hourly"}, Defaults.parse({"default_interval": 60}))
    assert (opts.cron, opts.interval) == ("@hourly", 0.0)
    opts, _ = resolve({"interval": 30}, Defaults.parse({"default_cron": "@daily"}))
    assert (opts.cron, opts.interval) == (None, 30.0)
    with pytest.raises(OptionError, match=r"'default_cron' and 'default_interval'"):
        Defaults.parse({"default_cron": "@daily", "default_interval": 5})
    # interval 0 means "none", so it does not conflict.
    opts, _ = resolve({"cron": "@hourly", "interval": 0})
    assert opts.cron == "@hourly"


def test_expires_must_be_later_than_at() -> None:
    with pytest.raises(OptionError, match=r"'expires' must be later than 'at'"):
        resolve({"at": 2000, "expires": 2000})
    with pytest.raises(OptionError, match=r"'expires' must be later than 'at'"):
        resolve({"at": 2000, "expires": 1000})
    opts, _ = resolve({"at": 2000, "expires": 2001})
    assert (opts.at, opts.expires) == (2000.0, 2001.0)


def test_exponential_backoff_cap_must_not_be_below_the_interval() -> None:
    with pytest.raises(OptionError, match=r"'retry_backoff_max' must be >= 'retry_interval'"):
        resolve({"retry_backoff": "exponential", "retry_interval": 60, "retry_backoff_max": 10})
    opts, _ = resolve({"retry_backoff": "fixed", "retry_interval": 60, "retry_backoff_max": 10})
    assert opts.retry_interval == 60.0


def test_defaults_are_the_originals() -> None:
    opts, explicit = resolve({})
    assert explicit == set()
    assert opts == JobOptions()
    assert (opts.at, opts.interval, opts.interval_reference) == (None, 0.0, "end")
    assert (opts.retry, opts.retry_interval, opts.timeout) == (0, 300.0, 0.0)
    assert (opts.ignore_max_children, opts.ignore_data, opts.id) == (False, False, None)
    assert (opts.priority, opts.queue, opts.cron, opts.expires) == (0, "default", None, None)
    assert (opts.retry_backoff, opts.retry_backoff_max) == ("fixed", 3600.0)


def test_scheduler_defaults_apply_and_explicit_options_win() -> None:
    defaults = Defaults.parse({"default_retry": 2, "timeout": "1m", "default_force_spawn": True})
    opts, explicit = resolve({"retry": 5}, defaults)
    assert (opts.retry, opts.timeout, opts.ignore_max_children) == (5, 60.0, True)
    assert explicit == {"retry"}
    assert defaults.updated({"default_retry": 1}).values["retry"] == 1
    assert defaults.values["retry"] == 2  # updated() returns a new Defaults
    with pytest.raises(OptionError) as info:
        Defaults.parse({"default_id": "x"})
    assert "unknown option 'default_id'" in str(info.value)
    assert "default_retry" in str(info.value)
    with pytest.raises(OptionError, match=r"'retry'.*integer"):
        Defaults.parse({"default_retry": "often"})
    assert "default_at" in DEFAULT_NAMES and "default_ignore_data" not in DEFAULT_NAMES


def test_scheduler_set_options_applies_to_later_jobs(tmp_path: Path) -> None:
    with Scheduler(f"sqlite:///{tmp_path}/s.db", create=True, default_retry=1) as scheduler:
        first = scheduler.add_job("tests.api_jobs.Echo")
        scheduler.set_options(default_retry=4, default_queue="bulk")
        second = scheduler.add_job("tests.api_jobs.Echo")
        third = scheduler.add_job("tests.api_jobs.Echo", retry=0)
        with pytest.raises(OptionError, match=r"default_retyr.*did you mean 'default_retry'"):
            scheduler.set_options(default_retyr=1)
        assert scheduler.get_job(first.id).options.retry == 1
        assert scheduler.get_job(first.id).queue == "default"
        assert (scheduler.get_job(second.id).options.retry, second.queue) == (4, "bulk")
        assert scheduler.get_job(third.id).options.retry == 0


def test_stored_options_round_trip() -> None:
    opts, _ = resolve({"retry": 3, "cron": "@daily", "queue": "q", "id": "x", "at": 5})
    stored = opts.stored()
    assert "id" not in stored and "at" not in stored
    back = stored_options(json.loads(json.dumps({**stored, "from_the_future": 1})))
    assert back == JobOptions(**{**opts.__dict__, "id": None, "at": None})


def test_job_data_must_be_json() -> None:
    assert dump_data({"b": 1, "a": [None, True]}) == '{"a":[null,true],"b":1}'
    for bad in (object(), {1, 2}, float("nan"), {"x": float("inf")}, b"bytes"):
        with pytest.raises(JobDataError, match=r"JSON-serialisable"):
            dump_data(bad)


# -- property tests ----------------------------------------------------------------------------

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20)
    | st.sampled_from(["-1", "5m", "1h30m", "@hourly", "*/5 * * * *", ISO, "start", "exponential"]),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3)
    ),
    max_leaves=5,
)
option_names = st.sampled_from([*OPTION_NAMES, *ALIASES]) | st.text(max_size=12)
option_dicts = st.dictionaries(option_names, json_values, max_size=6)


@settings(max_examples=400, deadline=None)
@given(given_options=option_dicts, default_retry=st.sampled_from([None, 0, 3, -1]))
def test_resolve_returns_options_or_raises_option_error(
    given_options: dict[str, Any], default_retry: int | None
) -> None:
    defaults = Defaults.parse({} if default_retry is None else {"default_retry": default_retry})
    try:
        opts, explicit = resolve(given_options, defaults)
    except OptionError as exc:
        assert str(exc)
        return
    assert isinstance(opts, JobOptions)
    assert explicit <= set(OPTION_NAMES)
    assert not (opts.cron and opts.interval)
    for number in (opts.interval, opts.retry_interval, opts.timeout, opts.retry_backoff_max):
        assert math.isfinite(number)
    json.dumps(opts.stored(), allow_nan=False)  # storable
    for moment in (opts.at, opts.expires):
        if moment is not None:
            assert format_time(moment).endswith("Z")  # showable


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(given_options=option_dicts, data=json_values)
def test_add_job_writes_nothing_when_it_raises(
    tmp_path: Path, given_options: dict[str, Any], data: Any
) -> None:
    # cls and data are add_job's own parameters, not options: Python itself refuses them twice.
    given_options = {k: v for k, v in given_options.items() if k not in ("cls", "data")}
    with Scheduler(f"sqlite:///{tmp_path}/fuzz.db", create=True) as scheduler:
        before = len(scheduler.store.find(JobQuery()))
        events = scheduler.store.last_event_seq()
        try:
            scheduler.add_job("tests.api_jobs.Echo", data, **given_options)
        except (OptionError, JobDataError):
            assert len(scheduler.store.find(JobQuery())) == before
            assert scheduler.store.last_event_seq() == events
        else:
            assert len(scheduler.store.find(JobQuery())) == before + 1


#: The stored option names of 0.5.0, which nodes of that version read (and quarantine a
#: job as corrupt when a value does not check): a cluster is upgraded node by node.
OPTIONS_OF_0_5 = {
    "interval", "interval_reference", "retry", "retry_interval", "retry_backoff",
    "retry_backoff_max", "timeout", "ignore_max_children", "ignore_data", "cron",
    "max_memory", "priority", "queue", "expires",
}  # fmt: skip


def test_a_job_without_dependencies_stores_only_what_0_5_reads() -> None:
    opts, _ = resolve({"retry": 2})
    assert set(opts.stored()) == OPTIONS_OF_0_5
    with_deps, _ = resolve({"depends_on": ["a"], "on_dependency_failure": "run"})
    stored = with_deps.stored()
    assert (stored["depends_on"], stored["on_dependency_failure"]) == (["a"], "run")
    assert stored_options(json.loads(opts.stored_json)) == opts


def test_on_dependency_failure_without_dependencies_is_refused() -> None:
    with pytest.raises(OptionError, match="'on_dependency_failure' needs 'depends_on'"):
        resolve({"on_dependency_failure": "run"})


def test_a_default_recurrence_with_dependencies_names_where_it_comes_from() -> None:
    defaults = Defaults.parse({"interval": 60})
    with pytest.raises(OptionError, match="its 'interval' comes from the defaults"):
        resolve({"depends_on": ["a"]}, defaults)


def test_a_default_time_zone_reaches_cron_jobs_only() -> None:
    defaults = Defaults.parse({"timezone": "Europe/Zurich"})
    cron, _ = resolve({"cron": "@daily"}, defaults)
    plain, _ = resolve({"retry": 1}, defaults)
    assert (cron.timezone, plain.timezone) == ("Europe/Zurich", None)
    assert set(plain.stored()) == OPTIONS_OF_0_5  # nothing 0.5 cannot read


def test_a_cron_job_s_first_run_is_read_in_its_zone() -> None:
    from datetime import datetime
    from zoneinfo import ZoneInfo

    from taskschedd.rules import first_run_at

    opts, _ = resolve({"cron": "0 7 * * *", "timezone": "Asia/Tokyo"})
    at = first_run_at(opts, datetime(2026, 6, 1, 0, 0, tzinfo=UTC).timestamp())
    assert datetime.fromtimestamp(at, ZoneInfo("Asia/Tokyo")).isoformat() == (
        "2026-06-02T07:00:00+09:00"  # 00:00 UTC is 09:00 there: the next 07:00 is tomorrow
    )
