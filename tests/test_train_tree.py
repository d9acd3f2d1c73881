"""`train --data TREE --image-size H,W`: the tree's own classes at the zoo net's own size, then convert and classify."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cifarbench.data.sources import tree_classes
from cifarbench.errors import UsageError
from cifarbench.training.data import augment
from cifarbench.training.train import TrainOptions
from conftest import class_pattern, run_cli

CLASSES = ("dots", "plain", "stripes")  # sorted: the order train gives them


def _tree(root: Path, per_class: dict[str, int]) -> Path:
    rng = np.random.default_rng(3)
    for split, n in per_class.items():
        for label, name in enumerate(CLASSES):
            d = root / split / name
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                h, w = 40 + 7 * (i % 3), 56 + 5 * (i % 4)  # odd sizes: the loader resizes them to the model's
                img = np.asarray(Image.fromarray(class_pattern(label * 3 + 1, rng, 64)).resize((w, h)))
                Image.fromarray(img).save(d / f"{i:03d}.png")
    return root


def test_tree_classes_are_the_folder_names(tmp_path: Path) -> None:
    tree = _tree(tmp_path / "t", {"train": 1, "test": 1})
    assert tree_classes(tree) == CLASSES
    flat = tmp_path / "flat"
    for c in ("b", "a"):
        (flat / c).mkdir(parents=True)
        Image.new("RGB", (4, 4)).save(flat / c / "x.png")
    assert tree_classes(flat) == ("a", "b")
    assert tree_classes("bundled") is None and tree_classes(tmp_path / "missing") is None


def test_augment_translates_at_any_size() -> None:
    x = np.random.default_rng(0).integers(0, 255, (6, 20, 36, 3), dtype=np.uint8)
    y = augment(x, ("translate2",), np.random.default_rng(1))
    assert y.shape == x.shape
    # every image is a shifted copy of its reflect-padded self
    pad = np.pad(x, ((0, 0), (2, 2), (2, 2), (0, 0)), mode="reflect")
    for i in range(len(x)):
        assert any((pad[i, oy:oy + 20, ox:ox + 36] == y[i]).all() for oy in range(5) for ox in range(5))


@pytest.mark.parametrize("size", [(7, 32), (32, 7), (0, 0)])
def test_image_size_limits(size: tuple[int, int]) -> None:
    with pytest.raises(UsageError, match="image-size|image size"):
        TrainOptions(image_size=size)
    assert TrainOptions(image_size=(8, 8)).image_size == (8, 8)  # the limit itself is fine


@pytest.mark.parametrize("bad", ["x", "1,2,3", "64,"])
def test_image_size_option_is_h_or_h_w(bad: str, tmp_path: Path) -> None:
    res = run_cli("train", "--arch", "tiny-cnn", "--data", tmp_path, "--image-size", bad, "--out", tmp_path / "o")
    assert res.exit_code == 2 and "--image-size" in res.stderr


@pytest.mark.slow
def test_train_convert_classify_on_a_tree_at_its_own_size(tmp_path: Path) -> None:
    tree = _tree(tmp_path / "tree", {"train": 40, "test": 6})
    run = tmp_path / "run"
    res = run_cli("train", "--arch", "tiny-cnn", "--data", tree, "--image-size", "24,40", "--epochs", "1",
                  "--val-size", "12", "--threads", "2", "--precision", "float32", "--out", run, "-q")
    assert res.exit_code == 0, res.stderr
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["classes"] == list(CLASSES) and manifest["input"]["shape"] == [24, 40, 3]
    assert manifest["metrics"]["test"]["size"] == 18
    import keras

    assert tuple(keras.models.load_model(run / "model.keras", compile=False).input_shape) == (None, 24, 40, 3)

    out = tmp_path / "converted"
    res = run_cli("convert", run, "--formats", "onnx,tflite-int8", "--calibration-size", "30", "--parity-size", "30",
                  "--out", out, "-q")
    assert res.exit_code == 0, res.stderr
    conv = json.loads((out / "manifest.json").read_text())
    assert conv["classes"] == list(CLASSES) and conv["input"]["shape"] == [24, 40, 3]

    for backend in ("onnx", "tflite-int8"):
        res = run_cli("classify", tree / "test", "-m", out, "-b", backend, "-q")
        assert res.exit_code == 0, res.stderr
        rows = list(csv.DictReader(io.StringIO(res.stdout)))
        assert len(rows) == 18 and {r["label"] for r in rows} <= set(CLASSES)
        assert all(r["error"] == "" for r in rows)
