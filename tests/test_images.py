"""The image loader on tiny awkward fixtures generated here: every mode, format and failure."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, features

from cifarbench.data import image_reduce
from cifarbench.data import images
from cifarbench.data.images import load_image
from cifarbench.errors import UsageError
from conftest import run_unprivileged

RED, GREEN, BLUE, WHITE = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255)


def encode(im: Image.Image, fmt: str, **kw: object) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def solid(color: tuple[int, ...], size: tuple[int, int] = (32, 32), mode: str = "RGB") -> Image.Image:
    return Image.new(mode, size, color)


def bands(colors: list[tuple[int, int, int]], band_w: int = 32, h: int = 32) -> Image.Image:
    """Vertical colour bands, left to right."""
    arr = np.concatenate([np.full((h, band_w, 3), c, np.uint8) for c in colors], axis=1)
    return Image.fromarray(arr)


def ok(res: images.ImageResult) -> np.ndarray:
    assert res.ok, res.error
    assert res.array is not None
    assert res.array.shape == (32, 32, 3) and res.array.dtype == np.uint8
    return res.array


def near(arr: np.ndarray, color: tuple[int, int, int], tol: int) -> bool:
    return bool(np.abs(arr.reshape(-1, 3).astype(int) - np.asarray(color)).max() <= tol)


# ----------------------------------------------------------------------------- formats

LOSSLESS = ["PNG", "BMP", "TIFF", "GIF", "PPM", "TGA", "ICO"]


@pytest.mark.parametrize("fmt", LOSSLESS)
def test_lossless_formats_round_trip_exactly(fmt: str) -> None:
    rng = np.random.default_rng(0)
    src = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    if fmt == "GIF":  # 256-colour palette: use few colours so the palette is exact
        src = (src // 128) * 255
    arr = ok(load_image(encode(Image.fromarray(src), fmt)))
    np.testing.assert_array_equal(arr, src)


@pytest.mark.parametrize(
    "fmt, kw",
    [
        ("JPEG", {"quality": 95}),
        ("WEBP", {"quality": 95}),
        pytest.param("AVIF", {"quality": 95}, marks=pytest.mark.skipif(not features.check("avif"), reason="no AVIF")),
        ("JPEG2000", {}),
    ],
)
def test_lossy_formats_decode_close(fmt: str, kw: dict) -> None:
    if fmt == "JPEG2000" and not features.check("jpg_2000"):
        pytest.skip("no OpenJPEG")
    arr = ok(load_image(encode(solid((200, 40, 90)), fmt, **kw)))
    assert near(arr, (200, 40, 90), 8), arr.reshape(-1, 3).mean(0)


def test_webp_lossless_is_exact() -> None:
    src = np.random.default_rng(1).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    np.testing.assert_array_equal(ok(load_image(encode(Image.fromarray(src), "WEBP", lossless=True))), src)


def test_heic_when_extra_installed() -> None:
    pytest.importorskip("pillow_heif")
    data = encode(solid((30, 160, 220)), "HEIF", quality=95)
    assert near(ok(load_image(data)), (30, 160, 220), 12)


def test_gif_animation_uses_first_frame() -> None:
    frames = [solid(RED), solid(BLUE), solid(GREEN)]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)
    assert Image.open(io.BytesIO(data)).n_frames == 3
    assert near(ok(load_image(data)), RED, 0)


def test_accepts_path_bytes_bytearray_memoryview(tmp_path: Path) -> None:
    data = encode(solid(GREEN), "PNG")
    p = tmp_path / "g.png"
    p.write_bytes(data)
    for src in (p, str(p), data, bytearray(data), memoryview(data)):
        assert near(ok(load_image(src)), GREEN, 0)


def test_result_array_is_writeable_and_contiguous() -> None:
    arr = ok(load_image(encode(solid(RED), "PNG")))
    assert arr.flags.writeable and arr.flags.c_contiguous
    arr[0, 0] = 0  # callers may normalise in place
    assert near(arr[1:], RED, 0)


# ----------------------------------------------------------------------------- modes


def test_cmyk_jpeg_converted_to_rgb() -> None:
    cmyk = solid((0, 255, 255, 0), mode="CMYK")  # no cyan, full magenta+yellow = red
    data = encode(cmyk, "JPEG", quality=95)
    assert Image.open(io.BytesIO(data)).mode == "CMYK"
    assert near(ok(load_image(data)), RED, 6)


def test_palette_png_with_transparency_composites_on_white() -> None:
    im = Image.new("P", (32, 32), 0)
    im.putpalette([0, 0, 0, 0, 0, 255] + [0] * 762)  # 0: black (transparent), 1: blue
    im.paste(1, (16, 0, 32, 32))
    data = encode(im, "PNG", transparency=0)
    reopened = Image.open(io.BytesIO(data))
    assert reopened.mode == "P" and "transparency" in reopened.info
    arr = ok(load_image(data))
    assert near(arr[:, :16], WHITE, 0)  # transparent black shows the white background, not black
    assert near(arr[:, 16:], BLUE, 0)


def test_rgb_png_with_trns_colour_key() -> None:
    im = bands([(0, 0, 0), RED], band_w=16)
    data = encode(im, "PNG", transparency=(0, 0, 0))
    arr = ok(load_image(data))
    assert near(arr[:, :16], WHITE, 0) and near(arr[:, 16:], RED, 0)


def test_pa_image_composited() -> None:
    pa = Image.new("PA", (32, 32), (1, 0))  # palette index 1 (green), fully transparent
    pa.putpalette([0, 0, 0, 0, 255, 0] + [0] * 762)
    pa.paste((1, 255), (16, 0, 32, 32))  # opaque right half
    out = np.asarray(images._to_rgb(pa))  # Pillow cannot save PA; exercise the conversion directly
    assert near(out[:, :16], WHITE, 0) and near(out[:, 16:], GREEN, 0)


def test_la_and_rgba_composited_on_white() -> None:
    la = np.zeros((32, 32, 2), np.uint8)
    la[..., 1] = 0  # fully transparent black
    la[:, 16:, 1] = 128  # half-transparent black
    arr = ok(load_image(encode(Image.fromarray(la, "LA"), "PNG")))
    assert near(arr[:, :16], WHITE, 0)
    assert near(arr[:, 16:], (127, 127, 127), 1)

    rgba = np.zeros((32, 32, 4), np.uint8)
    rgba[...] = (255, 0, 0, 128)
    arr = ok(load_image(encode(Image.fromarray(rgba, "RGBA"), "PNG")))
    assert near(arr, (255, 127, 127), 1)


def test_one_bit_image() -> None:
    arr1 = (np.indices((32, 32)).sum(0) % 2).astype(bool)
    data = encode(Image.fromarray(arr1), "PNG")
    assert Image.open(io.BytesIO(data)).mode == "1"
    arr = ok(load_image(data))
    np.testing.assert_array_equal(arr[..., 0], np.where(arr1, 255, 0))
    assert (arr[..., 0] == arr[..., 2]).all()


def test_16_bit_png_is_scaled_not_clipped() -> None:
    g = np.linspace(0, 65535, 32 * 32).reshape(32, 32).astype(np.uint16)
    data = encode(Image.fromarray(g), "PNG")
    assert Image.open(io.BytesIO(data)).mode.startswith("I;16")
    arr = ok(load_image(data))
    expected = np.rint(g / 257.0).astype(np.uint8)
    np.testing.assert_array_equal(arr[..., 1], expected)
    assert len(np.unique(arr[..., 0])) > 200  # a full ramp, not a saturated block


def test_mode_i_tiff_wide_range_and_negative() -> None:
    g = np.linspace(0, 60000, 32 * 32).reshape(32, 32).astype(np.int32)
    im = Image.fromarray(g, "I")
    arr = ok(load_image(encode(im, "TIFF")))
    np.testing.assert_array_equal(arr[..., 0], np.rint(g / 257.0).astype(np.uint8))  # 16-bit range
    neg = (g - 30000).astype(np.int32)
    arr = ok(load_image(encode(Image.fromarray(neg, "I"), "TIFF")))
    assert arr[..., 0].min() == 0 and arr[..., 0].max() == 255  # min-max stretched
    assert arr[0, 0, 0] == 0 and arr[-1, -1, 0] == 255


def test_mode_i_holding_8_bit_values_keeps_them() -> None:
    g = np.arange(32 * 32).reshape(32, 32).astype(np.int32) % 200
    arr = ok(load_image(encode(Image.fromarray(g, "I"), "TIFF")))
    np.testing.assert_array_equal(arr[..., 2], g.astype(np.uint8))


def test_mode_f_tiff_unit_range_and_nan() -> None:
    f = np.linspace(0, 1, 32 * 32, dtype=np.float32).reshape(32, 32)
    arr = ok(load_image(encode(Image.fromarray(f, "F"), "TIFF")))
    np.testing.assert_array_equal(arr[..., 0], np.rint(f * 255).astype(np.uint8))
    wide = f * 1000 - 500
    wide[0, 0] = np.nan
    wide[0, 1] = np.inf
    arr = ok(load_image(encode(Image.fromarray(wide, "F"), "TIFF")))
    assert arr[-1, -1, 0] == 255 and arr[0, 2, 0] <= 1  # finite range stretched; NaN/inf do not poison it


# ----------------------------------------------------------------------------- EXIF, resize, draft


def test_exif_orientation_is_applied() -> None:
    im = bands([RED, BLUE])  # stored: 64 wide x 32 tall, red left, blue right
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display": left edge becomes the top
    data = encode(im, "JPEG", quality=95, exif=exif.tobytes())
    arr = ok(load_image(data, resize="squash"))
    assert near(arr[:12], RED, 12), "top should be red after rotation"
    assert near(arr[-12:], BLUE, 12), "bottom should be blue after rotation"
    plain = ok(load_image(encode(im, "JPEG", quality=95), resize="squash"))
    assert near(plain[:, :12], RED, 12) and near(plain[:, -12:], BLUE, 12)


def test_malformed_exif_does_not_lose_the_image() -> None:
    data = encode(solid(GREEN), "JPEG", quality=95, exif=b"Exif\x00\x00garbage-not-tiff")
    assert near(ok(load_image(data)), GREEN, 8)


def test_resize_policies() -> None:
    im = bands([RED, GREEN, BLUE])  # 96 x 32
    crop = ok(load_image(encode(im, "PNG")))
    assert near(crop[:, 4:-4], GREEN, 0)  # centre third only
    squash = ok(load_image(encode(im, "PNG"), resize="squash"))
    assert near(squash[:, :8], RED, 2) and near(squash[:, 13:19], GREEN, 2) and near(squash[:, -8:], BLUE, 2)
    pad = ok(load_image(encode(im, "PNG"), resize="pad"))
    assert near(pad[:9], WHITE, 0) and near(pad[-9:], WHITE, 0)  # 96x32 -> 32x11 content, white borders
    assert near(pad[12:20, :8], RED, 2) and near(pad[12:20, -8:], BLUE, 2)


def test_other_sizes_and_upscaling() -> None:
    res = load_image(encode(solid(RED, (8, 8)), "PNG"), size=np.int64(16))  # numpy ints, e.g. from a shape
    assert res.ok and res.array.shape == (16, 16, 3) and near(res.array, RED, 0)


def test_big_files_are_streamed_not_slurped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(images, "_READ_WHOLE_MAX", 100)  # pretend anything over 100 bytes is huge
    p = tmp_path / "photo.jpg"
    big = encode(Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)), "JPEG")
    p.write_bytes(big)
    assert len(big) > 100 and ok(load_image(p)).mean() > 50
    p2 = tmp_path / "movie.jpg"
    p2.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(4096))
    assert "not an image" in load_image(p2).error
    truncated = tmp_path / "cut.jpg"
    truncated.write_bytes(big[: len(big) // 2])
    assert "truncated" in load_image(truncated).error


def test_bad_policy_or_size_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="resize policy"):
        load_image(b"x", resize="stretch")
    with pytest.raises(UsageError, match="size"):
        load_image(b"x", size=0)
    with pytest.raises(UsageError, match="size"):
        load_image(b"x", size=32.0)  # type: ignore[arg-type]


def test_large_jpeg_uses_draft_and_matches_full_decode(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(3)
    base = rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)
    big = Image.fromarray(base).resize((1600, 1200), Image.Resampling.BICUBIC)  # smooth 2 MP photo
    data = encode(big, "JPEG", quality=92)

    decoded_sizes: list[tuple[int, int]] = []
    from PIL import JpegImagePlugin

    real_jpeg_load = JpegImagePlugin.JpegImageFile.load

    def spy(self):  # type: ignore[no-untyped-def]
        out = real_jpeg_load(self)
        decoded_sizes.append(self.im.size)
        return out

    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "load", spy)
    drafted = ok(load_image(data))
    assert decoded_sizes and decoded_sizes[0] == (200, 150)  # 1/8 scale: shorter side 150 >= 32
    monkeypatch.undo()

    full = Image.open(io.BytesIO(data)).convert("RGB")
    ref = np.asarray(images._fit(full, 32, "center-crop"))
    assert np.abs(drafted.astype(int) - ref).mean() < 3.0  # draft + Lanczos ~ full decode + Lanczos
    np.testing.assert_array_equal(ok(load_image(data, draft=False)), ref)  # draft=False is the plain path


@pytest.mark.parametrize("policy, wh, minimum", [("center-crop", (1000, 300), (107, 32)), ("pad", (1000, 300), (32, 10)), ("squash", (1000, 300), (32, 32))])
def test_draft_target_never_upsamples(policy: str, wh: tuple[int, int], minimum: tuple[int, int]) -> None:
    tw, th = images._draft_target(wh, 32, policy)
    assert tw >= minimum[0] and th >= minimum[1]
    scale = min(wh[0] // tw, wh[1] // th)  # what Pillow's JPEG draft does
    assert wh[0] / scale >= minimum[0] - 1e-9 and wh[1] / scale >= minimum[1] - 1e-9


# ----------------------------------------------------------------------------- failures are rows


def test_truncated_jpeg_and_png() -> None:
    big = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    for fmt in ("JPEG", "PNG"):
        data = encode(Image.fromarray(big), fmt)
        res = load_image(data[: len(data) // 2])
        assert not res.ok and res.array is None
        assert "truncated" in res.error


def test_empty_text_directory_missing_fifo(tmp_path: Path) -> None:
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    text = tmp_path / "notes.jpg"
    text.write_text("this is not a jpeg\n")
    folder = tmp_path / "x.jpg"
    folder.mkdir()
    cases = {
        empty: "empty file",
        text: "not an image",
        folder: "directory",
        tmp_path / "missing.png": "not found",
    }
    if hasattr(os, "mkfifo"):
        fifo = tmp_path / "pipe.png"
        os.mkfifo(fifo)
        cases[fifo] = "not a regular file"
    for path, reason in cases.items():
        res = load_image(path)
        assert not res.ok and res.array is None and reason in res.error, (path, res.error)
    assert "empty" in load_image(b"").error


def test_unreadable_file_permission(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    p = tmp_path / "secret.png"
    p.write_bytes(encode(solid(RED), "PNG"))

    real_open = os.open

    def denied(path: object, *a: object, **k: object) -> int:
        if os.fspath(path) == str(p):  # type: ignore[arg-type]
            raise PermissionError(13, "Permission denied", str(p))
        return real_open(path, *a, **k)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "open", denied)  # root ignores chmod; fake the OS answer for this file
    res = load_image(p)
    assert not res.ok and res.error == "permission denied"


@pytest.mark.skipif(os.name != "posix", reason="POSIX permissions")
def test_unreadable_file_permission_real(unprivileged_tmp: Path) -> None:
    """A real chmod 000 file, read by a user it denies (root reads anything: the test drops to nobody then)."""
    p = unprivileged_tmp / "secret.png"
    p.write_bytes(encode(solid(RED), "PNG"))
    p.chmod(0)
    assert run_unprivileged(lambda: load_image(p).error) == "permission denied"


def test_decompression_bomb_limit_is_configurable() -> None:
    data = encode(solid(RED, (40, 40)), "PNG")
    res = load_image(data, max_pixels=1000)
    assert not res.ok and "decompression bomb" in res.error and "1,600" in res.error
    assert load_image(data, max_pixels=1600).ok  # exactly at the limit is allowed
    assert "decompression bomb" in (load_image(data, max_pixels=1599).error or "")  # one pixel past it is not
    assert load_image(data, max_pixels=None).ok


def test_limit_above_pillows_global_is_honoured_and_global_restored(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    data = encode(solid(BLUE, (40, 40)), "TIFF")  # TIFF checks the limit again while loading
    assert load_image(data, max_pixels=10_000).ok
    assert load_image(data, max_pixels=None).ok
    assert Image.MAX_IMAGE_PIXELS == 100
    assert "decompression bomb" in load_image(data, max_pixels=1000).error


def test_never_raises_on_corrupted_bytes() -> None:
    rng = np.random.default_rng(7)
    src = Image.fromarray(rng.integers(0, 256, (24, 24, 3), dtype=np.uint8))
    seeds = [encode(src, f) for f in ("PNG", "GIF", "TIFF", "BMP", "JPEG", "WEBP")]
    outcomes = {True: 0, False: 0}
    for data in seeds:
        for _ in range(25):
            buf = bytearray(data)
            for i in rng.integers(0, len(buf), size=6):
                buf[i] = int(rng.integers(0, 256))
            cut = int(rng.integers(len(buf) // 3, len(buf) + 1))
            res = load_image(bytes(buf[:cut]))  # must return, never raise
            assert res.ok == (res.array is not None) and res.ok == (res.error is None)
            if not res.ok:
                assert res.error and "\n" not in res.error
            outcomes[res.ok] += 1
    assert outcomes[False] > 0  # the corruption really produced failures


def test_batch_loop_survives_every_bad_file(tmp_path: Path) -> None:
    good = tmp_path / "good.png"
    good.write_bytes(encode(solid(RED), "PNG"))
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "dir.jpg").mkdir()
    (tmp_path / "text.png").write_text("hello")
    results = {p.name: load_image(p) for p in sorted(tmp_path.iterdir())}
    assert [n for n, r in results.items() if r.ok] == ["good.png"]
    assert all(r.error for n, r in results.items() if n != "good.png")


# ----------------------------------------------------------------------------- memory: header limit, shrink, budget


def png_header_bomb(w: int, h: int) -> bytes:
    """A valid PNG signature and IHDR declaring w x h RGBA, then a tiny IDAT: a few hundred bytes."""
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 6, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")


def blp_header_bomb(w: int, h: int) -> bytes:
    """A BLP1 file (palette, alpha) whose 28-byte header declares w x h: the issue's 284-byte bomb."""
    import struct

    head = b"BLP1" + struct.pack("<iI", 1, 8) + struct.pack("<II", w, h) + struct.pack("<iI", 5, 0)
    return head + struct.pack("<16I", 156 + 1024, *([0] * 15)) + struct.pack("<16I", 64, *([0] * 15)) + bytes(1024 + 64)


def _peak_rss_mb_of(code: str) -> float:
    """Run ``code`` in a fresh interpreter; its peak RSS growth over the imports, in MB.

    VmHWM, not ru_maxrss: Linux carries ru_maxrss across exec from the forking process, so a child of a pytest
    that had grown to 1.6 GB started at 1.6 GB and its growth read 0 whatever it allocated.
    """
    import subprocess
    import sys

    hwm = "int(next(ln for ln in open('/proc/self/status') if ln.startswith('VmHWM')).split()[1])"
    prog = ("import cifarbench.data.images as images\n"
            f"base = {hwm}\n" + code +
            f"\nprint(({hwm} - base) / 1024)")
    out = subprocess.run([sys.executable, "-c", prog], capture_output=True, text=True, timeout=120, check=True)
    return float(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("make, w, h", [(png_header_bomb, 10_000, 9_000), (blp_header_bomb, 9_500, 9_000)])
def test_header_bombs_are_refused_before_allocating(make, w: int, h: int, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    data = make(w, h)
    assert len(data) < 2000
    res = load_image(data)  # the default limit: 50 MP
    assert not res.ok and "decompression bomb" in res.error and f"{w * h:,} pixels" in res.error
    assert f"{w * h * 4 / 1e6:,.0f} MB to decode" in res.error and "--max-pixels" in res.error
    p = tmp_path / "bomb.bin"
    p.write_bytes(data)
    grew = _peak_rss_mb_of(f"r = images.load_image({str(p)!r}); assert not r.ok, r")
    assert grew < 30, f"refusing a {w}x{h} header cost {grew:.0f} MB"


def test_default_limit_is_one_for_every_command() -> None:
    assert images.DEFAULT_MAX_PIXELS == 50_000_000
    assert load_image(png_header_bomb(7072, 7072)).error.startswith("image too large")  # 50.01 MP
    assert "decompression bomb" not in (load_image(png_header_bomb(7071, 7071)).error or "")  # 49.99 MP: decoded


def test_decode_cost_from_the_header() -> None:
    def opened(im: Image.Image, fmt: str) -> Image.Image:
        return Image.open(io.BytesIO(encode(im, fmt)))

    assert image_reduce.decode_cost(opened(solid(RED, (300, 200)), "PNG")) == 300 * 200 * 4  # RGB is stored in 4 bytes
    assert image_reduce.decode_cost(opened(solid(128, (300, 200), "L"), "PNG")) == 300 * 200 + 3 * image_reduce._STRIP_BYTES
    assert image_reduce.decode_cost(opened(solid(128, (30, 20), "L"), "PNG")) == 30 * 20  # small: no shrink
    assert image_reduce.decode_cost(opened(Image.new("I;16", (300, 200)), "PNG")) == 300 * 200 * 2 + 3 * image_reduce._STRIP_BYTES


def _reference(im: Image.Image, resize: str = "center-crop") -> np.ndarray:
    """The plain full-size pipeline: convert everything at full size, then resize."""
    return np.asarray(images._fit(images._to_rgb(im), 32, resize))


@pytest.mark.parametrize("kind", ["RGBA", "P+transparency", "LA", "L", "I;16", "CMYK"])
@pytest.mark.parametrize("resize", ["center-crop", "pad", "squash"])
def test_big_images_are_reduced_before_conversion_and_match_the_full_pipeline(kind: str, resize: str) -> None:
    rng = np.random.default_rng(5)
    small = Image.fromarray(rng.integers(0, 256, (9, 13, 4), dtype=np.uint8), "RGBA")
    big = small.resize((800, 560), Image.Resampling.BICUBIC)  # smooth, with varying alpha
    if kind == "P+transparency":
        src = big.convert("RGB").quantize(64)
        src.info["transparency"] = 3
    elif kind == "I;16":
        src = Image.fromarray(np.asarray(big.convert("L"), np.uint16) * 257)
        assert src.mode == "I;16"
    else:
        src = big.convert(kind)
    fmt = "TIFF" if kind in ("CMYK", "I;16") else "PNG"
    data = encode(src, fmt)
    ref = _reference(Image.open(io.BytesIO(data)), resize)
    got = ok(load_image(data, resize=resize))
    # box-reducing the whole image instead of the crop box (and before CMYK/palette conversion) moves
    # edge pixels a little; a wrong channel, orientation or scale would be off by tens
    assert np.abs(got.astype(int) - ref.astype(int)).mean() < 3.0, kind


def test_shrink_reduces_in_strips_identically_to_one_reduce(monkeypatch: pytest.MonkeyPatch) -> None:
    big = Image.fromarray(np.random.default_rng(1).integers(0, 256, (700, 500, 4), dtype=np.uint8), "RGBA")
    monkeypatch.setattr(image_reduce, "_STRIP_BYTES", 4 * 500 * 7)  # strips of 7 rows: many, with a ragged last one
    out, mode = image_reduce.shrink(big, 32, "center-crop")
    whole = big.reduce(image_reduce.reduce_factors(big.size, 32, "center-crop"))
    assert mode == "RGBA" and out.size == whole.size
    np.testing.assert_array_equal(np.asarray(out), np.asarray(whole))


def test_rgba_decode_peak_is_the_decoded_pixels_not_four_copies(tmp_path: Path) -> None:
    # 3000x3000 RGBA = 36 MB decoded; converting at full size (the old path) peaked near 4x that
    yy = np.linspace(0, 255, 3000, dtype=np.uint8)
    arr = np.zeros((3000, 3000, 4), np.uint8)
    arr[..., 0], arr[..., 3] = yy[:, None], 128
    p = tmp_path / "big.png"
    Image.fromarray(arr, "RGBA").save(p)
    grew = _peak_rss_mb_of(f"r = images.load_image({str(p)!r}); assert r.ok, r")
    assert grew < 36 * 1.6, f"{grew:.0f} MB for 36 MB of pixels"


def test_each_decode_holds_its_cost_in_the_process_budget() -> None:
    from cifarbench.data import decode_budget

    held: list[int] = []

    class Recording(decode_budget.DecodeBudget):
        def hold(self, nbytes: int):  # type: ignore[no-untyped-def]
            held.append(nbytes)
            return super().hold(nbytes)

    old = decode_budget.set_process_budget(Recording(8 << 20))
    try:
        ok(load_image(encode(solid(RED, (1200, 1000), "RGBA"), "PNG")))
        ok(load_image(encode(solid(RED), "PNG")))
    finally:
        decode_budget.set_process_budget(old)
    assert held == [1200 * 1000 * 4 + 3 * image_reduce._STRIP_BYTES]  # under 1 MiB: not counted, no lock taken


# ----------------------------------------------------------------------------- C libraries' stderr


def corrupt_tiff() -> bytes:
    im = Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    b = bytearray(encode(im, "TIFF", compression="tiff_deflate"))
    for i in range(200, len(b) - 400, 7):
        b[i] ^= 0x5A
    return bytes(b)


def test_libtiff_messages_go_into_the_error_not_to_fd2(capfd: pytest.CaptureFixture[str]) -> None:
    if not features.check("libtiff"):
        pytest.skip("Pillow without libtiff")
    res = load_image(corrupt_tiff())
    out, err = capfd.readouterr()
    assert not res.ok and "libtiff: " in res.error and "ZIPDecode" in res.error and "\n" not in res.error
    assert err == "" and out == ""


def test_fd2_is_restored_after_each_capture(capfd: pytest.CaptureFixture[str]) -> None:
    for _ in range(3):
        load_image(corrupt_tiff())
    os.write(2, b"still here\n")
    assert capfd.readouterr().err == "still here\n"


def test_a_commands_limit_reaches_loads_that_name_none() -> None:
    data = encode(solid(RED, (40, 40)), "PNG")
    with images.default_max_pixels(1000):  # what `bench --max-pixels 1000` sets around its run
        assert "1,600 pixels" in load_image(data).error
        assert load_image(data, max_pixels=None).ok  # an explicit limit still wins
    assert load_image(data).ok
    with pytest.raises(UsageError, match="--max-pixels"):
        with images.default_max_pixels(0):
            pass


@pytest.mark.parametrize("orientation", range(1, 9))
@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP"])
def test_every_exif_orientation_matches_pillows_exif_transpose(orientation: int, fmt: str) -> None:
    """The independent oracle: PIL.ImageOps.exif_transpose on the same file (all 8 orientations, 2 of them mirrored)."""
    from PIL import ImageOps

    rng = np.random.default_rng(orientation)
    src = Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8))  # square: no resize, asymmetric
    exif = Image.Exif()
    exif[0x0112] = orientation
    kw: dict[str, object] = {"quality": 100} if fmt != "PNG" else {}
    if fmt == "WEBP":
        kw["lossless"] = True
    data = encode(src, fmt, exif=exif.tobytes(), **kw)
    with Image.open(io.BytesIO(data)) as im:
        want = np.asarray(ImageOps.exif_transpose(im).convert("RGB"))
    got = ok(load_image(data))
    assert np.array_equal(got, want)
    if orientation != 1:
        assert not np.array_equal(got, np.asarray(Image.open(io.BytesIO(data)).convert("RGB")))  # it did turn
