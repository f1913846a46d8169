"""The ``taskschedd`` command: run a node (foreground or ``--daemon``), or check a config.

User errors end with one line on stderr and the error's exit code (78 for a bad
configuration, 69 for an unusable store), never a traceback.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import sys
from collections.abc import Iterator, Sequence
from typing import Any

import click

from taskschedd import __version__, log
from taskschedd import config as config_mod
from taskschedd.errors import StoreError, TaskSchedError

HELP = """Run a taskschedd node: a master process that forks workers which claim jobs from
the store and run them.

\b
The configuration is YAML (see etc/taskschedd.yaml); without -c it is read from
$TASKSCHED_CONFIG or /etc/taskschedd/taskschedd.yaml. A wrong configuration is refused
with the file, the key and the reason (exit code 78).
"""

EPILOG = """\b
Signals to the master:
  SIGTERM, SIGINT  drain: claim no new jobs; running jobs get shutdown_grace, then are
                   stopped and given back to the queue without using an attempt; exit 0
  second SIGTERM/SIGINT, or SIGQUIT
                   stop now: running jobs are stopped and given back; exit 0
  SIGHUP           reload the configuration (pool sizes, queues, log level...; an invalid
                   file is refused and the old configuration kept) and reopen log files
  SIGUSR1          log a status dump: workers, running jobs, job counts
  SIGCHLD          reap workers at once; a dead worker's job is settled, a new worker started

\b
Signals to a worker (its process group is its job's):
  SIGTERM          end at once (the master sends it to the group on timeout, cancel and
                   stop, then SIGKILL after kill_grace, and settles the job itself)
  SIGINT           give the running job back to the queue and exit
  SIGHUP, SIGUSR1, SIGUSR2
                   ignored
  Workers exit when their master dies (PR_SET_PDEATHSIG and a parent check).

\b
Exit codes: 0 stopped cleanly, 1 error, 69 store unavailable, 78 bad configuration.
"""


@click.command(
    name="taskschedd",
    help=HELP,
    epilog=EPILOG,
    context_settings={"help_option_names": ["-h", "--help"]},
)
@click.option(
    "-c",
    "--config",
    "config_path",
    metavar="PATH",
    default=None,
    help="Configuration file  [default: $TASKSCHED_CONFIG or /etc/taskschedd/taskschedd.yaml]",
)
@click.option(
    "--check-config",
    is_flag=True,
    help="Validate the configuration, print the effective settings and exit.",
)
@click.option(
    "--daemon",
    "daemonize",
    is_flag=True,
    help="Detach from the terminal (python-daemon); use with a pidfile and a log file.",
)
@click.option(
    "--store",
    "store_url",
    metavar="URL",
    default=None,
    help="Store URL (sqlite:///PATH, a file path, mongodb://...), overriding 'store' in the "
    "configuration file.",
)
@click.option(
    "--pidfile",
    metavar="PATH",
    default=None,
    help="Write the master's pid here (overrides 'pidfile' in the configuration).",
)
@click.version_option(__version__, "--version", prog_name="taskschedd")
def command(
    config_path: str | None,
    check_config: bool,
    daemonize: bool,
    store_url: str | None,
    pidfile: str | None,
) -> int:
    path = config_path or config_mod.default_config_path()
    overrides: dict[str, Any] = {}
    if store_url is not None:
        try:
            overrides["store"] = config_mod.from_mapping({"store": store_url}).store
        except config_mod.ConfigError as exc:
            raise config_mod.ConfigError(exc.reason, key="--store") from None
    cfg = dataclasses.replace(config_mod.load(path), **overrides)
    _check_writable_paths(cfg, path)
    if check_config:
        import json

        click.echo(json.dumps(cfg.redacted(), indent=2, sort_keys=True))
        click.echo(f"configuration OK: {path}", err=True)
        return 0
    log.configure(cfg.logging.format, cfg.logging.level, cfg.logging.file)
    pidfile = os.path.abspath(pidfile) if pidfile else cfg.pidfile
    if daemonize:
        _check_store(cfg)
        _daemonize(cfg)
    with _pidfile(pidfile):
        from taskschedd import master
        from taskschedd.store import preload

        preload(cfg.store)
        try:
            master.drop_privileges(cfg.user, cfg.group)
        except (OSError, KeyError) as exc:
            raise TaskSchedError(
                f"cannot drop privileges to {cfg.user}/{cfg.group}: {exc}"
            ) from None
        return master.run(cfg, os.path.abspath(path), overrides)


def _check_writable_paths(cfg: config_mod.Config, path: str) -> None:
    """Files the node will write must have a writable directory: found by --check-config,
    not only by a start that then fails."""
    for key, target in (("logging.file", cfg.logging.file), ("pidfile", cfg.pidfile)):
        if not target:
            continue
        directory = os.path.dirname(os.path.abspath(target)) or "."
        if not os.path.isdir(directory):
            raise config_mod.ConfigError(
                f"directory {directory} does not exist; create it or choose another path",
                path=path,
                key=key,
            )
        if not os.access(directory, os.W_OK):
            raise config_mod.ConfigError(
                f"directory {directory} is not writable by this user", path=path, key=key
            )


def _check_store(cfg: config_mod.Config) -> None:
    """Open and close the store once, so that a broken one is reported before detaching.
    A SQLite store that does not exist yet is left to the master, which creates it after
    switching to the configured user (created now, root would own it)."""
    from taskschedd.config import open_configured
    from taskschedd.errors import StoreMissing

    store = open_configured(cfg, daemon=True)
    try:
        store.last_event_seq()
    except StoreMissing:
        pass
    finally:
        store.close()


def _daemonize(cfg: config_mod.Config) -> None:
    import daemon  # python-daemon

    keep: list[int] = []
    fd = log._SINK.fd  # the open log file must survive the descriptor sweep
    if fd is not None:
        keep.append(fd)
    context = daemon.DaemonContext(
        working_directory="/",
        umask=0o027,
        detach_process=True,
        files_preserve=keep,
        signal_map={},  # the master installs its own handlers
        # Without a log file, logs keep going to the stderr we were started with.
        stderr=None if cfg.logging.file else sys.stderr,
    )
    context.open()


@contextlib.contextmanager
def _pidfile(path: str | None) -> Iterator[None]:
    """Write our pid (atomically) for the time we run; refuse if another live process holds
    the file, replace it if it is stale."""
    if path is None:
        yield
        return
    try:
        with open(path) as f:
            other = int(f.read().strip() or "0")
    except (OSError, ValueError):
        other = 0
    if other > 0 and other != os.getpid() and _alive(other):
        raise TaskSchedError(
            f"pidfile {path} names a running process (pid {other}): is taskschedd already "
            "running? Stop it, or remove the file if that process is not taskschedd"
        )
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        # 0644 whatever the umask; never through a link planted in the pidfile directory.
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)  # left by an earlier process with our pid
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
        with open(fd, "w") as f:
            os.fchmod(fd, 0o644)
            f.write(f"{os.getpid()}\n")
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise TaskSchedError(f"cannot write pidfile {path}: {exc.strerror or exc}") from None
    try:
        yield
    finally:
        with contextlib.suppress(OSError, ValueError):
            with open(path) as f:
                mine = int(f.read().strip()) == os.getpid()
            if mine:
                os.unlink(path)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def main(argv: Sequence[str] | None = None) -> None:
    """Console entry point: exit codes from TaskSchedError, one-line messages, no traceback."""
    if argv is None:
        from taskschedd.redact import hide_argv_secrets

        hide_argv_secrets(sys.argv)  # a --store URL's password, out of ps
    try:
        rc = command.main(
            args=list(argv) if argv is not None else None,
            prog_name="taskschedd",
            standalone_mode=False,
        )
    except TaskSchedError as exc:
        _fail(str(exc), exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        _fail("aborted", 1)
    except KeyboardInterrupt:
        _fail("interrupted", 130)
    sys.exit(rc if isinstance(rc, int) else 0)


def _fail(message: str, code: int) -> None:
    text = " ".join(message.splitlines()) or "error"
    with contextlib.suppress(Exception):
        click.echo(f"taskschedd: {text}", err=True)
    sys.exit(code)


__all__ = ["StoreError", "command", "main"]
