"""Decode memory under hostile files: peak RSS of ``classify`` over header bombs and big-but-allowed images.

Issue #13's target: 80 header-bomb files (tiny files whose header declares 80+ MP) classified with
``--workers 4`` stay under 500 MB peak RSS, each a row error. Every configuration runs in a fresh
child process; its peak is the largest sum of RSS over that process and all its descendants
(forkserver and decode workers), sampled every 10 ms from /proc, so pages shared between workers
count more than once (an upper bound). The baseline, measured in the same run, is the same
classify call over as many valid 32x32 PNGs: the ratio is what the hostile files add.

A second set holds images under the pixel limit that are expensive to decode (49 MP RGBA PNGs,
196 MB each once decoded): the shared decode budget must keep workers from decoding them all at once.

Usage: nice -n 19 python benchmarks/loader/bench_bombs.py [--bombs 80] [--big 4] [--workers 1,2,4]
Prints a Markdown report on stdout (results_bombs.md is this output, committed).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

import cifarbench
from cifarbench.data.decode_pool import CHUNK
from cifarbench.sysinfo import cpu_info

CHILD = r"""
import csv, json, sys
if __name__ == "__main__":
    folder, out, workers, pool, budget = sys.argv[1:6]
    if budget == "classify":
        from cifarbench.runs.classify import classify
        rep = classify([folder], backend="onnx-int8", output=out, workers=int(workers), pool=pool)
        print(json.dumps({"files": rep.files, "failed": rep.failed}))
        sys.exit(0)
    # the decode pool alone, with the decode budget as given (bytes)
    from cifarbench.data import decode_budget
    from cifarbench.data import decode_pool
    from cifarbench.data.discover import discover
    decode_budget.set_process_budget(decode_budget.DecodeBudget(int(budget)))  # threads use the process's
    entries = list(discover([folder]))
    got = list(decode_pool.decode_ordered(entries, 32, "center-crop", int(workers), pool,
                                          limits=decode_pool.DecodeLimits(budget_bytes=int(budget))))
    with open(out, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "error"])
        w.writerows([e.path, err or ""] for e, (_, err) in zip(entries, got))
    print(json.dumps({"files": len(got), "failed": sum(err is not None for _, err in got)}))
"""


def png_bomb(w: int, h: int) -> bytes:
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 6, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(bytes(64))) + chunk(b"IEND", b"")


def blp_bomb(w: int, h: int) -> bytes:
    head = b"BLP1" + struct.pack("<iI", 1, 8) + struct.pack("<II", w, h) + struct.pack("<iI", 5, 0)
    return head + struct.pack("<16I", 156 + 1024, *([0] * 15)) + struct.pack("<16I", 64, *([0] * 15)) + bytes(1024 + 64)


def make_sets(root: Path, bombs: int, big: int) -> dict[str, Path]:
    sets = {name: root / name for name in ("baseline", "bombs", "big")}
    for d in sets.values():
        d.mkdir()
    rng = np.random.default_rng(0)
    for i in range(bombs):
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(sets["baseline"] / f"{i:03d}.png")
        side = 9000 + 37 * i  # 81 MP and up
        data, ext = (png_bomb(side, side), "png") if i % 2 else (blp_bomb(side, side), "jpg")  # named as a photo
        (sets["bombs"] / f"{i:03d}.{ext}").write_bytes(data)
    yy = np.linspace(0, 255, 7000, dtype=np.uint8)
    arr = np.zeros((7000, 7000, 4), np.uint8)
    arr[..., 0], arr[..., 1], arr[..., 3] = yy[:, None], yy[None, :], 200
    # one big image at the start of each decode task (CHUNK files), so every worker meets one at once
    for i in range(big * CHUNK):
        if i % CHUNK == 0:
            arr[..., 2] = i % 256
            Image.fromarray(arr, "RGBA").save(sets["big"] / f"{i:03d}.png", compress_level=1)
        else:
            Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(sets["big"] / f"{i:03d}.png")
    return sets


def lscpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return ""
    return next((ln.split(":", 1)[1].strip() for ln in out.splitlines() if ln.startswith("Model name")), "")


def descendants(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as fh:
                    todo += [int(c) for c in fh.read().split()]
        except OSError:
            pass
    return out


def rss_mb(pids: list[int]) -> float:
    total = 0
    for p in pids:
        try:
            with open(f"/proc/{p}/statm") as fh:
                total += int(fh.read().split()[1])
        except (OSError, IndexError, ValueError):
            pass
    return total * os.sysconf("SC_PAGE_SIZE") / 1e6


def run(folder: Path, workers: int, pool: str, budget: str = "classify") -> dict:
    out = folder.parent / f"{folder.name}-{workers}-{pool}-{budget}.csv"
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(folder), str(out), str(workers), pool, budget],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak = 0.0
    while child.poll() is None:
        peak = max(peak, rss_mb(descendants(child.pid)))
        time.sleep(0.01)
    stdout, stderr = child.communicate()
    if child.returncode not in (0, 3):
        raise SystemExit(f"classify failed ({child.returncode}): {stderr[-2000:]}")
    res = json.loads(stdout.strip().splitlines()[-1])
    with open(out, encoding="utf-8", newline="") as fh:
        errors = [row[-1] for row in list(csv.reader(fh))[1:] if row[-1]]
    res.update(peak_mb=peak, stderr_lines=len(stderr.splitlines()), errors=sorted({e.split(" (")[0] for e in errors}))
    return res


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bombs", type=int, default=80)
    ap.add_argument("--big", type=int, default=4)
    ap.add_argument("--workers", default="1,2,4")
    ap.add_argument("--big-workers", type=int, default=4)
    args = ap.parse_args()
    workers = [int(w) for w in args.workers.split(",")]
    cpu = cpu_info()
    with tempfile.TemporaryDirectory(prefix="cifarbench-bombs-") as tmp:
        sets = make_sets(Path(tmp), args.bombs, args.big)
        print("# Decode memory under hostile files\n")
        print(f"- command (repository root, project venv): `nice -n 19 python benchmarks/loader/bench_bombs.py"
              f" --bombs {args.bombs} --big {args.big} --workers {args.workers}`")
        flags = " ".join(k for k, v in (cpu.get("flags") or {}).items() if v) or "none of interest"
        print(f"- machine: {lscpu_model() or cpu.get('model') or platform.processor()}, {os.cpu_count()} cores "
              f"({len(os.sched_getaffinity(0))} usable), flags: {flags}; {platform.platform()}, "
              f"{os.sysconf('SC_PHYS_PAGES') * os.sysconf('SC_PAGE_SIZE') / 2**30:.0f} GiB RAM")
        print(f"- software: Python {platform.python_version()}, cifarbench {cifarbench.__version__}, "
              f"Pillow {Image.__version__}, numpy {np.__version__}")
        print("- each row: a fresh process running `classify(folder, backend='onnx-int8', workers=W, pool=P)`; peak = "
              "largest summed RSS of it and its descendants, sampled every 10 ms (shared pages counted per process)")
        print(f"- bombs: {args.bombs} files of 284-1,300 bytes (BLP and PNG headers) declaring "
              f"{9000 ** 2 / 1e6:.0f}-{(9000 + 37 * (args.bombs - 1)) ** 2 / 1e6:.0f} MP (half BLP named .jpg, half PNG); "
              f"baseline: as many valid 32x32 PNGs" + (f"; big: {args.big} RGBA PNGs of 7000x7000 (49 MP, under the 50 MP "
              f"limit, 196 MB each decoded), one at the start of each {CHUNK}-file decode task, among {args.big * CHUNK} "
              "files" if args.big else "") + "\n")
        header = ("| set | pool | workers | files | row errors | peak RSS MB | vs baseline | stderr lines | error kinds |\n"
                  "|---|---|---:|---:|---:|---:|---:|---:|---|")

        def line(name: str, pool: str, w: int, r: dict, base: dict) -> None:
            print(f"| {name} | {pool} | {w} | {r['files']} | {r['failed']} | {r['peak_mb']:,.0f} | "
                  f"{r['peak_mb'] / base['peak_mb']:.2f}x | {r['stderr_lines']} | {'; '.join(r['errors']) or '-'} |", flush=True)

        print("## Header bombs through `classify` (the target: < 500 MB at 4 workers, every file a row error)\n")
        print(header)
        for pool in ("thread", "process"):
            for w in workers:
                base = run(sets["baseline"], w, pool)
                line("baseline", pool, w, base, base)
                line("bombs", pool, w, run(sets["bombs"], w, pool), base)
        if not args.big:
            return
        w = args.big_workers
        print(f"\n## Big but allowed images, {w} workers: the shared decode budget on and off\n")
        print("`classify` rows use the default budget (256 MiB). The `decode pool` rows run the pool alone "
              "(no model) with the budget given; 64 GiB means no bound, i.e. each worker decodes its big image "
              "at once, as before the budget existed. Baseline: the 32x32 set through the same path.\n")
        print(header)
        for pool in ("thread", "process"):
            base = run(sets["baseline"], w, pool)
            line("baseline", pool, w, base, base)
            line("big", pool, w, run(sets["big"], w, pool), base)
            for budget, label in ((256 << 20, "256 MiB"), (64 << 30, "64 GiB (off)")):
                b = run(sets["baseline"], w, pool, str(budget))
                line(f"baseline, decode pool, budget {label}", pool, w, b, b)
                line(f"big, decode pool, budget {label}", pool, w, run(sets["big"], w, pool, str(budget)), b)


if __name__ == "__main__":
    main()
