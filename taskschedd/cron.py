"""Cron expressions for recurring jobs, without a third-party dependency.

Syntax is classic Vixie cron: five fields ``minute hour day-of-month month day-of-week`` with
``*``, lists ``a,b``, ranges ``a-b``, steps ``*/n``, ``a-b/n`` and ``a/n`` (``a`` to the field's
maximum), month names JAN-DEC and weekday names SUN-SAT (case-insensitive), day-of-week 0-7 where
0 and 7 are both Sunday (``SUN`` at the end of a range means 7, so ``FRI-SUN`` works). Macros:
@yearly @annually @monthly @weekly @daily @midnight @hourly.

Day-of-month and day-of-week follow Vixie cron: when both are restricted (neither field starts
with ``*``) a day matches if EITHER matches, so ``0 0 13 * FRI`` runs on every 13th and every
Friday; otherwise both must match.

Times are wall-clock times in a time zone, UTC unless one is given (option ``timezone``),
because "daily at 09:00" is meant in the user's zone. Expressions are checked here (our
messages name the field, the value and what is accepted) and evaluated by `cronsim
<https://pypi.org/project/cronsim/>`_, which follows Debian's cron across DST changes:

* a wall time skipped in spring (02:00 -> 03:00) still runs, once, when the clock
  reaches the end of the gap (03:00), if the expression names its minute and hour
  (``30 2 * * *``); an expression with a wildcard or step in those fields
  (``*/30 * * * *``) just has no run inside the gap;
* a wall time repeated in autumn (03:00 -> 02:00) runs once, at its first occurrence, if
  the expression names its minute and hour; with a wildcard hour (``30 * * * *``) it runs
  in both passes, as every hour does.

An expression that can never match (``0 0 30 2 *``) is rejected at parse time, so next_after
cannot loop forever. The check is exact rather than a search: the Gregorian calendar repeats
every 400 years (146097 days, a whole number of weeks) and within one cycle every valid
month/day, including Feb 29, falls on every weekday, so an expression matches some time iff some
selected day-of-month exists in some selected month (or day-of-week alone can match).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import UTC, datetime, tzinfo

from cronsim import CronSim, CronSimError

from taskschedd.errors import OptionError

__all__ = ["MACROS", "CronExpr"]

MACROS: dict[str, str] = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}

_MONTH_NAMES = ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC")
_DAY_NAMES = ("SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT")
#: Longest month lengths, Feb counted as 29: a day-of-month is possible iff it is <= these.
_MAX_MONTH_DAYS = (31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)
_ITEM_HELP = "N, A-B, *, */N, A-B/N or A/N"
#: SUN at the end of a day-of-week range (FRI-SUN), which our syntax reads as 7.
_SUNDAY_END = re.compile(r"-SUN\b", re.IGNORECASE)


@dataclass(frozen=True)
class _Field:
    """How to parse and describe one of the five positions."""

    index: int
    name: str
    low: int
    high: int
    names: tuple[str, ...] = ()
    name_base: int = 0

    @property
    def label(self) -> str:
        return f"field {self.index} ({self.name})"

    @property
    def accepted(self) -> str:
        if self.names:
            return f"{self.low}-{self.high} or {self.names[0]}-{self.names[-1]}"
        return f"{self.low}-{self.high}"


_FIELDS = (
    _Field(1, "minute", 0, 59),
    _Field(2, "hour", 0, 23),
    _Field(3, "day of month", 1, 31),
    _Field(4, "month", 1, 12, _MONTH_NAMES, 1),
    _Field(5, "day of week", 0, 7, _DAY_NAMES, 0),
)


def _value(field: _Field, token: str, *, range_end: bool = False) -> int:
    """One number or name of a field, range-checked, so errors point at the exact token."""
    upper = token.upper()
    if field.names and upper in field.names:
        value = field.names.index(upper) + field.name_base
        # "FRI-SUN" should mean Friday to Sunday, not a reversed range.
        if range_end and field.name == "day of week" and value == 0:
            value = 7
        return value
    if not (token.isascii() and token.isdigit()):
        what = f"a number {field.accepted}" if not field.names else field.accepted
        raise OptionError(f"cron: {field.label} value {token!r} is not {what}")
    value = int(token)
    if not field.low <= value <= field.high:
        raise OptionError(f"cron: {field.label} value {token!r} is out of range {field.accepted}")
    return value


def _parse_field(field: _Field, text: str) -> frozenset[int]:
    """The set of values one field selects; messages name the field and what it accepts."""
    values: set[int] = set()
    for item in text.split(","):
        base, slash, step_text = item.partition("/")
        step = 1
        if slash:
            if not (step_text.isascii() and step_text.isdigit()) or int(step_text) < 1:
                raise OptionError(
                    f"cron: {field.label} step {step_text!r} in {item!r} must be a whole "
                    f"number >= 1"
                )
            step = int(step_text)
        if base == "*":
            low, high = field.low, field.high
        elif "-" in base:
            first, _, last = base.partition("-")
            if not first or not last:
                raise OptionError(
                    f"cron: {field.label} item {item!r} is malformed; expected {_ITEM_HELP}"
                )
            low = _value(field, first)
            high = _value(field, last, range_end=True)
            if low > high:
                raise OptionError(
                    f"cron: {field.label} range {base!r} is reversed; expected start <= end "
                    f"within {field.accepted}"
                )
        elif base:
            low = _value(field, base)
            high = field.high if slash else low
        else:
            raise OptionError(
                f"cron: {field.label} has an empty item in {text!r}; expected {_ITEM_HELP}"
            )
        values.update(range(low, high + 1, step))
    if field.name == "day of week" and 7 in values:
        values.discard(7)
        values.add(0)
    return frozenset(values)


@dataclass(frozen=True, repr=False)
class CronExpr:
    """A parsed cron expression; build it with CronExpr.parse so it is always valid."""

    text: str
    minutes: tuple[int, ...]
    hours: tuple[int, ...]
    days: tuple[int, ...]
    months: tuple[int, ...]
    #: Days of week, 0 = Sunday .. 6 = Saturday (7 is folded into 0).
    weekdays: tuple[int, ...]
    #: True when day-of-month and day-of-week are both restricted: then either may match.
    day_or_weekday: bool

    @classmethod
    def parse(cls, text: str) -> CronExpr:
        """Parse five fields or a macro; raise OptionError naming the bad field and why."""
        stripped = text.strip()
        if stripped.startswith("@"):
            body = MACROS.get(stripped.lower())
            if body is None:
                raise OptionError(
                    f"cron: unknown macro {stripped!r}; expected one of {', '.join(MACROS)}"
                )
        else:
            body = stripped
        parts = body.split()
        if len(parts) != 5:
            raise OptionError(
                "cron: expected 5 fields (minute hour day month weekday) or a macro like "
                f"@hourly, got {text!r}"
            )
        sets = [_parse_field(field, part) for field, part in zip(_FIELDS, parts, strict=True)]
        minutes, hours, days, months, weekdays = (tuple(sorted(s)) for s in sets)
        day_or_weekday = not parts[2].startswith("*") and not parts[4].startswith("*")
        # Day-of-week can always match on its own (every month has every weekday); otherwise
        # some selected day must exist in some selected month (see the module docstring).
        if not day_or_weekday and not any(
            day <= _MAX_MONTH_DAYS[month - 1] for month in months for day in days
        ):
            raise OptionError(
                f"cron: {text!r} can never match: field 3 (day of month) selects no day that "
                "exists in the months of field 4 (month)"
            )
        expr = cls(text, minutes, hours, days, months, weekdays, day_or_weekday)
        try:
            CronSim(expr._body, datetime(2000, 1, 1, tzinfo=UTC))
        except CronSimError as exc:  # pragma: no cover - our syntax is a subset of its
            raise OptionError(f"cron: {text!r} is not accepted by the evaluator: {exc}") from None
        return expr

    def __str__(self) -> str:
        return self.text

    def __repr__(self) -> str:
        return f"CronExpr.parse({self.text!r})"

    @property
    def _body(self) -> str:
        """The five fields as cronsim reads them: macros expanded, and ``SUN`` ending a
        day-of-week range written 7 (``FRI-SUN``: cronsim refuses Sunday as 0 there)."""
        stripped = self.text.strip()
        parts = MACROS.get(stripped.lower(), stripped).split()
        parts[4] = _SUNDAY_END.sub("-7", parts[4])
        return " ".join(parts)

    def next_after(self, ts: float, tz: tzinfo | None = None) -> float:
        """First unix time strictly after ts, at a whole minute, whose wall time in tz
        matches (tz defaults to UTC), by Debian cron's rules across DST changes (see the
        module docstring)."""
        if not math.isfinite(ts):
            raise ValueError(f"cron: next_after needs a finite unix time, got {ts!r}")
        zone = UTC if tz is None else tz
        # Whole seconds are enough (results are whole minutes) and avoid microsecond
        # rounding pushing 59.9999999 into the next minute.
        start = datetime.fromtimestamp(math.floor(ts), zone)
        try:
            for found in CronSim(self._body, start):
                # Started inside the repeated hour's second pass, cronsim may give the
                # first pass's time, which is earlier: go on to the next.
                if found.timestamp() > ts:
                    return found.timestamp()
        except CronSimError as exc:  # pragma: no cover - parse() checked it
            raise OptionError(f"cron: {self.text!r} cannot be evaluated: {exc}") from None
        # cronsim looks 50 years ahead; parse() refused what the calendar never matches.
        raise OptionError(f"cron: {self.text!r} has no match after {start:%Y-%m-%d %H:%M}")
