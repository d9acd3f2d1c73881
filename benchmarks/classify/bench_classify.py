"""End-to-end `classify` throughput against its two limits, measured in the same run.

For each backend of the model: the pure-decode rate (the classify worker pool decoding the files,
no model), the pure-model rate (predict on pre-decoded batches of the same size) and the
end-to-end rate (``cifarbench.runs.classify.classify`` over the folder, output written). Target:
end-to-end >= 0.85 x min(decode, model). Rounds are interleaved and the best of each is kept, so
a burst of load from another process hits all three alike. Then the same on generated >= 2 MP
JPEG photos (decoded with draft()), and the cold start of the real command on one image with
the onnx backend (wall and peak RSS of the process; target <= 1 s and <= 250 MB).

    nice -n 19 python benchmarks/classify/bench_classify.py [--model flagship] [--rounds 3]

Writes results.json and the generated part of results.md beside this script (text outside the
GENERATED markers is kept).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from cifarbench.data.decode_pool import decode_ordered, pick_pool  # noqa: E402
from cifarbench.data.discover import FileEntry, discover  # noqa: E402
from cifarbench.paths import BUNDLED_TEST_ARCHIVE  # noqa: E402
from cifarbench.runs.classify import classify  # noqa: E402

HERE = Path(__file__).resolve().parent
BEGIN, END = "<!-- BEGIN GENERATED -->", "<!-- END GENERATED -->"


def extract_test_jpegs(dest: Path) -> Path:
    with tarfile.open(BUNDLED_TEST_ARCHIVE) as tf:
        tf.extractall(dest, filter="data")
    return dest


def make_photos(dest: Path, n: int, w: int = 1920, h: int = 1080, seed: int = 0) -> Path:
    """Photo-like JPEGs: smooth colour fields, a few shapes and sensor noise (realistic entropy)."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    dest.mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    for i in range(n):
        c0, c1 = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
        t = (xx / w * rng.uniform(0.3, 1) + yy / h * rng.uniform(0.3, 1))[..., None] / 2
        img = c0 * (1 - t) + c1 * t + rng.normal(0, 6, (h, w, 1))
        im = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
        d = ImageDraw.Draw(im)
        for _ in range(6):
            x0, y0 = int(rng.uniform(0, w)), int(rng.uniform(0, h))
            d.ellipse([x0, y0, x0 + int(rng.uniform(50, 600)), y0 + int(rng.uniform(50, 400))],
                      fill=tuple(int(v) for v in rng.uniform(0, 255, 3)))
        im.save(dest / f"photo_{i:04d}.jpg", quality=90)
    return dest


def decode_rate(entries: list[FileEntry], workers: int, pool: str, batch: int) -> float:
    t0 = time.perf_counter()
    n = sum(1 for a, e in decode_ordered(entries, 32, "center-crop", workers, pool, ahead=batch) if a is not None)
    return n / (time.perf_counter() - t0)


def model_rate(backend, x: np.ndarray, batch: int) -> float:  # type: ignore[no-untyped-def]
    backend.predict(x[:batch])  # warm-up: allocation, first-batch tuning
    t0 = time.perf_counter()
    for i in range(0, len(x), batch):
        backend.predict(x[i:i + batch])
    return len(x) / (time.perf_counter() - t0)


def e2e_rate(folder: Path, model: str, backend: str, workers: int, pool: str, batch: int, device: str) -> tuple[float, float]:
    sink = io.StringIO()
    t0 = time.perf_counter()
    rep = classify([folder], model=model, backend=backend, device=device, workers=workers, pool=pool,
                   batch_size=batch, stream=sink)
    wall = time.perf_counter() - t0
    assert rep.failed == 0, rep.summary()
    return rep.images_per_second, rep.files / wall


def measure_set(name: str, folder: Path, model: str, backends: list[str], workers: int, pool: str, batch: int,
                rounds: int, device: str = "cpu") -> list[dict]:
    from cifarbench.backends import load_backend
    from cifarbench.models.model_ref import resolve_model

    manifest = resolve_model(model)
    entries = list(discover([folder]))
    x = np.stack([a for a, e in decode_ordered(entries, 32, "center-crop", workers, pool) if a is not None])
    loaded = {b: load_backend(b, manifest, device) for b in backends}
    best: dict[str, dict[str, float]] = {b: {"decode": 0.0, "model": 0.0, "e2e": 0.0, "e2e_wall": 0.0} for b in backends}
    for r in range(rounds):
        for b in backends:
            d = decode_rate(entries, workers, pool, batch)
            m = model_rate(loaded[b], x, batch)
            e, ew = e2e_rate(folder, model, b, workers, pool, batch, device)
            print(f"  [{name} round {r + 1}] {b}: decode {d:.0f}  model {m:.0f}  end-to-end {e:.0f} img/s", flush=True)
            for k, v in (("decode", d), ("model", m), ("e2e", e), ("e2e_wall", ew)):
                best[b][k] = max(best[b][k], v)
    out = []
    for b in backends:
        v = best[b]
        out.append({"set": name, "backend": b, "device": device, "images": len(entries), "workers": workers,
                    "pool": pick_pool(pool, workers, len(entries)), "batch": batch, **{k: round(val, 1) for k, val in v.items()},
                    "ratio": round(v["e2e"] / min(v["decode"], v["model"]), 3),
                    # if decode and model each need all cores, sharing them caps the pipeline at this rate
                    "shared_bound": round(1 / (1 / v["decode"] + 1 / v["model"]), 1)})
    return out


# Runs the command and reports its own children's peak RSS: measured from a small launcher, because
# a child forked from this (large) process could report this process's pages as its peak.
LAUNCHER = """import json, resource, subprocess, sys, time
t = time.perf_counter()
r = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
print(json.dumps({"rc": r.returncode, "wall": time.perf_counter() - t, "err": r.stderr.decode(errors="replace")[-400:],
                  "rss_kb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}))"""


def cold_start(model: str, backend: str, image: Path, repeats: int) -> dict:
    """The real command in a fresh process: wall time and peak RSS."""
    exe = shutil.which("cifarbench")
    cmd = [exe] if exe else [sys.executable, "-m", "cifarbench"]
    walls, rss = [], []
    with tempfile.TemporaryDirectory() as td:
        cmd += ["classify", str(image), "--model", model, "--backend", backend, "--quiet", "--output", str(Path(td) / "one.csv")]
        for _ in range(repeats + 1):  # the first one warms the page cache
            p = subprocess.run([sys.executable, "-S", "-c", LAUNCHER, *cmd], capture_output=True, text=True, check=True)
            got = json.loads(p.stdout)
            if got["rc"] != 0:
                raise SystemExit(f"cold start failed ({got['rc']}): {got['err']}")
            walls.append(got["wall"])
            rss.append(got["rss_kb"] / 1024)
    walls, rss = walls[1:], rss[1:]
    shown = ["cifarbench", "classify", "one.jpg", "--model", Path(model).name, "--backend", backend, "--quiet", "--output", "one.csv"]
    return {"command": " ".join(shown), "runs": repeats,
            "wall_s_median": round(statistics.median(walls), 3), "wall_s_min": round(min(walls), 3),
            "peak_rss_mb_median": round(statistics.median(rss), 1), "peak_rss_mb_max": round(max(rss), 1)}


def environment() -> dict:
    from cifarbench.sysinfo import cpu_info, package_versions

    cpu = cpu_info()
    return {"cpu": cpu.get("model"), "cores": len(os.sched_getaffinity(0)), "python": platform.python_version(),
            "packages": {k: v for k, v in package_versions().items() if v}, "loadavg_start": os.getloadavg()}


def render(res: dict) -> str:
    env = res["environment"]
    lines = [BEGIN, "", f"Generated by `{res['command']}` on {res['date']}.", "",
             f"Machine: {env['cpu']}, {env['cores']} usable cores, Python {env['python']}; "
             + ", ".join(f"{k} {v}" for k, v in env["packages"].items() if k in ("onnxruntime", "ai-edge-litert", "pillow", "numpy")) + ".",
             f"Load average (1/5/15 min) at start {tuple(round(x, 2) for x in env['loadavg_start'])}, "
             f"at end {tuple(round(x, 2) for x in res['loadavg_end'])}: see the notes on contention.", "",
             f"Model `{res['model']}`; rates in images/s, best of {res['rounds']} interleaved rounds; "
             "ratio = end-to-end / min(decode, model), target >= 0.85. Shared-CPU bound = 1 / (1/decode + 1/model): "
             "the best a pipeline can do when decode and model each saturate every core alone.", "",
             "| images | backend | device | pool x workers | batch | decode | model | end-to-end | ratio | shared-CPU bound "
             "| e2e / bound | e2e incl. model load |",
             "|---|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in res["rows"]:
        lines.append(f"| {r['set']} ({r['images']}) | {r['backend']} | {r['device']} | {r['pool']} x {r['workers']} | {r['batch']} | "
                     f"{r['decode']:.0f} | {r['model']:.0f} | {r['e2e']:.0f} | {r['ratio']:.3f} | {r['shared_bound']:.0f} | "
                     f"{r['e2e'] / r['shared_bound']:.3f} | {r['e2e_wall']:.0f} |")
    c = res.get("cold_start")
    if c:
        lines += ["", f"Cold start, `{c['command']}` ({c['runs']} runs after one warm-up): "
                  f"wall median {c['wall_s_median']:.2f} s (min {c['wall_s_min']:.2f} s), "
                  f"peak RSS median {c['peak_rss_mb_median']:.0f} MB (max {c['peak_rss_mb_max']:.0f} MB); target <= 1 s, <= 250 MB."]
    return "\n".join(lines + ["", END])


def write_md(path: Path, generated: str, title: str = "# classify benchmark") -> None:
    """Replace the generated block of ``path`` (text outside the markers stays); also used by bench_native."""
    old = path.read_text(encoding="utf-8") if path.exists() else f"{title}\n\n" + BEGIN + "\n" + END + "\n"
    if BEGIN in old and END in old:
        new = old[: old.index(BEGIN)] + generated + old[old.index(END) + len(END):]
    else:
        new = old.rstrip() + "\n\n" + generated + "\n"
    path.write_text(new, encoding="utf-8")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="flagship")
    ap.add_argument("--backends", help="comma-separated (default: every backend the model has here)")
    ap.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)))
    ap.add_argument("--pool", default="auto", choices=("auto", "thread", "process", "inline"))
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--images", type=int, default=10000, help="how many of the 10,000 test JPEGs")
    ap.add_argument("--photos", type=int, default=300, help="generated 1920x1080 JPEGs (0: skip)")
    ap.add_argument("--photo-backends", help="backends for the photo set (default: the model's default backend)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--cold-runs", type=int, default=5)
    ap.add_argument("--device", default="cpu", choices=("cpu", "gpu"))
    ap.add_argument("--out", type=Path, default=HERE)
    args = ap.parse_args()

    from cifarbench import backends as be
    from cifarbench.models.model_ref import resolve_model

    manifest = resolve_model(args.model)
    names = args.backends.split(",") if args.backends else [
        b for b in be.BACKENDS if be.unavailable_reason(b, manifest, args.device) is None]
    res: dict = {"command": "python benchmarks/classify/bench_classify.py " + " ".join(sys.argv[1:]),
                 "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "model": manifest.name,
                 "rounds": args.rounds, "environment": environment(), "rows": []}
    print(f"model {manifest.name}, backends {names}, load {os.getloadavg()}", flush=True)
    with tempfile.TemporaryDirectory(prefix="cifarbench-bench-") as td:
        root = extract_test_jpegs(Path(td) / "cifar")
        test = root / "test"
        if args.images < 10000:  # keep the first N in classify's order
            keep = {e.path for e in list(discover([test]))[: args.images]}
            for e in discover([test]):
                if e.path not in keep:
                    os.unlink(e.path)
        res["rows"] += measure_set("CIFAR-10 test JPEGs 32x32", test, args.model, names, args.workers, args.pool,
                                   args.batch_size, args.rounds, args.device)
        if args.photos:
            photos = make_photos(Path(td) / "photos", args.photos)
            pb = args.photo_backends.split(",") if args.photo_backends else [be.default_backend(manifest, args.device)]
            res["rows"] += measure_set("generated 1920x1080 photos", photos, args.model, pb, args.workers, args.pool,
                                       args.batch_size, args.rounds, args.device)
        if args.cold_runs and "onnx" in "".join(names):
            one = next(test.rglob("*.jpg"))
            onnx = "onnx" if be.unavailable_reason("onnx", manifest) is None else "onnx-int8"  # int8-only models
            res["cold_start"] = cold_start(args.model, onnx, one, args.cold_runs)
    res["loadavg_end"] = os.getloadavg()
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(res, indent=2) + "\n", encoding="utf-8")
    md = render(res)
    write_md(args.out / "results.md", md)
    print(md)


if __name__ == "__main__":
    main()
