"""Tiny models of any input size and class count, built with onnx's helper API in milliseconds (no TensorFlow).

``nearest_model`` answers the class whose "centre" red value is nearest the image's mean red value, so a test
knows every prediction, its top-5 and the confusion matrix from the pixels it painted, without running the model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from cifarbench.models.manifest import InputContract, Manifest


def centre(j: int, n: int) -> float:
    """Class j's red value: spread over 5..250 so neighbours differ by at least 2."""
    return 5.0 + j * (245.0 / max(n - 1, 1)) if n > 1 else 128.0


def nearest_model(directory: Path, classes: Sequence[str], size: tuple[int, int] = (24, 24),
                  name: str = "nearest") -> Path:
    """A model directory (manifest.json + model.onnx): uint8 NHWC at ``size`` -> probabilities over ``classes``."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    n = len(classes)
    c = np.array([centre(j, n) for j in range(n)], np.float32)
    s = np.float32(0.001)  # small enough that no probability underflows to a tie at 0
    w = np.zeros((3, n), np.float32)
    w[0] = 2 * c * s  # logit_j = s * (2 c_j R - c_j^2) = s * (R^2 - (R - c_j)^2): largest for the nearest centre
    b = -(c**2) * s
    nodes = [helper.make_node("Cast", ["pixels"], ["f"], to=TensorProto.FLOAT),
             helper.make_node("ReduceMean", ["f"], ["m"], axes=[1, 2], keepdims=0),
             helper.make_node("MatMul", ["m", "w"], ["mw"]),
             helper.make_node("Add", ["mw", "b"], ["logits"]),
             helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1)]
    graph = helper.make_graph(
        nodes, "nearest", [helper.make_tensor_value_info("pixels", TensorProto.UINT8, ["N", size[0], size[1], 3])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", n])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    directory.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(directory / "model.onnx"))
    m = Manifest(name=name, arch="nearest", classes=list(classes), input=InputContract(size=tuple(size)))
    m.directory = directory
    m.add_artifact("onnx", "model.onnx")
    m.save()
    return directory


def paint(root: Path, folder: str, file: str, red: float, shape: tuple[int, int] = (30, 40)) -> Path:
    """A uniform PNG (any size: the loader resizes it) whose mean red is ``red``, exactly."""
    d = root / folder
    d.mkdir(parents=True, exist_ok=True)
    img = np.empty((*shape, 3), np.uint8)
    img[..., 0], img[..., 1], img[..., 2] = int(round(red)), 77, 200
    Image.fromarray(img).save(d / file)
    return d / file
