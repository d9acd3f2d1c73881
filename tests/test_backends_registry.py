"""backends' registry and ``select`` on a registry of test doubles: every reason, device and choice, no model file."""

from __future__ import annotations

import sys
import types
from pathlib import Path
from typing import Any

import pytest

from cifarbench import backends
from cifarbench.backends import BackendSpec
from cifarbench.errors import BackendUnavailable, UsageError
from cifarbench.models.manifest import Manifest

MOD = "cifarbench_test_plugins.registry_double"


@pytest.fixture
def reg(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> dict[str, Any]:
    """An empty registry, a plug-in module whose ``unavailable`` answers from ``why`` and whose loads are recorded,
    and a manifest with an onnx and an onnx-int8 artifact."""
    state: dict[str, Any] = {"why": {}, "checked": [], "loads": []}
    mod = types.ModuleType(MOD)

    def unavailable(spec: BackendSpec, manifest: Manifest | None, device: str) -> str | None:
        state["checked"].append((spec.name, device))
        if manifest is not state["manifest"]:  # the double knows its model: another (or none) is an error to see
            return f"asked about {manifest!r}"
        return state["why"].get((spec.name, device))

    def load(spec: BackendSpec, manifest: Manifest, device: str, threads: int | None, options: Any = None) -> Any:
        state["loads"].append((spec.name, manifest, device, threads, {"options": options} if options else {}))
        return "loaded"

    mod.unavailable = unavailable  # type: ignore[attr-defined]
    mod.load = load  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, MOD, mod)
    monkeypatch.setattr(backends, "BACKENDS", {})
    m = Manifest(name="tiny", arch="fake", directory=tmp_path)
    for fmt in ("onnx", "onnx-int8"):
        (tmp_path / f"{fmt}.bin").write_bytes(b"x")
        m.add_artifact(fmt, f"{fmt}.bin")
    state["manifest"] = m
    return state


def spec(name: str, fmt: str = "onnx", requires: str = "numpy", gpu: bool = False, probe: bool = True,
         module: str = MOD) -> BackendSpec:
    s = BackendSpec(name, module, fmt, requires, gpu, f"{name} double", probe=probe)
    backends.register(s)
    return s


def test_spec_properties_and_register() -> None:
    s = BackendSpec("a", "onnx_backend", "onnx-int8", "numpy", False, "d")
    assert s.int8 and s.probe and s.module_path == "cifarbench.backends.onnx_backend"
    assert not BackendSpec("a", "x.y", "tflite-fp16", "numpy", False, "d").int8
    assert BackendSpec("a", "x.y", "int8-ish", "numpy", False, "d").module_path == "x.y"


def test_the_shipped_registry() -> None:
    b = backends.BACKENDS
    assert list(b) == ["keras", "tflite", "tflite-fp16", "tflite-int8", "onnx", "onnx-int8", "openvino",
                       "openvino-f32", "openvino-int8"]
    assert [n for n in b if b[n].int8] == ["tflite-int8", "onnx-int8", "openvino-int8"]
    assert [n for n in b if b[n].gpu] == ["keras", "onnx", "onnx-int8", "openvino", "openvino-f32", "openvino-int8"]
    assert [n for n in b if not b[n].probe] == ["keras"]
    assert {n: (s.module, s.format, s.requires) for n, s in b.items()} == {
        "keras": ("keras_backend", "keras", "tensorflow"), "tflite": ("tflite", "tflite", "ai_edge_litert"),
        "tflite-fp16": ("tflite", "tflite-fp16", "ai_edge_litert"), "tflite-int8": ("tflite", "tflite-int8", "ai_edge_litert"),
        "onnx": ("onnx_backend", "onnx", "onnxruntime"), "onnx-int8": ("onnx_backend", "onnx-int8", "onnxruntime"),
        "openvino": ("openvino_backend", "onnx", "openvino"), "openvino-f32": ("openvino_backend", "onnx", "openvino"),
        "openvino-int8": ("openvino_backend", "onnx-int8", "openvino")}
    assert backends.DEFAULT_ORDER == ("onnx-int8", "tflite-int8", "onnx", "tflite", "tflite-fp16", "keras")
    assert backends.DEVICES == ("cpu", "gpu", "auto")


def test_get_spec_and_the_unknown_name(reg: dict[str, Any]) -> None:
    a = spec("a")
    spec("b")
    assert backends.get_spec("a") is a
    with pytest.raises(UsageError) as err:
        backends.get_spec("zz")
    assert str(err.value) == "unknown backend 'zz'; choose from a, b" and err.value.__cause__ is None
    assert err.value.__suppress_context__


def test_unavailable_reasons_in_order(reg: dict[str, Any]) -> None:
    m = reg["manifest"]
    spec("noart", fmt="tflite")
    assert backends.unavailable_reason("noart", m) == "model 'tiny' has no tflite artifact"
    assert backends.unavailable_reason("noart", None) == "asked about None"  # no manifest: no artifact check
    spec("tf", requires="cifarbench_no_such_pkg_tf")
    spec("tf2", requires="tensorflow")
    spec("ov", requires="openvino")
    spec("other", requires="cifarbench_no_such_pkg")
    real = backends.importlib.util.find_spec
    missing = {"tensorflow", "openvino", "cifarbench_no_such_pkg", "cifarbench_no_such_pkg_tf"}
    backends.importlib.util.find_spec = lambda n, *a: None if n in missing else real(n, *a)  # type: ignore[assignment]
    try:
        assert backends.unavailable_reason("tf2", m) == "tensorflow is not installed (pip install 'cifarbench[train]')"
        assert backends.unavailable_reason("ov", m) == "openvino is not installed (pip install 'cifarbench[openvino]')"
        assert backends.unavailable_reason("other", m) == "cifarbench_no_such_pkg is not installed"
    finally:
        backends.importlib.util.find_spec = real  # type: ignore[assignment]
    spec("cpuonly")
    reg["checked"].clear()
    assert backends.unavailable_reason("cpuonly", m, "gpu") == "cpuonly runs on the CPU only (its runtime has no GPU support here)"
    assert reg["checked"] == []  # refused before the module is asked
    assert backends.unavailable_reason("cpuonly", m, "cpu") is None and reg["checked"] == [("cpuonly", "cpu")]
    spec("gpuok", gpu=True)
    reg["why"][("gpuok", "gpu")] = "no such GPU"
    assert backends.unavailable_reason("gpuok", m, "gpu") == "no such GPU"
    assert backends.unavailable_reason("gpuok", m) is None and reg["checked"][-1] == ("gpuok", "cpu")  # cpu default
    noop = types.ModuleType("cifarbench_test_plugins.no_check")
    sys.modules[noop.__name__] = noop
    try:
        spec("nocheck", module=noop.__name__)
        assert backends.unavailable_reason("nocheck", m, "gpu") is not None
        assert backends.unavailable_reason("nocheck", m, "cpu") is None
    finally:
        del sys.modules[noop.__name__]


def test_resolve_device(reg: dict[str, Any]) -> None:
    m = reg["manifest"]
    spec("cpuonly")
    spec("gpu", gpu=True)
    spec("gpubusy", gpu=True)
    reg["why"][("gpubusy", "gpu")] = "no GPU"
    assert [backends.resolve_device(n, m, "auto") for n in ("cpuonly", "gpu", "gpubusy")] == ["cpu", "gpu", "cpu"]
    assert backends.resolve_device("cpuonly", m, "gpu") == "gpu" and backends.resolve_device("gpu", m, "cpu") == "cpu"
    with pytest.raises(UsageError) as err:
        backends.resolve_device("gpu", m, "tpu")
    assert str(err.value) == "unknown device 'tpu'; choose from cpu, gpu, auto"
    assert ("gpu", "gpu") in reg["checked"]


def test_select_named(reg: dict[str, Any]) -> None:
    m = reg["manifest"]
    spec("a", gpu=True)
    assert backends.select(m, "a", "auto") == backends.Selection("a", "gpu", "named")
    assert backends.select(m, "a") == backends.Selection("a", "cpu", "named", "", {})
    reg["why"][("a", "gpu")] = "driver missing"
    with pytest.raises(BackendUnavailable) as err:
        backends.select(m, "a", "gpu")
    assert str(err.value) == "backend a unavailable: driver missing"
    assert backends.select(m, "a", "auto").device == "cpu"
    for bad in ("tpu", "CPU", ""):
        with pytest.raises(UsageError, match=f"^unknown device '{bad}'; choose from cpu, gpu, auto$"):
            backends.select(m, "a", bad)
    with pytest.raises(UsageError, match="^unknown backend 'zz'"):
        backends.select(m, "zz")


@pytest.mark.parametrize("name", [None, "auto"])
def test_select_only_candidate(reg: dict[str, Any], name: str | None) -> None:
    spec("a")
    spec("b", fmt="tflite")  # no artifact
    sel = backends.select(reg["manifest"], name)
    assert sel == backends.Selection("a", "cpu", "only", "a: the only candidate here") and sel.figures == {}
    assert sel.spec is backends.BACKENDS["a"]
    assert backends.default_backend(reg["manifest"]) == "a"


def test_select_auto_hands_candidates_and_batch_to_autoselect(reg: dict[str, Any],
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    from cifarbench.backends import autoselect

    spec("a", fmt="onnx-int8")
    spec("b", fmt="onnx-int8", gpu=True)
    got: list[tuple] = []
    monkeypatch.setattr(autoselect, "choose", lambda *a: got.append(a) or "chosen")
    m = reg["manifest"]
    assert backends.select(m, None, "auto", 3, False, 64) == "chosen"
    assert got[-1] == (m, {"a": "cpu", "b": "gpu"}, 3, False, 64)
    assert backends.select(m) == "chosen"
    assert got[-1] == (m, {"a": "cpu", "b": "cpu"}, None, True, autoselect.PROBE_BATCH)


def test_auto_candidates_prefer_probeable_int8(reg: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    from cifarbench import sysinfo

    monkeypatch.setattr(sysinfo, "cpu_info", lambda: {"flags": {"avx512_bf16": False, "amx_bf16": False}})
    m = reg["manifest"]
    spec("f32")
    spec("noprobe8", fmt="onnx-int8", probe=False)
    assert backends.auto_candidates(m) == {"f32": "cpu"}  # no probeable int8: any probeable one
    spec("i8", fmt="onnx-int8")
    spec("i8b", fmt="onnx-int8")
    reg["why"][("i8b", "cpu")] = "broken"
    assert backends.auto_candidates(m) == {"i8": "cpu"}
    monkeypatch.setattr(backends, "BACKENDS", {})
    spec("noprobe", probe=False)
    spec("noprobe2", fmt="onnx-int8", probe=False)
    assert backends.auto_candidates(m) == {"noprobe": "cpu", "noprobe2": "cpu"}  # nothing probeable: every runnable


@pytest.mark.parametrize("flags, device, with_bf16", [
    ({"avx512_bf16": True, "amx_bf16": False}, "cpu", True), ({"avx512_bf16": False, "amx_bf16": True}, "cpu", True),
    ({"avx512_bf16": False, "amx_bf16": False}, "cpu", False), ({"avx512_bf16": True}, "auto", False)])
def test_auto_candidates_add_the_bf16_row_on_native_bf16_cpus(reg: dict[str, Any], monkeypatch: pytest.MonkeyPatch,
                                                              flags: dict, device: str, with_bf16: bool) -> None:
    from cifarbench import sysinfo
    from cifarbench.backends.bf16guard import BF16_BACKEND

    monkeypatch.setattr(sysinfo, "cpu_info", lambda: {"flags": flags})
    spec("i8", fmt="onnx-int8")
    spec(BF16_BACKEND, gpu=True)  # on device auto it resolves to the GPU: no bf16 CPU row then
    got = backends.auto_candidates(reg["manifest"], device)
    assert list(got) == (["i8", BF16_BACKEND] if with_bf16 else ["i8"])
    assert got["i8"] == "cpu"


def test_auto_candidates_bf16_row_must_be_probeable_and_runnable(reg: dict[str, Any],
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from cifarbench import sysinfo
    from cifarbench.backends.bf16guard import BF16_BACKEND

    monkeypatch.setattr(sysinfo, "cpu_info", lambda: {"flags": {"avx512_bf16": True}})
    spec("i8", fmt="onnx-int8")
    spec(BF16_BACKEND, probe=False)
    assert list(backends.auto_candidates(reg["manifest"])) == ["i8"]


def test_no_candidate_says_why_per_artifact(reg: dict[str, Any]) -> None:
    m = reg["manifest"]
    spec("a")
    spec("b", fmt="onnx-int8")
    spec("c", fmt="tflite")  # no artifact: not listed
    reg["why"].update({("a", "cpu"): "a is broken", ("b", "cpu"): "b is broken"})
    with pytest.raises(BackendUnavailable) as err:
        backends.select(m)
    assert str(err.value) == ("no backend can run model 'tiny' on device cpu here (a: a is broken; b: b is broken)")
    m.artifacts = {}
    with pytest.raises(BackendUnavailable) as err:
        backends.auto_candidates(m, "gpu")
    assert str(err.value) == "no backend can run model 'tiny' on device gpu here (artifacts: none)"
    m.artifacts = {"keras": None, "tflite-fp16": None}  # artifacts no registered backend reads
    with pytest.raises(BackendUnavailable, match=r"\(artifacts: keras, tflite-fp16\)$"):
        backends.auto_candidates(m)


def test_load_backend_resolves_checks_and_passes_options(reg: dict[str, Any]) -> None:
    from cifarbench.backends.options import RuntimeOptions

    m = reg["manifest"]
    spec("a", gpu=True)
    assert backends.load_backend("a", m, "auto", 4) == "loaded"
    assert reg["loads"][-1] == ("a", m, "gpu", 4, {})
    assert backends.load_backend("a", m) == "loaded" and reg["loads"][-1] == ("a", m, "cpu", None, {})
    empty = RuntimeOptions()
    assert not empty.as_dict()
    backends.load_backend("a", m, "cpu", 2, options=empty)
    assert reg["loads"][-1] == ("a", m, "cpu", 2, {})  # default options: the plain call
    tuned = RuntimeOptions.from_dict({"ov_hint": "latency"})
    backends.load_backend("a", m, "cpu", 2, options=tuned)
    assert reg["loads"][-1] == ("a", m, "cpu", 2, {"options": tuned})
    assert backends.Selection("a", "gpu", "named").load(m, 5) == "loaded" and reg["loads"][-1][1:4] == (m, "gpu", 5)
    reg["why"][("a", "gpu")] = "no GPU driver"
    with pytest.raises(BackendUnavailable, match="^backend a unavailable: no GPU driver$"):
        backends.load_backend("a", m, "gpu")
    reg["why"][("a", "cpu")] = "gone"
    with pytest.raises(BackendUnavailable) as err:
        backends.load_backend("a", m, "cpu")
    assert str(err.value) == "backend a unavailable: gone"
    with pytest.raises(UsageError):
        backends.load_backend("zz", m)


def test_plug_in_without_options_refuses_tuning(reg: dict[str, Any]) -> None:
    from cifarbench.backends.options import RuntimeOptions

    old = types.ModuleType("cifarbench_test_plugins.old_plugin")
    old.load = lambda spec, manifest, device, threads: "old"  # type: ignore[attr-defined]
    sys.modules[old.__name__] = old
    try:
        spec("old", module=old.__name__)
        assert backends.load_backend("old", reg["manifest"], options=RuntimeOptions()) == "old"
        tuned = RuntimeOptions.from_dict({"ov_hint": "latency", "ov_streams": 2})
        with pytest.raises(UsageError) as err:
            backends.load_backend("old", reg["manifest"], options=tuned)
        assert str(err.value) == "backend old takes no runtime options (asked: ov_hint, ov_streams)"
    finally:
        del sys.modules[old.__name__]


def test_candidates_on_the_gpu_are_checked_on_the_gpu(reg: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    from cifarbench.backends import autoselect

    m = reg["manifest"]
    spec("c", fmt="onnx-int8")  # CPU only
    spec("g", fmt="onnx-int8", gpu=True)
    reg["why"][("g", "cpu")] = "this double runs on its GPU only"
    assert backends.auto_candidates(m, "gpu") == {"g": "gpu"}
    assert backends.auto_candidates(m, "auto") == {"c": "cpu", "g": "gpu"}
    assert backends.default_backend(m, "gpu") == "g"
    monkeypatch.setattr(autoselect, "choose", lambda m, cands, *a: backends.Selection(sorted(cands)[0], "cpu", "x"))
    assert backends.default_backend(m) == "c"
    reg["why"][("g", "gpu")] = "GPU busy"
    with pytest.raises(BackendUnavailable) as err:
        backends.auto_candidates(m, "gpu")
    assert str(err.value) == ("no backend can run model 'tiny' on device gpu here "
                              "(c: c runs on the CPU only (its runtime has no GPU support here); g: GPU busy)")
