"""Click parameter types for durations, times, statuses, job data and limits.

Each type fails with click's usage error (exit 2) naming the option and what it accepts,
before anything is opened or written.
"""

from __future__ import annotations

import json
import sys
import time
from typing import TYPE_CHECKING, Any

import click
from click.shell_completion import CompletionItem

if TYPE_CHECKING:
    from taskschedd.limits import Rate
    from taskschedd.model import JobStatus

STATUS_NAMES = ("waiting", "postponed", "processing", "done", "failed", "canceled", "timeout")


class Duration(click.ParamType[float]):
    """Seconds from '90', '10m', '1h30m'; ``allow_minus_one`` for interval's 'again at once'."""

    name = "duration"

    def __init__(self, *, allow_minus_one: bool = False) -> None:
        self.allow_minus_one = allow_minus_one

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> float:
        if isinstance(value, float):
            return value
        if self.allow_minus_one and str(value).strip() == "-1":
            return -1.0
        from taskschedd.timeutil import DURATION_HELP, parse_duration

        try:
            return parse_duration(value)
        except ValueError:
            extra = " (or -1: again at once)" if self.allow_minus_one else ""
            self.fail(f"expected {DURATION_HELP}{extra}, got {value!r}", param, ctx)


class Time(click.ParamType[float]):
    """A point in time: ISO 8601 or unix seconds; with ``relative``, also a duration from now
    (``relative=1``: in the future, ``-1``: ago). A bare number is always a unix time."""

    name = "time"

    def __init__(self, relative: int = 0) -> None:
        self.relative = relative

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> float:
        if isinstance(value, float):
            return value
        from taskschedd.timeutil import TIME_HELP, parse_duration, parse_time

        try:
            return parse_time(value)
        except ValueError:
            pass
        if self.relative:
            try:
                return time.time() + self.relative * parse_duration(value)
            except ValueError:
                pass
            way = "from now" if self.relative > 0 else "ago"
            self.fail(
                f"expected {TIME_HELP}, or a duration {way} like 10m or 2h, got {value!r}",
                param,
                ctx,
            )
        self.fail(f"expected {TIME_HELP}, got {value!r}", param, ctx)


class Statuses(click.ParamType["tuple[JobStatus, ...]"]):
    """Status names (any case), numbers 0-7, comma lists, or 'all' (an empty tuple)."""

    name = "status"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> tuple[JobStatus, ...]:
        if isinstance(value, tuple):
            return value
        from taskschedd.model import JobStatus

        out: list[JobStatus] = []
        for part in str(value).split(","):
            part = part.strip()
            if part.lower() == "all":
                return ()
            try:
                out.append(JobStatus.parse(part))
            except ValueError:
                self.fail(
                    f"unknown status {part!r}; accepted: {', '.join(STATUS_NAMES)}, all "
                    "(names in any case, numbers 0-7, or a comma list)",
                    param,
                    ctx,
                )
        return tuple(out)

    def shell_complete(
        self, ctx: click.Context, param: click.Parameter, incomplete: str
    ) -> list[CompletionItem]:
        return [CompletionItem(n) for n in (*STATUS_NAMES, "all") if n.startswith(incomplete)]


def merge_statuses(values: tuple[tuple[JobStatus, ...], ...]) -> tuple[JobStatus, ...] | None:
    """Repeated --status values as one tuple; None when not given, () for 'all'."""
    if not values:
        return None
    if any(v == () for v in values):
        return ()
    return tuple(dict.fromkeys(s for v in values for s in v))


def load_data(text: str | None) -> Any:
    """DATA as JSON text, ``@file`` or ``-`` (stdin); ``{}`` when not given (as for
    Scheduler.add_job); usage errors name the problem."""
    if text is None:
        return {}
    source = "DATA"
    if text == "-":
        source = "DATA from stdin"
        text = sys.stdin.read()
    elif text.startswith("@"):
        path = text[1:]
        source = f"DATA file {path!r}"
        try:
            with open(path, encoding="utf-8") as fh:
                text = fh.read()
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise click.BadParameter(f"cannot read {source}: {reason}", param_hint="DATA") from None
    try:
        return json.loads(text)
    except RecursionError:
        from taskschedd.options import MAX_JSON_DEPTH

        raise click.BadParameter(
            f"{source} is nested too deeply (job data takes at most {MAX_JSON_DEPTH} levels)",
            param_hint="DATA",
        ) from None
    except json.JSONDecodeError as exc:
        raise click.BadParameter(
            f"{source} is not valid JSON ({exc}); give a JSON value such as "
            """'{"to": "a@example.org"}', '[1, 2]' or '"text"', @FILE or - for stdin""",
            param_hint="DATA",
        ) from None
    except ValueError as exc:  # an integer too long for int(): CPython's own guard
        from taskschedd.options import MAX_INT_DIGITS

        raise click.BadParameter(
            f"{source} holds a number of more than {MAX_INT_DIGITS} digits, which cannot be "
            f"read ({exc.args[0].split(':')[0]}); give such numbers as strings",
            param_hint="DATA",
        ) from None


# -- limits (taskschedd.limits) ------------------------------------------------------------


class LimitName(click.ParamType[str]):
    """A limit's name, checked as the store and the option ``limit`` check it."""

    name = "name"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        from taskschedd.errors import OptionError
        from taskschedd.limits import LIMIT_NAME_HELP, check_name

        try:
            return check_name(value)
        except OptionError:
            hint = "NAME" if isinstance(param, click.Argument) else None  # not '[NAME]'
            raise click.BadParameter(
                f"expected {LIMIT_NAME_HELP}, got {value!r}", ctx, param, hint
            ) from None


class ExclusiveKey(click.ParamType[str]):
    """An exclusive key: any short printable string (customer:42)."""

    name = "key"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        from taskschedd.errors import OptionError
        from taskschedd.limits import MAX_KEY_LENGTH, check_key

        try:
            return check_key(value)
        except OptionError:
            self.fail(
                f"expected a string of 1-{MAX_KEY_LENGTH} printable characters "
                f"(e.g. customer:42), got {value!r}",
                param,
                ctx,
            )


class MaxRunning(click.ParamType[int]):
    """How many jobs of a limit may run at once: 0 to MAX_RUNNING."""

    name = "n"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        from taskschedd.limits import MAX_RUNNING

        if isinstance(value, int) and not isinstance(value, bool):
            return value
        text = str(value).strip()
        if text.isdigit() and int(text) <= MAX_RUNNING:
            return int(text)
        self.fail(
            f"expected an integer from 0 to {MAX_RUNNING} (0 holds every job of the limit), "
            f"got {value!r}",
            param,
            ctx,
        )


class RateParam(click.ParamType["Rate"]):
    """A rate: at most COUNT starts in any window of PERIOD (100/1m)."""

    name = "rate"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Rate:
        from taskschedd.errors import OptionError
        from taskschedd.limits import Rate

        try:
            return Rate.parse(value)
        except OptionError as exc:
            self.fail(str(exc).removeprefix("rate: "), param, ctx)
