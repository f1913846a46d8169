"""taskschedctl list, show, cancel, retry and purge."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

import click

from taskschedctl.common import EXIT_CODES, complete_ids, ctl_options, fail, print_jobs
from taskschedctl.context import Ctl
from taskschedctl.params import Duration, Statuses, Time, merge_statuses

if TYPE_CHECKING:
    from taskschedd.model import EventRecord, JobRecord, JobStatus


@click.command("list", epilog=EXIT_CODES)
@click.option(
    "--status",
    "statuses",
    type=Statuses(),
    multiple=True,
    help="Only these statuses (repeatable or comma list; 'all'). "
    "Default: waiting, postponed, processing, blocked.",
)
@click.option("--all", "all_", is_flag=True, help="Jobs of every status.")
@click.option(
    "--blocked", is_flag=True, help="Only jobs waiting on their dependencies (--status blocked)."
)
@click.option("--class", "classes", multiple=True, metavar="CLASS", help="Only this class.")
@click.option("--queue", "queues", multiple=True, metavar="NAME", help="Only this queue.")
@click.option(
    "--since",
    type=Time(relative=-1),
    help="Only jobs created since then (a time, or a duration ago like 2h).",
)
@click.option(
    "--limit", type=click.IntRange(min=0), default=100, show_default=True, help="0: no limit."
)
@click.option("--json", "as_json", is_flag=True, help="A JSON array of jobs.")
@click.option("--jsonl", is_flag=True, help="One JSON job per line.")
@ctl_options
def list_(
    ctl: Ctl,
    statuses: tuple[tuple[JobStatus, ...], ...],
    all_: bool,
    blocked: bool,
    classes: tuple[str, ...],
    queues: tuple[str, ...],
    since: float | None,
    limit: int,
    as_json: bool,
    jsonl: bool,
) -> None:
    """List jobs, newest last: an aligned table, or JSON for scripts.

    With a limit, the newest jobs are shown.
    """
    from taskschedctl.output import echo, echo_json, echo_jsonl, job_dict, job_rows
    from taskschedd.jobinfo import series_states

    if all_ and statuses:
        raise click.UsageError("--all and --status exclude each other")
    if blocked and (all_ or statuses):
        raise click.UsageError("--blocked excludes --all and --status")
    if blocked:
        from taskschedd.model import JobStatus

        statuses = ((JobStatus.BLOCKED,),)
    if as_json and jsonl:
        raise click.UsageError("--json and --jsonl exclude each other")
    chosen = () if all_ else merge_statuses(statuses)
    sched = ctl.scheduler()
    procs = sched.get_jobs(
        status=chosen if chosen is None else (list(chosen) or "all"),
        cls=list(classes) or None,
        queue=list(queues) or None,
        since=since,
        limit=limit or None,
        newest_first=True,
    )
    jobs = [p.record for p in reversed(procs)]
    active = series_states(sched, jobs)
    if as_json:
        echo_json([job_dict(j, active) for j in jobs])
    elif jsonl:
        echo_jsonl(job_dict(j, active) for j in jobs)
    elif jobs:
        echo(job_rows(jobs, active))
        if limit and len(jobs) == limit:
            click.echo(f"(the newest {limit} jobs; --limit 0 shows all)", err=True)
    elif sys.stdout.isatty():
        click.echo("no jobs (by default only waiting and running ones: try --all)", err=True)


@click.command(epilog=EXIT_CODES)
@click.argument("job_id", metavar="ID", shell_complete=complete_ids())
@click.option("--json", "as_json", is_flag=True, help="The job and its events as JSON.")
@ctl_options
def show(ctl: Ctl, job_id: str, as_json: bool) -> None:
    """Every field of a job: each attempt with its error, the result, its dependencies
    and dependents with their statuses, its limit and exclusive key, why a due job is
    held back, the events."""
    from taskschedctl.output import echo, echo_json, job_dict, job_text
    from taskschedd.jobinfo import dependency_links, held_back, series_states

    sched = ctl.scheduler()
    job = sched.get_job(job_id).record
    deps, dependents = dependency_links(sched, job)
    held = held_back(sched, job)
    limits = sched.limits() if job.options.limit and not as_json else None
    active = series_states(sched, [job])
    events: list[EventRecord] = []
    while True:
        batch = sched.events(job_ids=[job_id], after=events[-1].seq if events else 0)
        events.extend(batch)
        if len(batch) < 1000:
            break
    if as_json:
        links = {
            "dependencies": [{"id": i, "status": s} for i, s in deps],
            "dependents": [{"id": i, "status": s} for i, s in dependents],
        }
        doc = {**job_dict(job, active), **links, "held_back": held}
        echo_json({**doc, "events": [e.to_dict() for e in events]})
    else:
        text = job_text(
            job, events, next(iter(active.values()), None), dependencies=deps,
            dependents=dependents, limits=limits, held_back=held,
        )  # fmt: skip
        echo(text)


# -- cancel / retry / purge --------------------------------------------------------------


@click.command(epilog=EXIT_CODES)
@click.argument(
    "ids",
    metavar="ID...",
    nargs=-1,
    required=True,
    shell_complete=complete_ids("waiting", "postponed", "processing", "blocked"),
)
@click.option("--json", "as_json", is_flag=True, help="The jobs as a JSON array.")
@ctl_options
def cancel(ctl: Ctl, ids: tuple[str, ...], as_json: bool) -> None:
    """Cancel jobs: a waiting one at once; a running one is stopped by its node.

    Jobs that already ended are left as they are. Exit 1 if an id is unknown.
    """
    from taskschedd.errors import JobNotFound
    from taskschedd.jobinfo import blocked_below, series_after_cancel
    from taskschedd.model import JobStatus

    sched = ctl.scheduler()
    changed: list[JobRecord] = []
    missing = False
    for job_id in dict.fromkeys(ids):
        try:
            before = sched.get_job(job_id).record
            waiting = blocked_below(sched, job_id)
            job = sched.cancel_job(job_id).record
        except JobNotFound as exc:
            fail(str(exc))
            missing = True
            continue
        changed.append(job)
        if as_json:
            continue
        if before.is_final:
            text = f"{job.id} already {job.status.name}: not changed"
        elif job.status == JobStatus.CANCELED:
            text = f"{job.id} CANCELED"
        elif job.status == JobStatus.PROCESSING:
            text = f"{job.id} cancel requested: running on {job.node or '?'}, its node stops it"
        else:
            text = f"{job.id} {job.status.name}"
        if waiting:
            ended = [r for r in sched.get_jobs(ids=sorted(waiting)) if r.status.is_final]
            if ended:
                text += f", and {len(ended)} dependent(s) canceled"
        click.echo(text + series_after_cancel(sched, job))
    if as_json:
        print_jobs(changed, True)
    if missing:
        click.get_current_context().exit(1)


@click.command(epilog=EXIT_CODES)
@click.argument(
    "ids",
    metavar="ID...",
    nargs=-1,
    required=True,
    shell_complete=complete_ids("failed", "timeout", "canceled"),
)
@click.option("--json", "as_json", is_flag=True, help="The jobs as a JSON array.")
@ctl_options
def retry(ctl: Ctl, ids: tuple[str, ...], as_json: bool) -> None:
    """Re-queue FAILED, TIMEOUT or CANCELED jobs with a fresh retry budget.

    Exit 1 if an id is unknown or a job is in another status (it is left as it is), or
    if a job is canceled again at once because a job it depends on still failed (retry
    that one first). Retrying a job does not retry the dependents its failure canceled.
    """
    from taskschedd.dependencies import MISSING
    from taskschedd.errors import TaskSchedError
    from taskschedd.jobinfo import canceled_by, failed_dependency_of

    sched = ctl.scheduler()
    done: list[JobRecord] = []
    bad = False
    wanted = list(dict.fromkeys(ids))
    for index, job_id in enumerate(wanted):
        try:
            job = sched.retry_job(job_id).record
        except TaskSchedError as exc:
            fail(str(exc))
            bad = True
            continue
        done.append(job)
        failed = failed_dependency_of(sched, job)
        if failed is not None:
            # Re-decided at once against a dependency that still failed: canceled again.
            dep_id, status = failed
            if status == MISSING:
                fail(
                    f"{job.id} {job.status.name} again: dependency {dep_id} no longer exists "
                    "(purged or deleted), so it cannot run; add it again without that dependency"
                )
            else:
                fail(
                    f"{job.id} {job.status.name} again: dependency {dep_id} ended {status}; "
                    f"retry {dep_id} first (then {job.id})"
                )
            bad = True
            continue
        if not as_json:
            line = f"{job.id} {job.status.name} (re-queued)"
            # Dependents retried later in this same call are not left behind.
            left = canceled_by(sched, job.id) - set(wanted[index + 1 :])
            if left:
                line += (
                    f"; {len(left)} dependent(s) it canceled stay CANCELED: "
                    "retry them too (after it)"
                )
            click.echo(line)
    if as_json:
        print_jobs(done, True)
    if bad:
        click.get_current_context().exit(1)


@click.command(epilog=EXIT_CODES)
@click.option(
    "--status",
    "statuses",
    type=Statuses(),
    multiple=True,
    help="Only these final statuses (repeatable). Default: done, failed, canceled, timeout.",
)
@click.option(
    "--older-than",
    type=Duration(),
    required=True,
    help="Only jobs that ended at least this long ago (0: every final job).",
)
@click.option("-y", "--yes", is_flag=True, help="Do not ask (needed when stdin is no terminal).")
@click.option("--json", "as_json", is_flag=True, help='Print {"purged": N}.')
@ctl_options
def purge(
    ctl: Ctl,
    statuses: tuple[tuple[JobStatus, ...], ...],
    older_than: float,
    yes: bool,
    as_json: bool,
) -> None:
    """Delete final jobs (and their events) that ended more than --older-than ago."""
    from taskschedctl.output import duration, echo_json
    from taskschedd.model import FINAL
    from taskschedd.redact import redact_url

    chosen = merge_statuses(statuses) or FINAL
    active = [s.name.lower() for s in chosen if not s.is_final]
    if active:
        raise click.BadParameter(
            f"only final jobs can be purged, not {', '.join(active)}; accepted: done, "
            "failed, canceled, timeout",
            param_hint="'--status'",
        )
    sched = ctl.scheduler()
    if not yes:
        if not sys.stdin.isatty():
            raise click.UsageError(
                "refusing to purge without confirmation: stdin is not a terminal; add --yes"
            )
        names = ", ".join(s.name for s in chosen)
        question = (
            f"Delete {names} jobs that ended more than {duration(older_than)} ago "
            f"from {redact_url(ctl.url)}?"
        )
        if not click.confirm(question, default=False, err=True):
            click.echo("nothing purged", err=True)
            click.get_current_context().exit(1)
    count = sched.purge(list(chosen), older_than=older_than)
    if as_json:
        echo_json({"purged": count})
    else:
        click.echo(f"purged {count} job{'s' if count != 1 else ''}")
