"""A Keras model (any vintage kerasio reads) as a conversion source: contract, reference, TFLite and ONNX.

Every graph built here takes uint8 RGB NHWC pixels at the model's own input size (read from the
model; ``--input-size`` only for a model whose spatial size is dynamic) and applies the declared
preprocessing and (for logits) a softmax, so artifacts and the Keras reference compute the same
function on the same pixels. Imports TensorFlow.
"""

from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from cifarbench.data.batching import images_per_batch
from cifarbench.errors import ModelError, UsageError
from cifarbench.models.kerasio import apply_preprocess, load_keras_model, model_input_shape
from cifarbench.models.manifest import InputContract


class KerasSource:
    kind = "keras"
    formats = ("tflite", "tflite-fp16", "tflite-int8", "onnx", "onnx-int8")

    def __init__(self, path: Path, contract: InputContract, n_classes: int | None, unsafe: bool,
                 input_size: tuple[int, int] | None = None, fallback: tuple[int, int] | None = None) -> None:
        """Load, read the input size, probe the output: ``contract`` gains size, softmax_added; ``n_outputs`` is set."""
        if contract.model_layout != "NHWC":
            raise UsageError("--layout nchw applies to ONNX models; Keras models take NHWC")
        self.path = path
        self.model = load_keras_model(path, unsafe=unsafe)
        import tensorflow as tf

        self.tf = tf
        shape = tuple(model_input_shape(self.model))
        if len(shape) != 4 or shape[3] not in (3, None):
            raise ModelError(f"{path}: model input shape {shape[1:]} is not H x W x 3 (RGB images)")
        self.size = native_size(path, shape[1:3], input_size, fallback)
        self.contract = dataclasses.replace(contract, size=self.size, model_input_size=None)
        probe = np.asarray(self._forward(tf.constant(
            np.random.default_rng(0).integers(0, 256, (4, *self.size, 3)), tf.float32)))
        self.n_outputs, softmax = read_probe(path, probe, n_classes)
        self.contract = dataclasses.replace(self.contract, softmax_added=softmax)
        try:
            self.params: int | None = int(self.model.count_params())
        except Exception:  # a SavedModel wrapper has no count
            self.params = None

    def _forward(self, x: Any, steps: Any = None) -> Any:
        return self.model(apply_preprocess(x, self.contract.steps if steps is None else steps), training=False)

    def probs(self, x: Any) -> Any:
        """float pixels -> probabilities, as a TensorFlow op (traced into every exported graph)."""
        y = self.tf.cast(self._forward(x), self.tf.float32)
        return self.tf.nn.softmax(y) if self.contract.softmax_added else y

    def reference(self, x: np.ndarray) -> np.ndarray:
        n = images_per_batch(x.shape[1:3], 500)
        return np.concatenate([np.asarray(self.probs(self.tf.constant(x[i : i + n], self.tf.float32)))
                               for i in range(0, len(x), n)])

    def scores_with(self, x: np.ndarray, steps: Any) -> np.ndarray:
        """The model's raw scores on ``x`` under other preprocessing steps (convert's preset check)."""
        n = images_per_batch(x.shape[1:3], 256)
        return np.concatenate([np.asarray(self._forward(self.tf.constant(x[i : i + n], self.tf.float32), steps),
                                          dtype=np.float32) for i in range(0, len(x), n)])

    # ------------------------------------------------------------------ exports
    def tflite(self, mode: str | None, cal_x: np.ndarray) -> bytes:
        """float32 (mode None), float16 weights ("fp16") or full integer with uint8 in/out ("int8")."""
        tf = self.tf
        if mode == "int8":
            fn = tf.function(lambda x: self.probs(x), input_signature=[tf.TensorSpec([None, *self.size, 3], tf.float32, name="pixels")])
        else:
            fn = tf.function(lambda x: self.probs(tf.cast(x, tf.float32)),
                             input_signature=[tf.TensorSpec([None, *self.size, 3], tf.uint8, name="pixels")])
        conv = tf.lite.TFLiteConverter.from_concrete_functions([_freeze(fn)])  # no READ_VARIABLE ops to calibrate
        if mode == "fp16":
            conv.optimizations = [tf.lite.Optimize.DEFAULT]
            conv.target_spec.supported_types = [tf.float16]
        elif mode == "int8":
            def representative() -> Any:
                for i in range(len(cal_x)):
                    yield [cal_x[i : i + 1].astype(np.float32)]
            conv.optimizations = [tf.lite.Optimize.DEFAULT]
            conv.representative_dataset = representative
            conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
            conv.inference_input_type = tf.uint8
            conv.inference_output_type = tf.uint8
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return bytes(conv.convert())

    def onnx(self, opset: int) -> tuple[bytes, dict[str, Any]]:
        import tf2onnx

        tf = self.tf
        fn = tf.function(lambda x: self.probs(tf.cast(x, tf.float32)),
                         input_signature=[tf.TensorSpec([None, *self.size, 3], tf.uint8, name="pixels")])
        frozen = _freeze(fn)  # Keras variables become constants, not stray graph inputs
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            proto, _ = tf2onnx.convert.from_graph_def(
                frozen.graph.as_graph_def(), input_names=[t.name for t in frozen.inputs],
                output_names=[t.name for t in frozen.outputs], opset=opset)
        _rename_io(proto, "pixels", "probabilities")
        return proto.SerializeToString(), {"converter": f"tf2onnx {tf2onnx.__version__} (frozen graph)", "dynamic_batch": True}


def _freeze(fn: Any) -> Any:
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    return convert_variables_to_constants_v2(fn.get_concrete_function())


def _rename_io(proto: Any, inp: str, out: str) -> None:
    renames = {proto.graph.input[0].name: inp, proto.graph.output[0].name: out}
    for vi in list(proto.graph.input) + list(proto.graph.output):
        vi.name = renames.get(vi.name, vi.name)
    for node in proto.graph.node:
        node.input[:] = [renames.get(n, n) for n in node.input]
        node.output[:] = [renames.get(n, n) for n in node.output]


def read_probe(path: Path, probe: np.ndarray, n_classes: int | None) -> tuple[int, bool]:
    """Outputs of a probe forward pass -> (output width, whether convert must add a softmax).

    One score per class, as many as class names when they are given (ModelError otherwise); outputs that are
    already non-negative rows summing to 1 are probabilities, anything else gets a softmax appended.
    """
    if probe.ndim != 2:
        raise ModelError(f"{path}: model output shape {probe.shape[1:]} is not one score per class")
    width = int(probe.shape[1])
    if n_classes is not None and width != n_classes:
        raise ModelError(f"{path}: the model has {width} outputs but {n_classes} class names; "
                         "pass --classes FILE with one name per output")
    return width, not bool(np.all(probe >= 0) and np.allclose(probe.sum(1), 1.0, atol=1e-3))


def native_size(path: Path, spatial: Any, input_size: tuple[int, int] | None,
                fallback: tuple[int, int] | None = None) -> tuple[int, int]:
    """The (H, W) every artifact takes: the model's own; ``--input-size`` only where the model leaves it open.

    A dynamic side needs ``--input-size`` (UsageError, exit 2, without it, unless a prior manifest
    named a size: ``fallback``); one that contradicts a static side is a UsageError too.
    """
    dims = [int(d) if isinstance(d, (int, np.integer)) and int(d) > 0 else None for d in spatial]
    if len(dims) != 2:
        raise ModelError(f"{path}: cannot read the input's height and width from {tuple(spatial)}")
    if input_size is not None:
        clash = [f"{'HW'[i]}={d}" for i, d in enumerate(dims) if d is not None and d != input_size[i]]
        if clash:
            raise UsageError(f"--input-size {input_size[0]},{input_size[1]} contradicts the model's own input "
                             f"({', '.join(clash)}); drop --input-size: a fixed size is read from the model")
        return (int(input_size[0]), int(input_size[1]))
    if None in dims:
        if fallback is not None and all(d is None or d == f for d, f in zip(dims, fallback)):
            return (int(fallback[0]), int(fallback[1]))
        shown = "x".join("?" if d is None else str(d) for d in dims)
        raise UsageError(f"{path}: the model's input size is dynamic ({shown}); pass --input-size H,W")
    return (dims[0], dims[1])  # type: ignore[return-value]
