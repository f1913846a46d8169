"""``uvicorn taskschedd.dashboard.asgi:app``: the dashboard for an ASGI server of your
choice, finding its store as taskschedctl does: $TASKSCHED_STORE, or the configuration
file $TASKSCHED_CONFIG names, or /etc/taskschedd/taskschedd.yaml. Credentials as for
``taskschedctl dashboard`` ($TASKSCHED_DASHBOARD_TOKEN, or the configuration's dashboard
section); $TASKSCHED_DASHBOARD_READ_ONLY=1 offers no action. To mount it in an
application that authenticates its users itself, call
:func:`taskschedd.dashboard.create_app` instead.
"""

from __future__ import annotations

import os

from starlette.applications import Starlette

from taskschedd.config import DEFAULT_CONFIG_PATH, Config, load
from taskschedd.dashboard import create_app
from taskschedd.dashboard.settings import resolve_auth
from taskschedd.scheduler import env_store_url


def build() -> Starlette:
    store = env_store_url()
    path = os.environ.get("TASKSCHED_CONFIG") or None
    if path is None and store is None and os.path.isfile(DEFAULT_CONFIG_PATH):
        path = DEFAULT_CONFIG_PATH
    config = load(path) if path else Config()
    read_only = os.environ.get("TASKSCHED_DASHBOARD_READ_ONLY", "") not in ("", "0", "false", "no")
    return create_app(
        store,
        config=config if path and store is None else None,
        read_only=read_only or config.dashboard.read_only,
        auth=resolve_auth(config.dashboard),
    )


app = build()
