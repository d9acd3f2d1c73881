"""One bench row measured: in this process, or isolated in a fresh one (``python -m cifarbench.bench.worker``).

Isolation is what makes a row's load time and peak RSS its own: in one process the
keras row's TensorFlow would inflate every later row's memory, and runtimes share caches.
The parent sends a ``Job`` as JSON on stdin; the child loads the model and the same data
subset, measures, and answers one JSON object on stdout (probabilities go to a .npy file).
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cifarbench.bench.metrics import (DENSE_CONFUSION_MAX, classification_report, confusion_matrix, most_confused,
                                      sparse_confusion, top_k_accuracy)
from cifarbench.bench.scenarios import find_max_rate, measure_latency, measure_throughput, predict_all, run_server
from cifarbench.data.batching import images_per_batch
from cifarbench.data.images import DEFAULT_MAX_PIXELS
from cifarbench.errors import CifarbenchError, first_line
from cifarbench.models.manifest import Manifest


@dataclass
class Job:
    """Everything one measurement needs, JSON-able so it can cross a process boundary."""

    model: str  # manifest directory
    backend: str
    device: str = "cpu"
    threads: int | None = None
    data: str = "bundled"
    limit: int | None = None
    seed: int = 0
    batch_sizes: list[int] = field(default_factory=lambda: [1, 32, 256])
    scenarios: list[str] = field(default_factory=lambda: ["single-stream", "offline"])
    warmup: int = 10
    min_time: float = 2.0
    min_iters: int = 200
    min_calls: int = 3
    quality: bool = True  # run the accuracy pass (the first repeat only: it is deterministic)
    server_rate: float | None = None
    p99_bound_ms: float | None = 10.0
    server_time: float = 2.0
    server_max_batch: int | None = None  # default: the largest batch size
    pin: list[int] | None = None  # CPUs the isolated process is pinned to (sched_setaffinity), if any
    tta: str = "none"
    max_pixels: int | None = DEFAULT_MAX_PIXELS  # the command's --max-pixels: the child loads its data under it
    resize: str | None = None  # the command's transform overrides (None: the manifest's), as the parent's rows
    crop_pct: float | None = None
    interpolation: str | None = None
    runtime_options: dict[str, Any] = field(default_factory=dict)  # RuntimeOptions.as_dict(): tuning (--ov-hint...)
    profile_dir: str | None = None  # --profile: each runtime's per-op profile goes here (an extra, untimed pass)
    synthetic: int = 0  # > 0: that many random images at the model's size, no labels (no accuracy pass)


def peak_rss_mb() -> float:
    """This process's resident high-water mark.

    Linux: VmHWM of /proc/self/status, which belongs to the process image; getrusage's ru_maxrss
    survives fork and exec, so an isolated row would report its parent's peak (measured: 980 MB
    for a child that never imported TensorFlow).
    """
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1 << 20) if sys.platform == "darwin" else peak / 1024  # bytes on macOS, KiB on Linux


def current_rss_mb() -> float | None:
    try:
        with open("/proc/self/statm", encoding="ascii") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / (1 << 20)
    except (OSError, ValueError, IndexError):
        return None


def quality(probs: np.ndarray, labels: np.ndarray, classes: list[str]) -> dict[str, Any]:
    """Accuracy, top-5 (5 classes or more), P/R/F1, the most-confused pairs and the confusion matrix.

    Beyond DENSE_CONFUSION_MAX classes the matrix is kept as its non-zero cells (``confusion_sparse``):
    a dense 1000x1000 matrix would be millions of zeros per row in results.json.
    """
    cm = confusion_matrix(labels, probs.argmax(1), len(classes))
    q = classification_report(cm, classes)
    q["top5"] = top_k_accuracy(probs, labels, 5)
    q["most_confused"] = most_confused(cm, classes)
    if len(classes) <= DENSE_CONFUSION_MAX:
        q["confusion"] = cm.tolist()
    else:
        q["confusion_sparse"] = sparse_confusion(cm)
    return q


def measure(job: Job, manifest: Manifest, images: np.ndarray,
            labels: np.ndarray | None) -> tuple[dict[str, Any], np.ndarray | None]:
    """Row fields measured for ``job`` (see bench.Row) and the probabilities of the accuracy pass (none without labels)."""
    from cifarbench import backends
    from cifarbench.backends.options import RuntimeOptions

    spec = backends.get_spec(job.backend)
    options = RuntimeOptions.from_dict(job.runtime_options)
    out: dict[str, Any] = {"format": spec.format, "file": manifest.artifacts[spec.format].file,
                           "size_bytes": int(manifest.path_of(spec.format).stat().st_size), "warnings": []}
    sizes = sorted(set(job.batch_sizes))
    rss0 = current_rss_mb()
    t0 = time.perf_counter()
    tuned = {"options": options} if options.as_dict() else {}  # defaults: the plain call (plug-ins, test doubles)
    be = backends.load_backend(job.backend, manifest, job.device, job.threads, **tuned)
    out["load_s"] = time.perf_counter() - t0
    out["runtime"] = dict(be.describe())
    out["runtime"]["tuning"] = options.for_runtime(out["runtime"].get("runtime", "")) or "defaults"
    t0 = time.perf_counter()
    be.predict(images[:1])
    out["first_call_ms"] = 1000 * (time.perf_counter() - t0)
    probs = None
    if job.quality and labels is not None:
        eval_batch = images_per_batch(images.shape[1:3], sizes[-1])  # 256 images of 224x224 need gigabytes
        probs, seconds = predict_all(be.predict, images, eval_batch, len(manifest.classes))
        out["eval"] = {"batch_size": eval_batch, "images": int(len(images)), "seconds": seconds,
                       "images_per_s": len(images) / seconds if seconds else None}
        out["quality"] = quality(probs, labels, list(manifest.classes))
        if job.tta != "none":
            out["tta"] = _tta(be.predict, images, labels, job.tta, eval_batch, len(manifest.classes), seconds)
    tp: list[dict[str, Any]] = []
    if "single-stream" in job.scenarios:
        lat, out["warnings"] = measure_latency(be.predict, images, job.warmup, job.min_iters, job.min_time)
        out["latency"] = lat
        if 1 in sizes:
            tp.append({"batch_size": 1, "calls": lat["n"], "images": lat["n"], "seconds": lat["total_s"],
                       "images_per_s": lat["n"] / lat["total_s"] if lat["total_s"] else None, "from": "latency samples",
                       "latency": {k: v for k, v in lat.items() if k != "total_s"}})
    if "offline" in job.scenarios:
        tp += [measure_throughput(be.predict, images, b, job.min_time, job.min_calls) for b in sizes if not tp or b != 1]
    out["throughput"] = tp
    if "server" in job.scenarios:
        out["server"] = _server(job, be.predict, images, tp)
    rss1 = current_rss_mb()
    out["rss_delta_mb"] = rss1 - rss0 if rss0 is not None and rss1 is not None else None
    del be
    out["peak_rss_mb"] = peak_rss_mb()
    if job.profile_dir:
        out["profile"] = _profile(job, manifest, images, options)
    return out, probs


PROFILE_CALLS = 3  # profiled calls at each batch size: the profile is a breakdown, not a timing


def _profile(job: Job, manifest: Manifest, images: np.ndarray, options: Any) -> dict[str, Any]:
    """The row's backend loaded again with its runtime's profiler on, a few calls at batch 1 and the largest batch,
    after the timed figures (so they never carry the profiler's cost): the raw file and the top ops by time."""
    from dataclasses import replace

    from cifarbench import backends
    from cifarbench.backends.profiling import top

    where = os.path.join(job.profile_dir, Path(str(manifest.directory)).name or manifest.name)
    be = backends.load_backend(job.backend, manifest, job.device, job.threads,
                               options=replace(options, profile_dir=where))
    if not callable(getattr(be, "profile", None)):
        return {"unavailable": f"backend {job.backend} has no profiler hook", "top_ops": []}
    big = images[: max(job.batch_sizes)]
    for _ in range(PROFILE_CALLS):
        be.predict(images[:1])
        be.predict(big)
    got = be.profile()
    return {"runtime": got.get("runtime"), "file": got.get("file"), "calls": PROFILE_CALLS,
            "batch_sizes": [1, int(len(big))], "unavailable": got.get("unavailable"), "top_ops": top(got["ops"])}


def _tta(predict: Any, images: np.ndarray, labels: np.ndarray, mode: str, batch: int, classes: int,
         single_s: float) -> dict[str, Any]:
    """The accuracy pass again with test-time augmentation, timed the same way: what the views buy and cost."""
    from cifarbench.backends.tta import VIEWS, predict_tta

    probs, seconds = predict_all(lambda b: predict_tta(predict, b, mode), images, batch, classes)
    return {"mode": mode, "views": VIEWS[mode], "accuracy": float((probs.argmax(1) == labels).mean()),
            "images_per_s": len(images) / seconds if seconds else None,
            "cost_x": seconds / single_s if single_s else None}


def _server(job: Job, predict: Any, images: np.ndarray, tp: list[dict[str, Any]]) -> dict[str, Any]:
    max_batch = job.server_max_batch or max(job.batch_sizes)
    res: dict[str, Any] = {"max_batch": max_batch, "seconds_per_trial": job.server_time}
    if job.server_rate:
        res["at_rate"] = run_server(predict, images, job.server_rate, job.server_time, max_batch)
    if job.p99_bound_ms:
        guess = max((t["images_per_s"] or 0 for t in tp), default=0.0) or 100.0
        res["search"] = find_max_rate(predict, images, job.p99_bound_ms, guess / 2, job.server_time, max_batch)
    return res


# --------------------------------------------------------------------------- isolation


def run_isolated(job: Job, timeout: float | None = None) -> tuple[dict[str, Any], np.ndarray | None]:
    """``measure`` in a fresh interpreter; a crash or an error there becomes CifarbenchError here."""
    with tempfile.TemporaryDirectory(prefix="cifarbench-row-") as tmp:
        probs_path = Path(tmp) / "probs.npy"
        payload = json.dumps({"job": asdict(job), "probs": str(probs_path)})
        proc = subprocess.run([sys.executable, "-m", "cifarbench.bench.worker"], input=payload, capture_output=True,
                              text=True, timeout=timeout, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        lines = proc.stdout.strip().splitlines()
        try:
            answer = json.loads(lines[-1]) if lines else None
        except ValueError:
            answer = None
        if not isinstance(answer, dict):
            tail = (proc.stderr.strip().splitlines() or [f"exit status {proc.returncode}"])[-1]
            raise CifarbenchError(f"the isolated row process died: {tail}")
        if "error" in answer:
            exc = CifarbenchError(answer["error"])
            exc.kind = answer.get("kind", "")  # type: ignore[attr-defined]
            raise exc
        probs = np.load(probs_path) if probs_path.is_file() else None
        return answer["row"], probs


def _pin(cpus: list[int] | None) -> list[int] | None:
    """Pin this process where the OS allows it (Linux); the CPUs actually pinned to, or None."""
    if not cpus or not hasattr(os, "sched_setaffinity"):
        return None
    try:
        os.sched_setaffinity(0, cpus)
        return sorted(os.sched_getaffinity(0))
    except OSError:
        return None


def _main() -> int:
    from cifarbench.bench.data import load_subset, synthetic
    from cifarbench.data.images import default_max_pixels
    from cifarbench.models.model_ref import resolve_model

    request = json.loads(sys.stdin.read())
    job = Job(**request["job"])
    try:
        pinned = _pin(job.pin)
        manifest = resolve_model(job.model)
        manifest.input = manifest.input.with_transform(job.resize, job.crop_pct, job.interpolation)
        if job.synthetic:
            data = synthetic(manifest.input.size, job.synthetic, job.seed)
        else:
            with default_max_pixels(job.max_pixels):  # the same images as the parent's rows, and its cache entry
                data = load_subset(job.data, manifest.classes, job.limit, job.seed, manifest.input.transform)
        row, probs = measure(job, manifest, data.images, data.labels)
        row["pinned_cpus"] = pinned
        if probs is not None:
            np.save(request["probs"], probs)
        answer: dict[str, Any] = {"row": row}
    except Exception as exc:  # reported to the parent, which marks the row failed or skipped
        answer = {"error": first_line(exc), "kind": type(exc).__name__}
    sys.stdout.write("\n" + json.dumps(answer, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(_main())
