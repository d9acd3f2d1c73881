"""The image loader's parts one at a time, each against numbers written out here (not recomputed by the loader).

test_images.py feeds whole files through ``load_image``; these pin what a whole file cannot show cheaply: each
branch of the 16-bit/float scaling at its limit and one past it, the exact one-line reasons, what the decode
passes on to the sandbox and the budget, which JPEGs are drafted, and the EXIF turn of a non-square target.
"""

from __future__ import annotations

import io
import os
import re
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from PIL import Image, ImageOps

from cifarbench.data import decode_budget, decode_sandbox, image_reduce, images
from cifarbench.data.decode_budget import MIB
from cifarbench.data.images import load_image
from cifarbench.data.transform import Transform


def encode(im: Image.Image, fmt: str, **kw: object) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def noise(h: int, w: int, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


def scale(values: list[float], mode: str) -> list[int]:
    dtype = np.float32 if mode == "F" else (np.uint16 if mode.startswith("I;16") else np.int32)
    return images._scale_to_u8(np.asarray(values, dtype=dtype), mode).tolist()


# ----------------------------------------------------------------------------- 16-bit and float to 8 bit


@pytest.mark.parametrize("values, mode, want", [
    # I;16: always its nominal 0..65535 (x * 255 / 65535, rounded), whatever the values' own range
    ([0, 257, 32768, 65535], "I;16", [0, 1, 128, 255]),
    ([0, 200], "I;16", [0, 1]),
    ([0, 200], "I;16B", [0, 1]),
    # I holding 8-bit values keeps them; the limit is 255: one past it switches to the 16-bit range
    ([0, 100, 255], "I", [0, 100, 255]),
    ([0, 256], "I", [0, 1]),
    ([0, 300, 33025], "I", [0, 1, 129]),  # 33025 / 257 = 128.502: 129 over 65535, 128 over 65536
    # ... and 65535 is the last value the 16-bit range covers; one past it is min-max stretched
    ([5, 32768, 65535], "I", [0, 128, 255]),
    ([1, 32768, 65536], "I", [0, 127, 255]),  # (32768 - 1) * 255 / 65535 = 127.498
    # I with a negative value: min-max
    ([-2, 0, 1], "I", [0, 170, 255]),
    ([-1, 0, 1], "I", [0, 128, 255]),
    # F in 0..1 keeps 0..1; at exactly 1.0 still; beyond either end: min-max
    ([0.25, 0.5], "F", [64, 128]),
    ([0.0, 0.5], "F", [0, 128]),
    ([0.5, 1.0], "F", [128, 255]),
    ([0.0, 0.75, 1.5], "F", [0, 128, 255]),
    ([-1.0, 0.0, 1.0], "F", [0, 128, 255]),
    ([3.0, 3.0], "F", [0, 0]),  # a flat image: no division by zero
])
def test_scale_to_u8_each_branch_at_its_limit(values: list[float], mode: str, want: list[int]) -> None:
    assert scale(values, mode) == want


def test_scale_to_u8_ignores_nan_and_inf() -> None:
    nan, inf = float("nan"), float("inf")
    assert scale([nan, 0.2, 0.6], "F") == [51, 51, 153]  # NaN takes the finite minimum, 0.2 -> 51
    assert scale([inf, 0.5], "F") == [128, 128]
    assert scale([-inf, -1.0, 1.0], "F") == [0, 0, 255]
    assert scale([nan, nan], "F") == [0, 0]  # nothing finite: zeros, no exception
    assert images._scale_to_u8(np.zeros((0, 3), np.float32), "F").shape == (0, 3)  # no pixels at all


def test_scale_to_u8_keeps_shape_and_gives_uint8() -> None:
    out = images._scale_to_u8(np.full((2, 3), 65535, np.uint16), "I;16")
    assert out.dtype == np.uint8 and out.shape == (2, 3) and (out == 255).all()


def test_to_rgb_leaves_plain_rgb_alone_and_scales_widened_16_bit_by_its_source_mode() -> None:
    rgb = Image.new("RGB", (2, 2), (1, 2, 3))
    assert images._to_rgb(rgb) is rgb  # no copy for the common case
    widened = Image.fromarray(np.array([[0, 200]], np.int32), "I")  # a 16-bit file that shrink() widened to I
    assert np.asarray(images._to_rgb(widened, "I;16"))[0, :, 0].tolist() == [0, 1]  # 200 of 65535
    assert np.asarray(images._to_rgb(widened))[0, :, 0].tolist() == [0, 200]  # a real I image of 8-bit values
    assert images._to_rgb(widened).mode == "RGB"


def test_big_16_bit_png_is_scaled_from_its_16_bit_range_after_shrinking() -> None:
    """A 16-bit PNG big enough to be reduced before conversion: its dark values stay dark."""
    vals = np.tile(np.linspace(0, 255, 512).astype(np.uint16), (512, 1))  # all <= 255 of 65535
    src = Image.fromarray(vals)
    assert src.mode == "I;16"
    res = load_image(encode(src, "PNG"), 32)
    assert res.ok, res.error
    assert int(res.array.max()) <= 1  # 255 / 65535 * 255 = 0.99


# ----------------------------------------------------------------------------- EXIF orientation


def test_turned_swaps_height_and_width_for_the_four_quarter_turns_only() -> None:
    t = Transform((24, 40), "pad", 0.875, "bicubic")
    swapped = Transform((40, 24), "pad", 0.875, "bicubic")
    for orientation in range(0, 10):
        want = swapped if orientation in (5, 6, 7, 8) else t
        assert images._turned(t, orientation) == want, orientation
    square = Transform((32, 32), "squash", None, "bilinear")
    for orientation in range(1, 9):
        assert images._turned(square, orientation) == square


def test_orientation_reads_only_integer_tags() -> None:
    def fake(tags: Any = None, error: Exception | None = None) -> Any:
        def getexif() -> Any:
            if error:
                raise error
            return tags
        return SimpleNamespace(getexif=getexif)

    assert images._orientation(fake({0x0112: 6})) == 6
    assert images._orientation(fake({})) == 1
    assert images._orientation(fake({0x0112: "6"})) == 1  # a text tag from a broken writer
    assert images._orientation(fake({0x0112: 6.0})) == 1
    assert images._orientation(fake(error=SyntaxError("not a TIFF"))) == 1


def rotated(fmt: str, orientation: int, size: tuple[int, int] = (60, 36), **kw: Any) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(noise(size[1], size[0], orientation), fmt, exif=exif.tobytes(), **kw)


@pytest.mark.parametrize("orientation", [3, 6, 8])
@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_rotated_photo_fits_a_non_square_target_like_exif_transpose_then_resize(fmt: str, orientation: int) -> None:
    """Oracle: Pillow's exif_transpose, then Pillow's own resize to the (H, W) = (24, 40) target with squash."""
    data = rotated(fmt, orientation, quality=100) if fmt == "JPEG" else rotated(fmt, orientation)
    with Image.open(io.BytesIO(data)) as im:
        upright = ImageOps.exif_transpose(im).convert("RGB")
    want = np.asarray(upright.resize((40, 24), Image.Resampling.LANCZOS))
    got = load_image(data, (24, 40), "squash", draft=False)
    assert got.ok, got.error
    assert got.array.shape == (24, 40, 3)
    assert np.abs(got.array.astype(int) - want.astype(int)).max() <= 1


def test_orientation_from_xmp_alone_turns_a_jpeg() -> None:
    xmp = (b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
           b'<rdf:Description xmlns:tiff="http://ns.adobe.com/tiff/1.0/" tiff:Orientation="6"/></rdf:RDF></x:xmpmeta>')
    data = encode(noise(20, 40), "JPEG", quality=100, xmp=xmp)
    with Image.open(io.BytesIO(data)) as im:
        assert "exif" not in im.info and "xmp" in im.info
        want = np.asarray(ImageOps.exif_transpose(im).convert("RGB"))  # 20 wide x 40 tall
    got = load_image(data, (40, 20), "squash", draft=False)
    assert got.ok and np.array_equal(got.array, want)


# ----------------------------------------------------------------------------- which JPEGs are drafted


@pytest.fixture
def draft_calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[tuple[int, int], Transform]]:
    calls: list[tuple[tuple[int, int], Transform]] = []
    real = images.draft_target

    def spy(wh: tuple[int, int], t: Any, resize: Any = None) -> tuple[int, int]:
        calls.append((wh, t))
        return real(wh, t, resize)

    monkeypatch.setattr(images, "draft_target", spy)
    return calls


@pytest.mark.parametrize("wh, size, drafted", [
    ((32, 32), (32, 32), False),   # exactly the target: nothing to gain
    ((33, 32), (32, 32), True),    # one column more
    ((32, 33), (32, 32), True),    # one row more
    ((256, 32), (32, 32), True),   # wider only
    ((40, 24), (24, 40), False),   # non-square target met exactly (W 40, H 24)
    ((40, 30), (24, 40), True),    # taller than H only
    ((41, 24), (24, 40), True),    # wider than W only
])
def test_a_jpeg_is_drafted_when_either_side_exceeds_the_target(
        draft_calls: list[Any], wh: tuple[int, int], size: tuple[int, int], drafted: bool) -> None:
    res = load_image(encode(noise(wh[1], wh[0]), "JPEG"), size, "pad")
    assert res.ok, res.error
    assert bool(draft_calls) == drafted
    assert not load_image(encode(noise(wh[1], wh[0]), "PNG"), size, "pad").error and len(draft_calls) == int(drafted)


def test_draft_of_a_rotated_jpeg_covers_the_turned_target(draft_calls: list[Any]) -> None:
    assert load_image(rotated("JPEG", 6, (400, 300)), (24, 40), "center-crop").ok
    assert [t.size for _, t in draft_calls] == [(40, 24)]
    draft_calls.clear()
    assert load_image(rotated("JPEG", 3, (400, 300)), (24, 40), "center-crop").ok
    assert [t.size for _, t in draft_calls] == [(24, 40)]
    draft_calls.clear()
    assert load_image(rotated("JPEG", 6, (400, 300)), (24, 40), "center-crop", draft=False).ok
    assert draft_calls == []


# ----------------------------------------------------------------------------- the decode budget


class RecordingBudget:
    def __init__(self) -> None:
        self.held: list[int] = []

    def hold(self, nbytes: int) -> Any:
        import contextlib

        self.held.append(nbytes)
        return contextlib.nullcontext(nbytes)


@pytest.mark.parametrize("cost, held, freed", [
    (MIB - 1, [], False), (MIB, [MIB], False), (4 * MIB - 1, [4 * MIB - 1], False), (4 * MIB, [4 * MIB], True)])
def test_budget_and_malloc_tuning_start_exactly_at_their_thresholds(
        monkeypatch: pytest.MonkeyPatch, cost: int, held: list[int], freed: bool) -> None:
    budget, frees = RecordingBudget(), []
    monkeypatch.setattr(images, "process_budget", lambda: budget)
    monkeypatch.setattr(images, "return_big_frees_to_os", lambda: frees.append(1) or True)
    monkeypatch.setattr(images, "decode_cost", lambda im, t: cost)
    assert load_image(encode(noise(8, 8), "PNG"), 8).ok
    assert budget.held == held and bool(frees) == freed


def test_the_cost_held_is_priced_at_the_target_after_the_draft(monkeypatch: pytest.MonkeyPatch) -> None:
    budget = RecordingBudget()
    monkeypatch.setattr(images, "process_budget", lambda: budget)
    old = decode_budget.process_budget()
    data = encode(noise(700, 900).convert("RGBA"), "PNG")  # RGBA: reduced in strips when the target is small
    t = Transform((300, 400), "squash", None, "lanczos")  # big enough that nothing is reduced
    assert load_image(data, t).ok
    with Image.open(io.BytesIO(data)) as im:
        assert budget.held == [image_reduce.decode_cost(im, t)]
        assert image_reduce.decode_cost(im, t) != image_reduce.decode_cost(im)  # the target matters
    assert decode_budget.process_budget() is old


# ----------------------------------------------------------------------------- what the sandbox is given


def test_sandboxed_decode_gets_the_whole_transform_and_every_option(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[Any, ...]] = []

    def fake_decode(fp: Any, fmt: Any, cost: int, **kw: Any) -> np.ndarray:
        calls.append((fmt, cost, kw))
        return np.zeros((24, 40, 3), np.uint8)

    monkeypatch.setattr(decode_sandbox, "wanted", lambda im: True)
    monkeypatch.setattr(decode_sandbox, "decode", fake_decode)
    data = encode(noise(700, 900).convert("RGBA"), "PNG")
    t = Transform((300, 400), "pad", 0.875, "bicubic")  # big: no strips to price, unlike the default 32x32
    res = load_image(data, t, max_pixels=1_234_567, draft=False)
    assert res.ok and res.array.shape == (24, 40, 3)
    with Image.open(io.BytesIO(data)) as im:
        cost = image_reduce.decode_cost(im, t)
        assert cost != image_reduce.decode_cost(im)
    assert calls == [("PNG", cost, {"size": (300, 400), "resize": "pad", "crop_pct": 0.875,
                                    "interpolation": "bicubic", "max_pixels": 1_234_567, "draft": False})]
    calls.clear()
    assert load_image(data, t, max_pixels=None).ok
    assert calls[0][2]["max_pixels"] is None and calls[0][2]["draft"] is True


# ----------------------------------------------------------------------------- Pillow's own global limit


@pytest.mark.parametrize("pillow_limit, max_pixels, inside", [
    (100, 1000, None),   # ours above Pillow's: Pillow's lifted for the whole decode
    (100, None, None),   # ours off: Pillow's too
    (100, 101, None),    # one past Pillow's
    (100, 100, 100),     # equal: Pillow's stays
    (100, 50, 100),      # ours below: Pillow's stays
    (None, 50, None),    # Pillow's already off
])
def test_pillows_global_limit_is_lifted_only_when_ours_is_above_it(
        monkeypatch: pytest.MonkeyPatch, pillow_limit: int | None, max_pixels: int | None, inside: int | None) -> None:
    seen: list[Any] = []
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", pillow_limit)
    monkeypatch.setattr(images, "_decode_unlocked",
                        lambda fp, t, mp, draft: seen.append((Image.MAX_IMAGE_PIXELS, mp, draft)) or "decoded")
    for draft in (True, False):
        assert images._decode(io.BytesIO(b""), Transform((8, 8)), max_pixels, draft) == "decoded"
    assert seen == [(inside, max_pixels, True), (inside, max_pixels, False)]
    assert Image.MAX_IMAGE_PIXELS == pillow_limit  # put back


# ----------------------------------------------------------------------------- the size limit and degenerate sizes


def test_over_the_pixel_limit_message_counts_the_decoded_bytes_of_the_mode() -> None:
    data = encode(Image.new("L", (1500, 1000)), "PNG")  # 1 byte a pixel: 1.5 MB, shown rounded to 2
    assert load_image(data, 8, max_pixels=1_500_000).ok  # at the limit
    assert load_image(data, 8, max_pixels=1_499_999).error == (
        "image too large, refused as a decompression bomb (1500x1000 = 1,500,000 pixels, 2 MB to decode; "
        "limit 1,499,999 pixels (--max-pixels))")


@pytest.mark.parametrize("wh", [(1, 5), (5, 1), (1, 1)])
def test_one_pixel_wide_or_tall_images_load(wh: tuple[int, int]) -> None:
    res = load_image(encode(Image.new("RGB", wh, (9, 99, 199)), "PNG"), 4)
    assert res.ok and res.array.shape == (4, 4, 3) and (res.array == (9, 99, 199)).all()


@pytest.mark.parametrize("wh", [(0, 5), (5, 0)])
def test_an_image_without_pixels_is_refused_before_decoding(monkeypatch: pytest.MonkeyPatch, wh: tuple[int, int]) -> None:
    # Pillow's plugins refuse a zero side themselves; a plugin that did not would meet this check.
    monkeypatch.setattr(Image, "open", lambda fp: Image.new("RGB", wh))
    w, h = wh
    assert load_image(b"any bytes", 8).error == (
        f"corrupt or unsupported image (ValueError: image has no pixels ({w}x{h}))")


# ----------------------------------------------------------------------------- reading the file


def test_read_source_reasons_word_for_word(tmp_path: Path) -> None:
    assert images._read_source(b"") == "empty file (0 bytes)"
    assert images._read_source(tmp_path) == "is a directory, not an image"
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    assert images._read_source(fifo) == "not a regular file"
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    assert images._read_source(empty) == "empty file (0 bytes)"
    one = tmp_path / "one.png"
    one.write_bytes(b"x")  # one byte: read, then Pillow says what it is not
    assert images._read_source(one) == b"x"
    assert load_image(one).error == "not an image (no installed Pillow plugin recognises it)"


def test_a_file_that_reads_empty_despite_its_size_is_empty(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """/proc-like files report a size and read nothing (or shrank between fstat and read)."""
    p = tmp_path / "shrunk.png"
    p.write_bytes(b"")
    real = os.fstat
    monkeypatch.setattr(os, "fstat", lambda fd: os.stat_result((real(fd).st_mode,) + tuple(real(fd))[1:6] + (10,)
                                                                 + tuple(real(fd))[7:10]))
    assert images._read_source(p) == "empty file (0 bytes)"


def test_whole_read_limit_at_the_limit_and_one_past(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(images, "_READ_WHOLE_MAX", 100)
    at, past = tmp_path / "at.png", tmp_path / "past.png"
    at.write_bytes(bytes(100))
    past.write_bytes(bytes(101))
    assert images._read_source(at) == bytes(100)
    fh = images._read_source(past)
    try:
        assert not isinstance(fh, (bytes, str)) and fh.read() == bytes(101)
    finally:
        fh.close()


def test_read_source_closes_its_descriptor_even_when_it_is_fd_0(tmp_path: Path) -> None:
    p = tmp_path / "a.png"
    p.write_bytes(b"abc")
    saved = os.dup(0)
    try:
        os.close(0)  # the next open gets descriptor 0 (a daemon started with stdin closed)
        assert images._read_source(p) == b"abc"
        with pytest.raises(OSError):
            os.fstat(0)  # closed again: no descriptor leaked
    finally:
        os.dup2(saved, 0)
        os.close(saved)


# ----------------------------------------------------------------------------- load_image's reasons


@pytest.mark.parametrize("exc, reason", [
    (FileNotFoundError(2, "gone"), "file not found"),
    (PermissionError(13, "no"), "permission denied"),
    (IsADirectoryError(21, "dir"), "is a directory, not an image"),
    (MemoryError(), "out of memory while decoding"),
    (OSError("image file is Truncated (5 bytes not processed)"), "truncated image (image file is Truncated (5 bytes not processed))"),
    (OSError("Broken data stream when reading image file"), "truncated image (Broken data stream when reading image file)"),
    (OSError("Premature end of JPEG file"), "truncated image (Premature end of JPEG file)"),
    (OSError("decoder error -2\nmore"), "corrupt or unreadable image (decoder error -2)"),
    (KeyError("boom"), "corrupt or unsupported image (KeyError: 'boom')"),
    (Image.UnidentifiedImageError("x"), "not an image (no installed Pillow plugin recognises it)"),
])
def test_each_failure_is_one_exact_reason(monkeypatch: pytest.MonkeyPatch, exc: BaseException, reason: str) -> None:
    def fail(*_: Any) -> Any:
        raise exc

    monkeypatch.setattr(images, "_decode", fail)
    res = load_image(b"bytes")
    assert res.array is None and res.error == reason and not res.ok


def test_missing_file_reason(tmp_path: Path) -> None:
    res = load_image(tmp_path / "nope.png")
    assert res.array is None and res.error == "file not found"


def test_crop_pct_and_interpolation_given_as_arguments_are_used() -> None:
    """Oracle: Pillow's resize of the centre box written out by hand (timm: resize to floor(32/0.5)=64, crop 32)."""
    src = noise(64, 64, 3)
    data = encode(src, "PNG")
    got = load_image(data, 32, "center-crop", crop_pct=0.5, interpolation="bilinear")
    assert got.ok
    want = np.asarray(src.crop((16, 16, 48, 48)))  # 64 -> 64 is no resize; the centre 32x32 of it
    assert np.array_equal(got.array, want)
    for name, flt in (("bilinear", Image.Resampling.BILINEAR), ("bicubic", Image.Resampling.BICUBIC),
                      ("lanczos", Image.Resampling.LANCZOS)):
        res = load_image(data, 24, "squash", interpolation=name)
        assert np.array_equal(res.array, np.asarray(src.resize((24, 24), flt))), name


# ----------------------------------------------------------------------------- fitting


def test_fit_returns_an_image_already_at_the_target_untouched() -> None:
    im = noise(24, 40)
    assert images._fit(im, (24, 40)) is im
    zoomed = images._fit(im, Transform((24, 40), "center-crop", 0.5, "bilinear"))
    assert zoomed is not im and zoomed.size == (40, 24)
    want = im.resize((40, 24), Image.Resampling.BILINEAR, box=(10, 6, 30, 18))  # the centre half, scaled up 2x
    assert np.array_equal(np.asarray(zoomed), np.asarray(want))


def test_fit_uses_pillows_reducing_gap_for_big_reductions() -> None:
    im = noise(640, 640, 7)
    got = np.asarray(images._fit(im, (32, 32)))
    want = np.asarray(im.resize((32, 32), Image.Resampling.LANCZOS, box=(0, 0, 640, 640),
                                reducing_gap=image_reduce.REDUCING_GAP))
    exact = np.asarray(im.resize((32, 32), Image.Resampling.LANCZOS))
    assert np.array_equal(got, want) and not np.array_equal(got, exact)  # the gap made a difference here


@pytest.mark.parametrize("size, resize", [((32, 32), "center-crop"), ((24, 40), "pad"), ((40, 24), "squash"),
                                          (Transform((20, 20), "center-crop", 0.75, "bicubic"), None)])
def test_fit_array_matches_decoding_the_same_pixels_from_a_file(size: Any, resize: str | None) -> None:
    pixels = np.asarray(noise(50, 90, 5))[:, ::1]
    got = images.fit_array(pixels[:, :-1], size, resize)  # a non-contiguous view, as a dataset slice is
    res = load_image(encode(Image.fromarray(np.ascontiguousarray(pixels[:, :-1])), "PNG"), size, resize)
    assert res.ok and got.dtype == np.uint8 and got.flags.writeable and got.flags.c_contiguous
    assert np.array_equal(got, res.array)


def test_fit_array_takes_other_integer_dtypes() -> None:
    pixels = np.full((10, 10, 3), 77, np.int64)
    out = images.fit_array(pixels, 5)
    assert out.shape == (5, 5, 3) and out.dtype == np.uint8 and (out == 77).all()


# ----------------------------------------------------------------------------- C libraries' stderr


class FakeImage:
    """What ``_load`` uses of an image: its format and ``load()``, here one that prints to fd 2 and fails."""

    def __init__(self, fmt: str, prints: bytes = b"", error: Exception | None = None) -> None:
        self.format, self.prints, self.error = fmt, prints, error

    def load(self) -> None:
        if self.prints:
            os.write(2, self.prints)
        if self.error:
            raise self.error


@pytest.mark.parametrize("fmt, prints, error, reason", [
    ("TIFF", b"TIFFReadDirectory: bad strip\nsecond line\n", OSError("decoder error -2"),
     "corrupt or unreadable image (decoder error -2; libtiff: TIFFReadDirectory: bad strip)"),
    ("TIFF", b"ZIPDecode: data error\n", OSError("image file is truncated"),
     "truncated image (image file is truncated; libtiff: ZIPDecode: data error)"),
    ("XYZ", b"xyz: bad block\n", ValueError("broken data stream"),
     "corrupt or unreadable image (broken data stream; XYZ decoder: xyz: bad block)"),
    ("XYZ", b"xyz: short read\n", SyntaxError("Truncated File Read"),
     "truncated image (Truncated File Read; XYZ decoder: xyz: short read)"),
])
def test_a_decoders_printed_line_goes_into_the_reason(capfd: pytest.CaptureFixture[str], fmt: str, prints: bytes,
                                                       error: Exception, reason: str) -> None:
    with pytest.raises(images._DecodeFailed) as info:
        images._load(FakeImage(fmt, prints, error))
    assert str(info.value) == reason
    assert capfd.readouterr().err == ""


def test_a_failure_without_a_printed_line_is_raised_as_it_was(capfd: pytest.CaptureFixture[str]) -> None:
    err = OSError("decoder error -9")
    with pytest.raises(OSError) as info:
        images._load(FakeImage("TIFF", b"", err))
    assert info.value is err and capfd.readouterr().err == ""
    images._load(FakeImage("TIFF", b"a warning only\n"))  # printed, no failure: nothing raised, nothing shown
    assert capfd.readouterr().err == ""


def test_silent_formats_are_not_captured(capfd: pytest.CaptureFixture[str]) -> None:
    """Pillow's own decoders print nothing; skipping the capture saves two dup2 calls a file."""
    err = OSError("broken PNG")
    with pytest.raises(OSError) as info:
        images._load(FakeImage("PNG", b"from a silent format\n", err))
    assert info.value is err
    assert capfd.readouterr().err == "from a silent format\n"


def test_reason_for_a_real_corrupt_tiff_names_libtiff_in_one_line() -> None:
    from test_images import corrupt_tiff  # the same crafted file the loader's tests use

    from PIL import features

    if not features.check("libtiff"):
        pytest.skip("Pillow without libtiff")
    with Image.open(io.BytesIO(corrupt_tiff())) as im:
        with pytest.raises(images._DecodeFailed) as info:
            images._load(im)
    assert re.fullmatch(r"(corrupt or unreadable|truncated) image \(.+; libtiff: .+\)", str(info.value))


# ----------------------------------------------------------------------------- ICO: Image.open itself decodes


def test_an_ico_goes_to_the_sandbox_before_pillow_opens_it(monkeypatch: pytest.MonkeyPatch) -> None:
    from hostile import ico_png

    calls: list[tuple[Any, ...]] = []

    def fake_decode(fp: Any, fmt: Any, cost: int, **kw: Any) -> np.ndarray:
        calls.append((fmt, cost, kw))
        return np.zeros((24, 40, 3), np.uint8)

    def no_open(*_: Any, **__: Any) -> Any:
        raise AssertionError("Pillow opened the ICO in this process")

    monkeypatch.setattr(decode_sandbox, "decode", fake_decode)
    monkeypatch.setattr(images, "_open_checked", no_open)
    t = Transform((24, 40), "pad", 0.875, "bicubic")
    assert load_image(ico_png(8, 8), t, max_pixels=4321, draft=False).ok
    assert calls == [("ICO", 0, {"size": (24, 40), "resize": "pad", "crop_pct": 0.875, "interpolation": "bicubic",
                                 "max_pixels": 4321, "draft": False})]


class ReadRecorder(io.BytesIO):
    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.reads: list[Any] = []

    def read(self, n: Any = -1) -> bytes:
        self.reads.append(n)
        return super().read(n)


def test_the_format_sniff_reads_a_few_bytes_not_the_file() -> None:
    fp = ReadRecorder(encode(noise(20, 30), "PNG"))
    images._decode_unlocked(fp, Transform((8, 8)), None, True)
    assert isinstance(fp.reads[0], int) and 0 < fp.reads[0] <= 16  # a big streamed file is never slurped here


@pytest.fixture
def no_sandbox() -> Any:
    old = decode_sandbox.limits()
    decode_sandbox.configure(decode_sandbox.SandboxLimits(enabled=False))
    yield
    decode_sandbox.configure(old)


@pytest.mark.parametrize("wh, limit, ok", [((1000, 1000), 1_000_000, True), ((1001, 1000), 1_000_000, False),
                                           ((1000, 1000), 999_999, False)])
def test_without_the_sandbox_an_icos_open_is_bounded_exactly_by_the_limit(
        no_sandbox: None, wh: tuple[int, int], limit: int, ok: bool) -> None:
    from hostile import ico_png

    res = load_image(ico_png(*wh), 8, max_pixels=limit)
    if ok:
        assert res.ok and res.array.shape == (8, 8, 3), res.error
    else:
        assert res.error == ("image too large, refused as a decompression bomb (an image inside the file is over the "
                             f"limit of {limit:,} pixels (--max-pixels))")


def test_without_the_sandbox_an_ico_without_a_limit_opens(no_sandbox: None) -> None:
    from hostile import ico_png

    res = load_image(ico_png(300, 200), 8, max_pixels=None)
    assert res.ok and not res.array.any()
