"""The eval transform: how a photo becomes the model's H x W pixels (timm's ``resolve_data_config`` in one value).

``size`` (H, W, any aspect), ``resize`` (``center-crop``, ``squash`` or ``pad``), ``crop_pct``
(resize so the target is that fraction of the resized image, then centre-crop: timm's eval
recipe) and ``interpolation`` (bilinear, bicubic, lanczos). convert stores it in the manifest's
input contract; every command decodes with it unless its own options override a field. The
geometry lives here once, so the loader, its JPEG draft and its memory budget agree on it.
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass
from typing import Any, Union

from cifarbench.errors import UsageError

RESIZE_POLICIES = ("center-crop", "squash", "pad")
INTERPOLATIONS = ("bilinear", "bicubic", "lanczos")
DEFAULT_INTERPOLATION = "lanczos"  # what every release before this one used


def parse_size(value: Any) -> tuple[int, int]:
    """``32`` -> (32, 32); ``(64, 48)`` -> (64, 48) as (H, W); anything else: UsageError."""
    try:
        if isinstance(value, (tuple, list)):
            if len(value) != 2:
                raise TypeError
            h, w = (operator.index(v) for v in value)
        else:
            h = w = operator.index(value)  # numpy integers too
    except TypeError:
        raise UsageError(f"image size must be a positive integer or H,W, got {value!r}") from None
    if h < 1 or w < 1:
        raise UsageError(f"image size must be positive, got {value!r}")
    return int(h), int(w)


@dataclass(frozen=True)
class Transform:
    """How the loader maps any image to ``size`` (H, W) RGB pixels; validated on construction."""

    size: tuple[int, int] = (32, 32)
    resize: str = "center-crop"
    crop_pct: float | None = None  # None: 1.0 (the target is the whole resized image)
    interpolation: str = DEFAULT_INTERPOLATION

    def __post_init__(self) -> None:
        object.__setattr__(self, "size", parse_size(self.size))
        if self.resize not in RESIZE_POLICIES:
            raise UsageError(f"unknown resize policy {self.resize!r}; choose from {', '.join(RESIZE_POLICIES)}")
        if self.interpolation not in INTERPOLATIONS:
            raise UsageError(f"unknown interpolation {self.interpolation!r}; choose from {', '.join(INTERPOLATIONS)}")
        if self.crop_pct is not None:
            try:
                pct = float(self.crop_pct)
            except (TypeError, ValueError):
                pct = float("nan")
            if not 0.0 < pct <= 1.0:  # nan fails too
                raise UsageError(f"--crop-pct must be in (0, 1], got {self.crop_pct!r}")
            object.__setattr__(self, "crop_pct", pct)

    @property
    def pct(self) -> float:
        return 1.0 if self.crop_pct is None else self.crop_pct

    def scales(self, wh: tuple[int, int]) -> tuple[float, float]:
        """Source -> resized scale factors (x, y); the target is then the centre H x W of the resized image.

        center-crop: the shorter side (relative to the target's aspect) to floor(size / crop_pct); squash:
        both sides to it; pad: the longer side to it (white borders fill the rest).
        """
        (h_t, w_t), (w, h) = self.size, wh
        # timm's scale_size: math.floor(size / crop_pct) per side (224 at 0.9 -> 248, not 248.9)
        h_s, w_s = self.scale_size
        if self.resize == "squash":
            return w_s / w, h_s / h
        s = (max if self.resize == "center-crop" else min)(w_s / w, h_s / h)
        return s, s

    @property
    def scale_size(self) -> tuple[int, int]:
        """(H, W) the image is resized to before the centre crop: timm's ``floor(size / crop_pct)``."""
        pct = self.pct
        return math.floor(self.size[0] / pct), math.floor(self.size[1] / pct)

    def draft_target(self, wh: tuple[int, int]) -> tuple[int, int]:
        """The smallest decoded (w, h) from which the resize still downsamples (never upsamples)."""
        sx, sy = self.scales(wh)
        return max(1, math.ceil(wh[0] * sx - 1e-9)), max(1, math.ceil(wh[1] * sy - 1e-9))

    def placement(self, wh: tuple[int, int]) -> tuple[tuple[float, float, float, float], tuple[int, int, int, int]]:
        """(source box l, t, r, b) resampled into (destination x, y, w, h): the one geometry of every policy."""
        sx, sy = self.scales(wh)
        xs = _axis(wh[0], sx, self.size[1])
        ys = _axis(wh[1], sy, self.size[0])
        return (xs[0], ys[0], xs[1], ys[1]), (xs[2], ys[2], xs[3], ys[3])

    def to_dict(self) -> dict[str, Any]:
        return {"resize": self.resize, "crop_pct": self.crop_pct, "interpolation": self.interpolation}

    def describe(self) -> str:
        h, w = self.size
        crop = f", crop {self.crop_pct:g}" if self.crop_pct is not None else ""
        return f"{h}x{w} {self.resize}{crop}, {self.interpolation}"


def _axis(n: int, s: float, target: int) -> tuple[float, float, int, int]:
    """One axis: (source start, source end, destination offset, destination length)."""
    resized = n * s
    if resized >= target - 1e-6:  # crop: the centred ``target`` of the resized axis
        lo = max(0.0, (resized - target) / 2 / s)  # float rounding must not leave the image
        return lo, min(float(n), lo + target / s), 0, target
    length = max(1, min(target, round(resized)))  # pad: the whole axis, centred
    return 0.0, float(n), (target - length) // 2, length


SizeLike = Union[int, "tuple[int, int]", Transform]


def as_transform(size: SizeLike = 32, resize: str | None = None, crop_pct: float | None = None,
                 interpolation: str | None = None) -> Transform:
    """A Transform from the loader's arguments: a Transform as it is (fields given here override it)."""
    if isinstance(size, Transform):
        if resize is None and crop_pct is None and interpolation is None:
            return size
        return Transform(size.size, resize or size.resize, size.crop_pct if crop_pct is None else crop_pct,
                         interpolation or size.interpolation)
    return Transform(parse_size(size), resize or "center-crop", crop_pct, interpolation or DEFAULT_INTERPOLATION)
