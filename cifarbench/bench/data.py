"""The images bench measures on (labelled, at the model's size, or synthetic), and the decode timing of the source."""

from __future__ import annotations

import os
import tarfile
import time
import zipfile
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import numpy as np

from cifarbench.data.images import IMAGE_EXTENSIONS, load_image
from cifarbench.data.sources import Dataset, images_at, load_dataset, members_of, source_path
from cifarbench.data.transform import Transform
from cifarbench.errors import CifarbenchError


@dataclass
class BenchData:
    """The images every row of one (class list, input size) is measured on; ``labels`` None: synthetic."""

    images: np.ndarray
    labels: np.ndarray | None
    subset: str  # "all N images" or "random K of N images (seed S)" or "N random images at HxW (seed S)"
    dataset: Dataset | None
    load_s: float

    @property
    def skipped(self) -> list[tuple[str, str]]:
        return self.dataset.skipped if self.dataset is not None else []


def synthetic(size: Sequence[int], count: int, seed: int) -> BenchData:
    """Uniform random RGB pixels at the model's input size, no labels (benchmark_app without -i).

    Seeded, so an isolated row's process draws the very images its parent did.
    """
    h, w = int(size[0]), int(size[1])
    images = np.random.default_rng([seed, 0x5F7]).integers(0, 256, (count, h, w, 3), dtype=np.uint8)
    return BenchData(images, None, f"{count} random images at {h}x{w} (seed {seed}), no labels", None, 0.0)


def load_subset(source: str, classes: Sequence[str], limit: int | None, seed: int,
                transform: Transform | None = None) -> BenchData:
    """The test split (a flat tree: all of it, folders matched to ``classes``) at the model's size, with its transform.

    The split is loaded (and cached) at 32x32 first; only the images measured are decoded at the model's size.
    """
    t0 = time.perf_counter()
    ds = load_dataset(source, "test", classes=classes)
    if limit is None or limit >= len(ds):
        idx, subset = np.arange(len(ds)), f"all {len(ds)} images"
    else:  # a seeded random subset: the sources list images class by class, so the first N would be one class
        idx = np.sort(np.random.default_rng(seed).permutation(len(ds))[:limit])
        subset = f"random {limit} of {len(ds)} images (seed {seed})"
    images = images_at(ds, idx, transform or Transform())
    return BenchData(images, ds.labels[idx], subset, ds, time.perf_counter() - t0)


def _encoded_members(source: str, k: int) -> Iterator[bytes]:
    """Up to ``k`` encoded image files of a folder or archive source (the data layer's walker), undecoded."""
    count = 0
    with members_of(source_path(source)) as members:
        for name, read in members:
            if count >= k:
                return
            base = name.rsplit("/", 1)[-1]
            if os.path.splitext(base)[1].lower() in IMAGE_EXTENSIONS and not base.startswith("."):
                count += 1
                yield read()


def measure_decode(source: str, k: int, transform: Transform | None = None) -> dict[str, Any]:
    """Decode + preprocess time per image through the one loader and the model's transform, on the source's files."""
    if k <= 0 or source == "cifar10":
        return {"images": 0, "note": "not measured: the source holds raw pixel arrays, nothing to decode"}
    try:
        blobs = list(_encoded_members(source, k))
    except (OSError, tarfile.TarError, zipfile.BadZipFile, CifarbenchError) as exc:
        return {"images": 0, "note": f"not measured: {exc}"}
    if not blobs:
        return {"images": 0, "note": "not measured: the source holds raw pixel arrays, nothing to decode"}
    times, failed = [], 0
    for b in blobs:
        t0 = time.perf_counter()
        ok = load_image(b, transform if transform is not None else 32).ok
        times.append(time.perf_counter() - t0)
        failed += not ok
    total = sum(times)
    return {"images": len(blobs), "failed": failed, "seconds": total, "images_per_s": len(blobs) / total if total else None,
            "mean_ms": 1000 * total / len(blobs), "mean_bytes": float(np.mean([len(b) for b in blobs]))}
