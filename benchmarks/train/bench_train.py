"""Training throughput of the flagship per precision on this machine, and the shipped run's timeline.

Each precision runs in its own subprocess (Keras' dtype policy is global), on the same random
batch stream, after one warm-up epoch; the ratio to float32 is taken within the same run.

    python benchmarks/train/bench_train.py [--arch flagship] [--images 2048] [--out benchmarks/train/results.md]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def measure(arch: str, precision: str, images: int, batch: int) -> float:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras
    import numpy as np

    from cifarbench.zoo import get_arch

    keras.mixed_precision.set_global_policy(precision)
    a = get_arch(arch)
    model = a.build()
    model.compile(keras.optimizers.SGD(0.1, momentum=0.9, nesterov=True),
                  keras.losses.CategoricalCrossentropy(label_smoothing=0.2))
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (images, 32, 32, 3)).astype("float32")
    y = np.eye(10, dtype="float32")[rng.integers(0, 10, images)]
    model.fit(x[: batch * 2], y[: batch * 2], batch_size=batch, epochs=1, verbose=0)  # warm-up: tracing, allocation
    t0 = time.perf_counter()
    model.fit(x, y, batch_size=batch, epochs=1, verbose=0, shuffle=False)
    return images / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--arch", default="flagship")
    ap.add_argument("--images", type=int, default=2048)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--precisions", default="float32,mixed_bfloat16")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "train" / "results.md"))
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps({"img_per_s": measure(args.arch, args.child, args.images, args.batch_size)}))
        return

    sys.path.insert(0, str(REPO))
    from cifarbench.sysinfo import cpu_info, package_versions

    rates = {}
    for p in args.precisions.split(","):
        out = subprocess.run([sys.executable, __file__, "--arch", args.arch, "--images", str(args.images),
                              "--batch-size", str(args.batch_size), "--child", p],
                             capture_output=True, text=True, check=True)
        rates[p] = json.loads(out.stdout.strip().splitlines()[-1])["img_per_s"]
        print(f"{p}: {rates[p]:.1f} img/s", file=sys.stderr)

    cpu = cpu_info()
    flags = " ".join(f for f, on in cpu["flags"].items() if on)
    lines = [
        f"# Training throughput: {args.arch}", "",
        f"Machine: {cpu['model']}, {cpu['usable_cores']} cores, flags: {flags}; "
        f"TensorFlow {package_versions()['tensorflow']}, Keras {package_versions()['keras']}.",
        f"Command: `python benchmarks/train/bench_train.py --arch {args.arch} --images {args.images} "
        f"--batch-size {args.batch_size}`", "",
        "| precision | img/s (train step, batch %d) | ratio to float32 |" % args.batch_size, "|---|---:|---:|",
    ]
    for p, r in rates.items():
        lines.append(f"| {p} | {r:.1f} | {r / rates['float32']:.2f}x |")
    manifest = REPO / "trained" / args.arch / "manifest.json"
    history = REPO / "trained" / args.arch / "history.json"
    if manifest.is_file() and history.is_file():
        m, h = json.loads(manifest.read_text()), json.loads(history.read_text())
        lines += ["", f"## The shipped `{args.arch}` run", "",
                  f"Command: `{m['training']['command']}`  ", f"Precision: {m['training']['precision']}; "
                  f"training wall time {m['training']['wall_seconds'] / 60:.1f} min "
                  f"(whole command incl. data and test evaluation {m['training'].get('total_wall_seconds', 0) / 60:.1f} min); "
                  f"test accuracy {m['metrics']['test']['accuracy'] * 100:.2f} % (single view, 10,000 JPEG test images).", "",
                  "| epoch | train loss | val acc | img/s | cumulative min |", "|---:|---:|---:|---:|---:|"]
        cum = 0.0
        n_train = m["training"]["data"]["train"]
        for row in h:
            cum += n_train / row["img_per_s"] / 60
            lines.append(f"| {row['epoch']} | {row['loss']:.3f} | {row['val_acc'] * 100:.2f} % | {row['img_per_s']:.0f} | {cum:.1f} |")
    Path(args.out).write_text("\n".join(lines) + "\n")
    print(f"written {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
