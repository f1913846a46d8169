"""Configuration: defaults, every key good and bad, YAML errors, paths, redaction, fuzzing."""

from __future__ import annotations

import contextlib
import dataclasses
import grp
import json
import os
import pwd
import tempfile
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from taskschedd import config
from taskschedd.config import Config, ConfigError, from_mapping, load, redact_url
from taskschedd.loader import is_allowed


def write(tmp_path: Path, text: str, name: str = "taskschedd.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def sqlite_path(cfg: Config) -> Path | None:
    """The SQLite database file a configuration names, None for MongoDB."""
    return Path(cfg.store.removeprefix("sqlite://")) if cfg.store_kind == "sqlite" else None


def load_error(tmp_path: Path, data: dict[str, Any]) -> ConfigError:
    """Load *data* from a real file and return the error (which must name the file)."""
    path = write(tmp_path, yaml.safe_dump(data))
    with pytest.raises(ConfigError) as info:
        load(path)
    err = info.value
    assert err.path == str(path)
    assert str(err).startswith(f"{path}: ")
    assert err.exit_code == 78
    return err


# -- defaults ----------------------------------------------------------------------------------


def test_empty_file_is_all_defaults(tmp_path: Path) -> None:
    cfg = load(write(tmp_path, "# nothing but a comment\n"))
    assert cfg.store == "sqlite:///var/lib/taskschedd/taskschedd.db"
    assert cfg.store_kind == "sqlite"
    assert sqlite_path(cfg) == Path("/var/lib/taskschedd/taskschedd.db")
    assert cfg.node
    assert cfg.pm == "dynamic"
    assert cfg.min_children == 1
    assert cfg.max_children == (os.cpu_count() or 1)
    assert cfg.idle_timeout == 60
    assert cfg.queues == ["default"]
    assert (cfg.lease, cfg.shutdown_grace, cfg.kill_grace) == (30, 30, 5)
    assert (cfg.reap_interval, cfg.poll_interval, cfg.heartbeat_interval) == (10, 1, 5)
    assert cfg.allowed_modules == ["taskschedd.examples"]
    assert cfg.setup_hook is None
    assert (cfg.max_jobs_per_worker, cfg.max_worker_memory) == (0, 0)
    assert cfg.job_defaults == {}
    assert cfg.retention == 7 * 86400
    assert (cfg.logging.format, cfg.logging.level, cfg.logging.file) == ("console", "info", None)
    assert (cfg.pidfile, cfg.user, cfg.group) == (None, None, None)
    assert cfg.metrics.listen is None and cfg.metrics.address is None
    assert cfg.mongodb.database == "taskscheduler"
    assert cfg.mongodb.jobs_collection == "taskscheduler.jobs"
    assert cfg.mongodb.events_collection == "taskscheduler.events"
    assert cfg.mongodb.nodes_collection == "taskscheduler.nodes"
    assert cfg.mongodb.write_concern == "majority"
    assert cfg.mongodb.change_streams == "auto"


def test_from_mapping_defaults_match_dataclass_defaults() -> None:
    assert from_mapping({}) == Config()


def test_config_is_frozen() -> None:
    cfg = from_mapping({})
    with pytest.raises(AttributeError):
        cfg.lease = 1  # type: ignore[misc]


def test_default_config_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TASKSCHED_CONFIG", raising=False)
    assert config.default_config_path() == "/etc/taskschedd/taskschedd.yaml"
    monkeypatch.setenv("TASKSCHED_CONFIG", "/srv/ts.yaml")
    assert config.default_config_path() == "/srv/ts.yaml"


# -- good values -------------------------------------------------------------------------------


def test_full_config(tmp_path: Path) -> None:
    user = pwd.getpwuid(os.getuid()).pw_name
    group = grp.getgrgid(os.getgid()).gr_name
    text = f"""
store: mongodb://app:s3cret@db1:27017,db2:27017/jobsdb?replicaSet=rs0
node: web-1.example.com
pm: static
min_children: 2
max_children: 4
idle_timeout: 2m
queues: [critical, default, bulk.low]
lease: 1m
shutdown_grace: 45s
kill_grace: 2
reap_interval: 5s
poll_interval: 250ms
heartbeat_interval: 3
allowed_modules: [myapp.jobs, other]
setup_hook: myapp.jobs:setup
max_jobs_per_worker: 100
max_worker_memory: 1GB
job_defaults: {{retry: 3, timeout: 10m}}
retention: 0
logging: {{format: JSON, level: DEBUG, file: logs/ts.log}}
pidfile: run/ts.pid
user: {user}
group: {group}
metrics: {{listen: "127.0.0.1:9464"}}
mongodb:
  jobs_collection: j
  events_collection: e
  nodes_collection: n
  write_concern: 1
  change_streams: off
"""
    cfg = load(write(tmp_path, text))
    assert cfg.store_kind == "mongodb" and sqlite_path(cfg) is None
    assert cfg.mongodb.database == "jobsdb"
    assert cfg.node == "web-1.example.com"
    assert (cfg.pm, cfg.min_children, cfg.max_children) == ("static", 2, 4)
    assert cfg.idle_timeout == 120 and cfg.lease == 60 and cfg.poll_interval == 0.25
    assert cfg.queues == ["critical", "default", "bulk.low"]
    assert cfg.allowed_modules == ["myapp.jobs", "other"]
    assert cfg.setup_hook == "myapp.jobs:setup"
    assert cfg.max_jobs_per_worker == 100 and cfg.max_worker_memory == 1024
    assert cfg.job_defaults == {"retry": 3, "timeout": "10m"}
    assert cfg.retention == 0
    assert cfg.logging.format == "json" and cfg.logging.level == "debug"
    assert cfg.logging.file == str(tmp_path.resolve() / "logs" / "ts.log")
    assert cfg.pidfile == str(tmp_path.resolve() / "run" / "ts.pid")
    assert (cfg.user, cfg.group) == (user, group)
    assert cfg.metrics.address == ("127.0.0.1", 9464)
    assert cfg.mongodb.write_concern == 1
    assert cfg.mongodb.change_streams == "off"  # YAML 1.1 reads off as False
    assert (cfg.mongodb.jobs_collection, cfg.mongodb.nodes_collection) == ("j", "n")


@pytest.mark.parametrize(
    ("store", "kind"),
    [
        ("sqlite:///abs/jobs.db", "sqlite:///abs/jobs.db"),
        ("/abs/plain.db", "sqlite:///abs/plain.db"),
        ("mongodb://localhost", "mongodb://localhost"),
        ("mongodb+srv://cluster.example.com/db", "mongodb+srv://cluster.example.com/db"),
    ],
)
def test_store_forms(store: str, kind: str) -> None:
    assert from_mapping({"store": store}).store == kind


def test_relative_sqlite_resolves_against_config_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    etc = tmp_path / "etc"
    etc.mkdir()
    monkeypatch.chdir(tmp_path)  # must not matter
    cfg = load(write(etc, "store: sqlite://data/../data/jobs.db\n"))
    assert sqlite_path(cfg) == etc.resolve() / "data" / "jobs.db"
    assert cfg.store == f"sqlite://{etc.resolve()}/data/jobs.db"
    bare = load(write(etc, "store: var/bare.db\n"))
    assert sqlite_path(bare) == etc.resolve() / "var/bare.db"


def test_relative_sqlite_without_file_uses_cwd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert sqlite_path(from_mapping({"store": "sqlite://x.db"})) == tmp_path.resolve() / "x.db"


def test_mongodb_database_default_and_override() -> None:
    assert from_mapping({"store": "mongodb://h/"}).mongodb.database == "taskscheduler"
    assert from_mapping({"store": "mongodb://h/app?w=1"}).mongodb.database == "app"
    cfg = from_mapping({"store": "mongodb://h/app", "mongodb": {"database": "other"}})
    assert cfg.mongodb.database == "other"


@pytest.mark.parametrize(
    ("value", "mb"), [(0, 0), (256, 256), ("512MB", 512), ("512", 512), ("1GB", 1024),
                      ("1.5GiB", 1536), ("2g", 2048), ("1 TB", 1024 * 1024)]
)  # fmt: skip
def test_max_worker_memory(value: object, mb: int) -> None:
    assert from_mapping({"max_worker_memory": value}).max_worker_memory == mb


def test_max_children_default_never_below_min_children() -> None:
    cfg = from_mapping({"min_children": 500})
    assert cfg.max_children == 500


def test_listen_ipv6_and_hostname() -> None:
    assert from_mapping({"metrics": {"listen": "[::1]:9464"}}).metrics.address == ("::1", 9464)
    cfg = from_mapping({"metrics": {"listen": "metrics.local:80"}})
    assert cfg.metrics.address == ("metrics.local", 80)


def test_allowed_modules_star_and_prefix() -> None:
    def allowed(modules: list[str], module: str) -> bool:
        return is_allowed(module, from_mapping({"allowed_modules": modules}).allowed_modules)

    assert allowed(["myapp.jobs"], "myapp.jobs") and allowed(["myapp.jobs"], "myapp.jobs.mail")
    assert not allowed(["myapp.jobs"], "myapp.jobsx") and not allowed(["myapp.jobs"], "myapp")
    assert allowed(["*"], "os")
    assert not allowed([], "taskschedd.examples")


def test_job_defaults_are_checked_as_scheduler_defaults() -> None:
    assert from_mapping({"job_defaults": {"retry": 2}}).job_defaults == {"retry": 2}
    with pytest.raises(ConfigError) as info:
        from_mapping({"job_defaults": {"retry": -2}}, path="/x.yaml")
    assert info.value.key == "job_defaults"
    assert str(info.value) == (
        "/x.yaml: job_defaults: option 'retry': expected an integer >= -1 (-1 = endless), got -2"
    )


# -- bad values --------------------------------------------------------------------------------

BAD: list[tuple[dict[str, Any], str, str]] = [
    ({"store": "redis://localhost"}, "store", "unsupported store 'redis'"),
    ({"store": "postgres:x"}, "store", "mongodb+srv://"),
    ({"store": 5}, "store", "expected a string"),
    ({"store": "sqlite://"}, "store", "no database path"),
    ({"store": "mongodb://"}, "store", "no host"),
    ({"store": "mongodb+srv://a,b/db"}, "store", "exactly one host"),
    ({"node": ""}, "node", "1-128 characters"),
    ({"node": "a b"}, "node", "got 'a b'"),
    ({"node": "x" * 129}, "node", "1-128 characters"),
    ({"node": 12}, "node", "expected a string"),
    ({"pm": "fast"}, "pm", "expected one of dynamic|static|ondemand, got 'fast'"),
    ({"min_children": -1}, "min_children", "must be >= 0, got -1"),
    ({"min_children": "2"}, "min_children", "expected an integer >= 0, got '2' (string)"),
    ({"min_children": True}, "min_children", "got True (boolean)"),
    ({"max_children": 0}, "max_children", "must be >= 1"),
    ({"max_children": 2.5}, "max_children", "got 2.5 (number)"),
    ({"min_children": 5, "max_children": 2}, "min_children", "min_children (5) must be <= max_children (2)"),
    ({"pm": "static", "min_children": 0}, "min_children", "must be >= 1"),
    ({"idle_timeout": "soon"}, "idle_timeout", "expected a number of seconds or a duration"),
    ({"idle_timeout": -1}, "idle_timeout", "must not be negative"),
    ({"lease": 0.5}, "lease", "must be at least 1s, got 0.5"),
    ({"lease": float("inf")}, "lease", "must be finite"),
    ({"shutdown_grace": [1]}, "shutdown_grace", "got [1]"),
    ({"kill_grace": "5x"}, "kill_grace", "got '5x'"),
    ({"reap_interval": 0}, "reap_interval", "more than 0"),
    ({"poll_interval": 0}, "poll_interval", "more than 0"),
    ({"heartbeat_interval": "0s"}, "heartbeat_interval", "more than 0"),
    ({"retention": "-1d"}, "retention", "got '-1d'"),
    ({"queues": []}, "queues", "at least one queue"),
    ({"queues": "default"}, "queues", "expected a list of strings"),
    ({"queues": ["a", "a"]}, "queues[1]", "listed twice"),
    ({"queues": ["a b"]}, "queues[0]", "1-64 characters"),
    ({"queues": [1]}, "queues[0]", "expected a string, got 1 (integer)"),
    ({"allowed_modules": "myapp"}, "allowed_modules", "expected a list of strings"),
    ({"allowed_modules": ["my-app"]}, "allowed_modules[0]", "dotted module name"),
    ({"allowed_modules": ["myapp.*"]}, "allowed_modules[0]", "write 'myapp'"),
    ({"setup_hook": "myapp.setup"}, "setup_hook", "module:function"),
    ({"setup_hook": 3}, "setup_hook", "expected a string"),
    ({"max_jobs_per_worker": -1}, "max_jobs_per_worker", "must be >= 0"),
    ({"max_worker_memory": "lots"}, "max_worker_memory", "like 512MB or 1GB"),
    ({"max_worker_memory": -5}, "max_worker_memory", "must be >= 0"),
    ({"max_worker_memory": 1.5}, "max_worker_memory", "got 1.5"),
    ({"job_defaults": ["retry"]}, "job_defaults", "expected a mapping"),
    ({"job_defaults": {"retries": 3}}, "job_defaults.retries", "did you mean 'retry'?"),
    ({"logging": "json"}, "logging", "expected a mapping with keys format, level, file"),
    ({"logging": {"format": "xml"}}, "logging.format", "expected one of json|console"),
    ({"logging": {"level": "trace"}}, "logging.level", "debug|info|warning|error"),
    ({"logging": {"file": ""}}, "logging.file", "must not be empty"),
    ({"logging": {"file": 3}}, "logging.file", "expected a string"),
    ({"logging": {"lvl": "info"}}, "logging.lvl", "did you mean 'level'?"),
    ({"pidfile": ["x"]}, "pidfile", "expected a string"),
    ({"user": "no-such-user-xyz"}, "user", "no user 'no-such-user-xyz' on this host"),
    ({"user": 4000000000}, "user", "no user"),
    ({"group": "no-such-group-xyz"}, "group", "no group 'no-such-group-xyz'"),
    ({"group": [0]}, "group", "expected a group name"),
    ({"metrics": {"listen": "9464"}}, "metrics.listen", "expected host:port"),
    ({"metrics": {"listen": "localhost:0"}}, "metrics.listen", "expected host:port"),
    ({"metrics": {"listen": "localhost:70000"}}, "metrics.listen", "expected host:port"),
    ({"metrics": {"listen": "300.1.1.1:80"}}, "metrics.listen", "expected host:port"),
    ({"metrics": {"listen": "[zz]:80"}}, "metrics.listen", "expected host:port"),
    ({"metrics": {"port": 1}}, "metrics.port", "Accepted keys: listen"),
    ({"mongodb": {"database": "a.b"}}, "mongodb.database", "1-63 characters"),
    ({"mongodb": {"jobs_collection": ""}}, "mongodb.jobs_collection", "collection name"),
    ({"mongodb": {"nodes_collection": "system.x"}}, "mongodb.nodes_collection", "system."),
    ({"mongodb": {"write_concern": "all"}}, "mongodb.write_concern", "expected 'majority' or"),
    ({"mongodb": {"write_concern": -1}}, "mongodb.write_concern", "got -1"),
    ({"mongodb": {"change_streams": "maybe"}}, "mongodb.change_streams", "auto|on|off"),
    ({"mongodb": {"writeconcern": 1}}, "mongodb.writeconcern", "did you mean 'write_concern'?"),
]  # fmt: skip


@pytest.mark.parametrize(("data", "key", "fragment"), BAD, ids=[b[1] for b in BAD])
def test_bad_value(tmp_path: Path, data: dict[str, Any], key: str, fragment: str) -> None:
    err = load_error(tmp_path, data)
    assert err.key == key
    assert fragment in err.reason
    assert f": {key}: " in str(err)


def test_unknown_key_suggests_and_lists(tmp_path: Path) -> None:
    err = load_error(tmp_path, {"min_chidren": 2})
    assert err.key == "min_chidren"
    assert "unknown key 'min_chidren'; did you mean 'min_children'?" in err.reason
    assert "Accepted keys: store, node, pm, min_children" in err.reason


def test_unknown_key_without_close_match(tmp_path: Path) -> None:
    err = load_error(tmp_path, {"zzzzzz": 1})
    assert "did you mean" not in err.reason and "Accepted keys:" in err.reason


def test_non_string_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="keys must be strings, got 1 \\(integer\\)"):
        load(write(tmp_path, "1: x\n"))


# -- the file itself ---------------------------------------------------------------------------


def test_yaml_syntax_error_has_line_number(tmp_path: Path) -> None:
    path = write(tmp_path, "store: /x.db\nqueues: [a, b\nlease: 3\n")
    with pytest.raises(ConfigError) as info:
        load(path)
    assert str(info.value).startswith(f"{path}: not valid YAML at line 3")


def test_yaml_bad_indentation_line_number(tmp_path: Path) -> None:
    path = write(tmp_path, "logging:\n  format: json\n level: info\n")
    with pytest.raises(ConfigError, match=r"not valid YAML at line 3"):
        load(path)


def test_duplicate_key_is_an_error(tmp_path: Path) -> None:
    path = write(tmp_path, "lease: 10\nqueues: [a]\nlease: 20\n")
    with pytest.raises(ConfigError) as info:
        load(path)
    assert "line 3" in str(info.value) and "duplicate key 'lease' (first given at line 1)" in str(
        info.value
    )


def test_yaml_merge_keys_still_work(tmp_path: Path) -> None:
    text = "x-base: &b {format: json}\n"
    path = write(tmp_path, text + "logging: {<<: *b, format: console}\n")
    with pytest.raises(ConfigError, match="unknown key 'x-base'"):
        load(path)  # merge is fine, the anchor host key is unknown
    path = write(tmp_path, "logging:\n  <<: {format: json, level: debug}\n  level: error\n")
    cfg = load(path)
    assert (cfg.logging.format, cfg.logging.level) == ("json", "error")


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as info:
        load(path)
    assert (
        str(info.value) == f"{path}: cannot read the configuration file: No such file or directory"
    )


def test_directory_instead_of_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read the configuration file: it is a directory"):
        load(tmp_path)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_unreadable_file(tmp_path: Path) -> None:
    path = write(tmp_path, "lease: 3\n")
    path.chmod(0)
    with pytest.raises(ConfigError, match="Permission denied"):
        load(path)


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "bin.yaml"
    path.write_bytes(b"node: \xff\xfe\n")
    with pytest.raises(ConfigError, match="not UTF-8 text"):
        load(path)


@pytest.mark.parametrize("text", ["- a\n- b\n", "just a string\n", "42\n"])
def test_top_level_not_a_mapping(tmp_path: Path, text: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load(path)
    assert "top level must be a mapping" in str(info.value)
    assert str(info.value).startswith(str(path))


def test_store_pointing_to_directory(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="is a directory"):
        from_mapping({"store": str(tmp_path)})


def test_load_writes_nothing(tmp_path: Path) -> None:
    path = write(tmp_path, "store: sqlite://sub/dir/jobs.db\nlogging: {file: logs/x.log}\n")
    load(path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taskschedd.yaml"]


# -- redaction ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("mongodb://user:pw@host/db", "mongodb://user:***@host/db"),
        ("mongodb+srv://u:p%40ss@c.example.com/db?w=1", "mongodb+srv://u:***@c.example.com/db?w=1"),
        ("mongodb://u:p@ss@h1:1,h2:2/db", "mongodb://u:***@h1:1,h2:2/db"),
        ("mongodb://user@host/db", "mongodb://user@host/db"),
        ("mongodb://host/db?password=x&w=1", "mongodb://host/db?password=***&w=1"),
        ("http://host:80/x?e=a@b", "http://host:80/x?e=a@b"),
        ("sqlite:///var/lib/x.db", "sqlite:///var/lib/x.db"),
    ],
)
def test_redact_url(url: str, expected: str) -> None:
    assert redact_url(url) == expected


def test_redacted_config_is_json_and_masks_password() -> None:
    cfg = from_mapping(
        {"store": "mongodb://app:s3cret@db/jobs", "job_defaults": {"at": "2026-01-01"}}
    )
    data = cfg.redacted()
    text = json.dumps(data)
    assert "s3cret" not in text
    assert data["store"] == "mongodb://app:***@db/jobs"
    assert data["logging"] == {"format": "console", "level": "info", "file": None}
    assert "s3cret" not in repr(cfg) and "s3cret" not in str(cfg)
    assert cfg.store == "mongodb://app:s3cret@db/jobs"  # the real value stays usable


def test_redacted_handles_yaml_dates(tmp_path: Path) -> None:
    cfg = load(write(tmp_path, "job_defaults: {at: 2026-01-31T08:00:00Z}\n"))
    assert json.loads(json.dumps(cfg.redacted()))["job_defaults"] == {
        "at": "2026-01-31T08:00:00+00:00"
    }


# -- fuzzing -----------------------------------------------------------------------------------

KEYS = [*(f.name for f in dataclasses.fields(Config)), "format", "level", "file",
        "listen", "database", "write_concern", "change_streams", "retry", "x"]  # fmt: skip
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=30),
    st.sampled_from(["sqlite://a.db", "mongodb://u:p@h/d", "1GB", "10m", "json", "*", "a:b"]),
    st.dates(),
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
MAPPINGS = st.dictionaries(
    st.sampled_from(KEYS) | st.integers() | st.text(max_size=10), VALUES, max_size=8
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(MAPPINGS)
def test_random_mappings_raise_only_config_error(data: dict[Any, Any]) -> None:
    try:
        cfg = from_mapping(data, path="/nonexistent/dir/taskschedd.yaml")
    except ConfigError as exc:
        assert exc.key is None or isinstance(exc.key, str)
        assert str(exc).startswith("/nonexistent/dir/taskschedd.yaml: ")
    else:
        json.dumps(cfg.redacted())


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=200))
def test_random_yaml_text_raises_only_config_error(text: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "c.yaml"
        path.write_text(text, encoding="utf-8", errors="surrogatepass")
        with contextlib.suppress(ConfigError):
            load(path)


def test_a_number_with_a_leading_zero_is_text_as_in_yaml_1_1(tmp_path: Path) -> None:
    """PyYAML writes the string '08' unquoted (YAML 1.1 reads it as text: not octal, and
    no decimal has a leading zero); read back, it must stay the queue '08', not 8 (a
    property test found it)."""
    text = yaml.safe_dump({"queues": ["08", "010"], "node": "0"})
    assert "- 08" in text
    cfg = config.load(write(tmp_path, text))
    assert list(cfg.queues) == ["08", "010"] and cfg.node == "0"
    assert config.load(write(tmp_path, "min_children: 0\n")).min_children == 0
    assert config.load(write(tmp_path, "max_children: 07\n")).max_children == 7
