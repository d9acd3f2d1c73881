"""How bench drives a backend: the timing loops of the offline, single-stream and server scenarios.

Everything here takes a ``predict`` callable and a clock, so the loops are tested on a fake
clock and used unchanged on every runtime. Names follow MLPerf's loadgen: *single-stream*
(one image at a time, latency), *offline* (all images at once, throughput per batch size),
*server* (Poisson arrivals at a target rate, served by one inference thread that batches
whatever has queued, up to a maximum batch).
"""

from __future__ import annotations

import time
from typing import Any, Callable, Iterator, Protocol

import numpy as np

from cifarbench.bench.metrics import latency_stats
from cifarbench.errors import ModelError

SCENARIOS = ("single-stream", "offline", "server")
P99_MIN_SAMPLES = 100
Predict = Callable[[np.ndarray], Any]
Clock = Callable[[], float]


class TimeSource(Protocol):
    """What the server scenario waits on: a fake one in tests, the real clock otherwise."""

    def clock(self) -> float: ...

    def sleep(self, seconds: float) -> None: ...


class _RealTime:
    clock = staticmethod(time.perf_counter)
    sleep = staticmethod(time.sleep)


REAL_TIME: TimeSource = _RealTime()


def measure_latency(predict: Predict, images: np.ndarray, warmup: int, min_iters: int, min_time: float,
                    clock: Clock = time.perf_counter) -> tuple[dict[str, Any], list[str]]:
    """Single-stream: batch-1 calls until both ``min_iters`` calls and ``min_time`` seconds are reached."""
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


def batches(images: np.ndarray, batch_size: int, start: int = 0) -> Iterator[np.ndarray]:
    """Endless batches of exactly ``batch_size`` images, wrapping around the data."""
    n, pos = len(images), start
    while True:
        if pos + batch_size <= n:
            yield images[pos: pos + batch_size]
        else:
            yield images[np.arange(pos, pos + batch_size) % n]
        pos = (pos + batch_size) % n


def measure_throughput(predict: Predict, images: np.ndarray, batch_size: int, min_time: float, min_calls: int = 3,
                       warmup: int = 2, clock: Clock = time.perf_counter) -> dict[str, Any]:
    """Offline: images / summed call time at one batch size; warm-up calls (resizes, retraces) excluded.

    ``latency`` holds the percentiles of the timed calls themselves (one call = one batch), so every batch
    size has its tail latency beside its throughput.
    """
    gen = batches(images, batch_size)
    for _ in range(warmup):
        predict(next(gen))
    samples: list[float] = []
    total = 0.0
    while len(samples) < max(1, min_calls) or total < min_time:
        x = next(gen)
        t0 = clock()
        predict(x)
        dt = clock() - t0
        samples.append(dt)
        total += dt
    calls = len(samples)
    return {"batch_size": batch_size, "calls": calls, "images": calls * batch_size, "seconds": total,
            "images_per_s": calls * batch_size / total if total > 0 else None, "latency": latency_stats(samples)}


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


# --------------------------------------------------------------------------- server


def run_server(predict: Predict, images: np.ndarray, rate: float, duration: float, max_batch: int, seed: int = 0,
               timing: TimeSource = REAL_TIME) -> dict[str, Any]:
    """Poisson arrivals at ``rate``/s for ``duration`` s, one inference thread batching what has queued.

    Each query's latency is completion time minus its scheduled arrival, so queueing counts:
    a backend that cannot keep up sees its latency grow without bound, as a real server would.
    A trial that falls far behind (past twice its duration plus a second) stops there; the
    queries left are counted as ``dropped``, and such a trial cannot pass a latency bound.
    """
    if rate <= 0 or duration <= 0:
        raise ValueError("rate and duration must be positive")
    rng = np.random.default_rng(seed)
    count = max(1, int(rng.poisson(rate * duration)))
    arrivals = np.cumsum(rng.exponential(1.0 / rate, count))
    lat: list[float] = []
    sizes: list[int] = []
    start = timing.clock()
    i, n = 0, len(images)
    deadline = 2 * duration + 1.0
    while i < count and timing.clock() - start < deadline:
        now = timing.clock() - start
        if arrivals[i] > now:
            timing.sleep(arrivals[i] - now)
            now = timing.clock() - start
        j = min(count, i + max_batch, int(np.searchsorted(arrivals, now, side="right")))
        j = max(j, i + 1)
        idx = np.arange(i, j) % n
        predict(images[idx])
        done = timing.clock() - start
        lat.extend(done - arrivals[i:j])
        sizes.append(j - i)
        i = j
    span = (timing.clock() - start) or 1e-9
    stats = latency_stats(lat)
    return {"target_rate": rate, "queries": count, "served": i, "dropped": count - i,
            "achieved_rate": i / max(span, float(arrivals[i - 1])),
            "p50_ms": stats["p50_ms"], "p90_ms": stats["p90_ms"], "p99_ms": stats["p99_ms"],
            "mean_batch": float(np.mean(sizes)), "max_batch": max_batch, "seconds": span}


def find_max_rate(predict: Predict, images: np.ndarray, p99_bound_ms: float, start_rate: float, duration: float,
                  max_batch: int, steps: int = 6, timing: TimeSource = REAL_TIME) -> dict[str, Any]:
    """The highest Poisson rate whose p99 stays under the bound: double until it fails, then bisect.

    ``start_rate`` should be a guess of the sustainable rate (e.g. the offline throughput).
    """
    trials: list[dict[str, Any]] = []

    def ok(rate: float) -> bool:
        r = run_server(predict, images, rate, duration, max_batch, seed=len(trials), timing=timing)
        r["passed"] = r["p99_ms"] <= p99_bound_ms and not r["dropped"]
        trials.append(r)
        return bool(r["passed"])

    lo, hi = 0.0, max(start_rate, 1.0)
    while ok(hi) and len(trials) < steps:  # the guess holds: keep doubling
        lo, hi = hi, hi * 2
    if lo == 0.0:
        hi_fail = hi
        lo_try = hi / 8
        while len(trials) < steps and not ok(lo_try):
            hi_fail, lo_try = lo_try, lo_try / 8
        lo, hi = (lo_try, hi_fail) if trials[-1]["passed"] else (0.0, lo_try)
    while len(trials) < steps and lo > 0 and hi / lo > 1.1:
        mid = (lo * hi) ** 0.5
        if ok(mid):
            lo = mid
        else:
            hi = mid
    best = max((t for t in trials if t["passed"]), key=lambda t: t["target_rate"], default=None)
    return {"p99_bound_ms": p99_bound_ms, "max_rate": best["target_rate"] if best else None,
            "at_max": best, "trials": trials}
