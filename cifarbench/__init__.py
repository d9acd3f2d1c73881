"""cifarbench: train, convert, classify and benchmark image classifiers across runtimes.

The Python API (``cifarbench.api``): ``load(model, backend="auto")`` -> a Model with ``predict(pixels)`` and
``classify(paths)``; ``bench(models, backends, ...)`` -> BenchResults; ``load_image(path, size)``. They are
imported on first use, so ``import cifarbench`` loads no runtime, no numpy and never TensorFlow.
"""

from typing import Any

import os as _os

__version__ = "0.1.0"
__all__ = ["load", "bench", "load_image", "Model", "BenchResults", "CIFAR10_CLASSES", "__version__"]
_API = ("load", "load_image", "Model", "BenchResults")

# onnxruntime (>= 1.2x) keeps a telemetry store in ~/.cache/Microsoft/DeveloperTools/ from its first session
# on: off for every session and quantization this process (and its workers: the variable is inherited) makes,
# as for OpenVINO; read when onnxruntime creates its environment, so setting it on import is early enough.
_os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")

CIFAR10_CLASSES: tuple[str, ...] = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)


def __getattr__(name: str) -> Any:
    """The API's names, imported on first use (PEP 562)."""
    if name in _API:
        from cifarbench import api

        return getattr(api, name)
    if name == "bench":  # the subpackage, which is callable: cifarbench.bench(...) runs api.bench
        import cifarbench.bench as bench_pkg

        return bench_pkg
    raise AttributeError(f"module 'cifarbench' has no attribute {name!r}")
