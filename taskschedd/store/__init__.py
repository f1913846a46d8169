"""Stores by URL scheme: ``sqlite:///path`` (or a bare path) and ``mongodb://``."""

from __future__ import annotations

from typing import Any

from taskschedd.errors import StoreError
from taskschedd.store.base import Store

DEFAULT_URL = "sqlite:///var/lib/taskschedd/taskschedd.db"


def open_store(url: str, **options: Any) -> Store:
    """Open the store a URL names. Nothing connects until first use."""
    if url.startswith(("mongodb://", "mongodb+srv://")):
        try:
            from taskschedd.store.mongo import MongoStore
        except ImportError as exc:  # pragma: no cover - pymongo is a dependency
            raise StoreError(f"the MongoDB store needs pymongo: {exc}") from None
        return MongoStore(url, **options)
    if url.startswith("sqlite://") or "://" not in url:
        from taskschedd.store.sqlite import SQLiteStore

        return SQLiteStore(url, **{k: v for k, v in options.items() if k == "busy_timeout"})
    scheme = url.split("://", 1)[0]
    raise StoreError(
        f"unknown store URL scheme {scheme!r}; accepted: sqlite:///PATH, "
        "mongodb://HOST/DB, mongodb+srv://HOST/DB"
    )


__all__ = ["DEFAULT_URL", "Store", "open_store"]
