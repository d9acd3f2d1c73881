"""The bench core and `cifarbench bench`: timing loops on a fake clock, then tiny end-to-end runs."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from cifarbench import backends
from cifarbench.bench import derive as bench_derive
from cifarbench.bench import runner as bench
from cifarbench.bench import scenarios
from cifarbench.bench import worker as bench_worker
from cifarbench.bench.results_schema import load_results, validate
from cifarbench.errors import ExitStatus, ModelError
from cifarbench.models.manifest import Manifest
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
    stats, warnings = scenarios.measure_latency(clock.predict, IMAGES, warmup=3, min_iters=10, min_time=0.5, clock=clock)
    assert stats["n"] == 500 and clock.calls == 503  # 0.5 s of 1 ms calls, warm-up not counted
    assert stats["p50_ms"] == pytest.approx(1.0) and stats["total_s"] == pytest.approx(0.5)
    assert warnings == []
    clock = FakeClock(0.001)
    stats, warnings = scenarios.measure_latency(clock.predict, IMAGES, warmup=0, min_iters=20, min_time=0.0, clock=clock)
    assert stats["n"] == 20
    assert warnings and "only 20" in warnings[0]


def test_throughput_counts_only_timed_calls() -> None:
    clock = FakeClock(0.001)
    tp = scenarios.measure_throughput(clock.predict, IMAGES, 4, min_time=0.1, min_calls=3, warmup=2, clock=clock)
    assert tp["calls"] == 25 and clock.calls == 27 and tp["images"] == 100
    assert tp["images_per_s"] == pytest.approx(1000.0)


def test_batches_wrap_around_the_data_at_exact_size() -> None:
    gen = scenarios.batches(IMAGES, 3)
    first, second, third = next(gen), next(gen), next(gen)
    assert [len(b) for b in (first, second, third)] == [3, 3, 3]
    assert (second[2] == IMAGES[0]).all() and (third[0] == IMAGES[1]).all()
    assert len(next(scenarios.batches(IMAGES, 12))) == 12


def test_predict_all_preallocates_and_checks_shape() -> None:
    p, seconds = scenarios.predict_all(lambda x: np.full((len(x), 10), 0.1, np.float32), IMAGES, 2, 10)
    assert p.shape == (5, 10) and seconds >= 0
    with pytest.raises(ModelError, match="shape"):
        scenarios.predict_all(lambda x: np.zeros((len(x), 3), np.float32), IMAGES, 2, 10)


def test_agreement() -> None:
    ref = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]], np.float32)
    other = np.array([[0.8, 0.2], [0.2, 0.8], [0.3, 0.7]], np.float32)
    a = bench_derive.agreement(other, ref)
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


def test_nothing_runnable_exits_7_and_writes_nothing(tiny_model: Path, synthetic_tree: Path, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    _no_keras(monkeypatch)
    res = run_cli("bench", "--model", str(tiny_model), "--backend", "keras", "--data", str(synthetic_tree),
                  *FAST, "--output-dir", tmp_path / "o")
    assert res.exit_code == ExitStatus.UNAVAILABLE
    assert "no model x backend could run" in res.stderr and "Traceback" not in res.stderr
    assert "keras: skipped (tensorflow is not installed (test))" in res.stderr and res.stdout == ""
    assert not (tmp_path / "o").exists()  # no result files of blanks (issue 24)


@pytest.mark.parametrize("args,needle", [
    (("--all", "--backend", "onnx"), "exclude each other"),
    (("--batch-sizes", "1,x"), "comma-separated"),
    (("--batch-sizes", "0,4"), "positive"),
    (("--backend", "pytorch"), "pytorch"),
    (("--threads", "0"), "positive"),
    (("--threads", "a,b"), "comma-separated"),
    (("--repeat", "0"), "repeat"),
    (("--scenario", "batch"), "batch"),
])
def test_bad_options_exit_2(args: tuple[str, ...], needle: str) -> None:
    res = run_cli("bench", "--model", "nowhere", *args)
    assert res.exit_code == ExitStatus.USAGE and needle in res.stderr


def test_max_pixels_reaches_isolated_rows_and_the_data_cache(tiny_model: Path, tmp_path: Path) -> None:
    """An image over --max-pixels is left out of every row (the isolated child loads under the same limit), said so."""
    from PIL import Image

    from conftest import class_pattern, make_tree

    data = make_tree(tmp_path / "data", per_class=2, splits=("test",))
    big = np.tile(class_pattern(3, np.random.default_rng(0)), (2, 2, 1))  # 64 x 64 = 4,096 pixels
    Image.fromarray(big).save(data / "test" / "cat" / "big.png")
    args = ("--model", str(tiny_model), "--backend", "onnx", "--data", str(data), "--scenario", "offline",
            *[a for a in FAST if a != "--no-isolate"], "--isolate")
    res, doc = _bench(tmp_path / "default", *args)  # first: the default limit, and its cache entry
    assert res.exit_code == 0, res.stderr
    assert doc["data"]["images"] == 21 and doc["data"]["left_out"] == 0
    assert doc["results"][0]["quality"]["support"] == 21
    res, doc = _bench(tmp_path / "limited", *args, "--max-pixels", "2000")
    assert res.exit_code == 0, res.stderr
    assert doc["config"]["max_pixels"] == 2000
    assert doc["data"]["images"] == 20 and doc["data"]["left_out"] == 1  # not the cached 21 of the first run
    assert "big.png" in doc["data"]["left_out_examples"][0] and "--max-pixels" in doc["data"]["left_out_examples"][0]
    row = doc["results"][0]
    assert row["status"] == "ok" and row["isolated"] and row["quality"]["support"] == 20  # the child's own load
    assert "1 data image(s) could not be used" in res.stderr


def test_unknown_model_is_a_one_line_error(tmp_path: Path) -> None:
    res = run_cli("bench", "--model", str(tmp_path / "missing"), "--backend", "onnx")
    assert res.exit_code == ExitStatus.DATA and res.stderr.count("\n") == 1 and "not found" in res.stderr


def test_onnx_and_tflite_rows_never_import_tensorflow(tiny_model: Path, synthetic_tree: Path) -> None:
    code = (
        "import sys; from cifarbench.bench.runner import BenchConfig, run_bench\n"
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


# --------------------------------------------------------------------------- bench v2: isolation, repeats, sweeps, scenarios


def test_isolated_rows_measure_in_their_own_process(tiny_model: Path, synthetic_tree: Path, tmp_path: Path) -> None:
    model = tmp_path / "m"
    shutil.copytree(tiny_model, model)
    with open(model / "model_int8.onnx", "ab") as fh:
        fh.write(b"garbage")
    res, doc = _bench(tmp_path, "--model", str(model), "--backend", "onnx", "--backend", "tflite-int8",
                      "--backend", "onnx-int8", "--data", str(synthetic_tree), "--limit", "20",
                      *[a for a in FAST if a != "--no-isolate"], "--isolate", "--threads", "1")
    assert res.exit_code == ExitStatus.PARTIAL, res.stderr
    rows = {r["backend"]: r for r in doc["results"]}
    assert rows["onnx-int8"]["status"] == "failed" and "checksum" in rows["onnx-int8"]["reason"]
    parent = bench_worker.peak_rss_mb()  # this process imported TensorFlow to build the tiny model
    for name in ("onnx", "tflite-int8"):
        r = rows[name]
        assert r["status"] == "ok" and r["isolated"] and r["load_s"] > 0 and r["quality"]["support"] == 20
        assert 0 < r["peak_rss_mb"] < parent  # the child's own high-water mark, not this process's
        usable = sorted(os.sched_getaffinity(0))
        assert r["pinned_cpus"] == (usable[:1] if len(usable) > 1 else None)  # 1 thread: pinned to one CPU
    assert rows["tflite-int8"]["agreement"]["reference"] == "onnx"  # probabilities came back from the child
    assert doc["environment"]["isolated"] is True


def test_repeats_thread_sweep_and_quiet(tiny_model: Path, synthetic_tree: Path, tmp_path: Path) -> None:
    out = tmp_path / "o"
    res = run_cli("bench", "--model", tiny_model, "--backend", "onnx", "--backend", "onnx-int8", "--data", synthetic_tree,
                  "--limit", "20", *FAST, "--repeat", "3", "--threads", "1,2", "--output-dir", out, "-q")
    assert res.exit_code == 0 and res.stdout == "" and res.stderr == "", res.stderr
    doc = load_results(out / "results.json")
    assert [(r["backend"], r["threads"]) for r in doc["results"]] == [("onnx", 1), ("onnx", 2), ("onnx-int8", 1),
                                                                       ("onnx-int8", 2)]
    for r in doc["results"]:
        rep = r["repeat"]
        assert rep["n"] == 3 and len(rep["images_per_s"]["values"]) == 3
        assert rep["images_per_s"]["min"] <= rep["images_per_s"]["median"] <= rep["images_per_s"]["max"]
        assert r["throughput"][-1]["images_per_s"] == rep["images_per_s"]["median"]  # the median repeat is shown
        assert r["runtime"]["threads"] == r["threads"]
        assert r["agreement"]["reference"] == "onnx"  # each thread count has its own reference row
    md = (out / "report.md").read_text()
    assert "## Repeats: median (min–max)" in md and "onnx-int8 (2t)" in md
    assert "threads" in (out / "results.csv").read_text().splitlines()[0]


def test_server_scenario_and_auto(tiny_model: Path, synthetic_tree: Path, tmp_path: Path) -> None:
    res, doc = _bench(tmp_path, "--model", str(tiny_model), "--backend", "auto", "--data", str(synthetic_tree),
                      "--limit", "20", *FAST, "--scenario", "single-stream", "--scenario", "server",
                      "--server-time", "0.2", "--server-rate", "50", "--p99-bound-ms", "50")
    assert res.exit_code == 0, res.stderr
    name = Manifest.load(tiny_model).name
    auto = doc["models"][name]["auto"]
    assert auto["backend"] in backends.auto_candidates(Manifest.load(tiny_model))
    (row,) = doc["results"]
    assert row["backend"] == auto["backend"] and row["throughput"][0]["batch_size"] == 1  # no offline sweep
    at = row["server"]["at_rate"]
    assert at["target_rate"] == 50 and at["queries"] > 0 and at["achieved_rate"] > 0 and at["p50_ms"] <= at["p99_ms"]
    search = row["server"]["search"]
    assert search["p99_bound_ms"] == 50 and search["trials"]
    if search["max_rate"] is not None:
        assert search["at_max"]["p99_ms"] <= 50
    md = (tmp_path / "out" / "report.md").read_text()
    assert "## Server scenario" in md


def test_int8_loss_is_flagged_from_the_manifest_and_from_bench(tiny_model: Path, synthetic_tree: Path,
                                                               tmp_path: Path) -> None:
    model = tmp_path / "m"
    shutil.copytree(tiny_model, model)
    m = Manifest.load(model)
    m.artifacts["tflite-int8"].parity["accuracy_drop_pp"] = 1.7
    m.save(model)
    res = run_cli("bench", "--model", model, "--backend", "onnx", "--backend", "tflite-int8", "--data", synthetic_tree,
                  "--limit", "20", *FAST, "--output-dir", tmp_path / "o")
    assert res.exit_code == 0, res.stderr
    doc = load_results(tmp_path / "o" / "results.json")
    row = next(r for r in doc["results"] if r["backend"] == "tflite-int8")
    assert row["manifest_int8_loss_pp"] == 1.7 and any("1.70 pp > 1 pp (manifest parity check)" in f for f in row["flags"])
    assert row["int8_loss_pp"] == pytest.approx(-row["accuracy_delta_pp"])
    assert "! " in res.stdout and "manifest parity check" in res.stdout
    assert "## Flags" in (tmp_path / "o" / "report.md").read_text()
    # bench's own measurement: an int8 row 2 pp below its fp32 reference
    r = bench.Row(model="x", backend="onnx-int8")
    bench_derive.flag_int8(r, -2.0)
    assert r.int8_loss_pp == 2.0 and r.flags == ["int8 accuracy loss 2.00 pp > 1 pp (measured here)"]
    fp32 = bench.Row(model="x", backend="onnx")
    bench_derive.flag_int8(fp32, -2.0)
    assert fp32.flags == [] and fp32.int8_loss_pp is None


def test_parity_warnings_from_convert_show_on_their_rows(tiny_model: Path, synthetic_tree: Path, tmp_path: Path) -> None:
    """The manifest's parity warnings (float16 rounding, int8 loss) reach the table, report.md, results and stderr."""
    from cifarbench.conversion.parity import judge

    model = tmp_path / "m"
    shutil.copytree(tiny_model, model)
    m = Manifest.load(model)
    fp16 = m.artifacts["tflite-fp16"].parity
    fp16.update(top1_agreement=0.99, max_abs_dprob=0.02)  # as a small sample with one flip would give
    judge("tflite-fp16", fp16, {"accuracy": fp16["accuracy"]})
    i8 = m.artifacts["tflite-int8"].parity
    judge("tflite-int8", i8, {"accuracy": i8["accuracy"] + 0.017})
    assert fp16["warning"].startswith("float16 rounding") and i8["warning"].startswith("int8 loses 1.70 pp")
    m.save(model)
    res = run_cli("bench", "--model", model, "--backend", "onnx", "--backend", "tflite-fp16", "--backend", "tflite-int8",
                  "--data", synthetic_tree, "--limit", "20", *FAST, "--output-dir", tmp_path / "o")
    assert res.exit_code == 0, res.stderr
    rows = {r["backend"]: r for r in load_results(tmp_path / "o" / "results.json")["results"]}
    assert rows["tflite-fp16"]["flags"] == [f"convert's parity check: {fp16['warning']}"]
    manifest_flags = [f for f in rows["tflite-int8"]["flags"] if "measured here" not in f]
    assert manifest_flags == [f"convert's parity check: {i8['warning']}"]  # once, not again as a loss flag
    assert rows["onnx"]["flags"] == []
    report_md = (tmp_path / "o" / "report.md").read_text()
    for fmt, w in (("tflite-fp16", fp16["warning"]), ("tflite-int8", i8["warning"])):
        assert f"! {m.name}/{fmt}: convert's parity check: {w}" in res.stdout
        assert f"warning: {m.name}/{fmt}: convert's parity check: {w}" in res.stderr
        assert f"**{m.name} / {fmt}**: convert's parity check: {w}" in report_md
    assert f"warning: {m.name}/onnx: convert's" not in res.stderr
    quiet = run_cli("bench", "--model", model, "--backend", "tflite-fp16", "--data", synthetic_tree, "--limit", "20",
                    *FAST, "--output-dir", tmp_path / "q", "-q")
    assert quiet.exit_code == 0 and quiet.stdout == "" and quiet.stderr == ""


def test_row_schema_is_derived_from_row_and_v1_results_still_load() -> None:
    from dataclasses import asdict, fields

    from cifarbench.bench.results_schema import row_schema

    schema = row_schema()
    assert schema["required"] == [f.name for f in fields(bench.Row)]
    assert validate(asdict(bench.Row(model="m", backend="onnx", status="skipped", reason="r")), schema) == []
    bad = asdict(bench.Row(model="m", backend="onnx"))
    del bad["repeat"]
    bad["threads"] = "two"
    errs = validate(bad, schema)
    assert any("missing 'repeat'" in e for e in errs) and any("threads" in e for e in errs)
    v1 = load_results(REPO / "benchmarks" / "results" / "results.json")  # written by the first release
    assert v1["schema_version"] == bench.SCHEMA_VERSION and all(r["threads"] is None for r in v1["results"])


def test_decode_timing_reads_archives_through_the_data_layer() -> None:
    d = bench.measure_decode("bundled", 5)
    assert d["images"] == 5 and d["failed"] == 0


@pytest.mark.slow  # benches the shipped flagship with TTA: ~11 s on an idle 2-core box
def test_tta_accuracy_and_cost_beside_single_view(tmp_path: Path) -> None:
    """--tta flip re-runs the accuracy pass over the image and its mirror, with the shipped model."""
    out = tmp_path / "o"
    res = run_cli("bench", "--model", "flagship", "--backend", "onnx", "--limit", "64", *FAST, "--tta", "flip",
                  "--output-dir", out, "-q")
    assert res.exit_code == 0, res.stderr
    r = load_results(out / "results.json")["results"][0]
    assert r["tta"]["mode"] == "flip" and r["tta"]["views"] == 2 and 0.0 <= r["tta"]["accuracy"] <= 1.0
    # the cost is the TTA pass's time over the single-view pass's, both recorded: recomputed from them, not timed here
    # (on a loaded 2-core host 64 images' two views once took 0.64x the single pass's time)
    tta_seconds = r["eval"]["images"] / r["tta"]["images_per_s"]
    assert r["tta"]["cost_x"] == pytest.approx(tta_seconds / r["eval"]["seconds"], rel=1e-9)
    assert "Test-time augmentation" in (out / "report.md").read_text()
    assert "tta_accuracy" in (out / "results.csv").read_text().splitlines()[0]
