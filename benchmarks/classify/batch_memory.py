"""Peak memory and time of ``cifarbench classify`` at 256 images per call against the default for the model's size.

Why: 256 images per call was chosen for 32x32 inputs; at 224x224 the activations of one call take gigabytes.
The default now holds a call to 256 x 64 x 64 pixels (``data/batching.py``: 20 images at 224x224). Each setting
runs as its own ``cifarbench classify`` process (alternating, ``--rounds`` times), and its peak RSS is the
child's ``ru_maxrss``. The model is any converted folder, e.g. one ``benchmarks/native/bench_native.py`` built:

    python benchmarks/classify/batch_memory.py --model /tmp/cifarbench-native/models/resnet50 [--images 300]
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))
from cifarbench.sysinfo import cpu_info  # noqa: E402


def run(model: str, folder: Path, backend: str, batch: list[str]) -> tuple[float, float]:
    out = Path(tempfile.mkstemp(suffix=".csv")[1])
    t0 = time.perf_counter()
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    p = subprocess.run([sys.executable, "-m", "cifarbench", "classify", str(folder), "-m", model, "-b", backend,
                        "-q", "-o", str(out), *batch], capture_output=True, text=True)
    wall = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    out.unlink(missing_ok=True)
    if p.returncode != 0:
        raise SystemExit(f"classify failed: {p.stderr.strip()}")
    # RUSAGE_CHILDREN's maxrss is the largest child so far: runs go small first within a round (see main)
    return max(peak, before) / 1024, wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--backend", default="onnx")
    ap.add_argument("--images", type=int, default=300)
    ap.add_argument("--rounds", type=int, default=1)
    args = ap.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="batch-memory-"))
    rng = np.random.default_rng(0)
    for i in range(args.images):
        Image.fromarray(rng.integers(0, 256, (240, 320, 3), dtype=np.uint8)).save(folder / f"{i:04d}.jpg", quality=80)
    rows = []
    for _ in range(args.rounds):
        # each setting in a fresh Python parent, so RUSAGE_CHILDREN's running maximum is that setting's own
        for label, batch in (("default", []), ("--batch-size 256", ["--batch-size", "256"])):
            code = (f"import sys; sys.argv = {[sys.argv[0]]!r}; sys.path.insert(0, {str(HERE)!r}); "
                    f"import batch_memory as b; from pathlib import Path; "
                    f"print(*b.run({args.model!r}, Path({str(folder)!r}), {args.backend!r}, {batch!r}))")
            mb, wall = map(float, subprocess.check_output([sys.executable, "-c", code], text=True).split())
            rows.append((label, mb, wall))
            print(f"{label:18s} peak {mb:8.0f} MB  {wall:6.1f} s", flush=True)
    cpu = cpu_info()
    flags = " ".join(f for f, on in cpu["flags"].items() if on)
    print(f"\nmodel {args.model} ({args.backend}), {args.images} JPEGs 320x240; {cpu['model']} "
          f"({cpu['usable_cores']} cores; {flags}); load average {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
