"""Test-time augmentation: the views are right, and it wraps any backend the same way."""

from __future__ import annotations

import numpy as np
import pytest

from cifarbench.backends.tta import VIEWS, check_mode, predict_tta, with_tta
from cifarbench.errors import UsageError


def _left_half_brightness(batch: np.ndarray) -> np.ndarray:
    """A 'model' that sees the left half only: mirror views change its answer."""
    left = batch[:, :, : batch.shape[2] // 2].mean(axis=(1, 2, 3)) / 255.0
    return np.stack([left, 1 - left], axis=1).astype(np.float32)


def test_flip_averages_the_image_and_its_mirror() -> None:
    x = np.zeros((3, 32, 32, 3), np.uint8)
    x[:, :, :16] = 255  # bright left half: the mirror is dark there
    single = predict_tta(_left_half_brightness, x, "none")
    flip = predict_tta(_left_half_brightness, x, "flip")
    assert np.allclose(single[:, 0], 1.0) and np.allclose(flip[:, 0], 0.5)


def test_flip_translate_uses_six_views_and_keeps_the_batch_order() -> None:
    calls: list[int] = []

    def spy(batch: np.ndarray) -> np.ndarray:
        calls.append(len(batch))
        return _left_half_brightness(batch)

    x = np.random.default_rng(0).integers(0, 256, (5, 32, 32, 3)).astype(np.uint8)
    out = predict_tta(spy, x, "flip-translate")
    assert sum(calls) == VIEWS["flip-translate"] * len(x) and out.shape == (5, 2)
    # each image's answer depends on that image only
    np.testing.assert_allclose(predict_tta(spy, x[2:3], "flip-translate"), out[2:3], rtol=1e-6)


def test_unknown_mode_is_a_usage_error() -> None:
    assert check_mode(None) == "none"
    with pytest.raises(UsageError, match="--tta"):
        check_mode("rotate")


def test_wrapper_reports_views_and_passes_single_view_through() -> None:
    class Fake:
        name, device = "fake", "cpu"

        def predict(self, batch: np.ndarray) -> np.ndarray:
            return _left_half_brightness(batch)

        def describe(self) -> dict:
            return {"runtime": "fake"}

    b = Fake()
    assert with_tta(b, "none") is b
    w = with_tta(b, "flip")
    assert w.describe() == {"runtime": "fake", "tta": "flip", "views": 2} and w.name == "fake"


def test_classify_tta_flip_prints_the_mean_of_the_image_and_its_mirror(tmp_path) -> None:
    """End to end through the CLI with a shipped model: the confidences are the two views' mean."""
    import json

    from PIL import Image

    from cifarbench import backends
    from cifarbench.models.model_ref import resolve_model
    from conftest import run_cli

    rng = np.random.default_rng(3)
    arrays = [rng.integers(0, 256, (32, 32, 3)).astype(np.uint8) for _ in range(3)]
    for i, a in enumerate(arrays):
        Image.fromarray(a).save(tmp_path / f"{i}.png")
    r = run_cli("classify", tmp_path, "--model", "flagship", "--backend", "onnx", "--format", "jsonl",
                "--top-k", "10", "--tta", "flip", "-q")
    assert r.exit_code == 0, r.output
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    be = backends.load_backend("onnx", resolve_model("flagship"))
    x = np.stack(arrays)
    expect = 0.5 * (be.predict(x) + be.predict(np.ascontiguousarray(x[:, :, ::-1])))
    for row, p in zip(rows, expect):
        assert row["class_index"] == int(p.argmax())
        assert row["confidence"] == pytest.approx(float(p.max()), abs=2e-6)
    assert run_cli("classify", tmp_path, "--tta", "rotate").exit_code == 2
