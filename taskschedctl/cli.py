"""The ``taskschedctl`` command: a thin face over :class:`taskschedd.Scheduler`.

Imports are lazy so that a cron line running ``taskschedctl add`` pays only for what it
uses (no pymongo for a SQLite store). User errors exit with a message, never a traceback:
click's usage errors exit 2, taskschedd's errors exit with their ``exit_code``.
"""

from __future__ import annotations

import contextlib
import errno
import os
import sys
from collections.abc import Iterator, Sequence
from typing import Any, NoReturn

import click

from taskschedctl import cmd_add, cmd_dashboard, cmd_jobs, cmd_limits, cmd_ops, cmd_watch
from taskschedctl.common import EXIT_CODES, fail
from taskschedctl.context import Ctl, check_store_url

EPILOG = f"""\b
Choosing the store (first match wins; the command line wins over the environment):
  --store URL / $TASKSCHED_STORE     sqlite:///var/lib/taskschedd/taskschedd.db,
                                     a file path, or mongodb://user:pw@host/db
  $TASKSCHED_STORE_FILE              a file holding the store URL (keeps a password
                                     out of ps and shell history)
  -c PATH / $TASKSCHED_CONFIG        the store (and allowed_modules, job_defaults)
                                     of a taskschedd configuration file
  /etc/taskschedd/taskschedd.yaml    when it exists
Both options are accepted before or after the command name.

\b
Examples:
  taskschedctl add taskschedd.examples.jobs.Echo '{{"x": 1}}'
  taskschedctl add myapp.jobs.Report @report.json --in 10m --retry 3 --timeout 5m
  taskschedctl add myapp.jobs.Sync --cron '*/15 * * * *' --once
  taskschedctl add myapp.jobs.Export - --wait=1h < export.json
  taskschedctl list --status failed --since 1d
  taskschedctl show ID; taskschedctl retry ID; taskschedctl wait ID --timeout 10m
  taskschedctl events --follow --class myapp.jobs.Report
  taskschedctl purge --older-than 7d --yes
  taskschedctl limits set reports --max-running 2; taskschedctl limits list
  taskschedctl add myapp.jobs.Report --limit reports --exclusive-key customer:42
  taskschedctl dashboard --listen 127.0.0.1:8080      (needs taskschedd[dashboard])

\b
From cron (--once: an overlapping run gets the same job instead of a second one):
  */5 * * * *  taskschedctl -c /etc/taskschedd/taskschedd.yaml add --once myapp.jobs.Poll

\b
Shell completion: taskschedctl completion bash > /etc/bash_completion.d/taskschedctl
  (zsh and fish likewise; or eval "$(_TASKSCHEDCTL_COMPLETE=bash_source taskschedctl)")

{EXIT_CODES}"""

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


class ReaderGone(Exception):
    """The reader of our output went away (``| head``): exit 141, silently."""


class CtlGroup(click.Group):
    """The command group, with a broken pipe taken out of click's hands: its ``main()``
    catches one (even with ``standalone_mode=False``) and exits 1, where :func:`run`
    exits 141 as documented."""

    def make_context(self, *args: Any, **kwargs: Any) -> click.Context:
        with _reader_gone():  # --help printed while parsing
            return super().make_context(*args, **kwargs)

    def invoke(self, ctx: click.Context) -> Any:
        with _reader_gone():
            return super().invoke(ctx)


@contextlib.contextmanager
def _reader_gone() -> Iterator[None]:
    try:
        yield
    except OSError as exc:
        if exc.errno != errno.EPIPE:
            raise
        raise ReaderGone from exc


@click.group(cls=CtlGroup, context_settings=CONTEXT, epilog=EPILOG)
@click.option(
    "-c",
    "--config",
    "config_path",
    metavar="PATH",
    envvar="TASKSCHED_CONFIG",
    help="A taskschedd configuration file: its store, allowed_modules and job_defaults "
    "are used. [env: TASKSCHED_CONFIG]",
)
@click.option(
    "--store",
    metavar="URL",
    envvar="TASKSCHED_STORE",
    help="The store: sqlite:///PATH, a file path, or mongodb://HOST/DB; overrides the "
    "configuration's store. [env: TASKSCHED_STORE]",
)
@click.option(
    "-v",
    "--verbose",
    is_flag=True,
    help="Also log what the store says about itself (MongoDB topology, durability "
    "warnings) to stderr; without it only errors are logged.",
)
@click.version_option(None, "-V", "--version", package_name="taskschedd")
@click.pass_context
def cli(ctx: click.Context, config_path: str | None, store: str | None, verbose: bool) -> None:
    """Add, list, watch, cancel and clean up taskschedd jobs.

    Works against the store directly, so it needs no daemon on this host.
    """
    from click.core import ParameterSource

    ctl = ctx.ensure_object(Ctl)
    ctl.config_path = config_path
    ctl.verbose = verbose
    ctl.config_from_cli = ctx.get_parameter_source("config_path") == ParameterSource.COMMANDLINE
    ctl.store_url = check_store_url(store) if store else None
    ctl.store_from_env = ctx.get_parameter_source("store") == ParameterSource.ENVIRONMENT
    ctl.store_origin = "TASKSCHED_STORE" if ctl.store_from_env else "--store"
    if store is None and os.environ.get("TASKSCHED_STORE_FILE"):
        from taskschedd.scheduler import env_store_url

        from_file = env_store_url(plain=False)
        if from_file is not None:
            ctl.store_url, ctl.store_from_env = check_store_url(from_file), True
            ctl.store_origin = f"TASKSCHED_STORE_FILE ({os.environ['TASKSCHED_STORE_FILE']})"
    ctx.call_on_close(ctl.close)


for _command in (
    cmd_add.add,
    cmd_jobs.list_,
    cmd_jobs.show,
    cmd_jobs.cancel,
    cmd_jobs.retry,
    cmd_jobs.purge,
    cmd_watch.wait,
    cmd_watch.events,
    cmd_ops.stats,
    cmd_limits.limits,
    cmd_ops.nodes,
    cmd_ops.check,
    cmd_dashboard.dashboard,
    cmd_ops.completion,
):
    cli.add_command(_command)


# -- entry point -------------------------------------------------------------------------


def run(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code (for tests and main())."""
    from taskschedd.errors import TaskSchedError

    try:
        rv = cli.main(args=argv, prog_name="taskschedctl", standalone_mode=False)
    except (click.exceptions.Abort, KeyboardInterrupt):
        return 130
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except TaskSchedError as exc:
        fail(str(exc))
        return exc.exit_code
    except ReaderGone:
        _silence_stdout()
        return 141
    return rv if isinstance(rv, int) else 0


def _silence_stdout() -> None:
    """After the reader of our output went away (| head), do not fail again at exit:
    what is left in stdout's buffer is flushed into /dev/null (as the Python docs on
    SIGPIPE advise), not into the broken pipe ("Exception ignored ...")."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


def main(argv: Sequence[str] | None = None) -> NoReturn:
    if argv is None:
        from taskschedd.redact import hide_argv_secrets

        hide_argv_secrets(sys.argv)  # a --store URL's password, out of ps
    sys.exit(run(argv))


if __name__ == "__main__":
    main()
