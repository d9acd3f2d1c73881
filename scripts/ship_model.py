"""Copy a converted model directory into trained/<name>, keeping only the formats we ship.

trained/ must stay under 40 MB; formats left out keep their parity record in the manifest
(metrics.parity.not_shipped). They can be rebuilt offline with `cifarbench convert trained/<name> --out DIR`
only when the Keras artifact is shipped too; without it (e.g. baseline-cnn) they come back only by retraining
(`cifarbench train ...`, then `cifarbench convert RUN_DIR`), and the manifest's not_shipped_reason says which.

    python scripts/ship_model.py RUN_DIR NAME --formats keras,onnx,tflite-int8,onnx-int8
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from cifarbench.models.manifest import Manifest  # noqa: E402

EXTRA_FILES = ("history.json", "report.txt", "curves.png", "confusion.png")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("run_dir")
    ap.add_argument("name")
    ap.add_argument("--formats", required=True)
    args = ap.parse_args()
    keep = args.formats.split(",")
    m = Manifest.load(args.run_dir)
    dst = REPO / "trained" / args.name
    if dst.exists():
        shutil.rmtree(dst)
    dst.mkdir(parents=True)
    dropped = {}
    for fmt, art in list(m.artifacts.items()):
        if fmt in keep:
            shutil.copy2(Path(args.run_dir) / art.file, dst / art.file)
        else:
            dropped[fmt] = {"file": art.file, "size": art.size, "sha256": art.sha256, "parity": art.parity}
            del m.artifacts[fmt]
    for name in EXTRA_FILES:
        if (Path(args.run_dir) / name).is_file():
            shutil.copy2(Path(args.run_dir) / name, dst / name)
    m.name = args.name
    parity = m.metrics.setdefault("parity", {})
    parity.pop("not_shipped", None), parity.pop("not_shipped_reason", None)
    if dropped:
        parity["not_shipped"] = dropped
        rebuild = (f"rebuild with `cifarbench convert trained/{args.name} --out DIR --calibration-data "
                   "../shared/datasets/cifar10-jpeg.tar.xz`" if "keras" in keep else
                   f"the Keras model is not shipped either, so they cannot be rebuilt from trained/{args.name}: retrain "
                   "with the command in training.command, then `cifarbench convert RUN_DIR --out DIR`")
        parity["not_shipped_reason"] = f"left out of trained/ to keep it under 40 MB; {rebuild}"
    m.save(dst)
    total = sum(p.stat().st_size for p in dst.iterdir())
    print(f"{dst}: {', '.join(m.artifacts)}; {total / 1e6:.1f} MB", file=sys.stderr)


if __name__ == "__main__":
    main()
