"""A Keras model (any vintage kerasio reads) as a conversion source: contract, reference, TFLite and ONNX.

Every graph built here takes uint8 RGB NHWC pixels at the contract's size and applies the
declared preprocessing, the resize to the model's own input size and (for logits) a softmax,
so artifacts and the Keras reference compute the same function. Imports TensorFlow.
"""

from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from cifarbench.errors import ModelError, UsageError
from cifarbench.models.kerasio import apply_preprocess, load_keras_model, model_input_shape
from cifarbench.models.manifest import InputContract


class KerasSource:
    kind = "keras"
    formats = ("tflite", "tflite-fp16", "tflite-int8", "onnx", "onnx-int8")

    def __init__(self, path: Path, contract: InputContract, n_classes: int, unsafe: bool) -> None:
        """Load, check the input shape, probe the output: ``contract`` gains model_input_size and softmax_added."""
        if contract.model_layout != "NHWC":
            raise UsageError("--layout nchw applies to ONNX models; Keras models take NHWC")
        self.path = path
        self.size = SIZE = tuple(contract.size)  # what every artifact takes (32x32)
        self.model = load_keras_model(path, unsafe=unsafe)
        import tensorflow as tf

        self.tf = tf
        shape = model_input_shape(self.model)
        size = tuple(shape[1:3])
        if tuple(shape[1:]) != (*SIZE, 3):
            wanted = contract.model_input_size
            if wanted is None or size != tuple(wanted) or shape[3] != 3:
                raise ModelError(
                    f"model input shape {tuple(shape[1:])} is not {SIZE[0]}x{SIZE[1]}x3; pass --input-size H,W matching the model "
                    f"to resize the {SIZE[0]}x{SIZE[1]} pixels inside the graph")
        resize = tuple(contract.model_input_size) if contract.model_input_size and size != SIZE else None
        self.contract = dataclasses.replace(contract, model_input_size=resize)
        probe = np.asarray(self._forward(tf.constant(
            np.random.default_rng(0).integers(0, 256, (4, *SIZE, 3)), tf.float32)))
        if probe.ndim != 2 or probe.shape[1] != n_classes:
            raise ModelError(f"model output shape {probe.shape[1:]} does not match {n_classes} classes; pass --classes FILE")
        softmax = not (np.all(probe >= 0) and np.allclose(probe.sum(1), 1.0, atol=1e-3))
        self.contract = dataclasses.replace(self.contract, softmax_added=bool(softmax))
        try:
            self.params: int | None = int(self.model.count_params())
        except Exception:  # a SavedModel wrapper has no count
            self.params = None

    def _forward(self, x: Any) -> Any:
        size = self.contract.model_input_size
        if size is not None:
            x = self.tf.image.resize(x, size, method="bilinear")
        return self.model(apply_preprocess(x, self.contract.steps), training=False)

    def probs(self, x: Any) -> Any:
        """float pixels -> probabilities, as a TensorFlow op (traced into every exported graph)."""
        y = self.tf.cast(self._forward(x), self.tf.float32)
        return self.tf.nn.softmax(y) if self.contract.softmax_added else y

    def reference(self, x: np.ndarray) -> np.ndarray:
        return np.concatenate([np.asarray(self.probs(self.tf.constant(x[i : i + 500], self.tf.float32)))
                               for i in range(0, len(x), 500)])

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
