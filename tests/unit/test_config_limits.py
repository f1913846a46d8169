"""Hostile and absurd configuration input (issue 11): YAML alias bombs, numbers outside
their documented range, passwords that must never be shown, and the password file.

tests/unit/test_config.py checks the ordinary keys; these cases are the ones that used
to pass validation and then kill the daemon (OverflowError, crash-looping workers, a
MemoryError after 19 s), or print a password.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from taskschedd import config
from taskschedd.config import (
    DURATION_RANGES,
    INT_RANGES,
    MAX_CONFIG_ALIASES,
    MAX_CONFIG_BYTES,
    ConfigError,
    from_mapping,
    load,
)
from taskschedd.redact import redact_text, redact_url
from taskschedd.timeutil import format_duration


def write(tmp_path: Path, text: str | bytes) -> Path:
    path = tmp_path / "taskschedd.yaml"
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    return path


def alias_bomb(key: str, levels: int = 9) -> str:
    """~400 bytes that stand for 9**levels strings (the billion laughs), as the value of
    ``key``: a validator that shows the bad value in its message used to expand it all."""
    items = ["&a [x, x, x, x, x, x, x, x, x]"]
    prev = "a"
    for name in "bcdefghijk"[: levels - 1]:
        items.append(f"&{name} [" + ", ".join([f"*{prev}"] * 9) + "]")
        prev = name
    return f"{key}: [\n  " + ",\n  ".join(items) + "\n]\n"


def refused(path: Path) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load(path)
    err = info.value
    assert err.exit_code == 78 and str(err).startswith(f"{path}: ")
    return err


# -- YAML that expands ---------------------------------------------------------------------


@pytest.mark.parametrize("key", ["store", "lease", "queues", "job_defaults", "unknown_key"])
def test_an_alias_bomb_is_refused_at_once(tmp_path: Path, key: str) -> None:
    text = alias_bomb(key)
    assert len(text) < 450
    start = time.monotonic()
    err = refused(write(tmp_path, text))
    assert time.monotonic() - start < 2.0  # it used to be a MemoryError after 19 s
    assert "aliases" in err.reason and "100000 values" in err.reason


def test_a_recursive_alias_is_refused(tmp_path: Path) -> None:
    err = refused(write(tmp_path, "queues: &q [default, *q]\n"))
    assert "refers to a value that contains it" in err.reason


def test_too_many_alias_uses_are_refused(tmp_path: Path) -> None:
    text = "x: &x a\nqueues: [" + ", ".join(["*x"] * (MAX_CONFIG_ALIASES + 1)) + "]\n"
    err = refused(write(tmp_path, text))
    assert f"more than {MAX_CONFIG_ALIASES} uses of YAML aliases" in err.reason


def test_ordinary_anchors_and_merge_keys_still_work(tmp_path: Path) -> None:
    text = (
        "job_defaults: &d {retry: 3, timeout: 10m}\n"
        "allowed_modules: &m [myapp.jobs, other.jobs]\n"
        "logging: {<<: {format: json}, level: debug}\n"
    )
    cfg = load(write(tmp_path, text))
    assert cfg.job_defaults == {"retry": 3, "timeout": "10m"}
    assert cfg.allowed_modules == ["myapp.jobs", "other.jobs"]
    assert (cfg.logging.format, cfg.logging.level) == ("json", "debug")


def test_a_huge_file_is_refused_without_parsing_it(tmp_path: Path) -> None:
    err = refused(write(tmp_path, "# " + "x" * MAX_CONFIG_BYTES + "\n"))
    assert "larger than 1024 KiB" in err.reason


def test_an_integer_too_long_to_read_is_a_config_error(tmp_path: Path) -> None:
    err = refused(write(tmp_path, "max_children: " + "9" * 5000 + "\n"))
    assert "line 1" in err.reason and "a number too long to read" in err.reason


# -- every number has a range ----------------------------------------------------------------

#: The values of issue 11, each accepted by --check-config before and fatal later.
ISSUE_VALUES: list[tuple[dict[str, Any], str, str]] = [
    ({"max_children": 99999999999999999999999}, "max_children", "must be <= 4096"),
    ({"poll_interval": 1e308}, "poll_interval", "must be at most 1h"),
    ({"lease": 1e308}, "lease", "must be at most 1d"),
    ({"shutdown_grace": "99999999999w"}, "shutdown_grace", "must be at most 1d"),
    ({"retention": 1e308}, "retention", "must be at most 3650d"),
    ({"max_worker_memory": "99999999999TB"}, "max_worker_memory", "must be at most 16TiB"),
    ({"max_worker_memory": "9" * 400}, "max_worker_memory", "must be at most 16TiB"),
    ({"max_data_size": "20MB"}, "max_data_size", "must be at most 7MiB"),
    ({"max_data_size": "1B"}, "max_data_size", "must be at least 1KiB"),
    ({"poll_interval": float("nan")}, "poll_interval", "must be finite"),
    ({"reap_interval": float("inf")}, "reap_interval", "must be finite"),
    ({"kill_grace": "9" * 400 + "w"}, "kill_grace", "must be finite"),
    ({"mongodb": {"write_concern": 10**30}}, "mongodb.write_concern", "from 0 to 50"),
    ({"job_defaults": {"timeout": 1e308}}, "job_defaults", "at most 36500d"),
    ({"job_defaults": {"retry_interval": "99999999999w"}}, "job_defaults", "at most 36500d"),
]


@pytest.mark.parametrize(
    ("data", "key", "fragment"), ISSUE_VALUES, ids=[str(v[0])[:40] for v in ISSUE_VALUES]
)
def test_absurd_numbers_are_refused_naming_key_value_and_range(
    tmp_path: Path, data: dict[str, Any], key: str, fragment: str
) -> None:
    err = refused(write(tmp_path, yaml.safe_dump(data)))
    assert err.key == key
    assert fragment in err.reason, err.reason
    if key != "job_defaults":
        assert "accepted:" in err.reason or "from 0 to 50" in err.reason, err.reason


@pytest.mark.parametrize("key", list(DURATION_RANGES))
def test_every_duration_key_takes_its_whole_range_and_nothing_beyond(key: str) -> None:
    low, high = DURATION_RANGES[key]
    assert math.isfinite(high) and high <= 3650 * 86400
    assert getattr(from_mapping({key: low}), key) == low
    assert getattr(from_mapping({key: high}), key) == high
    assert getattr(from_mapping({key: format_duration(high)}), key) == high
    accepted = f"accepted: {format_duration(low)} to {format_duration(high)}"
    for bad in (high * 1.001, f"{high * 2:.0f}s", -1, float("inf"), float("nan")):
        with pytest.raises(ConfigError) as info:
            from_mapping({key: bad}, path="/x.yaml")
        assert info.value.key == key and accepted in info.value.reason, (bad, info.value)


@pytest.mark.parametrize("key", [k for k in INT_RANGES if "." not in k])
def test_every_integer_key_takes_its_whole_range_and_nothing_beyond(key: str) -> None:
    low, high = INT_RANGES[key]
    if key in ("max_worker_memory", "max_data_size"):
        unit = 1 if key == "max_worker_memory" else 2**20  # integers are megabytes
        assert getattr(from_mapping({key: f"{high}MiB" if unit == 1 else "7MiB"}), key) == high
        bad: Any = f"{high + 1}MiB" if unit == 1 else "8MiB"
    else:
        extra = {"max_children": high} if key == "min_children" else {}
        assert getattr(from_mapping({key: high, **extra}), key) == high
        assert getattr(from_mapping({key: low}), key) == low
        bad = high + 1
    with pytest.raises(ConfigError) as info:
        from_mapping({key: bad}, path="/x.yaml")
    assert info.value.key == key and "accepted:" in info.value.reason, info.value


def test_the_reference_defaults_sit_inside_their_ranges() -> None:
    defaults = config.Config()
    for key, (low, high) in DURATION_RANGES.items():
        assert low <= getattr(defaults, key) <= high, key
    assert (
        INT_RANGES["max_data_size"][0] <= defaults.max_data_size <= INT_RANGES["max_data_size"][1]
    )


# -- passwords -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("mongodb://u:pa/ss@127.0.0.1:1/db", "mongodb://u:***@127.0.0.1:1/db"),
        ("mongodb://u:pa ss@127.0.0.1:1/db", "mongodb://u:***@127.0.0.1:1/db"),
        ("mongodb://u:pa?s#s@h1,h2/db?replicaSet=rs", "mongodb://u:***@h1,h2/db?replicaSet=rs"),
        (
            "mongodb+srv://u:a@b/c d@cluster.example.com/db",
            "mongodb+srv://u:***@cluster.example.com/db",
        ),
    ],
)
def test_every_url_form_is_redacted(url: str, shown: str) -> None:
    assert redact_url(url) == shown
    # ... and once seen, the password is masked in any text: a driver error, a log line.
    secret = url.split("://", 1)[1].split(":", 1)[1].rsplit("@", 1)[0]
    assert secret not in redact_text(f"cannot connect to {url}: refused ({secret})")


@pytest.mark.parametrize("password", ["pa/ss", "pa ss", "pa?ss", "pa#ss", "p@ss:w"])
def test_a_url_with_an_unencoded_password_character_is_refused_without_showing_it(
    tmp_path: Path, password: str
) -> None:
    err = refused(write(tmp_path, yaml.safe_dump({"store": f"mongodb://app:{password}@db/jobs"})))
    assert err.key == "store" and "percent-encoded" in err.reason
    assert password not in str(err), str(err)


def test_the_password_can_come_from_a_file(tmp_path: Path) -> None:
    secret = "s3 cr/et@x"
    (tmp_path / "pw").write_text(secret + "\n")
    cfg = load(
        write(
            tmp_path, "store: mongodb://app@db1,db2/jobs?replicaSet=rs0\nstore_password_file: pw\n"
        )
    )
    assert cfg.store == "mongodb://app:s3%20cr%2Fet%40x@db1,db2/jobs?replicaSet=rs0"
    assert cfg.store_password_file == str(tmp_path / "pw")
    for shown in (repr(cfg), str(cfg.redacted()), redact_text(f"error: {cfg.store} {secret}")):
        assert "s3" not in shown and "%2F" not in shown, shown


@pytest.mark.parametrize(
    ("store", "file", "fragment"),
    [
        ("sqlite:///tmp/x.db", "pw", "applies only to a mongodb"),
        ("mongodb://db/jobs", "pw", "must name the user"),
        ("mongodb://app:other@db/jobs", "pw", "already holds a password"),
        ("mongodb://app@db/jobs", "missing", "cannot read"),
        ("mongodb://app@db/jobs", "empty", "first line"),
    ],
)
def test_a_bad_password_file_is_refused(
    tmp_path: Path, store: str, file: str, fragment: str
) -> None:
    (tmp_path / "pw").write_text("secret\n")
    (tmp_path / "empty").write_text("")
    err = refused(write(tmp_path, yaml.safe_dump({"store": store, "store_password_file": file})))
    assert err.key == "store_password_file" and fragment in err.reason, err


def test_credentials_in_url_options_and_mistyped_mongodb_urls_are_never_shown() -> None:
    from taskschedd.errors import ConfigError, StoreError
    from taskschedd.redact import redact_text, redact_url
    from taskschedd.store import open_store

    url = "mongodb://h/db?authMechanism=MONGODB-AWS&authMechanismProperties=AWS_SESSION_TOKEN:S3cretTok,X:y"
    assert "S3cretTok" not in redact_url(url)
    assert "S3cretTok" not in redact_text(f"cannot reach {url} now")
    for typo in ("mongodb:/u:S3cret@h/db", "mongodb//u:S3cret@h/db", "MongoDB:u:S3cret@h"):
        with pytest.raises(StoreError) as caught:
            open_store(typo)
        assert "S3cret" not in str(caught.value) and "mongodb://" in str(caught.value)
        with pytest.raises(ConfigError) as bad:
            from_mapping({"store": typo})
        assert "S3cret" not in str(bad.value), bad.value


@pytest.mark.parametrize(
    "text", ["lease: 10:00", "lease: ١٠s", "lease: 𝟏𝟎s", "lease: 1_0", "max_children: 0b11"]
)
def test_numbers_are_read_as_yaml_1_2_and_ascii_only(tmp_path: Path, text: str) -> None:
    """YAML 1.1 read 10:00 as 600 (base 60) and 1_0 as 10; float() reads other scripts'
    digits: a value that does not look like what the key takes is refused, not guessed."""
    err = refused(write(tmp_path, text + "\n"))
    assert text.split(":")[0] in str(err)


def test_a_leading_zero_is_not_octal(tmp_path: Path) -> None:
    assert load(write(tmp_path, "max_children: 010\n")).max_children == 10


# -- limits: (issue 15) ----------------------------------------------------------------------
# The configuration's cluster-wide limits: checked at load as `taskschedctl limits set`
# checks them, and set in the store by every node at start and on each reload (the
# configuration wins over a change made with taskschedctl in between).

LIMITS_YAML = """\
limits:
  reports: {max_running: 2}
  mail: {rate: 100/1m}
  queue:imports: {max_running: 0, rate: 5/s}
"""


def test_limits_load_as_definitions(tmp_path: Path) -> None:
    from taskschedd.limits import LimitSpec, Rate

    cfg = load(write(tmp_path, LIMITS_YAML))
    assert cfg.limits == {
        "reports": LimitSpec("reports", 2),
        "mail": LimitSpec("mail", None, Rate(100, 60.0)),
        "queue:imports": LimitSpec("queue:imports", 0, Rate(5, 1.0)),
    }
    # Shown as written (what --check-config prints and the start is logged with).
    assert cfg.redacted()["limits"] == {
        "reports": {"max_running": 2},
        "mail": {"rate": "100/1m"},
        "queue:imports": {"max_running": 0, "rate": "5/1s"},
    }
    assert config.Config().limits == {} and load(write(tmp_path, "limits:\n")).limits == {}


@pytest.mark.parametrize(
    ("text", "key", "fragment"),
    [
        ("limits: [reports]", "limits", "expected a mapping of limit names like"),
        ("limits: {bad name: {max_running: 1}}", "limits.bad name", "expected 1-128 letters"),
        ("limits: {7: {max_running: 1}}", "limits.7", "limit names must be strings"),
        ("limits: {r: {max_running: -1}}", "limits.r", "max_running must be an integer from 0"),
        ("limits: {r: {max_running: 2.0}}", "limits.r", "max_running must be an integer"),
        ("limits: {r: {max_running: yes}}", "limits.r", "max_running must be an integer"),
        ("limits: {r: {max_running: 100001}}", "limits.r", "from 0 to 100000"),
        ("limits: {r: {rate: 100}}", "limits.r", "rate: expected starts per period"),
        ("limits: {r: {rate: 100/fortnight}}", "limits.r", "rate: expected starts per period"),
        ("limits: {r: {rate: 0/1m}}", "limits.r", "the count must be an integer from 1"),
        ("limits: {r: {rate: 1/40d}}", "limits.r", "the period must be from 1ms to 31 days"),
        ("limits: {r: {}}", "limits.r", "give max_running, rate or both, like"),
        ("limits: {r: }", "limits.r", "expected a mapping with max_running and/or rate"),
        ("limits: {r: {max_runing: 1}}", "limits.r", "unknown key 'max_runing'; accepted"),
        ("limits: {r: {max_running: 1}, r: {max_running: 2}}", None, "duplicate key 'r'"),
    ],
)
def test_a_bad_limit_is_refused_naming_it(
    tmp_path: Path, text: str, key: str | None, fragment: str
) -> None:
    err = refused(write(tmp_path, text + "\n"))
    assert err.key == key and fragment in err.reason, err


def test_a_misspelt_limits_key_is_named(tmp_path: Path) -> None:
    err = refused(write(tmp_path, "limts: {r: {max_running: 1}}\n"))
    assert "did you mean 'limits'?" in err.reason


# -- limits on a real node -------------------------------------------------------------------


@pytest.fixture
def daemons(tmp_path: Path) -> Any:
    from tests.e2e.conftest import Daemon

    made: list[Daemon] = []

    def make(name: str = "n1", **cfg: Any) -> Daemon:
        d = Daemon(tmp_path, name, f"sqlite:///{tmp_path}/store/taskschedd.db", cfg)
        made.append(d)
        return d

    yield make
    for d in made:
        d.kill_all()


def taskschedd_run(*args: str) -> Any:
    import os
    import subprocess

    from tests.e2e.conftest import REPO, TASKSCHEDD

    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("NOTIFY_SOCKET", None)
    return subprocess.run(
        [str(TASKSCHEDD), *args], capture_output=True, text=True, timeout=60, cwd=REPO, env=env
    )


def test_the_daemon_refuses_a_bad_limit_with_exit_78(tmp_path: Path) -> None:
    path = write(tmp_path, f"store: {tmp_path}/store/t.db\nlimits: {{r: {{rate: 10/ever}}}}\n")
    for args in (["--check-config"], []):
        result = taskschedd_run(*args, "-c", str(path))
        assert result.returncode == 78, result.stderr
        (line,) = result.stderr.splitlines()
        assert line.startswith(f"taskschedd: {path}: limits.r: rate: expected"), line
        assert "Traceback" not in result.stdout
    assert not (tmp_path / "store").exists()
    good = write(tmp_path, f"store: {tmp_path}/store/t.db\n" + LIMITS_YAML)
    result = taskschedd_run("--check-config", "-c", str(good))
    assert result.returncode == 0, result.stderr
    assert '"rate": "100/1m"' in result.stdout


def test_a_node_sets_its_limits_at_start_and_again_on_reload(daemons: Any) -> None:
    import signal

    from taskschedd import Scheduler
    from taskschedd.limits import LimitSpec
    from tests.helpers import wait_for

    d = daemons(limits={"reports": {"max_running": 2}, "mail": {"rate": "100/1m"}})
    d.start()

    def defined() -> dict[str, LimitSpec]:
        with Scheduler(d.open_store()) as s:
            return {st.spec.name: st.spec for st in s.limits()}

    assert defined() == config.from_mapping({"limits": d.config["limits"]}).limits
    (line,) = d.logged("limits set from the configuration")
    assert line["limits"] == {"reports": {"max_running": 2}, "mail": {"rate": "100/1m"}}
    assert (line["new"], line["replaced"]) == (["mail", "reports"], [])
    # An operator changes one and adds another; a reload sets the configured one back
    # (the configuration wins) and leaves the other alone.
    with Scheduler(d.open_store()) as s:
        s.set_limit("reports", max_running=9)
        s.set_limit("extra", max_running=1)
    d.write_config(limits={"reports": {"max_running": 2}, "mail": {"rate": "50/1m"}})
    d.signal(signal.SIGHUP)
    wait_for(lambda: len(d.logged("limits set from the configuration")) == 2, 15)
    assert {n: s.describe() for n, s in defined().items()} == {
        "extra": "max_running 1",
        "mail": "rate 50/1m",
        "reports": "max_running 2",
    }
    assert d.logged("limits set from the configuration")[1]["replaced"] == ["mail", "reports"]


def test_the_metrics_endpoint_shows_each_limit(daemons: Any, tmp_path: Path) -> None:
    import re
    import socket
    import urllib.error
    import urllib.request

    from taskschedd import Scheduler
    from tests.helpers import wait_for

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    d = daemons(
        metrics={"listen": f"127.0.0.1:{port}"},
        limits={"reports": {"max_running": 1}, "mail": {"rate": "1/1h"}},
        max_children=3,
    )
    with Scheduler(f"sqlite:///{tmp_path}/store/taskschedd.db", create=True) as s:
        for _ in range(3):
            s.add_job("tests.e2e.jobs.Sleep", {"seconds": 60}, limit="reports")
        s.add_job("tests.e2e.jobs.Sleep", {"seconds": 0}, limit="undefined")
    d.start()

    def samples() -> dict[str, float]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
                text = r.read().decode()
        except (urllib.error.URLError, ConnectionError):
            return {}
        found = re.findall(r'^(taskschedd_limit_\w+)\{limit="([^"]*)"\} (\S+)$', text, re.M)
        return {f"{name}/{limit}": float(value) for name, limit, value in found}

    want = {
        "taskschedd_limit_running/reports": 1.0,
        "taskschedd_limit_capacity/reports": 1.0,
        "taskschedd_limit_waiting/reports": 2.0,
        "taskschedd_limit_running/mail": 0.0,
        "taskschedd_limit_waiting/mail": 0.0,
    }  # no capacity for a limit with a rate only; an undefined limit has no series
    wait_for(lambda: samples() == want, 20, message=lambda: f"{samples()}")


def test_a_store_outage_delays_the_configured_limits_until_it_is_over(tmp_path: Path) -> None:
    """The node's start does not wait for them: they are set, with the store's usual
    backoff, as soon as it answers (and logged then, once)."""
    from taskschedd.errors import StoreUnavailable
    from taskschedd.housekeeping import Housekeeping
    from taskschedd.store import open_store

    class Log:
        def __init__(self) -> None:
            self.lines: list[tuple[str, dict[str, Any]]] = []

        def info(self, event: str, **fields: Any) -> None:
            self.lines.append((event, fields))

        warning = debug = info

    cfg = from_mapping({"limits": {"reports": {"max_running": 2}}})
    store = open_store(f"sqlite:///{tmp_path}/s.db", create=True)
    real, failures = store.set_limit, [StoreUnavailable("down for a moment")]

    def flaky(spec: Any) -> None:
        if failures:
            raise failures.pop()
        real(spec)

    store.set_limit = flaky  # type: ignore[method-assign]
    log = Log()
    house = Housekeeping(cfg, {}, log, store)
    try:
        house.apply_limits(100.0)
        assert store.limits(now=time.time()) == [] and house.limits_pending
        retry = house.limits_timer.next
        assert 100.0 < retry <= 100.0 + 0.2 and retry in house.wakeups(100.0)
        house.apply_limits(retry - 0.001)  # backing off: not yet
        assert house.limits_pending
        house.apply_limits(retry)
        assert [s.spec for s in store.limits(now=time.time())] == list(cfg.limits.values())
        assert [e for e, _ in log.lines] == [
            "store unavailable",
            "limits set from the configuration",
        ]
        house.apply_limits(retry + 60)  # set: nothing more until a reload
        assert not house.limits_pending and len(log.lines) == 2
        house.reconfigure(cfg, log)
        assert house.limits_pending
    finally:
        store.close()
