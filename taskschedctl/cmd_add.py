"""taskschedctl add: queue a job from the command line (cron lines included)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import click

from taskschedctl.common import (
    EXIT_CODES,
    ctl_options,
    exit_for,
    print_jobs,
    print_outcomes,
    warn,
    warn_unserved,
)
from taskschedctl.context import Ctl
from taskschedctl.params import Duration, ExclusiveKey, LimitName, Time, load_data

if TYPE_CHECKING:
    from taskschedd.scheduler import Scheduler


class _OptionalValue(click.Option):
    """An option whose value is optional, GNU style: ``--wait`` or ``--wait=TIMEOUT``."""

    def get_help_record(self, ctx: click.Context) -> tuple[str, str] | None:
        record = super().get_help_record(ctx)
        if record is None:
            return None
        return f"{self.opts[0]}[={self.metavar}]", record[1]


class _AddCommand(click.Command):
    """Rewrites a bare ``--wait`` to ``--wait=`` so that it never swallows CLASS or DATA."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        out = []
        for i, arg in enumerate(args):
            if arg == "--":
                out.extend(args[i:])
                break
            out.append("--wait=" if arg == "--wait" else arg)
        return super().parse_args(ctx, out)


@click.command(cls=_AddCommand, epilog=EXIT_CODES)
@click.argument("cls_path", metavar="CLASS")
@click.argument("data", required=False, metavar="[DATA]")
@click.option("--at", type=Time(), help="Run at this time (ISO 8601 or unix time).")
@click.option("--in", "in_", type=Duration(), metavar="DURATION", help="Run after this delay.")
@click.option(
    "--interval",
    type=Duration(allow_minus_one=True),
    help="Run again this long after each run (-1: again at once).",
)
@click.option(
    "--interval-reference",
    type=click.Choice(["end", "start"]),
    help="Count --interval from the end (default) or the start of a run.",
)
@click.option("--cron", metavar="EXPR", help="Recur on a cron schedule ('*/5 * * * *', @daily).")
@click.option(
    "--timezone",
    metavar="ZONE",
    help="Read --cron in this IANA time zone's wall clock (Europe/Zurich; default UTC).",
)
@click.option("--retry", type=click.IntRange(min=-1), help="Retries after a failure (-1: endless).")
@click.option("--retry-interval", type=Duration(), help="Delay before a retry (default 5m).")
@click.option(
    "--backoff",
    type=click.Choice(["fixed", "exponential"]),
    help="Retry delays: fixed, or doubling from --retry-interval (with jitter).",
)
@click.option("--backoff-max", type=Duration(), help="The longest exponential retry delay.")
@click.option("--timeout", type=Duration(), help="Stop a run after this long (0: never).")
@click.option(
    "--max-memory",
    metavar="SIZE",
    help="Stop a run whose processes use more memory than this (512M, 2G; default: the "
    "node's max_job_memory).",
)
@click.option("--priority", type=int, help="Higher runs first within a queue (default 0).")
@click.option("--queue", metavar="NAME", help="The queue (default: default).")
@click.option("--id", "job_id", metavar="ID", help="The job id (default: a random one).")
@click.option(
    "--after",
    "after",
    multiple=True,
    metavar="ID",
    help="Run only after this job ended DONE (repeatable: after all of them); the job "
    "is BLOCKED until then.",
)
@click.option(
    "--on-dependency-failure",
    type=click.Choice(["cancel", "run"]),
    help="When a job of --after ends FAILED, CANCELED or TIMEOUT: cancel this job "
    "(default), or run it anyway once all of them ended.",
)
@click.option(
    "--limit",
    "limit",
    type=LimitName(),
    metavar="NAME",
    help="Join this cluster-wide limit (taskschedctl limits set NAME ...): the job waits "
    "while the limit is full or its rate used up (default: job_defaults' limit, else "
    "the limit queue:QUEUE or class:CLASS if defined).",
)
@click.option(
    "--exclusive-key",
    type=ExclusiveKey(),
    metavar="KEY",
    help="Never run at the same time as another job with this key, anywhere in the "
    "cluster (customer:42).",
)
@click.option(
    "--expires",
    type=Time(relative=1),
    help="Cancel the job if it has not started by then (a time, or a duration from now).",
)
@click.option(
    "--ignore-max-children", is_flag=True, help="Run in an extra worker when all are busy."
)
@click.option(
    "--once",
    is_flag=True,
    help="Add unless the same class and data is already waiting or running (safe for "
    "overlapping cron runs); changed options replace the old job.",
)
@click.option("--ignore-data", is_flag=True, help="With --once: compare the class only.")
@click.option(
    "--wait",
    "wait_",
    cls=_OptionalValue,
    metavar="TIMEOUT",
    help="Then wait until the job is final, print its outcome as 'wait' does and exit "
    "like it (0 DONE, 1 not DONE, 124 timeout). Give a timeout as --wait=10m.",
)
@click.option(
    "--create",
    is_flag=True,
    help="Create the SQLite store if there is none (without it, a store that does not "
    "exist is an error: a mistyped path must not queue into a new file).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the job as JSON.")
@ctl_options
def add(
    ctl: Ctl,
    cls_path: str,
    data: str | None,
    at: float | None,
    in_: float | None,
    interval: float | None,
    interval_reference: str | None,
    cron: str | None,
    timezone: str | None,
    retry: int | None,
    retry_interval: float | None,
    backoff: str | None,
    backoff_max: float | None,
    timeout: float | None,
    max_memory: str | None,
    priority: int | None,
    queue: str | None,
    job_id: str | None,
    after: tuple[str, ...],
    on_dependency_failure: str | None,
    limit: str | None,
    exclusive_key: str | None,
    expires: float | None,
    ignore_max_children: bool,
    once: bool,
    ignore_data: bool,
    wait_: str | None,
    create: bool,
    as_json: bool,
) -> None:
    """Queue a job of CLASS with DATA and print its id.

    CLASS is a dotted path (myapp.jobs.SendMail) in a module the configuration allows;
    it is not imported here (without a configuration it cannot be checked: a warning
    says so). Warns when no live node serves the job's queue. DATA is JSON text, @FILE, or - for stdin (default: {}).
    Durations: 90, 30s, 10m, 2h, 7d, 1h30m. Times: 2026-01-31T08:00:00Z or unix seconds.
    """
    from taskschedd.loader import check_allowed, split_path

    if at is not None and in_ is not None:
        raise click.UsageError("--at and --in exclude each other: give one start time")
    if cron is not None and interval is not None:
        raise click.UsageError("--cron and --interval exclude each other: give one recurrence")
    if ignore_data and not once:
        raise click.UsageError("--ignore-data only applies to --once")
    wait_timeout = _wait_timeout(wait_)
    split_path(cls_path)
    payload = load_data(data)
    config = ctl.config
    if config is not None:  # before the store is opened; Scheduler checks it again
        check_allowed(cls_path, config.allowed_modules, ctl.config_source())
    else:
        warn(
            f"{cls_path} was not checked against allowed_modules: no configuration was given "
            "(name it with -c FILE or TASKSCHED_CONFIG); the job is added, and a node fails "
            "it if its allowed_modules do not include the class"
        )
    given = {
        "at": time.time() + in_ if in_ is not None else at,
        "interval": interval,
        "interval_reference": interval_reference,
        "cron": cron,
        "timezone": timezone,
        "retry": retry,
        "retry_interval": retry_interval,
        "retry_backoff": backoff,
        "retry_backoff_max": backoff_max,
        "timeout": timeout,
        "max_memory": max_memory,
        "priority": priority,
        "queue": queue,
        "id": job_id,
        "depends_on": list(after) or None,
        "on_dependency_failure": on_dependency_failure,
        "limit": limit,
        "exclusive_key": exclusive_key,
        "expires": expires,
        "ignore_max_children": ignore_max_children or None,
        "ignore_data": ignore_data or None,
    }
    options = {k: v for k, v in given.items() if v is not None}
    sched = ctl.scheduler(create=create)
    adder = sched.add_job_once if once else sched.add_job
    job = adder(cls_path, payload, **options)
    warn_unserved(ctl, sched, [job.record])
    if limit is not None:
        _warn_undefined(sched, limit)
    if wait_ is None:
        print_jobs([job.record], as_json, single=True)
        return
    if not as_json:
        click.echo(job.id)  # at once: the job can be looked at while we wait
    from taskschedctl.follow import Unfinished, wait_jobs

    try:
        (final,) = wait_jobs(sched, [job.id], wait_timeout)
    except Unfinished as exc:
        if exc.jobs:
            print_outcomes(exc.jobs, as_json, single=True)
        raise
    print_outcomes([final], as_json, single=True)
    exit_for([final])


def _warn_undefined(sched: Scheduler, name: str) -> None:
    """A job of a limit nobody defined runs unlimited: say so (a typo, or a limit still
    to be set). Advisory: a store error here says nothing."""
    from taskschedd.errors import StoreError

    try:
        defined = any(s.spec.name == name for s in sched.limits())
    except StoreError:
        return
    if not defined:
        warn(
            f"no limit {name} is defined: the job runs unlimited until one is "
            f"(taskschedctl limits set {name} --max-running N)"
        )


def _wait_timeout(text: str | None) -> float | None:
    """--wait (empty: no timeout) or --wait=TIMEOUT."""
    if not text:
        return None
    from taskschedd.timeutil import DURATION_HELP, parse_duration

    try:
        return parse_duration(text)
    except ValueError:
        raise click.BadParameter(
            f"expected {DURATION_HELP}, got {text!r}", param_hint="'--wait'"
        ) from None
