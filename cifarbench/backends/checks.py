"""What every backend checks: the batch it is given, and that the artifact's outputs match the class list.

A float32 0-1 array, a batch at the wrong size or a list would otherwise be cast and answered with
confident nonsense; an artifact whose output width differs from the manifest's classes would label
images with the wrong names. Both are refused with one clear line.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from cifarbench.errors import BatchError, ModelError


def check_batch(batch: Any, size: Sequence[int], name: str) -> np.ndarray:
    """``batch`` if it is uint8 (N, H, W, 3) at the contract's size; else BatchError saying what it got."""
    h, w = int(size[0]), int(size[1])
    want = f"uint8 RGB pixels shaped (N, {h}, {w}, 3), values 0-255"
    if not isinstance(batch, np.ndarray):
        raise BatchError(f"{name}: predict() takes a numpy array of {want}; got {type(batch).__name__}")
    if batch.dtype != np.uint8:
        hint = ""
        if batch.dtype.kind == "f" and batch.size and float(np.nanmax(batch)) <= 1.0:
            hint = " (values 0-1: pass the raw 0-255 pixels; the artifact applies the model's own preprocessing)"
        raise BatchError(f"{name}: predict() takes {want}; got {batch.dtype} {tuple(batch.shape)}{hint}")
    if batch.ndim != 4 or batch.shape[1:] != (h, w, 3):
        raise BatchError(f"{name}: predict() takes {want}; got shape {tuple(batch.shape)}")
    return batch


def check_outputs(n_outputs: Any, classes: Sequence[str], name: str) -> None:
    """ModelError (exit 4) when an artifact's static output width is not the number of class names."""
    try:
        n = int(n_outputs)
    except (TypeError, ValueError):
        return  # a symbolic width: checked on the first batch by the callers that count columns
    if n != len(classes):
        raise ModelError(f"{name}: the model has {n} outputs but its manifest lists {len(classes)} class names; "
                         "convert it again with --classes FILE (one name per output)")
