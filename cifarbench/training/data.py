"""Training data: the step plan of a (possibly fractional) run and each epoch's shuffled, augmented images.

Each epoch is drawn from (seed, epoch) alone, so a resumed run sees exactly the batches the
interrupted one would have seen.
"""

from __future__ import annotations

import math

import numpy as np

from cifarbench.data.sources import Dataset
from cifarbench.errors import UsageError


def airbench_steps(n_images: int, batch_size: int, epochs: float) -> tuple[int, int]:
    """(steps per epoch with the last partial batch dropped, total steps of a possibly fractional run)."""
    per_epoch = n_images // batch_size
    return per_epoch, int(math.ceil(per_epoch * epochs))


def step_plan(n_images: int, batch_size: int, epochs: float, drop_remainder: bool) -> tuple[int, int]:
    """(steps per epoch, total steps); a fractional last epoch ends part-way through."""
    if drop_remainder and n_images >= batch_size:
        return airbench_steps(n_images, batch_size, epochs)
    per_epoch = -(-n_images // batch_size)
    return per_epoch, int(math.ceil(per_epoch * epochs))


def augment(images: np.ndarray, ops: tuple[str, ...], rng: np.random.Generator,
            flip_mask: np.ndarray | None = None, epoch: int = 0) -> np.ndarray:
    """Flips and translation by up to 2 pixels (reflect padding), vectorised.

    ``flip``: i.i.d. random flips. ``alternating-flip`` (airbench): ``flip_mask`` flips each image once
    for the run, and odd epochs mirror the whole set on top of it, so consecutive epochs see both views.
    """
    x = images
    if "translate2" in ops:
        h, w = x.shape[1:3]
        pad = np.pad(x, ((0, 0), (2, 2), (2, 2), (0, 0)), mode="reflect")
        dy, dx = rng.integers(0, 5, len(x)), rng.integers(0, 5, len(x))
        out = np.empty_like(x)
        for oy in range(5):
            for ox in range(5):
                sel = np.flatnonzero((dy == oy) & (dx == ox))
                out[sel] = pad[sel, oy : oy + h, ox : ox + w]
        x = out
    flip = None
    if "flip" in ops:
        flip = rng.random(len(x)) < 0.5
    elif "alternating-flip" in ops and flip_mask is not None:
        flip = flip_mask ^ bool(epoch % 2)
    if flip is not None:
        x = x.copy() if x is images else x
        x[flip] = x[flip, :, ::-1]
    return x


class EpochData:
    """``epoch -> (float32 images, one-hot labels)`` for the steps that epoch runs."""

    def __init__(self, ds: Dataset, num_classes: int, ops: tuple[str, ...], seed: int, batch_size: int,
                 steps: tuple[int, int]) -> None:
        self.ds, self.ops, self.seed, self.batch_size = ds, ops, seed, batch_size
        self.steps_per_epoch, self.total_steps = steps
        self.y = np.eye(num_classes, dtype=np.float32)[ds.labels]
        self.flip_mask_seed = [seed, 0xF11]  # the alternating-flip phase: fixed per run, parity per epoch
        self.flip_mask = np.random.default_rng(self.flip_mask_seed).random(len(ds)) < 0.5

    def __call__(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng([self.seed, epoch])
        order = rng.permutation(len(self.ds))
        x = augment(self.ds.images[order], self.ops, rng, self.flip_mask[order], epoch)
        steps = min(self.steps_per_epoch, self.total_steps - epoch * self.steps_per_epoch)
        n = min(len(x), steps * self.batch_size)
        return x[:n].astype(np.float32), self.y[order][:n]


def refuse_flat_tree(full: Dataset, data: str, test_data: str | None) -> None:
    """A ``<root>/<class>/`` tree has no test split: its "test" images would be the training images."""
    if test_data or not full.paths:
        return
    if not any(len(parts) >= 3 and parts[-3] == "train" for parts in (p.split("/") for p in full.paths[:50])):
        raise UsageError(f"{data} has no train/ and test/ folders, so it has no test split: pass --test-data "
                         "(e.g. --test-data bundled) to measure on images the model never saw")
