"""The protocol between the master and its forked workers: every message either side
sends, as a typed value with its ``encode()`` and one decoder per direction.

Worker -> master, on the report pipe: one JSON object per line, its kind in ``ev``
(:data:`Report`, read by :func:`decode_report`)::

    {"ev": "ready"}                                        boot done (hook ran, store opened)
    {"ev": "stored", "settled": [[token, status, settled, started, runtime], ...],
     "claimed": [[id, token, cls, attempt, queue, timeout, max_memory], ...]}
        one store write: outcomes stored (``settled`` false: fenced off; ``started``
        false: a job claimed ahead given back unstarted) and jobs claimed, not started
    {"ev": "unstored", "tokens": [token, ...], "why", "error"}
        a store write failed (``why``: "disk full", "I/O error", "read-only",
        "unavailable"): the worker keeps these outcomes and retries with backoff until
        the store takes them (a "stored" line follows)
    {"ev": "claim", "token", "started", "rss"}             a claimed job starts (rss: the
                                                           worker's resident bytes then)
    {"ev": "progress", "id", "token", "percent"}
    {"ev": "exit", "reason"}                               leaving on purpose (stop, recycle...)

The items of a "stored" line stay positional lists on the wire (one line per store write
carries a whole batch), but only :class:`StoredOutcome` and :class:`ClaimedJob` write and read
them.

Master -> worker, on the control pipe: one line of space-separated words
(:data:`Command`, read by :func:`decode_command`): ``stop``, ``reopen``, ``drop TOKEN...``
and ``lease DONE DEADLINE [TOKEN...]`` (:class:`LeaseConfirmed`).

A line that is not a message of its direction (not JSON, a field missing or of the wrong
type) raises :class:`MalformedMessage`; a well-formed line of a kind this version does
not know decodes to None and is ignored. Neither ever ends the master or a worker.

Exit codes of a worker (:data:`EXIT_REASONS`) are the last word of the protocol: dying
before "ready" counts as a start-up failure.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

EXIT_OK = 0
EXIT_CRASH = 1
EXIT_SETUP = 3
EXIT_STORE = 4
EXIT_REASONS = {
    EXIT_OK: "exited normally",
    EXIT_CRASH: "crashed",
    EXIT_SETUP: "the setup hook failed",
    EXIT_STORE: "the store could not be opened",
}

#: Tokens per lease confirmation line: a line stays under PIPE_BUF, so it is written whole.
TOKENS_PER_LINE = 64


class MalformedMessage(ValueError):
    """A pipe line that is not a message of its direction; says what is wrong with it."""


# -- reading fields ---------------------------------------------------------------------
def _text(obj: dict[str, Any], key: str, default: str | None = None) -> str:
    value = obj.get(key, default)
    if not isinstance(value, str):
        raise MalformedMessage(f"{key!r} must be a string, got {value!r}")
    return value


def _number(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise MalformedMessage(f"{what} must be a number, got {value!r}")
    return float(value)


def _maybe_number(value: Any) -> float | None:
    """A number, or None for anything else (a field the reader can do without)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _texts(value: Any, what: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise MalformedMessage(f"{what} must be a list of strings, got {value!r}")
    return tuple(value)


def _items(obj: dict[str, Any], key: str) -> list[Any]:
    value = obj.get(key) or []
    if not isinstance(value, list):
        raise MalformedMessage(f"{key!r} must be a list, got {value!r}")
    return value


# -- worker -> master ----------------------------------------------------------------------
class _Report:
    """A report line: ``{"ev": EV, **fields()}``."""

    __slots__ = ()
    EV: ClassVar[str]

    def fields(self) -> dict[str, Any]:
        return {}

    def encode(self) -> bytes:
        data = {"ev": self.EV, **self.fields()}
        return (json.dumps(data, separators=(",", ":")) + "\n").encode()


@dataclass(frozen=True, slots=True)
class Ready(_Report):
    """Boot done: the setup hook ran and the store is open."""

    EV: ClassVar[str] = "ready"

    @classmethod
    def from_fields(cls, obj: dict[str, Any]) -> Ready:
        return cls()


@dataclass(frozen=True, slots=True)
class StoredOutcome:
    """One outcome a store write stored (``settled`` False: fenced off; ``started``
    False: a job claimed ahead given back unstarted). ``runtime`` None: not told."""

    token: str
    status: str  # the JobStatus name written
    settled: bool = True
    started: bool = True
    runtime: float | None = 0.0

    def to_wire(self) -> list[Any]:
        runtime = None if self.runtime is None else round(self.runtime, 6)
        return [self.token, self.status, self.settled, self.started, runtime]

    @classmethod
    def from_wire(cls, item: Any) -> StoredOutcome:
        if not isinstance(item, list) or len(item) != 5:
            raise MalformedMessage(f"an outcome must be a list of 5, got {item!r}")
        token, status, settled, started, runtime = item
        if not isinstance(token, str) or not isinstance(status, str):
            raise MalformedMessage(f"an outcome's token and status are strings, got {item!r}")
        seconds = _maybe_number(runtime)
        return cls(token, status, settled is not False, started is not False, seconds)


@dataclass(frozen=True, slots=True)
class ClaimedJob:
    """A job claimed in a store write, not started yet (claimed ahead)."""

    id: str
    token: str
    cls: str
    attempt: int
    queue: str
    timeout: float = 0.0  # seconds; 0: none
    max_memory: int = 0  # MiB (the job option); 0: the node's max_job_memory

    def to_wire(self) -> list[Any]:
        return [self.id, self.token, self.cls, self.attempt, self.queue, self.timeout,
                self.max_memory]  # fmt: skip

    @classmethod
    def from_wire(cls, item: Any) -> ClaimedJob:
        if not isinstance(item, list) or len(item) not in (6, 7):
            raise MalformedMessage(f"a claim must be a list of 7, got {item!r}")
        job_id, token, name, attempt, queue, timeout = item[:6]
        if not all(isinstance(v, str) for v in (job_id, token, name, queue)):
            raise MalformedMessage(f"a claim's id, token, class and queue are strings: {item!r}")
        if isinstance(attempt, bool) or not isinstance(attempt, int):
            raise MalformedMessage(f"a claim's attempt must be an integer, got {attempt!r}")
        seconds = 0.0 if timeout is None else _number(timeout, "a claim's timeout")
        memory = item[6] if len(item) == 7 else 0
        if isinstance(memory, bool) or not isinstance(memory, int) or memory < 0:
            raise MalformedMessage(f"a claim's max_memory must be an integer >= 0: {item!r}")
        return cls(job_id, token, name, attempt, queue, seconds, memory)


@dataclass(frozen=True, slots=True)
class Stored(_Report):
    """One store write of the worker: the outcomes it stored, the jobs it claimed.

    ``bad_outcomes`` / ``bad_claims``: items of the line that did not decode (the others
    still count); never encoded."""

    EV: ClassVar[str] = "stored"

    outcomes: tuple[StoredOutcome, ...] = ()
    claimed: tuple[ClaimedJob, ...] = ()
    bad_outcomes: int = field(default=0, compare=False)
    bad_claims: int = field(default=0, compare=False)

    def fields(self) -> dict[str, Any]:
        return {
            "settled": [o.to_wire() for o in self.outcomes],
            "claimed": [c.to_wire() for c in self.claimed],
        }

    @classmethod
    def from_fields(cls, obj: dict[str, Any]) -> Stored:
        outcomes, claimed = [], []
        bad_outcomes = bad_claims = 0
        for item in _items(obj, "settled"):
            try:
                outcomes.append(StoredOutcome.from_wire(item))
            except MalformedMessage:
                bad_outcomes += 1
        for item in _items(obj, "claimed"):
            try:
                claimed.append(ClaimedJob.from_wire(item))
            except MalformedMessage:
                bad_claims += 1
        return cls(tuple(outcomes), tuple(claimed), bad_outcomes, bad_claims)


@dataclass(frozen=True, slots=True)
class Unstored(_Report):
    """A store write failed: the worker keeps the outcomes of these claims and retries."""

    EV: ClassVar[str] = "unstored"

    tokens: tuple[str, ...]
    why: str = "unavailable"  # disk full | I/O error | read-only | unavailable
    error: str = ""

    def fields(self) -> dict[str, Any]:
        return {"tokens": list(self.tokens), "why": self.why, "error": self.error}

    @classmethod
    def from_fields(cls, obj: dict[str, Any]) -> Unstored:
        why = obj.get("why") or "unavailable"
        error = obj.get("error") or ""
        if not isinstance(why, str) or not isinstance(error, str):
            raise MalformedMessage(f"'why' and 'error' must be strings: {obj!r}")
        return cls(_texts(obj.get("tokens", []), "'tokens'"), why, error)


@dataclass(frozen=True, slots=True)
class Claim(_Report):
    """A claimed job starts (``started``: wall clock; None when not told). ``rss``: the
    worker's own resident bytes right before the job's code runs, the baseline its memory
    limit is counted from (0: not told, the job is charged its whole process group)."""

    EV: ClassVar[str] = "claim"

    token: str
    started: float | None = None
    rss: int = 0

    def fields(self) -> dict[str, Any]:
        return {"token": self.token, "started": self.started, "rss": self.rss}

    @classmethod
    def from_fields(cls, obj: dict[str, Any]) -> Claim:
        rss = obj.get("rss", 0)
        if isinstance(rss, bool) or not isinstance(rss, int) or rss < 0:
            rss = 0  # a baseline the master can do without
        return cls(_text(obj, "token"), _maybe_number(obj.get("started")), rss)


@dataclass(frozen=True, slots=True)
class Progress(_Report):
    """The running job's progress, in percent."""

    EV: ClassVar[str] = "progress"

    id: str
    token: str
    percent: float

    def fields(self) -> dict[str, Any]:
        return {"id": self.id, "token": self.token, "percent": self.percent}

    @classmethod
    def from_fields(cls, obj: dict[str, Any]) -> Progress:
        percent = _number(obj.get("percent", 0.0), "'percent'")
        return cls(_text(obj, "id"), _text(obj, "token"), percent)


@dataclass(frozen=True, slots=True)
class Exit(_Report):
    """The worker leaves on purpose, and says why."""

    EV: ClassVar[str] = "exit"

    reason: str = ""

    def fields(self) -> dict[str, Any]:
        return {"reason": self.reason}

    @classmethod
    def from_fields(cls, obj: dict[str, Any]) -> Exit:
        return cls(_text(obj, "reason", "") if obj.get("reason") is not None else "")


Report = Ready | Stored | Unstored | Claim | Progress | Exit
_REPORTS: dict[str, Any] = {
    kind.EV: kind for kind in (Ready, Stored, Unstored, Claim, Progress, Exit)
}


def decode_report(line: bytes | str) -> Report | None:
    """The report a line of the report pipe carries; None for a kind this version does
    not know. Raises :class:`MalformedMessage` for anything else."""
    try:
        obj = json.loads(line)
    except ValueError as exc:  # UnicodeDecodeError too
        raise MalformedMessage(f"not JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise MalformedMessage(f"not a JSON object: {obj!r}")
    ev = obj.get("ev")
    if not isinstance(ev, str):
        raise MalformedMessage(f"no 'ev' string: {obj!r}")
    kind = _REPORTS.get(ev)
    if kind is None:
        return None
    try:
        report: Report = kind.from_fields(obj)
    except MalformedMessage:
        raise
    except (TypeError, ValueError, AttributeError) as exc:  # a reader above missed a case
        raise MalformedMessage(f"unreadable {ev!r} report: {exc}") from None
    return report


# -- master -> worker ------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Stop:
    """Claim no more; exit after the current job."""

    WORD: ClassVar[str] = "stop"

    def encode(self) -> str:
        return self.WORD


@dataclass(frozen=True, slots=True)
class Reopen:
    """Reopen the log file."""

    WORD: ClassVar[str] = "reopen"

    def encode(self) -> str:
        return self.WORD


@dataclass(frozen=True, slots=True)
class Drop:
    """Jobs claimed ahead whose cancel was requested: do not start them."""

    WORD: ClassVar[str] = "drop"

    tokens: tuple[str, ...]

    def encode(self) -> str:
        return " ".join([self.WORD, *self.tokens])


@dataclass(frozen=True, slots=True)
class LeaseConfirmed:
    """A lease renewal of these claims was stored: their leases now end at monotonic
    ``deadline``; the renewal's write returned at monotonic ``done``. Sent every lease/3,
    also with no token, as the master's sign of life (:mod:`taskschedd.leasewatch`)."""

    WORD: ClassVar[str] = "lease"

    done: float
    deadline: float
    tokens: tuple[str, ...] = ()

    def encode(self) -> str:
        return " ".join([self.WORD, repr(self.done), repr(self.deadline), *self.tokens])

    @classmethod
    def split(cls, done: float, deadline: float, tokens: Sequence[str]) -> list[LeaseConfirmed]:
        """The confirmations of one renewal, at most TOKENS_PER_LINE tokens each (one, with
        no token, when the renewal covered no claim of this worker)."""
        if not tokens:
            return [cls(done, deadline)]
        return [
            cls(done, deadline, tuple(tokens[i : i + TOKENS_PER_LINE]))
            for i in range(0, len(tokens), TOKENS_PER_LINE)
        ]


Command = Stop | Reopen | Drop | LeaseConfirmed


def decode_command(line: str) -> Command | None:
    """The command a line of the control pipe carries; None for an empty line or a kind
    this version does not know. Raises :class:`MalformedMessage` for anything else."""
    words = line.split()
    if not words:
        return None
    word, args = words[0], words[1:]
    if word == Stop.WORD and not args:
        return Stop()
    if word == Reopen.WORD and not args:
        return Reopen()
    if word == Drop.WORD and args:
        return Drop(tuple(args))
    if word == LeaseConfirmed.WORD and len(args) >= 2:
        try:
            done, deadline = float(args[0]), float(args[1])
        except ValueError:
            raise MalformedMessage(f"a lease confirmation's times are numbers: {line!r}") from None
        return LeaseConfirmed(done, deadline, tuple(args[2:]))
    if word in (Stop.WORD, Reopen.WORD, Drop.WORD, LeaseConfirmed.WORD):
        raise MalformedMessage(f"wrong arguments for {word!r}: {line!r}")
    return None


__all__ = [
    "EXIT_CRASH",
    "EXIT_OK",
    "EXIT_REASONS",
    "EXIT_SETUP",
    "EXIT_STORE",
    "TOKENS_PER_LINE",
    "Claim",
    "ClaimedJob",
    "Command",
    "Drop",
    "Exit",
    "LeaseConfirmed",
    "MalformedMessage",
    "Progress",
    "Ready",
    "Reopen",
    "Report",
    "Stop",
    "Stored",
    "StoredOutcome",
    "Unstored",
    "decode_command",
    "decode_report",
]
