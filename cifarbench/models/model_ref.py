"""Resolving a model reference: a shipped name, a directory with manifest.json, or a single artifact file.

An artifact file passed alone uses the ``manifest.json`` beside it when that lists the file (its
classes, input size and transform); a file with no manifest is read for its input size and
output width, and its classes are named ``class_0..`` (CIFAR-10's for 10 outputs, with a note).
"""

from __future__ import annotations

import os
from pathlib import Path

from cifarbench.errors import ModelError, first_line
from cifarbench.events import Emit, Event
from cifarbench.models.manifest import FORMAT_FILES, MANIFEST_NAME, InputContract, Manifest, sha256_file
from cifarbench.paths import DEFAULT_MODEL, trained_dir


def shipped_models() -> list[str]:
    root = trained_dir()
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if (p / MANIFEST_NAME).is_file())


def resolve_model(spec: str | os.PathLike[str] | None = None) -> Manifest:
    """Find a model's manifest; a bare artifact file gets a manifest built in memory."""
    spec = DEFAULT_MODEL if spec in (None, "") else os.fspath(spec)
    path = Path(spec).expanduser()
    if path.is_dir():
        return Manifest.load(path)
    if path.is_file():
        if path.name == MANIFEST_NAME:
            return Manifest.load(path)
        return _single_file_manifest(path)
    shipped = trained_dir() / str(spec)
    if os.sep not in str(spec) and (shipped / MANIFEST_NAME).is_file():
        return Manifest.load(shipped)
    names = ", ".join(shipped_models()) or "none installed"
    raise ModelError(f"model {spec!r} not found: not a file, a directory with {MANIFEST_NAME}, or a shipped model ({names})")


def emit_model_notes(manifest: Manifest, emit: Emit) -> None:
    """The model's one-line notes (e.g. a lone artifact's 10 outputs named as CIFAR-10's classes) as ``note``
    events: the one place classify, bench and serve say them."""
    for line in manifest.notes:
        emit(Event("note", line))


def _single_file_manifest(path: Path) -> Manifest:
    """A lone artifact: its folder's manifest if that lists it, else one built from the file itself."""
    beside = _manifest_beside(path)
    if isinstance(beside, Manifest):
        return beside
    suffix = path.suffix.lower()
    if suffix == ".onnx":
        fmt = "onnx-int8" if _onnx_is_quantized(path) else "onnx"
        size, n_out = _onnx_io(path)
    elif suffix == ".tflite":
        fmt, size, n_out = _tflite_format(path)
    elif suffix in (".keras", ".h5", ".hdf5"):
        fmt, (size, n_out) = "keras", _keras_io(path)
    else:
        raise ModelError(f"{path}: unknown model file type {suffix!r} (expected .onnx, .tflite, .keras or .h5)")
    from cifarbench.models.classes import default_classes

    m = Manifest(name=path.stem, arch="unknown")
    if beside is not None:  # a manifest that cannot be read: say so, or its classes vanish without a word
        m.notes.append(f"{path.name}: {beside}")
    if n_out is not None:
        m.classes, note = default_classes(n_out)
        if note:
            m.notes.append(f"{path.name}: {note}")
    if size is not None:
        m.input = InputContract(size=size)
    m.directory = path.parent
    m.add_artifact(fmt, path.name)
    return m


def _manifest_beside(path: Path) -> Manifest | str | None:
    """The folder's manifest, narrowed to this file's artifact, when it lists the file; a note when it cannot be read."""
    cand = path.parent / MANIFEST_NAME
    if not cand.is_file():
        return None
    try:
        m = Manifest.load(cand)
    except ModelError as exc:
        return f"the {MANIFEST_NAME} beside it is not readable, so it is ignored ({first_line(exc, 200)})"
    mine = {fmt: art for fmt, art in m.artifacts.items() if art.file == path.name}
    if not mine:
        return None
    m.artifacts = mine
    return m


def _static(dims: list) -> list[int | None]:
    return [d if isinstance(d, int) and d > 0 else None for d in dims]


def _onnx_io(path: Path) -> tuple[tuple[int, int] | None, int | None]:
    """(H, W) of a uint8 NHWC ``pixels`` input and the output width, where the graph states them."""
    try:
        import onnxruntime as ort

        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except ImportError:
        return None, None
    except Exception as exc:
        raise ModelError(f"{path}: not a readable ONNX model ({first_line(exc)})") from None
    inp, out = _static(list(sess.get_inputs()[0].shape)), _static(list(sess.get_outputs()[0].shape))
    size = (inp[1], inp[2]) if len(inp) == 4 and inp[3] == 3 and None not in inp[1:3] else None
    return size, (out[-1] if out else None)  # type: ignore[return-value]


def _keras_io(path: Path) -> tuple[tuple[int, int] | None, int | None]:
    from cifarbench.models.tfquiet import framework_logs

    try:
        from cifarbench.models.kerasio import load_keras_model, model_input_shape

        # TensorFlow's first import prints absl's pre-init lines whatever the log level: hidden, as the keras
        # backend hides them, or `classify -m lone.keras -q` is not silent.
        with framework_logs(verbose=os.environ.get("CIFARBENCH_VERBOSE_FRAMEWORKS") == "1"):
            model = load_keras_model(path, unsafe=False)
        shape = _static(list(model_input_shape(model)))
        out = _static(list(model.output_shape))
    except ModelError:
        return None, None  # the keras backend reports why it cannot load it
    except Exception:
        return None, None
    size = (shape[1], shape[2]) if len(shape) == 4 and None not in shape[1:3] else None
    return size, (out[-1] if out else None)  # type: ignore[return-value]


def _onnx_is_quantized(path: Path) -> bool:
    try:
        import onnx

        model = onnx.load(str(path), load_external_data=False)
        return any(n.op_type in ("QuantizeLinear", "QLinearConv", "ConvInteger") for n in model.graph.node)
    except ImportError:  # onnx is only in the train extra: fall back to the name
        return "int8" in path.stem.lower()
    except Exception as exc:
        raise ModelError(f"{path}: not a readable ONNX model ({exc})") from None


def _tflite_format(path: Path) -> tuple[str, tuple[int, int] | None, int | None]:
    """Format (by input dtype and float16 tensors), input (H, W) and output width of a .tflite file."""
    try:
        from ai_edge_litert.interpreter import Interpreter

        it = Interpreter(model_path=str(path))
    except Exception as exc:
        raise ModelError(f"{path}: not a readable TFLite model ({first_line(exc)})") from None
    inp, out = it.get_input_details()[0], it.get_output_details()[0]
    shape = [int(v) for v in inp["shape"]]
    size = (shape[1], shape[2]) if len(shape) == 4 and shape[3] == 3 and min(shape[1:3]) > 0 else None
    n_out = int(out["shape"][-1]) if len(out["shape"]) else None
    if inp["dtype"].__name__ in ("uint8", "int8"):
        return "tflite-int8", size, n_out
    dtypes = {d["dtype"].__name__ for d in it.get_tensor_details()}
    return ("tflite-fp16" if "float16" in dtypes else "tflite"), size, n_out


__all__ = ["resolve_model", "emit_model_notes", "shipped_models", "FORMAT_FILES", "sha256_file"]
