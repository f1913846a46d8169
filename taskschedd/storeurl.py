"""Store URLs: the default one, and which store a URL names.

The one place that knows the schemes: the configuration, the library, the stores, the
redaction of secrets and taskschedctl all ask here. It imports nothing of taskschedd, so
that any of them can.
"""

from __future__ import annotations

#: The store of a node, and of a client, that names none.
DEFAULT_URL = "sqlite:///var/lib/taskschedd/taskschedd.db"
DEFAULT_PATH = "/var/lib/taskschedd/taskschedd.db"
SQLITE_SCHEME = "sqlite://"
MONGODB_SCHEMES = ("mongodb://", "mongodb+srv://")
#: Every URL prefix a store understands (a bare file path is a SQLite store too).
SCHEMES = (SQLITE_SCHEME, *MONGODB_SCHEMES)
#: The forms accepted, for messages.
ACCEPTED = "sqlite:///PATH, a file path, mongodb://HOST/DB or mongodb+srv://HOST/DB"


def is_mongodb(url: str) -> bool:
    """True when ``url`` names a MongoDB store (mongodb:// or mongodb+srv://)."""
    return url.startswith(MONGODB_SCHEMES)


def is_sqlite(url: str) -> bool:
    """True when ``url`` names a SQLite store: sqlite://PATH, or a path without a scheme."""
    return url.startswith(SQLITE_SCHEME) or "://" not in url


def looks_like_mongodb(url: str) -> bool:
    """True for a mistyped MongoDB URL (``mongodb:/u:pw@host``, ``mongodb//...``,
    ``sqlite://mongodb...``) that would otherwise be taken for a SQLite path, and its
    password shown in every message about that path."""
    if is_mongodb(url):
        return False
    head = url.lower().removeprefix(SQLITE_SCHEME).lstrip("/")
    return head.startswith("mongodb")
