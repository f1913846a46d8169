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


#: Seqs stay below 2**53 (exact as doubles).
MAX_SEQ = 2**53


def _seq_id(seq: int) -> str:
    return str(seq).zfill(_SEQ_DIGITS)


class EventLog:
    """Appends events to the collection ``collection()`` returns (this process's handle)
    with the seq rules of the package docstring; ``url`` (redacted) names the store in
    errors.

    Round trips: an append does not read the top first when this process saw a seq
    visible less than GUESS_FOR seconds ago (it read it, or wrote it): it inserts at
    that seq + 1, one round trip per event. A duplicate key proves the seq it hit is
    visible, so the next try goes one higher (PROBES times), then reads the top. Each
    insert still lands right above a visible seq.

    A writer that another one keeps overtaking (a worker's batch write while an app adds
    jobs, or two busy workers) would mostly guess wrong: one failed insert, probes, then a
    read anyway. So it tracks how often a guess would have been taken (an average over its
    recent appends: a failed guess, or a top read above the seq it would have guessed) and
    reads the top first while that is more often than not: find + insert. And it probes
    only while the last writer that overtook it wrote few enough events for a probe to land
    (after a worker's batch of 32 events, probes would all fail).

    Why the age limit: every seq above one seen visible was written after it, so less
    than GUESS_FOR seconds ago, and retention (the nodes' purge, TTL indexes) deletes
    only older events: a guess never lands on a deleted seq. A flush(), or a purge()
    with a cutoff less than GUESS_FOR old, run by another process while this one
    writes, can still make a guess reuse a deleted seq for GUESS_FOR seconds (as a
    writer paused between reading the top and inserting always could).
    """

    #: How long a seq this process saw visible may seed a guess (monotonic seconds).
    GUESS_FOR = 0.25
    #: Inserts one higher after a duplicate key, before reading the top again.
    PROBES = 2
    #: Weight of the latest append in the average of guesses taken; guess while below LIMIT.
    CLASH_WEIGHT = 0.25
    CLASH_LIMIT = 0.5

    def __init__(self, collection: Callable[[], Collection[Doc]], url: str) -> None:
        self._collection = collection
        self.url = url
        self._seen = 0  # a seq this process saw visible...
        self._seen_until = 0.0  # ...usable as a guess until then (monotonic)
        self._clashes = 0.0  # how often a guess was (or would have been) taken, on average
        self._overtaken = 0  # by how many seqs others last overtook a guess

    def _saw(self, seq: int) -> None:
        self._seen = seq
        self._seen_until = time.monotonic() + self.GUESS_FOR

    def _guess(self) -> int | None:
        if self._seen and time.monotonic() < self._seen_until:
            return self._seen
        return None

    def _clashed(self, taken: bool) -> None:
        w = self.CLASH_WEIGHT
        self._clashes = (1 - w) * self._clashes + (w if taken else 0.0)

    def top_seq(self) -> int:
        """The highest seq handed out that is still visible (events or the floor)."""
        # Only seqs we could have written count: another client's event with a text or
        # absurd seq (text sorts above numbers) must not become the top.
        doc = self._collection().find_one(
            {"seq": {"$gte": 0, "$lt": MAX_SEQ}}, sort=[("seq", -1)], projection={"seq": 1}
        )
        seq = doc.get("seq") if doc is not None else None
        top = int(seq) if isinstance(seq, int | float) and 0 <= seq < MAX_SEQ else 0
        self._saw(top)
        return top

    def emit(self, events: Sequence[Doc]) -> None:
        """Append events with dense seqs in commit order (see the package docstring)."""
        if not events:
            return
        batch = secrets.token_hex(8)
        pending = [dict(e, batch=batch) for e in events]
        coll = self._collection()
        guess = self._guess()  # insert right above this visible seq; None: read the top
        below = guess
        if guess is not None and self._clashes >= self.CLASH_LIMIT:
            below = self.top_seq()
            self._clashed(below != guess)  # would the guess have been taken?
            if below != guess:
                self._overtaken = below - guess
            guess = None
        probes = 0
        for attempt in range(_EMIT_ATTEMPTS):
            if below is None:
                top, probes = self.top_seq(), 0
                if attempt > 0 and guess is not None:
                    self._overtaken = top - guess
                    guess = None
            else:
                top = below
            docs = [
                {"_id": _seq_id(top + 1 + i), "seq": top + 1 + i, **e}
                for i, e in enumerate(pending)
            ]
            below = None
            try:
                if len(docs) == 1:
                    coll.insert_one(docs[0])
                else:
                    coll.insert_many(docs, ordered=True)
                self._saw(top + len(docs))
                if attempt == 0 and guess is not None:
                    self._clashed(False)
                return
            except DuplicateKeyError:
                taken = 0  # another writer took top + 1: it is visible
            except BulkWriteError as exc:
                errors = exc.details.get("writeErrors") or [{}]
                if errors[0].get("code") != 11000:
                    raise
                taken = int(exc.details.get("nInserted", 0))  # ours, then someone's
                pending = pending[taken:]
            except ServerSelectionTimeoutError:
                raise  # never sent
            except ConnectionFailure:
                # The reply was lost: count what landed (an ordered prefix) by batch id.
                ids = [d["_id"] for d in docs]
                landed = coll.count_documents({"_id": {"$in": ids}, "batch": batch})
                pending = pending[landed:]
                if not pending:
                    self._saw(top + len(docs))
                    return
                continue  # read the top: who holds the next seq is unknown
            if attempt == 0 and guess is not None:
                self._clashed(taken == 0)
            probes += 1
            # Probe only when the last overtaking was small enough for a probe to land
            # (an app next to a worker writing 32 events a batch reads at once instead).
            if probes <= self.PROBES and self._overtaken <= self.PROBES:
                below = top + taken + 1
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
