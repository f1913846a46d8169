"""taskschedctl stats, nodes, check and completion: operating a cluster."""

from __future__ import annotations

import time
from typing import Any

import click

from taskschedctl.common import (
    EXIT_CODES,
    LIVE_RULE,
    ctl_options,
    fail,
    live_nodes,
    warn,
)
from taskschedctl.context import Ctl
from taskschedctl.params import Duration


@click.command(epilog=EXIT_CODES)
@click.option(
    "--window",
    type=Duration(),
    default="5m",
    show_default=True,
    help="Throughput over this last stretch of time.",
)
@click.option("--json", "as_json", is_flag=True, help="The numbers as JSON.")
@ctl_options
def stats(ctl: Ctl, window: float, as_json: bool) -> None:
    """Counts by status, queue and class; oldest waiting age per queue; throughput;
    running/capacity and waiting jobs of each limit."""
    from taskschedctl.output import echo_json, limits_text, stats_text

    if window <= 0:
        raise click.BadParameter("must be more than 0", param_hint="'--window'")
    sched = ctl.scheduler()
    numbers = sched.store.stats(now=time.time(), window=window)
    limits = sched.limits()
    if as_json:
        numbers["limits"] = [
            {
                "name": s.spec.name,
                "running": s.running,
                "capacity": s.spec.max_running,
                "waiting": s.waiting,
                "rate": None if s.spec.rate is None else str(s.spec.rate),
            }
            for s in limits
        ]
        echo_json(numbers)
    else:
        click.echo(stats_text(numbers))
        click.echo(limits_text(limits))


@click.command(epilog=EXIT_CODES)
@click.option("--all", "all_", is_flag=True, help="Include nodes whose heartbeat is stale.")
@click.option(
    "--stale-after",
    type=Duration(),
    help="Judge every node by this window: stale after this long without a heartbeat "
    "(default: each node after 3 x its own heartbeat_interval).",
)
@click.option("--json", "as_json", is_flag=True, help="The nodes as a JSON array.")
@ctl_options
def nodes(ctl: Ctl, all_: bool, stale_after: float | None, as_json: bool) -> None:
    """Live nodes: host, pid, workers busy/idle, running jobs, last heartbeat.

    Without any, one line says so (and how many stale ones --all would show).
    """
    from taskschedctl.output import echo_json, node_rows

    sched = ctl.scheduler()
    now = time.time()
    every, live = live_nodes(ctl, sched.store, now, stale_after)
    found = every if all_ else live
    if as_json:
        echo_json([{**n.to_dict(), "stale": n not in live} for n in found])
    elif found:
        click.echo(node_rows(found, live, now))
    elif all_:
        click.echo("no node registered (a node removes its entry when it stops)")
    else:
        stale = len(every)
        more = f"; {stale} stale: --all shows them" if stale else ""
        rule = (
            LIVE_RULE
            if stale_after is None
            else f"none has sent a heartbeat in the last {stale_after:g}s"
        )
        click.echo(f"no live node ({rule}{more})")


@click.command(epilog=EXIT_CODES)
@click.option(
    "--timeout",
    type=Duration(),
    default="10s",
    show_default=True,
    help="Give up on a store that does not answer in time.",
)
@click.option(
    "--min-nodes",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    metavar="N",
    help="Exit 69 when fewer than N nodes are live (a heartbeat within 3 x the "
    "node's own heartbeat_interval).",
)
@ctl_options
def check(ctl: Ctl, timeout: float, min_nodes: int) -> None:
    """Check that the configuration is valid and the store reachable (for monitoring).

    Exit 0 when both are fine, 65 when the store holds job records that do not decode
    and wait to be quarantined, 78 when the configuration is invalid or a SQLite store's
    files are writable by other users, 69 when the store cannot be reached, does not
    exist, was deleted or replaced under processes that still use the old file, or
    cannot take writes (a SQLite store's disk is full or read-only), or when fewer than
    --min-nodes nodes are live. Names where the configuration and the store came from.
    """
    import threading

    from taskschedd.errors import StoreError, TaskSchedError
    from taskschedd.redact import redact_url

    source = ctl.config_source()
    config = ctl.config  # ConfigError (exit 78) when invalid
    click.echo(_config_line(ctl, source if config is not None else None))
    url = redact_url(ctl.url)
    answer: dict[str, Any] = {}
    _preload(ctl.url)  # the store's clock starts when the thread does, not after imports

    def probe() -> None:
        try:
            sched = ctl.scheduler(wait=timeout)  # MongoDB: its own error, with the reason
            now = time.time()
            answer["stats"] = sched.store.stats(now=now, window=60.0)
            answer["nodes"] = len(live_nodes(ctl, sched.store, now)[1])
            answer["malformed"] = sched.store.malformed(limit=20)
        except TaskSchedError as exc:
            answer["error"] = exc
        except Exception as exc:  # a driver error we do not know: still "unreachable"
            answer["error"] = StoreError(f"{type(exc).__name__}: {exc}")

    thread = threading.Thread(target=probe, name="store-probe", daemon=True)
    thread.start()
    thread.join(timeout + 1.0)  # time for the store's own error (with its reason) to arrive
    if thread.is_alive():
        raise StoreError(f"store {url}: no answer within {timeout:g}s")
    stale = _stale_holders(ctl.url)
    if "error" in answer:
        error: TaskSchedError = answer["error"]
        if isinstance(error, StoreError):
            wrapped = StoreError(f"store {url}: {error}{stale}")
            wrapped.exit_code = error.exit_code  # 78 for an unsafe store, else 69
            raise wrapped
        raise error
    if stale:
        from taskschedd.errors import StoreReplaced

        raise StoreReplaced(f"store {url}: reachable, but{stale}")
    by_status: dict[str, int] = answer["stats"].get("by_status", {})
    active = sum(by_status.get(s, 0) for s in ("WAITING", "POSTPONED", "PROCESSING"))
    click.echo(f"store {url}: reachable ({active} active jobs, {answer['nodes']} live nodes)")
    full = _space_trouble(ctl.url)
    if full:
        from taskschedd.errors import StoreNotWritable

        raise StoreNotWritable(
            f"store {url}: not writable: {full}; nodes keep the outcomes they cannot store, "
            "claim nothing and store them once there is room",
            full.split(":", 1)[0],
        )
    live = answer["nodes"]
    if not live and not min_nodes:
        warn(
            f"no live node ({LIVE_RULE}): jobs wait until one starts; --min-nodes 1 makes "
            "this an error"
        )
    malformed = answer["malformed"]
    if malformed:
        from taskschedctl.output import printable
        from taskschedd.errors import CorruptRecords

        for record in malformed:  # written by another client: shown, never obeyed
            click.echo(printable(f"corrupt job {record.id}: {record.corrupt}"), err=True)
        more = "at least " if len(malformed) == 20 else ""
        raise CorruptRecords(
            f"store {url}: {more}{len(malformed)} job records that claims cannot handle "
            "(written by another client); a running node quarantines them (FAILED, "
            "reason corrupt) within a minute"
        )
    if live < min_nodes:
        fail(
            f"{live} live node{'s' if live != 1 else ''}, fewer than --min-nodes {min_nodes} "
            f"({LIVE_RULE}; taskschedctl nodes --all lists the stale ones)"
        )
        click.get_current_context().exit(69)


def _config_line(ctl: Ctl, source: str | None) -> str:
    """Where the configuration (and, without one, the store) came from."""
    if source is None:
        return f"config: none (the store is given by {ctl.store_origin})"
    if ctl.config_path is None:
        how = "the default path"
    else:
        how = "-c" if ctl.config_from_cli else "TASKSCHED_CONFIG"
    line = f"config {source} (from {how}): ok"
    if ctl.store_url is not None and not (ctl.store_from_env and ctl.config_from_cli):
        line += f"; its store is overridden by {ctl.store_origin}"
    return line


def _preload(url: str) -> None:
    from taskschedd.storeurl import is_mongodb

    if is_mongodb(url):
        import taskschedd.scheduler
        import taskschedd.store.mongo  # noqa: F401


def _stale_holders(url: str) -> str:
    """What to add to the report about processes using a stale SQLite file ("" if none)."""
    from taskschedd.storeurl import is_sqlite

    if not is_sqlite(url):
        return ""
    from taskschedd.store.sqlite import path_from_url
    from taskschedd.store.sqlitefiles import stale_holders

    path = path_from_url(url)
    found = stale_holders(path)
    if not found:
        return ""
    who = ", ".join(f"pid {pid} ({cmd}, file {what})" for pid, cmd, what in found)
    return (
        f"; processes still use a deleted or replaced copy of {path}: {who}; what they "
        "write is lost and the jobs added since are not theirs to run: restart them"
    )


def _space_trouble(url: str) -> str | None:
    """Why a SQLite store's file system cannot take writes (disk full, read-only)."""
    from taskschedd.storeurl import is_sqlite

    if not is_sqlite(url):
        return None
    from taskschedd.store import diskspace
    from taskschedd.store.sqlite import path_from_url

    return diskspace.trouble(path_from_url(url))


# -- completion --------------------------------------------------------------------------


@click.command(epilog="Example: taskschedctl completion bash > /etc/bash_completion.d/taskschedctl")
@click.argument("shell", type=click.Choice(["bash", "zsh", "fish"]))
def completion(shell: str) -> None:
    """Print the shell completion script for SHELL (job ids complete from the store)."""
    from click.shell_completion import get_completion_class

    comp_cls = get_completion_class(shell)
    assert comp_cls is not None
    root = click.get_current_context().find_root().command
    click.echo(comp_cls(root, {}, "taskschedctl", "_TASKSCHEDCTL_COMPLETE").source())
