"""The checkpoint of a training run: what an interrupted run needs to continue exactly where it stopped.

``<out>/checkpoint/`` holds last.keras (the model with its optimizer state), best.keras (the best
validation epoch so far), lookahead.npz (airbench's EMA weights) and state.json (epochs done, the
history, the best epoch, seconds trained). Each file is replaced atomically after every epoch.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from cifarbench.atomic import atomic_write

CHECKPOINT_DIR = "checkpoint"


def save_model(model: Any, path: Path) -> None:
    """Keras insists on a .keras suffix, so the temp file gets one; the rename is atomic."""
    tmp = path.with_name(f".{path.stem}.tmp.keras")
    model.save(tmp)
    os.replace(tmp, path)


def save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    with atomic_write(path, "wb") as fh:
        np.savez(fh, **arrays)


def fresh_state() -> dict[str, Any]:
    return {"epoch": 0, "history": [], "best_val_acc": -1.0, "best_epoch": 0, "train_seconds": 0.0}


class Checkpoint:
    """``<out>/checkpoint``; emptied first unless the run resumes."""

    def __init__(self, out: Path, resume: bool) -> None:
        self.dir = out / CHECKPOINT_DIR
        if not resume and self.dir.exists():
            shutil.rmtree(self.dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.resumable = resume and (self.dir / "state.json").is_file()

    def load(self, keras: Any, weight_decay: bool, lookahead: Any | None) -> tuple[Any, dict[str, Any]]:
        """The last epoch's model (compiled, with its optimizer) and the run state; custom classes registered first."""
        model = keras.models.load_model(self.dir / "last.keras")
        state = json.loads((self.dir / "state.json").read_text())
        if weight_decay:
            model.optimizer.exclude_from_weight_decay(var_names=["gamma", "beta", "bias"])
        if lookahead and (self.dir / "lookahead.npz").is_file():
            with np.load(self.dir / "lookahead.npz") as z:
                lookahead.load_state(dict(z))
        return model, state

    def save(self, model: Any, state: dict[str, Any], lookahead: Any | None, best: bool) -> None:
        """After an epoch: best.keras when it is the best so far, then last.keras, the EMA and state.json."""
        if best:
            save_model(model, self.dir / "best.keras")
        save_model(model, self.dir / "last.keras")
        if lookahead:
            save_npz(self.dir / "lookahead.npz", lookahead.state())
        with atomic_write(self.dir / "state.json") as fh:
            json.dump(state, fh, indent=1)

    def path(self, name: str) -> Path:
        return self.dir / name
