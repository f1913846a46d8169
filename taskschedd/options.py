"""Job options: names, aliases, types, defaults and validation, in one place.

Every function here raises :class:`OptionError` naming the option and what is
accepted, before anything is written.
"""

from __future__ import annotations

import difflib
import functools
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from functools import cached_property
from typing import Any
from zoneinfo import ZoneInfo

from taskschedd.errors import DataTooLarge, JobDataError, OptionError
from taskschedd.timeutil import DURATION_HELP, TIME_HELP, parse_duration, parse_time

ALIASES = {"force_spawn": "ignore_max_children"}
INTERVAL_REFERENCES = ("end", "start")
BACKOFFS = ("fixed", "exponential")
DEPENDENCY_FAILURES = ("cancel", "run")
#: Most dependencies one job may have: each is a row to write at add time, a status to
#: read at its release and a result to load when it is claimed; a fan-in wider than
#: this is a group of groups.
MAX_DEPENDENCIES = 10_000
# Used with fullmatch: a `$` anchor with match() would accept a trailing newline.
_NAME = re.compile(r"[A-Za-z0-9._-]{1,64}")
_JOB_ID = re.compile(r"[A-Za-z0-9._:@-]{1,128}")
PRIORITY_RANGE = (-(2**31), 2**31 - 1)
#: Options compared by add_job_once; `at` is left out on purpose: it is usually computed
#: ("in 10 minutes") and comparing it re-queued the job on every call (original defect 4).
ONCE_COMPARED = (
    "interval",
    "interval_reference",
    "cron",
    "timezone",
    "retry",
    "retry_interval",
    "retry_backoff",
    "retry_backoff_max",
    "timeout",
    "max_memory",
    "ignore_max_children",
    "priority",
    "queue",
    "expires",
    "limit",
    "exclusive_key",
)


@dataclass(frozen=True)
class JobOptions:
    """The resolved options of one job (defaults applied)."""

    at: float | None = None
    interval: float = 0.0
    interval_reference: str = "end"
    cron: str | None = None
    #: The IANA time zone whose wall clock ``cron`` is read in (None: UTC).
    timezone: str | None = None
    retry: int = 0
    retry_interval: float = 300.0
    retry_backoff: str = "fixed"
    retry_backoff_max: float = 3600.0
    timeout: float = 0.0
    max_memory: int = 0  # MiB a running job may add to its worker; 0: max_job_memory
    ignore_max_children: bool = False
    ignore_data: bool = False
    id: str | None = None
    priority: int = 0
    queue: str = "default"
    expires: float | None = None
    #: Ids of the jobs that must end before this one runs (see taskschedd.dependencies).
    depends_on: tuple[str, ...] = ()
    #: When a dependency ends FAILED, CANCELED or TIMEOUT: "cancel" this job, or "run" it
    #: anyway once every dependency is final.
    on_dependency_failure: str = "cancel"
    #: The named limit the job joins (taskschedd.limits); None: none.
    limit: str | None = None
    #: Jobs sharing this key never run at the same time anywhere in the cluster.
    exclusive_key: str | None = None

    def stored(self) -> dict[str, Any]:
        """The options kept with the job (for rules and display); id and at live in columns.

        Not dataclasses.asdict: its deep copy was half the cost of add_jobs, and every
        option is a scalar."""
        stored = {name: getattr(self, name) for name in _STORED_NAMES}
        if self.timezone is None:
            del stored["timezone"]  # as 0.5 stored it (see depends_on below)
        if self.limit is None:
            del stored["limit"]  # the same: a job without limits stays a 0.6 job
        if self.exclusive_key is None:
            del stored["exclusive_key"]
        if self.depends_on:
            stored["depends_on"] = list(self.depends_on)  # as JSON reads it back
        else:
            # Left out at their defaults: a node of 0.5 (a cluster being upgraded) reads
            # a list it does not know as a corrupt record, and a job without
            # dependencies must stay a job it can run.
            del stored["depends_on"], stored["on_dependency_failure"]
        return stored

    @cached_property
    def stored_json(self) -> str:
        """:meth:`stored` as compact JSON, made once per (frozen) options object: jobs
        added without options, or with the same ones in a batch, share the object."""
        return _COMPACT.encode(self.stored())


OPTION_NAMES = tuple(f.name for f in fields(JobOptions))
_STORED_NAMES = tuple(n for n in OPTION_NAMES if n not in ("id", "at"))
#: Options that take no scheduler-wide default: an id names one job (a default would make
#: every add after the first a duplicate), and ignore_data only says how one
#: add_job_once call compares. Every other option may have a default, a time (at,
#: expires) included, as it always could; depends_on names jobs, as an id does, and
#: on_dependency_failure means something only with it; an exclusive key names one
#: resource (a default would serialise every job).
NO_DEFAULT = ("id", "ignore_data", "depends_on", "on_dependency_failure", "exclusive_key")
#: The options that take a default: the keys of the configuration's ``job_defaults`` and
#: of ``Scheduler(**defaults)`` (which also takes them as ``default_<name>``). Aliases
#: (ALIASES) are accepted wherever their option is.
DEFAULT_KEYS = tuple(n for n in OPTION_NAMES if n not in NO_DEFAULT)
DEFAULT_NAMES = tuple(f"default_{n}" for n in DEFAULT_KEYS)
DEFAULT_ALIASES = tuple(alias for alias, name in ALIASES.items() if name in DEFAULT_KEYS)


def _fail(name: str, accepted: str, value: Any) -> OptionError:
    return OptionError(f"option {name!r}: expected {accepted}, got {value!r}")


def _canonical(name: str) -> str:
    return ALIASES.get(name, name)


def unknown_option(name: str, known: tuple[str, ...]) -> OptionError:
    close = difflib.get_close_matches(name, known, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return OptionError(f"unknown option {name!r}{hint}; accepted: {', '.join(known)}")


def _int(name: str, value: Any, *, minimum: int, maximum: int, accepted: str) -> int:
    if isinstance(value, bool):
        raise _fail(name, accepted, value)
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, str) and re.fullmatch(r"[+-]?\d+", value.strip()):
        value = int(value)
    if not isinstance(value, int) or not minimum <= value <= maximum:
        raise _fail(name, accepted, value)
    return value


#: The longest duration option (interval, retry_interval, retry_backoff_max, timeout):
#: 36500 days. Longer ones only overflow timers and dates.
MAX_DURATION = 36500 * 86400.0


def _duration(name: str, value: Any, *, allow_minus_one: bool = False) -> float:
    if allow_minus_one and (value == -1 or value == "-1") and not isinstance(value, bool):
        return -1.0
    extra = " or -1" if allow_minus_one else ""
    try:
        seconds = parse_duration(value, what=f"option {name!r}")
    except ValueError:
        raise _fail(name, DURATION_HELP + extra + " (at most 36500d)", value) from None
    if not seconds <= MAX_DURATION:
        raise _fail(name, f"a duration of at most 36500d ({MAX_DURATION:.0f}s){extra}", value)
    return seconds


#: A size: megabytes as an integer, or a number with a binary unit (512MB, 2G, 1.5GiB).
SIZE_HELP = "megabytes as an integer or a size like 512MB, 2G or 1.5GiB (binary units)"
# ASCII digits only: str.isdigit() and \d also take other scripts' digits ("١٢٣").
_SIZE_RE = re.compile(
    r"\s*([0-9]+(?:\.[0-9]+)?)\s*(b|k|kb|kib|m|mb|mib|g|gb|gib|t|tb|tib)?\s*", re.I | re.A
)
_SIZE_UNITS = {"b": 1, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}
#: The largest max_memory: 16 TiB, in MiB (as the configuration's max_job_memory).
MAX_MEMORY_MB = 16 << 20


def size_bytes(value: Any) -> float | None:
    """Bytes from megabytes as an integer or a size like 512MB / 2G / 1.5GiB (binary
    units), or None when ``value`` is neither; may be negative, inf or too large: the
    caller checks the range."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, float) and math.isfinite(value):
        return value * 2**20  # megabytes, as "1.5" is
    if isinstance(value, int) and not isinstance(value, bool):
        return float(max(value, -1)) * 2**20 if value < 2**900 else math.inf
    if isinstance(value, str):
        match = _SIZE_RE.fullmatch(value)
        if match:
            return float(match.group(1)) * _SIZE_UNITS[(match.group(2) or "m")[0].lower()]
    return None


def _memory(name: str, value: Any) -> int:
    """Whole MiB (rounded up) from a size; 0 means none."""
    accepted = f"{SIZE_HELP}, from 0 to 16TiB (0: the node's max_job_memory)"
    size = size_bytes(value)
    if size is None or not 0 <= size <= MAX_MEMORY_MB * 2**20:
        raise _fail(name, accepted, value)
    return math.ceil(size / 2**20)


def _bool(name: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if value in (0, 1) and isinstance(value, int):
        return bool(value)
    if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
        return value.lower() in ("true", "yes", "1")
    raise _fail(name, "true or false", value)


def _time_or_none(name: str, value: Any) -> float | None:
    if value is None:
        return None
    try:
        return parse_time(value, what=f"option {name!r}")
    except ValueError:
        raise _fail(name, TIME_HELP + " or null", value) from None


def _check_value(name: str, value: Any) -> Any:
    """Validate and normalise one option value."""
    if name == "at" or name == "expires":
        return _time_or_none(name, value)
    if name == "interval":
        return _duration(name, value, allow_minus_one=True)
    if name in ("retry_interval", "timeout", "retry_backoff_max"):
        return _duration(name, value)
    if name == "max_memory":
        return _memory(name, value)
    if name == "retry":
        return _int(
            name, value, minimum=-1, maximum=2**31, accepted="an integer >= -1 (-1 = endless)"
        )
    if name == "priority":
        lo, hi = PRIORITY_RANGE
        return _int(name, value, minimum=lo, maximum=hi, accepted=f"an integer from {lo} to {hi}")
    if name in ("ignore_max_children", "ignore_data"):
        return _bool(name, value)
    if name == "interval_reference":
        if value not in INTERVAL_REFERENCES:
            raise _fail(name, " or ".join(INTERVAL_REFERENCES), value)
        return value
    if name == "retry_backoff":
        if value not in BACKOFFS:
            raise _fail(name, " or ".join(BACKOFFS), value)
        return value
    if name == "queue":
        if not isinstance(value, str) or not _NAME.fullmatch(value):
            raise _fail(name, "a queue name of 1-64 letters, digits, '.', '_' or '-'", value)
        return value
    if name == "id":
        if value is None:
            return None
        if not isinstance(value, str) or not _JOB_ID.fullmatch(value):
            raise _fail(name, "1-128 letters, digits or . _ : @ -", value)
        return value
    if name == "depends_on":
        return _job_ids(name, value)
    if name == "on_dependency_failure":
        if value not in DEPENDENCY_FAILURES:
            raise _fail(name, " or ".join(DEPENDENCY_FAILURES), value)
        return value
    if name == "timezone":
        return _timezone(name, value)
    if name == "limit":
        return None if value is None else _limit_name(value)
    if name == "exclusive_key":
        from taskschedd.limits import check_key

        return None if value is None else check_key(value)
    if name == "cron":
        if value is None:
            return None
        if not isinstance(value, str):
            raise _fail(name, "a cron expression like '*/5 * * * *' or '@hourly'", value)
        from taskschedd.cron import CronExpr

        CronExpr.parse(value)
        return value.strip()
    raise unknown_option(name, OPTION_NAMES)  # pragma: no cover - callers check names first


def _limit_name(value: Any) -> str:
    from taskschedd.limits import LIMIT_NAME_HELP, check_name

    try:
        return check_name(value)
    except OptionError:
        raise _fail("limit", f"a limit name of {LIMIT_NAME_HELP}", value) from None


def _timezone(name: str, value: Any) -> str | None:
    """An IANA time zone name that zoneinfo knows (None: UTC)."""
    if value is None:
        return None
    accepted = "an IANA time zone name like 'Europe/Zurich', 'America/New_York' or 'UTC'"
    if not isinstance(value, str) or not value.strip():
        raise _fail(name, accepted, value)
    try:
        zone(value.strip())
    except (ValueError, OSError):  # ZoneInfoNotFoundError is a KeyError: caught below
        raise _fail(name, accepted, value) from None
    except KeyError:
        raise _fail(name, accepted, value) from None
    return value.strip()


@functools.lru_cache(maxsize=64)
def zone(name: str) -> ZoneInfo:
    """The zone of a checked name, loaded once per process."""
    return ZoneInfo(name)


def _job_ids(name: str, value: Any) -> tuple[str, ...]:
    """A list of distinct job ids (a single id is a list of one)."""
    accepted = f"a list of at most {MAX_DEPENDENCIES} distinct job ids"
    if value is None:
        return ()
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list | tuple):
        raise _fail(name, accepted, value)
    ids = tuple(value)
    if len(ids) > MAX_DEPENDENCIES:
        raise OptionError(
            f"option {name!r}: {len(ids)} job ids, more than {MAX_DEPENDENCIES}; "
            "chain a fan-in through intermediate jobs"
        )
    for job_id in ids:
        if not isinstance(job_id, str) or not _JOB_ID.fullmatch(job_id):
            raise _fail(name, f"{accepted} (1-128 letters, digits or . _ : @ -)", job_id)
    if len(set(ids)) != len(ids):
        seen: set[str] = set()
        for twice in ids:  # the first repeated (linear: a list may hold 10,000)
            if twice in seen:
                break
            seen.add(twice)
        raise OptionError(f"option {name!r}: job id {twice!r} is given more than once")
    return ids


@dataclass
class Defaults:
    """Scheduler-wide defaults (`default_*` options); they apply to jobs added later."""

    values: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def parse(cls, given: Mapping[str, Any]) -> Defaults:
        values: dict[str, Any] = {}
        given_as: dict[str, str] = {}
        for key, value in given.items():
            bare = key[len("default_") :] if key.startswith("default_") else key
            bare = _canonical(bare)
            if bare not in DEFAULT_KEYS:
                raise unknown_option(key, DEFAULT_NAMES)
            if bare in given_as:
                raise OptionError(
                    f"option {bare!r} given twice, as {given_as[bare]!r} and as {key!r}; give one"
                )
            given_as[bare] = key
            values[bare] = _check_value(bare, value)
        if values.get("cron") and values.get("interval", 0):
            raise OptionError("options 'default_cron' and 'default_interval' exclude each other")
        return cls(values)

    def updated(self, given: Mapping[str, Any]) -> Defaults:
        merged = dict(self.values)
        merged.update(Defaults.parse(given).values)
        return Defaults(merged)


def resolve(
    given: Mapping[str, Any], defaults: Defaults | None = None
) -> tuple[JobOptions, set[str]]:
    """Validate options given by a caller; return the resolved options and the explicit names."""
    explicit: dict[str, Any] = {}
    given_as: dict[str, str] = {}
    for key, value in given.items():
        if not isinstance(key, str):
            raise OptionError(f"option names must be strings, got {key!r}")
        name = _canonical(key)
        if name not in OPTION_NAMES:
            raise unknown_option(key, OPTION_NAMES + tuple(ALIASES))
        if name in explicit:
            raise OptionError(
                f"option {name!r} given twice, as {given_as[name]!r} and as {key!r}; give one"
            )
        given_as[name] = key
        try:
            explicit[name] = _check_value(name, value)
        except OptionError as exc:
            if key == name:
                raise
            raise OptionError(f"{exc} (given as {key!r})") from None
    merged = dict(defaults.values if defaults else {})
    merged.update(explicit)
    if "cron" in explicit and "interval" not in explicit:
        merged["interval"] = 0.0
    if "interval" in explicit and explicit["interval"] and "cron" not in explicit:
        merged["cron"] = None
    if not merged.get("cron"):
        if explicit.get("timezone") is not None:
            raise OptionError(
                "option 'timezone' says which wall clock 'cron' is read in: give 'cron' "
                "too (an 'at' or an interval is a point in time, in no zone)"
            )
        merged.pop("timezone", None)  # a default zone means nothing to a job without cron
    opts = JobOptions(**merged)
    _check_combination(opts, set(explicit))
    return opts, set(explicit)


def _check_combination(opts: JobOptions, explicit: set[str]) -> None:
    if opts.depends_on and (opts.interval or opts.cron):
        which = "cron" if opts.cron else "interval"
        source = (
            ""
            if which in explicit
            else f" (its {which!r} comes from the defaults: job_defaults in the configuration, or the Scheduler's)"
        )
        raise OptionError(
            f"option 'depends_on' cannot be given with 'interval' or 'cron'{source}: an "
            "occurrence of a series would wait on jobs that ended long before it; add the "
            "series from a job that depends on them instead"
        )
    if "on_dependency_failure" in explicit and not opts.depends_on:
        raise OptionError(
            "option 'on_dependency_failure' needs 'depends_on' (taskschedctl: --after ID): "
            "it says what a job does when one of its dependencies fails"
        )
    if opts.id is not None and opts.id in opts.depends_on:
        raise OptionError(f"option 'depends_on': job {opts.id!r} cannot depend on itself")
    if opts.cron and opts.interval:
        raise OptionError(
            "options 'cron' and 'interval' exclude each other: give one recurrence, not both"
        )
    if opts.expires is not None and opts.at is not None and opts.expires <= opts.at:
        raise OptionError("option 'expires' must be later than 'at': the job could never start")
    if opts.retry_backoff == "exponential" and opts.retry_backoff_max < opts.retry_interval:
        raise OptionError(
            "option 'retry_backoff_max' must be >= 'retry_interval' for exponential backoff"
        )


def stored_options(data: Mapping[str, Any]) -> JobOptions:
    """Options read back from a store, checked like given ones (OptionError): another
    client may have written them. Names this version does not know are left out."""
    try:
        if "depends_on" in data:
            # Stored as a JSON list: a tuple is hashable, and as valid.
            key: Any = tuple(
                sorted((k, tuple(v) if type(v) is list else v) for k, v in data.items())
            )
        else:  # most jobs: no generator per decode (a claim decodes on the hot path)
            key = tuple(sorted(data.items()))
        hash(key)
    except TypeError:  # an unhashable value: not ours; check it uncached
        return _check_stored.__wrapped__(tuple(data.items()))
    return _check_stored(key)


@functools.lru_cache(maxsize=512)
def _check_stored(items: tuple[tuple[str, Any], ...]) -> JobOptions:
    # Cached: most jobs share their options, and a claim decodes them on the hot path.
    values = {k: _check_value(k, v) for k, v in items if k in _STORED_NAMES}
    return JobOptions(**values)


#: Deepest nesting of lists/objects accepted in job data and results (MongoDB's own limit).
#: Deeper JSON would be stored but could not be read back by a process whose stack is
#: deeper than the writer's: a worker would crash on every claim of such a job.
MAX_JSON_DEPTH = 100
#: Default of the largest job data, and result, accepted as JSON text (bytes; the text is
#: ASCII). MongoDB stores a job's data, result and errors in one document of at most
#: 16 MiB; the configuration key ``max_data_size`` and ``Scheduler(max_data_size=...)``
#: change it (up to 7 MiB, so that data and result together always fit).
DEFAULT_MAX_DATA_SIZE = 1 << 20
MAX_DATA_SIZE_RANGE = (1 << 10, 7 << 20)
#: CPython refuses to convert integers longer than this to or from text (a guard against
#: quadratic time): such a number cannot be JSON here, whatever the limit on data size.
MAX_INT_DIGITS = 4300


def _too_deep(value: Any, limit: int = MAX_JSON_DEPTH) -> bool:
    """True when lists/dicts nest more than ``limit`` levels (iterative: no recursion)."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list | tuple):
            children = item
        else:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children)
    return False


# Made once: json.dumps with any option builds a new encoder per call.
_COMPACT = json.JSONEncoder(separators=(",", ":"))
_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), allow_nan=False)


def _int_too_long(exc: ValueError) -> bool:
    return "integer string conversion" in str(exc)


def format_size(size: int) -> str:
    """Bytes as the largest binary unit that divides them: 1048576 -> '1 MiB'."""
    for unit, factor in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if size >= factor and size % factor == 0:
            return f"{size // factor} {unit}"
    return f"{size} bytes"


def _check_size(what: str, text: str, limit: int | None) -> None:
    if limit is not None and len(text) > limit:
        raise DataTooLarge(
            f"{what} is {len(text)} bytes as JSON, more than the limit of {format_size(limit)} "
            f"({limit} bytes; max_data_size in the configuration, or "
            "Scheduler(max_data_size=...)); store large payloads elsewhere and pass a reference"
        )


def _has_bad_key(value: Any) -> bool:
    """Whether a dict at any depth has a key that is not a string (iterative; scalars are
    skipped first, by class, so that the walk costs less than the encoding)."""
    stack = [value]
    pop, push = stack.pop, stack.extend
    while stack:
        item = pop()
        cls = item.__class__
        if cls is str or cls is int or cls is float or cls is bool or item is None:
            continue
        if isinstance(item, dict):
            if set(map(type, item)) - {str} and not all(isinstance(k, str) for k in item):
                return True
            push(item.values())
        elif isinstance(item, list | tuple):
            push(item)
    return False


def _bad_key_error(value: Any) -> JobDataError | None:
    """JobDataError naming the first key (depth first) that is not a string, and where."""
    stack: list[tuple[Any, str]] = [(value, "data")]
    while stack:
        item, path = stack.pop()
        if isinstance(item, dict):
            for key in item:
                if not isinstance(key, str):
                    return JobDataError(
                        f"job data: the key {key!r} ({type(key).__name__}) in {path} is not "
                        "a string; keys of JSON objects must be strings (JSON would read it "
                        "back as a string, and cannot sort keys of mixed types): give such "
                        "keys as strings"
                    )
            stack.extend((v, f"{path}[{k!r}]") for k, v in reversed(item.items()))
        elif isinstance(item, list | tuple):
            stack.extend((v, f"{path}[{i}]") for i, v in reversed(list(enumerate(item))))
    return None


def dump_data(data: Any, max_size: int | None = None) -> str:
    """Job data as canonical JSON text; JobDataError says what is not JSON (a dict key that
    is not a string included, at any depth), DataTooLarge when the text is longer than
    ``max_size`` bytes."""
    try:
        text = _CANONICAL.encode(data)
    except ValueError as exc:
        if _int_too_long(exc):
            raise JobDataError(
                f"job data holds an integer of more than {MAX_INT_DIGITS} digits; "
                "give such numbers as strings"
            ) from None
        raise _not_json(exc) from None
    except TypeError as exc:
        raise (_bad_key_error(data) or _not_json(exc)) from None
    except RecursionError as exc:
        raise _not_json(exc) from None
    # The encoder turns int, float, bool and None keys into strings silently: the job
    # would read back other keys than it was given.
    if "{" in text and _has_bad_key(data):
        raise _bad_key_error(data) or JobDataError("job data: a dict key is not a string")
    _check_size("job data", text, max_size)
    # Nesting deeper than the limit needs more brackets than that in the text.
    if text.count("[") + text.count("{") > MAX_JSON_DEPTH and _too_deep(data):
        raise JobDataError(f"job data is nested more than {MAX_JSON_DEPTH} levels deep")
    return text


def _not_json(exc: BaseException) -> JobDataError:
    return JobDataError(
        f"job data must be JSON-serialisable (dicts, lists, strings, numbers, "
        f"booleans, null; no NaN/Infinity; at most {MAX_JSON_DEPTH} levels deep): {exc}"
    )


def dump_result(result: Any, max_size: int | None = DEFAULT_MAX_DATA_SIZE) -> str:
    """A job's return value as JSON text; JobDataError names the problem, DataTooLarge
    when the text is longer than ``max_size`` bytes."""
    try:
        text = json.dumps(result, separators=(",", ":"), allow_nan=False)
    except ValueError as exc:
        if _int_too_long(exc):
            raise JobDataError(
                f"the job's return value holds an integer of more than {MAX_INT_DIGITS} "
                "digits; return such numbers as strings"
            ) from None
        raise JobDataError(f"the job's return value is not JSON-serialisable: {exc}") from None
    except (TypeError, RecursionError) as exc:
        raise JobDataError(f"the job's return value is not JSON-serialisable: {exc}") from None
    _check_size("the job's return value", text, max_size)
    if _too_deep(result):
        raise JobDataError(f"the job's return value is nested more than {MAX_JSON_DEPTH} levels")
    return text
