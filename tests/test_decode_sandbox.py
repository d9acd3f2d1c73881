"""The sandbox: decoders that can outgrow their header's price run capped in memory and time (issue 25)."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
from PIL import Image

from cifarbench.data import decode_sandbox as ds
from cifarbench.data.decode_budget import MIB
from cifarbench.data.images import load_image
from conftest import REPO, fresh_env
from hostile import blp1_spin, blp2_claim, peak_tree_rss, tga_rle_claim


@pytest.fixture
def limits() -> Iterator[None]:
    old = ds.limits()
    yield
    ds.configure(old)


def _encoded(fmt: str, mode: str = "RGB", size: tuple[int, int] = (40, 30), **kw: object) -> bytes:
    rng = np.random.default_rng(1)
    im = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), np.uint8)).convert(mode)
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def _opened(data: bytes) -> Image.Image:
    return Image.open(io.BytesIO(data))


def test_only_untrusted_formats_and_python_decoders_go_to_the_sandbox() -> None:
    assert not ds.wanted(_opened(_encoded("PNG"))) and not ds.wanted(_opened(_encoded("JPEG")))
    assert not ds.wanted(_opened(_encoded("BMP")))
    rle = bytearray(_encoded("BMP", "P"))
    rle[30:34] = (1).to_bytes(4, "little")  # BI_RLE8: Pillow's Python decoder
    assert ds.wanted(_opened(bytes(rle)))
    for fmt in ("TIFF", "GIF", "TGA", "PCX", "SGI"):
        assert ds.wanted(_opened(_encoded(fmt))), fmt
    assert ds.wanted(_opened(blp2_claim()))


@pytest.mark.parametrize("fmt", ["TIFF", "GIF", "TGA", "PCX"])
def test_a_sandboxed_decode_gives_the_same_pixels_as_decoding_here(fmt: str, limits: None) -> None:
    data = _encoded(fmt, size=(70, 50))
    for kw in ({}, {"size": (24, 40), "resize": "pad", "interpolation": "bicubic"}, {"size": 20, "crop_pct": 0.875}):
        ds.configure(ds.SandboxLimits())
        boxed = load_image(data, **kw)  # type: ignore[arg-type]
        ds.configure(ds.SandboxLimits(enabled=False))
        here = load_image(data, **kw)  # type: ignore[arg-type]
        assert boxed.ok and here.ok and np.array_equal(boxed.array, here.array), kw


def test_a_header_priced_over_the_cap_is_refused_before_any_decode(limits: None) -> None:
    ds.configure(ds.SandboxLimits(memory=16 * MIB))
    w, h = 2048, 2047  # 2048 x 2047 x 4 bytes: just under 16 MiB, so it goes to the sandbox (which has room for it)
    under, at = load_image(tga_rle_claim(w, h)), load_image(tga_rle_claim(w, h + 1))
    assert under.error is not None and "too large for its format" not in under.error
    assert at.error == ("image too large for its format: TGA needs 17 MB to decode, over the 16 MiB a TGA decode "
                        "may use")  # 2048 x 2048 x 4 = 16.8 MB: a decode at the cap could not allocate anything else


def test_a_decoder_allocating_past_its_header_stops_at_the_cap(limits: None) -> None:
    ds.configure(ds.SandboxLimits(memory=8 * MIB, seconds=60))
    t0 = time.monotonic()
    r = load_image(blp1_spin(3_000_000))  # claims 1x1 (4 bytes); the decoder builds 12 MB
    assert r.error == "out of memory while decoding (a BLP decode may use 8 MiB)" and time.monotonic() - t0 < 30
    assert load_image(_encoded("TIFF")).ok  # the next file still decodes


def test_a_decoder_that_spins_is_stopped_at_the_time_limit(limits: None) -> None:
    ds.configure(ds.SandboxLimits(seconds=0.3))
    t0 = time.monotonic()
    r = load_image(blp1_spin(20_000_000))  # a Python loop over 20 M bytes: seconds of work
    took = time.monotonic() - t0
    assert r.error == "decoding took longer than 0.3 s; stopped" and took < 5, (r.error, took)
    assert load_image(_encoded("GIF")).ok  # a fresh child takes the next file


def test_a_child_that_dies_costs_one_file(limits: None) -> None:
    assert load_image(_encoded("TIFF")).ok
    child = ds._POOL.child
    assert child is not None
    child.proc.kill()
    child.proc.wait()
    assert load_image(_encoded("TIFF")).ok  # restarted, not blamed on this file


def test_forty_hostile_blps_through_four_workers_stay_under_500_mb(tmp_path: Path) -> None:
    """The issue's case: 40 copies of a 148-byte BLP claiming 1 x 33.5 MP RGBA peaked at 607-645 MB."""
    for i in range(40):
        (tmp_path / f"bomb{i:02}.blp").write_bytes(blp2_claim())
    cmd = [sys.executable, "-m", "cifarbench", "classify", str(tmp_path), "--include", "*.blp",
           "--model", "baseline-cnn", "--backend", "onnx-int8", "--workers", "4", "-q", "-o", str(tmp_path / "out.csv")]
    proc = subprocess.Popen(cmd, cwd=REPO, env=fresh_env(PYTHONPATH=str(REPO)), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    peak = peak_tree_rss(proc)
    out, err = proc.communicate(timeout=120)
    rows = (tmp_path / "out.csv").read_text().splitlines()[1:]
    assert len(rows) == 40 and all("out of memory" in r or "too large" in r for r in rows), rows[:2]
    assert peak < 500e6, f"peak {peak / 1e6:.0f} MB"
    assert proc.returncode in (3, 4), err


# --------------------------------------------------------------------------- formats whose open decodes (ICO)


def test_an_ico_whose_open_would_decode_is_sandboxed_before_opening(tmp_path: Path) -> None:
    """Pillow decodes an ICO's entry inside Image.open: a 16x16 directory can hide an 8000x8000 PNG."""
    from hostile import ico_png

    assert ds.decodes_at_open(ico_png(8, 8)) and not ds.decodes_at_open(_encoded("PNG"))
    bomb = tmp_path / "icon.ico"
    bomb.write_bytes(ico_png(8000, 8000))  # 187 KB, 64 MP: 256 MB once decoded
    code = (f"r = images.load_image({str(bomb)!r}); print(r.error)")
    hwm = "int(next(ln for ln in open('/proc/self/status') if ln.startswith('VmHWM')).split()[1]) // 1024"
    # VmHWM: this process image's own peak (ru_maxrss would start at the RSS of the pytest that started it)
    out = subprocess.run([sys.executable, "-c", "import cifarbench.data.images as images\n" + code + f"\nprint({hwm})"],
                         capture_output=True, text=True, timeout=120, env=fresh_env())
    error, peak_mb = out.stdout.strip().splitlines()
    assert error == ("image too large, refused as a decompression bomb (an image inside the file is over the limit "
                     "of 50,000,000 pixels (--max-pixels))")
    assert int(peak_mb) < 200, f"{peak_mb} MB: the entry was decoded in this process"  # before: 278 MB


@pytest.mark.parametrize("limit, ok", [(2_250_000, True), (2_249_999, False)])
def test_an_ico_entry_at_the_pixel_limit_and_one_past(limit: int, ok: bool) -> None:
    from hostile import ico_png

    res = load_image(ico_png(1500, 1500), 8, max_pixels=limit)  # 2,250,000 pixels behind a 16x16 directory
    assert res.ok is ok, res.error
    if ok:
        assert res.array.shape == (8, 8, 3) and not res.array.any()  # black
    else:
        assert res.error == ("image too large, refused as a decompression bomb (an image inside the file is over "
                             f"the limit of {limit:,} pixels (--max-pixels))")


def test_an_ico_over_the_sandbox_memory_is_refused_in_the_child(limits: None) -> None:
    from hostile import ico_png

    ds.configure(ds.SandboxLimits(memory=8 * MIB, seconds=5.0))
    assert load_image(ico_png(3000, 3000), 8).error == "out of memory while decoding (a ICO decode may use 8 MiB)"


def test_without_the_sandbox_an_ico_open_is_still_bounded_by_the_limit(limits: None) -> None:
    from hostile import ico_png

    ds.configure(ds.SandboxLimits(enabled=False))
    assert not ds.wanted_before_open(ico_png(8, 8))
    assert "over the limit of 1,000,000 pixels" in load_image(ico_png(1001, 1000), 8, max_pixels=1_000_000).error
    assert load_image(ico_png(1000, 1000), 8, max_pixels=1_000_000).ok


def test_an_ordinary_icon_decodes_like_pillow() -> None:
    rng = np.random.default_rng(3)
    src = Image.fromarray(rng.integers(0, 256, (48, 48, 3), np.uint8))
    buf = io.BytesIO()
    src.save(buf, "ICO", sizes=[(48, 48)])
    with Image.open(io.BytesIO(buf.getvalue())) as im:
        want = np.asarray(im.convert("RGB").resize((24, 24), Image.Resampling.LANCZOS))
    res = load_image(buf.getvalue(), 24, "squash")
    assert res.ok and np.array_equal(res.array, want)


def test_a_big_streamed_file_is_opened_by_the_child_not_read_here(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                   limits: None) -> None:
    """Files over 32 MiB reach the loader as an open descriptor: the child gets the path, never the bytes."""
    from cifarbench.data import images
    from hostile import ico_png

    big = tmp_path / "big.ico"
    with open(big, "wb") as fh:
        fh.write(ico_png(16, 16))
        fh.truncate(40 << 20)  # 40 MiB, sparse: an ICO whose entry is followed by junk
    seen: list[tuple[dict, int]] = []
    real = ds._POOL.run
    monkeypatch.setattr(ds._POOL, "run", lambda meta, payload, lim: seen.append((meta, len(payload))) or
                        real(meta, payload, lim))
    res = load_image(big, 8)
    assert res.ok, res.error
    assert seen and seen[0][0]["path"] == str(big) and seen[0][1] == 0
    monkeypatch.setattr(ds, "_fd_path", lambda fd: None)  # no /proc: the size decides, before any read
    ds.configure(ds.SandboxLimits(memory=40 * MIB, seconds=5.0))  # the file's size: at the limit, still piped
    seen.clear()
    load_image(big, 8)  # (the child may then run out of its 40 MiB: that is its own verdict)
    assert [n for _, n in seen] == [40 << 20]
    ds.configure(ds.SandboxLimits(memory=40 * MIB - 1, seconds=5.0))  # one byte under the file: refused unread
    seen.clear()
    assert load_image(big, 8).error == ("image too large for its format: a 42 MB ICO file, over the 40 MiB a "
                                        "ICO decode may use")
    assert seen == []
