"""taskschedctl wait and events: following jobs as they run."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from taskschedctl.common import (
    EXIT_CODES,
    complete_ids,
    ctl_options,
    exit_for,
    print_outcomes,
    warn_unserved,
)
from taskschedctl.context import Ctl
from taskschedctl.params import Duration, Statuses, Time, merge_statuses

if TYPE_CHECKING:
    from taskschedd.model import EventRecord, JobStatus


@click.command(epilog=EXIT_CODES)
@click.argument("ids", metavar="ID...", nargs=-1, required=True, shell_complete=complete_ids())
@click.option("--timeout", type=Duration(), help="Give up after this long (exit 124).")
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="Print the jobs as a JSON array (each with its last 'error').",
)
@ctl_options
def wait(ctl: Ctl, ids: tuple[str, ...], timeout: float | None, as_json: bool) -> None:
    """Wait until the jobs are final (retries included), with a progress bar on a terminal.

    Prints one line per job: ID STATUS, then result=JSON for a DONE job, reason=REASON
    error=TYPE: MESSAGE for one that ended otherwise, progress=N% for one not final when
    the timeout passed. Exit 0 when all are DONE, 1 when any ended FAILED, TIMEOUT or
    CANCELED, 124 on timeout. Warns when no live node serves a job's queue. Rides out
    brief store outages.
    """
    from taskschedctl.follow import Unfinished, wait_jobs

    sched = ctl.scheduler()
    try:
        jobs = wait_jobs(sched, ids, timeout, on_first=lambda js: warn_unserved(ctl, sched, js))
    except Unfinished as exc:
        if exc.jobs:
            print_outcomes(exc.jobs, as_json)
        raise
    print_outcomes(jobs, as_json)
    exit_for(jobs)


@click.command(epilog=EXIT_CODES)
@click.option("-f", "--follow", is_flag=True, help="Keep printing new events (Ctrl-C stops).")
@click.option(
    "--job",
    "job_ids",
    multiple=True,
    metavar="ID",
    shell_complete=complete_ids(),
    help="Only this job.",
)
@click.option("--class", "classes", multiple=True, metavar="CLASS", help="Only this class.")
@click.option("--status", "statuses", type=Statuses(), multiple=True, help="Only these statuses.")
@click.option("--queue", "queues", multiple=True, metavar="NAME", help="Only this queue.")
@click.option(
    "--since", type=Time(relative=-1), help="Events since then (a time, or a duration ago)."
)
@click.option(
    "-n",
    "--lines",
    type=click.IntRange(min=0),
    help="Show the last N past events (default 20, or all with --since; 0: all).",
)
@click.option("--jsonl", is_flag=True, help="One JSON event per line.")
@ctl_options
def events(
    ctl: Ctl,
    follow: bool,
    job_ids: tuple[str, ...],
    classes: tuple[str, ...],
    statuses: tuple[tuple[JobStatus, ...], ...],
    queues: tuple[str, ...],
    since: float | None,
    lines: int | None,
    jsonl: bool,
) -> None:
    """The event stream (every status change of every job), like tail [-f]."""
    from taskschedctl.follow import follow_events, recent_events
    from taskschedctl.output import echo, echo_jsonl, event_line
    from taskschedd.scheduler import event_matcher

    match = event_matcher(
        ids=job_ids, classes=classes, statuses=merge_statuses(statuses) or (), queues=queues
    )
    count = lines if lines is not None else (0 if since is not None else 20)

    def emit(event: EventRecord) -> None:
        if jsonl:
            echo_jsonl([event.to_dict()])
        else:
            echo(event_line(event))

    sched = ctl.scheduler()
    past, top = recent_events(sched.store, lines=count, job_ids=job_ids, since=since, match=match)
    for event in past:
        emit(event)
    if follow:
        follow_events(sched.store, after=top, job_ids=job_ids, match=match, emit=emit)
