"""Smoke tests of the benchmark harness (bench/): it measures, cleans up and reports.

No timings are asserted (the machine is shared); only that each piece produces figures
and leaves no process behind.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bench import common, run, tsd


def test_stamps_and_percentiles(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(common.STAMP_ENV, str(tmp_path / "stamps"))
    for i in range(5):
        common.write_stamp(f"l{i}", 100.0 + i)
    stamps = common.read_stamps(tmp_path / "stamps")
    assert sorted(stamps) == [f"l{i}" for i in range(5)]
    summary = common.latency_summary(stamps, "l")
    assert summary["n"] == 5 and summary["p50_ms"] is not None
    assert common.percentile([1.0, 2.0, 3.0], 50) == 2.0
    assert common.median([]) is None


def test_bare_worker_drain_completes_and_cleans_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    stamps = tmp_path / "stamps"
    monkeypatch.setenv(common.STAMP_ENV, str(stamps))
    system = tsd.BareWorkers(tmp_path)
    try:
        result = common.measure_drain(system, 30, stamps)
        assert system.done() == 30
    finally:
        system.stop()
        system.close()
    assert result["drain_jobs_per_s"] > 0
    assert result["enqueue_batch_per_s"] > 0
    assert len(result["rss_after_drain"]) == 2
    for pid in map(int, result["rss_after_drain"]):
        assert not os.path.exists(f"/proc/{pid}") or "Z" in Path(f"/proc/{pid}/stat").read_text()


def test_wal_pages_counts_every_write() -> None:
    pages = tsd.wal_pages(jobs=10)
    assert pages["add_job"] > 0 and pages["claim"] > 0 and pages["settle"] > 0


def test_summary_and_table_from_raw_results() -> None:
    rows = [{"drain_jobs_per_s": 100.0, "enqueue_one_per_s": 10.0, "rss_after_drain": {}}]
    results = {
        "date": "2026-01-01",
        "python": "3.11",
        "sqlite": "3.40",
        "machine": {"nproc": 2, "cpu_model": "x", "loadavg": [1.0, 1.0, 1.0]},
        "args": {"reps": 1, "n": 100},
        "raw": {
            "drain": {"taskschedd": rows, "celery": [{**rows[0], "drain_jobs_per_s": 50.0}]},
            "latency": {"taskschedd": [{"p50_ms": 1.0, "p99_ms": 5.0}]},
        },
    }
    results["summary"] = run.summarize(results)
    celery = results["summary"]["systems"]["celery"]
    assert celery["taskschedd_advantage"]["drain_jobs_per_s"] == 2.0
    table = run.render(results)
    assert "| taskschedd | 100 |" in table
    assert "| drain vs Celery | >= 3.0 x | 2.00 x | MISSED |" in table
