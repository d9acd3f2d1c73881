"""One backend protocol, one registry (timm-style): ``load_backend(name, manifest, device, threads)``.

Each runtime lives in its own short module, imported only when its backend is
loaded, so the onnx and tflite paths never import TensorFlow.
"""

from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from cifarbench.errors import BackendUnavailable, UsageError
from cifarbench.manifest import Manifest

DEVICES = ("cpu", "gpu", "auto")


class Backend(Protocol):
    name: str
    device: str  # the device actually used: "cpu" or "gpu"

    def predict(self, batch: np.ndarray) -> np.ndarray:
        """uint8 NHWC (N, 32, 32, 3) RGB -> float32 (N, classes) probabilities."""
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


BACKENDS: dict[str, BackendSpec] = {}


def register(spec: BackendSpec) -> None:
    BACKENDS[spec.name] = spec


register(BackendSpec("keras", "keras_backend", "keras", "tensorflow", True, "Keras 3 model.predict (TensorFlow)"))
register(BackendSpec("tflite", "tflite", "tflite", "ai_edge_litert", False, "LiteRT float32"))
register(BackendSpec("tflite-fp16", "tflite", "tflite-fp16", "ai_edge_litert", False, "LiteRT float16 weights"))
register(BackendSpec("tflite-int8", "tflite", "tflite-int8", "ai_edge_litert", False, "LiteRT full-integer int8"))
register(BackendSpec("onnx", "onnx_backend", "onnx", "onnxruntime", True, "onnxruntime float32"))
register(BackendSpec("onnx-int8", "onnx_backend", "onnx-int8", "onnxruntime", True, "onnxruntime int8 QDQ"))

# Preference when the user names no backend: the fastest int8 first (measured in benchmarks/results:
# onnx-int8 runs 1.8x the img/s of tflite-int8 on an AVX2 CPU without VNNI).
DEFAULT_ORDER = ("onnx-int8", "tflite-int8", "onnx", "tflite", "tflite-fp16", "keras")


def get_spec(name: str) -> BackendSpec:
    try:
        return BACKENDS[name]
    except KeyError:
        raise UsageError(f"unknown backend {name!r}; choose from {', '.join(BACKENDS)}") from None


def unavailable_reason(name: str, manifest: Manifest | None = None, device: str = "cpu") -> str | None:
    """Why ``name`` cannot run here (missing package, artifact or device), or None if it can."""
    spec = get_spec(name)
    if importlib.util.find_spec(spec.requires) is None:
        extra = "train" if spec.requires == "tensorflow" else spec.requires
        return f"{spec.requires} is not installed (pip install 'cifarbench[{extra}]')" if extra == "train" else f"{spec.requires} is not installed"
    if manifest is not None and spec.format not in manifest.artifacts:
        return f"model {manifest.name!r} has no {spec.format} artifact"
    if device == "gpu":
        if not spec.gpu:
            return f"{name} runs on the CPU only (LiteRT has no GPU delegate for desktop Linux here)"
        from cifarbench.backends import devices

        return devices.gpu_unavailable_reason(spec)
    return None


def default_backend(manifest: Manifest, device: str = "cpu") -> str:
    for name in DEFAULT_ORDER:
        if unavailable_reason(name, manifest, "cpu" if device == "auto" else device) is None:
            return name
    raise BackendUnavailable(f"no backend can run model {manifest.name!r} here (artifacts: {', '.join(manifest.artifacts)})")


def load_backend(name: str, manifest: Manifest, device: str = "cpu", threads: int | None = None) -> Backend:
    """Load ``manifest``'s artifact for backend ``name`` on ``device`` ("auto": GPU when usable)."""
    if device not in DEVICES:
        raise UsageError(f"unknown device {device!r}; choose from {', '.join(DEVICES)}")
    spec = get_spec(name)
    if device == "auto":
        device = "gpu" if unavailable_reason(name, manifest, "gpu") is None else "cpu"
    reason = unavailable_reason(name, manifest, device)
    if reason:
        raise BackendUnavailable(f"backend {name} unavailable: {reason}")
    module = importlib.import_module(f"cifarbench.backends.{spec.module}")
    return module.load(spec, manifest, device, threads)
