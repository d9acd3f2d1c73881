"""OpenVINO backends: parity with onnxruntime on the shipped artifacts, both execution paths, threads,
the per-process compile cache, CLI classify, bench rows, and the reasons it cannot run."""

from __future__ import annotations

import csv
import importlib.util
import io
import json
import os
import subprocess
import sys
import textwrap
import threading
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cifarbench import backends
from cifarbench.errors import ExitStatus, ModelError
from cifarbench.models.model_ref import resolve_model
from conftest import make_tree, run_cli

if importlib.util.find_spec("openvino") is None:
    pytest.skip("openvino is not installed (pip install 'cifarbench[openvino]')", allow_module_level=True)
from cifarbench.backends import openvino_backend as ovb  # noqa: E402

ov = ovb.import_openvino()  # as the backend does: a plain `import openvino` would send its import telemetry
# Whether OpenVINO itself runs bf16 here: its own CPU capability list, not /proc/cpuinfo. The two agree on real
# hosts, but the runtime reads CPUID, so a test that predicted its precision from our flag parse would fail under
# benchmarks/cpus/emulate.py (AVX2 flags on a bf16 host) and on any VM whose cpuinfo and CPUID disagree.
OV_BF16 = "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")

PARITY_IMAGES = 300


@pytest.fixture(scope="module")
def sample() -> np.ndarray:
    """A seeded random 300 of the bundled 10,000 test images (the archive lists them class by class)."""
    from cifarbench.data.sources import load_dataset

    ds = load_dataset("bundled", "test")
    idx = np.sort(np.random.default_rng(0).permutation(len(ds))[:PARITY_IMAGES])
    return np.ascontiguousarray(ds.images[idx])


# --------------------------------------------------------------------------- parity with onnxruntime
# Same ONNX file, two runtimes. float32: both compute in f32 on this CPU, so probabilities agree to rounding
# (measured max |dp| 7.7e-7 on 2,048 images); on a CPU with native bf16 `openvino` runs bf16, so only
# `openvino-f32` keeps the tight bound. int8 QDQ: onnxruntime returns the output quantized to 1/255 steps,
# OpenVINO keeps it in f32 (measured max |dp| 0.0196, top-1 agreement 1.0 on 2,048 images).
PARITY = [
    ("flagship", "openvino-f32", "onnx", 0.999, 1e-4),
    ("flagship", "openvino", "onnx", 0.99 if OV_BF16 else 0.999, 5e-2 if OV_BF16 else 1e-4),
    ("flagship", "openvino-int8", "onnx-int8", 0.99, 5e-2),
    ("baseline-cnn", "openvino-int8", "onnx-int8", 0.99, 5e-2),
]


@pytest.mark.parametrize("model,backend,reference,min_top1,max_dp", PARITY)
def test_parity_with_onnxruntime_on_the_bundled_split(sample: np.ndarray, model: str, backend: str, reference: str,
                                                      min_top1: float, max_dp: float) -> None:
    m = resolve_model(model)
    ref = backends.load_backend(reference, m).predict(sample)
    be = backends.load_backend(backend, m)
    got = np.concatenate([be.predict(sample[i: i + 256]) for i in range(0, len(sample), 256)])
    assert got.shape == (PARITY_IMAGES, len(m.classes)) and got.dtype == np.float32
    assert np.allclose(got.sum(1), 1.0, atol=3e-2 if "int8" in backend else 1e-5)  # int8: 1/255 output steps
    top1 = float(np.mean(got.argmax(1) == ref.argmax(1)))
    dp = float(np.max(np.abs(got - ref)))
    assert top1 >= min_top1 and dp <= max_dp, (top1, dp)


@pytest.mark.parametrize("backend", ["openvino", "openvino-int8"])
def test_latency_and_throughput_paths_agree(sample: np.ndarray, backend: str) -> None:
    """Batch 1 runs the latency-compiled model, larger batches the throughput one: same answers."""
    be = backends.load_backend(backend, resolve_model("flagship"))
    batch = be.predict(sample[:40])
    single = np.concatenate([be.predict(sample[i: i + 1]) for i in range(40)])
    assert np.max(np.abs(batch - single)) <= 1e-5


def test_awkward_batch_sizes_keep_row_order(sample: np.ndarray, monkeypatch: pytest.MonkeyPatch) -> None:
    """Empty, tiny, odd and larger-than-all-requests batches (spans wrap round the requests) keep rows in order."""
    monkeypatch.setattr(ovb, "MAX_CHUNK", 16)  # the real round-robin over requests, on a test-sized batch
    be = backends.load_backend("openvino-int8", resolve_model("baseline-cnn"), threads=2)
    assert be.predict(sample[:0]).shape == (0, 10)
    big = sample[: 2 * ovb.MAX_CHUNK * len(be._requests) + 37]  # each request takes 2+ spans
    whole = be.predict(big)
    assert whole.shape == (len(big), 10)
    by_parts = np.concatenate([be.predict(big[i: i + 3]) for i in range(0, 30, 3)] +
                              [be.predict(big[i: i + 23]) for i in range(30, len(big), 23)])
    assert np.max(np.abs(whole - by_parts)) <= 1e-5
    assert np.max(np.abs(be.predict(big[:10:2]) - whole[:10:2])) <= 1e-5  # a strided view is the same pixels


def test_concurrent_callers_get_their_own_rows(sample: np.ndarray) -> None:
    be = backends.load_backend("openvino-int8", resolve_model("flagship"))
    expect = {k: be.predict(sample[k * 20: (k + 1) * 20]) for k in range(4)}
    got: dict[int, np.ndarray] = {}

    def work(k: int) -> None:
        for _ in range(3):
            got[k] = be.predict(sample[k * 20: (k + 1) * 20])

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for k in range(4):
        assert np.array_equal(got[k], expect[k])


# --------------------------------------------------------------------------- what ran: precision, mode, threads
def test_describe_reports_what_the_runtime_compiled() -> None:
    m = resolve_model("flagship")
    fp = backends.load_backend("openvino", m).describe()
    strict = backends.load_backend("openvino-f32", m).describe()
    int8 = backends.load_backend("openvino-int8", m).describe()
    assert fp["runtime"] == "openvino" and fp["device"] == "cpu"
    assert strict["precision"] == "f32" and strict["precision_requested"] == "f32"
    # the runtime default: bf16 where the CPU has it natively, f32 otherwise (an AVX2-only Zen 3)
    assert fp["precision"].startswith("bf16" if OV_BF16 else "f32")
    assert int8["precision"].split()[0] in ("u8", "i8")  # the convolutions really run in 8 bits
    assert "throughput" in int8["mode"] and "latency" in int8["mode"]
    assert fp["cpu_pinning"] is False  # read back: a pinned thread stalls on a core another process holds


def test_precision_summary() -> None:
    assert ovb.precision_summary("f32", Counter({"f32": 8})) == "f32"
    assert ovb.precision_summary("f32", Counter()) == "f32"
    assert ovb.precision_summary("f32", Counter({"u8": 7, "f32": 1})) == \
        "u8 conv/matmul (7 of 8), f32 conv/matmul (1 of 8), f32 elsewhere"


@pytest.mark.parametrize("threads", [1, 2])
def test_threads_reach_the_runtime(threads: int) -> None:
    be = backends.load_backend("openvino-int8", resolve_model("flagship"), threads=threads)
    assert be.describe()["threads"] == threads
    assert int(be.latency_model.get_property("INFERENCE_NUM_THREADS")) == threads
    assert int(be.throughput_model.get_property("INFERENCE_NUM_THREADS")) == threads
    if threads == 1:  # one thread cannot feed two streams
        assert int(be.throughput_model.get_property("NUM_STREAMS")) == 1


def test_compiled_models_are_cached_per_process() -> None:
    m = resolve_model("flagship")
    a = backends.load_backend("openvino-int8", m, threads=1)
    b = backends.load_backend("openvino-int8", m, threads=1)
    c = backends.load_backend("openvino-int8", m, threads=2)
    strict = backends.load_backend("openvino-f32", m, threads=1)
    plain = backends.load_backend("openvino", m, threads=1)
    assert a.latency_model is b.latency_model and a.throughput_model is b.throughput_model
    assert a.latency_model is not c.latency_model  # other settings: another compilation
    assert strict.latency_model is not plain.latency_model


def test_a_corrupt_onnx_file_is_one_line_exit_4(tmp_path: Path) -> None:
    bad = tmp_path / "model.onnx"
    bad.write_bytes(b"\x08\x07not a protobuf at all" * 10)
    with pytest.raises(ModelError, match="OpenVINO cannot load it"):
        ovb.OpenVINOBackend("openvino", str(bad), "cpu", None)
    r = run_cli("classify", str(tmp_path), "-m", str(bad), "-b", "openvino")
    assert r.exit_code == ExitStatus.DATA and len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr


# --------------------------------------------------------------------------- classify and bench through the CLI
def _write_pngs(folder: Path, images: np.ndarray) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, img in enumerate(images):
        paths.append(folder / f"img{i:03d}.png")
        Image.fromarray(img).save(paths[-1])
    return paths


def test_classify_cli_with_openvino_int8_never_imports_tensorflow(sample: np.ndarray, tmp_path: Path) -> None:
    """A subprocess like a user's: labels as OpenVINO computes them in-process, nothing on stderr with -q,
    and none of OpenVINO's import-time telemetry: no openvino_telemetry module, no ~/intel/ files, no child."""
    images = sample[:23]
    _write_pngs(tmp_path / "in", images)
    out = tmp_path / "labels.csv"
    code = textwrap.dedent("""
        import json, sys
        from cifarbench.cli import cli
        try:
            cli.main(sys.argv[1:], prog_name="cifarbench")
        except SystemExit as exc:
            status = exc.code
        import multiprocessing
        heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("tensorflow", "keras", "tf_keras", "tf2onnx"))
        print(json.dumps({"status": status, "heavy": heavy, "openvino": "openvino" in sys.modules,
                          "telemetry": repr(sys.modules.get("openvino_telemetry")),
                          "children": len(multiprocessing.active_children())}))
    """)
    home = tmp_path / "home"
    home.mkdir()
    p = subprocess.run([sys.executable, "-c", code, "classify", str(tmp_path / "in"), "-b", "openvino-int8",
                        "--threads", "1", "--batch-size", "8", "-o", str(out), "-q"],
                       capture_output=True, text=True, timeout=300, env={**os.environ, "HOME": str(home)})
    assert json.loads(p.stdout.strip().splitlines()[-1]) == \
        {"status": 0, "heavy": [], "openvino": True, "telemetry": "None", "children": 0}, p.stderr
    assert p.stderr == "" and list(home.iterdir()) == []
    rows = list(csv.DictReader(out.open(encoding="utf-8")))
    expect = backends.load_backend("openvino-int8", resolve_model("flagship")).predict(images)
    assert [Path(r["path"]).name for r in rows] == [f"img{i:03d}.png" for i in range(len(images))]
    assert [int(r["class_index"]) for r in rows] == expect.argmax(1).tolist()
    assert np.allclose([float(r["confidence"]) for r in rows], expect.max(1), atol=1e-4)


def test_classify_library_reports_the_runtime(sample: np.ndarray, tmp_path: Path) -> None:
    from cifarbench.runs import classify

    _write_pngs(tmp_path, sample[:3])
    rep = classify.classify([tmp_path], backend="openvino-int8", threads=1, stream=io.StringIO())
    assert rep.exit_status == ExitStatus.OK and rep.backend == "openvino-int8"
    assert rep.runtime["runtime"] == "openvino" and rep.runtime["threads"] == 1


def test_bench_rows_show_precision_and_mode(tmp_path: Path) -> None:
    data = make_tree(tmp_path / "data", per_class=4, splits=("test",))  # 40 tiny PNGs: the row, not the data, is tested
    r = run_cli("bench", "--model", "flagship", "--backend", "onnx", "--backend", "openvino-int8", "--data", str(data),
                "--batch-sizes", "1,8", "--min-time", "0", "--min-iters", "5", "--warmup", "1", "--no-isolate",
                "--output-dir", str(tmp_path / "out"), "--format", "md")
    assert r.exit_code == 0, r.stderr
    doc = json.loads((tmp_path / "out" / "results.json").read_text(encoding="utf-8"))
    row = next(x for x in doc["results"] if x["backend"] == "openvino-int8")
    assert row["status"] == "ok" and row["agreement"]["reference"] == "onnx" and 0 <= row["agreement"]["top1"] <= 1
    assert row["runtime"]["runtime"] == "openvino" and row["runtime"]["precision"].startswith(("u8", "i8"))
    assert f"- flagship / openvino-int8: precision {row['runtime']['precision']}; mode " in r.stdout
    assert "openvino-int8" in (tmp_path / "out" / "results.csv").read_text(encoding="utf-8").split("runtime_note")[1]


# --------------------------------------------------------------------------- cannot run: why
def test_gpu_reason_or_gpu_run(sample: np.ndarray) -> None:
    m = resolve_model("flagship")
    if any(d.startswith("GPU") for d in ov.Core().available_devices):
        be = backends.load_backend("openvino-int8", m, "gpu")
        assert be.describe()["ov_device"] == "GPU" and be.predict(sample[:4]).shape == (4, 10)
    else:
        reason = backends.unavailable_reason("openvino-int8", m, "gpu")
        assert reason and "OpenVINO finds no GPU device" in reason
        r = run_cli("classify", ".", "-b", "openvino-int8", "--device", "gpu")
        assert r.exit_code == ExitStatus.UNAVAILABLE and "OpenVINO finds no GPU device" in r.stderr


def test_missing_artifact_is_a_reason() -> None:
    assert backends.unavailable_reason("openvino", resolve_model("baseline-cnn")) == \
        "model 'baseline-cnn' has no onnx artifact"


def test_not_installed_is_exit_7_with_the_extra_to_install(tmp_path: Path) -> None:
    """A Python where `import openvino` fails: classify names the extra, bench lists the rows as skipped."""
    _write_pngs(tmp_path / "in", np.zeros((1, 32, 32, 3), np.uint8))
    code = textwrap.dedent("""
        import sys
        sys.modules["openvino"] = None  # what an install without the openvino extra looks like to importlib
        from cifarbench.cli import cli
        cli.main(sys.argv[1:], prog_name="cifarbench")
    """)
    p = subprocess.run([sys.executable, "-c", code, "classify", str(tmp_path / "in"), "-b", "openvino-int8"],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == ExitStatus.UNAVAILABLE and p.stdout == ""
    assert "openvino is not installed (pip install 'cifarbench[openvino]')" in p.stderr
    p = subprocess.run([sys.executable, "-c", code, "bench", "--model", "flagship", "--backend", "openvino",
                        "--backend", "openvino-int8", "--output-dir", str(tmp_path / "b")],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == ExitStatus.UNAVAILABLE
    assert not (tmp_path / "b").exists()  # nothing ran: no result files (issue 24)
    for b in ("openvino", "openvino-int8"):
        assert f"flagship/{b}: skipped (openvino is not installed (pip install 'cifarbench[openvino]'))" in p.stderr


@pytest.mark.parametrize("name", ["flagship", "baseline-cnn"])
def test_auto_considers_openvino_int8_for_the_shipped_models(name: str) -> None:
    # `auto` can only pick OpenVINO where it measures fastest if it is among what it measures.
    cands = backends.auto_candidates(resolve_model(name))
    assert "openvino-int8" in cands and {"onnx-int8", "tflite-int8"} <= set(cands)
