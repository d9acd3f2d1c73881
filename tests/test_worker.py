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
        first = max(before)  # not CPU 0: on some hosts PID 1 runs on CPU 0 alone, like a process pinned there
        assert worker._pin([first]) == [first] and os.sched_getaffinity(0) == {first}
        assert worker._pin([10**6]) is None  # a CPU that does not exist: not pinned, no error
    finally:
        os.sched_setaffinity(0, before)


# --------------------------------------------------------------------------- row fields on the fake clock


def test_load_first_call_eval_and_rss_fields_from_the_fake_clock(recorded: tuple[Recording, Manifest],
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Every timed field recomputed from the fake clock: load 0.25 s, first call 5 ms, eval 20 images in 3 calls."""
    import types

    be, m = recorded
    clock = be.clock
    fake_time = types.SimpleNamespace(perf_counter=clock)
    monkeypatch.setattr(worker, "time", fake_time)
    monkeypatch.setattr(scenarios, "time", fake_time)

    def slow_load(*a: Any, **k: Any) -> Recording:
        clock.t += 0.25
        return be

    monkeypatch.setattr(backends, "load_backend", slow_load)
    rss = iter([100.0, 130.5])
    monkeypatch.setattr(worker, "current_rss_mb", lambda: next(rss))
    monkeypatch.setattr(worker, "peak_rss_mb", lambda: 321.0)
    clock.t = 1000.0  # an absolute clock far from 0: a sum instead of a difference shows
    images = np.zeros((20, 32, 32, 3), np.uint8)
    job = worker.Job(model="m", backend="onnx", batch_sizes=[8], scenarios=["single-stream"], warmup=0, min_iters=3,
                     min_time=0.0)
    out, _ = worker.measure(job, m, images, np.full(20, 3))
    assert out["load_s"] == pytest.approx(0.25)
    assert out["first_call_ms"] == pytest.approx(1000 * (OVERHEAD + PER_IMAGE))
    assert out["runtime"] == {"runtime": "fake", "tuning": "defaults"}
    eval_s = 2 * (OVERHEAD + 8 * PER_IMAGE) + (OVERHEAD + 4 * PER_IMAGE)  # batches 8, 8, 4
    assert out["eval"] == {"batch_size": 8, "images": 20, "seconds": pytest.approx(eval_s),
                           "images_per_s": pytest.approx(20 / eval_s)}
    assert out["rss_delta_mb"] == pytest.approx(30.5) and out["peak_rss_mb"] == 321.0
    assert len(out["warnings"]) == 1 and out["warnings"][0].startswith("p99 rests on only 3 latency samples")
    assert "server" not in out and out["throughput"] == []


def test_batch_1_row_keeps_the_latency_figures_without_total(recorded: tuple[Recording, Manifest]) -> None:
    be, m = recorded
    job = worker.Job(model="m", backend="onnx", batch_sizes=[1], scenarios=["single-stream"], warmup=0, min_iters=4,
                     min_time=0.0, quality=False)
    out, _ = worker.measure(job, m, np.zeros((4, 32, 32, 3), np.uint8), np.zeros(4, int))
    (one,) = out["throughput"]
    lat = out["latency"]
    assert one["latency"] == {k: v for k, v in lat.items() if k != "total_s"} and "total_s" not in one["latency"]
    assert one["latency"]["n"] == 4 and one["latency"]["p50_ms"] == pytest.approx(5.0)


def test_rss_delta_is_none_when_either_reading_is_missing(recorded: tuple[Recording, Manifest],
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    be, m = recorded
    job = worker.Job(model="m", backend="onnx", batch_sizes=[1], scenarios=[], quality=False)
    for readings in ([None, 50.0], [50.0, None], [None, None]):
        it = iter(readings)
        monkeypatch.setattr(worker, "current_rss_mb", lambda: next(it))
        out, _ = worker.measure(job, m, np.zeros((2, 32, 32, 3), np.uint8), np.zeros(2, int))
        assert out["rss_delta_mb"] is None, readings
        assert out["warnings"] == [] and out["throughput"] == [] and "latency" not in out


def test_server_scenario_row_passes_the_job_and_the_best_throughput(recorded: tuple[Recording, Manifest],
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    be, m = recorded
    calls: list[tuple] = []
    monkeypatch.setattr(worker, "run_server", lambda *a: calls.append(("at", *a)) or {"rate": a[2]})
    monkeypatch.setattr(worker, "find_max_rate", lambda *a: calls.append(("search", *a)) or {"best": a[3]})
    images = np.zeros((16, 32, 32, 3), np.uint8)
    job = worker.Job(model="m", backend="onnx", batch_sizes=[1, 4], scenarios=["offline", "server"], warmup=0,
                     min_time=0.0, min_calls=3, quality=False, server_rate=50.0, p99_bound_ms=20.0, server_time=0.5)
    out, _ = worker.measure(job, m, images, np.zeros(16, int))
    best = 4 / (OVERHEAD + 4 * PER_IMAGE)  # batch 4's images/s beats batch 1's 200
    assert out["server"] == {"max_batch": 4, "seconds_per_trial": 0.5, "at_rate": {"rate": 50.0},
                             "search": {"best": pytest.approx(best / 2)}}
    (at, search) = calls
    assert at[0] == "at" and at[1] == be.predict and at[2] is images and at[3:] == (50.0, 0.5, 4)
    assert search[0] == "search" and search[1] == be.predict and search[2] is images
    assert search[3:] == (20.0, pytest.approx(best / 2), 0.5, 4)


@pytest.mark.parametrize("tp, guess", [([], 100.0), ([{"images_per_s": None}], 100.0),
                                       ([{"images_per_s": None}, {"images_per_s": 30.0}], 30.0),
                                       ([{"images_per_s": 0}], 100.0)])
def test_server_search_starts_at_half_the_best_rate_or_at_50(monkeypatch: pytest.MonkeyPatch, tp: list,
                                                             guess: float) -> None:
    seen: list[tuple] = []
    monkeypatch.setattr(worker, "run_server", lambda *a: pytest.fail("no rate asked"))
    monkeypatch.setattr(worker, "find_max_rate", lambda *a: seen.append(a) or "s")
    job = worker.Job(model="m", backend="x", batch_sizes=[2, 16], server_max_batch=None, server_rate=None)
    res = worker._server(job, len, np.zeros(1), tp)
    assert res == {"max_batch": 16, "seconds_per_trial": 2.0, "search": "s"}
    assert seen[0][2:] == (10.0, guess / 2, 2.0, 16)


def test_server_without_rate_or_bound_runs_nothing_and_max_batch_is_the_jobs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(worker, "run_server", lambda *a: pytest.fail("no rate asked"))
    monkeypatch.setattr(worker, "find_max_rate", lambda *a: pytest.fail("no bound asked"))
    job = worker.Job(model="m", backend="x", batch_sizes=[2, 16], server_max_batch=3, server_rate=0.0,
                     p99_bound_ms=None, server_time=1.5)
    assert worker._server(job, len, np.zeros(1), []) == {"max_batch": 3, "seconds_per_trial": 1.5}


def test_tta_figures_recomputed(monkeypatch: pytest.MonkeyPatch) -> None:
    from cifarbench.backends import tta as tta_mod

    modes: list[str] = []

    def fake_tta(predict: Any, batch: np.ndarray, mode: str) -> np.ndarray:
        modes.append(mode)
        return predict(batch)

    monkeypatch.setattr(tta_mod, "predict_tta", fake_tta)
    seconds = iter([0.0, 0.5])  # one batch: 0.5 s
    monkeypatch.setattr(scenarios, "time", __import__("types").SimpleNamespace(perf_counter=lambda: next(seconds)))
    probs = np.zeros((4, 3), np.float32)
    probs[[0, 1, 2, 3], [2, 2, 0, 1]] = 1
    res = worker._tta(lambda b: probs[: len(b)], np.zeros((4, 1)), np.array([2, 0, 0, 1]), "flip", 4, 3, 0.25)
    assert modes == ["flip"]
    assert res == {"mode": "flip", "views": 2, "accuracy": 0.75, "images_per_s": 8.0, "cost_x": 2.0}


def test_tta_zero_seconds_gives_no_rates(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(scenarios, "time", __import__("types").SimpleNamespace(perf_counter=lambda: 7.0))
    res = worker._tta(lambda b: np.ones((len(b), 2)), np.zeros((2, 4, 4, 3), np.uint8), np.zeros(2, int), "flip", 2, 2,
                      0.0)
    assert res["images_per_s"] is None and res["cost_x"] is None


# --------------------------------------------------------------------------- peak RSS from /proc or getrusage


def test_peak_rss_reads_vmhwm(monkeypatch: pytest.MonkeyPatch) -> None:
    import io

    opened: list[tuple] = []

    def fake_open(path: str, *a: Any, **k: Any) -> io.StringIO:
        opened.append((path, a, k))
        return io.StringIO("Name:\tx\nVmPeak:\t  9999 kB\nVmHWM:\t    3072 kB\nVmRSS:\t 100 kB\n")

    monkeypatch.setattr(worker, "open", fake_open, raising=False)
    assert worker.peak_rss_mb() == 3.0
    assert opened == [("/proc/self/status", (), {"encoding": "ascii"})]


@pytest.mark.parametrize("content", [None, "Name:\tx\n", "VmHWM:\n", "VmHWM:\tlots kB\n"])
@pytest.mark.parametrize("platform, maxrss, mb", [("linux", 2048 * 3, 6.0), ("darwin", 5 * 2**20, 5.0)])
def test_peak_rss_falls_back_to_getrusage(monkeypatch: pytest.MonkeyPatch, content: str | None, platform: str,
                                          maxrss: int, mb: float) -> None:
    """No /proc, no VmHWM line, or an unreadable one: ru_maxrss, in KiB on Linux and bytes on macOS."""
    import io
    import types

    def fake_open(path: str, *a: Any, **k: Any) -> io.StringIO:
        if content is None:
            raise FileNotFoundError(path)
        return io.StringIO(content)

    monkeypatch.setattr(worker, "open", fake_open, raising=False)
    who: list[int] = []
    monkeypatch.setattr(worker.resource, "getrusage", lambda w: who.append(w) or types.SimpleNamespace(ru_maxrss=maxrss))
    monkeypatch.setattr(worker.sys, "platform", platform)
    assert worker.peak_rss_mb() == mb
    assert who == [worker.resource.RUSAGE_SELF]


def test_current_rss_reads_statm_pages(monkeypatch: pytest.MonkeyPatch) -> None:
    import io
    import os

    opened: list[tuple] = []
    monkeypatch.setattr(worker, "open", lambda p, *a, **k: opened.append((p, a, k)) or io.StringIO("900 256 10 1 0 5 0\n"),
                        raising=False)
    assert worker.current_rss_mb() == 256 * os.sysconf("SC_PAGE_SIZE") / 2**20
    assert opened == [("/proc/self/statm", (), {"encoding": "ascii"})]
    monkeypatch.setattr(worker, "open", lambda *a, **k: io.StringIO("900\n"), raising=False)
    assert worker.current_rss_mb() is None


# --------------------------------------------------------------------------- the isolation protocol, in-process


@pytest.fixture
def in_process(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> dict[str, Any]:
    """run_isolated's child replaced by _main run in this process on the same stdin/stdout; measure faked."""
    import io
    import subprocess
    import sys
    import types

    from cifarbench.bench import data as bench_data
    from cifarbench.data import images as images_mod
    from cifarbench.models import model_ref

    state: dict[str, Any] = {"runs": [], "subset": [], "measured": []}
    m = Manifest(name="m", arch="fake", directory=tmp_path, classes=["a", "b", "c"])

    def fake_resolve(spec: str) -> Manifest:
        state["model"] = spec
        return m

    def fake_subset(source: str, classes: Any, limit: Any, seed: int, transform: Any) -> Any:
        state["subset"].append((source, list(classes), limit, seed, transform, images_mod._default_max_pixels))
        return types.SimpleNamespace(images=np.zeros((3, 2, 2, 3), np.uint8), labels=np.array([0, 1, 2]))

    def fake_measure(job: Any, manifest: Manifest, images: np.ndarray, labels: np.ndarray) -> tuple:
        state["measured"].append((job, manifest, images.shape, None if labels is None else labels.tolist()))
        if "raise" in state:
            raise state["raise"]
        return {"x": 1.5, **state.get("extra", {})}, state.get("probs")

    def fake_run(cmd: list[str], **kw: Any) -> Any:
        state["runs"].append((cmd, kw))
        state["probs_path"] = Path(__import__("json").loads(kw["input"])["probs"])
        if "stdout" in state:
            return types.SimpleNamespace(stdout=state["stdout"], stderr=state.get("stderr", ""),
                                         returncode=state.get("rc", 1))
        out = io.StringIO()
        monkeypatch.setattr(sys, "stdin", io.StringIO(kw["input"]))
        monkeypatch.setattr(sys, "stdout", out)
        rc = worker._main()
        return types.SimpleNamespace(stdout="some runtime chatter\n" + out.getvalue(), stderr="", returncode=rc)

    monkeypatch.setattr(model_ref, "resolve_model", fake_resolve)
    monkeypatch.setattr(bench_data, "load_subset", fake_subset)
    monkeypatch.setattr(worker, "measure", fake_measure)
    monkeypatch.setattr(worker.subprocess, "run", fake_run)
    monkeypatch.setattr(worker, "_pin", lambda cpus: state.setdefault("pinned", []).append(cpus) or [0])
    state["manifest"] = m
    monkeypatch.setenv("PYTHONUNBUFFERED", "0")
    assert subprocess.run is fake_run  # the worker calls subprocess.run through the module
    return state


def test_isolated_row_crosses_the_process_boundary(in_process: dict[str, Any]) -> None:
    import sys

    in_process["probs"] = np.arange(6, dtype=np.float32).reshape(3, 2)
    in_process["extra"] = {"where": Path("/a/b")}  # not JSON: sent as its str
    job = worker.Job(model="some/dir", backend="onnx", data="cifar10", limit=3, seed=7, max_pixels=12345,
                     resize="squash", crop_pct=0.5, interpolation="bicubic", pin=[0], batch_sizes=[2])
    row, probs = worker.run_isolated(job, timeout=42.0)
    assert row == {"x": 1.5, "where": "/a/b", "pinned_cpus": [0]}
    p = in_process["probs_path"]
    assert p.name == "probs.npy" and p.parent.name.startswith("cifarbench-row-") and not p.parent.exists()
    assert probs is not None and probs.tolist() == in_process["probs"].tolist()
    (cmd, kw), = in_process["runs"]
    assert cmd == [sys.executable, "-m", "cifarbench.bench.worker"]
    assert kw["timeout"] == 42.0 and kw["capture_output"] is True and kw["text"] is True
    assert kw["env"]["PYTHONUNBUFFERED"] == "1" and kw["env"]["PATH"] == __import__("os").environ["PATH"]
    (sent_job, manifest, shape, labels), = in_process["measured"]
    assert sent_job == job and manifest is in_process["manifest"] and shape == (3, 2, 2, 3) and labels == [0, 1, 2]
    assert in_process["model"] == "some/dir" and in_process["pinned"] == [[0]]
    (source, classes, limit, seed, transform, max_pixels), = in_process["subset"]
    assert (source, classes, limit, seed, max_pixels) == ("cifar10", ["a", "b", "c"], 3, 7, 12345)
    assert (transform.resize, transform.crop_pct, transform.interpolation) == ("squash", 0.5, "bicubic")
    assert (manifest.input.resize, manifest.input.crop_pct, manifest.input.interpolation) == ("squash", 0.5, "bicubic")
    from cifarbench.data import images as images_mod

    assert images_mod._default_max_pixels != 12345  # restored after the row


def test_isolated_row_without_probabilities(in_process: dict[str, Any]) -> None:
    row, probs = worker.run_isolated(worker.Job(model="m", backend="onnx"))
    assert probs is None and row["x"] == 1.5 and in_process["runs"][0][1]["timeout"] is None


def test_isolated_error_keeps_its_first_line_and_kind(in_process: dict[str, Any]) -> None:
    from cifarbench.errors import BackendUnavailable, CifarbenchError

    in_process["raise"] = BackendUnavailable("backend onnx unavailable: gone\nsecond line")
    with pytest.raises(CifarbenchError) as err:
        worker.run_isolated(worker.Job(model="m", backend="onnx"))
    assert str(err.value) == "backend onnx unavailable: gone" and err.value.kind == "BackendUnavailable"
    assert type(err.value) is CifarbenchError


@pytest.mark.parametrize("stdout, stderr, rc, message", [
    ("", "Traceback\nMemoryError\n", -9, "the isolated row process died: MemoryError"),
    ("", "", -9, "the isolated row process died: exit status -9"),
    ("{\"row\": 1}\nnot json\n", "boom\n", 1, "the isolated row process died: boom"),
    ("[1, 2]\n", "", 3, "the isolated row process died: exit status 3"),
    ("\n  \n", "  \n", 2, "the isolated row process died: exit status 2"),
    ('x\n{"error": "bad thing"}\n', "", 0, "bad thing"),
])
def test_isolated_child_that_dies_is_one_error_line(in_process: dict[str, Any], stdout: str, stderr: str, rc: int,
                                                    message: str) -> None:
    from cifarbench.errors import CifarbenchError

    in_process.update(stdout=stdout, stderr=stderr, rc=rc)
    with pytest.raises(CifarbenchError) as err:
        worker.run_isolated(worker.Job(model="m", backend="onnx"))
    assert str(err.value) == message
    assert getattr(err.value, "kind", "") == ""  # an answer without a kind: the empty one


def test_main_answers_on_the_last_line_after_a_blank_one(in_process: dict[str, Any], monkeypatch: pytest.MonkeyPatch,
                                                         tmp_path: Path) -> None:
    import io
    import json
    import sys
    from dataclasses import asdict

    out = io.StringIO()
    job = worker.Job(model="m", backend="onnx")
    monkeypatch.setattr(sys, "stdin", io.StringIO(json.dumps({"job": asdict(job), "probs": str(tmp_path / "p.npy")})))
    monkeypatch.setattr(sys, "stdout", out)
    in_process["probs"] = np.ones((3, 2), np.float32)
    assert worker._main() == 0
    text = out.getvalue()
    assert text.startswith("\n") and text.endswith("\n") and json.loads(text.splitlines()[-1]) == {
        "row": {"x": 1.5, "pinned_cpus": [0]}}
    assert np.load(tmp_path / "p.npy").tolist() == [[1.0, 1.0]] * 3


def test_a_clock_that_does_not_move_gives_no_rates(recorded: tuple[Recording, Manifest],
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Zero seconds measured (a coarse clock): images/s is None, never a division by zero."""
    import types

    be, m = recorded
    be.clock = Clock()  # predict advances its own clock; the one measure reads stands still
    still = types.SimpleNamespace(perf_counter=lambda: 5.0)
    monkeypatch.setattr(worker, "time", still)
    monkeypatch.setattr(scenarios, "time", still)
    monkeypatch.setattr(worker, "measure_latency", functools.partial(scenarios.measure_latency, clock=still.perf_counter))
    job = worker.Job(model="m", backend="onnx", batch_sizes=[1, 2], scenarios=["single-stream"], warmup=0,
                     min_iters=2, min_time=0.0)
    out, _ = worker.measure(job, m, np.zeros((2, 32, 32, 3), np.uint8), np.zeros(2, int))
    assert out["eval"]["seconds"] == 0 and out["eval"]["images_per_s"] is None
    assert out["latency"]["total_s"] == 0 and out["throughput"][0]["images_per_s"] is None
    assert out["load_s"] == 0 and out["first_call_ms"] == 0


def test_runtime_options_reach_the_backend_and_the_row(recorded: tuple[Recording, Manifest],
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from cifarbench.backends.options import RuntimeOptions

    be, m = recorded
    loads: list[tuple] = []
    monkeypatch.setattr(backends, "load_backend", lambda *a, **k: loads.append((a, k)) or be)
    monkeypatch.setattr(be, "describe", lambda: {"runtime": "openvino", "threads": 2})
    job = worker.Job(model="m", backend="onnx", threads=3, batch_sizes=[1], scenarios=[], quality=False,
                     runtime_options={"ov_hint": "throughput"})
    out, _ = worker.measure(job, m, np.zeros((1, 32, 32, 3), np.uint8), np.zeros(1, int))
    assert loads == [(("onnx", m, "cpu", 3), {"options": RuntimeOptions(ov_hint="throughput")})]
    assert out["runtime"] == {"runtime": "openvino", "threads": 2, "tuning": {"ov_hint": "throughput"}}
    monkeypatch.setattr(be, "describe", lambda: {"threads": 2})  # no runtime named: no field applies
    out, _ = worker.measure(job, m, np.zeros((1, 32, 32, 3), np.uint8), np.zeros(1, int))
    assert out["runtime"]["tuning"] == "defaults"


class Profiled(Recording):
    def profile(self) -> dict[str, Any]:
        return {"runtime": "fake", "file": "/p/x.json", "unavailable": "no op times for 2 ops",
                "ops": [{"op": i} for i in range(30)]}


@pytest.mark.parametrize("hook", [True, False])
def test_profile_pass_after_the_timed_figures(recorded: tuple[Recording, Manifest], monkeypatch: pytest.MonkeyPatch,
                                              tmp_path: Path, hook: bool) -> None:
    from cifarbench.backends import profiling
    from cifarbench.backends.options import RuntimeOptions

    be, m = recorded
    prof = (Profiled if hook else Recording)(be.clock)
    loads: list[tuple] = []

    def load(*a: Any, **k: Any) -> Recording:
        loads.append((a, k))
        return be if len(loads) == 1 else prof

    monkeypatch.setattr(backends, "load_backend", load)
    monkeypatch.setattr(profiling, "top", lambda ops: ops[:2])
    images = np.zeros((9, 32, 32, 3), np.uint8)
    job = worker.Job(model="m", backend="onnx", device="cpu", threads=2, batch_sizes=[4, 2], scenarios=[],
                     quality=False, profile_dir=str(tmp_path / "prof"), runtime_options={"ov_hint": "latency"})
    out, _ = worker.measure(job, m, images, np.zeros(9, int))
    assert len(loads) == 2
    assert loads[1] == (("onnx", m, "cpu", 2), {"options": RuntimeOptions(
        ov_hint="latency", profile_dir=str(tmp_path / "prof" / m.directory.name))})
    if hook:
        assert out["profile"] == {"runtime": "fake", "file": "/p/x.json", "calls": 3, "batch_sizes": [1, 4],
                                  "unavailable": "no op times for 2 ops", "top_ops": [{"op": 0}, {"op": 1}]}
        assert prof.calls == [1, 4] * worker.PROFILE_CALLS
    else:
        assert out["profile"] == {"unavailable": "backend onnx has no profiler hook", "top_ops": []}
        assert prof.calls == []


def test_profile_dir_named_after_the_model_when_its_directory_has_no_name(recorded: tuple[Recording, Manifest],
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    be, m = recorded
    seen: list[Any] = []
    monkeypatch.setattr(backends, "load_backend", lambda *a, **k: seen.append(k["options"].profile_dir) or be)
    m.directory = Path("/")
    worker._profile(worker.Job(model="m", backend="onnx", profile_dir="/out"), m, np.zeros((2, 1)),
                    __import__("cifarbench.backends.options", fromlist=["x"]).RuntimeOptions())
    assert seen == ["/out/m"]


def test_pin_asks_about_this_process(monkeypatch: pytest.MonkeyPatch) -> None:
    """PID 0 (this process) for both calls; an independent double, since PID 1 may share this host's CPU set."""
    calls: list[tuple] = []
    monkeypatch.setattr(worker.os, "sched_setaffinity", lambda pid, cpus: calls.append(("set", pid, list(cpus))),
                        raising=False)
    monkeypatch.setattr(worker.os, "sched_getaffinity", lambda pid: calls.append(("get", pid)) or {3, 1},
                        raising=False)
    assert worker._pin([3, 1]) == [1, 3]
    assert calls == [("set", 0, [3, 1]), ("get", 0)]


# --------------------------------------------------------------------------- quality, synthetic data, large images


def _probs(pred: list[int], classes: int) -> np.ndarray:
    p = np.full((len(pred), classes), 0.01, np.float32)
    for r, c in enumerate(pred):
        p[r, c] = 0.9
        p[r, (c + 1) % classes] = 0.05  # second choice: the next class
    return p


@pytest.mark.parametrize("dense_max, dense", [(6, True), (5, False)])
def test_quality_hand_counted_dense_at_the_limit_sparse_past_it(monkeypatch: pytest.MonkeyPatch, dense_max: int,
                                                                dense: bool) -> None:
    monkeypatch.setattr(worker, "DENSE_CONFUSION_MAX", dense_max)
    classes = [f"c{i}" for i in range(6)]
    labels = np.array([0, 0, 1, 2, 3, 5])
    pred = [0, 1, 1, 1, 3, 4]  # right: 0, 1, 3 -> 3 of 6; (0->1) once, (2->1) once, (5->4) once
    probs = _probs(pred, 6)
    probs[5] = [0.02, 0.03, 0.04, 0.05, 0.85, 0.01]  # the last image's true class (c5) scores lowest: a top-5 miss
    q = worker.quality(probs, labels, classes)
    assert q["accuracy"] == 0.5
    assert q["top5"] == 5 / 6  # every other true class is among its image's five highest
    assert [(m["true"], m["predicted"], m["count"]) for m in q["most_confused"]] == [
        ("c0", "c1", 1), ("c2", "c1", 1), ("c5", "c4", 1)]
    cells = [[0, 0, 1], [0, 1, 1], [1, 1, 1], [2, 1, 1], [3, 3, 1], [5, 4, 1]]
    if dense:
        assert "confusion_sparse" not in q and q["confusion"][0][:2] == [1, 1] and q["confusion"][5][4] == 1
        assert sum(map(sum, q["confusion"])) == 6 and len(q["confusion"]) == 6
    else:
        assert "confusion" not in q and q["confusion_sparse"] == cells


def test_quality_top5_is_none_below_five_classes() -> None:
    q = worker.quality(_probs([0, 1], 4), np.array([0, 0]), ["a", "b", "c", "d"])
    assert q["top5"] is None and q["accuracy"] == 0.5


def test_no_labels_no_accuracy_pass(recorded: tuple[Recording, Manifest]) -> None:
    be, m = recorded
    job = worker.Job(model="m", backend="onnx", batch_sizes=[4], scenarios=[], quality=True)
    out, probs = worker.measure(job, m, np.zeros((4, 32, 32, 3), np.uint8), None)
    assert probs is None and "eval" not in out and "quality" not in out and be.calls == [1]


def test_large_images_evaluate_in_smaller_batches(recorded: tuple[Recording, Manifest]) -> None:
    """The accuracy pass at 224x224 uses images_per_batch's batch, not the largest asked (an independent count)."""
    from cifarbench.data.batching import PIXELS_PER_BATCH

    be, m = recorded
    n = 45
    images = np.zeros((n, 224, 224, 3), np.uint8)
    job = worker.Job(model="m", backend="onnx", batch_sizes=[256], scenarios=[], tta="flip")
    out, _ = worker.measure(job, m, images, np.full(n, 3))
    per = max(1, min(256, PIXELS_PER_BATCH // (224 * 224)))
    assert per < n and out["eval"]["batch_size"] == per
    assert be.calls[1:1 + -(-n // per)] == [min(per, n - i) for i in range(0, n, per)]
    assert out["tta"]["mode"] == "flip" and max(be.calls[1:]) <= 2 * per  # flip: two views of each batch


def test_synthetic_rows_draw_their_own_images(in_process: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    import types

    from cifarbench.bench import data as bench_data

    drawn: list[tuple] = []
    monkeypatch.setattr(bench_data, "synthetic", lambda size, n, seed: drawn.append((tuple(size), n, seed)) or
                        types.SimpleNamespace(images=np.zeros((n, 2, 2, 3), np.uint8), labels=None))
    row, probs = worker.run_isolated(worker.Job(model="m", backend="onnx", synthetic=5, seed=9))
    assert drawn == [(tuple(in_process["manifest"].input.size), 5, 9)] and in_process["subset"] == []
    (_, _, shape, labels), = in_process["measured"]
    assert shape == (5, 2, 2, 3) and labels is None and row["x"] == 1.5 and probs is None


def test_tta_cost_from_the_fake_clock_counts_every_view(recorded: tuple[Recording, Manifest],
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """flip sends each batch with its mirror: the TTA pass's calls and cost_x, recomputed from the fake clock."""
    import types

    be, m = recorded
    fake_time = types.SimpleNamespace(perf_counter=be.clock)
    monkeypatch.setattr(worker, "time", fake_time)
    monkeypatch.setattr(scenarios, "time", fake_time)
    images = np.zeros((20, 32, 32, 3), np.uint8)
    job = worker.Job(model="m", backend="onnx", batch_sizes=[8], scenarios=["single-stream"], warmup=0, min_iters=3,
                     min_time=0.0, tta="flip")
    be.calls.clear()
    out, _ = worker.measure(job, m, images, np.full(20, 3))
    single = [8, 8, 4]
    assert be.calls[1:1 + 3] == single  # after the first call: the single-view accuracy pass
    assert be.calls[4:4 + 3] == [16, 16, 8]  # then every batch with its mirror, in one call each
    one = sum(OVERHEAD + PER_IMAGE * n for n in single)  # 0.032 fake s
    two = sum(OVERHEAD + PER_IMAGE * 2 * n for n in single)  # 0.052: twice the images, the same calls
    assert out["tta"]["cost_x"] == pytest.approx(two / one)  # 1.625: more than one view's time
    assert out["tta"]["images_per_s"] == pytest.approx(20 / two)
