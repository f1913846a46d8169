"""The events collection: dense seqs in commit order, and the floor that outlives deletes."""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Sequence

from pymongo.collection import Collection
from pymongo.errors import (
    BulkWriteError,
    ConnectionFailure,
    DuplicateKeyError,
    ServerSelectionTimeoutError,
)

from taskschedd.errors import StoreUnavailable
from taskschedd.store.mongo.documents import Doc

FLOOR_ID = "~floor"
_SEQ_DIGITS = 20
_EMIT_ATTEMPTS = 200


def _seq_id(seq: int) -> str:
    return str(seq).zfill(_SEQ_DIGITS)


class EventLog:
    """Appends events to the collection ``collection()`` returns (this process's handle)
    with the seq rules of the package docstring; ``url`` (redacted) names the store in
    errors."""

    def __init__(self, collection: Callable[[], Collection[Doc]], url: str) -> None:
        self._collection = collection
        self.url = url

    def top_seq(self) -> int:
        """The highest seq handed out that is still visible (events or the floor)."""
        doc = self._collection().find_one({}, sort=[("seq", -1)], projection={"seq": 1})
        return int(doc["seq"]) if doc is not None and doc.get("seq") is not None else 0

    def emit(self, events: Sequence[Doc]) -> None:
        """Append events with dense seqs in commit order (see the package docstring)."""
        if not events:
            return
        batch = secrets.token_hex(8)
        pending = [dict(e, batch=batch) for e in events]
        coll = self._collection()
        for attempt in range(_EMIT_ATTEMPTS):
            top = self.top_seq()
            docs = [
                {"_id": _seq_id(top + 1 + i), "seq": top + 1 + i, **e}
                for i, e in enumerate(pending)
            ]
            try:
                if len(docs) == 1:
                    coll.insert_one(docs[0])
                else:
                    coll.insert_many(docs, ordered=True)
                return
            except DuplicateKeyError:
                pass  # another writer took that seq: read the top again
            except BulkWriteError as exc:
                errors = exc.details.get("writeErrors") or [{}]
                if errors[0].get("code") != 11000:
                    raise
                pending = pending[int(exc.details.get("nInserted", 0)) :]
            except ServerSelectionTimeoutError:
                raise  # never sent
            except ConnectionFailure:
                # The reply was lost: count what landed (an ordered prefix) by batch id.
                ids = [d["_id"] for d in docs]
                landed = coll.count_documents({"_id": {"$in": ids}, "batch": batch})
                pending = pending[landed:]
                if not pending:
                    return
            if attempt >= 3:
                time.sleep(0.001 * min(attempt, 20) * secrets.randbelow(100) / 100)
        raise StoreUnavailable(
            f"MongoDB store {self.url}: could not append events after {_EMIT_ATTEMPTS} "
            "attempts (heavy contention)"
        )

    def raise_floor(self) -> int:
        """Remember the highest seq before events are deleted, so seqs are never reused."""
        top = self.top_seq()
        if top:
            self._collection().update_one({"_id": FLOOR_ID}, {"$max": {"seq": top}}, upsert=True)
        return top
