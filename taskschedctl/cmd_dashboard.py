"""taskschedctl dashboard: serve the web dashboard (taskschedd.dashboard) on this host.

A process of its own, never the node's master: a dashboard's load must not touch the
process that supervises jobs. Everything that can be wrong (the extra not installed, an
address others can reach without credentials, a port in use, no store) is said before
the first request, with the exit code of its kind.
"""

from __future__ import annotations

import errno
import signal
import socket
import sys
from typing import TYPE_CHECKING

import click

from taskschedctl.common import EXIT_CODES, ctl_options, fail
from taskschedctl.context import Ctl

if TYPE_CHECKING:
    from collections.abc import Callable

    from taskschedd.scheduler import Scheduler


class Listen(click.ParamType[str]):
    name = "host:port"

    def convert(
        self, value: object, param: click.Parameter | None, ctx: click.Context | None
    ) -> str:
        from taskschedd.config import check_listen
        from taskschedd.errors import ConfigError

        text = str(value)
        try:
            if text.endswith(":0"):  # port 0: the system picks a free one (tests, scripts)
                return check_listen("--listen", text[:-1] + "1")[:-1] + "0"
            return check_listen("--listen", value)
        except ConfigError as exc:
            self.fail(exc.reason, param, ctx)


@click.command(epilog=EXIT_CODES)
@click.option(
    "--listen",
    type=Listen(),
    metavar="HOST:PORT",
    help="Where to serve it. Default: the configuration's dashboard.listen, else "
    "127.0.0.1:8080. An address other hosts can reach needs credentials "
    "(TASKSCHED_DASHBOARD_TOKEN, or user and password): without, exit 78.",
)
@click.option(
    "--read-only",
    is_flag=True,
    default=None,
    help="Show everything, offer no action (no cancel, retry or purge).",
)
@ctl_options
def dashboard(ctl: Ctl, listen: str | None, read_only: bool | None) -> None:
    """Serve the web dashboard: the queue at a glance, live; find a job; cancel, retry
    and purge (with confirmation).

    \b
    Credentials (first found): TASKSCHED_DASHBOARD_TOKEN (a bearer token, at least 16
    characters: openssl rand -hex 32), TASKSCHED_DASHBOARD_USER and
    TASKSCHED_DASHBOARD_PASSWORD (HTTP basic), or the configuration's dashboard section
    (token_file; user and password_file). Without any, it serves 127.0.0.1 only.
    Stops on SIGTERM or Ctrl-C. Needs the dashboard extra: pip install 'taskschedd[dashboard]'.
    """
    from taskschedd.config import DashboardConfig
    from taskschedd.dashboard import require
    from taskschedd.dashboard.settings import settings

    require()
    config = ctl.config
    chosen = settings(
        config.dashboard if config else DashboardConfig(), listen=listen, read_only=read_only
    )
    make = _factory(ctl)
    probe = make()
    probe.store.last_event_seq()  # no store, or none reachable: exit 69 before listening
    if probe is not make():
        probe.close()
    sock = _bind(chosen.host, chosen.port)

    import uvicorn

    from taskschedd.dashboard.app import LOOPBACK_HOSTS, create_app

    # Without credentials it listens on loopback only: then only loopback names are
    # served, so that no web page can reach it through a name of its own (DNS rebinding).
    hosts = None if chosen.auth.enabled else LOOPBACK_HOSTS
    app = create_app(scheduler=make, read_only=chosen.read_only, auth=chosen.auth, hosts=hosts)
    host = f"[{chosen.host}]" if ":" in chosen.host else chosen.host
    port = sock.getsockname()[1]
    auth = {"token": "token", "basic": "HTTP basic auth", "none": "no authentication"}[
        chosen.auth.kind
    ]
    mode = ", read-only" if chosen.read_only else ""
    click.echo(
        f"taskschedctl dashboard: http://{host}:{port}/ ({auth}{mode}); Ctrl-C stops it", err=True
    )
    server = uvicorn.Server(
        uvicorn.Config(
            app, log_level="warning", access_log=False, timeout_graceful_shutdown=2, lifespan="off"
        )
    )

    # uvicorn stops on SIGINT/SIGTERM, then raises the signal again for the handler it
    # found: ours only records it, so a stop is a clean exit 0 (systemctl stop, Ctrl-C).
    # One before uvicorn took over the signals (it is starting) stops it as soon as it can.
    def stop(signum: int, _frame: object) -> None:
        server.should_exit = True

    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, stop)
    try:
        server.run(sockets=[sock])
    finally:
        app.state.dashboard.close()


def _factory(ctl: Ctl) -> Callable[[], Scheduler]:
    """A Scheduler per web thread on SQLite (a connection each); one shared on MongoDB
    (its client is thread-safe and pools connections)."""
    from taskschedd.scheduler import Scheduler
    from taskschedd.storeurl import is_sqlite

    config = ctl.config
    url = ctl.url
    if is_sqlite(url):
        from taskschedd.store.sqlite import SQLiteStore

        return lambda: Scheduler(SQLiteStore(url), config=config)
    shared = ctl.scheduler()
    return lambda: shared


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        infos = socket.getaddrinfo(host, port, family, socket.SOCK_STREAM)
    except socket.gaierror as exc:
        fail(f"cannot listen on {host}:{port}: {exc.strerror}")
        sys.exit(69)
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(infos[0][4])
        sock.listen(128)
    except OSError as exc:
        sock.close()
        hint = "; choose another with --listen" if exc.errno == errno.EADDRINUSE else ""
        fail(f"cannot listen on {host}:{port}: {exc.strerror}{hint}")
        sys.exit(69)
    return sock
