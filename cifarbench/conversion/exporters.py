"""The exporter registry: one entry per artifact format, onnx-int8 included.

An exporter turns a conversion source (``KerasSource`` or ``OnnxSource``) into one file and
returns the details the manifest records (converter, mode, quantization of input and output).
Adding a format is one function and one ``register`` call; ``convert`` walks the registry.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol

import numpy as np

from cifarbench.atomic import atomic_write
from cifarbench.data.batching import images_per_batch
from cifarbench.models.manifest import FORMAT_FILES, InputContract


class Source(Protocol):
    """What a conversion source offers (see keras_source.KerasSource, onnxio.OnnxSource)."""

    kind: str
    formats: tuple[str, ...]
    path: Path
    contract: InputContract
    params: int | None
    n_outputs: int  # the model's output width (one score per class)

    def reference(self, pixels: np.ndarray) -> np.ndarray: ...

    def tflite(self, mode: str | None, cal_x: np.ndarray) -> bytes: ...

    def onnx(self, opset: int) -> tuple[bytes, dict[str, Any]]: ...


@dataclass
class ExportContext:
    source: Source
    out_dir: Path
    cal_x: np.ndarray  # uint8 NHWC calibration pixels (train split's validation slice)
    opset: int
    scratch: Path  # removed by the caller, also when an exporter raises
    built: dict[str, Path] = field(default_factory=dict)

    def fp32_onnx(self) -> Path:
        """The float32 ONNX graph: this run's ``onnx`` artifact, else a scratch copy."""
        if "onnx" in self.built:
            return self.built["onnx"]
        path = self.scratch / "fp32.onnx"
        if not path.is_file():
            blob, _ = self.source.onnx(self.opset)
            path.write_bytes(blob)
        return path


@dataclass(frozen=True)
class Exporter:
    format: str
    run: Callable[[ExportContext, Path], dict[str, Any]]
    quantized: bool = False  # int8: calibrated, judged by accuracy drop

    @property
    def file(self) -> str:
        return FORMAT_FILES[self.format]


EXPORTERS: dict[str, Exporter] = {}


def register(exporter: Exporter) -> None:
    EXPORTERS[exporter.format] = exporter


def write_bytes(path: Path, blob: bytes) -> None:
    with atomic_write(path, "wb") as fh:
        fh.write(blob)


# --------------------------------------------------------------------------- TFLite


def _tflite(mode: str | None) -> Callable[[ExportContext, Path], dict[str, Any]]:
    def run(ctx: ExportContext, path: Path) -> dict[str, Any]:
        blob = ctx.source.tflite(mode, ctx.cal_x)
        write_bytes(path, blob)
        from ai_edge_litert.interpreter import Interpreter

        it = Interpreter(model_content=blob)
        inp, outp = it.get_input_details()[0], it.get_output_details()[0]
        return {"converter": "tf.lite.TFLiteConverter", "mode": mode or "fp32", "input_quantization": _q(inp),
                "output_quantization": _q(outp), "output_dtype": np.dtype(outp["dtype"]).name}
    return run


def _q(detail: dict[str, Any]) -> dict[str, Any] | None:
    scale, zero = detail["quantization"]
    return {"scale": float(scale), "zero_point": int(zero)} if scale else None


# --------------------------------------------------------------------------- ONNX


def _onnx(ctx: ExportContext, path: Path) -> dict[str, Any]:
    blob, details = ctx.source.onnx(ctx.opset)
    write_bytes(path, blob)
    return details


REDUCE_RANGE_REASON = ("U8S8 saturates in VPMADDUBSW on AVX2/AVX-512 CPUs without VNNI; measured on "
                       "baseline-cnn: top-1 agreement 0.8995 -> 0.974 with reduce_range")


def _onnx_int8(ctx: ExportContext, path: Path) -> dict[str, Any]:
    """Static QDQ quantization of the float32 graph, calibrated on ``ctx.cal_x``."""
    import onnxruntime as ort
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    fp32 = ctx.fp32_onnx()
    name = ort.InferenceSession(str(fp32), providers=["CPUExecutionProvider"]).get_inputs()[0].name
    cal_x = ctx.cal_x

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            n = images_per_batch(cal_x.shape[1:3], 50)
            self.batches = iter([{name: cal_x[i : i + n]} for i in range(0, len(cal_x), n)])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.batches, None)

    pre = ctx.scratch / "int8_pre.onnx"
    try:
        quant_pre_process(str(fp32), str(pre), skip_symbolic_shape=True)
    except Exception:  # pre-processing is an optimisation; quantize the graph as it is
        shutil.copy2(fp32, pre)
    q = ctx.scratch / "int8_q.onnx"
    quantize_static(str(pre), str(q), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, reduce_range=True)
    write_bytes(path, q.read_bytes())
    return {"converter": "onnxruntime.quantization.quantize_static", "format": "QDQ", "per_channel": True,
            "activations": "uint8", "weights": "int8 (7-bit range)", "reduce_range_reason": REDUCE_RANGE_REASON}


register(Exporter("tflite", _tflite(None)))
register(Exporter("tflite-fp16", _tflite("fp16")))
register(Exporter("tflite-int8", _tflite("int8"), quantized=True))
register(Exporter("onnx", _onnx))
register(Exporter("onnx-int8", _onnx_int8, quantized=True))
