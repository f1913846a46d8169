"""RQ job functions."""

from __future__ import annotations

from bench.common import write_stamp


def noop() -> None:
    return None


def stamp(tag: str, t: float) -> None:
    write_stamp(tag, t)
