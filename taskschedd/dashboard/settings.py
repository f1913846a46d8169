"""Who may use the dashboard and where it listens: resolved and checked before anything
web-related is imported, so that a mistake exits with a message (78) and no listener."""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass

from taskschedd.config import DashboardConfig
from taskschedd.errors import ConfigError

ENV_TOKEN = "TASKSCHED_DASHBOARD_TOKEN"
ENV_USER = "TASKSCHED_DASHBOARD_USER"
ENV_PASSWORD = "TASKSCHED_DASHBOARD_PASSWORD"
#: A token shorter than this is guessable by the requests an attacker can send.
MIN_TOKEN = 16


@dataclass(frozen=True)
class Auth:
    """The credentials a request must carry (none: every request is let in)."""

    token: str | None = None
    user: str | None = None
    password: str | None = None

    @property
    def enabled(self) -> bool:
        return self.token is not None or self.user is not None

    @property
    def kind(self) -> str:
        return "token" if self.token is not None else "basic" if self.user else "none"

    def session_value(self) -> str:
        """The session cookie a token login sets: derived from the token, so the cookie
        never holds the token itself and changes when the token does."""
        assert self.token is not None
        return hmac.new(
            self.token.encode(), b"taskschedd-dashboard-session", hashlib.sha256
        ).hexdigest()

    def token_ok(self, given: str) -> bool:
        return self.token is not None and hmac.compare_digest(given.encode(), self.token.encode())

    def session_ok(self, given: str) -> bool:
        return self.token is not None and hmac.compare_digest(
            given.encode(), self.session_value().encode()
        )

    def basic_ok(self, user: str, password: str) -> bool:
        if self.user is None or self.password is None:
            return False
        # Both compared whatever the first gives: the time says nothing of which was wrong.
        same_user = hmac.compare_digest(user.encode(), self.user.encode())
        same_password = hmac.compare_digest(password.encode(), self.password.encode())
        return same_user and same_password


@dataclass(frozen=True)
class Settings:
    host: str
    port: int
    read_only: bool
    auth: Auth


def _first_line(path: str, key: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            text = f.readline().strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}", key=key) from None
    if not text:
        raise ConfigError(f"{path} is empty: write the secret on its first line", key=key)
    return text


def resolve_auth(config: DashboardConfig, env: Mapping[str, str] | None = None) -> Auth:
    """The credentials from the environment (which wins) or the configuration's files."""
    env = os.environ if env is None else env
    token = env.get(ENV_TOKEN) or None
    if token is None and config.token_file is not None:
        token = _first_line(config.token_file, "dashboard.token_file")
    user = env.get(ENV_USER) or None
    password = env.get(ENV_PASSWORD) or None
    if user is None and password is None and config.user is not None:
        user = config.user
        assert config.password_file is not None  # the config checks they come together
        password = _first_line(config.password_file, "dashboard.password_file")
    if (user is None) != (password is None):
        raise ConfigError(f"set both {ENV_USER} and {ENV_PASSWORD} for HTTP basic auth, or neither")
    if token is not None and (len(token) < MIN_TOKEN or not token.isprintable()):
        raise ConfigError(
            f"the dashboard token must be at least {MIN_TOKEN} printable characters "
            "(make one with: openssl rand -hex 32)"
        )
    if user is not None and (":" in user or not user.isprintable()):
        raise ConfigError("the dashboard user name must be printable and hold no ':'")
    return Auth(token=token, user=user, password=password)


def split_listen(listen: str) -> tuple[str, int]:
    host, _, port = listen.rpartition(":")
    return host.strip("[]"), int(port)


def is_loopback(host: str) -> bool:
    """Only addresses no other host can reach; a name other than localhost may resolve
    to anything, so it counts as reachable."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def settings(
    config: DashboardConfig,
    *,
    listen: str | None = None,
    read_only: bool | None = None,
    env: Mapping[str, str] | None = None,
) -> Settings:
    """The effective settings; ConfigError (exit 78) for an address others can reach
    without authentication."""
    host, port = split_listen(listen or config.listen)
    auth = resolve_auth(config, env)
    if not is_loopback(host) and not auth.enabled:
        raise ConfigError(
            f"refusing to serve the dashboard on {host}:{port} without authentication: "
            f"other hosts could cancel and purge jobs. Set {ENV_TOKEN} (or dashboard.token_file), "
            f"or {ENV_USER} and {ENV_PASSWORD} (or dashboard.user and dashboard.password_file), "
            "or listen on 127.0.0.1"
        )
    return Settings(
        host=host,
        port=port,
        read_only=config.read_only if read_only is None else read_only,
        auth=auth,
    )
