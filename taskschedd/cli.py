"""The ``taskschedd`` command: run a node (foreground or ``--daemon``), or check a config.

User errors end with one line on stderr and the error's exit code (78 for a bad
configuration, 69 for an unusable store), never a traceback.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import os
import stat
import sys
from collections.abc import Sequence
from typing import Any

import click

from taskschedd import __version__, log
from taskschedd import config as config_mod
from taskschedd.errors import StoreError, TaskSchedError
from taskschedd.osproc import pid_alive
from taskschedd.privileges import check_privileges

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
  SIGHUP           reload the configuration (pool sizes, queues, log level...) and reopen
                   log files; an invalid file, a setup hook or allowed module that does
                   not import, or a new worker that fails to start is refused: the old
                   configuration and workers are kept
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
Exit codes: 0 stopped cleanly, 1 error, 2 usage error, 69 store unavailable,
78 bad configuration, 130 interrupted (Ctrl-C) before the master ran.
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
    help="Validate the configuration, check that the setup hook and the allowed modules "
    "import (in a child process), print the effective settings and exit.",
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
    # Absolute now: --daemon changes to / before the master (and its reloads) reads it.
    path = os.path.abspath(config_path or config_mod.default_config_path())
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

        _check_imports(cfg, path)
        click.echo(json.dumps(cfg.redacted(), indent=2, sort_keys=True))
        click.echo(f"configuration OK: {path}", err=True)
        return 0
    log.configure(cfg.logging.format, cfg.logging.level, cfg.logging.file)
    pidfile = os.path.abspath(pidfile) if pidfile else cfg.pidfile
    # Everything that can refuse a start is checked before --daemon detaches, while the
    # caller still sees the message and the exit code: the user and group (78), the
    # pidfile (1), the store (69), the node name (78) and the metrics address (1). What
    # the workers import is not (--check-config checks it): an import that fails at boot
    # (a mount or a package not there yet) must not leave a node that systemd will not
    # restart (78); its workers back off and a SIGHUP or the fix brings them up.
    check_privileges(cfg.user, cfg.group)
    with PidFile(pidfile) as held:
        if daemonize:
            _check_store(cfg)
            _check_metrics(cfg)
            _daemonize(cfg, held)
        held.write()
        from taskschedd import master
        from taskschedd.store import preload

        preload(cfg.store)
        try:
            master.drop_privileges(cfg.user, cfg.group)
        except OSError as exc:
            raise TaskSchedError(
                f"cannot drop privileges to {cfg.user}/{cfg.group}: {exc}"
            ) from None
        return master.run(cfg, os.path.abspath(path), overrides)


def _check_imports(cfg: config_mod.Config, path: str) -> None:
    """The setup hook and the allowed modules import, in a throw-away child (bounded by
    $TASKSCHED_PROBE_TIMEOUT), as the workers would import them: switched to the
    configured user/group when run as root. ConfigError (78) naming key, module, error."""
    from taskschedd import probe

    problems = probe.check(cfg, probe.probe_timeout(), switch_user=os.geteuid() == 0)
    if problems:
        first, *rest = problems
        reason = first.text + "".join(f"; {p}" for p in rest)
        raise config_mod.ConfigError(reason, path=path, key=first.key)


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
    """Open and close the store once, so that a broken one, or a live node of this node's
    name in it, is reported before detaching. A SQLite store that does not exist yet is
    left to the master, which creates it after switching to the configured user (created
    now, root would own it)."""
    from taskschedd import registry
    from taskschedd.config import open_configured
    from taskschedd.errors import StoreMissing

    store = open_configured(cfg, daemon=True)
    try:
        store.last_event_seq()
        registry.check(store, cfg)
    except StoreMissing:
        _check_creatable(cfg)
    finally:
        store.close()


def _check_creatable(cfg: config_mod.Config) -> None:
    """A SQLite store whose directory does not exist yet: the master will create the
    missing directories, so the nearest existing one must be a writable directory."""
    if cfg.store_kind != "sqlite":
        return
    from taskschedd.store.sqlite import path_from_url

    current = os.path.dirname(path_from_url(cfg.store)) or "."
    while not os.path.lexists(current):
        current = os.path.dirname(current)
    if not os.path.isdir(current):
        raise StoreError(f"cannot create the store directory under {current}: a file is in the way")
    if not os.access(current, os.W_OK):
        raise StoreError(
            f"cannot create the store directory under {current}: not writable by this user; "
            "create it or point 'store' at a writable path"
        )


def _check_metrics(cfg: config_mod.Config) -> None:
    """The metrics address can be bound (bound and let go at once: the master binds it
    again after detaching)."""
    from taskschedd.metricsserver import _bind

    address = cfg.metrics.address
    if address is not None:
        _bind(*address).close()


#: True once --daemon detached with a log file: errors must be logged to be seen.
_DETACHED = False


def _daemonize(cfg: config_mod.Config, held: PidFile) -> None:
    import daemon  # python-daemon

    global _DETACHED
    keep: list[int] = []
    fd = log._SINK.fd  # the open log file must survive the descriptor sweep
    if fd is not None:
        keep.append(fd)
    if held.fd is not None:
        keep.append(held.fd)  # its lock is held across the forks
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
    _DETACHED = bool(cfg.logging.file)  # from now on, errors go to the log file


class PidFile:
    """The pidfile, held with a lock (flock) for as long as the node runs.

    Taken before ``--daemon`` detaches (refused, exit 1, if a live process holds the
    file or is named in it), kept across the forks (the locked descriptor is inherited),
    and written with the daemon's pid after. Of two starts at once, one gets the lock.
    Opened with O_NOFOLLOW (never through a link planted in its directory), mode 0644
    whatever the umask; removed at exit, and by a refused start that created it."""

    def __init__(self, path: str | None) -> None:
        self.path = path
        self.fd: int | None = None
        self.created = False
        self.written = False

    def __enter__(self) -> PidFile:
        if self.path is not None:
            self._take(self.path)
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def _take(self, path: str) -> None:
        for _ in range(10):  # the file may be removed or replaced between open and lock
            fd, created = self._open(path)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = self._pid_in(fd)
                os.close(fd)
                raise TaskSchedError(
                    f"pidfile {path} names a running process (pid {holder or '?'}): is "
                    "taskschedd already running? Stop it first"
                ) from None
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(path, follow_symlinks=False))
            except FileNotFoundError:
                same = False
            if not same:
                os.close(fd)
                continue
            other = self._pid_in(fd)
            if other > 0 and other != os.getpid() and pid_alive(other):
                os.close(fd)  # not created by us: it exists and names a process
                raise TaskSchedError(
                    f"pidfile {path} names a running process (pid {other}): is "
                    "taskschedd already running? Stop it, or remove the file if that "
                    "process is not taskschedd"
                )
            self.fd, self.created = fd, created
            return
        raise TaskSchedError(f"cannot take pidfile {path}: it keeps being replaced")

    @staticmethod
    def _open(path: str) -> tuple[int, bool]:
        flags = os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            try:
                return os.open(path, flags | os.O_CREAT | os.O_EXCL, 0o644), True
            except FileExistsError:
                fd = os.open(path, flags | os.O_NONBLOCK)  # a FIFO must not block us
        except OSError as exc:
            raise TaskSchedError(f"cannot write pidfile {path}: {exc.strerror or exc}") from None
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise TaskSchedError(f"cannot write pidfile {path}: not a regular file")
        return fd, False

    @staticmethod
    def _pid_in(fd: int) -> int:
        try:
            return int(os.pread(fd, 64, 0).decode("ascii").strip() or "0")
        except (OSError, ValueError, UnicodeDecodeError):
            return 0

    def write(self) -> None:
        """Write our pid (the daemon's, after detaching): written over the old content and
        then cut to length, so that a reader never sees an empty file."""
        if self.fd is None:
            return
        data = f"{os.getpid()}\n".encode()
        try:
            os.fchmod(self.fd, 0o644)
            os.pwrite(self.fd, data, 0)
            os.ftruncate(self.fd, len(data))
        except OSError as exc:
            raise TaskSchedError(
                f"cannot write pidfile {self.path}: {exc.strerror or exc}"
            ) from None
        self.written = True
        # Workers and job processes forked later must not inherit the lock.
        os.register_at_fork(after_in_child=self._forget)

    def _forget(self) -> None:
        fd, self.fd = self.fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)

    def release(self) -> None:
        """Remove the file if it is ours (written, or created by this start), then unlock."""
        fd = self.fd
        if fd is None or self.path is None:
            return
        try:
            if (self.written and self._pid_in(fd) == os.getpid()) or (
                self.created and not self.written
            ):
                with contextlib.suppress(OSError):
                    if os.path.samestat(os.fstat(fd), os.stat(self.path, follow_symlinks=False)):
                        os.unlink(self.path)
        finally:
            self.fd = None
            with contextlib.suppress(OSError):
                os.close(fd)


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
    except click.exceptions.Abort as exc:
        # click turns a Ctrl-C into Abort: 130 as documented, as a shell reports SIGINT.
        if isinstance(exc.__context__ or exc.__cause__, KeyboardInterrupt):
            _fail("interrupted", 130)
        _fail("aborted", 1)
    except KeyboardInterrupt:
        _fail("interrupted", 130)
    except Exception as exc:
        if not _DETACHED:
            raise
        _fail(f"{type(exc).__name__}: {exc}", 1, exc)
    sys.exit(rc if isinstance(rc, int) else 0)


def _fail(message: str, code: int, unexpected: BaseException | None = None) -> None:
    text = " ".join(message.splitlines()) or "error"
    # Detached, stderr is gone and the log file is the only place the reason can go;
    # otherwise the log file (if one is open) keeps it beside the node's other lines.
    if _DETACHED or log._SINK.fd is not None:
        with contextlib.suppress(Exception):
            log.get_logger("taskschedd").error(
                "taskschedd exits on an error", error=text, exit_code=code, exc_info=unexpected
            )
    with contextlib.suppress(Exception):
        click.echo(f"taskschedd: {text}", err=True)
    sys.exit(code)


__all__ = ["StoreError", "command", "main"]
