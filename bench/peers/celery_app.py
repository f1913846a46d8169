"""Celery 5 tasks on a Redis broker (``BENCH_CELERY_BROKER``), no result backend."""

from __future__ import annotations

import os

from celery import Celery

from bench.common import write_stamp

app = Celery("bench", broker=os.environ.get("BENCH_CELERY_BROKER", "redis://127.0.0.1:6379/2"))


@app.task
def noop() -> None:
    return None


@app.task
def stamp(tag: str, t: float) -> None:
    write_stamp(tag, t)
