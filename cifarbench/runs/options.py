"""The options of one ``classify`` run, checked once, each bad value a UsageError naming its option.

``classify()`` takes them as keywords (or a ready ``ClassifyOptions``); the CLI, the benchmarks and
the Ray engine all pass through ``validated`` so a bad value fails the same way everywhere, before
a model is loaded or an output locked.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

from cifarbench.backends.tta import TTA_MODES
from cifarbench.data.decode_pool import POOLS
from cifarbench.data.images import DEFAULT_MAX_PIXELS, RESIZE_POLICIES
from cifarbench.data.transform import Transform
from cifarbench.errors import UsageError
from cifarbench.runs.writers import OUTPUT_FORMATS

if TYPE_CHECKING:
    from cifarbench.engines import EngineOptions

DEVICES = ("cpu", "gpu", "auto")


@dataclass(frozen=True)
class ClassifyOptions:
    """What to classify with and where the rows go; the defaults are the CLI's."""

    model: str | os.PathLike[str] | None = None
    backend: str | None = None
    device: str = "cpu"
    threads: int | None = None
    batch_size: int | None = None  # None: images_per_batch(model size, 256): 256 up to 64x64, 20 at 224x224
    workers: int | None = None
    top_k: int = 1
    output: str | os.PathLike[str] | None = None
    fmt: str = "csv"
    recursive: bool = True
    include: Sequence[str] = ()
    resize: str | None = None  # None: the manifest's (convert's --resize; center-crop for older models)
    crop_pct: float | None = None  # None: the manifest's
    interpolation: str | None = None  # None: the manifest's (lanczos for older models)
    resume: bool = False
    pool: str = "auto"
    max_pixels: int | None = DEFAULT_MAX_PIXELS
    engine: "EngineOptions | None" = None
    tta: str = "none"  # test-time augmentation: none | flip | flip-translate (backends/tta.py)

    def validated(self, has_stream: bool) -> "ClassifyOptions":
        """Self, if every option is usable (``has_stream``: rows go to a stream instead of ``output``)."""
        choices = {"--pool": (self.pool, POOLS), "--format": (self.fmt, OUTPUT_FORMATS), "--tta": (self.tta, TTA_MODES),
                   "--resize": (self.resize, RESIZE_POLICIES), "--device": (self.device, DEVICES)}
        for flag, (value, allowed) in choices.items():
            if value not in allowed and not (value is None and flag == "--resize"):
                raise UsageError(f"{flag}: unknown value {value!r}; choose from {', '.join(allowed)}")
        minimum = {"--batch-size": (self.batch_size, 1), "--top-k": (self.top_k, 1), "--threads": (self.threads, 1),
                   "--workers": (self.workers, 0), "--max-pixels": (self.max_pixels, 1)}
        for flag, (value, least) in minimum.items():
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < least):
                raise UsageError(f"{flag} must be an integer >= {least}, got {value!r}")
        Transform((1, 1), self.resize or "center-crop", self.crop_pct, self.interpolation or "lanczos")  # UsageError now
        if (self.output is None) != has_stream:
            raise UsageError("give exactly one of an output file or a stream")
        if self.resume and self.output is None:
            raise UsageError("--resume needs --output FILE (it reuses that file's rows)")
        if isinstance(self.include, str):  # a lone glob would be taken letter by letter
            return dataclasses.replace(self, include=(self.include,)).validated(has_stream)
        return self
