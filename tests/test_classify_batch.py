"""Images per model call without --batch-size / --max-batch: the fixed counts hold up to 64x64 (classify) and
128x128 (serve, the API), and a call holds as many pixels above that (ResNet50 at 224x224: 256 images peaked at
2,881 MB, 20 at 727 MB, in the same time: benchmarks/classify/batch_memory.md). An explicit size is used as given."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import cifarbench
from cifarbench.runs import classify as classify_mod
from conftest import run_cli
from native_models import nearest_model, paint

CLASSES = ["a", "b", "c"]


class Recorder:
    """A backend wrapper that records the size of every predict call."""

    def __init__(self, inner: Any, calls: list[int]) -> None:
        self.inner, self.calls = inner, calls
        self.device = inner.device

    def predict(self, x: np.ndarray) -> np.ndarray:
        self.calls.append(len(x))
        return self.inner.predict(x)

    def describe(self) -> dict[str, Any]:
        return self.inner.describe()


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    seen: list[int] = []
    real = classify_mod.with_tta
    monkeypatch.setattr(classify_mod, "with_tta", lambda be, tta: Recorder(real(be, tta), seen))
    return seen


def photos(root: Path, n: int) -> Path:
    for i in range(n):
        paint(root, "p", f"{i:03d}.png", 5.0, (6, 8))
    return root / "p"


@pytest.mark.parametrize("size, args, want", [
    ((224, 224), [], [20, 20, 5]),          # 1,048,576 pixels // 50,176 = 20 images
    ((224, 224), ["--batch-size", "7"], [7] * 6 + [3]),  # given: used as given
    ((64, 64), [], [45]),                   # up to 64x64: the old 256 (all 45 fit one call)
    ((65, 64), ["--batch-size", "256"], [45]),
])
def test_classify_batch_follows_the_models_pixels(tmp_path: Path, calls: list[int], size: tuple[int, int],
                                                  args: list[str], want: list[int]) -> None:
    model = nearest_model(tmp_path / "m", CLASSES, size)
    r = run_cli("classify", photos(tmp_path / "in", 45), "-m", model, "-b", "onnx", "--workers", "0", "-q", *args)
    assert r.exit_code == 0, r.output
    assert calls == want


def test_classify_batch_one_pixel_past_64x64(tmp_path: Path, calls: list[int]) -> None:
    model = nearest_model(tmp_path / "m", CLASSES, (65, 64))
    r = run_cli("classify", photos(tmp_path / "in", 300), "-m", model, "-b", "onnx", "--workers", "0", "-q")
    assert r.exit_code == 0, r.output
    assert calls == [252, 48]  # 1,048,576 // 4,160 = 252: no longer 256


def test_api_classify_batches_like_serve(tmp_path: Path) -> None:
    m = cifarbench.load(nearest_model(tmp_path / "m", CLASSES, (224, 224)), backend="onnx")
    seen: list[int] = []
    m._backend = Recorder(m._backend, seen)
    rows = list(m.classify(photos(tmp_path / "in", 45), workers=0))
    assert len(rows) == 45 and seen == [20, 20, 5]
    seen.clear()
    list(m.classify(tmp_path / "in", workers=0, batch_size=30))
    assert seen == [30, 15]


@pytest.mark.parametrize("size, extra, want", [((224, 224), (), 20), ((128, 128), (), 64), ((224, 224), ("--max-batch", "3"), 3)])
def test_serve_max_batch_follows_the_models_pixels(tmp_path: Path, serve_process: Any, size: tuple[int, int],
                                                   extra: tuple[str, ...], want: int) -> None:
    srv = serve_process(nearest_model(tmp_path / "m", CLASSES, size), "onnx", *extra)
    try:
        with urllib.request.urlopen(srv.url + "v1/model", timeout=30) as resp:
            assert json.load(resp)["serving"]["max_batch"] == want
    except OSError as exc:
        raise AssertionError(f"{exc}; server said: {srv.lines[-15:]}; exit {srv.proc.poll()}") from None


def test_create_app_without_max_batch_follows_the_models_pixels(tmp_path: Path) -> None:
    from cifarbench.models.manifest import Manifest
    from cifarbench.serve.app import close_app, create_app

    m = Manifest.load(nearest_model(tmp_path / "m", CLASSES, (224, 224)))

    class Fake:
        def predict(self, x: np.ndarray) -> np.ndarray:
            return np.full((len(x), 3), 1 / 3, np.float32)

        def describe(self) -> dict[str, Any]:
            return {"runtime": "fake"}

    for max_batch, want in ((None, 20), (7, 7)):
        app = create_app(m, Fake(), max_batch=max_batch)
        try:
            assert app.state.handlers.batcher.max_batch == want
        finally:
            close_app(app)
