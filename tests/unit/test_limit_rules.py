"""taskschedd.limits: what a limit is and what it allows (the stores apply these decisions).

Rate.parse and LimitSpec are what the CLI, the API and the config accept; the sliding log
(Rate.allows/taken/next_start) is the rate's whole meaning: never more than ``count``
starts in any window of ``period`` seconds.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from taskschedd.errors import OptionError
from taskschedd.limits import (
    MAX_RATE_COUNT,
    MAX_RUNNING,
    LimitSpec,
    LimitState,
    Rate,
    as_times,
    check_key,
    check_name,
    closed,
    implied,
    window,
)

# -- Rate.parse ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "count", "period", "shown"),
    [
        ("100/1m", 100, 60.0, "100/1m"),
        ("20/1s", 20, 1.0, "20/1s"),
        ("5/s", 5, 1.0, "5/1s"),  # a bare unit reads as one of it
        ("5/m", 5, 60.0, "5/1m"),
        ("1000/1h", 1000, 3600.0, "1000/1h"),
        ("7/1d", 7, 86400.0, "7/1d"),
        ("10/500ms", 10, 0.5, "10/500ms"),
        ("2/1m30s", 2, 90.0, "2/90s"),
        ("10/60", 10, 60.0, "10/1m"),  # a bare number is seconds
        (" 3 / 2m ", 3, 120.0, "3/2m"),
        ("5/S", 5, 1.0, "5/1s"),
        ("1/1ms", 1, 0.001, "1/1ms"),  # the shortest period
        ("1/31d", 1, 31 * 86400.0, "1/31d"),  # the longest
        (f"{MAX_RATE_COUNT}/1s", MAX_RATE_COUNT, 1.0, f"{MAX_RATE_COUNT}/1s"),
    ],
)
def test_rate_parse_accepts(text: str, count: int, period: float, shown: str) -> None:
    rate = Rate.parse(text)
    assert rate.count == count
    assert rate.period == pytest.approx(period)
    assert str(rate) == shown
    assert Rate.parse(str(rate)) == rate  # what `limits list` shows reads back the same


def test_rate_parse_takes_a_rate_as_is() -> None:
    rate = Rate(3, 2.0)
    assert Rate.parse(rate) is rate


@pytest.mark.parametrize(
    ("value", "says"),
    [
        ("0/1s", "the count must be an integer from 1 to 10000"),
        ("-1/1s", "the count must be an integer from 1 to 10000"),
        (f"{MAX_RATE_COUNT + 1}/1s", "the count must be an integer from 1 to 10000"),
        ("1.5/1s", "the count must be an integer from 1 to 10000"),
        ("1e3/1s", "the count must be an integer from 1 to 10000"),
        ("/1s", "the count must be an integer from 1 to 10000"),
        ("10/0", "the period must be from 1ms to 31 days"),
        ("1/0.5ms", "the period must be from 1ms to 31 days"),
        ("1/32d", "the period must be from 1ms to 31 days"),
        ("abc", "expected starts per period"),
        ("10", "expected starts per period"),
        ("", "expected starts per period"),
        ("1/2/3", "expected starts per period"),
        ("1/", "expected starts per period"),
        ("1/x", "expected starts per period"),
        ("1/-1s", "expected starts per period"),
        ("1/1 s", "expected starts per period"),
        ("1/nan", "expected starts per period"),
        (10, "expected starts per period"),
        (None, "expected starts per period"),
        (True, "expected starts per period"),
        (["100/1m"], "expected starts per period"),
    ],
)
def test_rate_parse_refuses_with_what_is_accepted(value: Any, says: str) -> None:
    with pytest.raises(OptionError) as caught:
        Rate.parse(value)
    message = str(caught.value)
    assert message.startswith("rate: ")
    assert says in message
    assert "'100/1m'" in message  # an example of what is accepted
    assert repr(value) in message  # and what was given


# Fullwidth one, superscript two, Arabic-Indic three, and a fullwidth one in the period.
@pytest.mark.parametrize("text", ["\uff11/1s", "\u00b2/1s", "\u0663/1m", "1/\uff11s"])
def test_rate_parse_takes_ascii_digits_only(text: str) -> None:
    # str.isdigit() is true for these; int() reads some (fullwidth one as 1) and raises a
    # bare ValueError on others (superscript two): a traceback instead of a message.
    # Durations elsewhere are ASCII digits only (taskschedd.timeutil).
    with pytest.raises(OptionError, match=r"^rate: "):
        Rate.parse(text)


# -- the sliding log ------------------------------------------------------------------------


def test_a_rate_allows_count_starts_per_window_then_the_oldest_leaving_frees_one() -> None:
    rate = Rate(2, 10.0)
    starts: list[float] = []
    assert rate.allows(starts, 100.0) and rate.next_start(starts, 100.0) is None
    starts = rate.taken(starts, 100.0)
    starts = rate.taken(starts, 103.0)
    assert starts == [100.0, 103.0]
    assert not rate.allows(starts, 105.0)
    assert rate.next_start(starts, 105.0) == 110.0  # when 100.0 leaves the window
    assert not rate.allows(starts, 109.999)
    # The window is (now - period, now]: a start exactly one period ago is out of it.
    assert rate.allows(starts, 110.0)
    starts = rate.taken(starts, 110.0)
    assert starts == [103.0, 110.0]  # the start that left is not kept
    assert rate.next_start(starts, 110.0) == 113.0


def test_a_burst_is_bounded_by_the_rate_itself() -> None:
    rate = Rate(3, 1.0)
    starts: list[float] = []
    for now in (5.0, 5.0, 5.0):
        assert rate.allows(starts, now)
        starts = rate.taken(starts, now)
    assert not rate.allows(starts, 5.0)
    assert not rate.allows(starts, 5.999)
    assert rate.next_start(starts, 5.5) == 6.0
    assert rate.allows(starts, 6.0)


def test_the_window_ignores_what_is_not_a_time() -> None:
    rate = Rate(1, 10.0)
    junk: list[Any] = ["x", None, [1], {"t": 1}]
    assert rate.allows(junk, 100.0)
    mixed: list[Any] = [1.0, "2", 95.0, 99.0, 100.0]
    assert window(mixed, 100.0, 5.0) == [99.0, 100.0]


@settings(max_examples=300, deadline=None)
@given(
    count=st.integers(1, 5),
    period=st.integers(1, 20),
    gaps=st.lists(st.integers(0, 7), min_size=1, max_size=80),
)
def test_the_sliding_log_never_lets_more_than_count_start_in_any_window(
    count: int, period: int, gaps: list[int]
) -> None:
    """Greedy starts on whole-second request times (exact in floats): at every request,
    start if the rate allows; then no window (x, x + period] holds more than ``count``
    starts, a refusal is always backed by ``count`` starts in the window, the log keeps no
    more than ``count`` times, and next_start is exactly the first moment that fits."""
    rate = Rate(count, float(period))
    starts: list[float] = []
    log: list[float] = []
    now = 0.0
    for gap in gaps:
        now += gap
        if rate.allows(starts, now):
            assert rate.next_start(starts, now) is None
            starts = rate.taken(starts, now)
            assert len(starts) <= count
            log.append(now)
            continue
        assert len([t for t in log if now - period < t <= now]) == count
        opens = rate.next_start(starts, now)
        assert opens is not None and now < opens <= now + period
        assert rate.allows(starts, opens)
        assert not rate.allows(starts, max(now, opens - 0.5))
    # The busiest window of length period ends at a start.
    for end in log:
        assert len([t for t in log if end - period < t <= end]) <= count


# -- LimitSpec ----------------------------------------------------------------------------------


def test_a_limit_spec_takes_max_running_a_rate_or_both() -> None:
    assert LimitSpec("reports", 2).describe() == "max_running 2"
    assert LimitSpec("mail", rate=Rate(100, 60.0)).describe() == "rate 100/1m"
    both = LimitSpec("api", 0, Rate(5, 1.0))
    assert both.describe() == "max_running 0, rate 5/1s"
    assert LimitSpec("x", MAX_RUNNING).max_running == MAX_RUNNING
    for name in ("queue:mail", "class:app.jobs.Report", "a", "A-b_c.d:e", "x" * 128):
        assert LimitSpec(name, 1).name == name


@pytest.mark.parametrize("value", [-1, MAX_RUNNING + 1, True, False, 2.0, "2", [2]])
def test_a_limit_spec_refuses_a_bad_max_running(value: Any) -> None:
    with pytest.raises(OptionError) as caught:
        LimitSpec("reports", value)
    assert str(caught.value) == (
        f"limit 'reports': max_running must be an integer from 0 to {MAX_RUNNING} "
        f"(0 holds every job of the limit), got {value!r}"
    )


def test_a_limit_spec_without_max_running_or_rate_is_refused() -> None:
    with pytest.raises(OptionError, match=r"^limit 'r': give max_running, a rate, or both"):
        LimitSpec("r")


@pytest.mark.parametrize("name", ["", "bad name", "x" * 129, "ü", "a/b", "a\n", 3, None])
def test_a_limit_name_is_checked(name: Any) -> None:
    with pytest.raises(OptionError) as caught:
        LimitSpec(name, 1)
    assert str(caught.value) == (
        "limit name: expected 1-128 letters, digits or . _ : - "
        f"(e.g. 'reports', 'queue:mail'), got {name!r}"
    )
    with pytest.raises(OptionError):
        check_name(name)


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ({"max_running": 2}, LimitSpec("r", 2)),
        ({"rate": "100/1m"}, LimitSpec("r", None, Rate(100, 60.0))),
        ({"max_running": 0, "rate": "5/s"}, LimitSpec("r", 0, Rate(5, 1.0))),
        ({"max_running": 2, "rate": None}, LimitSpec("r", 2)),
    ],
)
def test_limit_spec_parse_reads_the_config_mapping(
    given: dict[str, Any], expected: LimitSpec
) -> None:
    assert LimitSpec.parse("r", given) == expected


@pytest.mark.parametrize(
    ("name", "given", "message"),
    [
        ("r", None, "limit 'r': expected a mapping with max_running and/or rate, got None"),
        ("r", [2], "limit 'r': expected a mapping with max_running and/or rate, got [2]"),
        ("r", 2, "limit 'r': expected a mapping with max_running and/or rate, got 2"),
        ("r", {"max": 1}, "limit 'r': unknown key 'max'; accepted: max_running, rate"),
        (
            "r",
            {"rate": "1/s", "burst": 3, "b": 1},
            "limit 'r': unknown key 'b'; accepted: max_running, rate",
        ),
        ("r", {}, "limit 'r': give max_running, a rate, or both"),
        ("r", {"max_running": "2"}, "limit 'r': max_running must be an integer from 0"),
        ("r", {"rate": "fast"}, "rate: expected starts per period"),
        ("r", {"rate": "0/1s"}, "rate: the count must be an integer from 1 to 10000"),
        ("bad name", {"max_running": 1}, "limit name: expected 1-128 letters"),
        (7, {"max_running": 1}, "limit name: expected 1-128 letters"),
    ],
)
def test_limit_spec_parse_refuses_with_a_message(name: Any, given: Any, message: str) -> None:
    with pytest.raises(OptionError) as caught:
        LimitSpec.parse(name, given)
    assert str(caught.value).startswith(message)


# -- closed(), LimitState, keys -------------------------------------------------------------


def test_closed_names_the_full_limits_and_those_whose_rate_is_used_up() -> None:
    specs = [
        LimitSpec("full", 2),
        LimitSpec("room", 2),
        LimitSpec("zero", 0),  # holds every job, none running
        LimitSpec("rate-used", rate=Rate(2, 10.0)),
        LimitSpec("rate-free", rate=Rate(2, 10.0)),
        LimitSpec("both-room-rate-used", 5, Rate(1, 10.0)),
        LimitSpec("both-full-rate-free", 1, Rate(5, 10.0)),
    ]
    running = {"full": 2, "room": 1, "both-full-rate-free": 1, "undefined": 99}
    starts = {
        "rate-used": [95.0, 99.0],
        "rate-free": [85.0, 90.0, 99.0],  # 85 and 90 are out of (90, 100]
        "both-room-rate-used": [100.0],
    }
    assert closed(specs, running, starts, 100.0) == {
        "full",
        "zero",
        "rate-used",
        "both-room-rate-used",
        "both-full-rate-free",
    }
    assert closed([], running, starts, 100.0) == set()
    assert closed(specs[1:2], {}, {}, 100.0) == set()


def test_a_limit_state_says_whether_it_is_full_and_when_the_rate_opens() -> None:
    rate = Rate(2, 10.0)
    state = LimitState(LimitSpec("r", 3, rate), running=1, waiting=4, starts=(95.0, 99.0))
    assert state.full(100.0) and state.next_start(100.0) == 105.0
    assert not state.full(105.0) and state.next_start(105.0) is None
    capped = LimitState(LimitSpec("c", 2), running=2, waiting=0)
    assert capped.full(0.0) and capped.next_start(0.0) is None
    assert not LimitState(LimitSpec("c", 2), running=1, waiting=0).full(0.0)


def test_as_times_keeps_the_numbers_another_client_wrote() -> None:
    assert as_times([1, 2.5, "3", None, True, [4]]) == [1.0, 2.5]
    assert as_times("[1, 2]") == []
    assert as_times(None) == []


def test_queue_and_class_limits_are_named_by_prefix() -> None:
    assert implied("mail", "app.jobs.Send") == ("queue:mail", "class:app.jobs.Send")


@pytest.mark.parametrize("key", ["customer:42", "x", "k" * 200, "ünïcödé key with spaces"])
def test_an_exclusive_key_is_any_printable_string(key: str) -> None:
    assert check_key(key) == key


@pytest.mark.parametrize("key", ["", "k" * 201, "a\nb", "tab\t", "del\x7f", 42, None, ["k"]])
def test_an_exclusive_key_is_refused_with_a_message(key: Any) -> None:
    with pytest.raises(OptionError) as caught:
        check_key(key)
    assert str(caught.value) == (
        "option 'exclusive_key': expected a string of 1-200 printable characters "
        f"(e.g. 'customer:42'), got {key!r}"
    )


def test_a_start_far_ahead_or_not_finite_is_ignored() -> None:
    """Another client's value, or a clock that jumped: a start more than FUTURE_SLACK
    ahead neither closes a rate nor moves the time a claim is logged at."""
    from taskschedd import limits

    assert limits.as_times([1.0, float("inf"), float("nan"), 2.0]) == [1.0, 2.0]
    rate = Rate(1, 60.0)
    now = 1000.0
    assert rate.allows([now + 3600], now) and rate.next_start([now + 3600], now) is None
    assert rate.taken([now + 3600], now) == [now]
    assert limits.clock(now, [now + 3600, now + 0.5, now - 1]) == now + 0.5
    assert not rate.allows([now + 0.5], now)  # a start a little ahead still counts
