"""What decoding an image will cost, from its header, and how big images are decoded reduced.

The loader asks ``decode_cost`` before any pixel is allocated (to refuse or budget the decode),
``draft_target`` for the JPEG DCT scale, and ``shrink`` right after decoding: a big palette, alpha,
16-bit or CMYK image is box-reduced first, its mode conversions made one strip of rows at a time,
so the full-size pixels are the decode's only big allocation.
"""

from __future__ import annotations

from PIL import Image, ImageMode

from cifarbench.data.transform import SizeLike, as_transform

REDUCING_GAP = 3.0  # big images are box-reduced to >= 3x the target, then Lanczos-resampled
_REDUCIBLE = frozenset(("L", "RGB", "RGBA", "LA", "CMYK", "I", "F", "RGBX", "YCbCr", "LAB"))


def decode_cost(im: Image.Image, size: SizeLike = 32, resize: str | None = None) -> int:
    """Bytes a decode of the opened (not yet loaded) ``im`` allocates at its peak, from the header alone.

    Pixels x bytes per pixel as Pillow stores them (1 for L/P/1, 2 for 16-bit, 4 for every
    multi-band mode, RGB included), plus one strip of working copy when ``shrink`` converts.
    Measured peaks match it (7000x7000: RGBA PNG 196 MB, RGB 196 MB, palette 49 MB, + strip).
    """
    w, h = im.size
    stored = w * h * pixel_bytes(im.mode)
    if needs_shrink(im, reduce_factors((w, h), size, resize)):
        stored += 3 * _STRIP_BYTES  # the converted strip, its premultiplied copy, its reduction
    return stored


_STRIP_BYTES = 4 << 20  # working copies are made one strip of rows at a time


def pixel_bytes(mode: str) -> int:
    try:
        if Image.getmodebands(mode) > 1:
            return 4
        return max(1, int(ImageMode.getmode(mode).typestr[-1]))
    except (KeyError, ValueError):
        return 4


def reduce_factors(wh: tuple[int, int], size: SizeLike, resize: str | None = None) -> tuple[int, int]:
    """Integer box-reduction factors that keep at least ``REDUCING_GAP`` x the resampling target."""
    tw, th = draft_target(wh, size, resize)
    return max(1, int(wh[0] / tw / REDUCING_GAP)), max(1, int(wh[1] / th / REDUCING_GAP))


def needs_shrink(im: Image.Image, factors: tuple[int, int]) -> bool:
    """Plain RGB is reduced inside the resize, from the crop box, without a copy: nothing to gain."""
    if factors == (1, 1) or (im.mode == "RGB" and "transparency" not in im.info):
        return False
    return im.mode in _REDUCIBLE or im.mode in ("P", "PA", "1") or im.mode.startswith("I;16")


def shrink(im: Image.Image, size: SizeLike, resize: str | None = None) -> tuple[Image.Image, str]:
    """Box-reduce a big decoded image before any full-size conversion; returns it and the mode to scale from.

    Without this, a 50 MP RGBA PNG is copied four times at full size on its way to RGB. Conversions
    that reduce() needs (palette/1-bit/transparent to RGB(A), 16-bit to ``I``, alpha premultiplied)
    are made one strip of rows at a time, so the full-size image is the only big allocation. The
    second value is the original mode, so 16-bit scaling stays right.
    """
    mode = im.mode
    factors = reduce_factors(im.size, size, resize)
    if not needs_shrink(im, factors):
        return im, mode
    if mode in ("P", "PA", "1") or "transparency" in im.info:
        target = "RGBA" if mode == "PA" or "transparency" in im.info else "RGB"
    elif mode.startswith("I;16"):
        target = "I"
    else:
        target = mode
    (fx, fy), (w, h) = factors, im.size
    rows = fy * max(1, _STRIP_BYTES // (4 * w * fy))
    out: Image.Image | None = None
    for top in range(0, h, rows):
        strip = im.crop((0, top, w, min(h, top + rows)))
        if strip.mode != target:
            strip = strip.convert(target)
        part = strip.reduce((fx, fy))
        if out is None:
            out = Image.new(part.mode, (-(-w // fx), -(-h // fy)))
        out.paste(part, (0, top // fy))
    assert out is not None
    out.info = {k: v for k, v in im.info.items() if k != "transparency" or target == mode}
    return out, mode


def draft_target(wh: tuple[int, int], size: SizeLike, resize: str | None = None) -> tuple[int, int]:
    """The smallest decoded size from which the loader's resize still downsamples (never upsamples)."""
    return as_transform(size, resize).draft_target(wh)
