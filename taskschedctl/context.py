"""Which store and configuration a command talks to, resolved lazily.

Nothing is loaded until a command needs it, so ``--help`` and usage errors never touch
the configuration or the store, and a SQLite store never imports pymongo.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    from taskschedd.config import Config
    from taskschedd.scheduler import Scheduler


def check_store_url(url: str) -> str:
    """A usage error for a store URL no store understands (before anything is opened)."""
    from taskschedd.storeurl import ACCEPTED, SCHEMES

    if "://" in url and not url.startswith(SCHEMES):
        from taskschedd.redact import redact_url

        raise click.BadParameter(
            f"unknown store URL {redact_url(url)!r}; accepted: {ACCEPTED}",
            param_hint="'--store'",
        )
    if not url.strip():
        raise click.BadParameter("the store URL is empty", param_hint="'--store'")
    return url


@dataclass
class Ctl:
    """The options every command shares; the command-level ones override the group's."""

    config_path: str | None = None
    store_url: str | None = None
    #: Where they came from: a -c on the command line wins over $TASKSCHED_STORE.
    store_from_env: bool = False
    config_from_cli: bool = False
    #: What named store_url, for messages: --store, TASKSCHED_STORE, TASKSCHED_STORE_FILE.
    store_origin: str = "--store"
    #: -v: the store's informational log lines and warnings (topology, a standalone
    #: server's durability) on stderr; without it only errors are logged.
    verbose: bool = False
    _log_before: dict[str, Any] | None = None
    _config: Config | None = None
    _config_loaded: bool = False
    _schedulers: list[Scheduler] = field(default_factory=list)

    def override(self, config_path: str | None, store_url: str | None) -> None:
        if config_path is not None:
            self.config_path = config_path
            self.config_from_cli = True
            self._config_loaded = False
        if store_url is not None:
            self.store_url = check_store_url(store_url)
            self.store_from_env = False
            self.store_origin = "--store"

    def config_source(self) -> str | None:
        """The configuration file to read, or None when --store alone names the store.

        ConfigError (exit 78) when nothing names a store and the default file is missing.
        """
        if self.config_path is not None:
            return self.config_path
        if self.store_url is not None:
            return None
        from taskschedd.config import DEFAULT_CONFIG_PATH

        if os.path.exists(DEFAULT_CONFIG_PATH):
            return DEFAULT_CONFIG_PATH
        from taskschedd.errors import ConfigError

        raise ConfigError(
            "no store chosen: give --store URL (or set TASKSCHED_STORE), or -c CONFIG (or set "
            f"TASKSCHED_CONFIG); the default configuration {DEFAULT_CONFIG_PATH} does not exist"
        )

    @property
    def config(self) -> Config | None:
        """The loaded configuration (ConfigError, exit 78, if invalid); None without one."""
        if not self._config_loaded:
            path = self.config_source()
            if path is not None:
                from taskschedd.config import load

                self._config = load(path)
            self._config_loaded = True
        return self._config

    @property
    def url(self) -> str:
        """The store URL: --store wins over the configuration's ``store``, which wins over
        $TASKSCHED_STORE when the configuration was named on the command line."""
        config = self.config
        if self.store_url is not None and not (self.store_from_env and self.config_from_cli):
            return self.store_url
        assert config is not None  # config_source() raised otherwise
        return config.store

    def scheduler(self, *, create: bool = False, wait: float | None = None) -> Scheduler:
        """A Scheduler on the chosen store. A SQLite file is only created when ``create``
        (add --create): a mistyped path must fail, not queue into or leave a new file.
        ``wait``: how long a MongoDB store waits for a server and for each operation
        (check --timeout), instead of its 5 s server selection."""
        from taskschedd.scheduler import Scheduler
        from taskschedd.storeurl import is_sqlite

        config = self.config
        url = self.url
        if is_sqlite(url):
            from taskschedd.store.sqlite import SQLiteStore

            sched = Scheduler(SQLiteStore(url, create=create), config=config)
            self._schedulers.append(sched)
            return sched  # it logs nothing: a cron line's add never loads logging
        self._quiet_logs()
        if wait is not None:
            from taskschedd.store import open_store

            options = config.store_options() if config is not None and url == config.store else {}
            store = open_store(
                url, **options, server_selection_timeout=wait, operation_timeout=wait
            )
            sched = Scheduler(store, config=config)
        else:
            sched = Scheduler(self.store_url, config=config)
        self._schedulers.append(sched)
        return sched

    def close(self) -> None:
        for sched in self._schedulers:
            sched.close()
        self._schedulers.clear()
        if self._log_before is not None:  # run() in-process (tests): leave logging as it was
            from taskschedd import log

            log.configure(**self._log_before)
            self._log_before = None

    def _quiet_logs(self) -> None:
        """The store's log lines are for a daemon's log: a CLI user sees errors only,
        unless -v. Logging is loaded only now: --help and usage errors never import it."""
        if self._log_before is not None:
            return
        from taskschedd import log

        self._log_before = log.settings()
        log.configure(format=self._log_before["format"], level="info" if self.verbose else "error")
