"""Keras 2.x ``.keras`` zips that Keras 3 and tf_keras cannot read as saved.

Two things go wrong with real files, both fixed here on a temporary copy (the user's file is
never touched):

* Keras 2 on Windows joined the weight paths with ``os.path.join``: ``model.weights.h5`` holds
  root groups named ``layers\\conv2d`` instead of nested ``layers/conv2d``, so every loader finds
  "0 variables" for each layer. The groups are rebuilt with ``/``.
* Keras 2 configs carry ``batch_input_shape`` (on ``InputLayer`` and on the first layer of a
  ``Sequential``); Keras 3 wants ``batch_shape`` on an ``InputLayer`` and refuses the key elsewhere.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import tempfile
import zipfile
from pathlib import Path
from typing import Any, Iterator

WEIGHTS = "model.weights.h5"
CONFIG = "config.json"


def unsafe_member(path: Path) -> str | None:
    """The first member name that could write outside a folder it is extracted to (``../``, absolute,
    a drive letter, NUL), with ``\\`` read as ``/``; ``None`` when every name is safe.

    Such an archive is refused rather than copied into a converted model's folder, where a later
    ``unzip`` by another tool could follow the name out of it.
    """
    with zipfile.ZipFile(path) as z:
        for name in z.namelist():
            norm = name.replace("\\", "/")
            parts = norm.split("/")
            if norm.startswith("/") or ".." in parts or "\0" in norm or (len(norm) > 1 and norm[1] == ":"):
                return name
    return None


def needs_fixing(path: Path) -> bool:
    """True for a .keras zip with backslash weight groups or Keras 2 ``batch_input_shape`` keys."""
    with zipfile.ZipFile(path) as z:
        names = z.namelist()
        if any("\\" in n for n in names):
            return True
        if CONFIG in names and b"batch_input_shape" in z.read(CONFIG):
            return True
        if WEIGHTS in names:
            return _h5_has_backslashes(z.read(WEIGHTS))
    return False


@contextlib.contextmanager
def fixed_copy(path: Path) -> Iterator[Path]:
    """A temporary Keras-3-readable copy of ``path``, removed on exit (also when loading raises)."""
    with tempfile.TemporaryDirectory(prefix="cifarbench-keras2-") as tmp:
        dst = Path(tmp) / path.name
        with zipfile.ZipFile(path) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_DEFLATED) as zout:
            for info in zin.infolist():
                name = info.filename.replace("\\", "/")
                data = zin.read(info)
                if name == CONFIG:
                    data = json.dumps(translate_config(json.loads(data))).encode()
                elif name == WEIGHTS:
                    data = _normalise_h5(data)
                zout.writestr(name, data)
        yield dst


def translate_config(cfg: Any) -> Any:
    """Keras 2 -> Keras 3 config keys (recursively, so nested models are covered); ``cfg`` is not modified."""
    return _translate(copy.deepcopy(cfg))


def _translate(cfg: Any) -> Any:
    if isinstance(cfg, list):
        return [_translate(c) for c in cfg]
    if not isinstance(cfg, dict):
        return cfg
    inner = cfg.get("config")
    if isinstance(inner, dict) and "class_name" in cfg:  # a serialised layer or model: fix it before its children
        if cfg["class_name"] == "Sequential" and isinstance(inner.get("layers"), list):
            inner["layers"] = _sequential_layers(inner["layers"])
        elif cfg["class_name"] == "InputLayer" and "batch_input_shape" in inner:
            inner["batch_shape"] = inner.pop("batch_input_shape")
        else:
            inner.pop("batch_input_shape", None)
    return {k: _translate(v) for k, v in cfg.items()}


def _sequential_layers(layers: list[Any]) -> list[Any]:
    """A Sequential whose first layer carries the input shape gets an explicit InputLayer."""
    if not layers or not isinstance(layers[0], dict):
        return layers
    first = layers[0]
    shape = (first.get("config") or {}).pop("batch_input_shape", None) if first.get("class_name") != "InputLayer" else None
    if shape is not None:
        dtype = (first.get("config") or {}).get("dtype", "float32")
        dtype = dtype if isinstance(dtype, str) else "float32"
        layers = [{"module": "keras.layers", "class_name": "InputLayer",
                   "config": {"batch_shape": shape, "dtype": dtype, "name": "input_layer"}, "registered_name": None}] + layers
    for layer in layers[1:]:
        if isinstance(layer, dict) and isinstance(layer.get("config"), dict):
            layer["config"].pop("batch_input_shape", None)
    return layers


def _h5_has_backslashes(blob: bytes) -> bool:
    import h5py

    found = []
    with h5py.File(io.BytesIO(blob), "r") as f:
        f.visit(lambda name: found.append(name) if "\\" in name else None)
    return bool(found)


def _normalise_h5(blob: bytes) -> bytes:
    """Rebuild every group and dataset with ``\\`` in its name under the ``/``-separated path."""
    import h5py

    out = io.BytesIO()
    with h5py.File(io.BytesIO(blob), "r") as src, h5py.File(out, "w") as dst:
        _copy_attrs(src, dst)

        def copy(name: str, obj: Any) -> None:
            target = name.replace("\\", "/")
            if isinstance(obj, h5py.Dataset):
                ds = dst.create_dataset(target, data=obj[()])
                _copy_attrs(obj, ds)
            else:
                _copy_attrs(obj, dst.require_group(target))

        src.visititems(copy)
    return out.getvalue()


def _copy_attrs(src: Any, dst: Any) -> None:
    for k, v in src.attrs.items():
        dst.attrs[k] = v
