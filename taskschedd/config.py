"""The YAML configuration of a node, validated completely at start.

Every problem is a ConfigError that names the file, the dotted key and the reason, so an
operator can fix the file without reading a traceback. Loading writes nothing.

Example (every key optional; an empty file means all defaults)::

    store: sqlite:///var/lib/taskschedd/taskschedd.db   # or mongodb://user:pw@host/db
    node: web-1
    pm: dynamic              # dynamic | static | ondemand
    min_children: 1
    max_children: 8          # default: number of CPUs
    idle_timeout: 60s
    queues: [critical, default]   # served in order: the first has priority
    lease: 30s
    allowed_modules: [myapp.jobs] # "*" allows any module: UNSAFE, job names run code
    max_worker_memory: 512MB      # MB as an integer, or 512MB / 1GB / 1.5GiB (binary)
    max_job_memory: 2GB           # a running job above this is killed (reason memory)
    max_extra_children: 64        # extra workers for ignore_max_children jobs (0: no cap)
    logging: {format: json, level: info, file: /var/log/taskschedd.log}
    metrics: {listen: "127.0.0.1:9464"}
    mongodb: {write_concern: majority, change_streams: auto}
    limits:                       # cluster-wide, set in the store at start and reload
      reports: {max_running: 2}
      mail: {rate: 100/1m}
      queue:imports: {max_running: 4, rate: 20/1s}
"""

from __future__ import annotations

import dataclasses
import difflib
import grp
import ipaddress
import math
import os
import pwd
import re
import socket
import stat
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn
from urllib.parse import quote, unquote

import yaml

from taskschedd.errors import ConfigError, OptionError
from taskschedd.limits import LimitSpec
from taskschedd.options import (
    DEFAULT_ALIASES,
    DEFAULT_KEYS,
    DEFAULT_MAX_DATA_SIZE,
    MAX_DATA_SIZE_RANGE,
    Defaults,
    size_bytes,
)
from taskschedd.pool import DEFAULT_MAX_EXTRA_CHILDREN
from taskschedd.redact import redact_url, remember_secret, url_password
from taskschedd.storeurl import DEFAULT_URL, is_mongodb, looks_like_mongodb
from taskschedd.timeutil import format_duration, parse_duration

if TYPE_CHECKING:
    from taskschedd.store.base import Store

__all__ = [
    "JOB_DEFAULT_KEYS",
    "Config",
    "ConfigError",
    "LoggingConfig",
    "MetricsConfig",
    "MongoDBConfig",
    "default_config_path",
    "from_mapping",
    "load",
    "open_configured",
    "redact_url",
]

DEFAULT_CONFIG_PATH = "/etc/taskschedd/taskschedd.yaml"
DEFAULT_MONGODB_DATABASE = "taskscheduler"
STORE_FORMS = (
    "sqlite:///ABSOLUTE/PATH, sqlite://RELATIVE/PATH (relative to the configuration file), "
    "a plain file path (SQLite), mongodb://... or mongodb+srv://..."
)
#: The keys of ``job_defaults``: the job options that take a default, the very ones that
#: ``Scheduler(**defaults)`` takes (one definition: taskschedd.options.DEFAULT_KEYS). Their
#: aliases (force_spawn) are accepted too, as by the Scheduler.
JOB_DEFAULT_KEYS = DEFAULT_KEYS

_NODE_RE = re.compile(r"[A-Za-z0-9._@:-]{1,128}")
_QUEUE_RE = re.compile(r"[A-Za-z0-9._-]{1,64}")
_DOTTED_RE = re.compile(r"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*")
_HOOK_RE = re.compile(r"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*")
_SCHEME_RE = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*:")
_LISTEN_RE = re.compile(r"(?:\[(?P<v6>[^\]]+)\]|(?P<host>[A-Za-z0-9.\-]+)):(?P<port>\d{1,5})")
_HOSTNAME_RE = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9\-]{0,61}[A-Za-z0-9])?")
_BAD_DB_CHARS = set('/\\. "$\0')

#: A configuration file is small: larger ones, and YAML whose aliases expand to more nodes
#: than this (an "alias bomb": 400 bytes can stand for billions of nodes), are refused
#: before anything walks the data.
MAX_CONFIG_BYTES = 1 << 20
MAX_CONFIG_NODES = 100_000
MAX_CONFIG_ALIASES = 1_000

_DAY = 86400.0
#: The accepted range of every duration key, in seconds (documented in taskschedd.yaml(5)).
#: Upper bounds keep every derived deadline and timer argument finite and in range.
DURATION_RANGES: dict[str, tuple[float, float]] = {
    "idle_timeout": (0.0, 30 * _DAY),
    "lease": (1.0, _DAY),
    "shutdown_grace": (0.0, _DAY),
    "kill_grace": (0.0, 3600.0),
    "reap_interval": (0.01, 3600.0),
    "poll_interval": (0.01, 3600.0),
    "heartbeat_interval": (0.01, 3600.0),
    "retention": (0.0, 3650 * _DAY),
}
#: The accepted range of every integer key (sizes in bytes).
MAX_CHILDREN = 4096
INT_RANGES: dict[str, tuple[int, int]] = {
    "min_children": (0, MAX_CHILDREN),
    "max_children": (1, MAX_CHILDREN),
    "max_jobs_per_worker": (0, 1_000_000_000),
    "claim_ahead": (1, 1000),
    "max_worker_memory": (0, 16 << 20),  # megabytes: 16 TiB
    "max_job_memory": (0, 16 << 20),  # megabytes: 16 TiB
    "max_extra_children": (0, MAX_CHILDREN),
    "max_data_size": MAX_DATA_SIZE_RANGE,
    "mongodb.write_concern": (0, 50),
}


def _default_node() -> str:
    """The host name, made valid: a default must never fail validation."""
    name = re.sub(r"[^A-Za-z0-9._@:-]", "-", socket.gethostname())[:128]
    return name or "localhost"


def _default_max_children() -> int:
    return os.cpu_count() or 1


@dataclass(frozen=True)
class LoggingConfig:
    """Where and how the daemon logs; file None means stderr (journald under systemd)."""

    format: str = "console"  # json | console
    level: str = "info"  # debug | info | warning | error
    file: str | None = None


@dataclass(frozen=True)
class MetricsConfig:
    """Prometheus endpoint; listen None means no endpoint."""

    listen: str | None = None

    @property
    def address(self) -> tuple[str, int] | None:
        """(host, port) to bind, IPv6 hosts without brackets; None when off."""
        if self.listen is None:
            return None
        host, _, port = self.listen.rpartition(":")
        return host.strip("[]"), int(port)


@dataclass(frozen=True)
class DashboardConfig:
    """``taskschedctl dashboard``: where it listens and who may use it. Secrets are read
    from files (or the environment, see taskschedd.dashboard.settings), never written in
    the configuration itself, which many people may read."""

    listen: str = "127.0.0.1:8080"
    read_only: bool = False
    #: A file holding the bearer token (its first line).
    token_file: str | None = None
    #: HTTP basic credentials: the user, and a file holding the password (first line).
    user: str | None = None
    password_file: str | None = None


@dataclass(frozen=True)
class MongoDBConfig:
    """MongoDB names and durability; ignored when the store is SQLite."""

    database: str = DEFAULT_MONGODB_DATABASE
    jobs_collection: str = "taskscheduler.jobs"
    events_collection: str = "taskscheduler.events"
    nodes_collection: str = "taskscheduler.nodes"
    write_concern: str | int = "majority"
    change_streams: str = "auto"  # auto | on | off


@dataclass(frozen=True)
class Config:
    """The effective, validated configuration of one node (all durations in seconds)."""

    store: str = DEFAULT_URL
    node: str = field(default_factory=_default_node)
    pm: str = "dynamic"
    min_children: int = 1
    max_children: int = field(default_factory=_default_max_children)
    idle_timeout: float = 60.0
    queues: list[str] = field(default_factory=lambda: ["default"])
    lease: float = 30.0
    shutdown_grace: float = 30.0
    kill_grace: float = 5.0
    reap_interval: float = 10.0
    poll_interval: float = 1.0
    heartbeat_interval: float = 5.0
    allowed_modules: list[str] = field(default_factory=lambda: ["taskschedd.examples"])
    setup_hook: str | None = None
    max_jobs_per_worker: int = 0
    claim_ahead: int = 64  # jobs a worker may claim in one store write (1: one at a time)
    max_worker_memory: int = 0  # MB, 0 = no limit
    #: MB a running job may add to its worker's process group (resident, beyond the
    #: worker's own at the job's start; SIGKILL above it), 0 = no limit; the job option
    #: max_memory overrides it (see taskschedd.memwatch).
    max_job_memory: int = 0
    #: Extra workers for ignore_max_children jobs at once (0: no cap; see taskschedd.pool).
    max_extra_children: int = DEFAULT_MAX_EXTRA_CHILDREN
    max_data_size: int = DEFAULT_MAX_DATA_SIZE  # bytes of JSON, for job data and results
    job_defaults: dict[str, Any] = field(default_factory=dict)
    retention: float = 7 * 86400.0  # 0 = keep final jobs forever
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    pidfile: str | None = None
    user: str | None = None
    group: str | None = None
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    mongodb: MongoDBConfig = field(default_factory=MongoDBConfig)
    #: A file holding the password of the MongoDB store URL (which then names the user only).
    store_password_file: str | None = None
    #: Cluster-wide limits (taskschedd.limits) by name: the node sets them in the store at
    #: start and on each reload, so the configuration wins over ``taskschedctl limits set``.
    #: Limits not named here are left as they are.
    limits: dict[str, LimitSpec] = field(default_factory=dict)
    #: Read by ``taskschedctl dashboard`` only; nodes ignore it.
    dashboard: DashboardConfig = field(default_factory=DashboardConfig)

    @property
    def store_kind(self) -> str:
        """ "sqlite" or "mongodb"."""
        return "mongodb" if is_mongodb(self.store) else "sqlite"

    def store_options(self) -> dict[str, Any]:
        """Keyword arguments for :func:`taskschedd.store.open_store` (the store reads no
        configuration: this is where its settings become plain values)."""
        if self.store_kind != "mongodb":
            return {}
        m = self.mongodb
        return {
            "database": m.database,
            "jobs_collection": m.jobs_collection,
            "events_collection": m.events_collection,
            "nodes_collection": m.nodes_collection,
            "write_concern": m.write_concern,
            "change_streams": m.change_streams,
            "poll_interval": self.poll_interval,
            # TTL indexes follow the configured retention (0 = keep finished jobs forever).
            "retention": self.retention,
        }

    def __repr__(self) -> str:
        """The dataclass repr minus URL passwords: configs end up in logs and tracebacks."""
        fields = ", ".join(f"{f.name}={getattr(self, f.name)!r}" for f in dataclasses.fields(self))
        return redact_url(f"Config({fields})")

    def redacted(self) -> dict[str, Any]:
        """The effective configuration as JSON-able data, with URL passwords masked."""
        data = dataclasses.asdict(self)
        data["store"] = redact_url(self.store)
        data["job_defaults"] = _jsonable(self.job_defaults)
        data["limits"] = limits_mapping(self.limits)
        result: dict[str, Any] = data
        return result


def limits_mapping(limits: Mapping[str, LimitSpec]) -> dict[str, dict[str, Any]]:
    """The ``limits:`` key as it is written in the file (rates as text, like 100/1m)."""
    out: dict[str, dict[str, Any]] = {}
    for name, spec in limits.items():
        entry: dict[str, Any] = {}
        if spec.max_running is not None:
            entry["max_running"] = spec.max_running
        if spec.rate is not None:
            entry["rate"] = str(spec.rate)
        out[name] = entry
    return out


def default_config_path() -> str:
    """$TASKSCHED_CONFIG if set, else the packaged default location."""
    return os.environ.get("TASKSCHED_CONFIG") or DEFAULT_CONFIG_PATH


def read_regular(path: str, limit: int) -> bytes:
    """Up to ``limit`` + 1 bytes of a regular file. Anything else (a FIFO with no writer,
    a device, a directory) is refused without blocking: OSError with the reason."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            what = "a directory" if stat.S_ISDIR(st.st_mode) else "a FIFO, socket or device"
            raise OSError(0, f"it is {what}, not a regular file; give a regular file")
        chunks, left = [], limit + 1
        while left > 0 and (chunk := os.read(fd, left)):
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def load(path: str | os.PathLike[str], *, allow_empty: bool = True) -> Config:
    """Read and validate a YAML configuration file; every problem is a ConfigError.
    ``allow_empty`` False refuses a file with no settings (a reload: an empty file there
    is far more likely a partial write than a wish for every default)."""
    name = os.fspath(path)
    try:
        raw = read_regular(name, MAX_CONFIG_BYTES)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise ConfigError(f"cannot read the configuration file: {reason}", path=name) from None
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError(
            f"the file is larger than {MAX_CONFIG_BYTES // 1024} KiB; a configuration is "
            "a few KiB at most",
            path=name,
        )
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"not UTF-8 text (byte offset {exc.start})", path=name) from None
    try:
        data = _parse(text)
    except _TooBig as exc:
        raise ConfigError(str(exc), path=name) from None
    except yaml.MarkedYAMLError as exc:
        raise ConfigError(_yaml_reason(exc), path=name) from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"not valid YAML: {exc}", path=name) from None
    except RecursionError:
        raise ConfigError("not valid YAML: nested too deeply", path=name) from None
    if data is None:
        if not allow_empty:
            raise ConfigError(
                "the file has no settings (empty, or only comments): most likely written "
                "only in part; the running configuration stays",
                path=name,
            )
        data = {}  # an empty file (or only comments) is all defaults
    return from_mapping(data, path=name)


def from_mapping(data: Mapping[Any, Any], path: str | None = None) -> Config:
    """Validate an already parsed mapping; relative paths resolve against path's directory."""
    return _Validator(path).config(data)


class _TooBig(Exception):
    """YAML whose aliases expand beyond the limits."""


def _parse(text: str) -> Any:
    """yaml.load with the StrictLoader, refusing documents that expand too much: the node
    graph is measured (aliases counted as the copies they stand for) before any Python
    object is built from it."""
    loader = _StrictLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_expansion(node)
        return loader.construct_document(node)
    finally:
        loader.dispose()


def _check_expansion(root: yaml.Node) -> None:
    """_TooBig when the document has too many aliases, is recursive, or stands for more
    than MAX_CONFIG_NODES nodes once its aliases are expanded. Iterative, and linear in the
    size of the graph: each distinct node's expanded size is computed once."""
    sizes: dict[int, int] = {}
    refs = 0
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    on_path: set[int] = set()
    while stack:
        node, done = stack.pop()
        key = id(node)
        children: list[yaml.Node] = []
        if isinstance(node, yaml.SequenceNode):
            children = list(node.value)
        elif isinstance(node, yaml.MappingNode):
            children = [part for pair in node.value for part in pair]
        if done:
            on_path.discard(key)
            total = 1 + sum(sizes[id(child)] for child in children)
            if total > MAX_CONFIG_NODES:
                raise _TooBig(
                    f"the YAML stands for more than {MAX_CONFIG_NODES} values once its aliases "
                    f"(*name) are expanded (line {node.start_mark.line + 1}); "
                    "a configuration needs far fewer"
                )
            sizes[key] = total
            continue
        if key in sizes:
            refs += 1
        elif key in on_path:
            raise _TooBig(
                f"a YAML alias refers to a value that contains it (line "
                f"{node.start_mark.line + 1}); recursive data is not a configuration"
            )
        else:
            on_path.add(key)
            stack.append((node, True))
            stack.extend((child, False) for child in children)
        if refs > MAX_CONFIG_ALIASES:
            raise _TooBig(
                f"more than {MAX_CONFIG_ALIASES} uses of YAML aliases (*name); "
                "a configuration needs far fewer"
            )


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that rejects duplicate keys, which PyYAML would silently let win."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Hashable, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if (
                not isinstance(key_node, yaml.ScalarNode)
                or key_node.tag == "tag:yaml.org,2002:merge"
            ):
                continue
            key = self.construct_object(key_node, deep=True)
            if isinstance(key, Hashable) and key in seen:
                raise yaml.constructor.ConstructorError(
                    None,
                    None,
                    f"duplicate key {key!r} (first given at line {seen[key] + 1})",
                    key_node.start_mark,
                )
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)

    def construct_yaml_int(self, node: yaml.ScalarNode) -> int:
        text = str(self.construct_scalar(node))
        try:
            if text.lstrip("+-").startswith("0x"):  # (see _core_numbers)
                return int(text, 16)
            if re.fullmatch(r"[-+]?[0-9]+", text):
                return int(text, 10)  # 010 is ten, not YAML 1.1's octal eight
            return int(super().construct_yaml_int(node))
        except ValueError as exc:  # CPython's guard against very long integers
            raise yaml.constructor.ConstructorError(
                None,
                None,
                f"a number too long to read ({exc.args[0].split(':')[0]})",
                node.start_mark,
            ) from None


_StrictLoader.add_constructor("tag:yaml.org,2002:int", _StrictLoader.construct_yaml_int)


def _core_numbers() -> None:
    """Numbers read plainly: PyYAML's YAML 1.1 resolvers also take 10:00 for 600 (base
    60), 0b1/010 for 1/8 and 1_0 for 10, which nobody means in a config (they stay text
    here, and the key's check says what it accepts). What is still read as a number is
    a subset of what YAML 1.1 reads as one, so text that YAML 1.1 writers leave unquoted
    (0E0, 1e3, 0o17) stays text."""
    ints, floats = "tag:yaml.org,2002:int", "tag:yaml.org,2002:float"
    resolvers = {
        first: [(tag, rx) for tag, rx in entries if tag not in (ints, floats)]
        for first, entries in _StrictLoader.yaml_implicit_resolvers.items()
    }
    _StrictLoader.yaml_implicit_resolvers = resolvers
    _StrictLoader.add_implicit_resolver(
        ints,
        # A leading zero only before octal digits, as YAML 1.1 reads an int (010 means
        # 10 here, not 8); 08 and 09 are text there, so YAML writers leave them unquoted.
        re.compile(r"^(?:[-+]?(?:0|[1-9][0-9]*|0[0-7]+)|[-+]?0x[0-9a-fA-F]+)$"),
        list("-+0123456789"),
    )
    _StrictLoader.add_implicit_resolver(
        floats,
        re.compile(
            r"^(?:[-+]?(?:[0-9]+\.[0-9]*|\.[0-9]+)(?:[eE][-+][0-9]+)?"
            r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"
        ),
        list("-+0123456789."),
    )


_core_numbers()


def _yaml_reason(exc: yaml.MarkedYAMLError) -> str:
    mark = exc.problem_mark or exc.context_mark
    what = " ".join(str(part) for part in (exc.context, exc.problem) if part) or "syntax error"
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    return f"not valid YAML{where}: {what}"


def _typename(value: object) -> str:
    if value is None:
        return "null"
    names = {bool: "boolean", int: "integer", float: "number", str: "string"}
    if type(value) in names:
        return names[type(value)]
    if isinstance(value, Mapping):
        return "mapping"
    if isinstance(value, list | tuple):
        return "list"
    return type(value).__name__


def _got(value: object) -> str:
    try:
        text = repr(value)
    except ValueError:  # an integer too long to print
        text = "a number too long to show"
    if len(text) > 80:
        text = text[:77] + "..."
    return f"got {text} ({_typename(value)})"


def _format_size(size: int) -> str:
    for unit, factor in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if size >= factor and size % factor == 0:
            return f"{size // factor}{unit}"
    return f"{size}B"


def _jsonable(value: Any, depth: int = 0) -> Any:
    """Plain JSON data from YAML data (dates become ISO strings, cycles are cut)."""
    if depth > 20:
        return "..."
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v, depth + 1) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_jsonable(v, depth + 1) for v in value]
    return str(value)


def check_listen(key: str, value: object, example: str = "127.0.0.1:8080") -> str:
    """A host:port to bind (ConfigError naming ``key`` and what is accepted)."""
    return _Validator(None).listen(key, value, example)


class _Validator:
    """Turns one parsed mapping into a Config; knows the file for messages and paths."""

    def __init__(self, path: str | None) -> None:
        self.path = path
        try:
            base = Path(path).parent if path else Path.cwd()
            self.base_dir = Path(os.path.abspath(base))
        except (OSError, ValueError):
            self.base_dir = Path("/")

    # -- helpers ---------------------------------------------------------------------------

    def fail(self, key: str | None, message: str) -> NoReturn:
        raise ConfigError(message, path=self.path, key=key)

    def section(self, data: object, prefix: str, accepted: Sequence[str]) -> dict[str, Any]:
        """Check a mapping has only known string keys; None counts as empty."""
        if data is None:
            return {}
        if not isinstance(data, Mapping):
            what = f"expected a mapping with keys {', '.join(accepted)}"
            if not prefix:
                what = "the top level must be a mapping of configuration keys"
            self.fail(prefix or None, f"{what}, {_got(data)}")
        out: dict[str, Any] = {}
        for key, value in data.items():
            dotted = f"{prefix}.{key}" if prefix else str(key)
            if not isinstance(key, str):
                self.fail(dotted, f"keys must be strings, {_got(key)}")
            if key not in accepted:
                close = difflib.get_close_matches(key, accepted, n=1, cutoff=0.6)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                self.fail(dotted, f"unknown key {key!r}{hint} Accepted keys: {', '.join(accepted)}")
            out[key] = value
        return out

    def integer(self, key: str, value: object, minimum: int) -> int:
        """An integer from ``minimum`` up to the key's maximum in INT_RANGES."""
        low, high = INT_RANGES[key]
        minimum = max(minimum, low)
        accepted = f"accepted: {minimum} to {high}"
        if isinstance(value, bool) or not isinstance(value, int):
            self.fail(key, f"expected an integer >= {minimum}, {_got(value)}; {accepted}")
        if value < minimum:
            self.fail(key, f"must be >= {minimum}, {_got(value)}; {accepted}")
        if value > high:
            self.fail(key, f"must be <= {high}, {_got(value)}; {accepted}")
        return value

    def duration(self, key: str, value: object, *, positive: bool = False) -> float:
        """Seconds within the key's range in DURATION_RANGES."""
        low, high = DURATION_RANGES[key]
        accepted = f"accepted: {format_duration(low)} to {format_duration(high)}"
        if isinstance(value, float) and not math.isfinite(value):
            self.fail(key, f"must be finite, {_got(value)}; {accepted}")
        try:
            seconds = parse_duration(value, what=key)
        except ValueError as exc:
            self.fail(key, f"{str(exc).removeprefix(f'{key}: ')}; {accepted}")
        if not math.isfinite(seconds):
            self.fail(key, f"must be finite, {_got(value)}; {accepted}")
        if positive and seconds <= 0:
            self.fail(key, f"must be more than 0 seconds, {_got(value)}; {accepted}")
        if seconds < low:
            self.fail(key, f"must be at least {format_duration(low)}, {_got(value)}; {accepted}")
        if seconds > high:
            self.fail(key, f"must be at most {format_duration(high)}, {_got(value)}; {accepted}")
        return seconds

    def string(self, key: str, value: object, example: str = "") -> str:
        if not isinstance(value, str):
            hint = f" like {example}" if example else ""
            self.fail(key, f"expected a string{hint}, {_got(value)}")
        if "\0" in value:
            self.fail(key, "must not contain a NUL character")
        return value

    def choice(self, key: str, value: object, choices: Sequence[str]) -> str:
        allowed = "|".join(choices)
        if not isinstance(value, str) or value.strip().lower() not in choices:
            self.fail(key, f"expected one of {allowed}, {_got(value)}")
        return value.strip().lower()

    def string_list(self, key: str, value: object, example: str) -> list[str]:
        if not isinstance(value, list | tuple):
            self.fail(key, f"expected a list of strings like {example}, {_got(value)}")
        out = []
        for i, item in enumerate(value):
            if not isinstance(item, str):
                self.fail(f"{key}[{i}]", f"expected a string, {_got(item)}")
            out.append(item)
        return out

    def file_path(self, key: str, value: object) -> str:
        """An absolute path; relative ones are relative to the configuration file."""
        text = self.string(key, value, "/var/run/taskschedd.pid")
        if not text.strip():
            self.fail(key, "must not be empty (use null for the default)")
        try:
            return str((self.base_dir / Path(text).expanduser()).resolve())
        except (OSError, RuntimeError, ValueError) as exc:
            self.fail(key, f"cannot resolve the path {text!r}: {exc}")

    # -- keys ------------------------------------------------------------------------------

    def config(self, data: object) -> Config:
        top = self.section(data, "", [f.name for f in dataclasses.fields(Config)])
        kw: dict[str, Any] = {}

        kw["store"] = self.store(top.get("store", DEFAULT_URL))
        if top.get("store_password_file") is not None:
            kw["store_password_file"] = self.file_path(
                "store_password_file", top["store_password_file"]
            )
            kw["store"] = self.store_with_password(kw["store"], kw["store_password_file"])
        if "node" in top:
            node = self.string("node", top["node"], "web-1")
            if not _NODE_RE.fullmatch(node):
                self.fail(
                    "node", f"expected 1-128 characters of A-Z a-z 0-9 . _ @ : -, {_got(node)}"
                )
            kw["node"] = node
        kw["pm"] = self.choice("pm", top.get("pm", "dynamic"), ("dynamic", "static", "ondemand"))
        kw.update(self.children(top, kw["pm"]))
        for key, (low, _) in DURATION_RANGES.items():
            if key in top:
                kw[key] = self.duration(key, top[key], positive=low > 0)
        if "queues" in top:
            kw["queues"] = self.queues(top["queues"])
        if "allowed_modules" in top:
            kw["allowed_modules"] = self.allowed_modules(top["allowed_modules"])
        if top.get("setup_hook") is not None:
            hook = self.string("setup_hook", top["setup_hook"], "myapp.jobs:setup")
            if not _HOOK_RE.fullmatch(hook):
                self.fail(
                    "setup_hook", f"expected module:function like myapp.jobs:setup, {_got(hook)}"
                )
            kw["setup_hook"] = hook
        if "max_jobs_per_worker" in top:
            kw["max_jobs_per_worker"] = self.integer(
                "max_jobs_per_worker", top["max_jobs_per_worker"], 0
            )
        if "claim_ahead" in top:
            kw["claim_ahead"] = self.integer("claim_ahead", top["claim_ahead"], 1)
        if "max_worker_memory" in top:
            size = self.size("max_worker_memory", top["max_worker_memory"])
            kw["max_worker_memory"] = math.ceil(size / 2**20)
        if "max_job_memory" in top:
            size = self.size("max_job_memory", top["max_job_memory"])
            kw["max_job_memory"] = math.ceil(size / 2**20)
        if "max_extra_children" in top:
            kw["max_extra_children"] = self.integer(
                "max_extra_children", top["max_extra_children"], 0
            )
        if "max_data_size" in top:
            kw["max_data_size"] = self.size("max_data_size", top["max_data_size"])
        if "job_defaults" in top:
            kw["job_defaults"] = self.job_defaults(top["job_defaults"])
        kw["logging"] = self.logging(top.get("logging"))
        if top.get("pidfile") is not None:
            kw["pidfile"] = self.file_path("pidfile", top["pidfile"])
        if top.get("user") is not None:
            kw["user"] = self.account("user", top["user"])
        if top.get("group") is not None:
            kw["group"] = self.account("group", top["group"])
        kw["metrics"] = self.metrics(top.get("metrics"))
        kw["mongodb"] = self.mongodb(top.get("mongodb"), kw["store"])
        if top.get("limits") is not None:
            kw["limits"] = self.limits(top["limits"])
        kw["dashboard"] = self.dashboard(top.get("dashboard"))
        return Config(**kw)

    def store(self, value: object) -> str:
        if isinstance(value, os.PathLike):
            value = os.fspath(value)
        url = self.string("store", value, DEFAULT_URL)
        if is_mongodb(url):
            self.mongodb_url(url)
            return url
        if looks_like_mongodb(url):
            self.fail(
                "store",
                "looks like a MongoDB URL but does not start with mongodb:// or "
                "mongodb+srv:// (not repeated here: it may hold a password)",
            )
        if url.startswith("sqlite://"):
            raw = url.removeprefix("sqlite://")
        elif "://" in url or _SCHEME_RE.match(url):
            scheme = url.split(":", 1)[0]
            self.fail("store", f"unsupported store {scheme!r}; accepted: {STORE_FORMS}")
        else:
            raw = url
        if not raw.strip():
            self.fail("store", f"no database path given; accepted: {STORE_FORMS}")
        # Absolute and normalized, but no link resolved: a link put where the file should
        # be must reach the store's O_NOFOLLOW open, which refuses it; and a node must
        # keep comparing the path as configured with the file it opened, so that a
        # directory link re-pointed to another copy of the store is noticed.
        given = Path(raw).expanduser()
        if not str(given).strip():
            self.fail("store", f"no database path given; accepted: {STORE_FORMS}")
        path = os.path.normpath(os.path.join(self.base_dir, given))
        try:
            is_dir = Path(path).is_dir()
        except OSError:
            is_dir = False
        if is_dir:
            self.fail("store", f"{path} is a directory; give the path of the database file")
        return "sqlite://" + path

    def store_with_password(self, url: str, path: str) -> str:
        """The MongoDB URL with the password read from ``path`` (first line, percent-encoded
        here); the URL names the user and no password."""
        key = "store_password_file"
        if not is_mongodb(url):
            self.fail(key, "applies only to a mongodb:// or mongodb+srv:// store")
        scheme, rest = url.split("://", 1)
        authority = re.split(r"[/?#]", rest, maxsplit=1)[0]
        user, at, _ = authority.rpartition("@")
        if not at or not user:
            self.fail(key, "the store URL must name the user: mongodb://USER@HOST/DB")
        if ":" in user:
            self.fail(key, "the store URL already holds a password; give it in one place")
        try:
            raw = read_regular(path, 4096)
        except OSError as exc:
            self.fail(key, f"cannot read {path}: {exc.strerror or exc}")
        try:
            lines = raw.decode("utf-8").splitlines()
        except UnicodeDecodeError:
            self.fail(key, f"{path} is not UTF-8 text")
        password = lines[0] if lines else ""
        if len(raw) > 4096 or not password:
            self.fail(key, f"{path} must hold the password on its first line (at most 4 KiB)")
        remember_secret(password)
        return f"{scheme}://{user}:{quote(password, safe='')}@{rest[len(user) + 1 :]}"

    def mongodb_url(self, url: str) -> None:
        rest = url.split("://", 1)[1]
        authority = re.split(r"[/?#]", rest, maxsplit=1)[0]
        password = url_password(url)
        if password is not None:
            remember_secret(password)
        userinfo = authority.rpartition("@")[0]
        if "@" not in authority and "@" in rest:
            # user:pa/ss@host: the '/' (or '?', '#') ended the authority inside the password.
            _, colon, port = authority.partition(":")
            if colon and not port.split(",")[0].isdigit():
                userinfo = rest[: rest.rfind("@")]
        if re.search(r"[@/?#\s]", userinfo) or userinfo.count(":") > 1:
            self.fail(
                "store",
                f"the user name or password in the MongoDB URL {redact_url(url)!r} holds a "
                "character that must be percent-encoded (@ : / ? # % or a space: %40 %3A %2F "
                "%3F %23 %25 %20), or put the password in store_password_file",
            )
        hosts = authority.rpartition("@")[2]
        if not hosts or any(not h for h in hosts.split(",")):
            self.fail("store", f"no host in MongoDB URL {redact_url(url)!r}")
        if url.startswith("mongodb+srv://") and ("," in hosts or ":" in hosts):
            self.fail("store", "a mongodb+srv:// URL takes exactly one host name and no port")

    def children(self, top: dict[str, Any], pm: str) -> dict[str, int]:
        lowest = 1 if pm == "static" else 0
        minimum = self.integer("min_children", top.get("min_children", 1), lowest)
        if "max_children" in top:
            maximum = self.integer("max_children", top["max_children"], 1)
            if minimum > maximum:
                self.fail(
                    "min_children",
                    f"min_children ({minimum}) must be <= max_children ({maximum})",
                )
        else:  # the CPU count, but never below an explicit min_children
            maximum = max(_default_max_children(), minimum, 1)
        return {"min_children": minimum, "max_children": maximum}

    def queues(self, value: object) -> list[str]:
        names = self.string_list("queues", value, "[critical, default]")
        if not names:
            self.fail("queues", "must name at least one queue")
        seen: set[str] = set()
        for i, name in enumerate(names):
            if not _QUEUE_RE.fullmatch(name):
                self.fail(
                    f"queues[{i}]", f"expected 1-64 characters of A-Z a-z 0-9 . _ -, {_got(name)}"
                )
            if name in seen:
                self.fail(f"queues[{i}]", f"queue {name!r} is listed twice")
            seen.add(name)
        return names

    def allowed_modules(self, value: object) -> list[str]:
        entries = self.string_list("allowed_modules", value, "[myapp.jobs]")
        for i, entry in enumerate(entries):
            if entry == "*":
                continue
            if entry.endswith(".*") and _DOTTED_RE.fullmatch(entry[:-2]):
                self.fail(
                    f"allowed_modules[{i}]",
                    f"write {entry[:-2]!r}: an entry already allows its submodules",
                )
            if not _DOTTED_RE.fullmatch(entry):
                self.fail(
                    f"allowed_modules[{i}]",
                    f"expected a dotted module name like myapp.jobs (or '*'), {_got(entry)}",
                )
        return entries

    def size(self, key: str, value: object) -> int:
        """Bytes from megabytes as an integer or a size like 512KB / 1.5GiB, within the
        key's range in INT_RANGES (max_worker_memory's and max_job_memory's are in megabytes)."""
        low, high = INT_RANGES[key]
        unit_of_range = 2**20 if key in ("max_worker_memory", "max_job_memory") else 1
        low_b, high_b = low * unit_of_range, high * unit_of_range
        accepted = f"accepted: {_format_size(low_b)} to {_format_size(high_b)}"
        size = size_bytes(value) if not isinstance(value, float) else None
        if size is None:
            self.fail(
                key,
                f"expected megabytes as an integer or a size like 512MB or 1GB (or 64KiB), "
                f"{_got(value)}; {accepted}",
            )
        if size < 0:
            self.fail(key, f"must be >= 0, {_got(value)}; {accepted}")
        if size < low_b:
            self.fail(key, f"must be at least {_format_size(low_b)}, {_got(value)}; {accepted}")
        if not size <= high_b:  # inf and NaN included
            self.fail(key, f"must be at most {_format_size(high_b)}, {_got(value)}; {accepted}")
        return math.ceil(size)

    def job_defaults(self, value: object) -> dict[str, Any]:
        options = self.section(value, "job_defaults", JOB_DEFAULT_KEYS + DEFAULT_ALIASES)
        try:
            Defaults.parse(options)  # the checks of Scheduler(**defaults)
        except (ValueError, TypeError) as exc:
            self.fail("job_defaults", str(exc))
        return options

    def logging(self, value: object) -> LoggingConfig:
        data = self.section(value, "logging", ("format", "level", "file"))
        file = data.get("file")
        return LoggingConfig(
            format=self.choice(
                "logging.format", data.get("format", "console"), ("json", "console")
            ),
            level=self.choice(
                "logging.level", data.get("level", "info"), ("debug", "info", "warning", "error")
            ),
            file=None if file is None else self.file_path("logging.file", file),
        )

    def account(self, key: str, value: object) -> str:
        """A user or group name (or numeric id) that exists on this host."""
        if isinstance(value, bool) or not isinstance(value, str | int):
            self.fail(key, f"expected a {key} name, {_got(value)}")
        db_name, by_name, by_id = (
            ("user", pwd.getpwnam, pwd.getpwuid)
            if key == "user"
            else ("group", grp.getgrnam, grp.getgrgid)
        )
        try:
            if isinstance(value, str):
                if "\0" in value or not value:
                    raise KeyError(value)
                try:
                    entry: Any = by_name(value)
                except KeyError:
                    if not value.isdigit():
                        raise
                    entry = by_id(int(value))
            else:
                entry = by_id(value)
        except (KeyError, ValueError, OverflowError):
            self.fail(key, f"no {db_name} {value!r} on this host")
        return str(entry[0])

    def metrics(self, value: object) -> MetricsConfig:
        data = self.section(value, "metrics", ("listen",))
        listen = data.get("listen")
        if listen is None:
            return MetricsConfig()
        return MetricsConfig(listen=self.listen("metrics.listen", listen, "127.0.0.1:9464"))

    def listen(self, key: str, listen: object, example: str) -> str:
        """host:port to bind: an IPv4 or [IPv6] address or a host name, port 1-65535."""
        text = self.string(key, listen, example)
        match = _LISTEN_RE.fullmatch(text)
        port = example.rpartition(":")[2]
        bad = f"expected host:port like {example} or [::1]:{port}, {_got(listen)}"
        if not match or not 1 <= int(match["port"]) <= 65535:
            self.fail(key, bad)
        if match["v6"] is not None:
            try:
                ipaddress.IPv6Address(match["v6"])
            except ValueError:
                self.fail(key, bad)
        else:
            host = match["host"]
            if re.fullmatch(r"[\d.]+", host):
                try:
                    ipaddress.IPv4Address(host)
                except ValueError:
                    self.fail(key, bad)
            elif len(host) > 253 or not all(_HOSTNAME_RE.fullmatch(p) for p in host.split(".")):
                self.fail(key, bad)
        return text

    def dashboard(self, value: object) -> DashboardConfig:
        keys = ("listen", "read_only", "token_file", "user", "password_file")
        data = self.section(value, "dashboard", keys)
        kw: dict[str, Any] = {}
        if data.get("listen") is not None:
            kw["listen"] = self.listen("dashboard.listen", data["listen"], "127.0.0.1:8080")
        if data.get("read_only") is not None:
            if not isinstance(data["read_only"], bool):
                self.fail(
                    "dashboard.read_only", f"expected true or false, {_got(data['read_only'])}"
                )
            kw["read_only"] = data["read_only"]
        for key in ("token_file", "password_file"):
            if data.get(key) is not None:
                kw[key] = self.file_path(f"dashboard.{key}", data[key])
        if data.get("user") is not None:
            user = self.string("dashboard.user", data["user"], "ops")
            if not user or ":" in user or not user.isprintable():
                self.fail("dashboard.user", f"expected a user name without ':', {_got(user)}")
            kw["user"] = user
        if ("user" in kw) != ("password_file" in kw):
            self.fail("dashboard", "give both user and password_file for HTTP basic auth")
        return DashboardConfig(**kw)

    def limits(self, value: object) -> dict[str, LimitSpec]:
        """name -> {max_running: N, rate: COUNT/PERIOD}, each checked as
        ``taskschedctl limits set`` checks it."""
        example = "{reports: {max_running: 2}, mail: {rate: 100/1m}}"
        if not isinstance(value, Mapping):
            self.fail("limits", f"expected a mapping of limit names like {example}, {_got(value)}")
        out: dict[str, LimitSpec] = {}
        for name, given in value.items():
            key = f"limits.{name}"
            if not isinstance(name, str):
                self.fail(key, f"limit names must be strings, {_got(name)}")
            try:
                out[name] = LimitSpec.parse(name, given)
            except OptionError as exc:
                # The key names the limit already; the message says what is accepted.
                reason = str(exc).removeprefix(f"limit {name!r}: ").removeprefix("limit name: ")
                if reason.startswith("give max_running"):
                    reason = f"give max_running, rate or both, like {example}"
                self.fail(key, reason)
        return out

    def mongodb(self, value: object, store: str) -> MongoDBConfig:
        keys = [f.name for f in dataclasses.fields(MongoDBConfig)]
        data = self.section(value, "mongodb", keys)
        defaults = MongoDBConfig()
        database = _url_database(store) or DEFAULT_MONGODB_DATABASE
        if "database" in data:
            database = self.string("mongodb.database", data["database"], "taskscheduler")
        if not database or len(database) > 63 or _BAD_DB_CHARS & set(database):
            self.fail(
                "mongodb.database",
                f'expected 1-63 characters without / \\ . space " $, {_got(database)}',
            )
        names = {}
        for key in ("jobs_collection", "events_collection", "nodes_collection"):
            name = self.string(f"mongodb.{key}", data.get(key, getattr(defaults, key)))
            if not name or "$" in name or name.startswith("system."):
                self.fail(
                    f"mongodb.{key}",
                    f"expected a collection name without '$' not starting with 'system.', "
                    f"{_got(name)}",
                )
            names[key] = name
        concern = data.get("write_concern", "majority")
        low, high = INT_RANGES["mongodb.write_concern"]
        if concern != "majority" and (
            isinstance(concern, bool) or not isinstance(concern, int) or not low <= concern <= high
        ):
            self.fail(
                "mongodb.write_concern",
                f"expected 'majority' or a number of nodes from {low} to {high}, {_got(concern)}",
            )
        streams = data.get("change_streams", "auto")
        if isinstance(streams, bool):  # YAML 1.1 reads a bare on/off as a boolean
            streams = "on" if streams else "off"
        return MongoDBConfig(
            database=database,
            write_concern=concern,
            change_streams=self.choice("mongodb.change_streams", streams, ("auto", "on", "off")),
            **names,
        )


def _url_database(store: str) -> str | None:
    """The database named in a MongoDB URL path, if any."""
    if not is_mongodb(store):
        return None
    rest = store.split("://", 1)[1]
    _, slash, tail = rest.partition("/")
    if not slash:
        return None
    name = unquote(re.split(r"[?#]", tail, maxsplit=1)[0])
    return name or None


def open_configured(config: Config, *, create: bool = False, daemon: bool = False) -> Store:
    """The store a node configuration names, with its options. ``daemon``: only the
    daemon's user (``config.user``, this process's) or root may own a SQLite store."""
    from taskschedd.store import open_store

    owners = None
    if daemon:
        from taskschedd.store.sqlitefiles import daemon_owners

        owners = daemon_owners(config.user)
    return open_store(config.store, create=create, owners=owners, **config.store_options())
