"""The import check: can the workers import what the configuration names?

A worker imports ``setup_hook``'s module before it is ready, and a job's class from one of
``allowed_modules``; a name that does not import makes every worker fail at start. This
check imports them first, in a throw-away child process, so that a failing import, a
module with side effects or one that hangs cannot harm the caller: ``taskschedd
--check-config`` (which waits for it, :func:`check`) and the master on SIGHUP (which
starts it, :meth:`Probe.start`, and collects it from its loop, :meth:`Probe.poll`,
before it applies a new configuration).

What is checked, for a configuration:

- ``setup_hook`` (``module:attr``): the module imports, ``attr`` (dotted) exists and is
  callable. The hook is not called: calling it is the workers' job (the master starts
  one worker with the new configuration before it retires the old ones).
- ``allowed_modules``: every entry but ``"*"`` imports as a module or package. An entry
  is a prefix: it allows its module and the submodules, whose names the configuration
  does not list, so the entry itself must name a module that exists (a package is
  enough, a namespace package too); importing a job class from a submodule imports it
  anyway.

The child is forked from the caller, so it imports with the caller's environment,
working directory, ``sys.path`` and modules already imported: in the master, exactly
what its forked workers have, the user included (the master switched user before it
forks anything). ``--check-config`` run as root switches the child to the configured
``user``/``group`` first, as the master would; run as another user it checks with that
user's rights. The child leads its own process group, gets SIGKILL when its parent dies,
has standard input from /dev/null and standard output sent to standard error (a module
that prints cannot spoil ``--check-config``'s JSON), and keeps no other descriptor of
its parent. It reports on a pipe, one JSON line per step, then kills its own process
group (what an import started goes too). A check that does not end within the timeout
(:func:`probe_timeout`) is killed, group and all, and reported naming the module that
was being imported.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import select
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import NoReturn

from taskschedd.config import Config, ConfigError
from taskschedd.loader import refresh_site_paths
from taskschedd.osproc import (
    kill_strays,
    set_child_subreaper,
    set_parent_death_signal,
    set_title,
)

#: Seconds the import check may take unless $TASKSCHED_PROBE_TIMEOUT says otherwise.
DEFAULT_TIMEOUT = 15.0
TIMEOUT_ENV = "TASKSCHED_PROBE_TIMEOUT"
_MAX_TIMEOUT = 3600.0
_ERROR_CHARS = 300  # an error text is one line of the log or of stderr


def probe_timeout() -> float:
    """The probe's timeout: $TASKSCHED_PROBE_TIMEOUT (seconds, 0 < t <= 3600) or
    DEFAULT_TIMEOUT. ConfigError naming the variable for any other value."""
    text = os.environ.get(TIMEOUT_ENV, "").strip()
    if not text:
        return DEFAULT_TIMEOUT
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0 < value <= _MAX_TIMEOUT:  # NaN fails too
        raise ConfigError(
            f"expected seconds above 0 and at most {_MAX_TIMEOUT:g}, got {text!r}",
            key=f"${TIMEOUT_ENV}",
        )
    return value


@dataclass(frozen=True)
class Target:
    """One thing to import: ``module``, and for the hook the attribute path in it."""

    key: str  # the configuration key that names it
    module: str
    attr: str = ""

    @property
    def name(self) -> str:
        return f"{self.module}:{self.attr}" if self.attr else self.module


@dataclass(frozen=True)
class Problem:
    """Why the workers could not import what ``key`` names; str() is one line."""

    key: str
    text: str

    def __str__(self) -> str:
        return f"{self.key}: {self.text}"


def targets(config: Config) -> list[Target]:
    """What the workers of ``config`` import: the setup hook first, then the allowed
    modules (no "*", no duplicate)."""
    found: list[Target] = []
    if config.setup_hook:
        module, _, attr = config.setup_hook.partition(":")
        found.append(Target("setup_hook", module, attr))
    seen: set[str] = set()
    for entry in config.allowed_modules:
        if entry != "*" and entry not in seen:
            seen.add(entry)
            found.append(Target("allowed_modules", entry))
    return found


def summary(problems: list[Problem]) -> str:
    """The problems as one line."""
    return "; ".join(str(p) for p in problems)


def _one_line(exc: BaseException) -> str:
    text = " ".join(f"{type(exc).__name__}: {exc}".split())
    return text if len(text) <= _ERROR_CHARS else text[: _ERROR_CHARS - 3] + "..."


# -- the child ------------------------------------------------------------------------------
def _import(target: Target) -> str | None:
    """Import the target; None when it works, else what went wrong."""
    try:
        obj: object = importlib.import_module(target.module)
    except BaseException as exc:  # an import can raise anything, SystemExit included
        return f"cannot import {target.module!r}: {_one_line(exc)}"
    if not target.attr:
        return None
    try:
        for part in target.attr.split("."):
            obj = getattr(obj, part)
    except BaseException as exc:
        return f"{target.name!r} not found: {_one_line(exc)}"
    if not callable(obj):
        return f"{target.name!r} is not callable (a value of type {type(obj).__name__})"
    return None


def _isolate(report_fd: int, parent: int) -> int:
    """Cut the child off from its parent's signals, descriptors and terminal; returns the
    report pipe's new descriptor (3)."""
    os.setpgid(0, 0)
    set_parent_death_signal(signal.SIGKILL)
    set_child_subreaper()  # what an import starts and leaves (setsid) comes back to us
    if os.getppid() != parent:  # the parent died before the death signal was set
        os._exit(1)
    with contextlib.suppress(ValueError):
        signal.set_wakeup_fd(-1)
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGHUP, signal.SIGUSR1,
                signal.SIGUSR2, signal.SIGCHLD, signal.SIGPIPE, signal.SIGALRM):  # fmt: skip
        signal.signal(sig, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_SETMASK, set())
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.dup2(2, 1)  # what a module prints goes to stderr (the log of a daemon)
    os.dup2(report_fd, 3)
    os.set_inheritable(3, False)  # not for the programs an import may start
    os.closerange(4, max(4, os.sysconf("SC_OPEN_MAX")))  # null too, if it was above 3
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    return 3


def _child(config: Config, report_fd: int, parent: int, before: Callable[[], None] | None) -> None:
    """Body of the forked child; never returns."""
    try:
        fd = _isolate(report_fd, parent)
        set_title("taskschedd: import check")
        out = os.fdopen(fd, "w", buffering=1)

        def say(**fields: object) -> None:
            out.write(json.dumps(fields) + "\n")

        if before is not None:
            try:
                before()
            except BaseException as exc:
                say(key="user", fail=f"cannot switch user for the check: {_one_line(exc)}",
                    module="")  # fmt: skip
                before = None
        refresh_site_paths()  # as a worker does: .pth files written since the start too
        for target in targets(config):
            say(key=target.key, trying=target.module)
            error = _import(target)
            if error is not None:
                say(key=target.key, fail=error, module=target.name)
        say(done=True)
        out.flush()
    except BaseException:
        _end(1)
    _end(0)


def _end(code: int) -> NoReturn:
    """Kill whatever the imports started, also what left our process group (setsid, which
    comes back to us, the subreaper, as its parent exits), then exit."""
    with contextlib.suppress(BaseException):
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline:
            if not kill_strays(()):
                break
            with contextlib.suppress(ChildProcessError):
                while os.waitpid(-1, os.WNOHANG)[0]:
                    pass
            time.sleep(0.01)
    with contextlib.suppress(BaseException):
        os.killpg(0, signal.SIGKILL)  # this process and what stayed in its group
    os._exit(code)


# -- the parent -----------------------------------------------------------------------------
class Probe:
    """A running import check of ``config``; the caller polls it until it has a result.

    The caller must reap the child itself (a master reaps every child in its loop) and
    pass the status to :meth:`reaped`, or let :meth:`wait` do it."""

    def __init__(self, config: Config, pid: int, fd: int, timeout: float) -> None:
        self.config = config
        self.pid = pid
        self.fd = fd
        self.timeout = timeout
        self.deadline = time.monotonic() + timeout
        self.problems: list[Problem] = []
        self.trying: tuple[str, str] | None = None  # (key, name) being imported
        self.done = False  # the child said so
        self.status: int | None = None  # its wait status, once reaped
        self.killed = False
        self._buf = b""
        self._eof = False

    @classmethod
    def start(
        cls, config: Config, timeout: float, *, before: Callable[[], None] | None = None
    ) -> Probe:
        """Fork the child; ``before`` runs in it first (e.g. a switch of user)."""
        r, w = os.pipe()
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        parent = os.getpid()
        pid = os.fork()
        if pid == 0:
            os.close(r)
            _child(config, w, parent, before)
        os.close(w)
        os.set_blocking(r, False)
        with contextlib.suppress(OSError):
            os.setpgid(pid, pid)  # also done by the child: whoever runs first
        return cls(config, pid, r, timeout)

    def fileno(self) -> int:
        return self.fd

    @property
    def eof(self) -> bool:
        """The child closed its end of the pipe (it is gone, or about to be)."""
        return self._eof

    def _read(self) -> None:
        while not self._eof:
            try:
                chunk = os.read(self.fd, 65536)
            except BlockingIOError:
                return
            except OSError:
                chunk = b""
            if not chunk:
                self._eof = True
                return
            self._buf += chunk
            *lines, self._buf = self._buf.split(b"\n")
            for line in lines:
                self._line(line)

    def _line(self, line: bytes) -> None:
        try:
            msg = json.loads(line)
        except ValueError:
            return
        if not isinstance(msg, dict):
            return
        if msg.get("done"):
            self.done = True
        elif "trying" in msg:
            self.trying = (str(msg.get("key")), str(msg["trying"]))
        elif "fail" in msg:
            self.problems.append(Problem(str(msg.get("key")), str(msg["fail"])))

    def poll(self, now: float | None = None) -> list[Problem] | None:
        """None while the check runs; then its problems ([] when everything imports).
        Past the deadline the child's group is killed and the module named."""
        self._read()
        if self.done:
            return self.problems
        if self._eof and self.status is not None:
            return [*self.problems, self._died()]
        now = time.monotonic() if now is None else now
        if now >= self.deadline:
            self.kill()
            key, name = self.trying or ("setup_hook", "?")
            return [
                *self.problems,
                Problem(key, f"importing {name!r} did not finish within {self.timeout:g}s "
                        f"(${TIMEOUT_ENV}); the check was killed"),
            ]  # fmt: skip
        return None

    def _died(self) -> Problem:
        status = self.status or 0
        if os.WIFSIGNALED(status):
            how = f"died from signal {os.WTERMSIG(status)}"
        else:
            how = f"exited with code {os.waitstatus_to_exitcode(status)}"
        key, name = self.trying or ("setup_hook", "?")
        return Problem(key, f"importing {name!r} ended the check process ({how})")

    def reaped(self, status: int) -> None:
        self.status = status

    def kill(self) -> None:
        """SIGKILL the child's process group (once; the caller still reaps the child)."""
        if not self.killed and self.status is None:
            self.killed = True
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pid, signal.SIGKILL)

    def close(self) -> None:
        """Close the pipe (once: the descriptor's number may be reused afterwards)."""
        if self.fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.fd = -1
            self._eof = True

    def _let_it_end(self) -> None:
        """Give a child that reported its result a moment to kill what its imports
        started (see _end) and exit; then kill its group and reap it."""
        deadline = time.monotonic() + 3.0
        while self.status is None and time.monotonic() < deadline:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.status = status
                return
            time.sleep(0.005)
        if self.status is None:
            self.kill()
            self.status = os.waitpid(self.pid, 0)[1]

    def wait(self) -> list[Problem]:
        """Block until the result (for a caller without a loop: ``--check-config``)."""
        try:
            while True:
                if self.status is None:
                    pid, status = os.waitpid(self.pid, os.WNOHANG)
                    if pid:
                        self.status = status
                result = self.poll()
                if result is not None:
                    self._let_it_end()
                    return result
                left = max(0.0, self.deadline - time.monotonic())
                with contextlib.suppress(InterruptedError):
                    select.select([self.fd] if not self._eof else [], [], [], min(left, 0.05))
        finally:
            self.close()


def check(config: Config, timeout: float, *, switch_user: bool = False) -> list[Problem]:
    """Run the import check and wait for it; ``switch_user``: become the configured
    user/group in the child first (when running as root, as the master would)."""
    before = None
    if switch_user and (config.user or config.group):
        from taskschedd.privileges import drop_privileges

        def before() -> None:
            drop_privileges(config.user, config.group)

    return Probe.start(config, timeout, before=before).wait()


__all__ = [
    "DEFAULT_TIMEOUT",
    "TIMEOUT_ENV",
    "Probe",
    "Problem",
    "Target",
    "check",
    "probe_timeout",
    "summary",
    "targets",
]
