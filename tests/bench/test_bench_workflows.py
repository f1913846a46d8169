"""Smoke tests of the workflows benchmark (bench/workflows.py): the fan-out and fan-in
scenarios run against the real daemon, produce their figures and leave no process
behind; the summary and the table come out of raw results. No timings are asserted."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bench import common, workflows


def daemon_pids() -> set[int]:
    return set(common._LIVE)


@pytest.mark.parametrize("scenario", ["fanout", "fanin"])
def test_a_small_workflow_runs_to_its_figure_and_cleans_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, scenario: str
) -> None:
    monkeypatch.setenv(common.STAMP_ENV, str(tmp_path / "unused"))
    before = daemon_pids()
    fn = workflows.fan_out if scenario == "fanout" else workflows.fan_in
    result = fn(tmp_path, 20)
    key = "all_started_s" if scenario == "fanout" else "fanin_started_ms"
    assert result["n"] == 20 and result[key] > 0, result
    assert daemon_pids() == before  # the daemon was stopped and reaped
    for log in tmp_path.glob("*.out"):
        assert "Traceback" not in log.read_text()


def test_summary_and_table_from_raw_results() -> None:
    def rows(key: str, value: float) -> list[dict[str, float]]:
        return [{key: value}, {key: value * 3}, {key: value * 2}]

    raw = {
        "fanout": {"100": rows("all_started_s", 0.1), "1000": rows("all_started_s", 0.9)},
        "fanin": {"100": rows("fanin_started_ms", 10.0), "1000": rows("fanin_started_ms", 150.0)},
        "drain": {
            "main": [{"drain_jobs_per_s": 1000.0, "cpu_ms_per_job": 0.2}] * 3,
            "this": [{"drain_jobs_per_s": 960.0, "cpu_ms_per_job": 0.21}] * 3,
        },
    }
    summary = workflows.summarize(raw, [100, 1000])
    assert summary["fanout"]["ratio"] == pytest.approx(9.0)
    assert summary["fanin"]["ratio"] == pytest.approx(15.0)
    assert summary["drain"]["ratio_of_medians"] == pytest.approx(0.96)
    results = {
        "date": "2026-01-01", "python": "3.11", "sqlite": "3.40", "this": "a", "main": "b",
        "machine": {"nproc": 2, "cpu_model": "x", "loadavg": [1.0, 1.0, 1.0]},
        "args": {"reps": 3, "drain_reps": 3, "sizes": [100, 1000], "n": 20000},
        "raw": raw, "summary": summary,
    }  # fmt: skip
    table = workflows.render(results)
    assert "| 9.00 | <= ~10 (met) |" in table
    assert "| 15.00 | <= ~10 (MISSED) |" in table
    assert "| 0.960 | >= 0.95 (met) |" in table
    assert os.linesep in table
