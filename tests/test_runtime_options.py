"""Runtime tuning (--ov-hint, --ov-streams, --ort-opt-level, --ort-provider, --xnnpack) and bench --profile."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from cifarbench import backends
from cifarbench.backends.options import RuntimeOptions
from cifarbench.backends.profiling import onnxruntime_ops, summarize
from cifarbench.errors import BackendUnavailable, UsageError
from cifarbench.models.manifest import Manifest
from conftest import run_cli


@pytest.mark.parametrize("kwargs", [{"ov_hint": "fast"}, {"ov_streams": 0}, {"ov_streams": True}, {"ov_streams": 1.5},
                                    {"ort_opt_level": "max"}, {"ort_providers": "CPUExecutionProvider"},
                                    {"ort_providers": ("",)}])
def test_bad_options_are_usage_errors(kwargs: dict[str, Any]) -> None:
    with pytest.raises(UsageError):
        RuntimeOptions(**kwargs)


def test_options_round_trip_and_record_only_their_runtimes_fields() -> None:
    o = RuntimeOptions(ov_hint="latency", ov_streams=1, ort_opt_level="basic", ort_providers=("A", "A", "B"),
                       xnnpack=False)
    assert o.ort_providers == ("A", "B") and RuntimeOptions.from_dict(json.loads(json.dumps(o.as_dict()))) == o
    assert o.for_runtime("openvino") == {"ov_hint": "latency", "ov_streams": 1}
    assert o.for_runtime("onnxruntime") == {"ort_opt_level": "basic", "ort_providers": ["A", "B"]}
    assert o.for_runtime("ai-edge-litert") == {"xnnpack": False} and o.for_runtime("keras") == {}
    assert RuntimeOptions().as_dict() == {} and RuntimeOptions(xnnpack=True).as_dict() == {"xnnpack": True}
    with pytest.raises(UsageError, match="unknown runtime option"):
        RuntimeOptions.from_dict({"ov_hints": "latency"})


def test_a_plugin_without_options_is_refused_only_when_options_are_asked(tiny_model: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    m = Manifest.load(tiny_model)
    calls: list[tuple[Any, ...]] = []
    module = SimpleNamespace(load=lambda spec, manifest, device, threads: calls.append((spec.name, threads)) or "be")
    monkeypatch.setattr(backends.importlib, "import_module", lambda path: module)
    assert backends.load_backend("onnx-int8", m, "cpu", 1, RuntimeOptions()) == "be"
    with pytest.raises(UsageError, match="takes no runtime options"):
        backends.load_backend("onnx-int8", m, "cpu", 1, RuntimeOptions(ort_opt_level="basic"))
    assert calls == [("onnx-int8", 1)]


def _x(n: int = 16) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)


def test_onnxruntime_options_reach_the_session(tiny_model: Path) -> None:
    m = Manifest.load(tiny_model)
    plain = backends.load_backend("onnx", m)
    basic = backends.load_backend("onnx", m, options=RuntimeOptions(ort_opt_level="disable"))
    assert basic.describe()["graph_optimization"] == "disable" and plain.describe()["graph_optimization"] == "all"
    assert int(basic.session.get_session_options().graph_optimization_level) == 0  # ORT_DISABLE_ALL
    np.testing.assert_allclose(basic.predict(_x()), plain.predict(_x()), atol=1e-4)
    with pytest.raises(BackendUnavailable, match="NoSuchExecutionProvider"):
        backends.load_backend("onnx", m, options=RuntimeOptions(ort_providers=("NoSuchExecutionProvider",)))


def test_xnnpack_off_runs_litert_builtin_kernels(tiny_model: Path) -> None:
    pytest.importorskip("ai_edge_litert")
    m = Manifest.load(tiny_model)
    on = backends.load_backend("tflite-int8", m)
    off = backends.load_backend("tflite-int8", m, options=RuntimeOptions(xnnpack=False))
    assert off.describe()["delegates"] != on.describe()["delegates"]
    assert (off.predict(_x()).argmax(1) == on.predict(_x()).argmax(1)).mean() >= 0.9


def test_openvino_hint_and_streams(tiny_model: Path) -> None:
    pytest.importorskip("openvino")
    m = Manifest.load(tiny_model)
    plain = backends.load_backend("openvino-f32", m)
    lat = backends.load_backend("openvino-f32", m, options=RuntimeOptions(ov_hint="latency"))
    assert lat.latency_model is lat.throughput_model  # one hint for every batch size: one compiled model
    assert str(lat.throughput_model.get_property("PERFORMANCE_HINT")).upper().endswith("LATENCY")
    one = backends.load_backend("openvino-f32", m, options=RuntimeOptions(ov_streams=1))
    assert int(one.throughput_model.get_property("NUM_STREAMS")) == 1 and "1 streams" in one.describe()["mode"]
    for be in (lat, one):
        np.testing.assert_allclose(be.predict(_x()), plain.predict(_x()), atol=1e-4)


def test_summarize_by_hand() -> None:
    ops = summarize([("conv1", "Conv", 300.0), ("pool", "MaxPool", 100.0), ("conv1", "Conv", 500.0),
                     ("fc", "Gemm", 100.0)])
    assert [(o["op"], o["ms"], o["calls"]) for o in ops] == [("conv1", 0.8, 2), ("fc", 0.1, 1), ("pool", 0.1, 1)]
    assert ops[0]["share"] == pytest.approx(0.8) and summarize([]) == []


def test_profiles_from_each_runtime(tiny_model: Path, tmp_path: Path) -> None:
    m = Manifest.load(tiny_model)
    opts = RuntimeOptions(profile_dir=str(tmp_path))
    be = backends.load_backend("onnx-int8", m, options=opts)
    for _ in range(3):
        be.predict(_x())
    got = be.profile()
    events = json.loads(Path(got["file"]).read_text())
    kernels = [e for e in events if e.get("cat") == "Node" and e["name"].endswith("_kernel_time")]
    assert sum(o["calls"] for o in got["ops"]) == len(kernels) > 0  # every kernel run counted once
    assert sum(o["ms"] for o in got["ops"]) == pytest.approx(sum(e["dur"] for e in kernels) / 1000)
    assert got["ops"] == onnxruntime_ops(got["file"]) and got["file"].startswith(str(tmp_path))
    if backends.unavailable_reason("openvino-int8", m) is None:
        ov = backends.load_backend("openvino-int8", m, options=opts)
        ov.predict(_x())
        ov.predict(_x(1))
        p = ov.profile()
        assert Path(p["file"]).is_file() and p["ops"] and all(o["ms"] > 0 for o in p["ops"])
    if backends.unavailable_reason("tflite-int8", m) is None:
        lite = backends.load_backend("tflite-int8", m, options=opts).profile()
        assert lite["ops"] == [] and "no op profiling" in lite["unavailable"]


def test_bench_records_tuning_and_writes_profiles(tiny_model: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    r = run_cli("bench", "--model", str(tiny_model), "--backend", "onnx-int8", "--backend", "tflite-int8",
                "--batch-sizes", "1,8", "--limit", "32", "--min-time", "0", "--min-iters", "5", "--warmup", "1",
                "--no-isolate", "--ort-opt-level", "basic", "--no-xnnpack", "--profile", "--output-dir", str(out),
                "-q")
    assert r.exit_code == 0, r.stderr
    rows = {x["backend"]: x for x in json.loads((out / "results.json").read_text())["results"]}
    assert rows["onnx-int8"]["runtime"]["tuning"] == {"ort_opt_level": "basic"}
    assert rows["onnx-int8"]["profile"]["top_ops"] and Path(rows["onnx-int8"]["profile"]["file"]).is_file()
    assert Path(rows["onnx-int8"]["profile"]["file"]).parent.parent == out / "profiles"
    report = (out / "report.md").read_text()
    assert "## Per-op profile (top 10 by time)" in report and "tuning ort_opt_level=basic" in report
    if rows["tflite-int8"]["status"] == "ok":
        assert rows["tflite-int8"]["runtime"]["tuning"] == {"xnnpack": False}
        assert "no op profiling" in rows["tflite-int8"]["profile"]["unavailable"]


def test_openvino_static_batch_slices_match_and_are_capped(tiny_model: Path) -> None:
    """Equal slices run through a model reshaped to their static batch (as benchmark_app's -shape does): same
    probabilities as onnxruntime float32; at most MAX_STATIC such models, the dynamic one serves the rest."""
    pytest.importorskip("openvino")
    from cifarbench.backends import openvino_backend as ovb

    m = Manifest.load(tiny_model)
    be = backends.load_backend("openvino-f32", m, options=RuntimeOptions(ov_streams=2))
    ref = backends.load_backend("onnx", m)
    x = _x(64)
    sizes = [4, 6, 8, 10, 12, 14, 7]  # slices of 2, 3, 4, 5, 6, 7 images, then an odd batch (no equal slices)
    for n in sizes:
        np.testing.assert_allclose(be.predict(x[:n]), ref.predict(x[:n]), atol=1e-4)
    assert sorted(be._static) == [2, 3, 4, 5][: ovb.MAX_STATIC] and len(be._static) == ovb.MAX_STATIC
