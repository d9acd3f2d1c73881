"""Keras -> TFLite (fp32, fp16, int8) and ONNX (fp32, int8), then a parity check through the real runtimes.

Every artifact takes raw RGB uint8 pixels (NHWC 32x32x3): the graph casts, applies the
declared preprocessing and ends in probabilities. int8 artifacts are calibrated on a
representative set from the train split's validation slice, never the test split;
parity is measured on other images of that slice, through the same backends
``classify`` and ``bench`` use.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import shutil
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from cifarbench import CIFAR10_CLASSES
from cifarbench.data import Dataset, load_dataset, train_val_split
from cifarbench.errors import CheckFailed, DataError, ModelError, UsageError
from cifarbench.kerasio import apply_preprocess, load_keras_model, model_input_shape, parse_preprocess
from cifarbench.manifest import FORMAT_FILES, FORMATS, Manifest

EXPORT_FORMATS = FORMATS[1:]  # everything but keras itself
# Strict parity for float32 artifacts; float16 weights carry a 2**-11 relative rounding error by
# construction (measured on baseline-cnn: max |dp| 2.2e-3), so they get a bound of their own.
PARITY_BOUNDS = {"tflite": (0.999, 1e-3), "onnx": (0.999, 1e-3), "tflite-fp16": (0.995, 1e-2)}
FLOAT_FORMATS = tuple(PARITY_BOUNDS)
INT8_TARGET_PP, INT8_WARN_PP = 0.3, 1.0

__all__ = ["convert", "load_keras_model", "EXPORT_FORMATS"]


def _version(pkg: str) -> str | None:
    try:
        return importlib.metadata.version(pkg)
    except importlib.metadata.PackageNotFoundError:
        return None


def read_classes(path: str | os.PathLike[str] | None) -> list[str]:
    """Class names from a text file (one per line) or a JSON list; CIFAR-10's by default."""
    if path is None:
        return list(CIFAR10_CLASSES)
    text = Path(path).read_text(encoding="utf-8")
    names = json.loads(text) if text.lstrip().startswith("[") else [ln.strip() for ln in text.splitlines() if ln.strip()]
    if not names or len(set(names)) != len(names):
        raise UsageError(f"{path}: need a non-empty list of unique class names")
    return [str(n) for n in names]


def _sample_data(source: str, classes: Sequence[str], seed: int, val_size: int) -> Dataset:
    """The held-out validation slice of ``source``'s train split (what training never fitted on)."""
    # Only ever the train split (a flat <class>/ folder counts as one); never a test-only source.
    full = load_dataset(source, "train", classes=classes)
    if len(full) <= 2:
        raise DataError(f"{source}: too few images for calibration ({len(full)})")
    _, val = train_val_split(full, min(val_size, len(full) - 1), seed)
    return val


def convert(
    model_path: str | os.PathLike[str],
    out: str | os.PathLike[str] | None = None,
    formats: Sequence[str] = EXPORT_FORMATS,
    calibration_data: str | None = None,
    calibration_size: int = 1000,
    parity_size: int = 2000,
    opset: int = 17,
    preprocess: str | None = None,
    classes_file: str | None = None,
    unsafe: bool = False,
    input_size: tuple[int, int] | None = None,
    on_step: Callable[[str], None] | None = None,
) -> Manifest:
    """Convert ``model_path`` into ``out`` (default: beside it) and record artifacts and parity in manifest.json."""
    say = on_step or (lambda _msg: None)
    bad = [f for f in formats if f not in EXPORT_FORMATS]
    if bad:
        raise UsageError(f"unknown format(s) {', '.join(bad)}; choose from {', '.join(EXPORT_FORMATS)}")
    src = Path(model_path)
    if src.is_dir() and (src / "manifest.json").is_file():
        src = src / "model.keras"
    out_dir = Path(out) if out else (src if src.is_dir() else src.parent)

    # 1. The model, its manifest (if it came from `cifarbench train`) and its contract.
    model = load_keras_model(src, unsafe=unsafe)
    prior = _prior_manifest(src)
    classes = read_classes(classes_file) if classes_file else (prior.classes if prior else list(CIFAR10_CLASSES))
    steps = parse_preprocess(preprocess)
    shape = model_input_shape(model)
    if tuple(shape[1:]) != (32, 32, 3):
        if input_size is None or tuple(shape[1:3]) != tuple(input_size) or shape[3] != 3:
            raise ModelError(
                f"model input shape {tuple(shape[1:])} is not 32x32x3; pass --input-size H,W matching the model "
                "to resize the 32x32 pixels inside the graph")
    import tensorflow as tf

    def forward(x: Any) -> Any:
        if input_size is not None and tuple(shape[1:3]) != (32, 32):
            x = tf.image.resize(x, input_size, method="bilinear")
        return model(apply_preprocess(x, steps), training=False)

    probe = np.asarray(forward(tf.constant(np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3)), tf.float32)))
    if probe.ndim != 2 or probe.shape[1] != len(classes):
        raise ModelError(f"model output shape {probe.shape[1:]} does not match {len(classes)} classes; pass --classes FILE")
    add_softmax = not (np.all(probe >= 0) and np.allclose(probe.sum(1), 1.0, atol=1e-3))

    def probs(x: Any) -> Any:
        y = tf.cast(forward(x), tf.float32)
        return tf.nn.softmax(y) if add_softmax else y

    # 2. Data: the validation slice of the train split; calibration and parity take disjoint parts.
    source = calibration_data or _default_calibration_source(prior)
    seed = int(prior.training.get("seed", 0)) if prior else 0
    val_size = int(prior.training.get("data", {}).get("val", 5000)) if prior else calibration_size + parity_size
    say(f"loading calibration/parity data from {source}")
    val = _sample_data(source, classes, seed, val_size)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(val))
    n_cal = min(calibration_size, max(1, len(val) // 2))
    cal_x = val.images[order[:n_cal]]
    par_idx = order[n_cal : n_cal + parity_size] if len(val) > n_cal else order[:parity_size]
    par_x, par_y = val.images[par_idx], val.labels[par_idx]

    # 3. Export.
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest = _start_manifest(prior, src, out_dir, classes, model, formats)
    manifest.input["preprocess_baked"] = preprocess or "none"
    manifest.input["softmax_added"] = bool(add_softmax)
    if input_size is not None and tuple(shape[1:3]) != (32, 32):
        manifest.input["model_input_size"] = list(input_size)
    if unsafe and "keras" in manifest.artifacts:
        manifest.artifacts["keras"].details["unsafe"] = True
    exporters = {
        "tflite": lambda p: _to_tflite(tf, model, probs, p, None, cal_x),
        "tflite-fp16": lambda p: _to_tflite(tf, model, probs, p, "fp16", cal_x),
        "tflite-int8": lambda p: _to_tflite(tf, model, probs, p, "int8", cal_x),
        "onnx": lambda p: _to_onnx(tf, probs, p, opset),
    }
    for fmt in formats:
        if fmt == "onnx-int8":
            continue
        say(f"exporting {fmt}")
        t0 = time.time()
        details = exporters[fmt](out_dir / FORMAT_FILES[fmt])
        _record(manifest, fmt, t0, details, source, n_cal, opset, preprocess)
    if "onnx-int8" in formats:
        say("exporting onnx-int8")
        t0 = time.time()
        fp32 = out_dir / FORMAT_FILES["onnx"]
        tmp_fp32 = None
        if "onnx" not in manifest.artifacts:
            tmp_fp32 = Path(tempfile.mkdtemp()) / "model.onnx"
            _to_onnx(tf, probs, tmp_fp32, opset)
            fp32 = tmp_fp32
        details = _to_onnx_int8(fp32, out_dir / FORMAT_FILES["onnx-int8"], cal_x)
        if tmp_fp32:
            shutil.rmtree(tmp_fp32.parent, ignore_errors=True)
        _record(manifest, "onnx-int8", t0, details, source, n_cal, opset, preprocess)
    manifest.save()

    # 4. Parity through the runtimes, against the Keras model itself.
    say(f"parity check on {len(par_x)} images")
    ref = np.concatenate([np.asarray(probs(tf.constant(par_x[i : i + 500], tf.float32))) for i in range(0, len(par_x), 500)])
    ref_parity = _parity(ref, ref, par_y)
    if "keras" in manifest.artifacts:
        manifest.artifacts["keras"].parity = ref_parity
    failures = []
    from cifarbench.backends import load_backend

    for fmt in formats:
        backend = load_backend(fmt, manifest, "cpu", None)
        got = np.concatenate([backend.predict(par_x[i : i + 256]) for i in range(0, len(par_x), 256)])
        par = _parity(got, ref, par_y)
        manifest.artifacts[fmt].parity = par
        if fmt in FLOAT_FORMATS:
            min_agree, max_delta = PARITY_BOUNDS[fmt]
            par["status"] = "ok" if par["top1_agreement"] >= min_agree and par["max_abs_dprob"] <= max_delta else "FAIL"
            if par["status"] == "FAIL":
                failures.append(f"{fmt}: agreement {par['top1_agreement']:.4f}, max|dp| {par['max_abs_dprob']:.2e}")
        else:
            drop = (ref_parity["accuracy"] - par["accuracy"]) * 100
            par["accuracy_drop_pp"] = round(drop, 3)
            par["status"] = "ok" if drop <= INT8_TARGET_PP else ("warn" if drop <= INT8_WARN_PP else "WARN: above 1 pp")
    manifest.metrics["parity"] = {"reference_accuracy": ref_parity["accuracy"], "source": source, "split": "train (validation slice)", "images": int(len(par_x)),
                                  "thresholds": {"float (min top-1 agreement, max |dp|)": PARITY_BOUNDS,
                                                 "int8_target_drop_pp": INT8_TARGET_PP, "int8_warn_drop_pp": INT8_WARN_PP}}
    manifest.save()
    if failures:
        raise CheckFailed("float artifacts disagree with Keras: " + "; ".join(failures))
    return manifest


def _parity(got: np.ndarray, ref: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
    return {
        "images": int(len(labels)),
        "top1_agreement": float((got.argmax(1) == ref.argmax(1)).mean()),
        "max_abs_dprob": float(np.abs(got - ref).max()),
        "mean_abs_dprob": float(np.abs(got - ref).mean()),
        "accuracy": float((got.argmax(1) == labels).mean()),
    }


def _prior_manifest(src: Path) -> Manifest | None:
    cand = (src if src.is_dir() else src.parent) / "manifest.json"
    if cand.is_file():
        try:
            m = Manifest.load(cand)
            if "keras" in m.artifacts and (src.is_dir() or m.artifacts["keras"].file == src.name):
                return m
        except ModelError:
            return None
    return None


def _default_calibration_source(prior: Manifest | None) -> str:
    data = (prior.training.get("data", {}) if prior else {}).get("source")
    if data and (data == "cifar10" or Path(data).exists()):
        return data
    raise UsageError("no --calibration-data given and the model's training data is not at hand; pass "
                     "--calibration-data SOURCE (a train-split source: never the test split)")


def _start_manifest(prior: Manifest | None, src: Path, out_dir: Path, classes: list[str], model: Any,
                    formats: Sequence[str]) -> Manifest:
    if prior is not None:
        m = Manifest.load(prior.directory)  # type: ignore[arg-type]
    else:
        m = Manifest(name=out_dir.name, arch="foreign", classes=classes)
        try:
            m.params = int(model.count_params())
        except Exception:
            pass
        m.training = {"source_file": str(src)}
    m.classes = classes
    m.directory = out_dir
    # Artifacts this run does not rebuild stay listed, if their files are still there.
    m.artifacts = {k: v for k, v in m.artifacts.items() if k not in formats and (out_dir / v.file).is_file()}
    keras_dst = out_dir / (src.name if not src.is_dir() else FORMAT_FILES["keras"])
    if not src.is_dir():
        if src.resolve() != keras_dst.resolve():
            shutil.copy2(src, keras_dst)
        m.add_artifact("keras", keras_dst.name, input_dtype="float32 pixels 0-255 (cast uint8)")
    return m


def _record(m: Manifest, fmt: str, t0: float, details: dict[str, Any], source: str, n_cal: int, opset: int, preprocess: str | None) -> None:
    details = dict(details)
    details["convert_seconds"] = round(time.time() - t0, 2)
    details["versions"] = {k: _version(k) for k in ("tensorflow", "tf2onnx", "onnx", "onnxruntime", "ai-edge-litert")}
    details["preprocess"] = preprocess or "none"
    if fmt.startswith("onnx"):
        details["opset"] = opset
    if fmt.endswith("int8"):
        details["calibration"] = {"source": source, "split": "train (validation slice)", "images": n_cal}
    inq, outq = details.pop("input_quantization", None), details.pop("output_quantization", None)
    m.add_artifact(fmt, FORMAT_FILES[fmt], input_dtype="uint8",
                   output_dtype=details.pop("output_dtype", "float32"),
                   input_quantization=inq, output_quantization=outq, details=details)


def _to_tflite(tf: Any, model: Any, probs: Callable, path: Path, mode: str | None, cal_x: np.ndarray) -> dict[str, Any]:
    if mode == "int8":
        fn = tf.function(lambda x: probs(x), input_signature=[tf.TensorSpec([None, 32, 32, 3], tf.float32, name="pixels")])
    else:
        fn = tf.function(lambda x: probs(tf.cast(x, tf.float32)),
                         input_signature=[tf.TensorSpec([None, 32, 32, 3], tf.uint8, name="pixels")])
    frozen = _freeze(fn)  # no READ_VARIABLE ops left to calibrate
    conv = tf.lite.TFLiteConverter.from_concrete_functions([frozen])
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
        blob = conv.convert()
    _write_bytes(path, blob)
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_content=blob)
    inp, outp = it.get_input_details()[0], it.get_output_details()[0]
    q = lambda d: {"scale": float(d["quantization"][0]), "zero_point": int(d["quantization"][1])} if d["quantization"][0] else None  # noqa: E731
    return {"converter": "tf.lite.TFLiteConverter", "mode": mode or "fp32", "input_quantization": q(inp),
            "output_quantization": q(outp), "output_dtype": np.dtype(outp["dtype"]).name}


def _to_onnx(tf: Any, probs: Callable, path: Path, opset: int) -> dict[str, Any]:
    import tf2onnx

    fn = tf.function(lambda x: probs(tf.cast(x, tf.float32)),
                     input_signature=[tf.TensorSpec([None, 32, 32, 3], tf.uint8, name="pixels")])
    frozen = _freeze(fn)  # Keras variables become constants, not stray graph inputs
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        proto, _ = tf2onnx.convert.from_graph_def(
            frozen.graph.as_graph_def(), input_names=[t.name for t in frozen.inputs],
            output_names=[t.name for t in frozen.outputs], opset=opset)
    _rename_io(proto, "pixels", "probabilities")
    _write_bytes(path, proto.SerializeToString())
    return {"converter": f"tf2onnx {tf2onnx.__version__} (frozen graph)", "dynamic_batch": True}


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


def _to_onnx_int8(fp32: Path, path: Path, cal_x: np.ndarray) -> dict[str, Any]:
    import onnxruntime as ort
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    name = ort.InferenceSession(str(fp32), providers=["CPUExecutionProvider"]).get_inputs()[0].name

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter([{name: cal_x[i : i + 50]} for i in range(0, len(cal_x), 50)])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.batches, None)

    with tempfile.TemporaryDirectory() as tmp:
        pre = Path(tmp) / "pre.onnx"
        try:
            quant_pre_process(str(fp32), str(pre), skip_symbolic_shape=True)
        except Exception:
            shutil.copy2(fp32, pre)
        q = Path(tmp) / "q.onnx"
        quantize_static(str(pre), str(q), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, reduce_range=True)
        _write_bytes(path, q.read_bytes())
    return {"converter": "onnxruntime.quantization.quantize_static", "format": "QDQ", "per_channel": True,
            "activations": "uint8", "weights": "int8 (7-bit range)",
            "reduce_range_reason": "U8S8 saturates in VPMADDUBSW on AVX2/AVX-512 CPUs without VNNI; measured on "
                                   "baseline-cnn: top-1 agreement 0.8995 -> 0.974 with reduce_range"}


def _write_bytes(path: Path, blob: bytes) -> None:
    from cifarbench.atomic import atomic_write

    with atomic_write(path, "wb") as fh:
        fh.write(blob)
