"""Import job classes by dotted path, only from allowed modules (checked before import)."""

from __future__ import annotations

import importlib
import os
import re
import site
import sys
import time
from collections.abc import Sequence

from taskschedd.errors import JobClassError
from taskschedd.job import Job

#: When this interpreter read its .pth files (about when taskschedd was first imported).
_STARTED = time.time()

_IDENT = r"[A-Za-z_][A-Za-z0-9_]*"
# Used with fullmatch: a `$` anchor with match() would accept a trailing newline.
_PATH = re.compile(rf"{_IDENT}(\.{_IDENT})*([:.]{_IDENT})")
#: The longest class path accepted: it is stored with every job and shown by `list`.
MAX_CLASS_PATH = 255
CLASS_PATH_HELP = (
    f"a dotted path like 'myapp.jobs.SendMail' (or 'myapp.jobs:SendMail'), "
    f"at most {MAX_CLASS_PATH} characters"
)


def split_path(path: str) -> tuple[str, str]:
    """(module, class name) of a class path; JobClassError if malformed.

    A module path naming ``__init__`` is refused: it would import the package's code a
    second time, as another module, and the same class would have two names."""
    if not isinstance(path, str) or len(path) > MAX_CLASS_PATH:
        shown = repr(path) if not isinstance(path, str) else repr(path[:60])
        if isinstance(path, str):
            shown = f"{shown[:-1]}...' ({len(path)} characters)"
        raise JobClassError(f"job class {shown} is not valid: expected {CLASS_PATH_HELP}")
    if not _PATH.fullmatch(path) or "." not in path.replace(":", "."):
        raise JobClassError(f"job class {path!r} is not valid: expected {CLASS_PATH_HELP}")
    if ":" in path:
        module, name = path.split(":", 1)
    else:
        module, name = path.rsplit(".", 1)
    if "__init__" in module.split("."):
        plain = ".".join(p for p in module.split(".") if p != "__init__")
        hint = f"; write {plain + '.' + name!r}" if plain else ""
        raise JobClassError(
            f"job class {path!r} is not valid: a module path must not name __init__ (that "
            f"imports the package a second time){hint}"
        )
    return module, name


def normalize(path: str) -> str:
    module, name = split_path(path)
    return f"{module}.{name}"


def path_of(cls: type) -> str:
    """The dotted path a worker will import for a class object."""
    module = getattr(cls, "__module__", "")
    qualname = getattr(cls, "__qualname__", "")
    if module == "__main__" or "<locals>" in qualname or "." in qualname:
        raise JobClassError(
            f"job class {qualname} cannot be imported by a worker (defined in {module}); "
            "define it at the top level of an importable module"
        )
    return f"{module}.{qualname}"


def is_allowed(module: str, allowed: Sequence[str]) -> bool:
    """True when job classes may be imported from ``module`` under the configuration's
    ``allowed_modules``: an entry allows its module and their submodules, "*" any."""
    for prefix in allowed:
        if prefix == "*" or module == prefix or module.startswith(prefix + "."):
            return True
    return False


def check_allowed(path: str, allowed: Sequence[str], source: str | None = None) -> str:
    """The module of class ``path``; JobClassError when ``allowed`` does not allow it.
    ``source``: the configuration file that set ``allowed``, named in the message.

    Workers check before they import, and clients (Scheduler opened with a
    configuration, taskschedctl add) before they write, with this one message."""
    module, _ = split_path(path)
    if not is_allowed(module, allowed):
        listed = ", ".join(allowed) or "empty"
        fix = (
            f" of {source}; add it there or check the spelling"
            if source
            else "; add it to the configuration"
        )
        raise JobClassError(
            f"job class {path!r} is not allowed: module {module!r} is not in "
            f"allowed_modules ({listed}){fix}"
        )
    return module


def load_class(path: str, allowed: Sequence[str]) -> type[Job]:
    """The Job subclass at ``path``; the allow-list is checked before anything is imported."""
    module_name = check_allowed(path, allowed)
    name = split_path(path)[1]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise JobClassError(
            f"job class {path!r}: cannot import module {module_name!r}: {exc}"
        ) from None
    except Exception as exc:
        raise JobClassError(
            f"job class {path!r}: importing {module_name!r} failed: {type(exc).__name__}: {exc}"
        ) from None
    obj = getattr(module, name, None)
    if obj is None:
        raise JobClassError(f"job class {path!r}: module {module_name!r} has no {name!r}")
    if not (isinstance(obj, type) and issubclass(obj, Job)):
        raise JobClassError(f"job class {path!r} is not a subclass of taskschedd.Job")
    return obj


def refresh_site_paths() -> list[str]:
    """Read the site-packages ``.pth`` files written since this interpreter started, as
    the interpreter reads them at start; returns the directories added to ``sys.path``.

    A package installed while a node runs is importable by a new worker without this,
    except one installed in editable mode (``pip install -e``): its path is in a new
    ``.pth`` file, which Python reads only at start. Workers (and the reload's import
    check, which predicts them) call this before they import, so that a reload after
    ``pip install -e ./myapp`` works as after ``pip install ./myapp``."""
    before = list(sys.path)
    dirs = list(site.getsitepackages())
    if site.ENABLE_USER_SITE:
        dirs.append(site.getusersitepackages())
    known = set(sys.path)
    for sitedir in dirs:
        try:
            names = sorted(os.listdir(sitedir))
        except OSError:
            continue
        for name in names:
            if not name.endswith(".pth") or name.startswith("."):
                continue
            try:
                if os.stat(os.path.join(sitedir, name)).st_mtime < _STARTED - 1.0:
                    continue  # read at start
            except OSError:
                continue
            site.addpackage(sitedir, name, known)
    importlib.invalidate_caches()
    return [p for p in sys.path if p not in before]
