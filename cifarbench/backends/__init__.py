"""One backend protocol, one registry (timm-style), one place that chooses: ``select(manifest, name, device)``.

Each runtime lives in its own short module, imported only when its backend is
checked or loaded, so the onnx and tflite paths never import TensorFlow. A module owns
``load(spec, manifest, device, threads)`` and, optionally, ``unavailable(spec, manifest, device)``
(why it cannot run on that device, or None); missing packages and artifacts are checked here.
Classify, bench and serve take their backend from ``select``; ``auto`` is measured
(cifarbench.backends.autoselect) and cached per machine.
"""

from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from cifarbench.errors import BackendUnavailable, UsageError
from cifarbench.models.manifest import Manifest

DEVICES = ("cpu", "gpu", "auto")


class Backend(Protocol):
    name: str
    device: str  # the device actually used: "cpu" or "gpu"

    def predict(self, batch: np.ndarray) -> np.ndarray:
        """uint8 NHWC (N, H, W, 3) RGB at the manifest's input size -> float32 (N, classes) probabilities.

        Anything else (float pixels, another size, a list) raises ``BatchError`` (see backends.checks).
        """
        ...

    def describe(self) -> dict[str, Any]:
        """Runtime, version, providers/delegates, threads: for reports."""
        ...


@dataclass(frozen=True)
class BackendSpec:
    name: str
    module: str  # cifarbench.backends.<module>
    format: str  # artifact format in the manifest
    requires: str  # top-level import that must be present
    gpu: bool  # can it run on a GPU at all
    description: str
    probe: bool = True  # may `auto` measure it? (keras: no, importing TensorFlow alone takes seconds)

    @property
    def int8(self) -> bool:
        return self.format.endswith("int8")

    @property
    def module_path(self) -> str:
        """Dotted module: relative names live in cifarbench.backends, dotted ones anywhere (plug-ins, tests)."""
        return self.module if "." in self.module else f"cifarbench.backends.{self.module}"


BACKENDS: dict[str, BackendSpec] = {}


def register(spec: BackendSpec) -> None:
    BACKENDS[spec.name] = spec


register(BackendSpec("keras", "keras_backend", "keras", "tensorflow", True, "Keras 3 model.predict (TensorFlow)",
                     probe=False))
register(BackendSpec("tflite", "tflite", "tflite", "ai_edge_litert", False, "LiteRT float32"))
register(BackendSpec("tflite-fp16", "tflite", "tflite-fp16", "ai_edge_litert", False, "LiteRT float16 weights"))
register(BackendSpec("tflite-int8", "tflite", "tflite-int8", "ai_edge_litert", False, "LiteRT full-integer int8"))
register(BackendSpec("onnx", "onnx_backend", "onnx", "onnxruntime", True, "onnxruntime float32"))
register(BackendSpec("onnx-int8", "onnx_backend", "onnx-int8", "onnxruntime", True, "onnxruntime int8 QDQ"))
# OpenVINO reads the same ONNX files; `openvino` runs the runtime's default precision (bf16 on CPUs with native
# bf16), `openvino-f32` pins f32. GPU: OpenVINO's own GPU plugin (Intel GPUs), checked in the module.
register(BackendSpec("openvino", "openvino_backend", "onnx", "openvino", True, "OpenVINO float32 model, runtime-default precision"))
register(BackendSpec("openvino-f32", "openvino_backend", "onnx", "openvino", True, "OpenVINO float32 model, f32 inference"))
register(BackendSpec("openvino-int8", "openvino_backend", "onnx-int8", "openvino", True, "OpenVINO int8 QDQ"))

# Fallback preference when `auto` cannot measure (cifarbench.backends.autoselect puts tflite-int8 first on VNNI CPUs):
# onnx-int8 runs 1.8x the img/s of tflite-int8 on an AVX2 CPU without VNNI (benchmarks/results).
DEFAULT_ORDER = ("onnx-int8", "tflite-int8", "onnx", "tflite", "tflite-fp16", "keras")


def get_spec(name: str) -> BackendSpec:
    try:
        return BACKENDS[name]
    except KeyError:
        raise UsageError(f"unknown backend {name!r}; choose from {', '.join(BACKENDS)}") from None


def unavailable_reason(name: str, manifest: Manifest | None = None, device: str = "cpu") -> str | None:
    """Why ``name`` cannot run here (missing package, artifact or device), or None if it can."""
    spec = get_spec(name)
    # The artifact first: with no keras file, "install tensorflow" would send the user after the wrong fix.
    if manifest is not None and spec.format not in manifest.artifacts:
        return f"model {manifest.name!r} has no {spec.format} artifact"
    if importlib.util.find_spec(spec.requires) is None:
        if spec.requires == "tensorflow":
            return "tensorflow is not installed (pip install 'cifarbench[train]')"
        if spec.requires == "openvino":
            return "openvino is not installed (pip install 'cifarbench[openvino]')"
        return f"{spec.requires} is not installed"
    if device == "gpu" and not spec.gpu:
        return f"{name} runs on the CPU only (its runtime has no GPU support here)"
    check = getattr(importlib.import_module(spec.module_path), "unavailable", None)
    return check(spec, manifest, device) if check else None


def resolve_device(name: str, manifest: Manifest | None, device: str) -> str:
    """``auto`` -> gpu when ``name`` can use one here, else cpu; cpu/gpu unchanged."""
    if device not in DEVICES:
        raise UsageError(f"unknown device {device!r}; choose from {', '.join(DEVICES)}")
    if device != "auto":
        return device
    return "gpu" if get_spec(name).gpu and unavailable_reason(name, manifest, "gpu") is None else "cpu"


@dataclass(frozen=True)
class Selection:
    """The backend a run uses, the device it runs on, and how it was chosen (for notes, reports, info)."""

    name: str
    device: str  # resolved: cpu or gpu
    how: str  # named | only | measured | cached | fallback
    note: str = ""  # one line saying why, for stderr and reports
    figures: dict[str, Any] = field(default_factory=dict)  # probe figures per candidate (measured/cached)

    @property
    def spec(self) -> BackendSpec:
        return get_spec(self.name)

    def load(self, manifest: Manifest, threads: int | None = None) -> Backend:
        return load_backend(self.name, manifest, self.device, threads)


def select(manifest: Manifest, name: str | None = None, device: str = "cpu", threads: int | None = None,
           probe: bool = True, batch_size: int | None = None) -> Selection:
    """The one place a backend is chosen: ``name`` None or ``auto`` means the fastest one measured here.

    ``batch_size`` is the batch the caller will send: ``auto`` ranks the candidates at that size.

    Raises UsageError for an unknown name or device, BackendUnavailable (with the reason) when
    the named backend, or every backend, cannot run ``manifest`` on ``device``.
    """
    if device not in DEVICES:
        raise UsageError(f"unknown device {device!r}; choose from {', '.join(DEVICES)}")
    if name not in (None, "auto"):
        get_spec(name)
        dev = resolve_device(name, manifest, device)
        reason = unavailable_reason(name, manifest, dev)
        if reason:
            raise BackendUnavailable(f"backend {name} unavailable: {reason}")
        return Selection(name, dev, "named")
    candidates = auto_candidates(manifest, device)
    if len(candidates) == 1:
        (only, dev), = candidates.items()
        return Selection(only, dev, "only", f"{only}: the only candidate here")
    from cifarbench.backends import autoselect

    return autoselect.choose(manifest, candidates, threads, probe, batch_size or autoselect.PROBE_BATCH)


def auto_candidates(manifest: Manifest, device: str = "cpu") -> dict[str, str]:
    """What ``auto`` chooses among (name -> device): the int8 backends that can run here, else any; on CPUs with
    native bf16 also the bf16 ``openvino`` row, which autoselect keeps only if its accuracy guard passes
    (cifarbench.backends.bf16guard)."""
    devices = {n: resolve_device(n, manifest, device) for n in BACKENDS}
    ok = [n for n in BACKENDS if unavailable_reason(n, manifest, devices[n]) is None]
    if not ok:  # say why for each backend the model has an artifact for (e.g. the missing CUDA provider)
        why = "; ".join(f"{n}: {unavailable_reason(n, manifest, devices[n])}" for n in BACKENDS
                        if BACKENDS[n].format in manifest.artifacts)
        raise BackendUnavailable(f"no backend can run model {manifest.name!r} on device {device} here "
                                 f"({why or 'artifacts: ' + (', '.join(manifest.artifacts) or 'none')})")
    probeable = [n for n in ok if BACKENDS[n].probe]
    chosen = [n for n in probeable if BACKENDS[n].int8]
    if chosen:
        from cifarbench.backends.bf16guard import BF16_BACKEND, native_bf16
        from cifarbench.sysinfo import cpu_info

        if BF16_BACKEND in probeable and devices[BF16_BACKEND] == "cpu" and native_bf16(cpu_info()["flags"]):
            chosen.append(BF16_BACKEND)
    return {n: devices[n] for n in (chosen or probeable or ok)}


def default_backend(manifest: Manifest, device: str = "cpu") -> str:
    """The name ``select`` picks for ``manifest`` (kept for scripts)."""
    return select(manifest, None, device).name


def load_backend(name: str, manifest: Manifest, device: str = "cpu", threads: int | None = None,
                 options: Any = None) -> Backend:
    """Load ``manifest``'s artifact for backend ``name`` on ``device`` ("auto": GPU when usable).

    ``options``: a cifarbench.backends.options.RuntimeOptions (runtime tuning, profiling); None keeps the defaults.
    """
    spec = get_spec(name)
    device = resolve_device(name, manifest, device)
    reason = unavailable_reason(name, manifest, device)
    if reason:
        raise BackendUnavailable(f"backend {name} unavailable: {reason}")
    module = importlib.import_module(spec.module_path)
    if options is None or not options.as_dict():
        return module.load(spec, manifest, device, threads)
    import inspect

    if "options" not in inspect.signature(module.load).parameters:  # a plug-in written before runtime options
        raise UsageError(f"backend {name} takes no runtime options (asked: {', '.join(options.as_dict())})")
    return module.load(spec, manifest, device, threads, options=options)
