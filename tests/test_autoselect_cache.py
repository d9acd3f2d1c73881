"""`auto`'s choose/cache flow on fake backends (no model, no runtime): which candidate, cached, re-probed, fallback."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from cifarbench import backends, sysinfo
from cifarbench.backends import autoselect
from cifarbench.errors import ModelError
from cifarbench.models.manifest import Artifact, Manifest

TWO = {"onnx-int8": "cpu", "tflite-int8": "cpu"}


class Fake:
    """A backend whose every call costs ``cost`` seconds of real time (a cost model for the probe to measure)."""

    shapes: set = set()

    def __init__(self, cost: float) -> None:
        self.cost, self.calls = cost, 0

    def predict(self, x: np.ndarray) -> np.ndarray:
        self.calls += 1
        Fake.shapes.add((x.shape[1:], x.dtype.name))
        end = time.perf_counter() + self.cost
        while time.perf_counter() < end:
            pass
        return np.zeros((len(x), 10), np.float32)


@pytest.fixture
def world(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> dict[str, Any]:
    """A manifest, fake backends (tflite-int8 16x faster), a fixed CPU, a fresh cache; loads are recorded."""
    monkeypatch.setenv("CIFARBENCH_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv(autoselect.ENV_PROBE, raising=False)
    cpu = {"model": "Test CPU", "machine": "x86_64", "cores": 2, "usable_cores": 2,
           "flags": {f: f == "avx2" for f in sysinfo.SPEED_FLAGS}}
    monkeypatch.setattr(sysinfo, "cpu_info", lambda: cpu)
    monkeypatch.setattr(sysinfo, "package_versions", lambda: {"onnxruntime": "1", "ai-edge-litert": "1"})
    costs = {"onnx-int8": 0.008, "tflite-int8": 0.0005}  # 16x apart: a busy host's preemption cannot swap them
    loads: list[tuple] = []

    def load(name: str, manifest: Any, device: str = "cpu", threads: Any = None) -> Fake:
        assert manifest is m  # the model asked about, not another
        loads.append((name, device, threads))
        if name not in costs:
            raise ModelError(f"{name} cannot load")
        return Fake(costs[name])

    monkeypatch.setattr(backends, "load_backend", load)
    m = Manifest(name="m", arch="x")
    for fmt in ("onnx-int8", "tflite-int8"):
        m.artifacts[fmt] = Artifact(file=fmt, format=fmt, sha256=fmt[0] * 64, size=1)
    return {"m": m, "loads": loads, "cpu": cpu, "costs": costs}


def test_the_measured_fastest_is_chosen_then_cached(world: dict[str, Any]) -> None:
    m = world["m"]
    sel = autoselect.choose(m, TWO, None, batch=4)
    assert (sel.name, sel.device, sel.how) == ("tflite-int8", "cpu", "measured")
    assert sel.note.startswith("tflite-int8: fastest in a ") and " probe at batch 4 (tflite-int8 " in sel.note
    assert sorted(world["loads"]) == [("onnx-int8", "cpu", None), ("tflite-int8", "cpu", None)]
    f = sel.figures
    assert f["tflite-int8"]["images_per_s"] > 2 * f["onnx-int8"]["images_per_s"]  # 16x by construction
    assert f["tflite-int8"]["batch_size"] == 4 and f["tflite-int8"]["median_images_per_s"] > 0
    (entry,) = autoselect.cached_entries()
    assert entry["choice"] == "tflite-int8" and entry["model"] == "m" and entry["failed"] == {}
    assert entry["key"] == autoselect.cache_key(m, TWO, None, 4) and entry["probe_s"] > 0
    again = autoselect.choose(m, TWO, None, batch=4)
    assert (again.name, again.how, again.figures) == ("tflite-int8", "cached", f)
    assert again.note.startswith("tflite-int8: fastest in a probe on ") and str(autoselect.cache_path()) in again.note
    assert len(world["loads"]) == 2  # nothing loaded for a hit


def test_every_part_of_the_key_reprobes(world: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    m = world["m"]
    autoselect.choose(m, TWO, None, batch=4)
    assert autoselect.choose(m, TWO, 2, batch=4).how == "measured"  # threads
    assert autoselect.choose(m, TWO, None, batch=8).how == "measured"  # batch
    m.artifacts["onnx-int8"].sha256 = "f" * 64
    assert autoselect.choose(m, TWO, None, batch=4).how == "measured"  # an artifact
    world["cpu"]["flags"] = {f: True for f in sysinfo.SPEED_FLAGS}
    assert autoselect.choose(m, TWO, None, batch=4).how == "measured"  # CPU flags
    world["cpu"]["usable_cores"] = 1
    assert autoselect.choose(m, TWO, None, batch=4).how == "measured"  # usable cores
    world["cpu"]["model"] = "Other CPU"
    assert autoselect.choose(m, TWO, None, batch=4).how == "measured"  # CPU model
    monkeypatch.setattr(sysinfo, "package_versions", lambda: {"onnxruntime": "2"})
    assert autoselect.choose(m, TWO, None, batch=4).how == "measured"  # runtime versions
    assert autoselect.choose(m, {"onnx-int8": "cpu", "tflite-int8": "gpu"}, None, batch=4).how == "measured"  # device
    assert len(autoselect.cached_entries()) == 9


def test_probing_off_or_nothing_loads_falls_back_to_the_flags(world: dict[str, Any],
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    m = world["m"]
    off = autoselect.choose(m, TWO, None, allow_probe=False)
    assert (off.name, off.how, off.note) == ("onnx-int8", "fallback",
                                             "onnx-int8: CPU-flag fallback (probing switched off)")
    monkeypatch.setenv(autoselect.ENV_PROBE, "0")
    assert autoselect.choose(m, TWO, None).how == "fallback" and world["loads"] == []
    monkeypatch.setenv(autoselect.ENV_PROBE, "1")
    world["costs"].clear()  # nothing can load
    bad = autoselect.choose(m, TWO, None, batch=4)
    assert bad.how == "fallback" and bad.name == "onnx-int8"
    assert bad.note == ("onnx-int8: CPU-flag fallback (no candidate could be probed: onnx-int8: onnx-int8 cannot "
                        "load; tflite-int8: tflite-int8 cannot load)")
    assert autoselect.cached_entries() == []  # a failed probe is not cached


def test_the_cache_file_rules(world: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    m = world["m"]
    path = autoselect.cache_path()
    assert path == tmp_path / "cache" / "backend-choice.json"
    key = autoselect.cache_key(m, TWO, None)
    entry = {"key": key, "model": "m", "choice": "tflite-int8", "figures": {}, "measured_at": "2026-01-01T00:00:00Z"}
    assert autoselect.store(entry) is None
    doc = json.loads(path.read_text())
    assert doc["schema"] == autoselect.CACHE_SCHEMA and list(doc["entries"]) == [autoselect.key_id(key)]
    assert autoselect.lookup(key) == entry
    assert autoselect.lookup({**key, "threads": 3}) is None  # another key
    foreign = {**entry, "choice": "keras"}  # a choice that is not among the candidates is no hit
    autoselect.store(foreign)
    assert autoselect.lookup(key) is None
    for text in ("{not json", json.dumps({"schema": "other", "entries": {}}), json.dumps({"schema": autoselect.CACHE_SCHEMA,
                                                                                       "entries": []}), "[]"):
        path.write_text(text)
        assert autoselect.cached_entries() == [] and autoselect.lookup(key) is None
    for i in range(autoselect.MAX_ENTRIES + 3):  # only the newest MAX_ENTRIES are kept
        autoselect.store({**entry, "key": {**key, "threads": i}, "measured_at": f"2026-01-01T00:00:{i:02d}Z"})
    kept = autoselect.cached_entries()
    assert len(kept) == autoselect.MAX_ENTRIES and kept[0]["key"]["threads"] == autoselect.MAX_ENTRIES + 2
    assert kept[-1]["key"]["threads"] == 3  # newest first, the three oldest gone
    monkeypatch.setenv("CIFARBENCH_CACHE_DIR", str(path / "sub"))  # a file where the directory should be
    assert autoselect.store(entry).startswith("not cached (")


def test_cached_choice_for_info(world: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    m = world["m"]
    monkeypatch.setattr(backends, "auto_candidates", lambda manifest, device="cpu": dict(TWO))
    none = autoselect.cached_choice(m)
    assert none["choice"] is None and none["candidates"] == list(TWO) and none["how"].startswith("not measured yet")
    sel = autoselect.choose(m, TWO, None)
    shown = autoselect.cached_choice(m)
    assert (shown["choice"], shown["how"], shown["figures"]) == (sel.name, "measured", sel.figures)
    assert shown["cache"] == str(autoselect.cache_path()) and shown["measured_at"] and shown["probe_s"] > 0
    monkeypatch.setattr(backends, "auto_candidates", lambda manifest, device="cpu": {"onnx-int8": "cpu"})
    assert autoselect.cached_choice(m) == {"choice": "onnx-int8", "how": "only candidate"}


def test_the_probe_runs_the_models_input_and_records_in_its_own_terms(world: dict[str, Any],
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    import re

    m = world["m"]
    Fake.shapes.clear()
    world["costs"].update({"onnx-int8": 0.0005, "tflite-int8": 0.008})  # now onnx-int8 is the faster one
    sel = autoselect.choose(m, {"onnx-int8": "gpu", "tflite-int8": "cpu"}, 2, batch=4)
    assert (sel.name, sel.device) == ("onnx-int8", "gpu")  # the measured fastest, not the first by name
    assert Fake.shapes == {((32, 32, 3), "uint8")}  # uint8 RGB at the model's input size
    assert sorted(world["loads"]) == [("onnx-int8", "gpu", 2), ("tflite-int8", "cpu", 2)]  # device and threads
    assert "; " not in sel.note.split(")")[-1]  # cached fine: no "not cached" tail
    (entry,) = autoselect.cached_entries()
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", entry["measured_at"])
    assert 0 < entry["probe_s"] < 2.9 and entry["probe_s"] == round(entry["probe_s"], 3)
    hit = autoselect.choose(m, {"onnx-int8": "gpu", "tflite-int8": "cpu"}, 2, batch=4)
    assert (hit.how, hit.device) == ("cached", "gpu")
    off = autoselect.choose(m, {"onnx-int8": "gpu", "tflite-int8": "cpu"}, 2, allow_probe=False)
    assert off.device == "gpu"
    world["costs"].clear()
    failed = autoselect.choose(m, {"onnx-int8": "gpu", "tflite-int8": "cpu"}, 3, batch=4)
    assert (failed.how, failed.device) == ("fallback", "gpu")
    world["costs"].update({"onnx-int8": 0.001})
    monkeypatch.setenv("CIFARBENCH_CACHE_DIR", str(autoselect.cache_path()))  # a file where the directory goes
    unwritable = autoselect.choose(m, {"onnx-int8": "cpu"}, 4, batch=4)
    assert unwritable.how == "measured" and "; not cached (" in unwritable.note
