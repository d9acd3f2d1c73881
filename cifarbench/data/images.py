"""The one image loader: any file Pillow reads -> RGB uint8 (H, W, 3) at the model's own size, or a reason.

Every command goes through ``load_image`` so a photo is preprocessed the same way
whether it is classified, benchmarked or served. Failures come back as an
``ImageResult`` with ``error`` set; nothing raises through a batch loop.

Memory is decided from the header, before any pixel is allocated: an image over ``max_pixels``
(default 50 MP for classify, bench and serve alike) is refused, JPEGs decode at a reduced DCT scale,
other big images are box-reduced right after decoding (before any full-size mode conversion), and
each decode holds its cost in the process's shared ``DecodeBudget`` while it runs. What C decoders
print to fd 2 (libtiff) is captured per file and kept in the error, never shown.

Over 300 lines on purpose: the guide asks for one image loader, and its format, orientation, resize
and memory rules have to be read together to see that every command gets the same pixels.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import stat
import threading
import warnings
from dataclasses import dataclass
from types import EllipsisType
from typing import IO, BinaryIO, Iterator, Union

import numpy as np
from PIL import Image, ImageFile

from cifarbench.data import decode_sandbox
from cifarbench.data.cstderr import capture_fd2
from cifarbench.data.decode_budget import MIB, process_budget, return_big_frees_to_os
from cifarbench.data.image_reduce import REDUCING_GAP, decode_cost, draft_target, pixel_bytes, shrink
from cifarbench.data.transform import INTERPOLATIONS, RESIZE_POLICIES, SizeLike, Transform, as_transform
from cifarbench.errors import UsageError, first_line

ImageSource = Union[str, "os.PathLike[str]", bytes, bytearray, memoryview]

IMAGE_EXTENSIONS = frozenset(
    ".jpg .jpeg .jpe .png .bmp .gif .webp .tif .tiff .ppm .pgm .pbm .pnm .avif .heic .heif .jp2 .tga .ico".split()
)
DEFAULT_MAX_PIXELS = 50_000_000  # per image, for classify, bench and serve: 200 MB as RGBA
# Formats whose decoders never write to fd 2 (Pillow's own code, or libjpeg with Pillow's handlers):
# they skip the capture. Everything else (libtiff above all) is decoded with fd 2 captured.
_SILENT_FORMATS = frozenset(("JPEG", "MPO", "PNG", "GIF", "BMP", "DIB", "PPM", "TGA", "ICO", "BLP", "DDS", "QOI",
                             "PCX", "SGI", "IM", "WEBP", "JPEG2000"))
PAD_COLOR = (255, 255, 255)  # same white that transparency is composited on
_HIGH_BIT_MODES = frozenset(("I;16", "I;16B", "I;16L", "I;16N", "I", "F"))
_ALPHA_MODES = frozenset(("RGBA", "LA", "RGBa", "La", "PA"))

ImageFile.LOAD_TRUNCATED_IMAGES = False  # truncated files are errors, even if another library flipped it

# Corrupt files make Pillow's plugins warn ("Corrupt EXIF data", "Tag data larger than file")
# on stderr; the loader already turns real failures into per-file reasons.
warnings.filterwarnings("ignore", category=UserWarning, module=r"PIL\.")
logging.getLogger("PIL").addHandler(logging.NullHandler())  # no "lastResort" lines unless logging is set up

try:  # optional HEIC/HEIF support through the `heif` extra
    import pillow_heif  # type: ignore

    pillow_heif.register_heif_opener()
except Exception:  # pragma: no cover - optional dependency
    pass

# Pillow's pixel limit is a module global; swapping it is serialised so threads (serve) never race.
_LIMIT_LOCK = threading.RLock()
_NO_HOLD = contextlib.nullcontext(0)
_default_max_pixels: int | None = DEFAULT_MAX_PIXELS


@contextlib.contextmanager
def default_max_pixels(value: int | None) -> Iterator[None]:
    """Within the block, ``load_image`` calls that name no limit use ``value``.

    How a command's ``--max-pixels`` reaches loads it does not call itself (``bench`` through the
    data layer). Process-wide: meant for a CLI command's whole run, not for concurrent callers.
    """
    global _default_max_pixels
    if value is not None and value < 1:
        raise UsageError(f"--max-pixels must be >= 1, got {value}")
    old, _default_max_pixels = _default_max_pixels, value
    try:
        yield
    finally:
        _default_max_pixels = old


def current_max_pixels() -> int | None:
    """The limit a ``load_image`` call that names none uses now (a cache of decoded data keys on it)."""
    return _default_max_pixels


@dataclass(frozen=True)
class ImageResult:
    """``array`` (uint8 [H, W, 3], RGB) on success, else ``error``: a one-line reason."""

    array: np.ndarray | None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def load_image(
    src: ImageSource,
    size: SizeLike = 32,
    resize: str | None = None,
    max_pixels: int | None | EllipsisType = ...,
    *,
    draft: bool = True,
    crop_pct: float | None = None,
    interpolation: str | None = None,
) -> ImageResult:
    """Decode ``src`` (a path or encoded bytes) to an RGB uint8 array of shape (H, W, 3).

    ``size``: an int (square), (H, W), or a whole ``Transform`` (a model's input contract).
    ``resize``: ``center-crop`` (cover the target, centre crop; the default), ``squash`` (ignore aspect)
    or ``pad`` (fit inside, white borders); ``crop_pct`` (timm's) resizes to floor(size / crop_pct) first;
    ``interpolation``: bilinear, bicubic or lanczos (the default). Arguments given here override a
    Transform's fields. ``max_pixels`` refuses bigger images from
    their header (``None`` disables it; ``...``: the process default, see ``default_max_pixels``).
    Only a bad size/resize/crop/interpolation raises; every
    per-file problem is returned as ``ImageResult(None, reason)``. ``draft=False`` decodes
    JPEGs at full size (the reference the loader benchmark compares against).
    """
    t = as_transform(size, resize, crop_pct, interpolation)
    if max_pixels is ...:
        max_pixels = _default_max_pixels
    try:
        data = _read_source(src)
        if isinstance(data, str):  # a reason, not bytes
            return ImageResult(None, data)
        fp = io.BytesIO(data) if isinstance(data, (bytes, bytearray, memoryview)) else data
        try:
            return ImageResult(_decode(fp, t, max_pixels, draft))
        finally:
            fp.close()
    except Image.DecompressionBombError as exc:
        return ImageResult(None, f"image too large, refused as a decompression bomb ({first_line(exc)})")
    except (_DecodeFailed, decode_sandbox.DecodeRefused) as exc:  # a decoder error, or the sandbox's verdict
        return ImageResult(None, str(exc))
    except Image.UnidentifiedImageError:
        return ImageResult(None, "not an image (no installed Pillow plugin recognises it)")
    except FileNotFoundError:
        return ImageResult(None, "file not found")
    except PermissionError:
        return ImageResult(None, "permission denied")
    except IsADirectoryError:
        return ImageResult(None, "is a directory, not an image")
    except OSError as exc:
        msg = first_line(exc)
        low = msg.lower()
        if "truncated" in low or "broken data stream" in low or "premature end" in low:
            return ImageResult(None, f"truncated image ({msg})")
        return ImageResult(None, f"corrupt or unreadable image ({msg})")
    except MemoryError:
        return ImageResult(None, "out of memory while decoding")
    except Exception as exc:  # a corrupt file can make any plugin raise anything; never break the batch
        return ImageResult(None, f"corrupt or unsupported image ({type(exc).__name__}: {first_line(exc)})")


_OPEN_FLAGS = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
_READ_WHOLE_MAX = 32 << 20  # larger files are streamed: a video renamed .jpg is refused from its header


def _read_source(src: ImageSource) -> bytes | bytearray | memoryview | BinaryIO | str:
    """The encoded bytes (or, for big files, an open file), or a string reason why there are none.

    One open + fstat + read: O_NONBLOCK so a FIFO named like an image cannot hang the batch,
    and the whole file in one read (faster than Pillow's many small reads for 32x32 JPEGs).
    """
    if isinstance(src, (bytes, bytearray, memoryview)):
        return src if len(src) else "empty file (0 bytes)"
    fd = os.open(os.fspath(src), _OPEN_FLAGS)  # FileNotFoundError / PermissionError map to reasons
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            return "is a directory, not an image"
        if not stat.S_ISREG(st.st_mode):
            return "not a regular file"
        if st.st_size == 0:
            return "empty file (0 bytes)"
        if st.st_size > _READ_WHOLE_MAX:
            fh = os.fdopen(fd, "rb")
            fd = -1  # now owned by fh, closed by the caller
            return fh
        with open(fd, "rb", buffering=0, closefd=False) as raw:
            data = raw.readall()
    finally:
        if fd >= 0:
            os.close(fd)
    return data if data else "empty file (0 bytes)"


def _decode(fp: IO[bytes], t: Transform, max_pixels: int | None, draft: bool) -> np.ndarray:
    pillow_limit = Image.MAX_IMAGE_PIXELS
    if pillow_limit is not None and (max_pixels is None or max_pixels > pillow_limit):
        # A limit above Pillow's must also hold for the checks plugins make while loading
        # (TIFF strips, GIF frames): rare, so the whole decode runs with the global lifted.
        with _pillow_limit(None):
            return _decode_unlocked(fp, t, max_pixels, draft)
    return _decode_unlocked(fp, t, max_pixels, draft)


def _decode_unlocked(fp: IO[bytes], t: Transform, max_pixels: int | None, draft: bool) -> np.ndarray:
    head = fp.read(4)
    fp.seek(0)
    if decode_sandbox.wanted_before_open(head):  # Image.open itself would decode (ICO): open it in the child
        return _sandboxed(fp, "ICO", 0, t, max_pixels, draft)
    im = _open_checked(fp, max_pixels, decode_sandbox.decodes_at_open(head))
    if decode_sandbox.wanted(im):  # a decoder that can outgrow the header's price: capped, in a child
        try:
            return _sandboxed(fp, im.format, decode_cost(im, t), t, max_pixels, draft)
        finally:
            im.close()
    try:
        # A JPEG's EXIF is in its header: read before the draft, so a rotated photo drafts for its turned target.
        jpeg_tagged = im.format == "JPEG" and ("exif" in im.info or "xmp" in im.info)
        orientation = _orientation(im) if jpeg_tagged else 1
        if draft and im.format == "JPEG" and (im.width > t.size[1] or im.height > t.size[0]):
            # Decode at the smallest DCT scale (1/2, 1/4, 1/8) that still covers the target.
            im.draft(None, draft_target(im.size, _turned(t, orientation)))
        cost = decode_cost(im, t)  # priced after the draft: the pixels this decode really allocates
        if cost >= 4 * MIB:
            return_big_frees_to_os()  # once per process: freed decodes leave, not linger in thread arenas
        with process_budget().hold(cost) if cost >= MIB else _NO_HOLD:  # small images: no lock at all
            _load(im)
            if im.format != "JPEG":  # plain JPEGs skip the EXIF parse; PNG may carry it after the pixels
                orientation = _orientation(im)
            turned = _turned(t, orientation)
            small, mode = shrink(im, turned)
            if small is not im:
                im.close()  # the full-size pixels go now, before any conversion
            out = _fit(_to_rgb(small, mode), turned)
        if orientation in _TRANSPOSE:  # every policy is centred, so fitting the turned target then rotating is the same
            out = out.transpose(_TRANSPOSE[orientation])
        # tobytes + frombuffer is ~3x cheaper than numpy's __array_interface__ path for 32x32;
        # the bytearray makes the result writeable.
        return np.frombuffer(bytearray(out.tobytes()), dtype=np.uint8).reshape(out.height, out.width, 3)
    finally:
        im.close()


def _sandboxed(fp: IO[bytes], fmt: str | None, cost: int, t: Transform, max_pixels: int | None,
               draft: bool) -> np.ndarray:
    return decode_sandbox.decode(fp, fmt, cost, size=t.size, resize=t.resize, crop_pct=t.crop_pct,
                                 interpolation=t.interpolation, max_pixels=max_pixels, draft=draft)


def _turned(t: Transform, orientation: int) -> Transform:
    """The target before an EXIF rotation by 90 degrees (orientations 5-8): W x H instead of H x W."""
    if orientation in (5, 6, 7, 8) and t.size[0] != t.size[1]:
        return Transform((t.size[1], t.size[0]), t.resize, t.crop_pct, t.interpolation)
    return t


class _DecodeFailed(Exception):
    """A decoder error, worded with the first line the C library printed about it."""


def _load(im: Image.Image) -> None:
    """``im.load()``, with fd 2 captured for decoders that print (libtiff): nothing reaches a terminal."""
    if im.format in _SILENT_FORMATS:
        im.load()
        return
    with capture_fd2() as cap:
        try:
            im.load()
            return
        except (OSError, ValueError, SyntaxError) as exc:
            failure: BaseException = exc
    said = cap.first_line()
    if not said:
        raise failure
    msg = first_line(failure)
    kind = "truncated image" if "truncated" in msg.lower() else "corrupt or unreadable image"
    lib = "libtiff" if im.format == "TIFF" else f"{im.format} decoder"
    raise _DecodeFailed(f"{kind} ({msg}; {lib}: {said})")


_TRANSPOSE = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
              5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
              8: Image.Transpose.ROTATE_90}


def _orientation(im: Image.Image) -> int:
    """The EXIF (or XMP) orientation tag; a malformed block must not cost the pixels: 1 then."""
    try:
        value = im.getexif().get(0x0112, 1)
        return int(value) if isinstance(value, int) else 1
    except Exception:
        return 1


@contextlib.contextmanager
def _pillow_limit(value: int | None) -> Iterator[None]:
    with _LIMIT_LOCK:
        old = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = value
        try:
            yield
        finally:
            Image.MAX_IMAGE_PIXELS = old


def _open_checked(fp: IO[bytes], max_pixels: int | None, decodes: bool = False) -> Image.Image:
    """``Image.open`` under our own limit, with a clear message instead of Pillow's 2x-limit rule.

    ``decodes``: this format's open already decodes an image (ICO). Then Pillow's own check, which runs on
    what the open decodes, is set to refuse exactly above ``max_pixels`` (it raises above twice its global).
    """
    if not decodes:
        with _pillow_limit(None):  # header parse only; the check below is exact and warning-free
            im = Image.open(fp)
    else:
        try:
            with _pillow_limit(None if max_pixels is None else max_pixels / 2):
                im = Image.open(fp)
        except Image.DecompressionBombError:
            raise Image.DecompressionBombError(f"an image inside the file is over the limit of {max_pixels:,} "
                                               "pixels (--max-pixels)") from None
    w, h = im.size
    if max_pixels is not None and w * h > max_pixels:
        need = w * h * pixel_bytes(im.mode)
        im.close()
        raise Image.DecompressionBombError(f"{w}x{h} = {w * h:,} pixels, {need / 1e6:,.0f} MB to decode; "
                                           f"limit {max_pixels:,} pixels (--max-pixels)")
    if w < 1 or h < 1:
        im.close()
        raise ValueError(f"image has no pixels ({w}x{h})")
    return im


def _to_rgb(im: Image.Image, source_mode: str | None = None) -> Image.Image:
    """Normalise every Pillow mode to RGB; transparency is composited on white.

    ``source_mode``: the mode the file had, when ``_shrink`` widened 16-bit pixels to ``I``.
    """
    mode = im.mode
    if mode == "RGB" and "transparency" not in im.info:
        return im
    if mode in _HIGH_BIT_MODES:
        scale_mode = source_mode if source_mode in _HIGH_BIT_MODES else mode
        return Image.fromarray(_scale_to_u8(np.asarray(im), scale_mode), "L").convert("RGB")
    if mode in _ALPHA_MODES or "transparency" in im.info:  # P/L/RGB with tRNS, GIF transparency
        rgba = im.convert("RGBA")
        background = Image.new("RGBA", rgba.size, PAD_COLOR + (255,))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return im.convert("RGB")  # CMYK, YCbCr, LAB, HSV, L, P without transparency


def _scale_to_u8(arr: np.ndarray, mode: str) -> np.ndarray:
    """High-bit-depth greyscale to 8 bit by scaling its nominal range, never by clipping.

    16-bit modes map 0..65535; ``I`` data that fits 8 or 16 bits uses that range; ``F`` in 0..1
    maps 0..1; anything else (negative or wider values) is min-max stretched.
    """
    a = arr.astype(np.float32)
    finite = np.isfinite(a)
    if not finite.all():
        fill = float(a[finite].min()) if finite.any() else 0.0
        a = np.where(finite, a, fill)
    lo, hi = (float(a.min()), float(a.max())) if a.size else (0.0, 0.0)
    if mode.startswith("I;16"):
        lo, hi = 0.0, 65535.0
    elif mode == "I" and lo >= 0 and hi <= 65535:
        lo, hi = 0.0, (255.0 if hi <= 255 else 65535.0)
    elif mode == "F" and lo >= 0 and hi <= 1.0:
        lo, hi = 0.0, 1.0
    span = (hi - lo) or 1.0
    return np.clip(np.rint((a - lo) * (255.0 / span)), 0, 255).astype(np.uint8)


_FILTERS = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC,
            "lanczos": Image.Resampling.LANCZOS}
assert set(_FILTERS) == set(INTERPOLATIONS)


def _fit(im: Image.Image, size: SizeLike, resize: str | None = None) -> Image.Image:
    """Resample the transform's source box straight into place (antialiased); white borders for ``pad``.

    ``reducing_gap`` box-reduces what ``shrink`` left big. Rotating the result by EXIF orientation
    afterwards is only right for a symmetric target, so the caller transposes before fitting a
    non-square one (see ``_decode_unlocked``).
    """
    t = as_transform(size, resize)
    h_t, w_t = t.size
    if im.size == (w_t, h_t) and t.pct == 1.0:
        return im
    box, (x, y, w, h) = t.placement(im.size)
    part = im.resize((w, h), _FILTERS[t.interpolation], box=box, reducing_gap=REDUCING_GAP)
    if (w, h) == (w_t, h_t):
        return part
    canvas = Image.new("RGB", (w_t, h_t), PAD_COLOR)
    canvas.paste(part, (x, y))
    return canvas


def fit_array(pixels: np.ndarray, size: SizeLike, resize: str | None = None) -> np.ndarray:
    """An RGB uint8 (h, w, 3) array resampled to a transform's target, exactly as a decoded file would be."""
    out = _fit(Image.fromarray(np.ascontiguousarray(pixels, dtype=np.uint8), "RGB"), as_transform(size, resize))
    return np.asarray(out, dtype=np.uint8).copy()


_draft_target = draft_target  # the names the loader's tests and benchmark have used
