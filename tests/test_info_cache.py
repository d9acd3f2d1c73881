"""`info` lists every cached `auto` choice (per batch size and thread count) with when it was measured."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cifarbench.backends import autoselect
from cifarbench.sysinfo import cpu_info, package_versions
from conftest import run_cli


def _entry(model: str, choice: str, batch: int, threads: int | None, when: str, cpu: str | None = None,
           cores: int | None = None, flags: list[str] | None = None) -> dict:
    here = cpu_info()  # this machine as the probe records it, so an entry is one `auto` would really use
    key = {"cpu": cpu or here["model"], "flags": sorted(f for f, on in here["flags"].items() if on) if flags is None
           else flags, "usable_cores": here["usable_cores"] if cores is None else cores, "versions": package_versions(),
           "threads": threads, "batch": batch,
           "candidates": {"onnx-int8": {"device": "cpu", "sha256": "a"}, "tflite-int8": {"device": "cpu", "sha256": "b"}}}
    figures = {"onnx-int8": {"images_per_s": 1234.0, "batch1_ms": 0.5}, "tflite-int8": {"images_per_s": 987.0,
                                                                                        "batch1_ms": 0.4}}
    return {"key": key, "model": model, "choice": choice, "figures": figures, "failed": {}, "probe_s": 1.0,
            "measured_at": when}


def test_info_lists_every_cached_choice(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CIFARBENCH_CACHE_DIR", str(tmp_path))
    entries = [_entry("flagship", "onnx-int8", 256, None, "2026-01-02T03:04:05Z"),
               _entry("flagship", "tflite-int8", 1, 1, "2026-01-03T03:04:05Z"),
               _entry("baseline-cnn", "onnx-int8", 64, 2, "2026-01-01T00:00:00Z", cpu="Some Other CPU")]
    for e in entries:
        assert autoselect.store(e) is None
    info = json.loads(run_cli("info", "--json").stdout)
    got = info["auto_cache"]
    assert [(c["model"], c["choice"], c["batch_size"], c["threads"], c["measured_at"]) for c in got] == [
        ("flagship", "tflite-int8", 1, 1, "2026-01-03T03:04:05Z"),  # newest first
        ("flagship", "onnx-int8", 256, None, "2026-01-02T03:04:05Z"),
        ("baseline-cnn", "onnx-int8", 64, 2, "2026-01-01T00:00:00Z")]
    assert [c["current"] for c in got] == [True, True, False]
    text = run_cli("info").stdout
    assert "flagship: tflite-int8, 987 img/s (batch 1, threads 1, cpu), measured 2026-01-03T03:04:05Z" in text
    assert "flagship: onnx-int8, 1,234 img/s (batch 256, threads default, cpu), measured 2026-01-02T03:04:05Z" in text
    assert "baseline-cnn: onnx-int8" in text and "another CPU, core count or package versions" in text


def test_info_says_when_nothing_is_cached(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CIFARBENCH_CACHE_DIR", str(tmp_path))
    assert json.loads(run_cli("info", "--json").stdout)["auto_cache"] == []
    assert "cached auto choices" in run_cli("info").stdout


def test_an_entry_from_another_core_count_or_flag_set_is_not_current(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """`current` is whether `auto` would use the entry here: the oracle is autoselect.lookup on the entry's key with
    this machine's fields (the CPU model
    and versions alone are not enough: a run under taskset, or with other CPU flags, keys its own probe)."""
    monkeypatch.setenv("CIFARBENCH_CACHE_DIR", str(tmp_path))
    cores = cpu_info()["usable_cores"]
    entries = [_entry("flagship", "onnx-int8", 1, None, "2026-01-03T00:00:00Z"),
               _entry("flagship", "onnx-int8", 2, None, "2026-01-02T00:00:00Z", cores=cores + 1),
               _entry("flagship", "onnx-int8", 4, None, "2026-01-01T00:00:00Z", flags=["no-such-flag"])]
    for e in entries:
        assert autoselect.store(e) is None
    got = {c["batch_size"]: c["current"] for c in json.loads(run_cli("info", "--json").stdout)["auto_cache"]}
    machine = _entry("x", "onnx-int8", 1, None, "")["key"]  # this machine's fields, from cpu_info directly
    here = {k: machine[k] for k in ("cpu", "flags", "usable_cores", "versions")}
    used = {e["key"]["batch"]: autoselect.lookup({**e["key"], **here}) is not None for e in entries}
    assert used == {1: True, 2: False, 4: False}  # the oracle itself sees both kinds
    assert got == used
