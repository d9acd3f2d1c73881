"""ONNX models as input: an NCHW float model with its own normalisation becomes uint8-NHWC onnx/onnx-int8 artifacts."""

from __future__ import annotations

import importlib.util
import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cifarbench.errors import ExitStatus
from cifarbench.models.manifest import Manifest
from conftest import class_pattern, run_cli

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

MEAN, STD = (0.49, 0.48, 0.45), (0.25, 0.24, 0.26)
SPEC = f"scale:1/255+mean-std:{','.join(map(str, MEAN))}/{','.join(map(str, STD))}"


@pytest.fixture(autouse=True)
def _small_test_split(monkeypatch: pytest.MonkeyPatch, synthetic_tree: Path) -> None:
    """Foreign models are scored on a test split: the synthetic one here (100 images), not the bundled 10,000."""
    monkeypatch.setenv("CIFARBENCH_CONVERT_TEST_DATA", str(synthetic_tree))


def build_onnx(path: Path, layout: str = "nchw", batch: str | int = "batch", second_input: bool = False) -> Path:
    """A small CNN the way PyTorch exports one: float input, conv/relu/pool/gemm, logits out.

    ``second_input`` adds a second graph input (an offset added to the image), which convert refuses.
    """
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.normal(0, 0.5, (8, 3, 3, 3)).astype(np.float32), "conv_w"),
             numpy_helper.from_array(rng.normal(0, 0.1, 8).astype(np.float32), "conv_b"),
             numpy_helper.from_array(rng.normal(0, 1.0, (10, 8)).astype(np.float32), "fc_w"),
             numpy_helper.from_array(rng.normal(0, 0.1, 10).astype(np.float32), "fc_b")]
    nodes = []
    x = "input"
    if second_input:
        nodes.append(helper.make_node("Add", ["input", "offset"], ["x_offset"]))
        x = "x_offset"
    if layout == "nhwc":
        inits.append(numpy_helper.from_array(np.array([0, 3, 1, 2], np.int64), "perm_unused"))
        nodes.append(helper.make_node("Transpose", ["input"], ["x_nchw"], perm=[0, 3, 1, 2]))
        x = "x_nchw"
    nodes += [helper.make_node("Conv", [x, "conv_w", "conv_b"], ["c"], pads=[1, 1, 1, 1]),
              helper.make_node("Relu", ["c"], ["r"]),
              helper.make_node("GlobalAveragePool", ["r"], ["p"]),
              helper.make_node("Flatten", ["p"], ["f"]),
              helper.make_node("Gemm", ["f", "fc_w", "fc_b"], ["logits"], transB=1)]
    shape = [batch, 3, 32, 32] if layout == "nchw" else [batch, 32, 32, 3]
    inputs = [helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)
              for name in (("input", "offset") if second_input else ("input",))]
    graph = helper.make_graph(nodes, "torch_cnn", inputs,
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, 10])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def expected(model_path: Path, pixels: np.ndarray, layout: str = "nchw") -> np.ndarray:
    """What the user's own pipeline computes: normalise in numpy, run the original model, softmax."""
    x = (pixels.astype(np.float32) / 255 - np.array(MEAN, np.float32)) / np.array(STD, np.float32)
    if layout == "nchw":
        x = x.transpose(0, 3, 1, 2)
    sess = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    y = sess.run(None, {"input": np.ascontiguousarray(x)})[0].astype(np.float64)
    e = np.exp(y - y.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


@pytest.fixture(scope="module")
def onnx_converted(tmp_path_factory: pytest.TempPathFactory, synthetic_tree: Path) -> tuple[Path, Path, object]:
    tmp = tmp_path_factory.mktemp("onnx_in")
    src = build_onnx(tmp / "torch_cnn.onnx")
    r = run_cli("convert", src, "--preprocess", SPEC, "--layout", "nchw", "--out", tmp / "out", "--calibration-data",
                synthetic_tree, "--test-data", synthetic_tree, "--calibration-size", "60", "--parity-size", "80")
    return src, tmp / "out", r


def test_nchw_onnx_converts_with_manifest_and_parity(onnx_converted: tuple[Path, Path, object]) -> None:
    src, out, r = onnx_converted
    assert r.exit_code == 0, r.output  # type: ignore[attr-defined]
    m = Manifest.load(out)
    assert set(m.artifacts) == {"onnx", "onnx-int8"} and m.arch == "foreign"
    assert m.input.model_layout == "NCHW" and m.input.softmax_added and m.input.preprocess == SPEC
    assert m.input.layout == "NHWC" and m.input.dtype == "uint8"  # the artifacts' contract
    assert m.training["source_format"] == "onnx"
    par = m.artifacts["onnx"].parity
    assert par["status"] == "ok" and par["top1_agreement"] == 1.0 and par["max_abs_dprob"] < 1e-5
    assert m.artifacts["onnx-int8"].details["calibration"]["images"] == 60
    assert "test_accuracy" in par and m.metrics["parity"]["test_split"]["images"] == 80  # foreign: test split too
    assert m.metrics["parity"]["test_split"]["note"].startswith("test split of ")
    assert "onnx-int8" in r.stdout and "test split" in r.stdout  # type: ignore[attr-defined]
    source_row = next(ln for ln in r.stdout.splitlines() if "torch_cnn.onnx" in ln)  # type: ignore[attr-defined]
    assert "reference" in source_row and f"{m.metrics['parity']['reference_accuracy'] * 100:.2f}%" in source_row


def test_artifacts_take_uint8_nhwc_pixels(onnx_converted: tuple[Path, Path, object]) -> None:
    from cifarbench.backends import load_backend

    src, out, _ = onnx_converted
    m = Manifest.load(out)
    rng = np.random.default_rng(5)
    pixels = np.stack([class_pattern(i % 10, rng) for i in range(12)])
    want = expected(src, pixels)
    np.testing.assert_allclose(load_backend("onnx", m).predict(pixels), want, atol=1e-5)
    q = onnx.load(str(out / m.artifacts["onnx-int8"].file))
    assert any(n.op_type == "QuantizeLinear" for n in q.graph.node)  # static QDQ
    assert q.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.UINT8
    got = load_backend("onnx-int8", m).predict(pixels)
    assert got.shape == (12, 10) and np.allclose(got.sum(1), 1.0, atol=1e-2)  # uint8 output: steps of 1/255
    assert (got.argmax(1) == want.argmax(1)).mean() >= 0.75


def test_classify_takes_the_converted_onnx_model(onnx_converted: tuple[Path, Path, object], tmp_path: Path) -> None:
    _, out, _ = onnx_converted
    img = tmp_path / "a.png"
    Image.fromarray(class_pattern(3, np.random.default_rng(0))).save(img)
    r = run_cli("classify", img, "--model", out, "--backend", "onnx", "-q")
    assert r.exit_code == 0, r.output
    assert r.stdout.splitlines()[1].startswith(str(img))


def test_bench_and_serve_take_the_converted_onnx_model(onnx_converted: tuple[Path, Path, object], tmp_path: Path,
                                                       synthetic_tree: Path) -> None:
    """bench measures both ONNX-sourced artifacts against each other; serve answers what the backend computes."""
    from cifarbench.bench.results_schema import load_results

    src, out, _ = onnx_converted
    r = run_cli("bench", "--model", out, "--backend", "onnx", "--backend", "onnx-int8", "--data", synthetic_tree,
                "--limit", "30", "--min-time", "0", "--min-iters", "3", "--warmup", "1", "--batch-sizes", "1,8",
                "--no-isolate", "--output-dir", tmp_path / "b")
    assert r.exit_code == 0, r.output
    rows = {row["backend"]: row for row in load_results(tmp_path / "b" / "results.json")["results"]}
    assert {b: row["status"] for b, row in rows.items()} == {"onnx": "ok", "onnx-int8": "ok"}
    assert rows["onnx"]["quality"]["support"] == 30 and rows["onnx-int8"]["agreement"]["reference"] == "onnx"
    assert 0 <= rows["onnx-int8"]["agreement"]["top1"] <= 1 and rows["onnx"]["size_bytes"] > 0
    assert "onnx-int8" in r.stdout and "Traceback" not in r.output

    pytest.importorskip("starlette")
    if importlib.util.find_spec("python_multipart") is None and importlib.util.find_spec("multipart") is None:
        pytest.skip("python-multipart is not installed (pip install 'cifarbench[serve]')")
    from starlette.testclient import TestClient

    from cifarbench.backends import load_backend
    from cifarbench.serve.app import create_app

    m = Manifest.load(out)
    backend = load_backend("onnx", m, "cpu", 1)
    pixels = np.stack([class_pattern(i, np.random.default_rng(7)) for i in range(3)])
    blobs = []
    for img in pixels:
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, "PNG")
        blobs.append(buf.getvalue())
    with TestClient(create_app(m, backend, backend_name="onnx")) as c:
        res = c.post("/v1/classify?top_k=10", files=[("file", (f"{i}.png", b)) for i, b in enumerate(blobs)])
    assert res.status_code == 200
    want = expected(src, pixels)  # the user's own pipeline on the original model
    for row, got in zip(want, res.json()["results"]):
        probs = {t["label"]: t["probability"] for t in got["top"]}
        assert [probs[name] for name in m.classes] == pytest.approx(row.tolist(), abs=1e-5)


@pytest.mark.slow  # converts
def test_nhwc_layout_is_detected(tmp_path: Path, synthetic_tree: Path) -> None:
    from cifarbench.backends import load_backend

    src = build_onnx(tmp_path / "nhwc.onnx", layout="nhwc")
    r = run_cli("convert", src, "--preprocess", SPEC, "--formats", "onnx", "--out", tmp_path / "o",
                "--calibration-data", synthetic_tree, "--calibration-size", "20", "--parity-size", "20", "-q")
    assert r.exit_code == 0, r.output
    m = Manifest.load(tmp_path / "o")
    assert m.input.model_layout == "NHWC"
    pixels = np.random.default_rng(1).integers(0, 256, (4, 32, 32, 3)).astype(np.uint8)
    np.testing.assert_allclose(load_backend("onnx", m).predict(pixels), expected(src, pixels, "nhwc"), atol=1e-5)


def test_onnx_input_errors(tmp_path: Path, synthetic_tree: Path) -> None:
    src = build_onnx(tmp_path / "m.onnx")
    common = ("--calibration-data", synthetic_tree, "--out", tmp_path / "o", "--parity-size", "10", "--calibration-size", "10")
    r = run_cli("convert", src, "--formats", "tflite", *common)
    assert r.exit_code == ExitStatus.USAGE and "an ONNX model converts to onnx, onnx-int8, not tflite" in r.stderr
    fixed = build_onnx(tmp_path / "fixed.onnx", batch=1)
    r = run_cli("convert", fixed, *common)
    assert r.exit_code == ExitStatus.DATA and "dynamic batch" in r.stderr
    two = build_onnx(tmp_path / "two.onnx", second_input=True)
    r = run_cli("convert", two, *common)
    assert r.exit_code == ExitStatus.DATA and "has 2 inputs" in r.stderr and "one image input" in r.stderr
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(src.read_bytes()[:200])
    r = run_cli("convert", bad, *common)
    assert r.exit_code == ExitStatus.DATA and "not a readable ONNX model" in r.stderr
    assert "Traceback" not in r.output


@pytest.mark.slow  # converts
def test_onnx_conversion_never_imports_tensorflow(tmp_path: Path, synthetic_tree: Path) -> None:
    import subprocess
    import sys

    src = build_onnx(tmp_path / "m.onnx")
    code = (f"import sys; from cifarbench.conversion.convert import convert; "
            f"convert({str(src)!r}, {str(tmp_path / 'o')!r}, preprocess={SPEC!r}, calibration_data={str(synthetic_tree)!r}, "
            f"test_data={str(synthetic_tree)!r}, "
            "calibration_size=10, parity_size=10); "
            "print(sorted(m for m in ('tensorflow', 'keras', 'tf_keras') if m in sys.modules))")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip().splitlines()[-1] == "[]"


@pytest.mark.parametrize("missing", ["onnxruntime", "onnx"])
def test_missing_onnx_runtime_is_exit_7(tmp_path: Path, missing: str) -> None:
    """Without onnx/onnxruntime (their import made to fail in a fresh interpreter) convert exits 7 and says what to install."""
    import subprocess
    import sys

    src = build_onnx(tmp_path / "m.onnx")
    code = (f"import sys; sys.modules[{missing!r}] = None; from cifarbench.cli import main; "
            f"sys.argv = ['cifarbench', 'convert', {str(src)!r}, '--out', {str(tmp_path / 'o')!r}, "
            f"'--calibration-data', {str(tmp_path)!r}]; main()")  # exists: checked before the model loads
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert p.returncode == ExitStatus.UNAVAILABLE, p.stderr
    assert p.stderr.strip().splitlines()[-1] == f"error: converting m.onnx needs {missing}: pip install 'cifarbench[train]'"
    assert "Traceback" not in p.stderr
    assert not (tmp_path / "o").exists()
