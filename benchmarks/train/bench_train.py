"""Training throughput of the flagship per Keras backend, precision, XLA and batch on this machine.

Each configuration runs in its own subprocess (Keras' backend and dtype policy are global), on the same
random batch stream, after a warm-up fit; ratios are to the first configuration of the same run.
A configuration is ``[backend/]precision:jit:batch`` (backend: tensorflow, torch or jax; default
tensorflow). ``--torch-ceiling`` adds the same net's step in plain PyTorch (torch_ceiling.py), a
reference for what a CPU framework reaches without Keras.

    python benchmarks/train/bench_train.py [--arch flagship] [--images 2048] [--configs ...] [--torch-ceiling]
        [--out benchmarks/train/speed.md]
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


def measure(arch: str, precision: str, jit: bool, images: int, batch: int) -> float:
    """img/s of the recipe's real train step (training graph, loss, optimizer), after a warm-up fit."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras
    import numpy as np

    from cifarbench.training.train import _compile, _lr_schedule
    from cifarbench.models.zoo import get_arch

    keras.mixed_precision.set_global_policy(precision)
    a = get_arch(arch)
    model = (a.build if os.environ.get("BENCH_GRAPH") == "plain" else (a.build_train or a.build))()
    _compile(keras, model, a.recipe, _lr_schedule(keras, a.recipe, images // batch, 10 * images // batch), jit)
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (images, 32, 32, 3)).astype("float32")
    y = np.eye(10, dtype="float32")[rng.integers(0, 10, images)]
    model.fit(x[: batch * 2], y[: batch * 2], batch_size=batch, epochs=1, verbose=0)  # warm-up: tracing, allocation
    t0 = time.perf_counter()
    model.fit(x, y, batch_size=batch, epochs=1, verbose=0, shuffle=False)
    return images / (time.perf_counter() - t0)


def _prep_seconds(arch: str) -> float:
    import numpy as np

    from cifarbench.training.train import augment
    from cifarbench.models.zoo import get_arch

    ops = get_arch(arch).recipe.augment
    x = np.random.default_rng(0).integers(0, 256, (50_000, 32, 32, 3)).astype(np.uint8)
    mask = np.random.default_rng(1).random(len(x)) < 0.5
    t0 = time.perf_counter()
    rng = np.random.default_rng([0, 1])
    order = rng.permutation(len(x))
    augment(x[order], ops, rng, mask[order], 1).astype(np.float32)
    return time.perf_counter() - t0


def _versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {}
    for dist in ("tensorflow", "keras", "torch", "jax"):
        try:
            out[dist] = md.version(dist)
        except md.PackageNotFoundError:
            pass
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--arch", default="flagship")
    ap.add_argument("--images", type=int, default=4096)
    ap.add_argument("--configs", default="float32:off:1024,float32:on:1024,float32:off:256,mixed_bfloat16:off:1024",
                    help="[backend/]precision:jit:batch, comma-separated; each runs in its own process")
    ap.add_argument("--torch-ceiling", action="store_true", help="add plain PyTorch rows (channels_last, NCHW)")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "train" / "speed.md"))
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        prec, jit, batch = args.child.split(":")
        print(json.dumps({"img_per_s": measure(args.arch, prec, jit == "on", args.images, int(batch))}))
        return

    sys.path.insert(0, str(REPO))
    from cifarbench.sysinfo import cpu_info

    load0 = ", ".join(f"{v:.2f}" for v in os.getloadavg())

    rates = {}
    for c in args.configs.split(","):
        backend, _, cfg = c.rpartition("/")
        env = {**os.environ, "KERAS_BACKEND": backend or "tensorflow"}
        out = subprocess.run([sys.executable, __file__, "--arch", args.arch, "--images", str(args.images), "--child", cfg],
                             capture_output=True, text=True, check=True, env=env)
        rates[c] = json.loads(out.stdout.strip().splitlines()[-1])["img_per_s"]
        print(f"{c}: {rates[c]:.1f} img/s", file=sys.stderr)
    if args.torch_ceiling:
        for fmt in ("channels_last", "nchw"):
            out = subprocess.run([sys.executable, str(Path(__file__).with_name("torch_ceiling.py")), "--images",
                                  str(args.images), "--batch", str(min(1024, args.images)), "--format", fmt],
                                 capture_output=True, text=True, check=True)
            rates[f"pytorch-plain/{fmt}"] = json.loads(out.stdout.strip().splitlines()[-1])["img_per_s"]
            print(f"pytorch-plain/{fmt}: {rates[f'pytorch-plain/{fmt}']:.1f} img/s", file=sys.stderr)

    cpu = cpu_info()
    flags = " ".join(f for f, on in cpu["flags"].items() if on)
    lines = [
        f"# Training throughput: {args.arch}", "",
        f"Machine: {cpu['model']}, {cpu['usable_cores']} cores, flags: {flags}; "
        + ", ".join(f"{k} {v}" for k, v in _versions().items()) + f"; load average before: {load0}.",
        f"Command: `python benchmarks/train/bench_train.py --arch {args.arch} --images {args.images} "
        f"--configs {args.configs}" + (" --torch-ceiling" if args.torch_ceiling else "") + "`", "",
        "Each configuration runs the recipe's real train step (training graph, summed loss, SGD) in its own process, "
        "on random data, after a warm-up fit; ratios are to the first row of the same run. `jit` is Keras' "
        "`jit_compile` (XLA on TensorFlow and JAX, torch.compile on PyTorch). pytorch-plain rows are the same net "
        "without Keras (torch_ceiling.py).", "",
        "| Keras backend | precision | jit | batch | img/s | ratio | min per 50,000-image epoch |",
        "|---|---|---|---:|---:|---:|---:|",
    ]
    prep = _prep_seconds(args.arch)
    lines.insert(-2, f"Data preparation of one 50,000-image epoch (shuffle, alternating flip, translate, float32): "
                     f"{prep:.1f} s on one core; `train` runs it in a thread while the previous epoch trains, so it "
                     f"costs no wall time. XLA `jit_compile` is off by default on CPUs (`--jit auto`).\n")
    base = next(iter(rates.values()))
    for c, r in rates.items():
        backend, _, cfg = c.rpartition("/")
        if backend == "pytorch-plain":
            backend, prec, jit, batch = f"none (plain PyTorch, {cfg})", "float32", "off", str(min(1024, args.images))
        else:
            prec, jit, batch = cfg.split(":")
        lines.append(f"| {backend or 'tensorflow'} | {prec} | {jit} | {batch} | {r:.1f} | {r / base:.2f}x | "
                     f"{50_000 / r / 60:.1f} |")
    manifest = REPO / "trained" / args.arch / "manifest.json"
    history = REPO / "trained" / args.arch / "history.json"
    if manifest.is_file() and history.is_file():
        m, h = json.loads(manifest.read_text()), json.loads(history.read_text())
        lines += ["", f"## The shipped `{args.arch}` run", "",
                  f"Command: `{m['training']['command']}`  ", f"Precision: {m['training']['precision']}; "
                  f"training wall time {m['training']['wall_seconds'] / 60:.1f} min "
                  f"(whole command incl. data and test evaluation {m['training'].get('total_wall_seconds', 0) / 60:.1f} min); "
                  f"test accuracy {m['metrics']['test']['accuracy'] * 100:.2f} % (single view, 10,000 JPEG test images).", "",
                  "| epoch | train loss | train acc | val acc | img/s | cumulative min |", "|---:|---:|---:|---:|---:|---:|"]
        cum = 0.0
        for row in h:
            cum += row.get("seconds", 0) / 60
            val = f"{row['val_acc'] * 100:.2f} %" if "val_acc" in row else "–"
            lines.append(f"| {row['epoch']} | {row['loss']:.3f} | {row['acc'] * 100:.2f} % | {val} | "
                         f"{row['img_per_s']:.0f} | {cum:.1f} |")
    Path(args.out).write_text("\n".join(lines) + "\n")
    print(f"written {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
