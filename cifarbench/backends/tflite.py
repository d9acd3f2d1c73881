"""LiteRT (ai-edge-litert): float32, float16-weight and full-integer int8 .tflite artifacts, CPU only.

LiteRT runs one thread unless told otherwise, so ``threads`` defaults to all usable cores.
The interpreter is resized to each batch size it sees, once.
"""

from __future__ import annotations

import contextlib
import os
import sys
from typing import Any, Iterator

import numpy as np

from cifarbench.backends.checks import check_batch, check_outputs
from cifarbench.backends.options import DEFAULT, RuntimeOptions
from cifarbench.errors import ModelError, first_line
from cifarbench.models.manifest import Manifest
from cifarbench.sysinfo import usable_cores


class TFLiteBackend:
    def __init__(self, name: str, path: str, threads: int | None, size: tuple[int, int] = (32, 32),
                 options: RuntimeOptions = DEFAULT) -> None:
        from ai_edge_litert.interpreter import Interpreter, OpResolverType

        self.threads = threads or usable_cores()
        self.xnnpack = options.xnnpack is not False
        # XNNPACK off: LiteRT's builtin kernels alone (benchmark_model's --use_xnnpack=false).
        resolver = OpResolverType.AUTO if self.xnnpack else OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
        try:
            self.interpreter = Interpreter(model_path=path, num_threads=self.threads,
                                           experimental_op_resolver_type=resolver)
            with _native_stderr_silenced():  # LiteRT prints "INFO: Created ... XNNPACK delegate" on first allocation
                self.interpreter.allocate_tensors()
        except Exception as exc:
            raise ModelError(f"{path}: LiteRT cannot load it ({first_line(exc)})") from None
        self.name, self.device = name, "cpu"
        self._inp = self.interpreter.get_input_details()[0]
        self._out = self.interpreter.get_output_details()[0]
        self._batch = -1
        self._size = tuple(size)  # the manifest's input contract: H, W of the uint8 NHWC pixels

    def _resize(self, n: int) -> None:
        if n != self._batch:
            self.interpreter.resize_tensor_input(self._inp["index"], [n, *self._size, 3], strict=False)
            self.interpreter.allocate_tensors()
            self._inp = self.interpreter.get_input_details()[0]
            self._out = self.interpreter.get_output_details()[0]
            self._batch = n

    def predict(self, batch: np.ndarray) -> np.ndarray:
        check_batch(batch, self._size, self.name)
        self._resize(len(batch))
        x = np.ascontiguousarray(batch)
        dtype = self._inp["dtype"]
        scale, zero = self._inp["quantization"]
        if dtype == np.float32:
            x = x.astype(np.float32)
        elif scale and (scale != 1.0 or zero != 0):
            x = np.clip(np.round(x.astype(np.float32) / scale + zero), np.iinfo(dtype).min, np.iinfo(dtype).max).astype(dtype)
        else:
            x = x.astype(dtype)
        self.interpreter.set_tensor(self._inp["index"], x)
        self.interpreter.invoke()
        y = self.interpreter.get_tensor(self._out["index"])
        oscale, ozero = self._out["quantization"]
        if y.dtype != np.float32:
            y = (y.astype(np.float32) - ozero) * oscale
        return y.astype(np.float32, copy=False)

    def describe(self) -> dict[str, Any]:
        import importlib.metadata

        return {"runtime": "ai-edge-litert", "version": importlib.metadata.version("ai-edge-litert"),
                "delegates": ["XNNPACK (default CPU)"] if self.xnnpack else ["none (builtin kernels)"],
                "threads": self.threads, "device": "cpu"}

    def profile(self) -> dict[str, Any]:
        """LiteRT's Python API exposes no per-op profiler (the C++ benchmark_model's --enable_op_profiling does):
        said so in the row instead of a made-up breakdown."""
        return {"runtime": "ai-edge-litert", "file": None, "ops": [],
                "unavailable": "LiteRT's Python interpreter exposes no op profiling (the C++ benchmark_model tool "
                               "has --enable_op_profiling; it is not in the ai-edge-litert wheel)"}


@contextlib.contextmanager
def _native_stderr_silenced() -> Iterator[None]:
    """Point fd 2 at /dev/null for a native call that logs unconditionally (keeps --quiet quiet)."""
    try:
        saved = os.dup(2)
    except OSError:  # no fd 2 at all
        yield
        return
    try:
        sys.stderr.flush()
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 2)
        os.close(devnull)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def load(spec: Any, manifest: Manifest, device: str, threads: int | None,
         options: RuntimeOptions = DEFAULT) -> TFLiteBackend:
    be = TFLiteBackend(spec.name, str(manifest.verify(spec.format)), threads, manifest.input.size, options)
    check_outputs(be._out["shape"][-1], manifest.classes, f"{manifest.name} ({spec.format})")
    return be
