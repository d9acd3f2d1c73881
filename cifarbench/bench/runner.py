"""Benchmark every (model, backend, threads): quality, agreement with a reference, latency, throughput, cost.

Every number is taken the same way for every runtime, through the one backend protocol,
so rows are comparable: the timed region is ``backend.predict`` on uint8 batches already
in memory; decoding and preprocessing images is timed on its own, never mixed in.
Rows are measured by cifarbench.bench.worker (in a process of their own with
``isolate``), with the loops of cifarbench.bench.scenarios, ``repeat`` times each; the data
comes from cifarbench.bench.data, and the figures rows get from each other (agreement,
speed-up, int8 flags) from cifarbench.bench.derive.

Over 300 lines on purpose: resolving the plan, the row loop and the skip/failure bookkeeping are one
sequence read top to bottom; the timing loops, data, derived figures and schema already live apart.
"""

from __future__ import annotations

import gc
import importlib
import os
import sys
import time
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Sequence

import numpy as np

from cifarbench import __version__, backends
from cifarbench.backends.options import RuntimeOptions
from cifarbench.backends.tta import check_mode as check_tta
from cifarbench.bench.data import BenchData, load_subset, measure_decode, synthetic
from cifarbench.bench.derive import (INT8_FLAG_PP, against_reference, busy_cpu_warnings, flag_parity, reference,
                                     spread_warnings)
from cifarbench.bench.repeats import combine as combine_repeats
from cifarbench.bench.row import Row
from cifarbench.bench.scenarios import SCENARIOS
from cifarbench.bench.worker import Job, measure, run_isolated
from cifarbench.data.images import DEFAULT_MAX_PIXELS, default_max_pixels
from cifarbench.data.transform import Transform
from cifarbench.errors import ModelError, UsageError, first_line
from cifarbench.events import Emit, Event, null_emit
from cifarbench.models.manifest import Manifest
from cifarbench.models.model_ref import emit_model_notes, resolve_model, shipped_models
from cifarbench.models.tfquiet import framework_logs
from cifarbench.sysinfo import environment

SCHEMA = "cifarbench.bench"
SCHEMA_VERSION = 2
DEFINITIONS = {
    "throughput": "offline scenario: images/s = images passed to backend.predict / summed wall time (perf_counter) "
    "of those calls; batches are uint8 arrays already decoded in memory, so decode, batching and loop overhead are "
    "excluded; each batch size also records the percentiles of its timed calls (latency: one call = one batch)",
    "latency": "single-stream scenario: wall time of one backend.predict call at batch 1, after warm-up calls; the "
    "first call after loading is reported on its own (first_call_ms) and never enters the statistics",
    "server": "server scenario: queries arrive as a Poisson process at a target rate; one inference thread takes "
    "whatever has queued, up to the maximum batch; a query's latency runs from its arrival to its batch's end. "
    "max_rate is the highest target rate whose p99 stayed within the bound (doubling, then bisection)",
    "decode": "load_image on encoded files of the data source (decode + EXIF transpose + resize to the model's input "
    "size, RGB), timed apart from inference",
    "synthetic": "--synthetic: uniform random uint8 pixels at each model's input size, no labels; speed, latency and "
    "memory are measured as usual, accuracy is not (shown as not measured)",
    "top5": "share of images whose true class is among the 5 highest scores (models with 5 classes or more)",
    "load": "wall time of load_backend: checksum verification plus runtime session/interpreter creation "
    "(isolated rows: a keras row's load includes importing TensorFlow; rows sharing a process time that import "
    "separately as tensorflow_import_s)",
    "peak_rss": "the measuring process's resident high-water mark (VmHWM) after the row; with isolation each "
    "row runs in a fresh process, so it is the row's own (Python, data subset and runtime included), otherwise "
    "cumulative in run order (keras last); rss_delta_mb is resident memory after minus before loading the backend",
    "speedup": "images/s at the largest batch size divided by the reference backend's for the same model and threads",
    "agreement": "top-1 agreement and max |probability difference| against the reference backend on the same images",
    "repeat": "with --repeat N each row is measured N times (the accuracy pass once); every figure of the row is the "
    "median across the repeats of that figure (table, results.json, report.md and bench compare show the same "
    "number), and repeat holds that median with the min-max and the values of throughput, p50 and p99 (also per "
    "batch size under by_batch)",
    "int8_loss_pp": f"reference accuracy minus the int8 row's, in percentage points (bench's own measurement); "
    f"above {INT8_FLAG_PP} pp the row is flagged, as it is when the manifest's parity check recorded such a loss",
    "flags": "what needs a look: an int8 loss above the bound (measured here or recorded by convert) and the "
    "parity warning convert recorded for the row's artifact (float16 rounding, int8 loss) or its failed check",
}


@dataclass
class BenchConfig:
    models: Sequence[str] = ()  # names or directories; empty: every shipped model
    backends: Sequence[str] | None = None  # None: every registered backend (--all); "auto": what select picks
    data: str = "bundled"
    limit: int | None = None
    batch_sizes: Sequence[int] = (1, 32, 256)
    threads: int | Sequence[int | None] | None = None  # a list: one row per value (the thread sweep)
    device: str = "cpu"
    warmup: int = 10
    min_time: float = 2.0
    min_iters: int = 200
    min_calls: int = 3  # per throughput batch size
    decode_sample: int = 500
    seed: int = 0
    command: str = ""
    scenarios: Sequence[str] = ("single-stream", "offline")
    repeat: int = 1
    isolate: bool = False
    server_rate: float | None = None
    p99_bound_ms: float | None = 10.0
    server_time: float = 2.0
    tta: str = "none"  # also measure test-time augmentation: accuracy and cost beside single view
    max_pixels: int | None = DEFAULT_MAX_PIXELS  # data images over it are left out (isolated rows too)
    resize: str | None = None  # the eval transform's overrides for this run; None: each manifest's own
    crop_pct: float | None = None
    interpolation: str | None = None
    runtime: RuntimeOptions = field(default_factory=RuntimeOptions)  # --ov-hint, --ort-opt-level...: every row
    profile_dir: str | None = None  # --profile: each row's per-op profile (an extra pass after the timed ones)
    synthetic: bool = False  # random pixels at each model's size, no labels: speed, latency, memory; no accuracy

    @property
    def synthetic_count(self) -> int:
        """Random images per model: one largest batch of distinct images, at least 64."""
        return max(64, *self.batch_sizes) if self.synthetic else 0

    def thread_list(self) -> list[int | None]:
        t = self.threads
        return [t] if t is None or isinstance(t, int) else list(dict.fromkeys(t)) or [None]

    def validate(self) -> None:
        if not self.batch_sizes or min(self.batch_sizes) < 1:
            raise UsageError("batch sizes must be positive integers")
        if self.repeat < 1:
            raise UsageError("--repeat must be >= 1")
        if any(t is not None and t < 1 for t in self.thread_list()):
            raise UsageError("--threads must be positive integers")
        check_tta(self.tta)
        Transform((1, 1), self.resize or "center-crop", self.crop_pct, self.interpolation or "lanczos")  # UsageError
        if self.synthetic and self.tta != "none":
            raise UsageError("--tta measures accuracy, which --synthetic data (no labels) cannot give")
        if self.max_pixels is not None and self.max_pixels < 1:
            raise UsageError("--max-pixels must be >= 1")
        bad = [s for s in self.scenarios if s not in SCENARIOS]
        if bad or not self.scenarios:
            raise UsageError(f"unknown scenario {', '.join(bad) or '(none)'}; choose from {', '.join(SCENARIOS)}")


MEASURED = {f.name for f in fields(Row)} - {"model", "backend", "threads", "status", "reason"}


@dataclass
class Plan:
    """What to measure, resolved once: manifests, and (model, backend, threads) jobs in run order."""

    manifests: list[Manifest]
    jobs: list[tuple[Manifest, str, int | None]]
    chosen: dict[str, backends.Selection] = field(default_factory=dict)  # model -> what `auto` picked
    refs: dict[str, str] = field(default_factory=dict)  # model -> what an isolated row resolves (a lone file: itself)


# --------------------------------------------------------------------------- the run


def _order(names: Sequence[str]) -> list[str]:
    """Registry order, keras last: it imports TensorFlow, which would inflate every later row's peak RSS."""
    known = [b for b in backends.BACKENDS if b in names]
    return [b for b in known if b != "keras"] + [b for b in known if b == "keras"]


def resolve_plan(config: BenchConfig) -> Plan:
    """Manifests and jobs; ``auto`` becomes the backend ``backends.select`` picks for each model."""
    config.validate()
    specs = list(config.models) or shipped_models()
    if not specs:
        raise ModelError("no shipped models found; pass --model NAME|DIR")
    manifests = [resolve_model(s) for s in dict.fromkeys(specs)]
    for m in manifests:  # --resize/--crop-pct/--interpolation: every row decodes this run's way
        m.input = m.input.with_transform(config.resize, config.crop_pct, config.interpolation)
    names = [m.name for m in manifests]
    if len(set(names)) != len(names):
        raise UsageError(f"two models share a name ({', '.join(names)}); their rows would collide")
    wanted = list(backends.BACKENDS) if config.backends is None else list(dict.fromkeys(config.backends))
    for b in wanted:
        if b != "auto":
            backends.get_spec(b)
    plan = Plan(manifests, [])
    for spec, m in zip(dict.fromkeys(specs), manifests):  # a lone artifact's folder may hold no (or another) manifest
        plan.refs[m.name] = os.path.abspath(spec) if os.path.isfile(spec) else str(m.directory)
    for m in manifests:
        chosen = list(wanted)
        if "auto" in chosen:
            sel = backends.select(m, "auto", config.device, config.thread_list()[0],
                                      batch_size=max(config.batch_sizes))
            plan.chosen[m.name] = sel
            chosen = [sel.name if b == "auto" else b for b in chosen]
        plan.jobs += [(m, b, t) for b in _order(chosen) for t in config.thread_list()]
    plan.jobs.sort(key=lambda j: (j[1] == "keras", 0))  # keras rows last, across models
    return plan


def _job(config: BenchConfig, m: Manifest, backend: str, threads: int | None, first: bool, ref: str | None = None) -> Job:
    return Job(model=ref or str(m.directory), backend=backend, device=config.device, threads=threads, data=config.data,
               limit=config.limit, seed=config.seed, batch_sizes=sorted(set(int(b) for b in config.batch_sizes)),
               scenarios=list(config.scenarios), warmup=config.warmup, min_time=config.min_time,
               min_iters=config.min_iters, min_calls=config.min_calls, quality=first, server_rate=config.server_rate,
               p99_bound_ms=config.p99_bound_ms, server_time=config.server_time, tta=config.tta,
               max_pixels=config.max_pixels, resize=config.resize, crop_pct=config.crop_pct,
               interpolation=config.interpolation,
               runtime_options=config.runtime.as_dict(),
               profile_dir=config.profile_dir if first else None, synthetic=config.synthetic_count,
               pin=_cpus(threads) if config.isolate else None)


def _cpus(threads: int | None) -> list[int] | None:
    """The first ``threads`` usable CPUs, so a 1-thread row cannot borrow a second core; None: no pinning."""
    if not threads or not hasattr(os, "sched_getaffinity"):
        return None
    usable = sorted(os.sched_getaffinity(0))
    return usable[:threads] if threads < len(usable) else None


def run_bench(config: BenchConfig, events: Emit | None = None, plan: Plan | None = None) -> dict[str, Any]:
    """Run the plan (resolved here unless given) and return the results document (schema: cifarbench.bench.report).

    ``events`` hears a ``status`` event for what is being measured and a ``row`` event for each finished
    (or skipped) row (``cifarbench.events``).
    """
    emit = events or null_emit
    plan = plan or resolve_plan(config)
    for m in plan.manifests:
        emit_model_notes(m, emit)
    batch_sizes = sorted(set(int(b) for b in config.batch_sizes))
    load_start = os.getloadavg() if hasattr(os, "getloadavg") else None
    data_cache: dict[tuple[Any, ...], BenchData] = {}
    started = time.time()
    rows: dict[tuple[str, str, int | None], Row] = {}
    probs: dict[tuple[str, str, int | None], np.ndarray] = {}
    tf_import_s: float | None = None
    for m, backend, threads in plan.jobs:
        key = (m.name, backend, threads)
        row = rows[key] = Row(model=m.name, backend=backend, threads=threads, isolated=config.isolate)
        label = f"{m.name}/{backend}" + (f"/{threads}t" if len(config.thread_list()) > 1 else "")
        reason = backends.unavailable_reason(backend, m, backends.resolve_device(backend, m, config.device))
        if reason:
            row.status, row.reason = "skipped", reason
            emit(Event("row", f"{label}: skipped ({reason})"))
            continue
        data_key = (m.input.size if config.synthetic else m.input.transform, *([] if config.synthetic else m.classes))
        if data_key not in data_cache:
            if config.synthetic:
                data_cache[data_key] = synthetic(m.input.size, config.synthetic_count, config.seed)
            else:
                with default_max_pixels(config.max_pixels):
                    data_cache[data_key] = load_subset(config.data, m.classes, config.limit, config.seed,
                                                      m.input.transform)
        data = data_cache[data_key]
        if backend == "keras" and not config.isolate and "tensorflow" not in sys.modules:
            emit(Event("status", "importing TensorFlow for the keras backend"))
            t0 = time.perf_counter()
            with framework_logs(verbose=os.environ.get("CIFARBENCH_VERBOSE_FRAMEWORKS") == "1"):  # absl's pre-init lines
                importlib.import_module("tensorflow")
            tf_import_s = time.perf_counter() - t0
        runs: list[dict[str, Any]] = []
        try:
            for i in range(config.repeat):
                emit(Event("status", f"{label}: measuring" + (f" (repeat {i + 1} of {config.repeat})" if config.repeat > 1 else "")))
                job = _job(config, m, backend, threads, first=i == 0, ref=plan.refs.get(m.name))
                out, p = run_isolated(job) if config.isolate else measure(job, m, data.images, data.labels)
                if p is not None:
                    probs[key] = p
                runs.append(out)
            _fill(row, runs, m)
        except Exception as exc:  # one broken artifact must not sink the other rows
            kind = getattr(exc, "kind", type(exc).__name__)
            row.status = "skipped" if kind == "BackendUnavailable" else "failed"
            line = first_line(exc)
            row.reason = line if row.status == "skipped" or config.isolate else f"{kind}: {line}"
        gc.collect()
        emit(Event("row", _one_line(row, label)))
    compare_notes = against_reference(plan.manifests, rows, probs)
    load_end = os.getloadavg() if hasattr(os, "getloadavg") else None
    env = environment()
    env.update(threads_requested=config.threads, device=config.device, command=config.command,
               loadavg_start=load_start, loadavg_end=load_end, nice=os.nice(0) if hasattr(os, "nice") else None,
               tensorflow_import_s=tf_import_s, isolated=config.isolate,
               transform={m.name: m.input.transform.describe() for m in plan.manifests})  # this run's, overrides in
    first = next(iter(data_cache.values()), None)
    left_out = [f"{name}: {why}" for name, why in first.skipped] if first else []
    ran = any(r.status == "ok" for r in rows.values())  # a busy CPU cannot have disturbed a run of skips
    warnings = (busy_cpu_warnings(env) if ran else []) + compare_notes + spread_warnings(rows) + (
        [f"{len(left_out)} data image(s) could not be used and were left out, e.g. {left_out[0]}"] if left_out else [])
    data_doc = {"source": "synthetic" if config.synthetic else config.data, "split": "test",
                "images": int(len(first.images)) if first else None, "subset": first.subset if first else None,
                "fingerprint": first.dataset.fingerprint if first and first.dataset else None,
                "load_s": first.load_s if first else None, "left_out": len(left_out), "left_out_examples": left_out[:5],
                "synthetic": config.synthetic,
                "sizes": sorted({"x".join(map(str, m.input.size)) for m in plan.manifests})}
    if config.synthetic:
        data_doc["decode"] = {"images": 0, "note": "not measured: synthetic pixels, nothing to decode"}
    else:
        with default_max_pixels(config.max_pixels):
            data_doc["decode"] = measure_decode(config.data, config.decode_sample if first else 0,
                                                plan.manifests[0].input.transform)
    cfg = asdict(config)
    cfg["batch_sizes"] = batch_sizes
    order = {b: i for i, b in enumerate(backends.BACKENDS)}
    ordered = sorted(rows.values(), key=lambda r: ([m.name for m in plan.manifests].index(r.model),
                                                    order.get(r.backend, 99), r.threads or 0))
    return {
        "schema": SCHEMA, "schema_version": SCHEMA_VERSION, "cifarbench_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "wall_s": time.time() - started, "command": config.command, "config": cfg, "definitions": DEFINITIONS,
        "environment": env, "data": data_doc,
        "models": {m.name: {"path": str(m.directory), "arch": m.arch, "params": m.params, "classes": list(m.classes),
                            "reference": reference(m.name, rows),
                            "transform": {"size": list(m.input.size), **m.input.transform.to_dict(),
                                          "text": m.input.transform.describe()},
                            "auto": ({"backend": plan.chosen[m.name].name, "how": plan.chosen[m.name].how,
                                      "note": plan.chosen[m.name].note} if m.name in plan.chosen else None)}
                   for m in plan.manifests},
        "results": [asdict(r) for r in ordered], "warnings": warnings,
    }


def _fill(row: Row, runs: list[dict[str, Any]], m: Manifest) -> None:
    """Row fields from the repeats (per-figure medians: cifarbench.bench.repeats); the accuracy pass from the first."""
    fields_, row.repeat = combine_repeats(runs)
    for k, v in {**runs[0], **fields_}.items():
        if k in MEASURED:
            setattr(row, k, v)
    for k in ("quality", "eval"):
        setattr(row, k, runs[0].get(k) or {})
    spec = backends.get_spec(row.backend)
    art = m.artifacts.get(spec.format)
    parity = (art.parity if art else None) or {}
    flag_parity(row, parity)
    if spec.int8:
        drop = parity.get("accuracy_drop_pp")
        row.manifest_int8_loss_pp = float(drop) if drop is not None else None


def _one_line(row: Row, label: str) -> str:
    if row.status != "ok":
        return f"{label}: {row.status} ({row.reason})"
    tp = row.throughput[-1] if row.throughput else {}
    parts = [f"accuracy {row.quality['accuracy']:.4f}"] if row.quality else ["accuracy not measured"]
    if (row.quality or {}).get("top5") is not None:
        parts.append(f"top-5 {row.quality['top5']:.4f}")
    if row.tta:
        parts.append(f"{row.tta['mode']} TTA {row.tta['accuracy']:.4f} at {row.tta['cost_x'] or 0:.1f}x the time")
    if row.latency:
        parts.append(f"p50 {row.latency['p50_ms']:.3f} ms")
    if tp:
        parts.append(f"{tp.get('images_per_s') or 0:,.0f} img/s at batch {tp.get('batch_size')}")
    if (row.server.get("search") or {}).get("max_rate"):
        parts.append(f"server {row.server['search']['max_rate']:,.0f} q/s at p99 <= {row.server['search']['p99_bound_ms']:g} ms")
    parts += [f"{k} {row.runtime[k]}" for k in ("precision", "mode") if row.runtime.get(k)]
    return f"{label}: " + ", ".join(parts)
