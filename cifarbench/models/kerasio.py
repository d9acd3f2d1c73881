"""Loading Keras models of every vintage, and applying the input contract's preprocessing.

Keras 3 refuses many files written by Keras 2 (``batch_input_shape`` in the config,
old layer names), so those fall back to ``tf_keras``; Keras 2 ``.keras`` zips saved on
Windows are read from a fixed temporary copy (see ``keras2zip``). Safe mode stays on
unless the user passes ``--unsafe``: a Lambda layer is arbitrary code.
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path
from typing import Any, Sequence

from cifarbench.errors import ModelError, first_line
from cifarbench.models import keras2zip
from cifarbench.models.manifest import InputContract, Step, parse_preprocess
from cifarbench.models.tfquiet import quiet_tensorflow

_DEFAULT_SHAPE = (None, *InputContract().shape)  # a model that does not say: the artifacts' own contract
_UNSAFE_HINT = "it contains a Lambda or custom layer (arbitrary code); pass --unsafe only if you trust the file"


def load_keras_model(path: str | os.PathLike[str], unsafe: bool = False) -> Any:
    """A callable Keras model (Keras 3, tf_keras, or a SavedModel wrapped in a Keras layer)."""
    p = Path(path)
    if not p.exists():
        raise ModelError(f"{p}: no such file or directory")
    quiet_tensorflow()
    if p.is_dir():
        return _load_saved_model(p)
    suffix = p.suffix.lower()
    if suffix in (".h5", ".hdf5"):
        _check_h5(p)
    elif suffix == ".keras":
        if not zipfile.is_zipfile(p):
            raise ModelError(f"{p}: not a readable .keras file (truncated or not a zip archive)")
        try:
            bad = keras2zip.unsafe_member(p)
            fix = bad is None and keras2zip.needs_fixing(p)
        except Exception as exc:  # a zip with a broken member or weights file
            raise ModelError(f"{p}: not a readable .keras file ({first_line(exc, 300)})") from None
        if bad is not None:
            raise ModelError(f"{p}: refused: the archive has a member named {bad[:120]!r}, which points outside "
                             "its folder (a .keras file never does)")
        if fix:
            with keras2zip.fixed_copy(p) as fixed:
                return _load_file(fixed, unsafe, shown=p)
    else:
        raise ModelError(f"{p}: unknown model file type {suffix!r} (expected .keras, .h5 or a SavedModel directory)")
    return _load_file(p, unsafe, shown=p)


def _load_file(p: Path, unsafe: bool, shown: Path) -> Any:
    """Keras 3 first, then tf_keras; errors name ``shown`` (the user's file, not a temporary copy)."""
    import keras

    try:
        return keras.saving.load_model(p, compile=False, safe_mode=not unsafe)
    except Exception as exc:  # Keras raises ValueError/TypeError/KeyError for config trouble
        first = first_line(exc, 300)
        if _is_unsafe_error(first):
            raise ModelError(f"{shown}: {_UNSAFE_HINT}") from None
        keras3_error = first
    # Keras 2 files: tf_keras reads its own formats.
    try:
        import tf_keras
    except ImportError:
        raise ModelError(f"{shown}: Keras 3 cannot load it ({keras3_error}); install tf_keras for Keras 2 files") from None
    try:
        return tf_keras.models.load_model(p, compile=False, safe_mode=not unsafe)
    except TypeError:  # older tf_keras without safe_mode for this format
        try:
            return tf_keras.models.load_model(p, compile=False)
        except Exception as exc:
            raise ModelError(f"{shown}: cannot load ({keras3_error}; tf_keras: {first_line(exc, 300)})") from None
    except Exception as exc:
        msg = first_line(exc, 300)
        if _is_unsafe_error(msg):
            raise ModelError(f"{shown}: {_UNSAFE_HINT}") from None
        raise ModelError(f"{shown}: cannot load with Keras 3 ({keras3_error}) nor tf_keras ({msg})") from None


def _check_h5(p: Path) -> None:
    try:
        import h5py

        with h5py.File(p, "r") as f:
            if "model_config" not in f.attrs:
                raise ModelError(
                    f"{p}: weights-only HDF5 file, the architecture is missing; save the full model "
                    "(model.save) or build the architecture and load these weights into it"
                )
    except ModelError:
        raise
    except Exception as exc:
        raise ModelError(f"{p}: not a readable HDF5 file ({first_line(exc, 300)})") from None


def _load_saved_model(p: Path) -> Any:
    if not (p / "saved_model.pb").is_file():
        raise ModelError(f"{p}: a directory but not a TensorFlow SavedModel (no saved_model.pb)")
    import keras

    try:
        layer = keras.layers.TFSMLayer(str(p), call_endpoint="serving_default")
    except Exception as exc:
        raise ModelError(f"{p}: cannot load the SavedModel ({first_line(exc, 300)})") from None
    return _SavedModelCallable(layer)


class _SavedModelCallable:
    """Calls a SavedModel's serving signature and returns its single output tensor."""

    def __init__(self, layer: Any) -> None:
        self.layer = layer
        sig = layer._endpoint_signatures["serving_default"] if hasattr(layer, "_endpoint_signatures") else None
        self.input_shape = _DEFAULT_SHAPE
        try:
            spec = list(sig.structured_input_signature[1].values())[0]
            self.input_shape = tuple(spec.shape)
        except Exception:
            pass

    def __call__(self, x: Any, training: bool = False) -> Any:
        out = self.layer(x)
        if isinstance(out, dict):
            if len(out) != 1:
                raise ModelError(f"SavedModel has {len(out)} outputs; expected one class vector")
            out = next(iter(out.values()))
        return out

    def save(self, path: Any) -> None:  # pragma: no cover - SavedModels are copied, not re-saved
        raise ModelError("cannot re-save a SavedModel as .keras")


def model_input_shape(model: Any) -> tuple:
    """The model's single input shape, batch dimension first."""
    shape = getattr(model, "input_shape", None)
    if isinstance(shape, list):
        if len(shape) != 1:
            raise ModelError(f"model has {len(shape)} inputs; expected one image input")
        shape = shape[0]
    return tuple(shape) if shape is not None else _DEFAULT_SHAPE


def _is_unsafe_error(msg: str) -> bool:
    m = msg.lower()
    return "safe_mode" in m or "lambda" in m and "unsafe" in m or "arbitrary code" in m


# --------------------------------------------------------------------------- preprocessing


def apply_preprocess(x: Any, steps: Sequence[Step]) -> Any:
    """Apply steps to float pixels; works on TF tensors and numpy arrays alike."""
    for s in steps:
        if s.kind == "bgr":
            x = x[..., ::-1]  # RGB -> BGR (a strided slice in TF graphs)
        elif s.kind == "scale":
            x = x * s.scale
        else:
            x = (x - list(s.mean)) / list(s.std)
    return x


__all__ = ["load_keras_model", "model_input_shape", "apply_preprocess", "parse_preprocess", "Step"]
