"""The Python API: what the CLI does, as calls.

    m = cifarbench.load("flagship")          # shipped name, folder with manifest.json, or one artifact file
    probs = m.predict(pixels)                # RGB uint8 (N, H, W, 3) at the model's own size -> (N, classes)
    for row in m.classify(["photos/"]): ...  # one Row per file, in discovery order, errors as rows
    res = cifarbench.bench("flagship", backends=["onnx", "onnx-int8"], synthetic=True)

Everything heavy (numpy, the runtimes, TensorFlow for the keras backend only) is imported inside
the calls, so ``import cifarbench`` stays cheap. Errors are ``cifarbench.errors.CifarbenchError``
subclasses, as in the library everywhere.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Sequence

from cifarbench.errors import BatchError, UsageError

if TYPE_CHECKING:
    import numpy as np

    from cifarbench.models.manifest import Manifest
    from cifarbench.runs.writers import Row

PathLike = "str | os.PathLike[str]"


class Model:
    """A loaded model on one backend: ``predict`` on pixels, ``classify`` on files."""

    def __init__(self, manifest: "Manifest", backend: Any, selection: Any) -> None:
        self.manifest, self._backend, self.selection = manifest, backend, selection

    @property
    def name(self) -> str:
        return self.manifest.name

    @property
    def classes(self) -> list[str]:
        return list(self.manifest.classes)

    @property
    def input_size(self) -> tuple[int, int]:
        """(H, W) of the pixels ``predict`` takes."""
        return tuple(self.manifest.input.size)  # type: ignore[return-value]

    @property
    def backend(self) -> str:
        return self.selection.name

    @property
    def device(self) -> str:
        return self.selection.device

    def describe(self) -> dict[str, Any]:
        """Runtime, version, threads: what the backend reports."""
        return dict(self._backend.describe())

    def __repr__(self) -> str:
        h, w = self.input_size
        return f"<cifarbench.Model {self.name!r}: {len(self.classes)} classes, {h}x{w}, {self.backend} on {self.device}>"

    def predict(self, images: "np.ndarray") -> "np.ndarray":
        """Probabilities, float32 (N, classes), for RGB uint8 pixels (N, H, W, 3) or one image (H, W, 3).

        Anything else (floats in 0-1, another size, grey images) is a BatchError (a UsageError and a ValueError,
        as from every backend's predict) saying what was expected: a model answers confidently on pixels it was
        never meant to see.
        """
        import numpy as np

        a = np.asarray(images)
        if a.ndim == 3:
            a = a[None]
        h, w = self.input_size
        if a.dtype != np.uint8:
            raise BatchError(f"predict takes RGB uint8 pixels (0-255), got dtype {a.dtype}; "
                             "for 0-1 floats use (x * 255).round().astype('uint8')")
        if a.ndim != 4 or a.shape[1:] != (h, w, 3):
            raise BatchError(f"predict takes RGB pixels of shape (N, {h}, {w}, 3) or ({h}, {w}, 3) for model "
                             f"{self.name!r}, got {tuple(np.shape(images))}; cifarbench.load_image(path, "
                             f"({h}, {w})) decodes a file to it")
        from cifarbench.runs.rows import probs_of

        return probs_of(self._backend.predict, np.ascontiguousarray(a))

    def classify(self, paths: "str | os.PathLike[str] | Sequence[str | os.PathLike[str]]", *, top_k: int = 1,
                 batch_size: int | None = None, recursive: bool = True, include: Sequence[str] = (),
                 workers: int | None = None, max_pixels: int | None = None) -> Iterator["Row"]:
        """One ``Row`` (path, label, class_index, confidence, alternatives, error) per file, in order.

        Folders are walked as ``cifarbench classify`` walks them; a file that cannot be read gets a row
        with ``error`` set instead of stopping the run. Rows are yielded batch by batch, so memory stays
        bounded however many files there are.
        """
        import numpy as np

        from cifarbench.data.decode_pool import DecodeLimits, decode_ordered
        from cifarbench.data.discover import discover
        from cifarbench.data.images import DEFAULT_MAX_PIXELS
        from cifarbench.runs.rows import _rows
        from cifarbench.runs.writers import Row
        from cifarbench.sysinfo import usable_cores

        if top_k < 1 or top_k > len(self.classes):
            raise UsageError(f"top_k must be between 1 and the model's {len(self.classes)} classes, got {top_k}")
        if batch_size is None:  # 64 up to 128x128 pixels, fewer above (20 at 224x224), like serve's micro-batches
            from cifarbench.data.batching import SERVE_BATCH, images_per_batch

            batch_size = images_per_batch(self.input_size, SERVE_BATCH)
        if batch_size < 1:
            raise UsageError(f"batch_size must be >= 1, got {batch_size}")
        if isinstance(paths, (str, os.PathLike)):
            paths = [paths]
        entries = list(discover(list(paths), recursive=recursive, include=include))
        limits = DecodeLimits(max_pixels=DEFAULT_MAX_PIXELS if max_pixels is None else max_pixels)
        decoded = decode_ordered(entries, self.manifest.input.transform, None,
                                 usable_cores() if workers is None else workers, ahead=batch_size, limits=limits)
        try:
            pending: list[tuple[str, "np.ndarray | None", str | None]] = []
            for entry, (arr, err) in zip(entries, decoded):
                pending.append((entry.path, arr, err))
                if sum(a is not None for _, a, _ in pending) == batch_size:
                    yield from self._rows(pending, top_k, _rows, Row)
                    pending = []
            yield from self._rows(pending, top_k, _rows, Row)
        finally:
            decoded.close()

    def _rows(self, items: list[tuple[str, Any, str | None]], top_k: int, rows_of: Any, row_type: Any) -> Iterator["Row"]:
        import numpy as np

        ok = [(p, a) for p, a, _ in items if a is not None]
        done = iter(rows_of(self.predict(np.stack([a for _, a in ok])), [p for p, _ in ok], self.classes, top_k)
                    if ok else [])
        for path, arr, err in items:
            yield next(done) if arr is not None else row_type(path, error=err or "unknown error")


def load(model: "str | os.PathLike[str] | None" = None, backend: str | None = "auto", device: str = "cpu",
         threads: int | None = None) -> Model:
    """Load ``model`` (default: the shipped flagship) on ``backend``; ``auto``: the fastest int8 one measured here."""
    from cifarbench import backends
    from cifarbench.models.model_ref import resolve_model

    manifest = resolve_model(model)
    selection = backends.select(manifest, backend, device, threads)
    return Model(manifest, selection.load(manifest, threads), selection)


def load_image(path: "str | os.PathLike[str] | bytes", size: Any = 32) -> "np.ndarray":
    """One image file (or its bytes) as RGB uint8 (H, W, 3) at ``size`` (an int, (H, W) or a model's transform)."""
    from cifarbench.data.images import load_image as _load
    from cifarbench.errors import DataError

    res = _load(os.fspath(path) if isinstance(path, os.PathLike) else path, size)
    if not res.ok:
        raise DataError(f"{path!s}: {res.error}")
    return res.array  # type: ignore[return-value]


@dataclass
class BenchResults:
    """The results document of one bench run (``doc``, schema cifarbench.bench) and views of it."""

    doc: dict[str, Any]

    @property
    def rows(self) -> list[dict[str, Any]]:
        """One flat dict per (model, backend[, threads]): the columns of results.csv."""
        from cifarbench.bench.report import summary_rows

        return summary_rows(self.doc)

    def row(self, model: str, backend: str) -> dict[str, Any]:
        for r in self.rows:
            if r["model"] == model and r["backend"] == backend:
                return r
        have = ", ".join(sorted({f"({r['model']!r}, {r['backend']!r})" for r in self.rows}))
        raise KeyError(f"no row for model {model!r}, backend {backend!r}; rows are named by the model's "
                       f"name, not its path: {have or 'none'}")

    def to_markdown(self) -> str:
        from cifarbench.bench.report import to_markdown

        return to_markdown(self.doc)

    def save(self, out_dir: "str | os.PathLike[str]") -> list[Path]:
        """results.json, results.csv, per_class.csv, report.md and plots, as ``cifarbench bench`` writes them."""
        from cifarbench.bench.report import write_outputs

        return write_outputs(self.doc, out_dir)[0]

    def __getitem__(self, key: str) -> Any:
        return self.doc[key]


def bench(models: "str | os.PathLike[str] | Sequence[str | os.PathLike[str]] | None" = None,
          backends: str | Sequence[str] | None = None, *, output_dir: "str | os.PathLike[str] | None" = None,
          **options: Any) -> BenchResults:
    """Bench ``models`` (default: every shipped one) on ``backends`` (default: every one; ``auto`` allowed).

    ``options`` are ``cifarbench.bench.runner.BenchConfig`` fields: ``data``, ``synthetic``, ``limit``,
    ``batch_sizes``, ``threads``, ``scenarios``, ``min_time``, ``isolate`` ... (the CLI's options, same defaults
    except ``isolate``, off here). With ``output_dir`` the files ``cifarbench bench`` writes are written there too.
    """
    from dataclasses import fields

    from cifarbench.bench.runner import BenchConfig, run_bench

    known = {f.name for f in fields(BenchConfig)} - {"models", "backends"}
    unknown = sorted(set(options) - known)
    if unknown:
        raise UsageError(f"unknown bench option(s) {', '.join(unknown)}; use {', '.join(sorted(known))}")
    specs = [models] if isinstance(models, (str, os.PathLike)) else list(models or [])
    names = [backends] if isinstance(backends, str) else (list(backends) if backends is not None else None)
    config = BenchConfig(models=[os.fspath(m) for m in specs], backends=names, **options)
    result = BenchResults(run_bench(config))
    if output_dir is not None:
        result.save(output_dir)
    return result
