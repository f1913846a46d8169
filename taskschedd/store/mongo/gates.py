"""Limits, exclusive keys and rates on MongoDB, without multi-document transactions.

Two side collections (named after the jobs collection, like ``<jobs>_adds``):

* ``<jobs>_limits``: one document per limit, ``{_id: name, max_running, rate_count,
  rate_period, starts: [...], v, high}``. ``starts`` is the rate's sliding log of start
  times, changed only by a compare-and-set on the version ``v``. ``high``: how many slot
  documents at or above ``max_running`` a lowering left held (see :meth:`Gates._verify`).
* ``<jobs>_slots``: what a running job holds. ``{_id: "lim:<name>#<i>", kind: "lim",
  lim, i, holder, job, until}`` for ``i < max_running``, made when first needed (a cap
  of 100,000 makes no more slots than jobs ever ran at once); ``{_id: "key:<key>", kind:
  "key", key, holder, job, until}`` made by an upsert when a job takes the key. (The
  ``lim:`` prefix: a limit may be named ``key:x``.)

A slot is held while ``until`` (the job's lease end, 0 when freed) has not passed, by
``holder`` (the job's claim token): the claim takes it with a findAndModify guarded on
"free" (``until`` past), so of two claimants one gets it; renewals extend it
before the job's lease; settles free it after the job's write (a lost free costs the
slot until its ``until`` passes, never more than one lease). A settle that claims in
the same call (settle_batch, as every daemon worker does) hands its limit slot over
instead: the claim's job of that limit takes it from the settled token in one guarded
write (:class:`Handover`), so the slot never shows free to the other workers, who
would race the settling worker for it; what is not taken over is freed after the
claim, before the call's events wake them. A freed key document is left free (one
write frees any slot) and deleted by the maintenance pass.

What ``limits`` shows as running is what the claims decide by: the slots held now (of a
rate-only limit, which has none: its jobs PROCESSING with a lease not over). They agree
with the jobs PROCESSING (the SQLite store's count) but for the moment between a
settle's write and its free. A claim never makes a job PROCESSING before its gates are
taken, but for the first job held back that a process meets in a queue (see
MongoStore._claim_gated).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pymongo import ReturnDocument
from pymongo.collection import Collection
from pymongo.errors import DuplicateKeyError

from taskschedd import limits
from taskschedd.errors import OptionError
from taskschedd.limits import LimitSpec, Rate
from taskschedd.store.mongo.documents import Doc, _among, _t

LIM, KEY = "lim", "key"
#: How long a claimant remembers that a limit or key held a job back: its next claims
#: skip those jobs at once instead of taking and giving them back (a job of a limit that
#: freed meanwhile waits at most this long behind jobs of lower priority).
REMEMBER = 0.5
#: For how long after meeting a closed limit or key a claimant keeps reading the gates
#: when its memory of them expires (then it goes back to claiming optimistically).
ACTIVE = 30.0
#: How recent a read of the gates by a claim of this process next_due uses instead of
#: reading them again (an idle worker's next_due follows its claim at once; a slot freed
#: since wakes it anyway: a settle's events come after its free).
RECENT = 0.1
#: Compare-and-set attempts on a rate's start log before the claim counts it as closed.
_CAS_TRIES = 5


def slot_id(name: str, i: int) -> str:
    return f"lim:{name}#{i}"


def key_id(key: str) -> str:
    return f"key:{key}"


def _free_or_over(now: float) -> Doc:
    """A slot nobody holds now: never held or freed (``until`` 0: every free writes it)
    or its holder's lease over. One range, no ``$or``: nx-27017's findAndModify and
    delete get ``$or`` beside other fields wrong (they matched other documents)."""
    return {"until": {"$lt": now}}


def spec_of(doc: Mapping[str, Any]) -> LimitSpec | None:
    """A limit document as a definition; None for one another client wrote wrong (its
    jobs then run unlimited, as with no definition: never stuck on a bad document)."""
    try:
        count, period = doc.get("rate_count"), doc.get("rate_period")
        rate = None
        if count is not None or period is not None:
            if type(count) is not int or not isinstance(period, int | float):
                return None
            rate = Rate.parse(f"{count}/{float(period)}s")  # its checks
            rate = Rate(count, float(period))
        cap = doc.get("max_running")
        if cap is not None and type(cap) is not int:
            return None
        return LimitSpec(str(doc["_id"]), cap, rate)
    except (OptionError, KeyError, TypeError, ValueError):
        return None


@dataclass(frozen=True)
class Held:
    """Why a job cannot start now: its limit (full or rate), or its key."""

    kind: str  # LIM or KEY
    name: str
    #: When a rate lets the next job start (None: when a slot or the key frees).
    opens: float | None = None


@dataclass
class Remembered:
    """Limits and keys this process found closed lately (name -> until when it takes
    them for closed). While closures keep being met (``active_until``), an expired
    memory is read again from the gates (:meth:`Gates.closed`, two small reads) rather
    than found out by claiming a held-back job and giving it back."""

    lims: dict[str, float] = field(default_factory=dict)
    keys: dict[str, float] = field(default_factory=dict)
    read_at: float = float("-inf")
    active_until: float = float("-inf")
    last: Closed | None = None  # the last read of the gates, at ``last_at`` (monotonic)
    last_at: float = float("-inf")

    def add(self, held: Held, now: float) -> None:
        until = now + REMEMBER
        if held.opens is not None:
            until = min(until, held.opens)
        (self.lims if held.kind == LIM else self.keys)[held.name] = until
        self.read_at = max(self.read_at, now)  # as good as a read, for this one
        self.active_until = now + ACTIVE
        last = self.last
        if last is not None:  # the last read, with what this claim found closed since
            full, opens, keys = set(last.full), dict(last.opens), set(last.keys)
            if held.kind == KEY:
                keys.add(held.name)
            elif held.opens is None:
                full.add(held.name)
            else:
                opens[held.name] = held.opens
            self.last = Closed(full, opens, keys)

    def current(self, now: float) -> tuple[set[str], set[str]]:
        # Copies: a settle on another thread (a worker's flusher) may clear them meanwhile.
        lims, keys = dict(self.lims), dict(self.keys)
        return {n for n, t in lims.items() if t > now}, {k for k, t in keys.items() if t > now}

    def stale(self, now: float) -> bool:
        """Whether to read the gates again before a claim."""
        return now < self.active_until and now >= self.read_at + REMEMBER

    def read(self, closed: Closed, now: float) -> None:
        """What the gates say now replaces what we remembered."""
        self.lims = {n: now + REMEMBER for n in closed.full}
        self.lims.update({n: min(t, now + REMEMBER) for n, t in closed.opens.items()})
        self.keys = {k: now + REMEMBER for k in closed.keys}
        self.read_at = now
        if closed.empty:
            self.active_until = float("-inf")
        self.last, self.last_at = closed, time.monotonic()

    def recent(self) -> Closed | None:
        """The last read of the gates if it is at most RECENT old (and no claim of this
        process took gates since: see :meth:`took`)."""
        last = self.last
        return last if time.monotonic() - self.last_at <= RECENT else None

    def took(self) -> None:
        """A claim took jobs (and maybe the last of a limit's slots or rate): the last
        read of the gates is not to be reused."""
        self.last, self.last_at = None, float("-inf")

    def clear(self) -> None:
        self.lims, self.keys = {}, {}
        self.read_at = float("-inf")
        self.last, self.last_at = None, float("-inf")


@dataclass
class Handover:
    """The limit slots of the jobs one settle_batch settled, kept (not freed) for the
    claim in the same call: a job of the same limit takes one over from its holder in
    one write (:meth:`Gates.take`), so the slot never shows free to the other workers,
    who would race this claim for it and, on a busy server, often win it (their claim
    then starts the next job later than this one would). What is not taken over is
    freed after the claim, before its events wake the others."""

    tokens: dict[str, list[str]] = field(default_factory=dict)  # limit -> settled tokens

    def add(self, lim: str, token: str) -> None:
        self.tokens.setdefault(lim, []).append(token)

    def lims(self) -> set[str]:
        """The limits this claim holds a slot of to pass on (not closed to it)."""
        return {name for name, toks in self.tokens.items() if toks}

    def pop(self, lim: str) -> str | None:
        toks = self.tokens.get(lim)
        return toks.pop() if toks else None

    def left(self) -> list[str]:
        """The settled tokens whose slots were not taken over (to free), forgotten."""
        out = [t for toks in self.tokens.values() for t in toks]
        self.tokens.clear()
        return out


def excluding(where: Doc, lims: set[str], keys: set[str]) -> Doc:
    """``where`` without the jobs of these limits and keys. ``$nin`` matches a document
    without the field on MongoDB and on nx-27017 (checked; it runs as SQL there)."""
    if not lims and not keys:
        return where
    out = dict(where)
    if lims:
        out["lim"] = {"$nin": sorted(lims)}
    if keys:
        out["xkey"] = {"$nin": sorted(keys)}
    return out


@dataclass
class Closed:
    """The gates as read at one moment: for next_due and count_due."""

    full: set[str]  # limits with no free slot (or max_running 0)
    opens: dict[str, float]  # rate-closed limits (not full): when the next start fits
    keys: set[str]  # keys held now

    @property
    def empty(self) -> bool:
        return not (self.full or self.opens or self.keys)


class Gates:
    """The slot and limit documents of one store (see the module docstring)."""

    def __init__(self, limits_coll: Any, slots_coll: Any) -> None:
        # Callables: the store makes collections lazily, per process.
        self._limits_of = limits_coll
        self._slots_of = slots_coll

    @property
    def _limits(self) -> Collection[Doc]:
        coll: Collection[Doc] = self._limits_of()
        return coll

    @property
    def _slots(self) -> Collection[Doc]:
        coll: Collection[Doc] = self._slots_of()
        return coll

    # -- claims -------------------------------------------------------------------------
    def take(
        self,
        job: Mapping[str, Any],
        token: str,
        until: float,
        now: float,
        seen: dict[str, Doc | None] | None = None,
        handover: Handover | None = None,
    ) -> Held | None:
        """Take what ``job`` (a document with _id, lim, xkey) needs to start under
        ``token`` until ``until``: a slot of its limit, its rate's start, its key. None:
        taken (or nothing to take); else why not, with nothing left taken. ``seen``: the
        limit documents one claim already read (a batch reads each limit once).
        ``handover``: slots of jobs just settled that this claim takes over first."""
        lim, key = job.get("lim"), job.get("xkey")
        lim = lim if isinstance(lim, str) else None
        key = key if isinstance(key, str) else None
        spec: LimitSpec | None = None
        doc: Doc | None = None
        if lim is not None:
            if seen is not None and lim in seen:
                doc = seen[lim]
            else:
                doc = self._limits.find_one({"_id": lim})
                if seen is not None:
                    seen[lim] = doc
            spec = spec_of(doc) if doc is not None else None
        slot = False
        if spec is not None and doc is not None:
            if spec.rate is not None:
                opens = spec.rate.next_start(limits.as_times(doc.get("starts")), now)
                if opens is not None:
                    return Held(LIM, spec.name, opens)  # before any write
            if spec.max_running is not None:
                if not self._take_slot(spec, doc, job["_id"], token, until, now, handover):
                    return Held(LIM, spec.name)
                slot = True
        if key is not None and not self._take_key(key, job["_id"], token, until, now):
            if slot:
                self.free([token], lims=True, keys=False)
            return Held(KEY, key)
        if spec is not None and doc is not None and spec.rate is not None:
            started, opens = self._take_start(spec, doc, now, seen)
            if not started:
                if slot or key is not None:
                    self.free([token], lims=slot, keys=key is not None)
                return Held(LIM, spec.name, opens)
        return None

    def _take_slot(
        self, spec: LimitSpec, doc: Doc, job_id: str, token: str, until: float, now: float,
        handover: Handover | None = None,
    ) -> bool:  # fmt: skip
        cap = spec.max_running or 0
        if cap <= 0:
            return False
        name = spec.name
        passed = self._pass_on(name, cap, job_id, token, until, handover)
        if not passed and not self._grab(name, cap, job_id, token, until, now):
            return False
        high = doc.get("high")
        if type(high) is int and high > 0 and not self._verify(spec, token, now):
            self.free([token], lims=True, keys=False)
            return False
        return True

    def _pass_on(
        self, name: str, cap: int, job_id: str, token: str, until: float,
        handover: Handover | None,
    ) -> bool:  # fmt: skip
        """Take over a slot of limit ``name`` that a job settled in the same call still
        holds (one findAndModify guarded on its holder: nobody took it meanwhile, as
        after its lease ended; ``i < cap``: not one a lowered cap retires). One that
        cannot pass is freed at once, before the claim looks for a free one."""
        if handover is None:
            return False
        while (old := handover.pop(name)) is not None:
            got = self._slots.find_one_and_update(
                {"kind": LIM, "lim": name, "holder": old, "i": {"$lt": cap}},
                {"$set": {"holder": token, "job": job_id, "until": until}},
                projection={"_id": 1},
                return_document=ReturnDocument.AFTER,
            )
            if got is not None:
                return True
            self.free([old], lims=True, keys=False)
        return False

    def _grab(
        self, name: str, cap: int, job_id: str, token: str, until: float, now: float,
        *, above: bool = False,
    ) -> bool:  # fmt: skip
        """Hold a free slot ``i < cap`` of limit ``name``: one made before (one
        findAndModify), else the lowest index not made yet (an insert: of two claimants
        making the same one, the unique ``_id`` lets one win, the other looks again).
        Slots are made as they are first needed, never ``max_running`` of them ahead.
        ``above``: when none is free, make one above the cap (see set_limit)."""
        holding = {"holder": token, "job": job_id, "until": until}
        for _ in range(_CAS_TRIES):
            got = self._slots.find_one_and_update(
                {"kind": LIM, "lim": name, "i": {"$lt": cap}, **_free_or_over(now)},
                {"$set": holding},
                projection={"_id": 1},
                return_document=ReturnDocument.AFTER,
            )
            if got is not None:
                return True
            made = {
                d.get("i")
                for d in self._slots.find({"kind": LIM, "lim": name}, projection={"i": 1})
            }
            i = 0
            while i in made:
                i += 1
            if i >= cap and not above:
                return False  # every slot made and held: full
            try:
                self._slots.insert_one(
                    {"_id": slot_id(name, i), "kind": LIM, "lim": name, "i": i, **holding}
                )
                return True
            except DuplicateKeyError:
                continue
        return False

    def _verify(self, spec: LimitSpec, token: str, now: float) -> bool:
        """After a lowered max_running left slots above it held: whether the slots held
        now (ours included) are still within it. Each taker counts after its own take,
        so the last of any two sees both (both may back off: safe, and rare). Slots
        above the cap found free are deleted; with none left, ``high`` is cleared."""
        cap = spec.max_running or 0
        self._slots.delete_many(
            {"kind": LIM, "lim": spec.name, "i": {"$gte": cap}, **_free_or_over(now)}
        )
        held = [
            d
            for d in self._slots.find(
                {"kind": LIM, "lim": spec.name, "until": {"$gte": now}},
                projection={"i": 1, "holder": 1},
            )
            if isinstance(d.get("holder"), str)
        ]
        if not any(type(d.get("i")) is int and d["i"] >= cap for d in held):
            self._limits.update_one({"_id": spec.name}, {"$set": {"high": 0}})
        return len(held) <= cap

    def _take_key(self, key: str, job_id: str, token: str, until: float, now: float) -> bool:
        # An upsert: a key nobody took yet is made here. A held one makes the upsert
        # insert a second _id, which fails (MongoDB: DuplicateKeyError; nx-27017's
        # findAndModify answers None instead): held either way.
        try:
            got = self._slots.find_one_and_update(
                {"_id": key_id(key), **_free_or_over(now)},
                {"$set": {"kind": KEY, "key": key, "holder": token, "job": job_id, "until": until}},
                projection={"_id": 1},
                upsert=True,
                return_document=ReturnDocument.AFTER,
            )
        except DuplicateKeyError:
            return False
        return got is not None

    def _take_start(
        self, spec: LimitSpec, doc: Doc, now: float, seen: dict[str, Doc | None] | None
    ) -> tuple[bool, float | None]:
        """Append ``now`` to the rate's start log by compare-and-set on ``v``: (True,
        None) when taken; else (False, when the rate next lets one start; None: not
        known, the log kept changing under us)."""
        rate = spec.rate
        assert rate is not None
        for _ in range(_CAS_TRIES):
            starts = limits.as_times(doc.get("starts"))
            # Never log a start before one already logged: claims take `now` before
            # their round trips and land in another order, and a start at an older time
            # than the newest would count in a window the newest already trimmed.
            now = limits.clock(now, starts)
            opens = rate.next_start(starts, now)
            if opens is not None:
                return False, opens
            version = doc.get("v")
            kept = [_t(t) for t in rate.taken(starts, now)]
            bumped = (version + 1) if type(version) is int else 1
            done = self._limits.update_one(
                {"_id": spec.name, "v": version}, {"$set": {"starts": kept, "v": bumped}}
            )
            if done.matched_count:
                if seen is not None:
                    seen[spec.name] = {**doc, "starts": kept, "v": bumped}
                return True, None
            fresh = self._limits.find_one({"_id": spec.name})
            if seen is not None:
                seen[spec.name] = fresh
            if fresh is None:
                return True, None  # deleted meanwhile: unlimited now
            doc = fresh
        return False, None

    def free(self, tokens: Sequence[str], *, lims: bool = True, keys: bool = True) -> None:
        """Free what these claim tokens hold (after their jobs' writes)."""
        if not tokens or not (lims or keys):
            return
        where: Doc = _among("holder", list(tokens))
        if not (lims and keys):
            where["kind"] = LIM if lims else KEY
        self._slots.update_many(where, {"$set": {"holder": None, "job": None, "until": 0.0}})

    def renew(self, tokens: Sequence[str], until: float) -> None:
        """Extend the slots of these tokens to ``until`` (before their jobs' leases)."""
        if tokens:
            self._slots.update_many(_among("holder", list(tokens)), {"$set": {"until": until}})

    # -- what is closed now ---------------------------------------------------------------
    def specs(self) -> dict[str, tuple[LimitSpec, Doc]]:
        out: dict[str, tuple[LimitSpec, Doc]] = {}
        for doc in self._limits.find({}):
            spec = spec_of(doc)
            if spec is not None:
                out[spec.name] = (spec, doc)
        return out

    def held(self, now: float) -> list[Doc]:
        """The slots held now (a freed slot has ``until`` 0)."""
        return [
            d
            for d in self._slots.find({"until": {"$gte": now}})
            if isinstance(d.get("holder"), str)
        ]

    def closed(self, now: float) -> Closed:
        specs = self.specs()
        held = self.held(now)
        counts: dict[str, int] = {}
        keys: set[str] = set()
        for d in held:
            if d.get("kind") == KEY and isinstance(d.get("key"), str):
                keys.add(d["key"])
            elif d.get("kind") == LIM and isinstance(d.get("lim"), str):
                counts[d["lim"]] = counts.get(d["lim"], 0) + 1
        full: set[str] = set()
        opens: dict[str, float] = {}
        for name, (spec, doc) in specs.items():
            if spec.max_running is not None and counts.get(name, 0) >= spec.max_running:
                full.add(name)
            elif spec.rate is not None:
                at = spec.rate.next_start(limits.as_times(doc.get("starts")), now)
                if at is not None:
                    opens[name] = at
        return Closed(full, opens, keys)

    def key_holders(self, keys: Sequence[str], now: float) -> dict[str, str]:
        out: dict[str, str] = {}
        ids = [key_id(k) for k in dict.fromkeys(keys)]
        for i in range(0, len(ids), 500):
            for d in self._slots.find(
                {**_among("_id", ids[i : i + 500]), "until": {"$gte": now}},
                projection={"key": 1, "holder": 1, "job": 1},
            ):
                if isinstance(d.get("holder"), str) and isinstance(d.get("job"), str):
                    out[str(d["_id"])[len("key:") :]] = d["job"]
        return out

    # -- definitions ----------------------------------------------------------------------
    def set_limit(self, spec: LimitSpec, running: Sequence[tuple[str, str, float]]) -> None:
        """Create or replace a definition (its start log and version stay), make its
        slots, and give the running jobs of the limit that hold none a slot
        (``running``: (job id, token, lease end) of each: they count as on SQLite)."""
        rate = spec.rate
        now = time.time()
        self._limits.update_one(
            {"_id": spec.name},
            {
                "$set": {
                    "max_running": spec.max_running,
                    "rate_count": rate.count if rate else None,
                    "rate_period": rate.period if rate else None,
                },
                "$setOnInsert": {"starts": [], "v": 0},
            },
            upsert=True,
        )
        if spec.max_running is None:
            self._slots.delete_many({"kind": LIM, "lim": spec.name})
            return
        cap = spec.max_running
        # Slots above a lowered cap: free ones go, held ones count until they free.
        self._slots.delete_many(
            {"kind": LIM, "lim": spec.name, "i": {"$gte": cap}, **_free_or_over(now)}
        )
        holders = {
            d.get("holder")
            for d in self._slots.find(
                {"kind": LIM, "lim": spec.name, "until": {"$gte": now}}, projection={"holder": 1}
            )
        }
        for job_id, token, lease_until in running:
            if token in holders or lease_until < now:
                continue
            # A job claimed as unlimited (no definition then) holds no slot: it gets a
            # free one, or one above the cap (as after a lowering). Best effort: rarely
            # it doubles a claimant's own, which only counts that job twice until it ends.
            self._grab(spec.name, cap, job_id, token, lease_until, now, above=True)
        high = self._slots.count_documents({"kind": LIM, "lim": spec.name, "i": {"$gte": cap}})
        self._limits.update_one({"_id": spec.name}, {"$set": {"high": int(high)}})

    def delete_limit(self, name: str) -> bool:
        gone = self._limits.delete_one({"_id": name}).deleted_count > 0
        self._slots.delete_many({"kind": LIM, "lim": name})
        return gone

    def sweep_keys(self, now: float) -> None:
        """Free the slots whose ``until`` another client wrote as no number (no claim's
        "free" range matches them: their limit or key was held for ever), then delete
        key documents nobody holds (a take upserts them again when needed; a take and
        this delete of the same document are each atomic, so one wins)."""
        for kind in ("null", "string", "bool", "object", "array"):  # nx-27017: no $not
            self._slots.update_many(
                {"until": {"$type": kind}}, {"$set": {"holder": None, "job": None, "until": 0.0}}
            )
        self._slots.delete_many({"kind": KEY, **_free_or_over(now)})

    def clear(self) -> None:
        """Every slot free (flush: the jobs holding them are gone)."""
        self._slots.delete_many({"kind": KEY})
        self._slots.update_many({}, {"$set": {"holder": None, "job": None, "until": 0.0}})
