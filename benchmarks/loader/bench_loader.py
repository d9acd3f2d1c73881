"""Loader throughput: images per CPU-second of ``cifarbench.data.images.load_image``, single thread.

Two workloads, each against a baseline measured in the same run:
  * 32x32 JPEGs (the bundled CIFAR-10 test split), as bytes and as files on disk, against bare
    Pillow (``np.asarray(Image.open(b).convert("RGB"))``): the loader's own overhead.
  * Large JPEGs (>= 2 megapixels, generated), ``load_image`` with DCT-domain ``draft()``
    against the same call with ``draft=False`` (full decode + Lanczos): the draft speed-up,
    plus the mean absolute pixel difference between the two 32x32 results.

Usage: nice -n 19 python benchmarks/loader/bench_loader.py [--small N] [--large N] [--repeat R]
Prints a Markdown report on stdout (results.md is this output, committed).
"""

from __future__ import annotations

import argparse
import io
import platform
import statistics
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from PIL import Image, features

import cifarbench
from cifarbench.data.images import load_image
from cifarbench.paths import BUNDLED_TEST_ARCHIVE
from cifarbench.sysinfo import cpu_info


def compare(fns: Sequence[Callable[[object], object]], items: Sequence[object], repeat: int) -> list[list[float]]:
    """images per CPU-second per pass for each function; one warm-up pass each first.

    Process CPU time, not wall time: the benchmark runs at nice 19 beside a training job, and
    time spent waiting for a core is not the loader's cost. Passes are interleaved (A B A B ...)
    so cache and frequency effects hit every variant alike."""
    for fn in fns:
        for it in items[: max(1, len(items) // 10)]:
            fn(it)
    rates: list[list[float]] = [[] for _ in fns]
    for _ in range(repeat):
        for i, fn in enumerate(fns):
            t0 = time.process_time()
            for it in items:
                fn(it)
            rates[i].append(len(items) / (time.process_time() - t0))
    return rates


def ratio(num: list[float], den: list[float]) -> float:
    """Median of the per-pass ratios (each pair measured back to back)."""
    return statistics.median(a / b for a, b in zip(num, den))


def small_jpegs(n: int) -> list[bytes]:
    out = []
    with tarfile.open(BUNDLED_TEST_ARCHIVE, "r:xz") as tf:
        for m in tf:
            if m.isfile() and m.name.endswith(".jpg"):
                out.append(tf.extractfile(m).read())  # type: ignore[union-attr]
                if len(out) == n:
                    break
    return out


def photo(w: int, h: int, seed: int) -> bytes:
    """A photo-like JPEG: smooth colour fields, edges and sensor noise (quality 90, 4:2:0)."""
    rng = np.random.default_rng(seed)
    base = Image.fromarray(rng.integers(0, 256, (9, 16, 3), dtype=np.uint8)).resize((w, h), Image.Resampling.BICUBIC)
    arr = np.asarray(base, dtype=np.int16) + rng.normal(0, 6, (h, w, 1)).astype(np.int16)
    arr[h // 3 : h // 3 + h // 10, :, :] = 230  # a hard edge
    buf = io.BytesIO()
    Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def bare_pillow(b: object) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(b) if isinstance(b, bytes) else b).convert("RGB"))  # type: ignore[arg-type]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--small", type=int, default=1500, help="32x32 JPEGs per pass")
    ap.add_argument("--large", type=int, default=4, help="large JPEGs per size per pass")
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    started = time.perf_counter()
    cpu = cpu_info()
    print("# Loader benchmark\n")
    cmd = " ".join(["nice -n 19 python benchmarks/loader/bench_loader.py", *sys.argv[1:]])
    print(f"- command (repository root, project venv): `{cmd}`")
    print(f"- machine: {cpu['model']}, {cpu['cores']} cores ({cpu['usable_cores']} usable), "
          f"flags: {' '.join(f for f, on in cpu['flags'].items() if on)}; {platform.platform()}")
    print(f"- software: Python {platform.python_version()}, cifarbench {cifarbench.__version__}, "
          f"Pillow {Image.__version__}, libjpeg {features.version('jpg')}"
          f"{' (turbo)' if features.check_feature('libjpeg_turbo') else ''}, numpy {np.__version__}")
    print(f"- single thread; rates are images per CPU-second (process CPU time, so waiting for a core on "
          f"this shared machine does not count), medians of {args.repeat} interleaved passes after a warm-up; "
          "ratios are medians of back-to-back pass pairs\n")

    small = small_jpegs(args.small)
    with tempfile.TemporaryDirectory() as tmp:
        paths = []
        for i, b in enumerate(small):
            p = Path(tmp) / f"{i:05d}.jpg"
            p.write_bytes(b)
            paths.append(p)
        by_bytes = compare([bare_pillow, load_image], small, args.repeat)
        by_file = compare([bare_pillow, load_image], paths, args.repeat)
    print(f"## 32x32 JPEGs ({len(small)} from the bundled CIFAR-10 test split)\n")
    print("| input | bare Pillow images/CPU-s (baseline) | load_image images/CPU-s | load_image / baseline |")
    print("|---|---:|---:|---:|")
    for name, (base, ours) in (("bytes in memory", by_bytes), ("files on disk", by_file)):
        print(f"| {name} | {statistics.median(base):,.0f} | {statistics.median(ours):,.0f} | {ratio(ours, base):.2f}x |")
    print("\nBaseline: `np.asarray(Image.open(src).convert(\"RGB\"))`. A ratio of 1.0 means no overhead; "
          "load_image also checks the pixel limit and file type, looks for EXIF, and returns an owned, "
          "writeable array.\n")

    print(f"## Large JPEGs ({args.large} generated photos per size), resized to 32x32 centre crop\n")
    print("| size | megapixels | draft images/CPU-s | plain images/CPU-s | draft / plain | mean abs diff (0-255) |")
    print("|---|---:|---:|---:|---:|---:|")
    for w, h in ((1920, 1080), (4032, 3024)):
        data = [photo(w, h, seed) for seed in range(args.large)]
        drafted, plain = compare([load_image, lambda b: load_image(b, draft=False)], data, args.repeat)
        diff = np.mean([
            np.abs(load_image(b).array.astype(int) - load_image(b, draft=False).array.astype(int)).mean()  # type: ignore[union-attr]
            for b in data
        ])
        print(f"| {w}x{h} | {w * h / 1e6:.1f} | {statistics.median(drafted):,.1f} | {statistics.median(plain):,.1f} "
              f"| {ratio(drafted, plain):.1f}x | {diff:.2f} |")
    print("\nPlain: the same call with `draft=False` (full-size decode, then the same Lanczos resize). "
          "draft() makes libjpeg decode at 1/2, 1/4 or 1/8 scale in the DCT domain; entropy decoding "
          "still reads every coefficient, which bounds the gain. The last column is the quality cost.")

    print("\n## Resize step alone: a decoded 12 MP image to 32x32 (what non-JPEG inputs pay)\n")
    from cifarbench.data.images import _fit

    decoded = [Image.open(io.BytesIO(photo(4032, 3024, seed))).convert("RGB") for seed in range(2)]
    for im in decoded:
        im.load()
    ours, lanczos = compare(
        [lambda im: _fit(im, 32, "center-crop"), lambda im: im.resize((32, 32), Image.Resampling.LANCZOS, box=(504, 0, 3528, 3024))],
        decoded, args.repeat,
    )
    print("| resize | images/CPU-s |\n|---|---:|")
    print(f"| `_fit` (Lanczos with `reducing_gap=3.0`, crop box) | {statistics.median(ours):,.1f} |")
    print(f"| plain `Image.resize(LANCZOS)`, same crop box (baseline) | {statistics.median(lanczos):,.1f} |")
    print(f"\n`_fit` / plain: {ratio(ours, lanczos):.1f}x")
    print(f"\nWall time of this run: {time.perf_counter() - started:.0f} s.")

if __name__ == "__main__":
    main()
