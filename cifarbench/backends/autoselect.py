"""`auto`: the fastest backend on this machine, measured once by a short probe and cached.

A fixed order cannot be right everywhere: onnx-int8 wins on an AVX2 CPU without VNNI,
tflite-int8 on a Zen 4 with AVX-512 VNNI. So the first run that needs a choice loads every
candidate, warms it up, and times them round-robin on the same random batch of the size the
command will send (classify's --batch-size, serve's --max-batch, bench's largest batch: OpenVINO's
throughput mode gains most at large batches, so a batch-64 probe misranked it at 256), ranking
by each candidate's best call (a burst of load on a shared machine slows a call, never speeds it).
The winner is cached under the cache dir, keyed by everything that can change the ranking: CPU
model, speed flags and usable cores, runtime versions, the candidates' artifact sha256, device,
threads and batch size. A changed key means a new probe. The CPU-flag heuristic is only the fallback when
probing is switched off (``CIFARBENCH_PROBE=0``) or no candidate could be loaded.
"""

from __future__ import annotations

import hashlib
import json
import os
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from cifarbench.atomic import atomic_write
from cifarbench.backends import bf16guard
from cifarbench.errors import CifarbenchError, first_line
from cifarbench.models.manifest import Manifest
from cifarbench.paths import cache_dir

CACHE_FILE = "backend-choice.json"
CACHE_SCHEMA = "cifarbench.backend-choice/1"
MAX_ENTRIES = 64
PROBE_BATCH = 256  # classify's default batch size; callers pass theirs
WARMUP_CALLS = 1  # full-batch calls per candidate before timing: the first one allocates and picks kernels
BUDGET_S = 2.0  # warm-up and timing stop here, whatever they have (only loading comes on top)
MIN_TIME_S = 0.3  # and runs at least this long (and MIN_CALLS calls per candidate) when it can
MIN_CALLS = 2
CONTENDER_CALLS = 6  # while two or more are close, time up to this many calls each (within the budget)
PRUNE_RATIO = 0.75  # a candidate whose best call is below this share of the leader's stops being timed
ENV_PROBE = "CIFARBENCH_PROBE"  # "0": never probe, use the CPU-flag fallback


def cache_path() -> Path:
    return cache_dir() / CACHE_FILE


def machine_key() -> dict[str, Any]:
    """The part of a cache key that describes this machine: an entry whose part differs is never used here."""
    from cifarbench.sysinfo import cpu_info, package_versions

    cpu = cpu_info()
    return {"cpu": cpu["model"], "flags": sorted(f for f, on in cpu["flags"].items() if on),
            "usable_cores": cpu["usable_cores"], "versions": package_versions()}


def cache_key(manifest: Manifest, candidates: Mapping[str, str], threads: int | None,
              batch: int = PROBE_BATCH) -> dict[str, Any]:
    """Everything that can change which candidate is fastest; its hash is the cache entry's id."""
    from cifarbench.backends import get_spec

    return {
        **machine_key(), "threads": threads, "batch": batch,
        "candidates": {n: {"device": d, "sha256": manifest.artifacts[get_spec(n).format].sha256}
                       for n, d in sorted(candidates.items())},
    }


def key_id(key: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def _read_cache(path: Path) -> dict[str, Any]:
    """The cache's entries; a missing, unreadable or foreign file is an empty cache (it is only a cache)."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(doc, dict) or doc.get("schema") != CACHE_SCHEMA or not isinstance(doc.get("entries"), dict):
        return {}
    return doc["entries"]


def lookup(key: Mapping[str, Any], path: Path | None = None) -> dict[str, Any] | None:
    entry = _read_cache(path or cache_path()).get(key_id(key))
    if isinstance(entry, dict) and entry.get("key") == key and entry.get("choice") in key["candidates"]:
        return entry
    return None


def store(entry: dict[str, Any], path: Path | None = None) -> str | None:
    """Add ``entry`` (atomic rewrite, newest MAX_ENTRIES kept); the reason when the cache is not writable."""
    path = path or cache_path()
    entries = _read_cache(path)
    entries[key_id(entry["key"])] = entry
    newest = sorted(entries.items(), key=lambda kv: str(kv[1].get("measured_at", "")))[-MAX_ENTRIES:]
    try:
        with atomic_write(path) as fh:
            json.dump({"schema": CACHE_SCHEMA, "entries": dict(newest)}, fh, indent=1, sort_keys=True)
    except OSError as exc:
        return f"not cached ({exc.strerror or exc})"
    return None


def cached_entries(path: Path | None = None) -> list[dict[str, Any]]:
    """Every cached choice, newest first (for `cifarbench info`)."""
    entries = [e for e in _read_cache(path or cache_path()).values() if isinstance(e, dict)]
    return sorted(entries, key=lambda e: str(e.get("measured_at", "")), reverse=True)


def cached_choice(manifest: Manifest, device: str = "cpu", threads: int | None = None,
                  batch: int = PROBE_BATCH) -> dict[str, Any]:
    """What ``auto`` would use for ``manifest`` now, without probing: the cache entry, or why there is none."""
    from cifarbench.backends import auto_candidates

    candidates = auto_candidates(manifest, device)
    if len(candidates) == 1:
        return {"choice": next(iter(candidates)), "how": "only candidate"}
    entry = lookup(cache_key(manifest, candidates, threads, batch))
    if entry is None:
        return {"choice": None, "candidates": list(candidates),
                "how": "not measured yet on this machine (or its key changed): the next classify/serve probes"}
    return {"choice": entry["choice"], "how": "measured", "measured_at": entry["measured_at"],
            "figures": entry["figures"], "probe_s": entry.get("probe_s"), "cache": str(cache_path())}


def _load_rank(name: str) -> int:
    """OpenVINO loads first: its CPU plugin ran 20-25 % slower in a process where onnxruntime had already
    started its threads (baseline-cnn int8, batch 256, Zen 3: 2,524 vs 3,230 img/s alone; 3,428 when loaded
    first, with onnx-int8 and tflite-int8 at their own alone speeds), and bench measures each row alone."""
    return 0 if name.startswith("openvino") else 1


@dataclass(frozen=True)
class ProbeLimits:
    """How long a probe may take: warm-up and timing stop at ``budget_s``; earlier once ``min_time_s`` have passed
    and the field is decided: a lone leader has ``min_calls`` timed calls, or the close contenders have
    ``contender_calls`` each. A candidate below ``prune_ratio`` of the leader's best call is retired, so
    the budget goes to the candidates that could still win."""

    budget_s: float = BUDGET_S
    min_time_s: float = MIN_TIME_S
    min_calls: int = MIN_CALLS
    warmup: int = WARMUP_CALLS
    contender_calls: int = CONTENDER_CALLS
    prune_ratio: float = PRUNE_RATIO


def probe(load: Callable[[str], Any], names: list[str], shape: tuple[int, int, int], batch: int = PROBE_BATCH,
          limits: ProbeLimits = ProbeLimits(),
          clock: Callable[[], float] = time.perf_counter) -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
    """Load and warm up each candidate, then time batches round-robin so a burst hits every one alike.

    A race: a candidate clearly behind the leader is retired after its second timed call, so the
    rest of the budget buys more calls of the close ones (on a 2-core Zen 3, tflite-int8 runs at ~0.6x
    of onnx-int8 and openvino-int8, which are within ~10 % of each other: that pair needs the calls).
    Returns figures per loaded candidate (images/s from the best batch call, which ranks them, and
    from the median one; batch-1 median ms; calls; retired) and the one-line reason for each that failed.
    """
    x = np.random.default_rng(0).integers(0, 256, (batch, *shape), dtype=np.uint8)
    loaded: dict[str, Any] = {}
    failed: dict[str, str] = {}
    for n in sorted(names, key=_load_rank):
        try:
            loaded[n] = load(n)
        except (CifarbenchError, RuntimeError, ValueError, OSError, ImportError) as exc:
            failed[n] = first_line(exc)
    t_start = clock()  # the budget covers warm-up and timing: what a first run pays beyond loading
    for n in list(loaded):
        try:
            loaded[n].predict(x[:1])
            for _ in range(max(1, limits.warmup)):  # the first calls allocate and pick kernels
                loaded[n].predict(x)
        except (CifarbenchError, RuntimeError, ValueError, OSError) as exc:
            failed[n] = first_line(exc)
            del loaded[n]
    batch_s: dict[str, list[float]] = {n: [] for n in loaded}
    one_s: dict[str, list[float]] = {n: [] for n in loaded}
    alive = list(loaded)
    while alive:
        for n in alive:
            t0 = clock()
            loaded[n].predict(x)
            t1 = clock()
            loaded[n].predict(x[:1])
            batch_s[n].append(t1 - t0)
            one_s[n].append(clock() - t1)
        elapsed = clock() - t_start
        lead = min(min(batch_s[n]) for n in alive)
        if min(len(batch_s[n]) for n in alive) >= 2:  # one cold call must not retire the real winner
            alive = [n for n in alive if lead >= limits.prune_ratio * min(batch_s[n])]  # the leader stays
        target = limits.min_calls if len(alive) == 1 else max(limits.min_calls, limits.contender_calls)
        decided = min(len(batch_s[n]) for n in alive) >= target and elapsed >= limits.min_time_s
        if decided or elapsed >= limits.budget_s:
            break
    figures = {n: {"images_per_s": batch / max(min(batch_s[n]), 1e-9),
                   "median_images_per_s": batch / max(statistics.median(batch_s[n]), 1e-9), "batch_size": batch,
                   "batch1_ms": 1000 * statistics.median(one_s[n]), "calls": len(batch_s[n]),
                   "retired": n not in alive} for n in loaded}
    return figures, failed


def heuristic(names: list[str], flags: Mapping[str, bool]) -> str:
    """Fallback without measurement: on VNNI CPUs the int8 runtimes measured fastest on a Zen 4 (issues #15, #16:
    openvino-int8 7,850 and tflite-int8 7,308 img/s at batch 256, onnx-int8 5,366), else the registry's order."""
    from cifarbench.backends import DEFAULT_ORDER

    vnni = any(flags.get(f) for f in ("avx512_vnni", "avx_vnni", "amx_int8"))
    order = (("openvino-int8", "tflite-int8") if vnni else ()) + DEFAULT_ORDER
    return next((n for n in order if n in names), names[0])


def choose(manifest: Manifest, candidates: Mapping[str, str], threads: int | None, allow_probe: bool = True,
           batch: int = PROBE_BATCH) -> Any:
    """A backends.Selection among ``candidates`` (name -> device): cached, measured now, or the fallback."""
    from cifarbench.backends import Selection, load_backend
    from cifarbench.sysinfo import cpu_info

    names = list(candidates)
    if not allow_probe or os.environ.get(ENV_PROBE, "1") == "0":
        n = heuristic(names, cpu_info()["flags"])
        return Selection(n, candidates[n], "fallback", f"{n}: CPU-flag fallback (probing switched off)")
    key = cache_key(manifest, candidates, threads, batch)
    hit = lookup(key)
    if hit:
        n = hit["choice"]
        return Selection(n, candidates[n], "cached", f"{n}: fastest in a probe on {hit['measured_at']} "
                         f"({_figures_text(hit['figures'])}; cached in {cache_path()})"
                         + _guard_text(hit.get("bf16_guard"), n), hit["figures"])
    h, w = manifest.input.size  # the model's own input size (non-square allowed)
    guard = None
    if bf16guard.BF16_BACKEND in names and len(names) > 1:  # the bf16 row competes only if it keeps accuracy
        guard = _bf16_guard(manifest, candidates, threads, (h, w))
        if not guard["ok"]:
            names.remove(bf16guard.BF16_BACKEND)
    t0 = time.perf_counter()
    figures, failed = probe(lambda n: _neighbourly(load_backend(n, manifest, candidates[n], threads)), names,
                            (h, w, 3), batch=batch)
    seconds = time.perf_counter() - t0
    if not figures:
        n = heuristic(names, cpu_info()["flags"])
        why = "; ".join(f"{k}: {v}" for k, v in failed.items())
        return Selection(n, candidates[n], "fallback", f"{n}: CPU-flag fallback (no candidate could be probed: {why})")
    n = max(figures, key=lambda k: figures[k]["images_per_s"])
    entry = {"key": key, "model": manifest.name, "choice": n, "figures": figures, "failed": failed,
             "probe_s": round(seconds, 3), "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    if guard is not None:
        entry["bf16_guard"] = guard
    not_cached = store(entry)
    note = (f"{n}: fastest in a {seconds:.1f} s probe at batch {batch} ({_figures_text(figures)})"
            + _guard_text(guard, n) + (f"; {not_cached}" if not_cached else ""))
    return Selection(n, candidates[n], "measured", note, figures)


def _bf16_guard(manifest: Manifest, candidates: Mapping[str, str], threads: int | None,
                size: tuple[int, int]) -> dict[str, Any]:
    """bf16guard.check on held-out images with the real backends; any failure leaves the bf16 row out."""
    from cifarbench.backends import load_backend, unavailable_reason

    available = [r for r in bf16guard.REFERENCES if unavailable_reason(r, manifest, "cpu") is None]
    try:
        return bf16guard.check(lambda n: load_backend(n, manifest, "cpu", threads), available,
                               bf16guard.held_out_images(size))
    except (CifarbenchError, RuntimeError, ValueError, OSError) as exc:
        return {"ok": False, "why": f"bf16 {bf16guard.BF16_BACKEND} not checked ({first_line(exc)})"}


def _guard_text(guard: Mapping[str, Any] | None, chosen: str) -> str:
    """Why the bf16 row was, or was not, among the candidates."""
    if not guard:
        return ""
    if guard.get("ok"):
        return f"; {guard['why']}" if chosen == bf16guard.BF16_BACKEND else ""
    return f"; {bf16guard.BF16_BACKEND} (bf16) left out: {guard['why']}"


def _neighbourly(backend: Any) -> Any:
    """The probe times candidates back to back in one process: a backend whose threads would hold the CPU after
    a call (onnxruntime's spin-wait) is swapped for one that does not, so it cannot slow the next candidate."""
    swap = getattr(backend, "without_spinning", None)
    return swap() if callable(swap) else backend


def _figures_text(figures: Mapping[str, Mapping[str, Any]]) -> str:
    ranked = sorted(figures.items(), key=lambda kv: -kv[1]["images_per_s"])
    return ", ".join(f"{n} {f['images_per_s']:,.0f} img/s" for n, f in ranked)
