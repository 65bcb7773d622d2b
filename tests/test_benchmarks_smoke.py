"""The benchmarks run at a small N: their code paths, never their timings (those are printed
beside their targets by the scripts themselves)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest
from helpers import ROOT


def benchmark(name: str) -> ModuleType:
    """`benchmarks/<name>.py` as a module (the folder is scripts, not a package)."""
    spec = importlib.util.spec_from_file_location(f"benchmark_{name}", ROOT / "benchmarks" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_validate_scale_at_small_n(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    bench = benchmark("validate_scale")
    # the generated manifests are valid (the CLI must exit 0 on them) and name each model once
    written = bench.generate(tmp_path, 2, 5)
    assert bench.compose_floor(written) > 0
    figures = bench.run(files=2, docs=5, rounds=1)
    assert set(figures) == {"validate", "floor", "ratio", "version", "single"}
    out = capsys.readouterr().out
    for label in ("validate wall", "floor: C-loader compose", "validate / floor", "start-up --version"):
        assert label in out and "target" in out
    assert "10 TrainedModels (2 files x 5 documents)" in out


def test_plan_scale_runs_and_reads_each_model_at_most_once(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    plan_scale = benchmark("plan_scale")
    figures = plan_scale.main(["--models", "3", "--rounds", "1", "--latency", "0.001", "--workdir", str(tmp_path)])
    out = capsys.readouterr().out
    assert "target <= 1.5x" in out and "target <= 2x" in out and "CPU per request ratio" in out
    assert figures["trains"] == 0
    assert "start to exit" in out and figures["cli_wall"] > 0  # `reconciler plan` itself, in its own process
    assert all(figures[f"per_model.{t}"] <= 1.34 for t in plan_scale.TYPES)  # Lucid: 3 statuses + 1 batch list
    assert figures["per_model.predicthq"] == figures["per_model.photogpt"] == pytest.approx(1 / 3)


def test_daemon_scale_runs_and_a_resync_costs_no_more_than_a_plan(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    daemon_scale = benchmark("daemon_scale")
    figures = daemon_scale.main(["--models", "3", "--cycles", "2", "--resync", "1s", "--workdir", str(tmp_path)])
    out = capsys.readouterr().out
    assert "target <= 150 MB" in out and "target <= 2 s" in out
    assert 0 < figures["resync_requests"] <= figures["plan_requests"]
    assert figures["rss_mb"] > 0 and figures["edit_s"] > 0
