"""autoselect's pieces one at a time: the cache key's fields, its id, the cache file's order and format, the probe's
race on a fake clock (every comparison at its boundary), and the small helpers."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

import pytest

from cifarbench import sysinfo
from cifarbench.backends import autoselect
from cifarbench.backends.autoselect import ProbeLimits, probe
from cifarbench.errors import CifarbenchError
from cifarbench.models.manifest import Artifact, Manifest


@pytest.fixture
def machine(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Manifest:
    monkeypatch.setenv("CIFARBENCH_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(sysinfo, "cpu_info", lambda: {"model": "Test CPU", "usable_cores": 3, "cores": 4,
                                                      "flags": {"avx2": True, "avx512f": False, "amx_int8": True}})
    monkeypatch.setattr(sysinfo, "package_versions", lambda: {"onnxruntime": "1.2"})
    m = Manifest(name="m", arch="x")
    for fmt in ("onnx-int8", "tflite-int8"):
        m.artifacts[fmt] = Artifact(file=fmt, format=fmt, sha256=fmt[0] * 64, size=1)
    return m


def test_cache_key_names_every_field(machine: Manifest) -> None:
    key = autoselect.cache_key(machine, {"tflite-int8": "cpu", "onnx-int8": "gpu"}, 2, 64)
    assert key == {"cpu": "Test CPU", "flags": ["amx_int8", "avx2"], "usable_cores": 3,
                   "versions": {"onnxruntime": "1.2"}, "threads": 2, "batch": 64,
                   "candidates": {"onnx-int8": {"device": "gpu", "sha256": "o" * 64},
                                  "tflite-int8": {"device": "cpu", "sha256": "t" * 64}}}
    assert list(key["candidates"]) == ["onnx-int8", "tflite-int8"]
    assert autoselect.cache_key(machine, {"onnx-int8": "cpu"}, None)["batch"] == autoselect.PROBE_BATCH == 256


def test_key_id_is_the_canonical_jsons_sha256_prefix() -> None:
    a = {"b": 1, "a": {"y": 2, "x": [1, 2]}}
    b = {"a": {"x": [1, 2], "y": 2}, "b": 1}  # the same key, other insertion order
    canonical = '{"a": {"x": [1, 2], "y": 2}, "b": 1}'
    assert autoselect.key_id(a) == autoselect.key_id(b) == hashlib.sha256(canonical.encode()).hexdigest()[:16]


def entry(i: int | None, choice: str = "onnx-int8") -> dict[str, Any]:
    e: dict[str, Any] = {"key": {"n": i, "candidates": {choice: {}}}, "choice": choice, "figures": {}}
    if i is not None:
        e["measured_at"] = f"2026-01-01T00:00:{i:02d}Z"
    return e


def test_cache_file_format_and_the_newest_kept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "c.json"
    monkeypatch.setattr(autoselect, "MAX_ENTRIES", 3)
    assert autoselect.store(entry(None), path) is None  # undated: the oldest of all
    for i in (5, 1, 9):
        assert autoselect.store(entry(i), path) is None
    doc = json.loads(path.read_text(encoding="utf-8"))
    assert path.read_text(encoding="utf-8") == json.dumps(doc, indent=1, sort_keys=True)
    assert doc["schema"] == "cifarbench.backend-choice/1"
    assert sorted(e["measured_at"] for e in doc["entries"].values()) == [
        "2026-01-01T00:00:01Z", "2026-01-01T00:00:05Z", "2026-01-01T00:00:09Z"]
    assert autoselect.store(entry(7), path) is None
    assert [e["measured_at"] for e in autoselect.cached_entries(path)] == [
        "2026-01-01T00:00:09Z", "2026-01-01T00:00:07Z", "2026-01-01T00:00:05Z"]


def test_cached_entries_put_undated_ones_last(tmp_path: Path) -> None:
    path = tmp_path / "c.json"
    for i in (None, 3, 8):
        autoselect.store(entry(i), path)
    assert [e.get("measured_at") for e in autoselect.cached_entries(path)] == [
        "2026-01-01T00:00:08Z", "2026-01-01T00:00:03Z", None]


@pytest.mark.parametrize("exc, why", [(OSError(13, "Permission denied"), "not cached (Permission denied)"),
                                      (OSError("disk on fire"), "not cached (disk on fire)")])
def test_unwritable_cache_says_why(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, exc: OSError, why: str) -> None:
    def refuse(*a: Any, **k: Any) -> Any:
        raise exc

    monkeypatch.setattr(autoselect, "atomic_write", refuse)
    assert autoselect.store(entry(1), tmp_path / "c.json") == why


def test_cached_choice_asks_about_this_model_device_threads_and_batch(machine: Manifest,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from cifarbench import backends

    asked: list[tuple] = []
    monkeypatch.setattr(backends, "auto_candidates", lambda *a: asked.append(a) or {"onnx-int8": "cpu",
                                                                                    "tflite-int8": "cpu"})
    keys: list[tuple] = []
    real = autoselect.cache_key
    monkeypatch.setattr(autoselect, "cache_key", lambda *a: keys.append(a) or real(*a))
    got = autoselect.cached_choice(machine)
    assert asked == [(machine, "cpu")] and keys[-1] == (machine, {"onnx-int8": "cpu", "tflite-int8": "cpu"}, None, 256)
    assert got["choice"] is None and got["candidates"] == ["onnx-int8", "tflite-int8"]
    autoselect.cached_choice(machine, "gpu", 3, 16)
    assert asked[-1] == (machine, "gpu") and keys[-1][2:] == (3, 16)


# --------------------------------------------------------------------------- the probe on a fake clock


class Clock:
    def __init__(self, t: float = 1000.0) -> None:
        self.t = t  # far from 0: a sum instead of a difference shows

    def __call__(self) -> float:
        return self.t


class Timed:
    """A batch call costs ``cost`` fake seconds (a batch-1 call: ``one``)."""

    def __init__(self, clock: Clock, cost: float, one: float = 0.0) -> None:
        self.clock, self.cost, self.one, self.calls = clock, cost, one, 0

    def predict(self, x: Any) -> Any:
        self.calls += 1
        self.clock.t += self.one if len(x) == 1 else self.cost
        return x


def run(costs: dict[str, float], limits: ProbeLimits, batch: int = 2, fail: dict[str, Exception] | None = None,
        clock: Clock | None = None) -> tuple[dict, dict]:
    clock = clock or Clock()
    fail = fail or {}

    def load(n: str) -> Timed:
        if n in fail:
            raise fail[n]
        return Timed(clock, costs[n], 0.25)

    return probe(load, list(costs), (2, 2, 3), batch, limits, clock)


def test_a_lone_candidate_stops_at_min_calls_not_the_contenders_count() -> None:
    fig, failed = run({"a": 0.5}, ProbeLimits(budget_s=100, min_time_s=0, min_calls=2, warmup=1, contender_calls=6))
    assert failed == {} and fig["a"]["calls"] == 2


def test_min_time_reached_exactly_is_enough() -> None:
    # warm-up: batch-1 0.25 + one batch 1.0; each round then costs 1.25 s: elapsed 2.5, 3.75, 5.0 after rounds 1-3
    lim = ProbeLimits(budget_s=100, min_time_s=3.75, min_calls=1, warmup=1, contender_calls=1)
    fig, _ = run({"a": 1.0}, lim)
    assert fig["a"]["calls"] == 2


def test_budget_reached_exactly_stops() -> None:
    lim = ProbeLimits(budget_s=3.75, min_time_s=100, min_calls=1, warmup=1, contender_calls=1)
    fig, _ = run({"a": 1.0}, lim)
    assert fig["a"]["calls"] == 2


def test_a_candidate_exactly_at_the_prune_ratio_stays() -> None:
    lim = ProbeLimits(budget_s=1000, min_time_s=0, min_calls=2, warmup=1, contender_calls=4, prune_ratio=0.75)
    fig, _ = run({"lead": 3.0, "close": 4.0, "slow": 4.5}, lim)  # 0.75 x 4 = 3: close stays; 0.75 x 4.5 > 3
    assert (fig["lead"]["retired"], fig["close"]["retired"], fig["slow"]["retired"]) == (False, False, True)
    assert fig["slow"]["calls"] == 2 and fig["close"]["calls"] == fig["lead"]["calls"] == 4


def test_figures_from_best_and_median_calls() -> None:
    lim = ProbeLimits(budget_s=100, min_time_s=0, min_calls=3, warmup=1, contender_calls=3)
    fig, _ = run({"a": 0.5}, lim, batch=4)
    assert fig["a"] == {"images_per_s": 8.0, "median_images_per_s": 8.0, "batch_size": 4, "batch1_ms": 250.0,
                        "calls": 3, "retired": False}


def test_load_failures_keep_their_first_line() -> None:
    lim = ProbeLimits(budget_s=100, min_time_s=0, min_calls=1, warmup=1, contender_calls=1)
    fig, failed = run({"a": 0.5, "b": 0.5}, lim, fail={"b": CifarbenchError("b cannot load\ndetails")})
    assert list(fig) == ["a"] and failed == {"b": "b cannot load"}


# --------------------------------------------------------------------------- helpers


def test_neighbourly_swaps_a_spinning_backend() -> None:
    class Spinning:
        def without_spinning(self) -> str:
            return "calm"

    plain = object()
    assert autoselect._neighbourly(Spinning()) == "calm" and autoselect._neighbourly(plain) is plain

    class NotCallable:
        without_spinning = "yes"

    nc = NotCallable()
    assert autoselect._neighbourly(nc) is nc


def test_figures_text_ranks_fastest_first() -> None:
    text = autoselect._figures_text({"b": {"images_per_s": 999.6}, "a": {"images_per_s": 12345.4}})
    assert text == "a 12,345 img/s, b 1,000 img/s"


def test_measured_at_is_utc(machine: Manifest, monkeypatch: pytest.MonkeyPatch) -> None:
    """The entry's timestamp is UTC whatever the local zone: time.gmtime, checked against a fixed instant."""
    import types

    from cifarbench import backends

    fixed = time.gmtime(86400 * 365)
    monkeypatch.setattr(autoselect, "time", types.SimpleNamespace(
        perf_counter=time.perf_counter, strftime=time.strftime, gmtime=lambda: fixed))
    monkeypatch.setattr(autoselect, "probe", lambda *a, **k: ({"onnx-int8": {"images_per_s": 2.0}}, {}))
    monkeypatch.setattr(backends, "load_backend", lambda *a, **k: None)
    monkeypatch.delenv(autoselect.ENV_PROBE, raising=False)
    sel = autoselect.choose(machine, {"onnx-int8": "cpu", "tflite-int8": "cpu"}, None, batch=4)
    assert sel.how == "measured" and sel.note.startswith("onnx-int8: fastest in a ")
    assert sel.note.endswith("(onnx-int8 2 img/s)")  # cached: nothing appended
    (e,) = autoselect.cached_entries()
    assert e["measured_at"] == "1971-01-01T00:00:00Z"


def test_warm_up_failures_keep_their_first_line() -> None:
    clock = Clock()

    class Broken(Timed):
        def predict(self, x: Any) -> Any:
            raise RuntimeError("out of memory\nat kernel 3")

    lim = ProbeLimits(budget_s=100, min_time_s=0, min_calls=1, warmup=1, contender_calls=1)
    fig, failed = probe(lambda n: Broken(clock, 1.0) if n == "b" else Timed(clock, 0.5), ["a", "b"], (2, 2, 3), 2,
                        lim, clock)
    assert list(fig) == ["a"] and failed == {"b": "out of memory"}


# --------------------------------------------------------------------------- the bf16 row's guard in choose


def test_guard_text() -> None:
    from cifarbench.backends.bf16guard import BF16_BACKEND

    assert autoselect._guard_text(None, BF16_BACKEND) == "" and autoselect._guard_text({}, BF16_BACKEND) == ""
    ok = {"ok": True, "why": "agrees on 999 of 1000"}
    assert autoselect._guard_text(ok, BF16_BACKEND) == "; agrees on 999 of 1000"
    assert autoselect._guard_text(ok, "onnx-int8") == ""
    bad = {"ok": False, "why": "differs on 4 of 1000"}
    assert autoselect._guard_text(bad, "onnx-int8") == f"; {BF16_BACKEND} (bf16) left out: differs on 4 of 1000"
    assert autoselect._guard_text({"why": "x"}, BF16_BACKEND) == f"; {BF16_BACKEND} (bf16) left out: x"


def test_bf16_guard_checks_against_the_available_references(machine: Manifest, monkeypatch: pytest.MonkeyPatch) -> None:
    from cifarbench import backends
    from cifarbench.backends import bf16guard

    monkeypatch.setattr(backends, "unavailable_reason",
                        lambda n, m, d: None if (n, m, d) == ("onnx", machine, "cpu") else "no")
    loads: list[tuple] = []
    monkeypatch.setattr(backends, "load_backend", lambda *a: loads.append(a) or "be")
    monkeypatch.setattr(bf16guard, "held_out_images", lambda size: ("images", size))
    seen: list[tuple] = []

    def check(load: Any, available: list[str], images: Any) -> dict[str, Any]:
        seen.append((load("openvino"), available, images))
        return {"ok": True, "why": "fine"}

    monkeypatch.setattr(bf16guard, "check", check)
    assert autoselect._bf16_guard(machine, {"openvino": "cpu"}, 3, (24, 40)) == {"ok": True, "why": "fine"}
    assert seen == [("be", ["onnx"], ("images", (24, 40)))] and loads == [("openvino", machine, "cpu", 3)]

    def broken(*a: Any) -> Any:
        raise ValueError("no bundled split\nsecond line")

    monkeypatch.setattr(bf16guard, "check", broken)
    assert autoselect._bf16_guard(machine, {}, None, (32, 32)) == {
        "ok": False, "why": f"bf16 {bf16guard.BF16_BACKEND} not checked (no bundled split)"}


@pytest.fixture
def guarded_choose(machine: Manifest, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """choose with the probe and the guard replaced by recorders; the bf16 row wins every probe it is in."""
    from cifarbench import backends
    from cifarbench.backends.bf16guard import BF16_BACKEND

    st: dict[str, Any] = {"guards": [], "probed": [], "guard": {"ok": True, "why": "agrees on 1000 of 1000"}}
    monkeypatch.delenv(autoselect.ENV_PROBE, raising=False)
    monkeypatch.setattr(backends, "load_backend", lambda *a, **k: None)
    monkeypatch.setattr(autoselect, "_bf16_guard", lambda *a: st["guards"].append(a) or st["guard"])

    def fake_probe(load: Any, names: list[str], shape: Any, batch: int = 0) -> tuple[dict, dict]:
        st["probed"].append(list(names))
        return {n: {"images_per_s": 900.0 if n == BF16_BACKEND else 100.0} for n in names}, {}

    monkeypatch.setattr(autoselect, "probe", fake_probe)
    machine.artifacts["onnx"] = machine.artifacts["onnx-int8"]
    st["m"], st["bf16"] = machine, BF16_BACKEND
    return st


def test_a_passing_guard_lets_the_bf16_row_race_and_is_cached(guarded_choose: dict[str, Any]) -> None:
    st = guarded_choose
    m, bf16 = st["m"], st["bf16"]
    cands = {"onnx-int8": "cpu", bf16: "cpu"}
    sel = autoselect.choose(m, cands, 3, batch=4)
    assert st["guards"] == [(m, cands, 3, tuple(m.input.size))] and st["probed"] == [["onnx-int8", bf16]]
    assert sel.name == bf16 and sel.how == "measured" and sel.note.endswith("; agrees on 1000 of 1000")
    (entry,) = autoselect.cached_entries()
    assert entry["bf16_guard"] == st["guard"]
    hit = autoselect.choose(m, cands, 3, batch=4)
    assert hit.how == "cached" and hit.note.endswith("; agrees on 1000 of 1000") and len(st["guards"]) == 1


def test_a_failing_guard_leaves_the_bf16_row_out(guarded_choose: dict[str, Any]) -> None:
    st = guarded_choose
    m, bf16 = st["m"], st["bf16"]
    st["guard"] = {"ok": False, "why": "differs on 4 of 1000"}
    cands = {"onnx-int8": "cpu", "tflite-int8": "cpu", bf16: "cpu"}
    sel = autoselect.choose(m, cands, None, batch=4)
    assert st["probed"] == [["onnx-int8", "tflite-int8"]] and sel.name != bf16
    assert sel.note.endswith(f"; {bf16} (bf16) left out: differs on 4 of 1000")
    hit = autoselect.choose(m, cands, None, batch=4)
    assert hit.how == "cached" and hit.note.endswith(f"; {bf16} (bf16) left out: differs on 4 of 1000")


def test_no_guard_without_the_bf16_row_or_when_it_is_alone(guarded_choose: dict[str, Any]) -> None:
    st = guarded_choose
    m, bf16 = st["m"], st["bf16"]
    autoselect.choose(m, {"onnx-int8": "cpu", "tflite-int8": "cpu"}, None, batch=4)
    (entry,) = autoselect.cached_entries()
    assert "bf16_guard" not in entry
    autoselect.choose(m, {bf16: "cpu"}, None, batch=4)
    assert st["guards"] == [] and st["probed"][-1] == [bf16]
