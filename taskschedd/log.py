"""Structured logging (structlog) for the daemon, its workers and the CLIs.

Design choices, and why:
- Each line is written with one os.write() on an O_APPEND descriptor: the master and its
  forked workers share the file without interleaving lines, and no Python lock can be
  held across fork() (structlog's PrintLogger and the io buffers both take locks).
- configure() may be called again (SIGHUP): the processor chain is one list object that
  is updated in place and the sink is one object whose descriptor is swapped, so loggers
  created earlier follow the new format, level and file.
- Passwords in URLs (mongodb://user:pw@host) are masked in every string value.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import MutableMapping
from typing import Any, TextIO, cast

import structlog
from structlog.typing import EventDict, FilteringBoundLogger, Processor, WrappedLogger

from taskschedd.errors import ConfigError
from taskschedd.redact import redact_text

__all__ = ["LEVELS", "configure", "get_logger", "redact_processor", "reopen", "settings"]

LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}
FORMATS = ("json", "console")
_FILE_MODE = 0o640


class _Sink:
    """The one structlog "logger": writes rendered lines to a file or stderr, lock-free."""

    def __init__(self) -> None:
        self.path: str | None = None
        self.fd: int | None = None  # our own descriptor for a log file
        self._retired: int | None = None  # previous descriptor, closed one switch later

    def open(self, path: str | None) -> None:
        """Switch to *path* (None = stderr); the new file is opened before the old closes."""
        new_fd = None
        if path is not None:
            try:
                new_fd = os.open(
                    path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, _FILE_MODE
                )
            except OSError as exc:
                reason = exc.strerror or str(exc)
                raise ConfigError(
                    f"cannot open log file {path}: {reason}", key="logging.file"
                ) from None
        # Close the descriptor retired by the switch before this one, not the current one:
        # a thread that just read self.fd may still write to it, and a closed number could
        # be reused by an unrelated file.
        if self._retired is not None:
            with contextlib.suppress(OSError):
                os.close(self._retired)
        self._retired, self.fd, self.path = self.fd, new_fd, path

    def msg(self, message: str) -> None:
        data = (message + "\n").encode("utf-8", "backslashreplace")
        fd = self.fd
        if fd is None:
            _write_stderr(data)
            return
        try:
            _write_all(fd, data)
        except OSError:
            _write_stderr(data)  # the log file failed (disk full...): never lose the line

    log = debug = info = warn = warning = err = error = critical = exception = fatal = msg


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        try:
            written = os.write(fd, view)
        except InterruptedError:
            continue
        view = view[written:]


def _write_stderr(data: bytes) -> None:
    """Write to the current sys.stderr: its descriptor when it has one, else its API."""
    stream: TextIO | None = sys.stderr
    if stream is None:
        return
    try:
        fd = stream.fileno()
    except (OSError, ValueError, AttributeError):
        fd = -1
    try:
        if fd >= 0:
            stream.flush()
            _write_all(fd, data)
        else:
            stream.write(data.decode("utf-8"))
            stream.flush()
    except (OSError, ValueError):
        pass  # stderr is gone (closed pipe, detached daemon): logging must never raise


_SINK = _Sink()
_PROCESSORS: list[Processor] = []
_STATE: dict[str, Any] = {}


def _logger_factory(*_args: Any) -> _Sink:
    return _SINK


def redact_processor(_logger: WrappedLogger, _method: str, event_dict: EventDict) -> EventDict:
    """Mask URL passwords in every string value (also inside lists and dicts)."""
    for key, value in event_dict.items():
        event_dict[key] = _redact(value, 0)
    return event_dict


def _redact(value: Any, depth: int) -> Any:
    if isinstance(value, str):
        return redact_text(value)
    if depth >= 5:
        return value
    if isinstance(value, MutableMapping):
        return {k: _redact(v, depth + 1) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_redact(v, depth + 1) for v in value)
    return value


def _name_logger(_logger: WrappedLogger, _method: str, event_dict: EventDict) -> EventDict:
    """Put the logger name under the conventional key "logger"."""
    if "logger_name" in event_dict:
        event_dict.setdefault("logger", event_dict.pop("logger_name"))
    return event_dict


def _stringify_objects(_logger: WrappedLogger, _method: str, event_dict: EventDict) -> EventDict:
    """Turn arbitrary objects into their str() so that redaction sees their text."""
    for key, value in event_dict.items():
        if isinstance(value, BaseException):
            event_dict[key] = f"{type(value).__name__}: {value}"
        elif not isinstance(value, str | int | float | bool | list | tuple | dict | type(None)):
            event_dict[key] = str(value)
    return event_dict


def configure(format: str = "console", level: str = "info", file: str | None = None) -> None:
    """(Re)configure logging; call again on SIGHUP to apply changes and reopen the file."""
    fmt = format.lower()
    lvl = level.lower()
    if fmt not in FORMATS:
        raise ConfigError(
            f"expected one of {'|'.join(FORMATS)}, got {format!r}", key="logging.format"
        )
    if lvl not in LEVELS:
        raise ConfigError(f"expected one of {'|'.join(LEVELS)}, got {level!r}", key="logging.level")
    _SINK.open(file)
    renderer: Processor
    if fmt == "json":
        renderer = structlog.processors.JSONRenderer(default=str)
    else:
        colors = file is None and _isatty(sys.stderr)
        renderer = structlog.dev.ConsoleRenderer(colors=colors)
    _PROCESSORS[:] = [
        structlog.contextvars.merge_contextvars,
        _name_logger,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.StackInfoRenderer(),
        structlog.processors.format_exc_info,
        _stringify_objects,
        redact_processor,
        renderer,
    ]
    structlog.configure(
        processors=_PROCESSORS,
        wrapper_class=structlog.make_filtering_bound_logger(LEVELS[lvl]),
        logger_factory=_logger_factory,
        cache_logger_on_first_use=False,  # module-level loggers must follow a reconfigure
    )
    _STATE.update(format=fmt, level=lvl, file=file)


def settings() -> dict[str, Any]:
    """The current format, level and file, as keyword arguments for configure()."""
    return {"format": "console", "level": "info", "file": None, **_STATE}


def reopen() -> None:
    """Reopen the current log file (after logrotate renamed it); stderr needs nothing."""
    if _SINK.path is not None:
        _SINK.open(_SINK.path)


def get_logger(name: str, **bind: Any) -> FilteringBoundLogger:
    """A logger tagged logger=name; it follows later configure() calls.

    Loggers from .bind() keep the level they were made with but share the processors and
    the file, so short-lived bound loggers (one per job) stay correct across SIGHUP.
    """
    if not _STATE:
        configure()
    # structlog.get_logger() reserves the keyword "logger"; _name_logger renames it back.
    return cast(FilteringBoundLogger, structlog.get_logger(logger_name=name, **bind))


def _isatty(stream: TextIO | None) -> bool:
    try:
        return stream is not None and stream.isatty()
    except (OSError, ValueError, AttributeError):
        return False
