"""The benchmarks run at a small N (CI smoke test): they work end to end; no timing is asserted."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))


def test_plan_scale_runs_and_reads_each_model_at_most_once(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import plan_scale

    figures = plan_scale.main(["--models", "3", "--rounds", "1", "--latency", "0.001", "--workdir", str(tmp_path)])
    out = capsys.readouterr().out
    assert "target <= 1.5x" in out and "target <= 2x" in out and "CPU per request ratio" in out
    assert figures["trains"] == 0
    assert all(figures[f"per_model.{t}"] <= 1.34 for t in plan_scale.TYPES)  # Lucid: 3 statuses + 1 batch list
    assert figures["per_model.predicthq"] == figures["per_model.photogpt"] == pytest.approx(1 / 3)


def test_daemon_scale_runs_and_a_resync_costs_no_more_than_a_plan(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import daemon_scale

    figures = daemon_scale.main(["--models", "3", "--cycles", "2", "--resync", "1s", "--workdir", str(tmp_path)])
    out = capsys.readouterr().out
    assert "target <= 150 MB" in out and "target <= 2 s" in out
    assert 0 < figures["resync_requests"] <= figures["plan_requests"]
    assert figures["rss_mb"] > 0 and figures["edit_s"] > 0
