"""Benchmark every (model, backend): quality, agreement with a reference, latency, throughput, size, memory.

Every number is taken the same way for every runtime, through the one backend protocol,
so rows are comparable: the timed region is ``backend.predict`` on uint8 batches already
in memory; decoding and preprocessing images is timed on its own, never mixed in.
"""

from __future__ import annotations

import gc
import importlib
import os
import resource
import sys
import tarfile
import time
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from cifarbench import __version__, backends
from cifarbench.data import IMAGE_EXTENSIONS, Dataset, load_dataset
from cifarbench.errors import BackendUnavailable, CifarbenchError, ModelError, UsageError
from cifarbench.images import load_image
from cifarbench.manifest import Manifest
from cifarbench.metrics import classification_report, confusion_matrix, latency_stats
from cifarbench.models import resolve_model, shipped_models
from cifarbench.paths import BUNDLED_TEST_ARCHIVE
from cifarbench.sysinfo import environment

SCHEMA = "cifarbench.bench"
SCHEMA_VERSION = 1
REFERENCE_ORDER = ("keras", "onnx")  # keras when measured, else onnx fp32
P99_MIN_SAMPLES = 100
DEFINITIONS = {
    "throughput": "images/s = images passed to backend.predict / summed wall time (perf_counter) of those calls; "
    "batches are uint8 arrays already decoded in memory, so decode, batching and loop overhead are excluded",
    "latency": "wall time of one backend.predict call at batch 1, after warm-up calls; the first call after "
    "loading is reported on its own (first_call_ms) and never enters the statistics",
    "decode": "load_image on encoded files of the data source (decode + EXIF transpose + resize to 32x32 RGB), "
    "timed apart from inference",
    "load": "wall time of load_backend: checksum verification plus runtime session/interpreter creation "
    "(the TensorFlow import is timed separately as tensorflow_import_s)",
    "peak_rss": "the process high-water mark (getrusage ru_maxrss) after the row finished; rows run in order "
    "(keras last), so it is cumulative; rss_delta_mb is resident memory after minus before loading that backend",
    "speedup": "images/s at the largest batch size divided by the reference backend's for the same model",
    "agreement": "top-1 agreement and max |probability difference| against the reference backend on the same images",
}


@dataclass
class BenchConfig:
    models: Sequence[str] = ()  # names or directories; empty: every shipped model
    backends: Sequence[str] | None = None  # None: every registered backend (--all)
    data: str = "bundled"
    limit: int | None = None
    batch_sizes: Sequence[int] = (1, 32, 256)
    threads: int | None = None
    device: str = "cpu"
    warmup: int = 10
    min_time: float = 2.0
    min_iters: int = 200
    min_calls: int = 3  # per throughput batch size
    decode_sample: int = 500
    seed: int = 0
    command: str = ""


@dataclass
class Row:
    """One (model, backend) result; ``status`` is ok, skipped (with the reason) or failed."""

    model: str
    backend: str
    status: str = "ok"
    reason: str | None = None
    format: str | None = None
    file: str | None = None
    size_bytes: int | None = None
    load_s: float | None = None
    first_call_ms: float | None = None
    latency: dict[str, Any] = field(default_factory=dict)
    throughput: list[dict[str, Any]] = field(default_factory=list)
    eval: dict[str, Any] = field(default_factory=dict)
    quality: dict[str, Any] = field(default_factory=dict)
    agreement: dict[str, Any] = field(default_factory=dict)
    speedup: float | None = None
    speedup_by_batch: dict[str, float] = field(default_factory=dict)  # str(batch size) -> ratio, for JSON keys
    accuracy_delta_pp: float | None = None
    peak_rss_mb: float | None = None
    rss_delta_mb: float | None = None
    runtime: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------- measurement primitives


def measure_latency(predict: Callable[[np.ndarray], Any], images: np.ndarray, warmup: int, min_iters: int,
                    min_time: float, clock: Callable[[], float] = time.perf_counter) -> tuple[dict[str, Any], list[str]]:
    """Batch-1 calls until both ``min_iters`` calls and ``min_time`` seconds are reached; warm-up excluded."""
    n = len(images)
    for i in range(warmup):
        predict(images[i % n: i % n + 1])
    samples: list[float] = []
    total, i = 0.0, warmup
    while len(samples) < max(1, min_iters) or total < min_time:
        x = images[i % n: i % n + 1]
        t0 = clock()
        predict(x)
        dt = clock() - t0
        samples.append(dt)
        total += dt
        i += 1
    warnings = []
    if len(samples) < P99_MIN_SAMPLES:
        warnings.append(f"p99 rests on only {len(samples)} latency samples (< {P99_MIN_SAMPLES}); raise --min-iters")
    stats = latency_stats(samples)
    stats["total_s"] = total
    return stats, warnings


def _batches(images: np.ndarray, batch_size: int, start: int = 0) -> Iterator[np.ndarray]:
    """Endless batches of exactly ``batch_size`` images, wrapping around the data."""
    n, pos = len(images), start
    while True:
        if pos + batch_size <= n:
            yield images[pos: pos + batch_size]
        else:
            yield images[np.arange(pos, pos + batch_size) % n]
        pos = (pos + batch_size) % n


def measure_throughput(predict: Callable[[np.ndarray], Any], images: np.ndarray, batch_size: int, min_time: float,
                       min_calls: int = 3, warmup: int = 2, clock: Callable[[], float] = time.perf_counter) -> dict[str, Any]:
    """images / summed call time at one batch size; warm-up calls (resizes, retraces) excluded."""
    gen = _batches(images, batch_size)
    for _ in range(warmup):
        predict(next(gen))
    calls, total = 0, 0.0
    while calls < max(1, min_calls) or total < min_time:
        x = next(gen)
        t0 = clock()
        predict(x)
        total += clock() - t0
        calls += 1
    return {"batch_size": batch_size, "calls": calls, "images": calls * batch_size, "seconds": total,
            "images_per_s": calls * batch_size / total if total > 0 else None}


def predict_all(predict: Callable[[np.ndarray], np.ndarray], images: np.ndarray, batch_size: int,
                num_classes: int) -> tuple[np.ndarray, float]:
    """Probabilities for every image, batch by batch into one preallocated array (memory: N x classes floats)."""
    out = np.empty((len(images), num_classes), dtype=np.float32)
    total = 0.0
    for i in range(0, len(images), batch_size):
        x = images[i: i + batch_size]
        t0 = time.perf_counter()
        y = np.asarray(predict(x))
        total += time.perf_counter() - t0
        if y.shape != (len(x), num_classes):
            raise ModelError(f"backend returned shape {y.shape}, expected ({len(x)}, {num_classes})")
        out[i: i + len(x)] = y
    return out, total


def agreement(probs: np.ndarray, ref: np.ndarray) -> dict[str, float]:
    return {"top1": float(np.mean(probs.argmax(1) == ref.argmax(1))),
            "max_abs_dprob": float(np.max(np.abs(probs - ref))) if probs.size else 0.0}


def peak_rss_mb() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1 << 20) if sys.platform == "darwin" else peak / 1024  # bytes on macOS, KiB on Linux


def current_rss_mb() -> float | None:
    try:
        with open("/proc/self/statm", encoding="ascii") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / (1 << 20)
    except (OSError, ValueError, IndexError):
        return None


# --------------------------------------------------------------------------- decode timing


def _encoded_members(source: str, k: int) -> Iterator[bytes]:
    """Up to ``k`` encoded image files from a folder or archive source, read without decoding."""
    path = BUNDLED_TEST_ARCHIVE if source in ("", "bundled") else Path(source).expanduser()
    is_image = lambda name: Path(name).suffix.lower() in IMAGE_EXTENSIONS and not Path(name).name.startswith(".")  # noqa: E731
    count = 0
    if path.is_dir():
        for p in sorted(path.rglob("*")):
            if count >= k:
                return
            if p.is_file() and is_image(p.name):
                count += 1
                yield p.read_bytes()
    elif path.is_file() and zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as zf:
            for info in zf.infolist():
                if count >= k:
                    return
                if not info.is_dir() and is_image(info.filename):
                    count += 1
                    yield zf.read(info)
    elif path.is_file() and tarfile.is_tarfile(path):
        with tarfile.open(path, "r:*") as tf:
            for m in tf:
                if count >= k:
                    return
                if m.isfile() and is_image(m.name):
                    count += 1
                    yield tf.extractfile(m).read()  # type: ignore[union-attr]


def measure_decode(source: str, k: int) -> dict[str, Any]:
    """Decode + preprocess time per image through the one loader, on the source's own encoded files."""
    if k <= 0 or source == "cifar10":
        return {"images": 0, "note": "not measured: the source holds raw pixel arrays, nothing to decode"}
    try:
        blobs = list(_encoded_members(source, k))
    except (OSError, tarfile.TarError, zipfile.BadZipFile) as exc:
        return {"images": 0, "note": f"not measured: {exc}"}
    if not blobs:
        return {"images": 0, "note": "not measured: the source holds raw pixel arrays, nothing to decode"}
    times, failed = [], 0
    for b in blobs:
        t0 = time.perf_counter()
        ok = load_image(b).ok
        times.append(time.perf_counter() - t0)
        failed += not ok
    total = sum(times)
    return {"images": len(blobs), "failed": failed, "seconds": total, "images_per_s": len(blobs) / total if total else None,
            "mean_ms": 1000 * total / len(blobs), "mean_bytes": float(np.mean([len(b) for b in blobs]))}


# --------------------------------------------------------------------------- the run


def _order(names: Sequence[str]) -> list[str]:
    """Registry order, keras last: it imports TensorFlow, which would inflate every later row's peak RSS."""
    known = [b for b in backends.BACKENDS if b in names]
    return [b for b in known if b != "keras"] + [b for b in known if b == "keras"]


def resolve_plan(config: BenchConfig) -> tuple[list[Manifest], list[str]]:
    specs = list(config.models) or shipped_models()
    if not specs:
        raise ModelError("no shipped models found; pass --model NAME|DIR")
    manifests = [resolve_model(s) for s in dict.fromkeys(specs)]
    names = [m.name for m in manifests]
    if len(set(names)) != len(names):
        raise UsageError(f"two models share a name ({', '.join(names)}); their rows would collide")
    if config.backends is None:
        chosen = list(backends.BACKENDS)
    else:
        for b in config.backends:
            backends.get_spec(b)
        chosen = list(dict.fromkeys(config.backends))
    return manifests, _order(chosen)


def _subset(ds: Dataset, limit: int | None, seed: int) -> tuple[np.ndarray, np.ndarray, str]:
    if limit is None or limit >= len(ds):
        return ds.images, ds.labels, f"all {len(ds)} images"
    # A seeded random subset: the sources list images class by class, so the first N would be one class.
    idx = np.sort(np.random.default_rng(seed).permutation(len(ds))[:limit])
    return np.ascontiguousarray(ds.images[idx]), ds.labels[idx], f"random {limit} of {len(ds)} images (seed {seed})"


def run_bench(config: BenchConfig, progress: Callable[[str, bool], None] | None = None) -> dict[str, Any]:
    """Run the whole plan and return the results document (see cifarbench.report for the schema).

    ``progress(message, row_done)`` hears what is being measured and each finished row.
    """
    say = progress or (lambda msg, done=False: None)
    if not config.batch_sizes or min(config.batch_sizes) < 1:
        raise UsageError("batch sizes must be positive integers")
    batch_sizes = sorted(set(int(b) for b in config.batch_sizes))
    manifests, order = resolve_plan(config)
    load_start = os.getloadavg() if hasattr(os, "getloadavg") else None
    data_cache: dict[tuple[str, ...], tuple[np.ndarray, np.ndarray, str, Dataset, float]] = {}
    started = time.time()
    rows: dict[tuple[str, str], Row] = {}
    probs: dict[tuple[str, str], np.ndarray] = {}
    tf_import_s: float | None = None
    for backend in order:
        for m in manifests:
            row = Row(model=m.name, backend=backend)
            rows[(m.name, backend)] = row
            reason = backends.unavailable_reason(backend, m, config.device)
            if reason:
                row.status, row.reason = "skipped", reason
                say(f"{m.name}/{backend}: skipped ({reason})", True)
                continue
            key = tuple(m.classes)
            if key not in data_cache:
                t0 = time.perf_counter()
                ds = load_dataset(config.data, "test", classes=m.classes)
                load_s = time.perf_counter() - t0
                images, labels, subset = _subset(ds, config.limit, config.seed)
                data_cache[key] = (images, labels, subset, ds, load_s)
            images, labels = data_cache[key][:2]
            if backend == "keras" and "tensorflow" not in sys.modules:
                say("importing TensorFlow for the keras backend", False)
                t0 = time.perf_counter()
                importlib.import_module("tensorflow")
                tf_import_s = time.perf_counter() - t0
            say(f"{m.name}/{backend}: measuring", False)
            try:
                probs[(m.name, backend)] = _measure(row, m, backend, images, labels, batch_sizes, config)
            except Exception as exc:  # one broken artifact must not sink the other rows
                if isinstance(exc, BackendUnavailable):
                    row.status, row.reason = "skipped", str(exc)
                else:
                    row.status = "failed"
                    row.reason = f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0]}"
            gc.collect()
            say(_one_line(row), True)
    compare_notes = _compare(manifests, rows, probs)
    load_end = os.getloadavg() if hasattr(os, "getloadavg") else None
    env = environment()
    env.update(threads_requested=config.threads, device=config.device, command=config.command,
               loadavg_start=load_start, loadavg_end=load_end, nice=os.nice(0) if hasattr(os, "nice") else None,
               tensorflow_import_s=tf_import_s)
    warnings = _global_warnings(env) + compare_notes
    first_data = next(iter(data_cache.values()), None)
    data = {"source": config.data, "split": "test", "images": int(len(first_data[0])) if first_data else 0,
            "subset": first_data[2] if first_data else None,
            "fingerprint": first_data[3].fingerprint if first_data else None,
            "load_s": first_data[4] if first_data else None,
            "decode": measure_decode(config.data, config.decode_sample if first_data else 0)}
    cfg = asdict(config)
    cfg["batch_sizes"] = batch_sizes
    ordered = [rows[(m.name, b)] for m in manifests for b in backends.BACKENDS if (m.name, b) in rows]
    return {
        "schema": SCHEMA, "schema_version": SCHEMA_VERSION, "cifarbench_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "wall_s": time.time() - started, "command": config.command, "config": cfg, "definitions": DEFINITIONS,
        "environment": env, "data": data,
        "models": {m.name: {"path": str(m.directory), "arch": m.arch, "params": m.params, "classes": list(m.classes),
                            "reference": _reference(m.name, rows)} for m in manifests},
        "results": [asdict(r) for r in ordered], "warnings": warnings,
    }


def _measure(row: Row, m: Manifest, backend: str, images: np.ndarray, labels: np.ndarray,
             batch_sizes: list[int], config: BenchConfig) -> np.ndarray:
    spec = backends.get_spec(backend)
    row.format, row.file = spec.format, m.artifacts[spec.format].file
    row.size_bytes = int(m.path_of(spec.format).stat().st_size)
    rss0 = current_rss_mb()
    t0 = time.perf_counter()
    be = backends.load_backend(backend, m, config.device, config.threads)
    row.load_s = time.perf_counter() - t0
    row.runtime = dict(be.describe())
    t0 = time.perf_counter()
    be.predict(images[:1])
    row.first_call_ms = 1000 * (time.perf_counter() - t0)
    p, seconds = predict_all(be.predict, images, batch_sizes[-1], len(m.classes))
    row.eval = {"batch_size": batch_sizes[-1], "images": int(len(images)), "seconds": seconds,
                "images_per_s": len(images) / seconds if seconds else None}
    cm = confusion_matrix(labels, p.argmax(1), len(m.classes))
    row.quality = classification_report(cm, m.classes)
    row.quality["confusion"] = cm.tolist()
    row.latency, row.warnings = measure_latency(be.predict, images, config.warmup, config.min_iters, config.min_time)
    tp = [{"batch_size": 1, "calls": row.latency["n"], "images": row.latency["n"], "seconds": row.latency["total_s"],
           "images_per_s": row.latency["n"] / row.latency["total_s"] if row.latency["total_s"] else None,
           "from": "latency samples"}] if 1 in batch_sizes else []
    for b in (b for b in batch_sizes if b != 1):
        tp.append(measure_throughput(be.predict, images, b, config.min_time, config.min_calls))
    row.throughput = tp
    rss1 = current_rss_mb()
    row.rss_delta_mb = rss1 - rss0 if rss0 is not None and rss1 is not None else None
    del be
    row.peak_rss_mb = peak_rss_mb()
    return p


def _reference(model: str, rows: dict[tuple[str, str], Row]) -> str | None:
    for b in REFERENCE_ORDER:
        r = rows.get((model, b))
        if r is not None and r.status == "ok":
            return b
    return None


def _compare(manifests: list[Manifest], rows: dict[tuple[str, str], Row],
             probs: dict[tuple[str, str], np.ndarray]) -> list[str]:
    """Agreement, accuracy delta and speed-up of each row against its model's reference backend."""
    notes = []
    for m in manifests:
        ref = _reference(m.name, rows)
        if ref is None:
            if any(r.status == "ok" for (model, _), r in rows.items() if model == m.name):
                notes.append(f"{m.name}: no reference backend measured ({' or '.join(REFERENCE_ORDER)}), "
                             "so agreement, accuracy delta and speed-up are blank")
            continue
        ref_row, ref_p = rows[(m.name, ref)], probs[(m.name, ref)]
        ref_tp = ref_row.throughput[-1]["images_per_s"] if ref_row.throughput else None
        for (model, backend), row in rows.items():
            if model != m.name or row.status != "ok":
                continue
            row.agreement = {"reference": ref, **agreement(probs[(model, backend)], ref_p)}
            row.accuracy_delta_pp = 100 * (row.quality["accuracy"] - ref_row.quality["accuracy"])
            tp = row.throughput[-1]["images_per_s"] if row.throughput else None
            row.speedup = tp / ref_tp if tp and ref_tp else None
            ref_by = {t["batch_size"]: t["images_per_s"] for t in ref_row.throughput}
            row.speedup_by_batch = {str(t["batch_size"]): t["images_per_s"] / ref_by[t["batch_size"]]
                                    for t in row.throughput if t["images_per_s"] and ref_by.get(t["batch_size"])}
    return notes


def _global_warnings(env: dict[str, Any]) -> list[str]:
    out = []
    cores = env["cpu"].get("usable_cores") or 1
    loads = [x for x in (env.get("loadavg_start"), env.get("loadavg_end")) if x]
    if loads and max(l[0] for l in loads) > 0.5 * cores:
        out.append(f"CPU was busy (1-min load average up to {max(l[0] for l in loads):.1f} on {cores} usable cores): "
                   "other processes competed for it, so latency and throughput are pessimistic and noisy")
    return out


def _one_line(row: Row) -> str:
    if row.status != "ok":
        return f"{row.model}/{row.backend}: {row.status} ({row.reason})"
    tp = row.throughput[-1] if row.throughput else {}
    return (f"{row.model}/{row.backend}: accuracy {row.quality['accuracy']:.4f}, p50 {row.latency['p50_ms']:.3f} ms, "
            f"{tp.get('images_per_s') or 0:,.0f} img/s at batch {tp.get('batch_size')}"
            + "".join(f"; {k} {row.runtime[k]}" for k in ("precision", "mode") if row.runtime.get(k)))
