"""An ONNX model (e.g. exported from PyTorch: NCHW float input, its own normalisation) as a conversion source.

The model is wrapped, with onnx's helper API, into the uint8-NHWC contract every cifarbench
artifact has, at the graph's own input size: ``pixels`` (uint8, N x H x W x 3) -> Cast -> the declared preprocessing -> a
Transpose to NCHW (``--layout nchw``) -> the original graph -> Softmax if it returns logits ->
``probabilities``. The reference for parity is the untouched original model in onnxruntime, fed
the same preprocessing computed in numpy. No TensorFlow.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np

from cifarbench.data.batching import images_per_batch
from cifarbench.errors import ModelError, UsageError, first_line
from cifarbench.models.manifest import InputContract, Step

_FLOAT_TYPES = {1: np.float32, 10: np.float16, 11: np.float64}  # onnx.TensorProto FLOAT, FLOAT16, DOUBLE


class OnnxSource:
    kind = "onnx"
    formats = ("onnx", "onnx-int8")

    def __init__(self, path: Path, contract: InputContract, n_classes: int | None, layout: str | None,
                 input_size: tuple[int, int] | None = None, fallback: tuple[int, int] | None = None) -> None:
        """Read the model, its layout, size and outputs; ``contract`` gains size, model_layout, softmax_added."""
        import onnx

        from cifarbench.models.keras_source import native_size, read_probe

        self.path = path
        try:
            self.original = onnx.load(str(path))
            onnx.checker.check_model(self.original)
        except Exception as exc:
            raise ModelError(f"{path}: not a readable ONNX model ({first_line(exc, 300)})") from None
        graph = self.original.graph
        inits = {i.name for i in graph.initializer}
        inputs = [i for i in graph.input if i.name not in inits]
        if len(inputs) != 1 or len(graph.output) != 1:
            raise ModelError(f"{path}: has {len(inputs)} inputs and {len(graph.output)} outputs; expected one image "
                             "input and one class-score output")
        self.input, self.output = inputs[0], graph.output[0]
        elem = self.input.type.tensor_type.elem_type
        if elem not in _FLOAT_TYPES:
            raise ModelError(f"{path}: input type {onnx.TensorProto.DataType.Name(elem)} is not float; expected float pixels")
        self.input_dtype = _FLOAT_TYPES[elem]
        dims = [d.dim_value if d.HasField("dim_value") else None for d in self.input.type.tensor_type.shape.dim]
        layout = _layout(path, dims, layout.upper() if layout else None)
        if (layout == "NCHW" and dims[1] not in (3, None)) or (layout == "NHWC" and dims[3] not in (3, None)):
            raise ModelError(f"{path}: input shape {dims} is not {layout} with 3 channels")
        size = native_size(path, dims[2:4] if layout == "NCHW" else dims[1:3], input_size, fallback)
        self.contract = dataclasses.replace(contract, size=size, model_layout=layout, model_input_size=None)
        self._session = _session(self.original.SerializeToString(), path)
        probe = self._raw(np.random.default_rng(0).integers(0, 256, (4, *size, 3)).astype(np.uint8))
        self.n_outputs, softmax = read_probe(path, probe, n_classes)
        self.contract = dataclasses.replace(self.contract, softmax_added=softmax)
        self.params = int(sum(np.prod(i.dims) for i in graph.initializer))

    # ------------------------------------------------------------------ reference
    def _raw(self, pixels: np.ndarray, steps: Any = None) -> np.ndarray:
        x = pixels.astype(np.float32)
        for s in self.contract.steps if steps is None else steps:
            x = _apply(x, s)
        if self.contract.model_layout == "NCHW":
            x = x.transpose(0, 3, 1, 2)
        try:
            y = self._session.run(None, {self.input.name: np.ascontiguousarray(x, dtype=self.input_dtype)})[0]
        except Exception as exc:
            raise ModelError(f"{self.path}: onnxruntime cannot run it on a batch of {len(pixels)} "
                             f"({first_line(exc, 300)}); export it with a dynamic batch dimension") from None
        return np.asarray(y, dtype=np.float32)

    def reference(self, pixels: np.ndarray) -> np.ndarray:
        outs = []
        n = images_per_batch(pixels.shape[1:3], 256)
        for i in range(0, len(pixels), n):
            y = self._raw(pixels[i : i + n]).astype(np.float64)
            if self.contract.softmax_added:
                y = np.exp(y - y.max(1, keepdims=True))
                y /= y.sum(1, keepdims=True)
            outs.append(y.astype(np.float32))
        return np.concatenate(outs)

    def scores_with(self, pixels: np.ndarray, steps: Any) -> np.ndarray:
        """The original model's raw scores under other preprocessing steps (convert's preset check)."""
        n = images_per_batch(pixels.shape[1:3], 256)
        return np.concatenate([self._raw(pixels[i : i + n], steps) for i in range(0, len(pixels), n)])

    # ------------------------------------------------------------------ export
    def onnx(self, opset: int) -> tuple[bytes, dict[str, Any]]:
        """The wrapped graph (``opset`` applies to Keras sources; an ONNX model keeps its own)."""
        return wrap(self.original, self.input, self.output, self.contract, self.input_dtype).SerializeToString(), {
            "converter": "onnx.helper (wrapped the original graph)", "dynamic_batch": True,
            "source_opset": _opset(self.original), "source_layout": self.contract.model_layout}

    def tflite(self, mode: str | None, cal_x: np.ndarray) -> bytes:
        raise UsageError("an ONNX model converts to onnx and onnx-int8 only")


def wrap(model: Any, inp: Any, out: Any, contract: InputContract, dtype: type) -> Any:
    """A copy of ``model`` taking uint8 NHWC ``pixels`` and returning ``probabilities``."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    m = onnx.ModelProto()
    m.CopyFrom(model)
    g = m.graph
    h, w = contract.size
    nodes, consts = [], []
    cur = "cifarbench_pixels_f32"
    nodes.append(helper.make_node("Cast", ["pixels"], [cur], to=TensorProto.FLOAT, name="cifarbench_cast_in"))
    for i, s in enumerate(contract.steps):
        if s.kind == "bgr":  # reverse the channel axis of NHWC
            cname, nxt = f"cifarbench_pre{i}_bgr_idx", f"cifarbench_pre{i}_bgr"
            consts.append(numpy_helper.from_array(np.array([2, 1, 0], np.int64), cname))
            nodes.append(helper.make_node("Gather", [cur, cname], [nxt], axis=3, name=f"cifarbench_pre{i}_bgr"))
            cur = nxt
            continue
        if s.kind == "scale":
            pairs = [("Mul", np.array(s.scale, np.float32))]
        else:
            pairs = [("Sub", np.array(s.mean, np.float32)), ("Div", np.array(s.std, np.float32))]
        for j, (op, value) in enumerate(pairs):
            cname, nxt = f"cifarbench_pre{i}_{j}_const", f"cifarbench_pre{i}_{j}"
            consts.append(numpy_helper.from_array(value, cname))  # shape () or (3,): broadcasts over NHWC channels
            nodes.append(helper.make_node(op, [cur, cname], [nxt], name=f"cifarbench_pre{i}_{j}"))
            cur = nxt
    if contract.model_layout == "NCHW":
        nodes.append(helper.make_node("Transpose", [cur], ["cifarbench_nchw"], perm=[0, 3, 1, 2], name="cifarbench_to_nchw"))
        cur = "cifarbench_nchw"
    elem = {np.float32: TensorProto.FLOAT, np.float16: TensorProto.FLOAT16, np.float64: TensorProto.DOUBLE}[dtype]
    nodes.append(helper.make_node("Cast", [cur], [inp.name], to=elem, name="cifarbench_cast_model_in"))
    tail = [helper.make_node("Cast", [out.name], ["cifarbench_scores"], to=TensorProto.FLOAT, name="cifarbench_cast_out")]
    if contract.softmax_added:
        tail.append(helper.make_node("Softmax", ["cifarbench_scores"], ["probabilities"], axis=1, name="cifarbench_softmax"))
    else:
        tail.append(helper.make_node("Identity", ["cifarbench_scores"], ["probabilities"], name="cifarbench_probabilities"))
    old_nodes = list(g.node)
    del g.node[:]
    g.node.extend(nodes + old_nodes + tail)
    g.initializer.extend(consts)
    keep = [i for i in g.input if i.name != inp.name]
    del g.input[:]
    g.input.extend([helper.make_tensor_value_info("pixels", TensorProto.UINT8, ["N", h, w, 3])] + keep)
    n_classes = out.type.tensor_type.shape.dim[1] if len(out.type.tensor_type.shape.dim) == 2 else None
    del g.output[:]
    g.output.extend([helper.make_tensor_value_info(
        "probabilities", TensorProto.FLOAT, ["N", n_classes.dim_value if n_classes is not None and n_classes.HasField("dim_value") else "C"])])
    onnx.checker.check_model(m)
    return m


def _apply(x: np.ndarray, s: Step) -> np.ndarray:
    if s.kind == "bgr":
        return x[..., ::-1]
    if s.kind == "scale":
        return x * np.float32(s.scale)
    return (x - np.asarray(s.mean, np.float32)) / np.asarray(s.std, np.float32)


def _layout(path: Path, dims: list[int | None], declared: str | None) -> str:
    """NCHW or NHWC: what the user declared, else what the input shape makes unambiguous."""
    if len(dims) != 4:
        raise ModelError(f"{path}: input has rank {len(dims)}; expected a 4-D image batch")
    if declared:
        return declared
    nchw, nhwc = dims[1] == 3, dims[3] == 3
    if nchw != nhwc:
        return "NCHW" if nchw else "NHWC"
    raise UsageError(f"{path}: cannot tell the input layout from its shape {dims}; pass --layout nchw or nhwc")


def _opset(model: Any) -> int | None:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)


def _session(blob: bytes, path: Path) -> Any:
    import onnxruntime as ort

    try:
        return ort.InferenceSession(blob, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise ModelError(f"{path}: onnxruntime cannot load it ({first_line(exc, 300)})") from None
