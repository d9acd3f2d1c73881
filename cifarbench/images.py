"""The one image loader: any file Pillow reads -> RGB uint8 (size, size, 3), or a reason.

Every command goes through ``load_image`` so a photo is preprocessed the same way
whether it is classified, benchmarked or served. Failures come back as an
``ImageResult`` with ``error`` set; nothing raises through a batch loop.
"""

from __future__ import annotations

import io
import os
import warnings
from dataclasses import dataclass
from typing import Union

import numpy as np
from PIL import Image, ImageFile, ImageOps

ImageSource = Union[str, "os.PathLike[str]", bytes]

RESIZE_POLICIES = ("center-crop", "squash", "pad")
DEFAULT_MAX_PIXELS = 89_478_485  # Pillow's own default limit (~0.25 GB of RGBA at 24 bit)

ImageFile.LOAD_TRUNCATED_IMAGES = False

try:  # optional HEIC/HEIF support through the `heif` extra
    import pillow_heif  # type: ignore

    pillow_heif.register_heif_opener()
except Exception:  # pragma: no cover - optional dependency
    pass


@dataclass(frozen=True)
class ImageResult:
    array: np.ndarray | None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def load_image(
    src: ImageSource,
    size: int = 32,
    resize: str = "center-crop",
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
) -> ImageResult:
    """Decode ``src`` to an RGB uint8 array of shape (size, size, 3)."""
    if resize not in RESIZE_POLICIES:
        raise ValueError(f"unknown resize policy {resize!r}; choose from {', '.join(RESIZE_POLICIES)}")
    try:
        if isinstance(src, (bytes, bytearray, memoryview)):
            if len(src) == 0:
                return ImageResult(None, "empty file (0 bytes)")
            fp: object = io.BytesIO(bytes(src))
        else:
            path = os.fspath(src)
            if os.path.isdir(path):
                return ImageResult(None, "is a directory, not an image")
            if os.path.getsize(path) == 0:
                return ImageResult(None, "empty file (0 bytes)")
            fp = path
        return ImageResult(_decode(fp, size, resize, max_pixels))
    except Image.DecompressionBombError as exc:
        return ImageResult(None, f"decompression bomb refused: {exc}")
    except Image.UnidentifiedImageError:
        return ImageResult(None, "not an image Pillow can read")
    except FileNotFoundError:
        return ImageResult(None, "file not found")
    except PermissionError:
        return ImageResult(None, "permission denied")
    except OSError as exc:
        msg = str(exc) or type(exc).__name__
        if "truncated" in msg.lower() or "broken data stream" in msg.lower():
            return ImageResult(None, f"truncated or corrupt image: {msg}")
        return ImageResult(None, f"unreadable image: {msg}")
    except (ValueError, SyntaxError, EOFError, MemoryError) as exc:
        return ImageResult(None, f"unreadable image: {type(exc).__name__}: {exc}")


def _decode(fp: object, size: int, resize: str, max_pixels: int | None) -> np.ndarray:
    old_limit = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = max_pixels
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(fp) as im:  # type: ignore[arg-type]
                if im.format == "JPEG" and max(im.size) > 2 * size:
                    # Decode at the smallest DCT scale that still covers the target.
                    im.draft("RGB", _draft_target(im.size, size, resize))
                im.load()
                im = ImageOps.exif_transpose(im)
                rgb = _to_rgb(im)
    finally:
        Image.MAX_IMAGE_PIXELS = old_limit
    return np.asarray(_fit(rgb, size, resize), dtype=np.uint8)


def _draft_target(wh: tuple[int, int], size: int, resize: str) -> tuple[int, int]:
    w, h = wh
    if resize == "center-crop":
        scale = size / min(w, h)
    elif resize == "pad":
        scale = size / max(w, h)
    else:
        return (size, size)
    return (max(size, int(w * scale)), max(size, int(h * scale)))


def _to_rgb(im: Image.Image) -> Image.Image:
    """Normalise every Pillow mode to RGB; transparency is composited on white."""
    mode = im.mode
    if mode == "RGB":
        return im
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(im, dtype=np.float64)
        lo, hi = float(np.nanmin(arr)), float(np.nanmax(arr))
        if mode.startswith("I;16"):
            lo, hi = 0.0, 65535.0
        elif mode == "I" and lo >= 0 and hi <= 65535:
            lo, hi = 0.0, (255.0 if hi <= 255 else 65535.0)
        elif mode == "F" and lo >= 0 and hi <= 1.0:
            lo, hi = 0.0, 1.0
        span = (hi - lo) or 1.0
        arr8 = np.clip(np.rint((np.nan_to_num(arr, nan=lo) - lo) * (255.0 / span)), 0, 255).astype(np.uint8)
        return Image.fromarray(arr8, "L").convert("RGB")
    if mode == "P" or mode == "PA":
        im = im.convert("RGBA")
        mode = "RGBA"
    if mode in ("RGBA", "LA", "RGBa", "La"):
        rgba = im.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return im.convert("RGB")  # CMYK, YCbCr, LAB, HSV, L, 1


def _fit(im: Image.Image, size: int, resize: str) -> Image.Image:
    if im.size == (size, size):
        return im
    if resize == "squash":
        return im.resize((size, size), Image.Resampling.LANCZOS, reducing_gap=3.0)
    if resize == "pad":
        return ImageOps.pad(im, (size, size), Image.Resampling.LANCZOS, color=(255, 255, 255))
    return ImageOps.fit(im, (size, size), Image.Resampling.LANCZOS)
