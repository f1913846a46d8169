"""Durations ("90", "10s", "5m", "2h", "7d", "1h30m") and points in time (ISO 8601 or unix)."""

from __future__ import annotations

import contextlib
import re
from datetime import UTC, datetime

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")
DURATION_HELP = "a number of seconds or a duration like 30s, 10m, 2h, 7d, 1h30m"
TIME_HELP = "an ISO 8601 time (2026-01-31T08:00:00Z) or a unix timestamp"
MAX_TIME = 253402300799.0  # 9999-12-31T23:59:59Z


def parse_duration(value: object, *, what: str = "duration") -> float:
    """Seconds from an int/float or a duration string; ValueError names what is accepted."""
    if isinstance(value, bool):
        raise ValueError(f"{what}: expected {DURATION_HELP}, got {value!r}")
    if isinstance(value, int | float):
        if value < 0 or value != value:
            raise ValueError(f"{what}: must not be negative, got {value!r}")
        if value == float("inf"):
            raise ValueError(f"{what}: must be finite, got {value!r}")
        return float(value)
    if isinstance(value, str) and value.isascii() and "_" not in value:  # float() takes more
        text = value.strip().lower()
        try:
            seconds = float(text)
        except ValueError:
            pass
        else:
            if seconds < 0 or seconds != seconds or seconds == float("inf"):
                raise ValueError(f"{what}: must be a finite number >= 0, got {value!r}")
            return seconds
        pos = 0
        total = 0.0
        for match in _PART.finditer(text):
            if match.start() != pos:
                break
            total += float(match.group(1)) * _UNITS[match.group(2)]
            pos = match.end()
        if text and pos == len(text):
            return total
    raise ValueError(f"{what}: expected {DURATION_HELP}, got {value!r}")


def parse_time(value: object, *, what: str = "time", now: float | None = None) -> float:
    """Unix time from a number, a numeric string or an ISO 8601 string (naive = UTC)."""
    if isinstance(value, bool):
        raise ValueError(f"{what}: expected {TIME_HELP}, got {value!r}")
    if isinstance(value, int | float):
        # Up to the end of year 9999: later times cannot be shown (format_time) or compared.
        if value != value or not 0 <= value <= MAX_TIME:
            raise ValueError(f"{what}: expected {TIME_HELP}, got {value!r}")
        return float(value)
    if isinstance(value, datetime):
        dt = value if value.tzinfo else value.replace(tzinfo=UTC)
        if 0 <= dt.timestamp() <= MAX_TIME:
            return dt.timestamp()
    if isinstance(value, str):
        text = value.strip()
        try:
            return parse_time(float(text), what=what)
        except ValueError:
            pass
        try:
            dt = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
        except ValueError:
            pass
        else:
            with contextlib.suppress(ValueError):  # out of range: name the text given
                return parse_time(dt, what=what)
    raise ValueError(f"{what}: expected {TIME_HELP}, got {value!r}")


def format_time(ts: float | None) -> str:
    """ISO 8601 UTC with milliseconds, or '-' for no time."""
    if ts is None:
        return "-"
    # Whole milliseconds, rounded (not truncated), so a shown time parsed back shows the same.
    ms = round(ts * 1000)
    moment = datetime.fromtimestamp(ms // 1000, UTC).replace(microsecond=ms % 1000 * 1000)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def format_duration(seconds: float) -> str:
    """A short human duration: 0.25s, 42s, 5m3s, 2h5m, 3d4h."""
    if seconds < 10:
        return f"{seconds:.2f}".rstrip("0").rstrip(".") + "s"
    s = int(seconds)
    for unit, size, sub, subsize in (
        ("d", 86400, "h", 3600),
        ("h", 3600, "m", 60),
        ("m", 60, "s", 1),
    ):
        if s >= size:
            rest = (s % size) // subsize
            return f"{s // size}{unit}" + (f"{rest}{sub}" if rest else "")
    return f"{s}s"
