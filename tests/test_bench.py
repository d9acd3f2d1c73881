"""The bench core and `cifarbench bench`: timing loops on a fake clock, then tiny end-to-end runs."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from cifarbench import backends, bench, plots
from cifarbench.errors import ExitStatus, ModelError
from cifarbench.manifest import Manifest
from cifarbench.report import load_results, validate
from conftest import REPO, run_cli

FAST = ("--min-time", "0", "--min-iters", "5", "--warmup", "1", "--batch-sizes", "1,8", "--no-isolate")


class FakeClock:
    """Each call to the timed function advances time by ``step`` seconds."""

    def __init__(self, step: float) -> None:
        self.t, self.step, self.calls = 0.0, step, 0

    def __call__(self) -> float:
        return self.t

    def predict(self, batch: np.ndarray) -> np.ndarray:
        self.calls += 1
        self.t += self.step * len(batch)
        return np.zeros((len(batch), 10), np.float32)


IMAGES = np.arange(5 * 32 * 32 * 3, dtype=np.int64).astype(np.uint8).reshape(5, 32, 32, 3)


def test_latency_runs_until_both_iterations_and_time_are_met() -> None:
    clock = FakeClock(0.001)
    stats, warnings = bench.measure_latency(clock.predict, IMAGES, warmup=3, min_iters=10, min_time=0.5, clock=clock)
    assert stats["n"] == 500 and clock.calls == 503  # 0.5 s of 1 ms calls, warm-up not counted
    assert stats["p50_ms"] == pytest.approx(1.0) and stats["total_s"] == pytest.approx(0.5)
    assert warnings == []
    clock = FakeClock(0.001)
    stats, warnings = bench.measure_latency(clock.predict, IMAGES, warmup=0, min_iters=20, min_time=0.0, clock=clock)
    assert stats["n"] == 20
    assert warnings and "only 20" in warnings[0]


def test_throughput_counts_only_timed_calls() -> None:
    clock = FakeClock(0.001)
    tp = bench.measure_throughput(clock.predict, IMAGES, 4, min_time=0.1, min_calls=3, warmup=2, clock=clock)
    assert tp["calls"] == 25 and clock.calls == 27 and tp["images"] == 100
    assert tp["images_per_s"] == pytest.approx(1000.0)


def test_batches_wrap_around_the_data_at_exact_size() -> None:
    gen = bench.batches(IMAGES, 3)
    first, second, third = next(gen), next(gen), next(gen)
    assert [len(b) for b in (first, second, third)] == [3, 3, 3]
    assert (second[2] == IMAGES[0]).all() and (third[0] == IMAGES[1]).all()
    assert len(next(bench.batches(IMAGES, 12))) == 12


def test_predict_all_preallocates_and_checks_shape() -> None:
    p, seconds = bench.predict_all(lambda x: np.full((len(x), 10), 0.1, np.float32), IMAGES, 2, 10)
    assert p.shape == (5, 10) and seconds >= 0
    with pytest.raises(ModelError, match="shape"):
        bench.predict_all(lambda x: np.zeros((len(x), 3), np.float32), IMAGES, 2, 10)


def test_agreement() -> None:
    ref = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]], np.float32)
    other = np.array([[0.8, 0.2], [0.2, 0.8], [0.3, 0.7]], np.float32)
    a = bench.agreement(other, ref)
    assert a["top1"] == pytest.approx(2 / 3) and a["max_abs_dprob"] == pytest.approx(0.3)


def test_decode_timing_reads_encoded_files(synthetic_tree: Path) -> None:
    d = bench.measure_decode(str(synthetic_tree), 7)
    assert d["images"] == 7 and d["failed"] == 0 and d["images_per_s"] > 0
    assert bench.measure_decode("cifar10", 7)["images"] == 0


# --------------------------------------------------------------------------- end to end on the tiny model


def _bench(tmp_path: Path, *args: str) -> tuple[Any, dict[str, Any]]:
    out = tmp_path / "out"
    res = run_cli("bench", *args, "--output-dir", out, "--format", "json")
    doc = json.loads(res.stdout) if res.stdout.startswith("{") else {}
    return res, doc


def _no_keras(monkeypatch: pytest.MonkeyPatch) -> None:
    real = backends.unavailable_reason

    def fake(name: str, manifest: Any = None, device: str = "cpu") -> str | None:
        return "tensorflow is not installed (test)" if name == "keras" else real(name, manifest, device)

    monkeypatch.setattr(backends, "unavailable_reason", fake)


def test_all_with_keras_unavailable(tiny_model: Path, synthetic_tree: Path, tmp_path: Path,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    _no_keras(monkeypatch)
    res, doc = _bench(tmp_path, "--model", str(tiny_model), "--all", "--data", str(synthetic_tree), "--limit", "40", *FAST)
    assert res.exit_code == 0, res.stderr
    assert validate(doc) == []
    rows = {r["backend"]: r for r in doc["results"]}
    assert set(rows) == set(backends.BACKENDS)  # nothing silently dropped
    assert rows["keras"]["status"] == "skipped" and "not installed (test)" in rows["keras"]["reason"]
    ok = [r for r in doc["results"] if r["status"] == "ok"]
    assert {r["backend"] for r in ok} == set(backends.BACKENDS) - {"keras"}
    name = Manifest.load(tiny_model).name
    assert doc["models"][name]["reference"] == "onnx"
    for r in ok:
        assert np.sum(r["quality"]["confusion"]) == 40 == r["quality"]["support"]
        assert r["latency"]["n"] >= 5 and r["first_call_ms"] > 0
        assert [t["batch_size"] for t in r["throughput"]] == [1, 8]
        assert r["agreement"]["reference"] == "onnx" and 0 <= r["agreement"]["top1"] <= 1
        assert r["speedup"] > 0 and r["size_bytes"] > 0 and r["peak_rss_mb"] > 0
        assert any("only" in w for w in r["warnings"])  # 5 samples cannot back a p99
    assert rows["onnx"]["agreement"]["max_abs_dprob"] == 0 and rows["onnx"]["speedup"] == pytest.approx(1.0)
    assert rows["tflite"]["agreement"]["top1"] >= 0.95  # float32 vs float32
    assert doc["data"]["decode"]["images"] > 0 and doc["data"]["images"] == 40
    assert doc["environment"]["command"].startswith("cifarbench")
    out = tmp_path / "out"
    for name in ("results.json", "results.csv", "report.md", "latency.png", "throughput_vs_accuracy.png",
                 f"confusion_{name}_onnx.png"):
        assert (out / name).is_file(), name
    assert load_results(out / "results.json")["results"] == doc["results"]
    md = (out / "report.md").read_text()
    assert "skipped" in md and "not installed (test)" in md and "wall time of" in md
    assert "onnx: p99 rests on only" in md and "onnx: p99 rests on only" in res.stderr
    assert len((out / "results.csv").read_text().splitlines()) == 1 + len(backends.BACKENDS)


def test_keras_reference_and_table(tiny_model: Path, synthetic_tree: Path, tmp_path: Path) -> None:
    res = run_cli("bench", "--model", str(tiny_model), "--backend", "tflite-int8", "--backend", "keras",
                  "--data", str(synthetic_tree), "--limit", "30", *FAST, "--output-dir", tmp_path / "o")
    assert res.exit_code == 0, res.stderr
    assert "ref " in res.stdout and "tflite-int8" in res.stdout and "wall time of the backend calls" in res.stdout
    doc = load_results(tmp_path / "o" / "results.json")
    assert doc["models"][Manifest.load(tiny_model).name]["reference"] == "keras"
    int8 = next(r for r in doc["results"] if r["backend"] == "tflite-int8")
    assert int8["agreement"]["reference"] == "keras" and int8["accuracy_delta_pp"] is not None


def test_corrupt_artifact_is_a_failed_row_and_exit_3(tiny_model: Path, synthetic_tree: Path, tmp_path: Path) -> None:
    model = tmp_path / "m"
    shutil.copytree(tiny_model, model)
    with open(model / "model_int8.onnx", "ab") as fh:
        fh.write(b"garbage")
    res, doc = _bench(tmp_path, "--model", str(model), "--backend", "onnx", "--backend", "onnx-int8",
                      "--data", str(synthetic_tree), "--limit", "20", *FAST)
    assert res.exit_code == ExitStatus.PARTIAL
    rows = {r["backend"]: r for r in doc["results"]}
    assert rows["onnx"]["status"] == "ok"
    assert rows["onnx-int8"]["status"] == "failed" and "checksum" in rows["onnx-int8"]["reason"]
    assert (tmp_path / "out" / "report.md").is_file()


def test_nothing_runnable_exits_7_but_writes_the_report(tiny_model: Path, synthetic_tree: Path, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    _no_keras(monkeypatch)
    monkeypatch.setattr(plots, "_pyplot", lambda: None)
    res = run_cli("bench", "--model", str(tiny_model), "--backend", "keras", "--data", str(synthetic_tree),
                  *FAST, "--output-dir", tmp_path / "o")
    assert res.exit_code == ExitStatus.UNAVAILABLE
    assert "no model x backend could run" in res.stderr and "Traceback" not in res.stderr
    assert "keras skipped: tensorflow is not installed (test)" in res.stdout
    assert "matplotlib is not installed" in res.stderr
    assert (tmp_path / "o" / "results.json").is_file() and not list((tmp_path / "o").glob("*.png"))


@pytest.mark.parametrize("args,needle", [
    (("--all", "--backend", "onnx"), "exclude each other"),
    (("--batch-sizes", "1,x"), "comma-separated"),
    (("--batch-sizes", "0,4"), "positive"),
    (("--backend", "pytorch"), "pytorch"),
])
def test_bad_options_exit_2(args: tuple[str, ...], needle: str) -> None:
    res = run_cli("bench", "--model", "nowhere", *args)
    assert res.exit_code == ExitStatus.USAGE and needle in res.stderr


def test_unknown_model_is_a_one_line_error(tmp_path: Path) -> None:
    res = run_cli("bench", "--model", str(tmp_path / "missing"), "--backend", "onnx")
    assert res.exit_code == ExitStatus.DATA and res.stderr.count("\n") == 1 and "not found" in res.stderr


def test_onnx_and_tflite_rows_never_import_tensorflow(tiny_model: Path, synthetic_tree: Path) -> None:
    code = (
        "import sys; from cifarbench.bench import BenchConfig, run_bench\n"
        f"doc = run_bench(BenchConfig(models=[{str(tiny_model)!r}], backends=['onnx', 'tflite-int8'], "
        f"data={str(synthetic_tree)!r}, limit=10, batch_sizes=[1, 4], min_time=0, min_iters=3, warmup=1))\n"
        "assert [r['status'] for r in doc['results']] == ['ok', 'ok'], doc['results']\n"
        "assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_without_a_reference_the_comparisons_are_blank_and_said_so(tiny_model: Path, synthetic_tree: Path,
                                                                   tmp_path: Path) -> None:
    res, doc = _bench(tmp_path, "--model", str(tiny_model), "--backend", "tflite-int8", "--data", str(synthetic_tree),
                      "--limit", "10", *FAST)
    assert res.exit_code == 0
    row = doc["results"][0]
    assert row["status"] == "ok" and row["speedup"] is None and row["agreement"] == {}
    assert any("no reference backend measured" in w for w in doc["warnings"])
    assert "no reference backend measured" in res.stderr
