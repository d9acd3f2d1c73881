"""Scores to rows: what the local pipeline, the Ray engine and the Python API share (apart from runs/classify.py,
so an engine that classify starts does not import classify back)."""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from cifarbench.errors import ModelError, first_line
from cifarbench.runs.writers import Row


def probs_of(predict: Callable[[np.ndarray], np.ndarray], batch: np.ndarray) -> np.ndarray:
    """The backend's (n, classes) scores, with any runtime failure as one clear ModelError."""
    try:
        probs = np.asarray(predict(batch), dtype=np.float32)
    except Exception as exc:  # runtimes raise their own types
        raise ModelError(f"inference failed: {first_line(exc)}") from None
    if probs.ndim != 2 or probs.shape[0] != len(batch):
        raise ModelError(f"model returned shape {probs.shape} for a batch of {len(batch)}")
    return probs


def _rows(probs: np.ndarray, paths: list[str], classes: Sequence[str], top_k: int) -> list[Row]:
    """Top-k rows for a batch, vectorised: one argsort and one tolist per batch, not per file."""
    k = min(top_k, probs.shape[1])
    order = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    top = np.take_along_axis(probs, order, axis=1)
    finite = np.isfinite(probs).all(axis=1).tolist()
    names = [classes[i] if i < len(classes) else str(i) for i in range(probs.shape[1])]
    rows = []
    for path, idx, conf, ok in zip(paths, order.tolist(), top.tolist(), finite):
        if not ok:
            rows.append(Row(path, error="model output is not finite"))
        else:
            rows.append(Row(path, names[idx[0]], idx[0], conf[0], [(names[i], c) for i, c in zip(idx[1:], conf[1:])]))
    return rows
