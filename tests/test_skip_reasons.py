"""Why a backend cannot run: the model's missing artifact comes before a missing package (issue 24, item 9)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from cifarbench import backends
from cifarbench.models.manifest import Manifest
from conftest import REPO


def _without(monkeypatch: pytest.MonkeyPatch, *packages: str) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name in packages else real(name, *a))


def test_missing_artifact_is_the_reason_before_a_missing_package(monkeypatch: pytest.MonkeyPatch) -> None:
    baseline = Manifest.load(REPO / "trained" / "baseline-cnn")  # ships int8 artifacts only
    flagship = Manifest.load(REPO / "trained" / "flagship")  # ships a keras file
    assert "keras" not in baseline.artifacts and "keras" in flagship.artifacts
    _without(monkeypatch, "tensorflow", "openvino")
    assert backends.unavailable_reason("keras", baseline) == "model 'baseline-cnn' has no keras artifact"
    assert backends.unavailable_reason("keras", flagship).startswith("tensorflow is not installed")
    assert backends.unavailable_reason("openvino", baseline) == "model 'baseline-cnn' has no onnx artifact"
    assert backends.unavailable_reason("openvino-int8", baseline).startswith("openvino is not installed")
    assert backends.unavailable_reason("keras").startswith("tensorflow is not installed")  # no model: the package


def test_bench_row_shows_the_artifact_reason(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from cifarbench.bench import runner as bench

    _without(monkeypatch, "tensorflow")
    cfg = bench.BenchConfig(models=[str(REPO / "trained" / "baseline-cnn")], backends=["keras"], batch_sizes=[1])
    doc = bench.run_bench(cfg)
    (row,) = doc["results"]
    assert row["status"] == "skipped" and row["reason"] == "model 'baseline-cnn' has no keras artifact"
