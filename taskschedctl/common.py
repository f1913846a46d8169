"""What the commands share: the store options, job id completion, exit on job failure."""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import click

from taskschedctl.context import Ctl

if TYPE_CHECKING:
    from click.shell_completion import CompletionItem

    from taskschedd.model import JobRecord, NodeRecord
    from taskschedd.scheduler import Scheduler
    from taskschedd.store import Store

EXIT_CODES = """\b
Exit codes:
  0    success
  1    a job failed, timed out or was canceled (wait); a job was not found
  2    usage error or bad input (JSON, duration, time, class, option)
  65   check: the store holds job records that do not decode
  69   the store is unavailable
  78   the configuration is invalid or missing
  124  wait timed out
  130  interrupted (Ctrl-C)
  141  the reader of the output went away (| head)"""


#: A node is stale after this long without a heartbeat, when its entry does not say how
#: long it is live (written by taskschedd 0.4) and there is no configuration (with one:
#: 3 x its heartbeat_interval).
DEFAULT_STALE_AFTER = 15.0

#: How a node counts as live, for messages (without --stale-after).
LIVE_RULE = "a node is live for 3 x its own heartbeat_interval after its heartbeat"


def fail(message: str) -> None:
    """Report one error without stopping (commands that take several ids)."""
    from taskschedctl.output import printable
    from taskschedd.redact import redact_text

    click.echo(f"taskschedctl: error: {printable(redact_text(message))}", err=True)


def warn(message: str) -> None:
    """Report something the user should know; the command goes on (exit code unchanged)."""
    from taskschedctl.output import printable
    from taskschedd.redact import redact_text

    click.echo(f"taskschedctl: warning: {printable(redact_text(message))}", err=True)


def stale_after(ctl: Ctl, given: float | None = None) -> float:
    """Seconds without a heartbeat after which a node whose entry does not say how long
    it is live (taskschedd 0.4) no longer counts as live; ``given``: every node."""
    if given is not None:
        return given
    config = ctl.config
    return 3 * config.heartbeat_interval if config is not None else DEFAULT_STALE_AFTER


def live_nodes(
    ctl: Ctl, store: Store, now: float, given: float | None = None
) -> tuple[list[NodeRecord], list[NodeRecord]]:
    """Every entry, and those live at ``now``: each by its own ``live_until`` (the node's
    own heartbeat_interval, not this configuration's), or with ``given`` (--stale-after)
    by a heartbeat within it."""
    found = store.nodes()
    window = stale_after(ctl, given)
    if given is not None:
        return found, [n for n in found if now - n.heartbeat <= given]
    return found, [n for n in found if n.live(now, window)]


def warn_unserved(ctl: Ctl, sched: Scheduler, jobs: Sequence[JobRecord]) -> None:
    """Warn about each queue of these jobs (those not started yet) that no live node
    serves: they would wait until one starts. A node that names no queues (another
    client's entry) is taken to serve any. Advisory: a store error here says nothing."""
    from taskschedd.errors import StoreError
    from taskschedd.model import JobStatus

    queues = sorted({j.queue for j in jobs if j.status in (JobStatus.WAITING, JobStatus.POSTPONED)})
    if not queues:
        return
    try:
        _, live = live_nodes(ctl, sched.store, time.time())
    except StoreError:
        return
    served = {q for n in live for q in n.queues}
    for queue in queues:
        if queue in served or any(not n.queues for n in live):
            continue
        others = f"; the live nodes serve {', '.join(sorted(served))}" if served else ""
        warn(
            f"no live node serves queue {queue} (none that does is live: {LIVE_RULE}"
            f"{others}): the job waits until a node serving {queue} runs"
        )


# -- shared options ---------------------------------------------------------------------


def ctl_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """-c/--config and --store after the command name too; they override the group's."""

    @functools.wraps(f)
    def wrapper(*args: Any, config_path: str | None, store: str | None, **kwargs: Any) -> Any:
        ctl = click.get_current_context().ensure_object(Ctl)
        ctl.override(config_path, store)
        return f(ctl, *args, **kwargs)

    wrapper = click.option(
        "--store", metavar="URL", help="The store to use (overrides the configuration's)."
    )(wrapper)
    wrapper = click.option(
        "-c", "--config", "config_path", metavar="PATH", help="A taskschedd configuration file."
    )(wrapper)
    return wrapper


def _completion_ctl(ctx: click.Context) -> Ctl:
    ctl = Ctl()
    for c in reversed(list(_lineage(ctx))):
        store = c.params.get("store")
        ctl.override(c.params.get("config_path"), store if store else None)
    return ctl


def _lineage(ctx: click.Context) -> Sequence[click.Context]:
    out = []
    node: click.Context | None = ctx
    while node is not None:
        out.append(node)
        node = node.parent
    return out


def complete_ids(
    *statuses: str,
) -> Callable[[click.Context, click.Parameter, str], list[CompletionItem]]:
    """Job ids from the store, when that is cheap (an existing SQLite file)."""

    def complete(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[Any]:
        from click.shell_completion import CompletionItem

        from taskschedd.storeurl import is_sqlite

        try:
            ctl = _completion_ctl(ctx)
            if not is_sqlite(ctl.url):
                return []
            sched = ctl.scheduler()
            try:
                jobs = sched.get_jobs(status=list(statuses) or "all", limit=200, newest_first=True)
            finally:
                sched.close()
        except Exception:
            return []  # completion must never print a traceback into the shell
        return [
            CompletionItem(j.id, help=f"{j.status.name} {j.cls}")
            for j in jobs
            if j.id.startswith(incomplete)
        ]

    return complete


def print_outcomes(jobs: Sequence[JobRecord], as_json: bool, *, single: bool = False) -> None:
    """What wait and add --wait print: one line per job (see output.outcome_line), or the
    jobs as JSON with their last ``error`` (one object when ``single``)."""
    from taskschedctl.output import echo_json, outcome_dict, outcome_line

    if as_json:
        echo_json(outcome_dict(jobs[0]) if single else [outcome_dict(j) for j in jobs])
    else:
        for job in jobs:
            click.echo(outcome_line(job))


def print_jobs(jobs: Sequence[JobRecord], as_json: bool, *, single: bool = False) -> None:
    from taskschedctl.output import echo_json

    if as_json:
        echo_json(jobs[0].to_dict() if single else [j.to_dict() for j in jobs])
    else:
        for job in jobs:
            click.echo(job.id)


def exit_for(jobs: Sequence[JobRecord]) -> None:
    """Exit 1 (and say why on stderr) when any job did not end DONE."""
    bad = [j for j in jobs if j.status.name != "DONE"]
    for job in bad:
        last = job.errors[-1] if job.errors else None
        why = f"{last.type}: {last.message}" if last else (job.reason or "no error recorded")
        fail(f"job {job.id} ended {job.status.name}: {why}")
    if bad:
        click.get_current_context().exit(1)
