"""GPU availability per runtime, checked without importing TensorFlow unless the keras backend asks."""

from __future__ import annotations

from typing import Any

from cifarbench.sysinfo import nvidia_gpus


def gpu_unavailable_reason(spec: Any) -> str | None:
    if spec.requires == "onnxruntime":
        import onnxruntime as ort

        if "CUDAExecutionProvider" not in ort.get_available_providers():
            return "onnxruntime has no CUDAExecutionProvider (install the gpu extra: see README, 'GPU')"
        if not nvidia_gpus():
            return "no NVIDIA GPU found (nvidia-smi lists none)"
        return None
    if spec.requires == "tensorflow":
        if not nvidia_gpus():
            return "no NVIDIA GPU found (nvidia-smi lists none)"
        import tensorflow as tf

        if not tf.config.list_physical_devices("GPU"):
            return "TensorFlow sees no GPU (CUDA libraries missing?)"
        return None
    return f"{spec.name} has no GPU support"
