"""OpenVINO: reads our ONNX artifacts as they are (float32 and int8 QDQ), CPU or an OpenVINO GPU device.

Two compiled models per artifact, because one setting cannot serve both jobs: a LATENCY-hinted one
(one stream, every thread on one request) for batch 1, and a THROUGHPUT-hinted one (several streams)
whose async infer requests each take a slice of a larger batch. Compiled models are cached per process,
so loading the same backend again (serve, the auto choice, tests) costs no second compilation.

Precision: OpenVINO runs float32 graphs in bf16 on CPUs with native bf16 (AVX512-BF16/AMX) unless told
otherwise; ``openvino-f32`` pins f32. ``describe()`` reports what the compiled model actually runs,
read back from the runtime, never what was asked for.
"""

from __future__ import annotations

import os
import sys
import threading
from collections import Counter
from typing import Any

import numpy as np

from cifarbench.backends.options import DEFAULT, RuntimeOptions
from cifarbench.errors import ModelError, first_line
from cifarbench.models.manifest import Manifest

STRICT_F32 = ("openvino-f32",)  # backends that pin INFERENCE_PRECISION_HINT to f32
MAX_CHUNK = 256  # images per async request at most: bounds activation memory for huge predict() calls
MAX_STATIC = 4  # static-batch models compiled per backend at most (each costs a compilation)
_COMPUTE_LAYERS = ("Convolution", "FullyConnected", "MatMul", "GroupConvolution", "Deconvolution")

_lock = threading.Lock()
_core: Any = None
_compiled: dict[tuple[Any, ...], Any] = {}


def import_openvino() -> Any:
    """``import openvino`` without its import-time telemetry.

    ``import openvino`` imports its converter, which sends a Google Analytics event and writes ~/intel/
    unless the user opted out: network traffic and files a classifier must not cause. Its converter falls
    back to a no-op stub when the ``openvino_telemetry`` package cannot be imported, so that import is
    blocked for this process (only if nothing imported it yet; inference never needs it).
    """
    if "openvino" not in sys.modules:
        sys.modules.setdefault("openvino_telemetry", None)  # type: ignore[arg-type]
    import openvino

    return openvino


def _get_core() -> Any:
    global _core
    with _lock:
        if _core is None:
            _core = import_openvino().Core()
        return _core


def unavailable(spec: Any, manifest: Manifest | None, device: str) -> str | None:
    """On a GPU: OpenVINO must list a GPU device (its GPU plugin drives Intel GPUs); the CPU always works."""
    if device != "gpu":
        return None
    devices = list(_get_core().available_devices)
    if not any(d.split(".")[0] == "GPU" for d in devices):
        return f"OpenVINO finds no GPU device (its GPU plugin drives Intel GPUs; devices here: {', '.join(devices) or 'none'})"
    return None


def _compile(path: str, ov_device: str, hint: str, threads: int | None, strict_f32: bool,
             streams: int | None = None, perf_count: bool = False, batch: int | None = None) -> Any:
    """The compiled model for these settings, compiled once per process; ``batch``: reshaped to that static batch."""
    st = os.stat(path)
    key = (os.path.realpath(path), st.st_size, st.st_mtime_ns, ov_device, hint, threads, strict_f32, streams,
           perf_count, batch)
    with _lock:
        hit = _compiled.get(key)
    if hit is not None:
        return hit
    core = _get_core()
    config: dict[str, Any] = {"PERFORMANCE_HINT": hint}
    if ov_device == "CPU":
        # Unpinned: a thread pinned to a core that another process holds (decode workers, a busy host) stalls
        # the whole request. On a loaded 2-core host pinned batch-1 p50 was 1.04-10x unpinned, never faster
        # (benchmarks/openvino/results.md).
        config["ENABLE_CPU_PINNING"] = False
        if threads:
            config["INFERENCE_NUM_THREADS"] = threads
    if strict_f32:
        config["INFERENCE_PRECISION_HINT"] = "f32"
    if streams:
        config["NUM_STREAMS"] = streams
    if perf_count:  # per-op performance counters (bench --profile)
        config["PERF_COUNT"] = True
    try:
        model = core.read_model(path)
        if batch:
            shape = model.input(0).get_partial_shape()
            shape[0] = batch
            model.reshape({model.input(0): shape})
        compiled = core.compile_model(model, ov_device, config)
    except Exception as exc:  # OpenVINO raises RuntimeError with multi-line messages
        raise ModelError(f"{path}: OpenVINO cannot load it ({first_line(exc)})") from None
    with _lock:
        return _compiled.setdefault(key, compiled)


def _type_name(t: Any) -> str:
    """'f32', 'bf16', 'u8'... from an OpenVINO element type."""
    return str(getattr(t, "get_type_name", lambda: t)())


def _compute_precisions(compiled: Any) -> Counter[str]:
    """How many conv/matmul layers the runtime runs in each precision ('u8', 'bf16', 'f32'...)."""
    counts: Counter[str] = Counter()
    for op in compiled.get_runtime_model().get_ordered_ops():
        info = op.get_rt_info()
        if "layerType" in info and info["layerType"].astype(str) in _COMPUTE_LAYERS and "runtimePrecision" in info:
            counts[info["runtimePrecision"].astype(str)] += 1
    return counts


def precision_summary(inference_precision: str, kernels: Counter[str]) -> str:
    """'f32', or 'u8 conv/matmul (8 of 8), f32 elsewhere' when the heavy layers run in other precisions."""
    if not kernels or set(kernels) == {inference_precision}:
        return inference_precision
    total = sum(kernels.values())
    parts = ", ".join(f"{p} conv/matmul ({n} of {total})" for p, n in kernels.most_common())
    return f"{parts}, {inference_precision} elsewhere"


class OpenVINOBackend:
    def __init__(self, name: str, path: str, device: str, threads: int | None,
                 size: tuple[int, int] = (32, 32), options: RuntimeOptions = DEFAULT) -> None:
        ov = import_openvino()
        self.size = tuple(size)  # the manifest's input contract: H, W of the uint8 NHWC pixels
        self.name, self.device, self.threads_requested, self.options = name, device, threads, options
        self.ov_device = "GPU" if device == "gpu" else "CPU"
        strict = name in STRICT_F32
        # --ov-hint pins one hint for every batch size (benchmark_app's -hint); --ov-streams sets NUM_STREAMS of
        # the model that serves batches > 1 (benchmark_app's -nstreams). Without them: LATENCY for batch 1,
        # THROUGHPUT above.
        small = (options.ov_hint or "latency").upper()
        large = (options.ov_hint or "throughput").upper()
        perf = bool(options.profile_dir)
        self.latency_model = _compile(path, self.ov_device, small, threads, strict,
                                      options.ov_streams if small == large else None, perf)
        self.throughput_model = _compile(path, self.ov_device, large, threads, strict, options.ov_streams, perf)
        self._latency_request = self.latency_model.create_infer_request()
        n_req = max(1, int(self.throughput_model.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")))
        self._requests = [self.throughput_model.create_infer_request() for _ in range(n_req)]
        self._call_lock = threading.Lock()  # infer requests are not safe to share between threads
        self._static_args = (path, self.ov_device, large, threads, strict, options.ov_streams, perf)
        self._static: dict[int, list[Any]] = {}  # slice size -> requests of a model reshaped to that static batch
        self._dynamic_batch = self.throughput_model.input(0).get_partial_shape()[0].is_dynamic
        self.version = ov.get_version()
        self.input_float = _type_name(self.latency_model.input(0).get_element_type()).startswith(("f", "bf"))
        classes = self.latency_model.output(0).get_partial_shape()[-1]
        self.num_classes = classes.get_length() if classes.is_static else None

    def _prepare(self, batch: np.ndarray) -> np.ndarray:
        from cifarbench.backends.checks import check_batch

        return np.ascontiguousarray(check_batch(batch, self.size, self.name),
                                    dtype=np.float32 if self.input_float else np.uint8)

    def predict(self, batch: np.ndarray) -> np.ndarray:
        x = self._prepare(batch)
        n = len(x)
        if n == 0 and self.num_classes is not None:
            return np.zeros((0, self.num_classes), dtype=np.float32)
        with self._call_lock:
            if n <= 1:
                self._latency_request.infer({0: x}, share_inputs=True)
                return np.array(self._latency_request.get_output_tensor(0).data, dtype=np.float32)
            return self._throughput(x)

    def _static_requests(self, size: int) -> list[Any] | None:
        """Requests of the model reshaped to a static batch of ``size``, compiled on first use (at most MAX_STATIC
        sizes; None past that or if the reshape fails: the dynamic model serves).

        Why: benchmark_app reshapes to a static batch (-shape), and OpenVINO's CPU plugin runs a static shape
        faster than the same slice through a dynamic-batch model. Flagship int8, batch 256 over 2 requests,
        loaded 2-core Zen 4, 8 interleaved rounds: 835 vs 788 img/s median, 1,080 vs 873 best
        (benchmarks/runtimes/results.md).
        """
        if size in self._static:
            return self._static[size]
        if not self._dynamic_batch or len(self._static) >= MAX_STATIC:
            return None
        try:
            compiled = _compile(*self._static_args, batch=size)
        except ModelError:
            self._dynamic_batch = False  # never try again
            return None
        self._static[size] = [compiled.create_infer_request() for _ in range(len(self._requests))]
        return self._static[size]

    def _throughput(self, x: np.ndarray) -> np.ndarray:
        """Slices of ``x`` over the async requests, round-robin; each request's result copied out when reused.
        Equal slices go to a static-batch model of their size (see _static_requests)."""
        n, reqs = len(x), self._requests
        chunk = min(MAX_CHUNK, -(-n // len(reqs)))
        if n % chunk == 0:
            reqs = self._static_requests(chunk) or reqs
        spans = [(s, min(n, s + chunk)) for s in range(0, n, chunk)]
        out: np.ndarray | None = None
        busy: list[tuple[int, int] | None] = [None] * len(reqs)

        def collect(i: int) -> None:
            nonlocal out
            reqs[i].wait()
            y = reqs[i].get_output_tensor(0).data
            if out is None:
                out = np.empty((n,) + tuple(y.shape[1:]), dtype=np.float32)
            s, e = busy[i]  # type: ignore[misc]
            out[s:e] = y
            busy[i] = None

        try:
            for k, (s, e) in enumerate(spans):
                i = k % len(reqs)
                if busy[i] is not None:
                    collect(i)
                reqs[i].start_async({0: x[s:e]}, share_inputs=True)
                busy[i] = (s, e)
            for i in range(len(reqs)):
                if busy[i] is not None:
                    collect(i)
        finally:
            for i, span in enumerate(busy):  # an exception mid-way: never leave a request running on freed input
                if span is not None:
                    reqs[i].wait()
        assert out is not None
        return out

    def describe(self) -> dict[str, Any]:
        lat, tput = self.latency_model, self.throughput_model
        precision = _type_name(tput.get_property("INFERENCE_PRECISION_HINT"))
        cpu = self.ov_device == "CPU"
        streams = int(tput.get_property("NUM_STREAMS")) if cpu else "?"
        return {"runtime": "openvino", "version": self.version, "device": self.device, "ov_device": self.ov_device,
                "threads": int(lat.get_property("INFERENCE_NUM_THREADS")) if cpu else None,
                "cpu_pinning": bool(lat.get_property("ENABLE_CPU_PINNING")) if cpu else None,
                "precision": precision_summary(precision, _compute_precisions(tput)),
                "precision_requested": "f32" if self.name in STRICT_F32 else "runtime default",
                "mode": f"batch > 1: {(self.options.ov_hint or 'throughput')} hint ({streams} streams, "
                        f"{len(self._requests)} async requests); batch 1: {self.options.ov_hint or 'latency'} hint "
                        "(1 request)"}

    def profile(self) -> dict[str, Any]:
        """OpenVINO's performance counters (PERF_COUNT, ``profile_dir`` set) of each request's last inference,
        written as JSON, and the ops by time summed over the requests."""
        import json

        from cifarbench.backends.profiling import openvino_ops

        entries = []
        pools = [("batch > 1 (dynamic)", self._requests)] + [(f"slices of {k}", v) for k, v in self._static.items()]
        for role, req in [("batch 1", self._latency_request)] + [(f"{name}, request {i}", r) for name, pool in pools
                                                                  for i, r in enumerate(pool)]:
            for p in req.get_profiling_info():
                entries.append({"request": role, "node": p.node_name, "type": p.node_type, "exec_type": p.exec_type,
                                "status": str(p.status), "real_time_us": p.real_time.total_seconds() * 1e6,
                                "cpu_time_us": p.cpu_time.total_seconds() * 1e6})
        path = os.path.join(str(self.options.profile_dir), f"{self.name}-openvino-perf-counters.json")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w", encoding="utf-8") as fh:
            json.dump(entries, fh, indent=1)
        return {"runtime": "openvino", "file": path, "ops": openvino_ops(entries)}


def load(spec: Any, manifest: Manifest, device: str, threads: int | None,
         options: RuntimeOptions = DEFAULT) -> OpenVINOBackend:
    from cifarbench.backends.checks import check_outputs

    be = OpenVINOBackend(spec.name, str(manifest.verify(spec.format)), device, threads, manifest.input.size, options)
    check_outputs(be.num_classes, manifest.classes, f"{manifest.name} ({spec.format})")
    return be
