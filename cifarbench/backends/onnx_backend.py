"""onnxruntime: float32 and int8 QDQ artifacts, CPU or CUDA."""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from cifarbench.backends.checks import check_batch, check_outputs
from cifarbench.backends.options import DEFAULT, RuntimeOptions
from cifarbench.errors import BackendUnavailable, ModelError, first_line
from cifarbench.models.manifest import Manifest

_OPT_LEVELS = {"disable": "ORT_DISABLE_ALL", "basic": "ORT_ENABLE_BASIC", "extended": "ORT_ENABLE_EXTENDED",
               "all": "ORT_ENABLE_ALL"}


class OnnxBackend:
    def __init__(self, name: str, path: str, device: str, threads: int | None, spin: bool = True,
                 size: tuple[int, int] = (32, 32), options: RuntimeOptions = DEFAULT) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        if not spin:
            opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        if threads:
            opts.intra_op_num_threads = threads
            opts.inter_op_num_threads = 1
        opts.graph_optimization_level = getattr(ort.GraphOptimizationLevel, _OPT_LEVELS[options.ort_opt_level or "all"])
        if options.profile_dir:
            os.makedirs(options.profile_dir, exist_ok=True)
            opts.enable_profiling = True
            opts.profile_file_prefix = os.path.join(options.profile_dir, f"{name}-onnxruntime")
        missing = [p for p in options.ort_providers if p not in ort.get_available_providers()]
        if missing:
            raise BackendUnavailable(f"onnxruntime has no {', '.join(missing)} here (installed: "
                                     f"{', '.join(ort.get_available_providers())})")
        base = ["CUDAExecutionProvider", "CPUExecutionProvider"] if device == "gpu" else ["CPUExecutionProvider"]
        providers = list(options.ort_providers) + [p for p in base if p not in options.ort_providers]
        try:
            self.session = ort.InferenceSession(path, sess_options=opts, providers=providers)
        except Exception as exc:  # onnxruntime raises its own exception types
            raise ModelError(f"{path}: onnxruntime cannot load it ({first_line(exc)})") from None
        self.name, self.device, self.threads, self.path, self.options = name, device, threads, path, options
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        self.input_float = "float" in inp.type
        self.output_name = self.session.get_outputs()[0].name
        out_shape = self.session.get_outputs()[0].shape
        self.n_outputs = out_shape[-1] if out_shape else None  # an int, or a symbolic name
        self.size = tuple(size)  # the manifest's input contract: H, W of the uint8 NHWC pixels
        self.version = ort.__version__

    def without_spinning(self) -> "OnnxBackend":
        """The same model in a session whose threads sleep between calls instead of spin-waiting.

        For `auto`'s probe, which times runtimes one after another in one process: onnxruntime's workers
        spin for a while after each call and took the CPU from the runtime timed next. baseline-cnn on a
        2-core Zen 3, three fresh probes each: with spinning onnx-int8 came out ahead of openvino-int8 3 of 3
        times, without it openvino-int8 3 of 3, as in bench (2,730 vs 2,237 img/s, each row alone). Alone,
        spinning changed batch-256 throughput by under 3 % but saved 15-50 % of batch-1 p50, so every
        other session keeps it.
        """
        return OnnxBackend(self.name, self.path, self.device, self.threads, spin=False, size=self.size,
                           options=self.options)

    def predict(self, batch: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(check_batch(batch, self.size, self.name), dtype=np.float32 if self.input_float else np.uint8)
        return np.asarray(self.session.run([self.output_name], {self.input_name: x})[0], dtype=np.float32)

    def describe(self) -> dict[str, Any]:
        return {"runtime": "onnxruntime", "version": self.version, "providers": self.session.get_providers(),
                "threads": self.threads, "device": self.device,
                "graph_optimization": self.options.ort_opt_level or "all"}

    def profile(self) -> dict[str, Any]:
        """End onnxruntime's profiler (``profile_dir`` set): its chrome-trace JSON and the ops by time."""
        from cifarbench.backends.profiling import onnxruntime_ops

        path = self.session.end_profiling()
        return {"runtime": "onnxruntime", "file": path, "ops": onnxruntime_ops(path)}


def unavailable(spec: Any, manifest: Manifest | None, device: str) -> str | None:
    """On a GPU: onnxruntime needs its CUDA provider and an NVIDIA GPU (the CPU always works)."""
    if device != "gpu":
        return None
    import onnxruntime as ort

    from cifarbench.sysinfo import nvidia_gpus

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return "onnxruntime has no CUDAExecutionProvider (install the gpu extra: see README, 'GPU')"
    if not nvidia_gpus():
        return "no NVIDIA GPU found (nvidia-smi lists none)"
    return None


def load(spec: Any, manifest: Manifest, device: str, threads: int | None,
         options: RuntimeOptions = DEFAULT) -> OnnxBackend:
    be = OnnxBackend(spec.name, str(manifest.verify(spec.format)), device, threads, size=manifest.input.size,
                     options=options)
    check_outputs(be.n_outputs, manifest.classes, f"{manifest.name} ({spec.format})")
    return be
