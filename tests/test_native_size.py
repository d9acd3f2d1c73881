"""A user's 64x64, 5-class model end to end: convert, then classify through every backend and Ray at its own size.

The model is built here with hand-set weights (no training): 3x3 kernels that see 1-pixel stripes and
checkerboards, global average pooling, and a nearest-template dense layer. It is exact at 64x64; at
32x32 the 1-pixel detail averages away, so an artifact fed 32x32 pixels (the first release's in-graph
resize) scores far lower. The oracle is the Keras model itself run on PIL-decoded pixels with the
``tf`` preset written out in numpy, never cifarbench's own reference code.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cifarbench.errors import ExitStatus
from cifarbench.models.manifest import Manifest
from conftest import run_cli

pytestmark = pytest.mark.slow
tf = pytest.importorskip("tensorflow")

CLASSES = ["flat", "vertical", "horizontal", "checker", "coarse"]
SIZE = 64


def pattern(k: int, rng: np.random.Generator) -> np.ndarray:
    """A 64x64 RGB image of class ``k``: amplitude, mean, phase and a little noise vary."""
    amp, mean = rng.uniform(0.3, 0.42) * 255, rng.uniform(0.45, 0.55) * 255
    y, x = np.mgrid[0:SIZE, 0:SIZE] + rng.integers(0, 2)
    wave = {0: np.zeros((SIZE, SIZE)), 1: (-1.0) ** x, 2: (-1.0) ** y, 3: (-1.0) ** (x + y),
            4: np.where((x // 4) % 2 == 0, 1.0, -1.0)}[k]
    img = mean + amp * wave[..., None] + rng.normal(0, 1.5, (SIZE, SIZE, 3))
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def weights() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Conv kernels (3, 3, 3, 6) and a nearest-template dense layer, for pixels in [-1, 1] (Keras' ``tf`` mode).

    Features: mean |response| to vertical-stripe, horizontal-stripe and checker kernels (ReLU of +k and -k).
    """
    u = np.array([1.0, -2.0, 1.0])
    kernels = [np.outer([0, 1, 0], u), np.outer(u, [0, 1, 0]), np.outer(u, u) / 4]
    w = np.zeros((3, 3, 3, 6), np.float32)
    for i, k in enumerate(kernels):
        for c in range(3):
            w[:, :, c, 2 * i], w[:, :, c, 2 * i + 1] = k / 3, -k / 3
    a = 2 * 0.36 * 4  # a typical response in [-1, 1] units: amplitude 0.36 of 0-1 pixels, doubled, times 4
    templates = np.array([[0, 0, 0], [a, 0, 0], [0, a, 0], [a, a, a], [a / 8, 0, 0]], np.float32)
    pair = np.zeros((6, 3), np.float32)  # ReLU(+k) + ReLU(-k) = |k|
    for i in range(3):
        pair[2 * i, i] = pair[2 * i + 1, i] = 1.0
    dense_w = (pair @ (2 * templates.T)) * 4.0
    dense_b = -(templates**2).sum(1) * 4.0
    return w, dense_w.astype(np.float32), dense_b.astype(np.float32)


def build_model(path: Path) -> None:
    import keras

    w, dense_w, dense_b = weights()
    inp = keras.Input((SIZE, SIZE, 3))
    conv = keras.layers.Conv2D(6, 3, padding="valid", activation="relu", use_bias=False)
    dense = keras.layers.Dense(5, activation="softmax")
    out = dense(keras.layers.GlobalAveragePooling2D()(conv(inp)))
    model = keras.Model(inp, out)
    conv.set_weights([w])
    dense.set_weights([dense_w, dense_b])
    model.save(path)


def build_onnx(path: Path) -> None:
    """The same model as a PyTorch-style export: float NCHW input, logits out (no softmax)."""
    from onnx import TensorProto, helper, numpy_helper, save

    w, dense_w, dense_b = weights()
    inits = [numpy_helper.from_array(w.transpose(3, 2, 0, 1).copy(), "W"), numpy_helper.from_array(dense_w, "D"),
             numpy_helper.from_array(dense_b, "B")]
    nodes = [helper.make_node("Conv", ["x", "W"], ["c"], kernel_shape=[3, 3]), helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("GlobalAveragePool", ["r"], ["g"]), helper.make_node("Flatten", ["g"], ["f"]),
             helper.make_node("Gemm", ["f", "D", "B"], ["logits"])]
    graph = helper.make_graph(nodes, "custom64", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, SIZE, SIZE])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 5])], inits)
    save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))


def write_tree(root: Path, per_class: dict[str, int], seed: int) -> None:
    rng = np.random.default_rng(seed)
    for split, n in per_class.items():
        for k, name in enumerate(CLASSES):
            d = root / split / name
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                Image.fromarray(pattern(k, rng)).save(d / f"{i:03d}.png")


@pytest.fixture(scope="module")
def native64(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, float]:
    """(converted folder, test images, Keras accuracy at 64x64 computed independently)."""
    import keras

    root = tmp_path_factory.mktemp("native64")
    write_tree(root / "data", {"train": 12, "test": 6}, seed=5)
    build_model(root / "custom64.keras")
    (root / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    r = run_cli("convert", root / "custom64.keras", "--out", root / "out", "--classes", root / "classes.txt",
                "--preprocess", "tf", "--calibration-data", root / "data", "--test-data", root / "data",
                "--calibration-size", "20", "--parity-size", "40", "-q")
    assert r.exit_code == 0, r.output
    model = keras.models.load_model(root / "custom64.keras")
    x, y = [], []
    for k, name in enumerate(CLASSES):
        for p in sorted((root / "data" / "test" / name).glob("*.png")):
            x.append(np.asarray(Image.open(p).convert("RGB"), np.float32))
            y.append(k)
    xs, ys = np.stack(x), np.array(y)
    acc = float((model.predict(xs / 127.5 - 1.0, verbose=0).argmax(1) == ys).mean())
    # the first release's path: 32x32 pixels, bilinear back up to 64 inside the graph
    small = np.stack([np.asarray(Image.fromarray(v.astype(np.uint8)).resize((32, 32), Image.Resampling.LANCZOS))
                      for v in xs]).astype(np.float32)
    up = tf.image.resize(small, (SIZE, SIZE), method="bilinear").numpy()
    acc32 = float((model.predict(up / 127.5 - 1.0, verbose=0).argmax(1) == ys).mean())
    assert acc == 1.0 and acc32 <= 0.6, (acc, acc32)  # the fixture is what the test claims it is
    return root / "out", root / "data" / "test", acc


def _accuracy(stdout: str) -> float:
    rows = list(csv.DictReader(io.StringIO(stdout)))
    assert rows and all(r["label"] in CLASSES for r in rows), rows[:3]
    return float(np.mean([Path(r["path"]).parent.name == r["label"] for r in rows]))


def test_manifest_records_the_native_contract(native64: tuple[Path, Path, float]) -> None:
    out, _, _ = native64
    raw = json.loads((out / "manifest.json").read_text())
    assert raw["input"]["shape"] == [64, 64, 3] and "model_input_size" not in raw["input"]
    assert raw["input"]["preprocess_baked"] == "tf" and raw["classes"] == CLASSES
    m = Manifest.load(out)
    assert set(m.artifacts) == {"keras", "tflite", "tflite-fp16", "tflite-int8", "onnx", "onnx-int8"}
    assert m.metrics["parity"]["test_split"]["reference_accuracy"] == 1.0
    assert m.metrics["input_check"]["warnings"] == []  # tf is the preset that fits: no warning
    import onnxruntime as ort
    from ai_edge_litert.interpreter import Interpreter

    assert ort.InferenceSession(str(out / "model.onnx")).get_inputs()[0].shape[1:] == [64, 64, 3]
    assert list(Interpreter(model_path=str(out / "model_int8.tflite")).get_input_details()[0]["shape"][1:]) == [64, 64, 3]


BACKENDS = ["keras", "tflite", "tflite-fp16", "tflite-int8", "onnx", "onnx-int8", "openvino", "openvino-f32",
            "openvino-int8"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_every_backend_scores_what_keras_scores_at_64(native64: tuple[Path, Path, float], backend: str) -> None:
    if backend.startswith("openvino"):
        pytest.importorskip("openvino")
    out, test_dir, keras_acc = native64
    r = run_cli("classify", test_dir, "-m", out, "--backend", backend, "-q")
    assert r.exit_code == 0, r.output
    assert _accuracy(r.stdout) == keras_acc


def test_engine_ray_scores_the_same(native64: tuple[Path, Path, float], ray_local: str) -> None:
    out, test_dir, keras_acc = native64
    r = run_cli("classify", test_dir, "-m", out, "--backend", "onnx", "--engine", "ray", "--ray-address", ray_local, "-q")
    assert r.exit_code == 0, r.output
    assert _accuracy(r.stdout) == keras_acc


@pytest.mark.parametrize("file", ["model_int8.tflite", "model.onnx", "custom64.keras"])
def test_a_lone_artifact_keeps_the_models_classes(native64: tuple[Path, Path, float], file: str) -> None:
    out, test_dir, keras_acc = native64
    r = run_cli("classify", test_dir, "-m", out / file, "-q")
    assert r.exit_code == 0, r.output
    assert _accuracy(r.stdout) == keras_acc  # its classes, its size, its preprocessing: from manifest.json beside it


def test_a_lone_artifact_without_a_manifest_names_classes_by_index(native64: tuple[Path, Path, float],
                                                                   tmp_path: Path) -> None:
    out, test_dir, _ = native64
    (tmp_path / "m.onnx").write_bytes((out / "model.onnx").read_bytes())
    r = run_cli("classify", test_dir / "checker", "-m", tmp_path / "m.onnx")
    assert r.exit_code == 0, r.output
    labels = {row["label"] for row in csv.DictReader(io.StringIO(r.stdout))}
    assert labels == {"class_3"}  # 5 outputs: class_0..class_4, never CIFAR-10 names


def test_predict_refuses_float_pixels_and_wrong_sizes(native64: tuple[Path, Path, float]) -> None:
    from cifarbench.backends import load_backend
    from cifarbench.errors import BatchError

    m = Manifest.load(native64[0])
    for name in ("onnx", "tflite-int8", "keras"):
        be = load_backend(name, m)
        good = np.zeros((2, 64, 64, 3), np.uint8)
        assert be.predict(good).shape == (2, 5)
        with pytest.raises(BatchError, match="values 0-1"):
            be.predict(good.astype(np.float32) / 255)
        with pytest.raises(BatchError, match=r"\(N, 64, 64, 3\)"):
            be.predict(np.zeros((2, 32, 32, 3), np.uint8))
        with pytest.raises(BatchError, match="list"):
            be.predict([good[0]])


def test_convert_without_the_preset_names_the_one_that_fits(native64: tuple[Path, Path, float],
                                                            tmp_path: Path) -> None:
    src = native64[0].parent / "custom64.keras"  # the original file: no manifest, so no prior preset
    data = native64[1].parent
    r = run_cli("convert", src, "--out", tmp_path / "plain", "--classes", native64[0].parent / "classes.txt",
                "--calibration-data", data, "--test-data", data, "--formats", "onnx", "--parity-size", "40",
                "--calibration-size", "10", "-q")
    assert r.exit_code == 0, r.output
    lines = [ln for ln in r.stderr.splitlines() if "--preprocess tf" in ln]
    assert len(lines) == 1 and lines[0].startswith("warning: "), r.stderr
    m = Manifest.load(tmp_path / "plain")
    assert m.metrics["input_check"]["presets"]["better"] == "tf"
    assert any("--preprocess tf" in w for w in m.metrics["input_check"]["warnings"])


def test_output_width_against_class_count_is_exit_4(native64: tuple[Path, Path, float], tmp_path: Path) -> None:
    """A manifest whose class list does not match the artifact's outputs is refused by every command."""
    import shutil

    out = tmp_path / "bad"
    shutil.copytree(native64[0], out)
    raw = json.loads((out / "manifest.json").read_text())
    raw["classes"] = CLASSES + ["extra"]
    (out / "manifest.json").write_text(json.dumps(raw))
    for backend in ("onnx", "tflite"):
        r = run_cli("classify", native64[1], "-m", out, "--backend", backend)
        assert r.exit_code == ExitStatus.DATA, r.output
        assert "5 outputs" in r.stderr and "6 class names" in r.stderr


def test_serve_decodes_uploads_to_the_models_size(native64: tuple[Path, Path, float]) -> None:
    """serve: each upload decoded with the manifest's transform straight to 64x64, labelled with its classes."""
    from starlette.testclient import TestClient

    from cifarbench.backends import load_backend
    from cifarbench.serve.app import close_app, create_app

    m = Manifest.load(native64[0])
    app = create_app(m, load_backend("onnx", m), top_k=1)
    try:
        with TestClient(app) as client:
            info = client.get("/v1/model").json()
            assert info["input"]["shape"] == [64, 64, 3] and info["serving"]["transform"].startswith("64x64 center-crop")
            for name in CLASSES:
                blob = next((native64[1] / name).glob("*.png")).read_bytes()
                r = client.post("/v1/classify", content=blob, headers={"Content-Type": "image/png"})
                assert r.status_code == 200, r.text
                assert r.json()["results"][0]["label"] == name, r.json()
    finally:
        close_app(app)


def test_bench_measures_at_the_models_size(native64: tuple[Path, Path, float], tmp_path: Path) -> None:
    """bench on the model's own tree: the test split decoded at 64x64; accuracy is the Keras model's, isolated or not."""
    from cifarbench.bench.results_schema import load_results

    out, test_dir, keras_acc = native64
    fast = ("--min-time", "0", "--min-iters", "3", "--warmup", "1", "--batch-sizes", "1,8")
    r = run_cli("bench", "--model", out, "--backend", "onnx", "--backend", "tflite-int8", "--data", test_dir.parent,
                *fast, "--output-dir", tmp_path / "o")
    assert r.exit_code == 0, r.stderr
    doc = load_results(tmp_path / "o" / "results.json")
    rows = {row["backend"]: row for row in doc["results"]}
    assert rows["onnx"]["quality"]["accuracy"] == keras_acc and rows["tflite-int8"]["quality"]["accuracy"] == keras_acc
    assert doc["data"]["images"] == 30  # every test image decoded (at 64x64: the model refuses other sizes)


def test_an_onnx_model_at_64_nchw_with_logits(native64: tuple[Path, Path, float], tmp_path: Path) -> None:
    """An ONNX export (NCHW floats, logits): the original graph is the parity reference, fed the 64x64 pixels."""
    pytest.importorskip("onnx")
    out, test_dir, keras_acc = native64
    build_onnx(tmp_path / "custom64.onnx")
    r = run_cli("convert", tmp_path / "custom64.onnx", "--out", tmp_path / "o", "--classes", out.parent / "classes.txt",
                "--preprocess", "tf", "--calibration-data", test_dir.parent, "--test-data", test_dir.parent,
                "--calibration-size", "20", "--parity-size", "40", "-q")
    assert r.exit_code == 0, r.output
    m = Manifest.load(tmp_path / "o")
    assert m.input.size == (64, 64) and m.input.model_layout == "NCHW" and m.input.softmax_added
    assert m.metrics["parity"]["test_split"]["reference_accuracy"] == 1.0
    for backend in ("onnx", "onnx-int8"):
        r = run_cli("classify", test_dir, "-m", tmp_path / "o", "--backend", backend, "-q")
        assert r.exit_code == 0, r.output
        assert _accuracy(r.stdout) == keras_acc
