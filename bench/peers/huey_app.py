"""Huey 3 tasks; ``BENCH_HUEY`` picks the storage: ``sqlite:PATH`` or ``redis:URL``.

Default settings throughout (SqliteHuey: WAL, SQLite's default synchronous=FULL).
"""

from __future__ import annotations

import os

from huey import RedisHuey, SqliteHuey

from bench.common import write_stamp

_kind, _, _where = os.environ.get("BENCH_HUEY", "sqlite:/tmp/bench-huey.db").partition(":")
huey = SqliteHuey("bench", filename=_where) if _kind == "sqlite" else RedisHuey("bench", url=_where)


@huey.task()
def noop() -> None:
    return None


@huey.task()
def stamp(tag: str, t: float) -> None:
    write_stamp(tag, t)
