"""`auto`: the probe on a fake clock, and the cache: hit, and a re-probe whenever a part of its key changes."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from cifarbench import backends, sysinfo
from cifarbench.backends import autoselect, bf16guard
from cifarbench.errors import ModelError
from cifarbench.models.manifest import Manifest


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


class Timed:
    """A backend whose call costs ``per_image`` seconds of fake time per image."""

    def __init__(self, clock: Clock, per_image: float) -> None:
        self.clock, self.per_image, self.calls = clock, per_image, 0

    def predict(self, x: np.ndarray) -> np.ndarray:
        self.calls += 1
        self.clock.t += self.per_image * len(x)
        return np.zeros((len(x), 10), np.float32)


def test_probe_ranks_by_measured_speed_and_reports_failures() -> None:
    clock = Clock()
    costs = {"slow": 1e-3, "fast": 1e-4}

    def load(name: str) -> Timed:
        if name == "broken":
            raise ModelError("cannot load it")
        return Timed(clock, costs[name])

    figures, failed = autoselect.probe(load, ["slow", "fast", "broken"], (8, 8, 3), batch=16,
                                       limits=autoselect.ProbeLimits(2.0, 0.3, 3), clock=clock)
    assert failed == {"broken": "cannot load it"}
    assert figures["fast"]["images_per_s"] == pytest.approx(10_000) and figures["slow"]["images_per_s"] == pytest.approx(1_000)
    assert figures["fast"]["batch1_ms"] == pytest.approx(0.1)
    # A race: the 10x slower one is retired after two calls; the leader goes on until min_time_s.
    assert figures["slow"]["retired"] and figures["slow"]["calls"] == 2
    assert not figures["fast"]["retired"] and figures["fast"]["calls"] > 3


def test_close_contenders_get_the_budget() -> None:
    clock = Clock()
    costs = {"a": 1.0e-4, "b": 1.1e-4, "far": 3e-4}
    figures, _ = autoselect.probe(lambda n: Timed(clock, costs[n]), list(costs), (4, 4, 3), batch=16,
                                  limits=autoselect.ProbeLimits(2.0, 0.0, 2, contender_calls=6), clock=clock)
    assert figures["far"]["retired"] and figures["far"]["calls"] == 2
    assert figures["a"]["calls"] == figures["b"]["calls"] == 6  # within 10 %: both timed until contender_calls
    assert max(figures, key=lambda n: figures[n]["images_per_s"]) == "a"


def test_a_cold_first_call_does_not_retire_the_winner() -> None:
    clock = Clock()
    # "cold"'s first timed call is 100x slow (still warming up); it must survive to show its real speed.
    be = {"cold": Bursty(clock, 1e-4, cold=2), "steady": Timed(clock, 2e-4)}
    figures, _ = autoselect.probe(lambda n: be[n], ["cold", "steady"], (4, 4, 3), batch=16,
                                  limits=autoselect.ProbeLimits(2.0, 0.0, 2, warmup=0), clock=clock)
    assert max(figures, key=lambda n: figures[n]["images_per_s"]) == "cold" and figures["steady"]["retired"]


def test_probe_stops_at_its_budget() -> None:
    clock = Clock()
    figures, _ = autoselect.probe(lambda n: Timed(clock, 0.01), ["a", "b"], (4, 4, 3), batch=16,
                                  limits=autoselect.ProbeLimits(2.0, 0.3, 50), clock=clock)
    warm = 2 * (1 + autoselect.WARMUP_CALLS * 16) * 0.01
    assert warm < 2.0  # warm-up is inside the budget, so timing still runs
    assert clock.t < 2.0 + 2 * 17 * 0.01 + 1e-9  # at most one round past the budget (loading costs nothing here)
    assert 1 <= figures["a"]["calls"] < 50


def test_probe_budget_includes_warm_up() -> None:
    clock = Clock()
    # Warm-up alone overruns the budget: every candidate still gets one timed call, then the probe stops.
    figures, _ = autoselect.probe(lambda n: Timed(clock, 0.01), ["a", "b"], (4, 4, 3), batch=16,
                                  limits=autoselect.ProbeLimits(0.5, 0.3, 50, warmup=2), clock=clock)
    assert figures["a"]["calls"] == figures["b"]["calls"] == 1
    assert clock.t == pytest.approx(2 * (1 + 2 * 16) * 0.01 + 2 * 17 * 0.01)



def test_probe_loads_openvino_first() -> None:
    clock, order = Clock(), []

    def load(name: str) -> Timed:
        order.append(name)
        return Timed(clock, 1e-4)

    figures, _ = autoselect.probe(load, ["onnx-int8", "tflite-int8", "openvino-int8"], (4, 4, 3), batch=4, clock=clock)
    assert order == ["openvino-int8", "onnx-int8", "tflite-int8"]  # otherwise in the caller's order
    assert set(figures) == {"onnx-int8", "tflite-int8", "openvino-int8"}

class Bursty(Timed):
    """Its first ``cold`` calls take 100x longer, and every third timed call is hit by a 10x burst."""

    def __init__(self, clock: Clock, per_image: float, cold: int) -> None:
        super().__init__(clock, per_image)
        self.cold = cold

    def predict(self, x: np.ndarray) -> np.ndarray:
        factor = 100 if self.calls < self.cold else 10 if self.calls % 3 == 0 else 1
        self.clock.t += self.per_image * len(x) * (factor - 1)
        return super().predict(x)


def test_probe_warms_up_and_ranks_by_the_best_call() -> None:
    clock = Clock()
    # "cold" is the faster one but slow to warm up (3 calls: batch-1 and two full batches) and bursty.
    be = {"cold": Bursty(clock, 1e-4, cold=3), "steady": Timed(clock, 2e-4)}
    figures, _ = autoselect.probe(lambda n: be[n], ["cold", "steady"], (4, 4, 3), batch=16,
                                  limits=autoselect.ProbeLimits(2.0, 0.3, 6), clock=clock)
    assert figures["cold"]["images_per_s"] == pytest.approx(10_000)  # the best call, not the bursts
    assert figures["cold"]["median_images_per_s"] < figures["cold"]["images_per_s"]
    assert max(figures, key=lambda n: figures[n]["images_per_s"]) == "cold"


def test_heuristic_is_vnni_aware() -> None:
    names = ["onnx-int8", "tflite-int8"]
    assert autoselect.heuristic(names, {"avx2": True}) == "onnx-int8"
    assert autoselect.heuristic(names, {"avx2": True, "avx512_vnni": True}) == "tflite-int8"
    assert autoselect.heuristic(["onnx"], {"avx_vnni": True}) == "onnx"
    vnni_all = ["onnx-int8", "tflite-int8", "openvino-int8"]
    assert autoselect.heuristic(vnni_all, {"avx512_vnni": True}) == "openvino-int8"
    assert autoselect.heuristic(vnni_all, {"avx2": True}) == "onnx-int8"
    for flag in ("avx512_vnni", "avx_vnni", "amx_int8"):  # each VNNI flavour alone is enough
        assert autoselect.heuristic(names, {flag: True}) == "tflite-int8", flag
    assert autoselect.heuristic(["my-plugin"], {}) == "my-plugin"  # nothing known: the first candidate


def test_openvino_candidates_load_first() -> None:
    assert sorted(["onnx-int8", "openvino-int8", "tflite-int8"], key=autoselect._load_rank)[0] == "openvino-int8"
    assert autoselect._load_rank("openvino") < autoselect._load_rank("onnx") == autoselect._load_rank("tflite-int8")


@pytest.fixture
def counted_loads(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> list[str]:
    """Real backends, counted; a fresh cache directory per test."""
    monkeypatch.setenv("CIFARBENCH_CACHE_DIR", str(tmp_path / "cache"))
    loads: list[str] = []
    real = backends.load_backend

    def load(name: str, manifest: Any, device: str = "cpu", threads: Any = None) -> Any:
        loads.append(name)
        return real(name, manifest, device, threads)

    monkeypatch.setattr(backends, "load_backend", load)
    return loads


def _two(m: Manifest) -> dict[str, str]:
    return {"onnx-int8": "cpu", "tflite-int8": "cpu"}


def test_choice_is_cached_and_a_changed_key_reprobes(tiny_model: Path, counted_loads: list[str],
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    # The whole flag set is faked: an AVX2-only CPU first, then one with every flag (a real host may have any).
    cpu = sysinfo.cpu_info()
    avx2_only = {f: f in ("avx", "avx2", "fma") for f in cpu["flags"]}
    monkeypatch.setattr(sysinfo, "cpu_info", lambda: {**cpu, "flags": avx2_only})
    m = Manifest.load(tiny_model)
    first = autoselect.choose(m, _two(m), None)
    assert first.how == "measured" and first.name in ("onnx-int8", "tflite-int8")
    assert sorted(counted_loads) == ["onnx-int8", "tflite-int8"]
    assert first.name == max(first.figures, key=lambda n: first.figures[n]["images_per_s"])
    assert autoselect.cache_path().is_file()

    again = autoselect.choose(m, _two(m), None)
    assert again.how == "cached" and again.name == first.name and again.figures == first.figures
    assert len(counted_loads) == 2  # nothing loaded for a cache hit
    shown = autoselect.cached_choice(m)
    assert shown["choice"] in ("onnx-int8", "tflite-int8", "openvino-int8") or shown["choice"] is None

    # Each part of the key: artifact hash, threads, runtime versions, CPU flags.
    changed = copy.deepcopy(m)
    changed.artifacts["onnx-int8"].sha256 = "0" * 64
    assert autoselect.choose(changed, _two(m), None).how == "measured"
    assert autoselect.choose(m, _two(m), 1).how == "measured"
    versions = sysinfo.package_versions()
    monkeypatch.setattr(sysinfo, "package_versions", lambda: {**versions, "onnxruntime": "0.0.1"})
    assert autoselect.choose(m, _two(m), None).how == "measured"
    every_flag = {f: True for f in cpu["flags"]}
    assert every_flag != avx2_only
    monkeypatch.setattr(sysinfo, "cpu_info", lambda: {**cpu, "flags": every_flag})
    assert autoselect.choose(m, _two(m), None).how == "measured"
    assert autoselect.choose(m, _two(m), None, batch=32).how == "measured"  # and the batch size it ranks at
    assert len(counted_loads) == 2 + 5 * 2
    assert len(autoselect.cached_entries()) == 6


def test_select_probes_at_the_callers_batch_size(tiny_model: Path, counted_loads: list[str]) -> None:
    m = Manifest.load(tiny_model)
    sel = backends.select(m, None, batch_size=8)
    assert sel.how == "measured" and all(f["batch_size"] == 8 for f in sel.figures.values())
    assert autoselect.cached_entries()[0]["key"]["batch"] == 8
    assert backends.select(m, None, batch_size=8).how == "cached"
    assert backends.select(m, None).how == "measured"  # classify's default batch is another key


def test_corrupt_or_unwritable_cache_still_chooses(tiny_model: Path, counted_loads: list[str],
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    m = Manifest.load(tiny_model)
    path = autoselect.cache_path()
    path.parent.mkdir(parents=True)
    path.write_text("{not json")
    sel = autoselect.choose(m, _two(m), None)
    assert sel.how == "measured"
    assert autoselect.choose(m, _two(m), None).how == "cached"  # the bad file was replaced
    # Unwritable for root too: the cache directory's place is taken by a file (chmod would not stop root).
    monkeypatch.setenv("CIFARBENCH_CACHE_DIR", str(path / "sub"))
    sel = autoselect.choose(m, _two(m), None)
    assert sel.how == "measured" and "not cached" in sel.note


def test_probing_switched_off_uses_the_cpu_flags(tiny_model: Path, counted_loads: list[str],
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(autoselect.ENV_PROBE, "0")
    m = Manifest.load(tiny_model)
    sel = autoselect.choose(m, _two(m), None)
    assert sel.how == "fallback" and counted_loads == []
    assert sel.name == autoselect.heuristic(list(_two(m)), sysinfo.cpu_info()["flags"])


def test_select_auto_goes_through_the_probe(tiny_model: Path, counted_loads: list[str]) -> None:
    m = Manifest.load(tiny_model)
    sel = backends.select(m, "auto")
    assert sel.how in ("measured", "only") and sel.name in backends.auto_candidates(m)
    assert backends.select(m).how in ("cached", "only")


def test_info_shows_the_cached_choice_without_probing(tiny_model: Path, counted_loads: list[str], tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    import json

    from conftest import run_cli

    trained = tmp_path / "trained"
    trained.mkdir()
    (trained / "flagship").symlink_to(tiny_model, target_is_directory=True)  # the tiny model as the default one
    monkeypatch.setenv("CIFARBENCH_TRAINED_DIR", str(trained))
    before = json.loads(run_cli("info", "--json").stdout)["default_backend"]
    assert counted_loads == []  # info never probes
    m = Manifest.load(tiny_model)
    if len(backends.auto_candidates(m)) == 1:
        assert before["how"] == "only candidate"
        return
    assert before["choice"] is None and "not measured yet" in before["how"]
    sel = backends.select(m)
    after = json.loads(run_cli("info", "--json").stdout)["default_backend"]
    assert after["choice"] == sel.name and after["how"] == "measured" and after["measured_at"]
    # every candidate was timed, except the bf16 row where its accuracy guard left it out (host-dependent: the
    # guard compares bf16 with f32 answers on this CPU; the note says so)
    left_out = {bf16guard.BF16_BACKEND} if f"{bf16guard.BF16_BACKEND} (bf16) left out" in sel.note else set()
    assert set(after["figures"]) == set(backends.auto_candidates(m)) - left_out
    text = run_cli("info").stdout
    line = next(ln for ln in text.splitlines() if ln.startswith("default backend (auto)"))
    assert sel.name in line and "img/s" in line and after["measured_at"] in line


def test_the_probe_times_onnxruntime_without_spin_wait(tiny_model: Path, counted_loads: list[str],
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """onnxruntime's spinning workers would take the CPU from the candidate timed next; other sessions keep spinning."""
    m = Manifest.load(tiny_model)
    seen: dict[str, Any] = {}
    real_probe = autoselect.probe

    def recording_probe(load: Any, names: list[str], shape: Any, **kw: Any) -> Any:
        for n in names:
            seen[n] = load(n)
        return real_probe(lambda n: seen[n], names, shape, **kw)

    monkeypatch.setattr(autoselect, "probe", recording_probe)
    assert autoselect.choose(m, _two(m), None).how == "measured"
    key = "session.intra_op.allow_spinning"
    assert seen["onnx-int8"].session.get_session_options().get_session_config_entry(key) == "0"
    plain = backends.load_backend("onnx-int8", m)
    with pytest.raises(RuntimeError, match="does not have configuration"):  # classify/serve/bench: ORT's default
        plain.session.get_session_options().get_session_config_entry(key)
    assert np.array_equal(plain.predict(np.zeros((2, 32, 32, 3), np.uint8)),
                          seen["onnx-int8"].predict(np.zeros((2, 32, 32, 3), np.uint8)))
    assert autoselect._neighbourly(seen["tflite-int8"]) is seen["tflite-int8"]  # nothing to swap
