"""Which int8 ONNX quantization suits this CPU? S8S8 vs U8S8 (with and without reduce_range), per-tensor vs per-channel.

Every variant is quantized here from the shipped float32 graph (trained/flagship/model.onnx) with
onnxruntime's quantize_static (QDQ), calibrated on the same images convert uses (the validation
slice of the *train* split, never the test split), then measured in one run against two baselines
measured alongside: the float32 graph and the shipped onnx-int8 artifact (U8S8, per-channel,
reduce_range). Reported per variant: test accuracy and top-1 agreement with float32 on the bundled
10,000 test images, images/s at batch 256 and p50 at batch 1 (cifarbench.bench.scenarios loops, the same
as `cifarbench bench`), each also as a ratio to the shipped onnx-int8.

Run on a quiet machine (nothing else busy), from the repository root:

    python benchmarks/int8/bench_int8.py --calibration-data ../shared/datasets/cifar10-jpeg.tar.xz

writes benchmarks/int8/results.json and results.md. ``--smoke`` runs tiny sizes (a check that the
script works, not a measurement).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from cifarbench.backends.onnx_backend import OnnxBackend  # noqa: E402
from cifarbench.bench.scenarios import measure_latency, measure_throughput, predict_all  # noqa: E402
from cifarbench.data.sources import load_dataset, train_val_split  # noqa: E402
from cifarbench.models.manifest import Manifest  # noqa: E402
from cifarbench.sysinfo import cpu_info, package_versions  # noqa: E402

# name -> (activations, weights, reduce_range, per_channel)
VARIANTS = {
    "S8S8 per-channel": ("QInt8", "QInt8", False, True),
    "S8S8 per-tensor": ("QInt8", "QInt8", False, False),
    "U8S8 per-channel": ("QUInt8", "QInt8", False, True),
    "U8S8 per-tensor": ("QUInt8", "QInt8", False, False),
    "U8S8 reduce_range per-channel": ("QUInt8", "QInt8", True, True),  # what convert ships today
    "U8S8 reduce_range per-tensor": ("QUInt8", "QInt8", True, False),
}


def calibration_images(manifest: Manifest, source: str, size: int) -> np.ndarray:
    """The images convert calibrates on: the start of the seeded order over the train split's validation slice."""
    seed = int(manifest.training.get("seed", 0))
    val_size = int(manifest.training.get("data", {}).get("val", 5000))
    full = load_dataset(source, "train", classes=manifest.classes)
    # a model trained on the whole split (--val-size 0) has no held-out slice: calibrate on a sample of it
    _, val = (full, full) if val_size == 0 else train_val_split(full, min(val_size, len(full) - 1), seed)
    order = np.random.default_rng(seed).permutation(len(val))
    return val.images[order[:size]]


def quantize(fp32: Path, out: Path, cal: np.ndarray, acts: str, weights: str, reduce_range: bool, per_channel: bool) -> float:
    import onnxruntime as ort
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    name = ort.InferenceSession(str(fp32), providers=["CPUExecutionProvider"]).get_inputs()[0].name

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter([{name: cal[i: i + 50]} for i in range(0, len(cal), 50)])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.batches, None)

    t0 = time.perf_counter()
    pre = out.with_suffix(".pre.onnx")
    try:
        quant_pre_process(str(fp32), str(pre), skip_symbolic_shape=True)
    except Exception:  # as convert does: pre-processing is an optimisation
        shutil.copy2(fp32, pre)
    quantize_static(str(pre), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=per_channel,
                    activation_type=getattr(QuantType, acts), weight_type=getattr(QuantType, weights),
                    reduce_range=reduce_range)
    return time.perf_counter() - t0


def measure(name: str, path: Path, images: np.ndarray, labels: np.ndarray, ref: np.ndarray | None,
            args: argparse.Namespace) -> tuple[dict[str, Any], np.ndarray]:
    be = OnnxBackend(name, str(path), "cpu", args.threads)
    probs, _ = predict_all(be.predict, images, 256, 10)
    lat, _ = measure_latency(be.predict, images, 10, args.min_iters, args.min_time)
    tp = measure_throughput(be.predict, images, 256, args.min_time)
    row = {"variant": name, "file_bytes": path.stat().st_size, "accuracy": float(np.mean(probs.argmax(1) == labels)),
           "agreement_fp32": float(np.mean(probs.argmax(1) == ref.argmax(1))) if ref is not None else 1.0,
           "images_per_s_b256": tp["images_per_s"], "p50_ms_b1": lat["p50_ms"], "p99_ms_b1": lat["p99_ms"],
           "latency_n": lat["n"]}
    return row, probs


def machine() -> dict[str, Any]:
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        model_line = next((ln for ln in lscpu.splitlines() if ln.startswith("Model name")), "")
    except (OSError, subprocess.SubprocessError):
        model_line = ""
    cpu = cpu_info()
    return {"lscpu_model_name": model_line.split(":", 1)[-1].strip(), "flags": cpu["flags"],
            "usable_cores": cpu["usable_cores"], "platform": platform.platform(),
            "loadavg": os.getloadavg() if hasattr(os, "getloadavg") else None,
            "versions": {k: v for k, v in package_versions().items() if k in ("python", "numpy", "onnxruntime")}}


def to_markdown(doc: dict[str, Any]) -> str:
    m = doc["machine"]
    flags = ", ".join(f for f, on in m["flags"].items() if on)
    lines = ["# int8 ONNX variants", "", f"Command: `{doc['command']}`", "",
             f"- CPU: {m['lscpu_model_name']} ({m['usable_cores']} usable cores); speed flags: {flags}",
             f"- Versions: {', '.join(f'{k} {v}' for k, v in m['versions'].items())}; load average at start "
             f"{m['loadavg']}", f"- Test images: {doc['test_images']}; calibration images: {doc['calibration_images']} "
             "(train split, validation slice, as convert)", "",
             "Ratios are to the shipped onnx-int8 (U8S8 reduce_range per-channel) measured in the same run.", "",
             "| variant | accuracy | top-1 agreement with fp32 | img/s @256 | × shipped | p50 ms @1 | × shipped | MB |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    base = next(r for r in doc["rows"] if r["variant"] == "shipped onnx-int8")
    for r in doc["rows"]:
        lines.append(f"| {r['variant']} | {r['accuracy']:.4f} | {r['agreement_fp32']:.4f} | {r['images_per_s_b256']:,.0f} | "
                     f"{r['images_per_s_b256'] / base['images_per_s_b256']:.2f} | {r['p50_ms_b1']:.3f} | "
                     f"{r['p50_ms_b1'] / base['p50_ms_b1']:.2f} | {r['file_bytes'] / 1e6:.2f} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=str(REPO / "trained" / "flagship"))
    ap.add_argument("--calibration-data", default=str(REPO.parent / "shared" / "datasets" / "cifar10-jpeg.tar.xz"))
    ap.add_argument("--calibration-size", type=int, default=1000)
    ap.add_argument("--test-data", default="bundled")
    ap.add_argument("--limit", type=int, help="test images (default: all)")
    ap.add_argument("--threads", type=int)
    ap.add_argument("--min-time", type=float, default=3.0)
    ap.add_argument("--min-iters", type=int, default=300)
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent))
    ap.add_argument("--smoke", action="store_true", help="tiny sizes: checks the script runs; measures nothing")
    args = ap.parse_args()
    if args.smoke:
        args.calibration_size, args.limit, args.min_time, args.min_iters = 50, 200, 0.05, 20
    manifest = Manifest.load(args.model)
    fp32 = manifest.path_of("onnx")
    test = load_dataset(args.test_data, "test", classes=manifest.classes)
    images, labels = test.images, test.labels
    if args.limit:
        idx = np.sort(np.random.default_rng(0).permutation(len(test))[: args.limit])
        images, labels = np.ascontiguousarray(images[idx]), labels[idx]
    cal = calibration_images(manifest, args.calibration_data, args.calibration_size)
    rows, quant_s = [], {}
    ref_row, ref = measure("float32", fp32, images, labels, None, args)
    rows.append(ref_row)
    shipped_row, _ = measure("shipped onnx-int8", manifest.path_of("onnx-int8"), images, labels, ref, args)
    rows.append(shipped_row)
    with tempfile.TemporaryDirectory(prefix="int8-variants-") as tmp:
        for name, (acts, weights, rr, pc) in VARIANTS.items():
            path = Path(tmp) / (name.replace(" ", "_") + ".onnx")
            quant_s[name] = quantize(fp32, path, cal, acts, weights, rr, pc)
            row, _ = measure(name, path, images, labels, ref, args)
            row.update(activations=acts, weights=weights, reduce_range=rr, per_channel=pc, quantize_s=quant_s[name])
            rows.append(row)
            print(f"{name}: accuracy {row['accuracy']:.4f}, agreement {row['agreement_fp32']:.4f}, "
                  f"{row['images_per_s_b256']:,.0f} img/s, p50 {row['p50_ms_b1']:.3f} ms", file=sys.stderr)
    doc = {"command": " ".join([Path(sys.argv[0]).as_posix()] + sys.argv[1:]), "smoke": args.smoke,
           "machine": machine(), "model": manifest.name, "test_images": int(len(images)),
           "calibration_images": int(len(cal)), "rows": rows}
    out = Path(args.out)
    stem = "results-smoke" if args.smoke else "results"
    (out / f"{stem}.json").write_text(json.dumps(doc, indent=2) + "\n")
    (out / f"{stem}.md").write_text(to_markdown(doc))
    print(to_markdown(doc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
