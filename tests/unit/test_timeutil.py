"""Durations and points in time: parsing, formatting, round trips."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from taskschedd.timeutil import (
    DURATION_HELP,
    MAX_TIME,
    TIME_HELP,
    format_duration,
    format_time,
    parse_duration,
    parse_time,
)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        (90, 90.0),
        (1.5, 1.5),
        (0, 0.0),
        ("90", 90.0),
        ("2.5", 2.5),
        ("10s", 10.0),
        ("5m", 300.0),
        ("2h", 7200.0),
        ("7d", 604800.0),
        ("1w", 604800.0),
        ("1h30m", 5400.0),
        ("1d2h3m4s", 93784.0),
        ("250ms", 0.25),
        ("1.5h", 5400.0),
        (" 10S ", 10.0),
    ],
)
def test_parse_duration(text: Any, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize(
    "bad",
    [
        *(-1, "-5", "abc", "", "10x", "1h 30m", "h", True, None, [], float("inf"), float("nan")),
        *("inf", "nan", "1e999", "5m-1s"),
    ],
)
def test_parse_duration_rejects(bad: Any) -> None:
    with pytest.raises(ValueError) as info:
        parse_duration(bad, what="option 'timeout'")
    message = str(info.value)
    assert message.startswith("option 'timeout': ")
    assert DURATION_HELP in message or "negative" in message or "finite" in message


ISO_TS = datetime(2026, 1, 31, 8, 0, tzinfo=UTC).timestamp()


@pytest.mark.parametrize(
    ("value", "ts"),
    [
        (0, 0.0),
        (1700000000, 1700000000.0),
        ("1700000000.25", 1700000000.25),
        ("2026-01-31T08:00:00Z", ISO_TS),
        ("2026-01-31T08:00:00z", ISO_TS),
        ("2026-01-31T09:00:00+01:00", ISO_TS),
        ("2026-01-31T08:00:00", ISO_TS),  # naive = UTC
        ("2026-01-31 08:00", ISO_TS),
        (datetime(2026, 1, 31, 8, 0), ISO_TS),
        (datetime(2026, 1, 31, 3, 0, tzinfo=timezone(timedelta(hours=-5))), ISO_TS),
        (MAX_TIME, MAX_TIME),
    ],
)
def test_parse_time(value: Any, ts: float) -> None:
    assert parse_time(value) == pytest.approx(ts)


@pytest.mark.parametrize(
    "bad",
    [
        *("tomorrow", "", True, None, -1, float("inf"), float("nan"), 1e300, MAX_TIME + 1, []),
        *("2026-13-01T00:00:00Z", "1969-12-31T23:59:59Z", "9999-12-31T23:59:59-05:00"),
    ],
)
def test_parse_time_rejects(bad: Any) -> None:
    with pytest.raises(ValueError) as info:
        parse_time(bad, what="option 'at'")
    assert str(info.value).startswith("option 'at': expected ")
    assert TIME_HELP in str(info.value)


def test_format_time() -> None:
    assert format_time(None) == "-"
    assert format_time(0) == "1970-01-01T00:00:00.000Z"
    assert format_time(ISO_TS + 0.25) == "2026-01-31T08:00:00.250Z"
    assert format_time(MAX_TIME) == "9999-12-31T23:59:59.000Z"


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0s"),
        (0.25, "0.25s"),
        (1.5, "1.5s"),
        (9.999, "10s"),
        (42, "42s"),
        (60, "1m"),
        (303, "5m3s"),
        (3600, "1h"),
        (7500, "2h5m"),
        (86400 * 3 + 3600 * 4 + 59, "3d4h"),
    ],
)
def test_format_duration(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


@settings(max_examples=300, deadline=None)
@given(st.floats(min_value=0, max_value=MAX_TIME))
def test_time_round_trip_to_the_millisecond(ts: float) -> None:
    text = format_time(ts)
    assert parse_time(text) == pytest.approx(ts, abs=0.0006)
    assert format_time(parse_time(text)) == text


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(), st.text()))
def test_parse_time_returns_a_showable_time_or_raises_value_error(value: Any) -> None:
    try:
        ts = parse_time(value)
    except ValueError:
        return
    assert 0 <= ts <= MAX_TIME
    format_time(ts)


@settings(max_examples=300, deadline=None)
@given(st.floats(min_value=0, max_value=1e12))
def test_duration_round_trips_through_its_number(seconds: float) -> None:
    assert parse_duration(seconds) == seconds
    assert parse_duration(repr(seconds)) == seconds


@settings(max_examples=300, deadline=None)
@given(
    st.integers(0, 30), st.integers(0, 23), st.integers(0, 59), st.integers(0, 59), st.booleans()
)
def test_composed_durations_add_up(d: int, h: int, m: int, s: int, zeros: bool) -> None:
    parts = [(d, "d"), (h, "h"), (m, "m"), (s, "s")]
    text = "".join(f"{n}{u}" for n, u in parts if n or zeros) or "0s"
    assert parse_duration(text) == d * 86400 + h * 3600 + m * 60 + s


@settings(max_examples=300, deadline=None)
@given(st.floats(min_value=0, max_value=1e8))
def test_format_duration_parses_back_within_its_precision(seconds: float) -> None:
    back = parse_duration(format_duration(seconds))
    if seconds < 10:
        assert back == pytest.approx(seconds, abs=0.0051)
    else:
        precision = 1 if seconds < 3600 else 60 if seconds < 86400 else 3600
        assert seconds - precision < back <= seconds + 1e-9


@settings(max_examples=200, deadline=None)
@given(st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(), st.text()))
def test_parse_duration_returns_a_finite_non_negative_number_or_raises(value: Any) -> None:
    try:
        seconds = parse_duration(value)
    except ValueError:
        return
    assert 0 <= seconds < float("inf")
