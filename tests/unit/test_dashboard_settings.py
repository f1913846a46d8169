"""The dashboard's settings: who may use it and where it may listen (before any web
import), and its section of the configuration."""

from __future__ import annotations

from pathlib import Path

import pytest

from taskschedd.config import ConfigError, DashboardConfig, load
from taskschedd.dashboard.settings import Auth, is_loopback, resolve_auth, settings

TOKEN = "0123456789abcdef0123"


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.8.9.10", True),
        ("::1", True),
        ("localhost", True),
        ("0.0.0.0", False),
        ("::", False),
        ("192.168.1.5", False),
        ("dashboard.example.com", False),  # a name may resolve to anything
        ("localhost.example.com", False),
    ],
)
def test_only_loopback_addresses_count_as_private(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_a_reachable_address_without_credentials_is_refused_with_78() -> None:
    with pytest.raises(ConfigError) as err:
        settings(DashboardConfig(), listen="0.0.0.0:8080", env={})
    assert err.value.exit_code == 78
    assert "TASKSCHED_DASHBOARD_TOKEN" in str(err.value)
    assert "0.0.0.0:8080" in str(err.value)


def test_loopback_needs_no_credentials_and_is_the_default() -> None:
    s = settings(DashboardConfig(), env={})
    assert (s.host, s.port, s.auth.enabled, s.read_only) == ("127.0.0.1", 8080, False, False)
    s = settings(DashboardConfig(), listen="[::1]:9000", read_only=True, env={})
    assert (s.host, s.port, s.read_only) == ("::1", 9000, True)


def test_a_token_from_the_environment_allows_a_reachable_address() -> None:
    s = settings(DashboardConfig(), listen="0.0.0.0:8080", env={"TASKSCHED_DASHBOARD_TOKEN": TOKEN})
    assert s.auth.kind == "token"
    assert s.auth.token_ok(TOKEN)
    assert not s.auth.token_ok(TOKEN + "x")
    assert not s.auth.token_ok("")
    # The session cookie is derived from the token, never the token itself.
    assert s.auth.session_value() != TOKEN
    assert s.auth.session_ok(s.auth.session_value())
    assert not s.auth.session_ok(TOKEN)


@pytest.mark.parametrize("token", ["short", "x" * 15, "0123456789abcdef\n0"])
def test_a_weak_or_unprintable_token_is_refused(token: str) -> None:
    with pytest.raises(ConfigError, match="at least 16 printable"):
        resolve_auth(DashboardConfig(), {"TASKSCHED_DASHBOARD_TOKEN": token})


def test_basic_credentials_need_both_halves() -> None:
    with pytest.raises(ConfigError, match="both"):
        resolve_auth(DashboardConfig(), {"TASKSCHED_DASHBOARD_USER": "ops"})
    auth = resolve_auth(
        DashboardConfig(),
        {"TASKSCHED_DASHBOARD_USER": "ops", "TASKSCHED_DASHBOARD_PASSWORD": "pw pw"},
    )
    assert auth.kind == "basic"
    assert auth.basic_ok("ops", "pw pw")
    assert not auth.basic_ok("ops", "pw")
    assert not auth.basic_ok("op", "pw pw")
    assert not Auth().basic_ok("", "")


def test_secrets_come_from_files_named_in_the_configuration(tmp_path: Path) -> None:
    (tmp_path / "token").write_text(TOKEN + "\nignored\n")
    (tmp_path / "pw").write_text("secret\n")
    (tmp_path / "t.yaml").write_text(
        "store: sqlite:///x.db\n"
        "dashboard:\n  listen: 0.0.0.0:8081\n  read_only: true\n  token_file: token\n"
        "  user: ops\n  password_file: pw\n"
    )
    config = load(str(tmp_path / "t.yaml")).dashboard
    assert config.token_file == str(tmp_path / "token")  # relative to the file
    s = settings(config, env={})
    assert (s.host, s.port, s.read_only) == ("0.0.0.0", 8081, True)
    assert s.auth.token == TOKEN and s.auth.basic_ok("ops", "secret")
    # The environment wins over the files.
    s = settings(config, env={"TASKSCHED_DASHBOARD_TOKEN": "z" * 20})
    assert s.auth.token == "z" * 20


def test_an_unreadable_or_empty_secret_file_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(ConfigError, match="empty"):
        resolve_auth(DashboardConfig(token_file=str(tmp_path / "empty")), {})
    with pytest.raises(ConfigError, match="cannot read"):
        resolve_auth(DashboardConfig(token_file=str(tmp_path / "missing")), {})


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ("listen: 8080", "expected a string like 127.0.0.1:8080"),
        ("listen: dashboard", "expected host:port like 127.0.0.1:8080"),
        ("listen: 127.0.0.1:99999", "expected host:port"),
        ("read_only: yes please", "expected true or false"),
        ("user: ops", "give both user and password_file"),
        ("password_file: pw", "give both user and password_file"),
        ("user: 'a:b'\n  password_file: pw", "without ':'"),
        ("token: abc", "unknown key 'token'"),
    ],
)
def test_a_bad_dashboard_section_names_the_key(tmp_path: Path, section: str, message: str) -> None:
    (tmp_path / "t.yaml").write_text(f"dashboard:\n  {section}\n")
    with pytest.raises(ConfigError, match=message) as err:
        load(str(tmp_path / "t.yaml"))
    assert "dashboard" in str(err.value)
