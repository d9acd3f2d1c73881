"""results.json schema and its views (CSV, Markdown, plots), on a bench run through fake backends."""

from __future__ import annotations

import copy
import csv
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from cifarbench import backends
from cifarbench.bench import plots
from cifarbench.bench import report
from cifarbench.bench import runner as bench
from cifarbench.errors import DataError
from cifarbench.models.manifest import Manifest
from conftest import make_tree


class FakeBackend:
    """Deterministic probabilities from the pixels; ``shift`` moves 0.05 of mass from class 1 to class 0."""

    def __init__(self, name: str, shift: bool) -> None:
        self.name, self.device, self.shift = name, "cpu", shift

    def predict(self, batch: np.ndarray) -> np.ndarray:
        logits = batch.reshape(len(batch), -1)[:, :10].astype(np.float32) / 64.0
        p = np.exp(logits - logits.max(1, keepdims=True))
        p = 0.5 * p / p.sum(1, keepdims=True) + 0.05  # every class >= 0.05
        if self.shift:
            p[:, 0] += 0.05
            p[:, 1] -= 0.05
        return p.astype(np.float32)

    def describe(self) -> dict[str, Any]:
        return {"runtime": "fake", "threads": 1, "device": "cpu"}


@pytest.fixture(scope="module")
def doc(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("report")
    data = make_tree(root / "data", per_class=3, splits=("test",), seed=3)
    m = Manifest(name="fake", arch="fake")
    m.directory = root / "model"
    m.directory.mkdir()
    for fmt in ("onnx", "tflite-int8"):
        (m.directory / fmt).write_bytes(b"x" * 1000)
        m.add_artifact(fmt, fmt)
    m.save()
    mp = pytest.MonkeyPatch()
    mp.setattr(backends, "unavailable_reason",
               lambda name, manifest=None, device="cpu": None if name in m.artifacts else "no artifact (fake)")
    mp.setattr(backends, "load_backend", lambda name, manifest, device, threads: FakeBackend(name, name != "onnx"))
    try:
        cfg = bench.BenchConfig(models=[str(m.directory)], data=str(data), batch_sizes=[1, 4], min_time=0,
                                min_iters=5, warmup=0, command="cifarbench bench --test")
        return bench.run_bench(cfg)
    finally:
        mp.undo()


def test_run_document_matches_its_schema(doc: dict[str, Any]) -> None:
    assert report.validate(doc) == []
    assert doc["schema"] == "cifarbench.bench" and doc["schema_version"] == bench.SCHEMA_VERSION
    assert json.loads(report.to_json(doc)) == json.loads(json.dumps(doc, default=str))
    statuses = {r["backend"]: r["status"] for r in doc["results"]}
    assert statuses == {b: ("ok" if b in ("onnx", "tflite-int8") else "skipped") for b in backends.BACKENDS}


def test_fake_rows_compare_with_the_onnx_reference(doc: dict[str, Any]) -> None:
    rows = {r["backend"]: r for r in doc["results"]}
    assert doc["models"]["fake"]["reference"] == "onnx"
    assert rows["tflite-int8"]["agreement"]["max_abs_dprob"] == pytest.approx(0.05, abs=1e-6)
    assert rows["onnx"]["agreement"] == {"reference": "onnx", "top1": 1.0, "max_abs_dprob": 0.0}
    tp = {t["batch_size"]: t["images_per_s"] for t in rows["tflite-int8"]["throughput"]}
    ref = {t["batch_size"]: t["images_per_s"] for t in rows["onnx"]["throughput"]}
    assert rows["tflite-int8"]["speedup_by_batch"] == pytest.approx({str(b): tp[b] / ref[b] for b in (1, 4)})
    assert rows["tflite-int8"]["speedup"] == pytest.approx(tp[4] / ref[4])
    assert rows["onnx"]["size_bytes"] == 1000 and rows["onnx"]["runtime"]["runtime"] == "fake"


@pytest.mark.parametrize("mutate,needle", [
    (lambda d: d.pop("results"), "missing 'results'"),
    (lambda d: d.update(schema_version=99), "schema_version"),
    (lambda d: d["results"][0].update(status="maybe"), "status"),
    (lambda d: d["results"][0]["throughput"].append({"batch_size": "8"}), "batch_size: expected integer"),
    (lambda d: d["results"][0]["latency"].update(p99_ms="fast"), "p99_ms"),
    (lambda d: d["results"][0].update(size_bytes=True), "size_bytes"),
    (lambda d: d["environment"].pop("command"), "command"),
])
def test_schema_rejects_broken_documents(doc: dict[str, Any], mutate: Any, needle: str) -> None:
    bad = copy.deepcopy(doc)
    mutate(bad)
    errs = report.validate(bad)
    assert errs and any(needle in e for e in errs), errs


def test_load_results_refuses_other_json(tmp_path: Path) -> None:
    p = tmp_path / "results.json"
    p.write_text('{"schema": "something else"}')
    with pytest.raises(DataError, match="not cifarbench.bench version 2"):
        report.load_results(p)
    p.write_text("{not json")
    with pytest.raises(DataError, match="unreadable"):
        report.load_results(p)


def test_csv_one_row_per_model_and_backend(doc: dict[str, Any]) -> None:
    rows = list(csv.DictReader(io.StringIO(report.to_csv(doc))))
    assert len(rows) == len(backends.BACKENDS)
    ok = next(r for r in rows if r["backend"] == "onnx")
    onnx = next(r for r in doc["results"] if r["backend"] == "onnx")
    assert float(ok["accuracy"]) == pytest.approx(onnx["quality"]["accuracy"])
    assert float(ok["speedup_b4"]) == pytest.approx(1.0)
    assert {"img_per_s_b1", "img_per_s_b4", "p99_ms", "speedup", "size_mb", "peak_rss_mb"} <= set(ok)
    skipped = next(r for r in rows if r["backend"] == "keras")
    assert skipped["status"] == "skipped" and skipped["reason"] == "no artifact (fake)" and skipped["accuracy"] == ""


def test_markdown_report_sections(doc: dict[str, Any]) -> None:
    md = report.to_markdown(doc)
    for needle in ("## Summary", "## Latency at batch 1", "## Throughput", "## Decode and preprocess",
                   "## Environment", "## Per-class F1: fake", "no artifact (fake)", "`cifarbench bench --test`",
                   "Speed-up over the reference backend at each batch size", "test split, all 30 images\n",
                   doc["definitions"]["throughput"]):
        assert needle in md, needle


def test_write_outputs_with_and_without_matplotlib(doc: dict[str, Any], tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    files, notes = report.write_outputs(doc, tmp_path / "a")
    names = {f.name for f in files}
    if plots._pyplot() is not None:
        assert {"confusion_fake_onnx.png", "confusion_fake_tflite-int8.png", "latency.png",
                "throughput_vs_accuracy.png"} <= names and notes == []
    assert {"results.json", "results.csv", "report.md"} <= names
    assert report.load_results(tmp_path / "a" / "results.json")["results"] == json.loads(report.to_json(doc))["results"]
    monkeypatch.setattr(plots, "_pyplot", lambda: None)
    files, notes = report.write_outputs(doc, tmp_path / "b")
    assert {f.name for f in files} == {"results.json", "results.csv", "report.md", "per_class.csv"}
    assert notes and "matplotlib" in notes[0] and "matplotlib" in (tmp_path / "b" / "report.md").read_text()


def test_write_outputs_refuses_a_document_breaking_its_schema(doc: dict[str, Any], tmp_path: Path) -> None:
    bad = copy.deepcopy(doc)
    bad["results"][0]["status"] = "maybe"
    with pytest.raises(ValueError, match="schema"):
        report.write_outputs(bad, tmp_path)
    assert not (tmp_path / "results.json").exists()
