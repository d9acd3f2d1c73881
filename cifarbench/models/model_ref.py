"""Resolving a model reference: a shipped name, a directory with manifest.json, or a single artifact file."""

from __future__ import annotations

import os
from pathlib import Path

from cifarbench.errors import ModelError, first_line
from cifarbench.models.manifest import FORMAT_FILES, MANIFEST_NAME, Manifest, sha256_file
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


def _single_file_manifest(path: Path) -> Manifest:
    """A lone artifact: format from its suffix, quantization from its content; CIFAR-10 classes assumed."""
    suffix = path.suffix.lower()
    if suffix == ".onnx":
        fmt = "onnx-int8" if _onnx_is_quantized(path) else "onnx"
    elif suffix == ".tflite":
        fmt = _tflite_format(path)
    elif suffix in (".keras", ".h5", ".hdf5"):
        fmt = "keras"
    else:
        raise ModelError(f"{path}: unknown model file type {suffix!r} (expected .onnx, .tflite, .keras or .h5)")
    m = Manifest(name=path.stem, arch="unknown")
    m.directory = path.parent
    m.add_artifact(fmt, path.name)
    return m


def _onnx_is_quantized(path: Path) -> bool:
    try:
        import onnx

        model = onnx.load(str(path), load_external_data=False)
        return any(n.op_type in ("QuantizeLinear", "QLinearConv", "ConvInteger") for n in model.graph.node)
    except ImportError:  # onnx is only in the train extra: fall back to the name
        return "int8" in path.stem.lower()
    except Exception as exc:
        raise ModelError(f"{path}: not a readable ONNX model ({exc})") from None


def _tflite_format(path: Path) -> str:
    try:
        from ai_edge_litert.interpreter import Interpreter

        it = Interpreter(model_path=str(path))
    except Exception as exc:
        raise ModelError(f"{path}: not a readable TFLite model ({first_line(exc)})") from None
    if it.get_input_details()[0]["dtype"].__name__ in ("uint8", "int8"):
        return "tflite-int8"
    dtypes = {d["dtype"].__name__ for d in it.get_tensor_details()}
    return "tflite-fp16" if "float16" in dtypes else "tflite"


__all__ = ["resolve_model", "shipped_models", "FORMAT_FILES", "sha256_file"]
