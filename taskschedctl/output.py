"""Output helpers: aligned tables, JSON, ages, job and event text, a progress line.

Tables and text are for people; ``--json`` / ``--jsonl`` are for scripts and keep the
raw values (unix times as numbers) so that nothing is lost in formatting.

Both print text as text (accents, emoji, right-to-left scripts), but never a character
that could drive the terminal or hide what follows it: what a job's data, result or error
holds is shown, not obeyed (see :func:`printable`).
"""

from __future__ import annotations

import json
import re
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TextIO

import click

if TYPE_CHECKING:
    from taskschedd.limits import LimitState
    from taskschedd.model import EventRecord, JobRecord, NodeRecord


# What never reaches a terminal raw: C0 and C1 controls and DEL (escape sequences, cursor
# moves, bells), U+2028/U+2029 (line breaks to some terminals), the bidi embeddings,
# overrides and isolates (they reorder the rest of the line: a spoofing tool), and lone
# surrogates (which cannot be written as UTF-8). Other characters are text.
_UNSAFE_JSON = re.compile("[\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff]")
# ... and the C0 controls, which json.dumps escapes itself (a raw newline in its text is
# layout).
_UNSAFE_CHAR = re.compile(f"[\x00-\x1f{_UNSAFE_JSON.pattern[1:-1]}]")
_SHORT = {"\n": "\\n", "\t": "\\t", "\r": "\\r"}


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    short = _SHORT.get(char)
    if short is not None:
        return short
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def _json_escape(match: re.Match[str]) -> str:
    return f"\\u{ord(match.group()):04x}"


def _utf8_out() -> bool:
    encoding = (getattr(sys.stdout, "encoding", None) or "").lower().replace("-", "")
    return encoding in ("utf8", "utf8sig")


def _fit(text: str) -> str:
    """Text the output stream can encode: what it cannot is shown as a backslash escape."""
    if _utf8_out():
        return text
    encoding = getattr(sys.stdout, "encoding", None) or "ascii"
    try:
        return text.encode(encoding, "backslashreplace").decode(encoding)
    except LookupError:
        return text.encode("ascii", "backslashreplace").decode("ascii")


def printable(text: str, *, lines: bool = False) -> str:
    """``text`` with every character that could drive a terminal (escape sequences,
    controls, bidi overrides, line separators) shown as a backslash escape (\\x1b, \\n,
    \\u202e); with ``lines``, newlines and tabs are kept (a traceback)."""
    if lines:
        text = _UNSAFE_CHAR.sub(lambda m: m.group() if m.group() in "\n\t" else _escape(m), text)
    else:
        text = _UNSAFE_CHAR.sub(_escape, text)
    return _fit(text)


def dumps(value: Any, **kwargs: Any) -> str:
    """JSON text as UTF-8 text (ASCII escapes only when the output cannot take UTF-8), with
    the characters :func:`printable` escapes written as \\u escapes: the same JSON value."""
    if not _utf8_out():
        return json.dumps(value, ensure_ascii=True, default=str, **kwargs)
    text = json.dumps(value, ensure_ascii=False, default=str, **kwargs)
    return _UNSAFE_JSON.sub(_json_escape, text)


#: The most characters :func:`echo` writes at once: 4 KiB of UTF-8 at most, within the
#: buffer Python gives stdout on a pipe.
_CHUNK = 1024


def echo(text: str) -> None:
    """``text`` and a newline on stdout, flushed, written in pieces smaller than stdout's
    buffer: CPython's buffered writer loses the broken pipe error of a single larger
    write once part of it was written (``| head`` exits after the first line), and the
    command would end with 0 instead of 141 (the error reaches taskschedctl.cli.run)."""
    if len(text) <= _CHUNK:
        click.echo(text)
        return
    for start in range(0, len(text), _CHUNK):
        click.echo(text[start : start + _CHUNK], nl=False)
    click.echo()


def echo_json(value: Any) -> None:
    """One JSON document, indented for people who look at it anyway."""
    echo(dumps(value, indent=2, sort_keys=False))


def echo_jsonl(values: Iterable[Any]) -> None:
    """One compact JSON document per line (flushed, so pipes see each at once)."""
    for value in values:
        echo(dumps(value, separators=(",", ":")))


def table(headers: Sequence[str], rows: Iterable[Sequence[str]], right: Sequence[int] = ()) -> str:
    """Columns padded to the widest cell; the columns numbered in ``right`` align right."""
    data = [list(headers), *[[printable(cell) for cell in r] for r in rows]]
    widths = [max(len(r[i]) for r in data) for i in range(len(headers))]
    lines = []
    for row in data:
        cells = [
            cell.rjust(widths[i]) if i in right else cell.ljust(widths[i])
            for i, cell in enumerate(row)
        ]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def duration(seconds: float) -> str:
    from taskschedd.timeutil import format_duration

    return format_duration(max(0.0, seconds))


def age(ts: float | None, now: float | None = None) -> str:
    """'5m ago' / 'in 2h' / '-' relative to now."""
    if ts is None:
        return "-"
    now = time.time() if now is None else now
    if ts > now + 0.5:
        return "in " + duration(ts - now)
    return duration(now - ts) + " ago"


def when(ts: float | None) -> str:
    """ISO time with its age: 2026-01-31T08:00:00.000Z (5m ago)."""
    from taskschedd.timeutil import format_time

    if ts is None:
        return "-"
    return f"{format_time(ts)} ({age(ts)})"


def job_when(job: JobRecord, now: float) -> str:
    """The one time that matters for a job in a listing: due, started or ended."""
    if job.status.is_final:
        return age(job.ended, now)
    if job.status.name == "PROCESSING":
        return age(job.started, now)
    return age(job.at, now)


def series_state(active: bool) -> str:
    return "active" if active else "ended"


def job_dict(job: JobRecord, series_active: Mapping[str, bool]) -> dict[str, Any]:
    """A job for --json output: its fields, with ``series`` the id of its series (the first
    job's included, whose stored ``series`` is empty) and ``series_active`` whether that
    series still has an occurrence waiting or running (both null for a one-off job)."""
    from taskschedd.rules import series_of

    series = series_of(job)
    active = series_active.get(series) if series is not None else None
    return {**job.to_dict(), "series": series, "series_active": active}


def job_rows(jobs: Sequence[JobRecord], series_active: Mapping[str, bool]) -> str:
    """The job table; a SERIES column (``#<occurrence> active|ended``) when a listed job
    belongs to an interval or cron series (``series_active``: by series id)."""
    from taskschedd.rules import series_of

    now = time.time()
    rows = []
    in_series = False
    for j in jobs:
        series = series_of(j)
        in_series = in_series or series is not None
        mark = "-"
        if series is not None:
            state = series_active.get(series)
            mark = f"#{j.series_seq}" + ("" if state is None else f" {series_state(state)}")
        rows.append([
            j.id,
            j.cls,
            "CORRUPT"
            if j.corrupt is not None
            else j.status.name + (" (cancel requested)" if j.cancel_requested else ""),
            j.queue,
            str(j.priority),
            str(j.attempt),
            f"{j.progress:.0f}%",
            mark,
            job_when(j, now),
        ])  # fmt: skip
    headers = [
        "ID", "CLASS", "STATUS", "QUEUE", "PRIO", "ATTEMPT", "PROGRESS", "SERIES", "AT/ENDED"
    ]  # fmt: skip
    if not in_series:  # the column only when it says something: the table stays narrow
        headers.pop(7)
        for row in rows:
            row.pop(7)
    return table(headers, rows, right=(4, 5, 6))


def _indent(text: str, prefix: str) -> str:
    return "\n".join(prefix + line for line in text.rstrip("\n").splitlines())


def _json_block(value: Any) -> str:
    text = dumps(value, indent=2, sort_keys=True)
    return text if "\n" not in text else "\n" + _indent(text, "    ")


def job_text(
    job: JobRecord,
    events: Sequence[EventRecord],
    series_active: bool | None = None,
    *,
    dependencies: Sequence[tuple[str, str]] = (),
    dependents: Sequence[tuple[str, str]] = (),
    limits: Sequence[LimitState] | None = None,
    held_back: str | None = None,
) -> str:
    """Every field of a job, each attempt's error with its traceback, and its events;
    ``series_active``: whether the job's series (if it has one) is still active;
    ``dependencies`` and ``dependents``: (id, status) of the jobs it waits on and of
    those waiting on it; ``limits``: the store's limits (for the job's ``limit:`` line);
    ``held_back``: why the job, due, does not start (a limit, a rate, a key)."""
    from taskschedd.rules import series_of

    status = job.status.name
    if job.reason:
        status += f" ({job.reason})"
    if job.cancel_requested and not job.is_final:
        status += ", cancel requested"
    if job.corrupt is not None:
        status = f"CORRUPT: the stored record does not decode ({job.corrupt}); shown as read"
    fields: list[tuple[str, str]] = [
        ("id", job.id),
        ("class", job.cls),
        ("status", status),
    ]
    if held_back:
        fields.append(("held back", held_back))
    fields += [
        ("queue", job.queue),
        ("priority", str(job.priority)),
    ]
    if job.options.limit:
        fields.append(("limit", job_limit(job, limits, time.time())))
    if job.options.exclusive_key:
        fields.append(("exclusive key", job.options.exclusive_key))
    fields += [
        ("attempt", str(job.attempt)),
        ("progress", f"{job.progress:g}%"),
        ("created", when(job.created)),
        ("at", when(job.at) + _in_zone(job.at, job.options.timezone)),
        ("started", when(job.started)),
        ("ended", when(job.ended)),
        ("node", job.node or "-"),
        ("worker", job.worker or "-"),
        ("lease until", when(job.lease_until)),
        ("updated", when(job.updated)),
    ]
    series = series_of(job)
    if series is not None:
        state = "" if series_active is None else f"{series_state(series_active)}, "
        fields.append(("series", f"{series} ({state}occurrence {job.series_seq})"))
    fields.append(("data", _json_block(job.data)))
    fields.append(("result", _json_block(job.result)))
    width = max(len(k) for k, _ in fields) + 1
    lines = [
        f"{k}:{v}" if v.startswith("\n") else f"{k + ':':<{width}} {printable(v)}"
        for k, v in fields
    ]
    lines.append("options:")
    for key, value in sorted(job.options.stored().items()):
        lines.append(f"    {key}: {dumps(value)}")
    for title, links in (("dependencies", dependencies), ("dependents", dependents)):
        if links:
            lines.append(f"{title}:")
            lines.extend(f"    {printable(i)} {s}" for i, s in links)
    lines.append(f"errors: {len(job.errors) or 'none'}")
    for err in job.errors:
        lines.append(
            f"    attempt {err.attempt} at {when(err.time or None)} [{printable(err.reason)}]: "
            f"{printable(err.type)}: {printable(err.message)}"
        )
        if err.traceback:
            lines.append(_indent(printable(err.traceback, lines=True), "        "))
    lines.append(f"events: {len(events) or 'none'}")
    for event in events:
        lines.append("    " + event_line(event, with_job=False))
    return "\n".join(lines)


def _in_zone(at: float, timezone: str | None) -> str:
    """`` (wall time in the job's cron zone)`` for a job with one."""
    if not timezone:
        return ""
    from datetime import datetime

    from taskschedd.options import zone

    return f" ({datetime.fromtimestamp(at, zone(timezone)):%Y-%m-%d %H:%M %Z} {timezone})"


def event_line(event: EventRecord, *, with_job: bool = True) -> str:
    from taskschedd.timeutil import format_time

    parts = [format_time(event.time)]
    if with_job:
        parts.append(event.job_id)
    parts.append(f"{event.status.name:<10}")
    parts.append(f"attempt={event.attempt}")
    if with_job:
        parts.append(event.cls)
        parts.append(f"queue={event.queue}")
    if event.node:
        parts.append(f"node={event.node}")
    if event.reason:
        parts.append(f"reason={event.reason}")
    if event.error is not None:
        parts.append(f"error={event.error.type}: {_bounded(event.error.message)}")
    return printable(" ".join(parts))


#: The most characters of an error message a one-line output shows (show and --json
#: have all of it).
MESSAGE_LIMIT = 500


def _bounded(message: str) -> str:
    return message[:MESSAGE_LIMIT] + "..." if len(message) > MESSAGE_LIMIT else message


def last_error(job: JobRecord) -> str:
    """The last error of a job on one line: ``TYPE: MESSAGE`` (the traceback's last line
    when there is no message), controls escaped; "" when it has none."""
    if not job.errors:
        return ""
    err = job.errors[-1]
    message = err.message
    if not message.strip() and err.traceback.strip():
        message = err.traceback.strip().splitlines()[-1]
    message = _bounded(message)
    return printable(f"{err.type}: {message}" if err.type else message)


def outcome_line(job: JobRecord) -> str:
    """A job's outcome on one line, for wait and add --wait: ``ID STATUS`` then, for a
    DONE job, ``result=`` and the result as compact JSON; for another final one,
    ``reason=REASON`` and ``error=TYPE: MESSAGE`` (each when known); for one not final
    yet (the wait timed out), ``progress=N%``."""
    parts = [job.id, job.status.name]
    if job.status.name == "DONE":
        parts.append("result=" + dumps(job.result, separators=(",", ":")))
    elif job.is_final:
        if job.reason:
            parts.append(f"reason={printable(job.reason)}")
        error = last_error(job)
        if error:
            parts.append(f"error={error}")
    else:
        parts.append(f"progress={job.progress:g}%")
    return " ".join(parts)


def outcome_dict(job: JobRecord) -> dict[str, Any]:
    """A job for wait --json and add --wait --json: its fields (``status``, ``result``,
    ``reason``, ``errors``...) and ``error``, its last error (null when none)."""
    return {**job.to_dict(), "error": job.errors[-1].to_dict() if job.errors else None}


def node_rows(nodes: Sequence[NodeRecord], live: Sequence[NodeRecord], now: float) -> str:
    rows = [
        [
            n.name,
            n.host,
            str(n.pid),
            "live" if n in live else "STALE",
            str(n.workers_busy),
            str(n.workers_idle),
            str(len(n.running)),
            age(n.heartbeat, now),
            duration(now - n.started),
            ",".join(n.queues) or "-",
            n.version or "-",
        ]
        for n in nodes
    ]
    headers = [
        "NAME", "HOST", "PID", "STATE", "BUSY", "IDLE", "RUNNING", "HEARTBEAT", "UP", "QUEUES",
        "VERSION",
    ]  # fmt: skip
    return table(headers, rows, right=(2, 4, 5, 6))


#: The columns of stats, in status-number order: BLOCKED (7) last, so the columns before
#: it stay where they were.
STATUS_ORDER = (
    "WAITING", "POSTPONED", "PROCESSING", "DONE", "FAILED", "CANCELED", "TIMEOUT", "BLOCKED"
)  # fmt: skip


def stats_text(stats: dict[str, Any]) -> str:
    by_status: dict[str, int] = stats.get("by_status", {})
    lines = ["jobs by status:"]
    total = sum(by_status.values())
    # A status no column names (UNKNOWN: written by another client) still shows.
    shown = [*STATUS_ORDER, *sorted(s for s in by_status if s not in STATUS_ORDER)]
    lines.append(
        "    " + "  ".join(f"{s} {by_status.get(s, 0)}" for s in shown) + f"  (total {total})"
    )
    oldest: dict[str, float] = stats.get("oldest_waiting_age", {})
    for title, key in (("queue", "by_queue"), ("class", "by_class")):
        groups: dict[str, dict[str, int]] = stats.get(key, {})
        lines.append(f"by {title}:")
        if not groups:
            lines.append("    (no jobs)")
            continue
        headers = [title.upper(), *STATUS_ORDER]
        if key == "by_queue":
            headers.append("OLDEST WAITING")
        rows = []
        for name in sorted(groups):
            row = [name, *(str(groups[name].get(s, 0)) for s in STATUS_ORDER)]
            if key == "by_queue":
                row.append(duration(oldest[name]) if name in oldest else "-")
            rows.append(row)
        right = range(1, len(STATUS_ORDER) + 1)
        lines.append(_indent(table(headers, rows, right=right), "    "))
    window = float(stats.get("window", 300.0))
    finished: dict[str, int] = stats.get("finished_in_window", {})
    count = sum(finished.values())
    detail = ", ".join(f"{n} {s}" for s, n in sorted(finished.items())) or "none"
    lines.append(
        f"throughput (last {duration(window)}): {count} finished ({detail}), "
        f"{count * 60.0 / window:.1f}/min"
    )
    return "\n".join(lines)


# -- limits ----------------------------------------------------------------------------------


def limit_next(state: LimitState, now: float) -> tuple[float | None, str]:
    """When the limit lets its next job start: (unix time, text), or (None, text) while it
    is full (then a running job must end first; with max_running 0, never)."""
    cap = state.spec.max_running
    if cap is not None and state.running >= cap:
        return None, "never (max 0)" if cap == 0 else "when one ends"
    at = state.next_start(now)
    if at is None or at <= now:
        return now, "now"
    return at, "in " + duration(at - now)


def capacity(state: LimitState) -> str:
    """running/max_running, as 2/2, or 1/- without a cap on running jobs."""
    cap = state.spec.max_running
    return f"{state.running}/{'-' if cap is None else cap}"


def limit_dict(state: LimitState, now: float) -> dict[str, Any]:
    """A limit for --json: its definition, use and queue; ``next_start`` is when its next
    job may start (``now`` when one may now), null while it is full."""
    from taskschedd.limits import window

    spec, rate = state.spec, state.spec.rate
    at, _ = limit_next(state, now)
    return {
        "name": spec.name,
        "max_running": spec.max_running,
        "rate": None if rate is None else str(rate),
        "rate_count": None if rate is None else rate.count,
        "rate_period": None if rate is None else rate.period,
        "running": state.running,
        "waiting": state.waiting,
        "starts_in_window": None if rate is None else len(window(state.starts, now, rate.period)),
        "full": at is None or at > now,
        "next_start": at,
    }


def limit_rows(states: Sequence[LimitState], now: float) -> str:
    rows = [
        [
            s.spec.name,
            "-" if s.spec.max_running is None else str(s.spec.max_running),
            "-" if s.spec.rate is None else str(s.spec.rate),
            str(s.running),
            str(s.waiting),
            limit_next(s, now)[1],
        ]
        for s in states
    ]
    headers = ["NAME", "MAX RUNNING", "RATE", "RUNNING", "WAITING", "NEXT START"]
    return table(headers, rows, right=(1, 3, 4))


def limits_text(states: Sequence[LimitState]) -> str:
    """The limits section of stats: running/capacity and waiting per limit."""
    if not states:
        return "limits: none defined"
    rows = [
        [s.spec.name, capacity(s), str(s.waiting), "-" if s.spec.rate is None else str(s.spec.rate)]
        for s in states
    ]
    return "limits:\n" + _indent(
        table(["LIMIT", "RUNNING", "WAITING", "RATE"], rows, right=(1, 2)), "    "
    )


def job_limit(job: JobRecord, states: Sequence[LimitState] | None, now: float) -> str:
    """The ``limit:`` line of show: the job's limit, its definition and use."""
    name = job.options.limit
    if not name:
        return "-"
    if states is None:
        return name
    state = next((s for s in states if s.spec.name == name), None)
    if state is None:
        return f"{name} (not defined: its jobs run unlimited)"
    return f"{name} ({state.spec.describe()}; {capacity(state)} running, {state.waiting} waiting)"


class ProgressLine:
    """A one-line progress display on a terminal (stderr), redrawn in place.

    Silent when the stream is not a terminal: cron mails and pipes get no control codes.
    """

    def __init__(self, total: int, stream: TextIO | None = None) -> None:
        self.total = total
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = bool(getattr(self.stream, "isatty", lambda: False)())
        self._last = ""

    def update(self, jobs: Sequence[JobRecord], note: str = "") -> None:
        if not self.enabled or not self.total:
            return
        final = sum(1 for j in jobs if j.is_final)
        bad = sum(1 for j in jobs if j.is_final and j.status.name != "DONE")
        running = sum(1 for j in jobs if j.status.name == "PROCESSING")
        percent = sum(100.0 if j.is_final else j.progress for j in jobs) / self.total
        filled = int(percent / 100 * 30)
        text = f"[{'#' * filled}{'.' * (30 - filled)}] {percent:3.0f}%  {final}/{self.total} final"
        if running:
            text += f", {running} running"
        if bad:
            text += f", {bad} not DONE"
        if note:
            text += f"  ({note})"
        if text != self._last:
            self.stream.write("\r\x1b[K" + text)
            self.stream.flush()
            self._last = text

    def close(self) -> None:
        if self.enabled and self._last:
            self.stream.write("\n")
            self.stream.flush()
            self._last = ""
