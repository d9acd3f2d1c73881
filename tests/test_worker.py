"""bench's worker on a fake backend and a fake clock: every speed figure recomputed from the calls it recorded."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from cifarbench import backends
from cifarbench.bench import scenarios, worker
from cifarbench.models.manifest import Manifest

OVERHEAD, PER_IMAGE = 0.004, 0.001  # fake seconds per call and per image: batch 1 costs 5 ms


class Clock:
    t = 0.0

    def __call__(self) -> float:
        return self.t


class Recording:
    """A backend whose call costs OVERHEAD + PER_IMAGE * len(x) fake seconds; every call is recorded."""

    def __init__(self, clock: Clock) -> None:
        self.clock, self.calls = clock, []

    def predict(self, x: np.ndarray) -> np.ndarray:
        self.calls.append(len(x))
        self.clock.t += OVERHEAD + PER_IMAGE * len(x)
        p = np.zeros((len(x), 10), np.float32)
        p[:, 3] = 1
        return p

    def describe(self) -> dict[str, Any]:
        return {"runtime": "fake"}


@pytest.fixture
def recorded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Recording, Manifest]:
    clock = Clock()
    be = Recording(clock)
    (tmp_path / "model.onnx").write_bytes(b"x" * 10)
    m = Manifest(name="m", arch="fake", directory=tmp_path)
    m.add_artifact("onnx", "model.onnx")
    monkeypatch.setattr(backends, "load_backend", lambda *a, **k: be)
    monkeypatch.setattr(worker, "measure_latency", functools.partial(scenarios.measure_latency, clock=clock))
    monkeypatch.setattr(worker, "measure_throughput", functools.partial(scenarios.measure_throughput, clock=clock))
    return be, m


def test_images_per_s_recomputed_from_the_recorded_calls(recorded: tuple[Recording, Manifest]) -> None:
    be, m = recorded
    images = np.zeros((20, 32, 32, 3), np.uint8)
    labels = np.array([3] * 15 + [0] * 5)
    job = worker.Job(model="m", backend="onnx", batch_sizes=[8, 1], warmup=2, min_iters=7, min_time=0.0,
                     min_calls=4)
    out, probs = worker.measure(job, m, images, labels)
    assert out["size_bytes"] == 10 and out["file"] == "model.onnx" and out["format"] == "onnx"
    # the calls, in order: first call (1), accuracy pass at the largest batch (8, 8, 4), latency warm-up (2 x 1)
    # and samples (7 x 1), then the offline pass at 8: 2 warm-up calls and 4 timed ones. Batch 1 is not re-run.
    assert be.calls == [1, 8, 8, 4, 1, 1] + [1] * 7 + [8] * 6
    tp = {t["batch_size"]: t for t in out["throughput"]}
    assert sorted(tp) == [1, 8]
    one = tp[1]  # batch-1 images/s: from the 7 latency samples, 5 ms each
    assert (one["calls"], one["images"], one["from"]) == (7, 7, "latency samples")
    assert one["seconds"] == pytest.approx(7 * (OVERHEAD + PER_IMAGE))
    assert one["images_per_s"] == pytest.approx(1 / (OVERHEAD + PER_IMAGE)) == pytest.approx(200.0)
    eight = tp[8]
    assert (eight["calls"], eight["images"]) == (4, 32)
    assert eight["images_per_s"] == pytest.approx(8 / (OVERHEAD + 8 * PER_IMAGE))  # 666.7, warm-up excluded
    assert out["latency"]["n"] == 7 and out["latency"]["p50_ms"] == pytest.approx(5.0)
    assert out["latency"]["total_s"] == pytest.approx(0.035)
    assert out["quality"]["accuracy"] == 0.75 and out["quality"]["confusion"][0][3] == 5  # hand-counted
    assert out["quality"]["confusion"][3][3] == 15 and sum(map(sum, out["quality"]["confusion"])) == 20
    assert out["eval"]["batch_size"] == 8 and out["eval"]["images"] == 20
    assert probs is not None and probs.shape == (20, 10) and (probs.argmax(1) == 3).all()


def test_offline_only_measures_batch_1_itself(recorded: tuple[Recording, Manifest]) -> None:
    be, m = recorded
    images = np.zeros((4, 32, 32, 3), np.uint8)
    job = worker.Job(model="m", backend="onnx", batch_sizes=[1, 2], scenarios=["offline"], warmup=0, min_time=0.0,
                     min_calls=3, quality=False)
    out, probs = worker.measure(job, m, images, np.zeros(4, int))
    assert probs is None and "latency" not in out and "quality" not in out
    tp = {t["batch_size"]: t for t in out["throughput"]}
    assert tp[1]["calls"] == 3 and tp[1]["images_per_s"] == pytest.approx(200.0) and "from" not in tp[1]
    assert tp[2]["images_per_s"] == pytest.approx(2 / (OVERHEAD + 2 * PER_IMAGE))
    assert be.calls == [1] + [1] * 5 + [2] * 5  # first call; 2 warm-up + 3 timed at each batch size


def test_tta_row_and_the_backend_it_loads(recorded: tuple[Recording, Manifest], monkeypatch: pytest.MonkeyPatch) -> None:
    be, m = recorded
    loads: list[tuple] = []
    monkeypatch.setattr(backends, "load_backend", lambda *a: loads.append(a) or be)
    images = np.zeros((8, 32, 32, 3), np.uint8)
    labels = np.array([3] * 6 + [1] * 2)
    job = worker.Job(model="m", backend="onnx", device="cpu", threads=2, batch_sizes=[4], scenarios=["single-stream"],
                     warmup=0, min_iters=2, min_time=0.0, tta="flip")
    out, _ = worker.measure(job, m, images, labels)
    assert loads == [("onnx", m, "cpu", 2)]
    tta = out["tta"]
    assert (tta["mode"], tta["views"], tta["accuracy"]) == ("flip", 2, 0.75)  # every view says class 3: 6 of 8
    assert tta["cost_x"] > 0 and tta["images_per_s"] > 0
    assert out["warnings"][0].startswith("p99 rests on only 2 latency samples")
    assert out["throughput"] == []  # batch 1 was not asked for, offline not run


def test_rss_figures_against_the_kernels_own_numbers() -> None:
    """current_rss_mb reads statm pages; VmRSS in /proc/self/status is the same memory in kB: an independent read."""
    import os
    import resource

    if not os.path.exists("/proc/self/status"):
        pytest.skip("needs /proc")
    status = {ln.split(":")[0]: ln.split()[1] for ln in open("/proc/self/status") if ln.startswith("Vm")}
    cur = worker.current_rss_mb()
    assert cur is not None and cur == pytest.approx(int(status["VmRSS"]) / 1024, rel=0.1)
    assert worker.peak_rss_mb() == pytest.approx(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, rel=0.1)
    assert worker.peak_rss_mb() >= cur * 0.99


def test_pin_to_usable_cpus_and_refusals() -> None:
    import os

    assert worker._pin(None) is None and worker._pin([]) is None
    if not hasattr(os, "sched_setaffinity"):
        pytest.skip("no CPU affinity on this OS")
    before = os.sched_getaffinity(0)
    try:
        first = min(before)
        assert worker._pin([first]) == [first] and os.sched_getaffinity(0) == {first}
        assert worker._pin([10**6]) is None  # a CPU that does not exist: not pinned, no error
    finally:
        os.sched_setaffinity(0, before)
