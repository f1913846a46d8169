"""Cron parsing and next_after: known dates, error messages, DST, and a brute-force property."""

from __future__ import annotations

from datetime import UTC, datetime, tzinfo
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from taskschedd.cron import CronExpr
from taskschedd.errors import OptionError

ZURICH = ZoneInfo("Europe/Zurich")


def ts(text: str) -> float:
    """Unix time of an ISO 8601 string with an explicit offset."""
    return datetime.fromisoformat(text).timestamp()


def iso(value: float, tz: tzinfo = UTC) -> str:
    return datetime.fromtimestamp(value, tz).isoformat()


def nxt(expr: str, after: str, tz: tzinfo | None = None) -> str:
    result = CronExpr.parse(expr).next_after(ts(after), tz)
    return iso(result, UTC if tz is None else tz)


# --- parsing ---------------------------------------------------------------------------------


def test_parse_fields() -> None:
    expr = CronExpr.parse("*/15 9-17 1,15 JAN-mar/2 mon-FRI")
    assert expr.minutes == (0, 15, 30, 45)
    assert expr.hours == tuple(range(9, 18))
    assert expr.days == (1, 15)
    assert expr.months == (1, 3)
    assert expr.weekdays == (1, 2, 3, 4, 5)
    assert expr.day_or_weekday


def test_parse_steps_and_sunday() -> None:
    assert CronExpr.parse("5/20 * * * *").minutes == (5, 25, 45)
    assert CronExpr.parse("0-30/10 * * * *").minutes == (0, 10, 20, 30)
    assert CronExpr.parse("0 0 * * 7").weekdays == (0,)
    assert CronExpr.parse("0 0 * * 0,7").weekdays == (0,)
    assert CronExpr.parse("0 0 * * 5-7").weekdays == (0, 5, 6)
    assert CronExpr.parse("0 0 * * FRI-SUN").weekdays == (0, 5, 6)
    assert CronExpr.parse("0 0 * * */2").weekdays == (0, 2, 4, 6)


def test_str_is_original_text_and_macros() -> None:
    assert str(CronExpr.parse("  */5 * * * *")) == "  */5 * * * *"
    assert str(CronExpr.parse("@Hourly")) == "@Hourly"
    assert repr(CronExpr.parse("@daily")) == "CronExpr.parse('@daily')"
    plain = {"@yearly": "0 0 1 1 *", "@annually": "0 0 1 1 *", "@monthly": "0 0 1 * *"}
    plain |= {"@weekly": "0 0 * * 0", "@daily": "0 0 * * *", "@midnight": "0 0 * * *"}
    plain["@hourly"] = "0 * * * *"
    for macro, fields in plain.items():
        a, b = CronExpr.parse(macro), CronExpr.parse(fields)
        assert (a.minutes, a.hours, a.days, a.months, a.weekdays, a.day_or_weekday) == (
            b.minutes,
            b.hours,
            b.days,
            b.months,
            b.weekdays,
            b.day_or_weekday,
        )


def test_day_or_weekday_flag() -> None:
    assert CronExpr.parse("0 0 13 * FRI").day_or_weekday
    assert not CronExpr.parse("0 0 * * FRI").day_or_weekday
    assert not CronExpr.parse("0 0 13 * *").day_or_weekday
    assert not CronExpr.parse("0 0 */2 * MON").day_or_weekday


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "x",
            "cron: expected 5 fields (minute hour day month weekday) or a macro like @hourly, "
            "got 'x'",
        ),
        ("", "expected 5 fields"),
        ("* * * *", "expected 5 fields"),
        ("* * * * * *", "expected 5 fields"),
        ("@hourly *", "unknown macro '@hourly *'"),
        ("@reboot", "unknown macro '@reboot'; expected one of @yearly, @annually"),
        ("0 25 * * *", "cron: field 2 (hour) value '25' is out of range 0-23"),
        ("60 * * * *", "cron: field 1 (minute) value '60' is out of range 0-59"),
        ("0 0 0 * *", "cron: field 3 (day of month) value '0' is out of range 1-31"),
        ("0 0 32 * *", "field 3 (day of month) value '32' is out of range 1-31"),
        ("0 0 * 13 *", "cron: field 4 (month) value '13' is out of range 1-12 or JAN-DEC"),
        ("0 0 * * 8", "cron: field 5 (day of week) value '8' is out of range 0-7 or SUN-SAT"),
        ("0 0 * FOO *", "cron: field 4 (month) value 'FOO' is not 1-12 or JAN-DEC"),
        ("0 0 * * MONDAY", "field 5 (day of week) value 'MONDAY' is not 0-7 or SUN-SAT"),
        ("a * * * *", "cron: field 1 (minute) value 'a' is not a number 0-59"),
        ("0 MON * * *", "cron: field 2 (hour) value 'MON' is not a number 0-23"),
        ("\uff15 * * * *", "field 1 (minute) value '\uff15' is not a number 0-59"),
        ("-1 * * * *", "field 1 (minute) item '-1' is malformed; expected N, A-B, *"),
        ("5- * * * *", "field 1 (minute) item '5-' is malformed"),
        ("1,,2 * * * *", "cron: field 1 (minute) has an empty item in '1,,2'"),
        ("0 5-1 * * *", "cron: field 2 (hour) range '5-1' is reversed; expected start <= end"),
        ("*/0 * * * *", "cron: field 1 (minute) step '0' in '*/0' must be a whole number >= 1"),
        ("*/x * * * *", "step 'x' in '*/x' must be a whole number >= 1"),
        ("0 0 30 2 *", "cron: '0 0 30 2 *' can never match: field 3 (day of month)"),
        ("0 0 31 4,6,9,11 *", "can never match"),
        ("0 0 31 FEB */2", "can never match"),
    ],
)
def test_parse_errors(text: str, message: str) -> None:
    with pytest.raises(OptionError) as info:
        CronExpr.parse(text)
    assert message in str(info.value)
    assert isinstance(info.value, ValueError)


def test_rare_but_possible_expressions_parse() -> None:
    # Feb 29 exists; OR rule makes "30 Feb or Monday" possible.
    CronExpr.parse("0 0 29 2 *")
    CronExpr.parse("0 0 30 2 MON")


# --- next_after on known dates ---------------------------------------------------------------


def test_every_five_minutes() -> None:
    assert nxt("*/5 * * * *", "2024-06-07T10:00:00+00:00") == "2024-06-07T10:05:00+00:00"
    assert nxt("*/5 * * * *", "2024-06-07T10:02:59.9+00:00") == "2024-06-07T10:05:00+00:00"
    assert nxt("*/5 * * * *", "2024-06-07T10:04:59.9999999+00:00") == "2024-06-07T10:05:00+00:00"
    assert nxt("*/5 * * * *", "2024-06-07T23:58:00+00:00") == "2024-06-08T00:00:00+00:00"


def test_strictly_after_and_whole_minutes() -> None:
    expr = CronExpr.parse("* * * * *")
    t = ts("2024-06-07T10:00:00+00:00")
    assert expr.next_after(t) == t + 60
    assert expr.next_after(t - 0.5) == t
    assert expr.next_after(t + 30.25) == t + 60


def test_weekdays_at_nine() -> None:
    expr = "0 9 * * MON-FRI"
    # Friday 2024-06-07 at 09:00 -> Monday.
    assert nxt(expr, "2024-06-07T09:00:00+00:00") == "2024-06-10T09:00:00+00:00"
    assert nxt(expr, "2024-06-07T08:59:00+00:00") == "2024-06-07T09:00:00+00:00"
    assert nxt(expr, "2024-06-08T12:00:00+00:00") == "2024-06-10T09:00:00+00:00"


def test_last_of_range() -> None:
    expr = "55-59 23 * * *"
    assert nxt(expr, "2024-06-07T23:58:00+00:00") == "2024-06-07T23:59:00+00:00"
    assert nxt(expr, "2024-06-07T23:59:00+00:00") == "2024-06-08T23:55:00+00:00"
    assert nxt("0 0 31 * *", "2024-04-01T00:00:00+00:00") == "2024-05-31T00:00:00+00:00"
    assert nxt("0 0 * DEC SAT", "2024-12-28T00:00:00+00:00") == "2025-12-06T00:00:00+00:00"


def test_feb_29_in_leap_years() -> None:
    expr = "0 12 29 2 *"
    assert nxt(expr, "2023-01-01T00:00:00+00:00") == "2024-02-29T12:00:00+00:00"
    assert nxt(expr, "2024-02-29T12:00:00+00:00") == "2028-02-29T12:00:00+00:00"
    # 2100 is not a leap year.
    assert nxt(expr, "2097-01-01T00:00:00+00:00") == "2104-02-29T12:00:00+00:00"
    # Feb 29 on a Sunday: once in 28 years here, still found.
    assert nxt("0 0 29 2 */7", "2004-03-01T00:00:00+00:00") == "2032-02-29T00:00:00+00:00"


def test_day_of_month_or_day_of_week() -> None:
    expr = "0 0 13 * FRI"  # both restricted: the 13th OR any Friday
    assert nxt(expr, "2024-06-07T00:00:00+00:00") == "2024-06-13T00:00:00+00:00"  # a Thursday
    assert nxt(expr, "2024-06-13T00:00:00+00:00") == "2024-06-14T00:00:00+00:00"  # a Friday
    # day-of-month starts with '*': both must match -> odd days that are Mondays.
    assert nxt("0 0 */2 * MON", "2024-06-01T00:00:00+00:00") == "2024-06-03T00:00:00+00:00"
    assert nxt("0 0 */2 * MON", "2024-06-03T00:00:00+00:00") == "2024-06-17T00:00:00+00:00"
    # day-of-week '*': only the day-of-month counts.
    assert nxt("0 0 13 * *", "2024-06-07T00:00:00+00:00") == "2024-06-13T00:00:00+00:00"
    # "30 FEB or Monday" fires on Mondays in February only.
    assert nxt("0 0 30 2 MON", "2024-01-01T00:00:00+00:00") == "2024-02-05T00:00:00+00:00"


def test_macros() -> None:
    at = "2024-06-07T10:30:00+00:00"  # a Friday
    assert nxt("@hourly", at) == "2024-06-07T11:00:00+00:00"
    assert nxt("@daily", at) == "2024-06-08T00:00:00+00:00"
    assert nxt("@midnight", at) == "2024-06-08T00:00:00+00:00"
    assert nxt("@weekly", at) == "2024-06-09T00:00:00+00:00"
    assert nxt("@monthly", at) == "2024-07-01T00:00:00+00:00"
    assert nxt("@yearly", at) == "2025-01-01T00:00:00+00:00"
    assert nxt("@ANNUALLY", at) == "2025-01-01T00:00:00+00:00"


def test_year_rollover() -> None:
    assert nxt("* * * * *", "2024-12-31T23:59:00+00:00") == "2025-01-01T00:00:00+00:00"
    assert nxt("30 8 1 JAN *", "2024-12-31T23:59:00+00:00") == "2025-01-01T08:30:00+00:00"
    assert nxt("0 0 1 1 *", "2025-01-01T00:00:00+00:00") == "2026-01-01T00:00:00+00:00"
    assert nxt("0 0 * 1 *", "2024-02-01T00:00:00+00:00") == "2025-01-01T00:00:00+00:00"


def test_time_zone_default_utc_and_fixed_offset() -> None:
    from datetime import timedelta, timezone

    assert nxt("0 9 * * *", "2024-06-07T10:00:00+00:00") == "2024-06-08T09:00:00+00:00"
    plus_530 = timezone(timedelta(hours=5, minutes=30))
    assert nxt("0 9 * * *", "2024-06-07T10:00:00+05:30", plus_530) == "2024-06-08T09:00:00+05:30"


def test_rejects_non_finite_time() -> None:
    with pytest.raises(ValueError, match="finite"):
        CronExpr.parse("* * * * *").next_after(float("nan"))


# --- DST with zoneinfo ------------------------------------------------------------------------


NEW_YORK = ZoneInfo("America/New_York")
LORD_HOWE = ZoneInfo("Australia/Lord_Howe")  # DST moves the clock by 30 minutes


def runs(expr: str, after: str, tz: tzinfo, count: int) -> list[str]:
    """The next ``count`` runs after ``after``, as ISO times in ``tz``."""
    out: list[str] = []
    at = ts(after)
    for _ in range(count):
        at = CronExpr.parse(expr).next_after(at, tz)
        out.append(iso(at, tz))
    return out


def test_dst_spring_forward_runs_a_skipped_fixed_time_at_the_end_of_the_gap() -> None:
    """Debian cron's rule: a job that names its minute and hour still runs on the day
    its time does not exist, once, when the clock reaches the end of the gap."""
    # Zurich 2024-03-31: 02:00 CET jumps to 03:00 CEST; 02:30 does not exist that day.
    assert runs("30 2 * * *", "2024-03-30T12:00:00+01:00", ZURICH, 2) == [
        "2024-03-31T03:00:00+02:00", "2024-04-01T02:30:00+02:00",
    ]  # fmt: skip
    # Two skipped times run once; a named time after the gap runs as usual.
    assert runs("0,30 2 * * *", "2024-03-31T00:00:00+01:00", ZURICH, 2) == [
        "2024-03-31T03:00:00+02:00", "2024-04-01T02:00:00+02:00",
    ]  # fmt: skip
    assert runs("15 2-3 * * *", "2024-03-31T00:00:00+01:00", ZURICH, 2) == [
        "2024-03-31T03:00:00+02:00", "2024-03-31T03:15:00+02:00",
    ]  # fmt: skip
    # New York 2024-03-10: 02:00 EST jumps to 03:00 EDT.
    assert runs("30 2 * * *", "2024-03-09T12:00:00-05:00", NEW_YORK, 2) == [
        "2024-03-10T03:00:00-04:00", "2024-03-11T02:30:00-04:00",
    ]  # fmt: skip
    # Lord Howe 2024-10-06: 02:00 +10:30 jumps to 02:30 +11:00; 02:15 does not exist.
    assert runs("15 2 * * *", "2024-10-05T12:00:00+10:30", LORD_HOWE, 2) == [
        "2024-10-06T02:30:00+11:00", "2024-10-07T02:15:00+11:00",
    ]  # fmt: skip


def test_dst_spring_forward_wildcards_have_no_run_inside_the_gap() -> None:
    assert runs("*/30 * * * *", "2024-03-31T01:00:00+01:00", ZURICH, 3) == [
        "2024-03-31T01:30:00+01:00", "2024-03-31T03:00:00+02:00", "2024-03-31T03:30:00+02:00",
    ]  # fmt: skip
    # Wall times are the zone's, so 09:00 stays 09:00 across the change.
    assert runs("0 9 * * *", "2024-03-30T12:00:00+01:00", ZURICH, 1) == [
        "2024-03-31T09:00:00+02:00"
    ]


def test_dst_fall_back_runs_a_fixed_time_once() -> None:
    # Zurich 2024-10-27: 03:00 CEST falls back to 02:00 CET; 02:00-02:59 happens twice.
    expr = CronExpr.parse("30 2 * * *")
    first = expr.next_after(ts("2024-10-26T12:00:00+02:00"), ZURICH)
    assert iso(first, ZURICH) == "2024-10-27T02:30:00+02:00"
    # From the first run, or from inside the repeated hour, the next run is the next day.
    assert iso(expr.next_after(first, ZURICH), ZURICH) == "2024-10-28T02:30:00+01:00"
    second_pass = ts("2024-10-27T02:15:00+01:00")
    assert iso(expr.next_after(second_pass, ZURICH), ZURICH) == "2024-10-28T02:30:00+01:00"
    # New York 2024-11-03: 02:00 EDT falls back to 01:00 EST; 01:30 happens twice.
    assert runs("30 1 * * *", "2024-11-02T12:00:00-04:00", NEW_YORK, 2) == [
        "2024-11-03T01:30:00-04:00", "2024-11-04T01:30:00-05:00",
    ]  # fmt: skip


def test_dst_fall_back_a_wildcard_hour_runs_in_both_passes() -> None:
    assert runs("30 * * * *", "2024-10-27T01:00:00+02:00", ZURICH, 4) == [
        "2024-10-27T01:30:00+02:00", "2024-10-27T02:30:00+02:00",
        "2024-10-27T02:30:00+01:00", "2024-10-27T03:30:00+01:00",
    ]  # fmt: skip
    assert runs("*/20 * * * *", "2024-10-27T02:50:00+02:00", ZURICH, 1) == [
        "2024-10-27T02:00:00+01:00"
    ]


def test_a_sunday_ending_a_range_and_macros_evaluate() -> None:
    """What our syntax accepts and cronsim reads otherwise (FRI-SUN, macros) is written
    for it, so a series stored before still runs."""
    # 2024-06-07 is a Friday.
    assert runs("0 0 * * FRI-SUN", "2024-06-06T12:00:00+00:00", UTC, 4) == [
        "2024-06-07T00:00:00+00:00", "2024-06-08T00:00:00+00:00",
        "2024-06-09T00:00:00+00:00", "2024-06-14T00:00:00+00:00",
    ]  # fmt: skip
    assert runs("@Daily", "2024-06-06T12:00:00+00:00", UTC, 1) == ["2024-06-07T00:00:00+00:00"]


# --- property: brute force over a short window ------------------------------------------------


def _field(
    low: int, high: int, list_high: int | None = None
) -> st.SearchStrategy[tuple[str, frozenset[int]]]:
    """A field's text with the values it must select, built without the parser under test.

    list_high caps explicit values (days <= 28 keep matches dense); '*' still spans low-high.
    """
    star = st.just(("*", frozenset(range(low, high + 1))))
    step = st.integers(1, high - low + 1).map(
        lambda n: (f"*/{n}", frozenset(range(low, high + 1, n)))
    )
    top = high if list_high is None else list_high
    values = st.frozensets(st.integers(low, top), min_size=1, max_size=4).map(
        lambda s: (",".join(map(str, sorted(s))), s)
    )
    return st.one_of(star, step, values)


@st.composite
def simple_exprs(draw: st.DrawFn) -> tuple[str, list[frozenset[int]], bool]:
    """Dense enough expressions (no month restriction) that a few days of brute force suffice."""
    minute = draw(_field(0, 59))
    hour = draw(_field(0, 23))
    day = draw(_field(1, 31, list_high=28))
    weekday = draw(_field(0, 6))
    either = not day[0].startswith("*") and not weekday[0].startswith("*")
    text = f"{minute[0]} {hour[0]} {day[0]} * {weekday[0]}"
    return text, [minute[1], hour[1], day[1], weekday[1]], either


def _matches(fields: list[frozenset[int]], either: bool, wall: datetime) -> bool:
    minutes, hours, days, weekdays = fields
    in_day = wall.day in days
    in_weekday = (wall.weekday() + 1) % 7 in weekdays
    day_ok = (in_day or in_weekday) if either else (in_day and in_weekday)
    return wall.minute in minutes and wall.hour in hours and day_ok


WINDOW = 3 * 86400


@settings(max_examples=200, deadline=None)
@given(
    simple_exprs(),
    st.floats(ts("2000-01-01T00:00:00+00:00"), ts("2040-01-01T00:00:00+00:00")),
    st.sampled_from([UTC, ZURICH]),
)
def test_next_after_is_the_first_match(
    spec: tuple[str, list[frozenset[int]], bool], t: float, tz: tzinfo
) -> None:
    text, fields, either = spec
    result = CronExpr.parse(text).next_after(t, tz)
    assert result > t
    assert result % 60 == 0
    wall = datetime.fromtimestamp(result, tz)
    assert _matches(fields, either, wall)
    assert wall.fold == 0  # an ambiguous wall time fires at its first occurrence
    # Every whole minute strictly between t and the result (within the window) must not fire:
    # it does not match, or it is the repeated (second) pass of an ambiguous wall time.
    minute = (int(t) // 60 + 1) * 60
    while minute < min(result, t + WINDOW):
        here = datetime.fromtimestamp(minute, tz)
        assert here.fold == 1 or not _matches(fields, either, here), iso(minute, tz)
        minute += 60
