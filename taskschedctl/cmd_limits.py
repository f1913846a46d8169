"""taskschedctl limits: set, list and delete the cluster-wide limits (taskschedd.limits).

One command with an ACTION argument rather than a group of subcommands, so that its
options are documented and checked as every other command's are (tests/docs).
"""

from __future__ import annotations

import sys
import time
from typing import TYPE_CHECKING, Any

import click

from taskschedctl.common import EXIT_CODES, ctl_options, fail, warn
from taskschedctl.context import Ctl
from taskschedctl.params import LimitName, MaxRunning, RateParam

if TYPE_CHECKING:
    from taskschedd.limits import LimitSpec, Rate

ACTIONS = ("set", "list", "delete")


@click.command(epilog=EXIT_CODES)
@click.argument("action", metavar="ACTION", type=click.Choice(ACTIONS))
@click.argument("name", metavar="[NAME]", required=False, type=LimitName())
@click.option(
    "--max-running",
    type=MaxRunning(),
    metavar="N",
    help="set: at most N jobs of the limit run at once, cluster-wide (0: none runs).",
)
@click.option(
    "--rate",
    type=RateParam(),
    metavar="RATE",
    help="set: at most COUNT starts in any window of PERIOD, cluster-wide: 100/1m, 20/1s, "
    "5/s, 1000/1h.",
)
@click.option("--json", "as_json", is_flag=True, help="list: the limits as a JSON array.")
@ctl_options
def limits(
    ctl: Ctl,
    action: str,
    name: str | None,
    max_running: int | None,
    rate: Rate | None,
    as_json: bool,
) -> None:
    """Cluster-wide limits that jobs join with add --limit NAME.

    \b
    limits set NAME [--max-running N] [--rate RATE]   create or replace a limit
    limits list [--json]                                each limit, its use and queue
    limits delete NAME                                  its jobs then run unlimited

    A limit named queue:QUEUE or class:CLASS is joined by every job added later to that
    queue or of that class without a --limit of its own. set replaces the whole
    definition: give every value the limit keeps. Limits in the nodes' configuration
    (limits:) are set again at each node start and reload: there, the configuration wins.
    """
    if action != "set" and (max_running is not None or rate is not None):
        given = "--max-running" if max_running is not None else "--rate"
        raise click.UsageError(f"{given} only applies to 'limits set'")
    if as_json and action != "list":
        raise click.UsageError("--json only applies to 'limits list'")
    if action == "list":
        if name is not None:
            raise click.UsageError("'limits list' takes no NAME: it lists every limit")
        _list(ctl, as_json)
        return
    if name is None:
        raise click.UsageError(f"'limits {action}' needs the NAME of a limit")
    if action == "set":
        if max_running is None and rate is None:
            raise click.UsageError(
                "'limits set' needs --max-running N, --rate RATE (like 100/1m), or both"
            )
        _set(ctl, name, max_running, rate)
    else:
        _delete(ctl, name)


def _set(ctl: Ctl, name: str, max_running: int | None, rate: Rate | None) -> None:
    sched = ctl.scheduler()
    before = {s.spec.name: s.spec for s in sched.limits()}.get(name)
    spec = sched.set_limit(name, max_running=max_running, rate=rate)
    line = f"limit {name} set: {spec.describe()}"
    if before is None:
        line += " (new)"
    elif before != spec:
        line += f" (was: {before.describe()})"
    else:
        line += " (unchanged)"
    click.echo(line)
    configured = configured_limits(ctl).get(name)
    if configured is not None and configured != spec:
        warn(
            f"the configuration {ctl.config_source()} defines limit {name} as "
            f"{configured.describe()}: nodes using it set that again at their next start "
            "or reload (the configuration wins); change it there to keep this"
        )


def _delete(ctl: Ctl, name: str) -> None:
    sched = ctl.scheduler()
    if not sched.delete_limit(name):
        fail(f"no limit named {name!r}; 'taskschedctl limits list' shows the defined ones")
        click.get_current_context().exit(1)
    click.echo(f"limit {name} deleted: its jobs now run without it")
    if name in configured_limits(ctl):
        warn(
            f"the configuration {ctl.config_source()} defines limit {name}: nodes using it "
            "set it again at their next start or reload; remove it there too"
        )


def _list(ctl: Ctl, as_json: bool) -> None:
    from taskschedctl.output import echo, echo_json, limit_dict, limit_rows

    sched = ctl.scheduler()
    now = time.time()
    states = sched.limits()
    if as_json:
        echo_json([limit_dict(s, now) for s in states])
    elif states:
        echo(limit_rows(states, now))
    elif sys.stdout.isatty():
        click.echo(
            "no limits defined (taskschedctl limits set NAME --max-running N --rate RATE)",
            err=True,
        )


def configured_limits(ctl: Ctl) -> dict[str, LimitSpec]:
    """The limits of the configuration this command read (``limits:``), by name; {} when
    there is none (or it has no such key)."""
    from taskschedd.limits import LimitSpec

    config = ctl.config if ctl.config_source() is not None else None
    given: Any = getattr(config, "limits", None) if config is not None else None
    if not given:
        return {}
    if isinstance(given, dict):
        items = [v if isinstance(v, LimitSpec) else LimitSpec.parse(k, v) for k, v in given.items()]
    else:
        items = [v for v in given if isinstance(v, LimitSpec)]
    return {spec.name: spec for spec in items}
