"""Keras 2.x .keras zips saved on Windows (backslash weight groups, ``batch_input_shape``) load and convert."""

from __future__ import annotations

import io
import json
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import pytest

from cifarbench.models.keras2zip import needs_fixing, translate_config
from conftest import run_cli

tf_keras = pytest.importorskip("tf_keras")
h5py = pytest.importorskip("h5py")


@pytest.fixture(autouse=True)
def _small_test_split(monkeypatch: pytest.MonkeyPatch, synthetic_tree: Path) -> None:
    """Foreign models are scored on a test split: the synthetic one here (100 images), not the bundled 10,000."""
    monkeypatch.setenv("CIFARBENCH_CONVERT_TEST_DATA", str(synthetic_tree))


def _windows_weights(blob: bytes) -> bytes:
    """What Keras 2 wrote on Windows: ``os.path.join`` put ``\\`` between the layer path's parts."""
    out = io.BytesIO()
    with h5py.File(io.BytesIO(blob), "r") as src, h5py.File(out, "w") as dst:
        def visit(name: str, obj: object) -> None:
            head, sep, tail = name.partition("/vars")
            target = head.replace("/", "\\") + sep + tail
            if isinstance(obj, h5py.Dataset):
                dst.create_dataset(target, data=obj[()])
            elif sep or name == "vars":
                dst.require_group(target)
        src.visititems(visit)
    return out.getvalue()


def windows_keras2_zip(tmp_path: Path) -> tuple[Path, object]:
    """A tf_keras model saved as .keras, rewritten the way Keras 2.15 on Windows stores it."""
    tf_keras.utils.set_random_seed(0)
    model = tf_keras.Sequential([
        tf_keras.layers.InputLayer(input_shape=(32, 32, 3)),
        tf_keras.layers.Rescaling(1 / 255.0),
        tf_keras.layers.Conv2D(4, 3, activation="relu"),
        tf_keras.layers.Conv2D(6, 3, activation="relu"),
        tf_keras.layers.GlobalAveragePooling2D(),
        tf_keras.layers.Dense(10, activation="softmax"),
    ])
    plain = tmp_path / "plain.keras"
    model.save(plain)
    dst = tmp_path / "win_keras215.keras"
    with zipfile.ZipFile(plain) as zin, zipfile.ZipFile(dst, "w") as zout:
        cfg = json.loads(zin.read("config.json"))
        layers = cfg["config"]["layers"]
        assert layers[0]["class_name"] == "InputLayer" and "batch_input_shape" in layers[0]["config"]
        layers[1]["config"]["batch_input_shape"] = [None, 32, 32, 3]  # Keras 2 also kept it on the first layer
        zout.writestr("metadata.json", json.dumps({"keras_version": "2.15.0", "date_saved": "2024-02-01@10:00:00"}))
        zout.writestr("config.json", json.dumps(cfg))
        zout.writestr("model.weights.h5", _windows_weights(zin.read("model.weights.h5")))
    return dst, model


def test_translate_config() -> None:
    seq = {"class_name": "Sequential", "config": {"layers": [
        {"class_name": "Conv2D", "config": {"filters": 4, "batch_input_shape": [None, 32, 32, 3], "dtype": "float32"}},
        {"class_name": "Dense", "config": {"units": 10}}]}}
    out = translate_config(seq)
    layers = out["config"]["layers"]
    assert layers[0]["class_name"] == "InputLayer" and layers[0]["config"]["batch_shape"] == [None, 32, 32, 3]
    assert "batch_input_shape" not in layers[1]["config"] and layers[1]["config"]["filters"] == 4
    nested = {"class_name": "Functional", "config": {"layers": [
        {"class_name": "InputLayer", "config": {"batch_input_shape": [None, 32, 32, 3], "name": "in"}}]}}
    assert translate_config(nested)["config"]["layers"][0]["config"] == {"batch_shape": [None, 32, 32, 3], "name": "in"}
    assert seq["config"]["layers"][0]["config"]["batch_input_shape"]  # the input is not modified


def test_windows_keras2_zip_loads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import keras

    from cifarbench.models.kerasio import load_keras_model

    path, original = windows_keras2_zip(tmp_path)
    keras.Sequential([keras.Input((32, 32, 3)), keras.layers.Dense(2)]).save(tmp_path / "k3.keras")
    assert needs_fixing(path) and not needs_fixing(tmp_path / "k3.keras")  # Keras 3 files are read as they are
    # The fixture reproduces the bug report: neither loader reads it as it is.
    with pytest.raises(ValueError, match="batch_input_shape"):  # Keras 3 refuses Keras 2's input key
        keras.saving.load_model(path, compile=False)
    with pytest.raises(ValueError, match="expected 2 variables, but received 0"):  # backslash weight groups not found
        tf_keras.models.load_model(path, compile=False)

    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    before = path.read_bytes()
    model = load_keras_model(path)
    x = np.random.default_rng(0).integers(0, 256, (6, 32, 32, 3)).astype(np.float32)
    np.testing.assert_allclose(np.asarray(model(x)), original(x).numpy(), atol=1e-5)  # the weights arrived
    assert path.read_bytes() == before and list(scratch.iterdir()) == []  # user's file untouched, no temp left


@pytest.mark.slow  # converts
def test_windows_keras2_zip_converts(tmp_path: Path, synthetic_tree: Path) -> None:
    from cifarbench.backends import load_backend
    from cifarbench.models.manifest import Manifest

    path, _ = windows_keras2_zip(tmp_path)
    r = run_cli("convert", path, "--out", tmp_path / "out", "--formats", "onnx,tflite-fp16", "--calibration-data",
                synthetic_tree, "--calibration-size", "40", "--parity-size", "40")
    assert r.exit_code == 0, r.output
    assert "ok" in r.stdout and "win_keras215.keras" in r.stdout
    m = Manifest.load(tmp_path / "out")
    assert m.artifacts["keras"].file == "win_keras215.keras"
    assert m.artifacts["onnx"].parity["status"] == "ok" and m.artifacts["onnx"].parity["top1_agreement"] == 1.0
    x = np.random.default_rng(2).integers(0, 256, (5, 32, 32, 3)).astype(np.uint8)
    np.testing.assert_allclose(load_backend("keras", m).predict(x), load_backend("onnx", m).predict(x), atol=1e-5)
