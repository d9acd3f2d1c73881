"""Convert: every format round-trips with parity; foreign Keras 2/3 files convert or fail clearly."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from cifarbench.errors import ExitStatus
from cifarbench.manifest import Manifest, sha256_file
from conftest import class_pattern, run_cli

pytestmark = pytest.mark.slow
tf = pytest.importorskip("tensorflow")


def test_round_trip_every_format(tiny_model: Path) -> None:
    m = Manifest.load(tiny_model)
    assert set(m.artifacts) == {"keras", "tflite", "tflite-fp16", "tflite-int8", "onnx", "onnx-int8"}
    for fmt, art in m.artifacts.items():
        assert sha256_file(tiny_model / art.file) == art.sha256
        assert art.parity["images"] > 0
        if fmt in ("tflite", "onnx"):
            assert art.parity["top1_agreement"] >= 0.999 and art.parity["max_abs_dprob"] <= 1e-3
    i8 = m.artifacts["tflite-int8"]
    assert i8.input_quantization == {"scale": 1.0, "zero_point": 0}  # pixels map exactly
    assert i8.details["calibration"]["split"].startswith("train")

    from cifarbench.backends import load_backend

    rng = np.random.default_rng(3)
    x = np.stack([class_pattern(i % 10, rng) for i in range(20)])
    ref = load_backend("keras", m).predict(x)
    assert ref.shape == (20, 10)
    np.testing.assert_allclose(ref.sum(1), 1.0, atol=1e-5)
    for fmt in ("tflite", "onnx"):
        np.testing.assert_allclose(load_backend(fmt, m).predict(x), ref, atol=1e-4)
    for fmt in ("tflite-int8", "onnx-int8", "tflite-fp16"):
        got = load_backend(fmt, m).predict(x)
        assert (got.argmax(1) == ref.argmax(1)).mean() >= 0.9
        assert np.abs(got - ref).max() < 0.15


def _tiny_tf_keras_model(tf_keras, with_softmax: bool = True):  # type: ignore[no-untyped-def]
    model = tf_keras.Sequential([
        tf_keras.layers.InputLayer(input_shape=(32, 32, 3)),
        tf_keras.layers.Rescaling(1 / 255.0),
        tf_keras.layers.Conv2D(4, 3, activation="relu"),
        tf_keras.layers.GlobalAveragePooling2D(),
        tf_keras.layers.Dense(10, activation="softmax" if with_softmax else None),
    ])
    return model


@pytest.mark.parametrize("suffix", [".h5", ".keras"])
def test_keras2_files_convert(tmp_path: Path, synthetic_tree: Path, suffix: str) -> None:
    tf_keras = pytest.importorskip("tf_keras")
    path = tmp_path / f"legacy{suffix}"
    _tiny_tf_keras_model(tf_keras).save(path)
    r = run_cli("convert", path, "--out", tmp_path / "out", "--formats", "onnx,tflite", "--calibration-data",
                synthetic_tree, "--calibration-size", "50", "--parity-size", "50", "-q")
    assert r.exit_code == 0, r.output
    m = Manifest.load(tmp_path / "out")
    assert m.artifacts["onnx"].parity["status"] == "ok"
    assert m.artifacts["tflite"].parity["status"] == "ok"


def test_weights_only_h5_is_a_clear_error(tmp_path: Path) -> None:
    tf_keras = pytest.importorskip("tf_keras")
    path = tmp_path / "w.weights.h5"
    _tiny_tf_keras_model(tf_keras).save_weights(path)
    r = run_cli("convert", path, "--calibration-data", tmp_path)
    assert r.exit_code == ExitStatus.DATA
    assert "weights-only" in r.stderr and "architecture is missing" in r.stderr
    assert "Traceback" not in r.output


def test_truncated_keras_file(tmp_path: Path, tiny_model: Path) -> None:
    data = (tiny_model / "model.keras").read_bytes()
    bad = tmp_path / "cut.keras"
    bad.write_bytes(data[: len(data) // 3])
    r = run_cli("convert", bad, "--calibration-data", tmp_path)
    assert r.exit_code == ExitStatus.DATA and "truncated" in r.stderr


def test_wrong_input_shape_and_class_count(tmp_path: Path, synthetic_tree: Path) -> None:
    import keras

    inp = keras.Input((64, 64, 3))
    out = keras.layers.Dense(10, activation="softmax")(keras.layers.GlobalAveragePooling2D()(inp))
    keras.Model(inp, out).save(tmp_path / "big.keras")
    r = run_cli("convert", tmp_path / "big.keras", "--calibration-data", synthetic_tree, "--formats", "onnx")
    assert r.exit_code == ExitStatus.DATA and "not 32x32x3" in r.stderr
    r = run_cli("convert", tmp_path / "big.keras", "--out", tmp_path / "o", "--calibration-data", synthetic_tree,
                "--formats", "onnx", "--input-size", "64,64", "--parity-size", "20", "--calibration-size", "20", "-q")
    assert r.exit_code == 0, r.output

    inp = keras.Input((32, 32, 3))
    out = keras.layers.Dense(7, activation="softmax")(keras.layers.GlobalAveragePooling2D()(inp))
    keras.Model(inp, out).save(tmp_path / "seven.keras")
    r = run_cli("convert", tmp_path / "seven.keras", "--calibration-data", synthetic_tree, "--formats", "onnx")
    assert r.exit_code == ExitStatus.DATA and "does not match 10 classes" in r.stderr


def test_lambda_layer_needs_unsafe(tmp_path: Path, synthetic_tree: Path) -> None:
    import keras

    inp = keras.Input((32, 32, 3))
    x = keras.layers.Lambda(lambda t: t / 255.0)(inp)
    out = keras.layers.Dense(10, activation="softmax")(keras.layers.GlobalAveragePooling2D()(x))
    keras.Model(inp, out).save(tmp_path / "lam.keras")
    r = run_cli("convert", tmp_path / "lam.keras", "--calibration-data", synthetic_tree, "--formats", "onnx")
    assert r.exit_code == ExitStatus.DATA and "--unsafe" in r.stderr
    r = run_cli("convert", tmp_path / "lam.keras", "--out", tmp_path / "o", "--calibration-data", synthetic_tree,
                "--formats", "onnx", "--unsafe", "--parity-size", "20", "--calibration-size", "20", "-q")
    assert r.exit_code == 0, r.output


def test_preprocess_is_baked_into_the_graph(tmp_path: Path, synthetic_tree: Path) -> None:
    """A foreign model that expects [0,1] inputs: scale:1/255 must make the ONNX graph match model(x/255)."""
    import keras

    inp = keras.Input((32, 32, 3))
    x = keras.layers.Conv2D(4, 3, activation="relu")(inp)
    out = keras.layers.Dense(10)(keras.layers.GlobalAveragePooling2D()(x))  # logits: convert adds the softmax
    model = keras.Model(inp, out)
    model.save(tmp_path / "foreign.keras")
    from cifarbench.backends import load_backend

    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (8, 32, 32, 3)).astype(np.uint8)
    expect = tf.nn.softmax(model(pixels.astype(np.float32) / 255.0)).numpy()
    results = {}
    for spec in ("scale:1/255", "none"):
        out_dir = tmp_path / spec.replace(":", "_").replace("/", "_")
        r = run_cli("convert", tmp_path / "foreign.keras", "--out", out_dir, "--calibration-data", synthetic_tree,
                    "--formats", "onnx", "--preprocess", spec, "--parity-size", "20", "--calibration-size", "20", "-q")
        assert r.exit_code == 0, r.output
        m = Manifest.load(out_dir)
        assert m.artifacts["onnx"].details["preprocess"] == spec
        results[spec] = load_backend("onnx", m).predict(pixels)
    np.testing.assert_allclose(results["scale:1/255"], expect, atol=1e-5)
    assert np.abs(results["none"] - expect).max() > 1e-3


def test_bad_preprocess_spec_is_usage_error(tmp_path: Path, tiny_model: Path) -> None:
    r = run_cli("convert", tiny_model / "model.keras", "--out", tmp_path, "--preprocess", "divide:3")
    assert r.exit_code == ExitStatus.USAGE and "--preprocess" in r.stderr


def test_manifest_records_versions_and_calibration(tiny_model: Path) -> None:
    raw = json.loads((tiny_model / "manifest.json").read_text())
    onnx_int8 = raw["artifacts"]["onnx-int8"]
    assert onnx_int8["details"]["opset"] == 17
    assert onnx_int8["details"]["versions"]["onnxruntime"]
    assert onnx_int8["details"]["convert_seconds"] >= 0
    assert raw["metrics"]["parity"]["split"].startswith("train")


def test_savedmodel_and_keras_backend_uses_baked_preprocess(tmp_path: Path, synthetic_tree: Path) -> None:
    """A SavedModel directory converts; a foreign .keras with --preprocess runs identically on keras and onnx."""
    import keras

    inp = keras.Input((32, 32, 3))
    out = keras.layers.Dense(10)(keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(4, 3)(inp)))
    model = keras.Model(inp, out)
    model.export(tmp_path / "sm", verbose=False)
    r = run_cli("convert", tmp_path / "sm", "--out", tmp_path / "o1", "--calibration-data", synthetic_tree,
                "--formats", "onnx", "--parity-size", "20", "--calibration-size", "20", "-q")
    assert r.exit_code == 0, r.output

    model.save(tmp_path / "f.keras")
    r = run_cli("convert", tmp_path / "f.keras", "--out", tmp_path / "o2", "--calibration-data", synthetic_tree,
                "--formats", "onnx", "--preprocess", "scale:1/255+mean-std:0.5,0.5,0.5/0.25,0.25,0.25",
                "--parity-size", "20", "--calibration-size", "20", "-q")
    assert r.exit_code == 0, r.output
    from cifarbench.backends import load_backend

    m = Manifest.load(tmp_path / "o2")
    x = np.random.default_rng(1).integers(0, 256, (4, 32, 32, 3)).astype(np.uint8)
    np.testing.assert_allclose(load_backend("keras", m).predict(x), load_backend("onnx", m).predict(x), atol=1e-5)
