"""Test-time augmentation around any backend: probabilities averaged over views of each image.

Why here and not in each runtime: the views are plain uint8 array operations, so one wrapper gives
every backend (Keras, LiteRT, onnxruntime, ...) the same TTA with the same numbers. Views follow
airbench: ``flip`` = the image and its mirror (2 views); ``flip-translate`` adds the mirror pair of the
image shifted one pixel up-left and one down-right with reflect padding (6 views, weighted as airbench
does: half for the plain pair, half for the shifted pairs). Single view stays the default.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from cifarbench.errors import UsageError

TTA_MODES = ("none", "flip", "flip-translate")
VIEWS = {"none": 1, "flip": 2, "flip-translate": 6}


def check_mode(mode: str | None) -> str:
    mode = mode or "none"
    if mode not in TTA_MODES:
        raise UsageError(f"--tta must be one of {', '.join(TTA_MODES)}, got {mode!r}")
    return mode


def _mirror_mean(predict: Any, batch: np.ndarray) -> np.ndarray:
    both = predict(np.concatenate([batch, batch[:, :, ::-1]]))
    n = len(batch)
    return 0.5 * (both[:n] + both[n:])


def predict_tta(predict: Any, batch: np.ndarray, mode: str) -> np.ndarray:
    """``predict``: uint8 NHWC -> probabilities. Returns the view-averaged probabilities (float32)."""
    if mode == "none" or len(batch) == 0:
        return predict(batch)
    plain = _mirror_mean(predict, batch)
    if mode == "flip":
        return plain.astype(np.float32)
    h, w = batch.shape[1:3]
    pad = np.pad(batch, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="reflect")
    shifted = [np.ascontiguousarray(pad[:, :h, :w]), np.ascontiguousarray(pad[:, 2 : h + 2, 2 : w + 2])]
    moved = 0.5 * (_mirror_mean(predict, shifted[0]) + _mirror_mean(predict, shifted[1]))
    return (0.5 * plain + 0.5 * moved).astype(np.float32)


class TTABackend:
    """A backend whose ``predict`` averages over TTA views; everything else is the wrapped backend's."""

    def __init__(self, inner: Any, mode: str) -> None:
        self.inner, self.mode = inner, check_mode(mode)
        self.name, self.device = inner.name, inner.device

    def predict(self, batch: np.ndarray) -> np.ndarray:
        return predict_tta(self.inner.predict, batch, self.mode)

    def describe(self) -> dict[str, Any]:
        return {**self.inner.describe(), "tta": self.mode, "views": VIEWS[self.mode]}

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def with_tta(backend: Any, mode: str | None) -> Any:
    """``backend`` itself for single view, else wrapped."""
    mode = check_mode(mode)
    return backend if mode == "none" else TTABackend(backend, mode)
