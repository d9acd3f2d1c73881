"""Keras 3 on TensorFlow: the reference backend. Imports TensorFlow (seconds, ~750 MB)."""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from cifarbench.backends.checks import check_batch, check_outputs
from cifarbench.errors import ModelError, first_line
from cifarbench.models.manifest import InputContract, Manifest
from cifarbench.models.tfquiet import framework_logs, quiet_tensorflow


class KerasBackend:
    def __init__(self, name: str, path: str, device: str, threads: int | None, contract: InputContract, details: dict) -> None:
        # absl's pre-init lines ("All log messages before absl::InitializeLog()", "Could not find cuda drivers",
        # oneDNN's notice) ignore TF_CPP_MIN_LOG_LEVEL and went past `classify -q` and into serve's log: the import
        # and load run with native stderr hidden (CIFARBENCH_VERBOSE_FRAMEWORKS=1 shows them).
        with framework_logs(verbose=os.environ.get("CIFARBENCH_VERBOSE_FRAMEWORKS") == "1"):
            self._load(name, path, device, threads, contract, details)

    def _load(self, name: str, path: str, device: str, threads: int | None, contract: InputContract,
              details: dict) -> None:
        quiet_tensorflow()
        import tensorflow as tf

        if device == "cpu":
            try:
                tf.config.set_visible_devices([], "GPU")
            except RuntimeError:  # already initialised
                pass
        if threads:
            try:
                tf.config.threading.set_intra_op_parallelism_threads(threads)
                tf.config.threading.set_inter_op_parallelism_threads(1)
            except RuntimeError:
                pass
        import keras

        from cifarbench.models.kerasio import apply_preprocess, load_keras_model

        self.model = load_keras_model(path, unsafe=bool(details.get("unsafe")))
        self.name, self.device, self.threads = name, device, threads
        self.version = keras.__version__
        # A foreign model gets the same preprocessing, resize and softmax that convert baked into its artifacts.
        steps, size, softmax = contract.steps, contract.model_input_size, contract.softmax_added

        def forward(x: Any) -> Any:
            x = tf.cast(x, tf.float32)
            if size:
                x = tf.image.resize(x, size, method="bilinear")
            y = tf.cast(self.model(apply_preprocess(x, steps), training=False), tf.float32)
            return tf.nn.softmax(y) if softmax else y

        self._fn = tf.function(forward, reduce_retracing=True)
        self.size = tuple(contract.size)
        try:
            self.n_outputs: Any = self.model.output_shape[-1]
        except Exception:  # a SavedModel wrapper: no static shape
            self.n_outputs = None

    def predict(self, batch: np.ndarray) -> np.ndarray:
        return np.asarray(self._fn(np.ascontiguousarray(check_batch(batch, self.size, self.name))), dtype=np.float32)

    def describe(self) -> dict[str, Any]:
        return {"runtime": "keras", "version": self.version, "threads": self.threads, "device": self.device}


def unavailable(spec: Any, manifest: Manifest | None, device: str) -> str | None:
    """On a GPU: an NVIDIA GPU TensorFlow can see (checked last: it imports TensorFlow)."""
    if device != "gpu":
        return None
    from cifarbench.sysinfo import nvidia_gpus

    if not nvidia_gpus():
        return "no NVIDIA GPU found (nvidia-smi lists none)"
    import tensorflow as tf

    if not tf.config.list_physical_devices("GPU"):
        return "TensorFlow sees no GPU (CUDA libraries missing?)"
    return None


def load(spec: Any, manifest: Manifest, device: str, threads: int | None) -> KerasBackend:
    try:
        be = KerasBackend(spec.name, str(manifest.verify(spec.format)), device, threads, manifest.input,
                          manifest.artifacts[spec.format].details)
    except ModelError:
        raise
    except Exception as exc:
        raise ModelError(f"keras cannot load {manifest.name}: {first_line(exc)}") from None
    check_outputs(be.n_outputs, manifest.classes, f"{manifest.name} (keras)")
    return be
