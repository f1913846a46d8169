"""The web dashboard (``taskschedctl dashboard``, or mounted in an ASGI application).

Optional: it needs the ``dashboard`` extra (``pip install 'taskschedd[dashboard]'``), so
nodes and ``taskschedctl`` never import a web framework. :func:`create_app` says how to
install it when it is missing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from taskschedd.errors import TaskSchedError

if TYPE_CHECKING:
    from starlette.applications import Starlette

#: The packages the dashboard needs beyond taskschedd's own.
NEEDS = ("starlette", "uvicorn", "jinja2")
INSTALL = "pip install 'taskschedd[dashboard]'"


class DashboardUnavailable(TaskSchedError):
    """The dashboard extra is not installed."""

    exit_code = 69  # EX_UNAVAILABLE


def missing() -> list[str]:
    """The packages of the extra that cannot be imported."""
    import importlib.util

    return [name for name in NEEDS if importlib.util.find_spec(name) is None]


def require() -> None:
    absent = missing()
    if absent:
        raise DashboardUnavailable(
            f"the dashboard needs {', '.join(absent)}, which is not installed: "
            f"install it with {INSTALL} (in the environment taskschedd runs from)"
        )


def create_app(*args: Any, **kwargs: Any) -> Starlette:
    """:func:`taskschedd.dashboard.app.create_app`, after checking the extra."""
    require()
    from taskschedd.dashboard.app import create_app as make

    return make(*args, **kwargs)


__all__ = ["DashboardUnavailable", "create_app", "missing", "require"]
