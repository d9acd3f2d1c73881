"""Helpers for tests and demos: a tiny trained model in seconds."""

from __future__ import annotations

import os
from pathlib import Path


def build_tiny_keras_model(out_dir: str | os.PathLike[str], data_root: str | os.PathLike[str], epochs: int = 15) -> Path:
    """Train ``tiny-cnn`` on an image-folder tree (train/ and test/ splits); returns the .keras path."""
    from cifarbench.training.train import train

    out = Path(out_dir)
    train("tiny-cnn", out, data=str(data_root), epochs=epochs, val_size=100, seed=0, precision="float32", threads=2)
    return out / "model.keras"
