"""cifarbench: train, convert, classify and benchmark CIFAR-10 CNNs across runtimes."""

import os as _os

__version__ = "0.1.0"

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
