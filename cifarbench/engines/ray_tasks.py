"""The cluster side of ``--engine ray``: Ray Data decode tasks and the inference actor.

Workers import this module by name, so it stays small and imports Ray only inside the actor. Text
(paths, error reasons) crosses as bytes that round-trip any Python str, names that are not UTF-8
included; pixels stay in the object store between a decode task and an actor.
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from cifarbench.data.images import DEFAULT_MAX_PIXELS
from cifarbench.errors import DataError
from cifarbench.models.manifest import MANIFEST_NAME, Manifest
from cifarbench.runs.writers import display_text

SHARED_FS_HINT = "with --engine ray every PATH must be readable at the same path on every node (a shared filesystem)"


def _enc(text: str) -> bytes:
    """Any str (surrogates from non-UTF-8 names included) as bytes that round-trip exactly."""
    return text.encode("utf-8", "surrogatepass")


def _dec(raw: Any) -> str:
    return bytes(raw).decode("utf-8", "surrogatepass")


_CHECKED_ROOTS: set[bytes] = set()


def _check_roots(roots: Sequence[bytes]) -> None:
    """Fail the run, not each file, when this node cannot see a PATH: the filesystem is not shared."""
    for root in roots:
        if root in _CHECKED_ROOTS:
            continue
        if not os.path.exists(root):
            host = socket.gethostname()
            raise DataError(f"{display_text(os.fsdecode(root))} is not readable on Ray node {host}: {SHARED_FS_HINT}")
        _CHECKED_ROOTS.add(root)


def decode_block(batch: dict[str, np.ndarray], size: Any, resize: Any, roots: Sequence[bytes],
                 max_pixels: int | None = DEFAULT_MAX_PIXELS) -> dict[str, np.ndarray]:
    """A Ray Data task: paths -> pixels with the one loader (same transform, same pixel limit); a failed
    file keeps its reason. One file at a time, so a worker holds at most one big image.

    ``resize``: the model's whole ``Transform`` (its size wins), or a policy name for ``size``."""
    from cifarbench.data.images import load_image
    from cifarbench.data.transform import Transform, as_transform

    t = resize if isinstance(resize, Transform) else as_transform(size, resize)
    _check_roots(roots)
    n = len(batch["idx"])
    pixels = np.zeros((n, *t.size, 3), np.uint8)
    ok = np.zeros(n, bool)
    errors: list[bytes] = []
    for i, (path, known) in enumerate(zip(batch["path"], batch["error"])):
        if len(known):
            errors.append(bytes(known))
            continue
        r = load_image(os.fsdecode(bytes(path)), t, max_pixels=max_pixels)
        if r.array is not None:
            pixels[i], ok[i] = r.array, True
            errors.append(b"")
        else:
            errors.append(_enc(r.error or "unknown error"))
    return {"idx": batch["idx"], "pixels": pixels, "ok": ok, "error": np.array(errors, dtype=object)}


class Predictor:
    """A Ray Data actor: loads the model once (from the object store), then scores decoded batches."""

    def __init__(self, model: dict[str, Any], backend: str, device: str, threads: int, tta: str = "none") -> None:
        import ray

        from cifarbench import backends
        from cifarbench.backends.tta import with_tta

        artifact = ray.get(model["artifact"])
        tmp = tempfile.mkdtemp(prefix="cifarbench-model-")
        try:
            Path(tmp, MANIFEST_NAME).write_bytes(model["manifest"])
            Path(tmp, model["file"]).write_bytes(artifact)
            manifest = Manifest.load(tmp)
            self.backend = with_tta(backends.load_backend(backend, manifest, device, threads), tta)  # checks the sha256
        finally:
            shutil.rmtree(tmp, ignore_errors=True)  # runtimes hold the model in memory (or an open mapping)
        self.classes = len(manifest.classes)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from cifarbench.runs.rows import probs_of

        ok = np.asarray(batch["ok"], bool)
        probs = np.full((len(ok), self.classes), np.nan, np.float32)
        if ok.any():
            probs[ok] = probs_of(self.backend.predict, np.asarray(batch["pixels"])[ok])
        return {"idx": batch["idx"], "probs": probs, "ok": ok, "error": batch["error"]}
