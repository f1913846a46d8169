"""Stores by URL scheme: ``sqlite:///path`` (or a bare path) and ``mongodb://``.

Stores know nothing of the node configuration: callers pass plain values
(:meth:`taskschedd.config.Config.store_options` makes them from a configuration)."""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from taskschedd.errors import StoreError
from taskschedd.store.base import Store
from taskschedd.storeurl import ACCEPTED, DEFAULT_URL, is_mongodb, is_sqlite, looks_like_mongodb


def open_store(
    url: str, *, create: bool = False, owners: Collection[int] | None = None, **options: Any
) -> Store:
    """Open the store a URL names. Nothing connects until first use.

    SQLite only: ``create`` makes the file if there is none (else a missing file is
    StoreMissing at first use); ``owners`` are the users who may own the files (else
    their modes alone are checked): see :class:`~taskschedd.store.sqlite.SQLiteStore`."""
    if is_mongodb(url):
        try:
            from taskschedd.store.mongo import MongoStore
        except ImportError as exc:  # pragma: no cover - pymongo is a dependency
            raise StoreError(f"the MongoDB store needs pymongo: {exc}") from None
        return MongoStore(url, **options)
    if is_sqlite(url):
        refuse_lookalike(url)
        from taskschedd.store.sqlite import SQLiteStore

        timeout = {k: v for k, v in options.items() if k == "busy_timeout"}
        return SQLiteStore(url, create=create, owners=owners, **timeout)
    scheme = url.split("://", 1)[0]
    raise StoreError(f"unknown store URL scheme {scheme!r}; accepted: {ACCEPTED}")


def refuse_lookalike(url: str) -> None:
    """A mistyped MongoDB URL (``mongodb:/u:pw@host``, ``mongodb//...``) would be taken
    for a SQLite path, and its password shown in every message about that path: refused,
    without repeating it."""
    if looks_like_mongodb(url):
        raise StoreError(
            "the store looks like a MongoDB URL but does not start with mongodb:// or "
            "mongodb+srv:// (not repeated here: it may hold a password); fix it"
        )


def preload(url: str) -> None:
    """Import the backend a URL needs now: after a privilege drop the service user may not
    be able to read the interpreter's own files (a Python under /root, say)."""
    if is_mongodb(url):
        import taskschedd.store.mongo
    else:
        import taskschedd.store.sqlite  # noqa: F401


__all__ = [
    "DEFAULT_URL",
    "Store",
    "open_store",
    "preload",
]
