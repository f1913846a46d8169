"""Stores by URL scheme: ``sqlite:///path`` (or a bare path) and ``mongodb://``."""

from __future__ import annotations

from collections.abc import Collection
from typing import TYPE_CHECKING, Any

from taskschedd.errors import StoreError
from taskschedd.store.base import Store

if TYPE_CHECKING:
    from taskschedd.config import Config

DEFAULT_URL = "sqlite:///var/lib/taskschedd/taskschedd.db"


def open_store(
    url: str, *, create: bool = False, owners: Collection[int] | None = None, **options: Any
) -> Store:
    """Open the store a URL names. Nothing connects until first use.

    SQLite only: ``create`` makes the file if there is none (else a missing file is
    StoreMissing at first use); ``owners`` are the users who may own the files (else
    their modes alone are checked): see :class:`~taskschedd.store.sqlite.SQLiteStore`."""
    if url.startswith(("mongodb://", "mongodb+srv://")):
        try:
            from taskschedd.store.mongo import MongoStore
        except ImportError as exc:  # pragma: no cover - pymongo is a dependency
            raise StoreError(f"the MongoDB store needs pymongo: {exc}") from None
        return MongoStore(url, **options)
    if url.startswith("sqlite://") or "://" not in url:
        refuse_lookalike(url)
        from taskschedd.store.sqlite import SQLiteStore

        timeout = {k: v for k, v in options.items() if k == "busy_timeout"}
        return SQLiteStore(url, create=create, owners=owners, **timeout)
    scheme = url.split("://", 1)[0]
    raise StoreError(
        f"unknown store URL scheme {scheme!r}; accepted: sqlite:///PATH, "
        "mongodb://HOST/DB, mongodb+srv://HOST/DB"
    )


def refuse_lookalike(url: str) -> None:
    """A mistyped MongoDB URL (``mongodb:/u:pw@host``, ``mongodb//...``) would be taken
    for a SQLite path, and its password shown in every message about that path: refused,
    without repeating it."""
    head = url.removeprefix("sqlite://").lstrip("/").lower()
    if head.startswith("mongodb") or (url.lower().startswith("mongodb") and "://" not in url):
        raise StoreError(
            "the store looks like a MongoDB URL but does not start with mongodb:// or "
            "mongodb+srv:// (not repeated here: it may hold a password); fix it"
        )


def preload(url: str) -> None:
    """Import the backend a URL needs now: after a privilege drop the service user may not
    be able to read the interpreter's own files (a Python under /root, say)."""
    if url.startswith(("mongodb://", "mongodb+srv://")):
        import taskschedd.store.mongo
    else:
        import taskschedd.store.sqlite  # noqa: F401


def config_store_options(config: Config) -> dict[str, Any]:
    """Keyword arguments for :func:`open_store` from a node configuration."""
    if config.store_kind != "mongodb":
        return {}
    m = config.mongodb
    return {
        "database": m.database,
        "jobs_collection": m.jobs_collection,
        "events_collection": m.events_collection,
        "nodes_collection": m.nodes_collection,
        "write_concern": m.write_concern,
        "change_streams": m.change_streams,
        "poll_interval": config.poll_interval,
        # TTL indexes follow the configured retention (0 = keep finished jobs forever).
        "retention": config.retention,
    }


def open_configured(config: Config, *, create: bool = False, daemon: bool = False) -> Store:
    """The store a node configuration names, with its options. ``daemon``: only the
    daemon's user (``config.user``, this process's) or root may own a SQLite store."""
    owners = None
    if daemon:
        from taskschedd.store.sqlitefiles import daemon_owners

        owners = daemon_owners(config.user)
    return open_store(config.store, create=create, owners=owners, **config_store_options(config))


__all__ = [
    "DEFAULT_URL",
    "Store",
    "config_store_options",
    "open_configured",
    "open_store",
    "preload",
]
