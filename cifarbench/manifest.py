"""The one manifest: a ``manifest.json`` beside every artifact set.

It is the contract between train, convert, classify, bench and serve: class names,
input contract, each file's checksum and quantization, the training recipe and the
metrics that were measured. Backends read only this to know how to feed a model.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cifarbench import CIFAR10_CLASSES, __version__
from cifarbench.atomic import atomic_write
from cifarbench.errors import ModelError

MANIFEST_NAME = "manifest.json"
SCHEMA_VERSION = 1

# Artifact formats, in the order a user would pick them for speed on a CPU.
FORMATS = ("keras", "tflite", "tflite-fp16", "tflite-int8", "onnx", "onnx-int8")
FORMAT_FILES = {
    "keras": "model.keras",
    "tflite": "model.tflite",
    "tflite-fp16": "model_fp16.tflite",
    "tflite-int8": "model_int8.tflite",
    "onnx": "model.onnx",
    "onnx-int8": "model_int8.onnx",
}


def default_input() -> dict[str, Any]:
    return {
        "shape": [32, 32, 3],
        "layout": "NHWC",
        "dtype": "uint8",
        "color": "RGB",
        "range": [0, 255],
        "preprocess": "inside the model",
    }


@dataclass
class Artifact:
    file: str
    format: str
    sha256: str
    size: int
    input_dtype: str = "uint8"
    output_dtype: str = "float32"
    input_quantization: dict[str, Any] | None = None
    output_quantization: dict[str, Any] | None = None
    details: dict[str, Any] = field(default_factory=dict)  # opset, versions, calibration, wall time
    parity: dict[str, Any] = field(default_factory=dict)


@dataclass
class Manifest:
    name: str
    arch: str
    classes: list[str] = field(default_factory=lambda: list(CIFAR10_CLASSES))
    input: dict[str, Any] = field(default_factory=default_input)
    params: int | None = None
    macs: int | None = None
    training: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    artifacts: dict[str, Artifact] = field(default_factory=dict)
    created: str = field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    cifarbench_version: str = __version__
    schema: int = SCHEMA_VERSION
    directory: Path | None = field(default=None, repr=False, compare=False)

    # ------------------------------------------------------------------ io
    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> "Manifest":
        p = Path(path)
        if p.is_dir():
            p = p / MANIFEST_NAME
        try:
            raw = json.loads(p.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ModelError(f"no {MANIFEST_NAME} in {p.parent}") from None
        except (OSError, ValueError) as exc:
            raise ModelError(f"{p}: unreadable manifest ({exc})") from None
        if not isinstance(raw, dict) or "arch" not in raw:
            raise ModelError(f"{p}: not a cifarbench manifest")
        try:  # unknown keys (a newer cifarbench) are ignored; missing required ones are an error
            art_known = {f.name for f in dataclasses.fields(Artifact)}
            arts = {k: Artifact(**{f: x for f, x in v.items() if f in art_known})
                    for k, v in (raw.pop("artifacts", {}) or {}).items()}
            known = {f.name for f in dataclasses.fields(cls)} - {"directory", "artifacts"}
            m = cls(**{k: v for k, v in raw.items() if k in known}, artifacts=arts)
        except (TypeError, AttributeError) as exc:
            raise ModelError(f"{p}: not a valid cifarbench manifest ({exc})") from None
        m.directory = p.parent
        return m

    def save(self, directory: str | os.PathLike[str] | None = None) -> Path:
        d = Path(directory) if directory is not None else self.directory
        if d is None:
            raise ValueError("manifest has no directory")
        self.directory = d
        data = dataclasses.asdict(self)
        data.pop("directory")
        with atomic_write(d / MANIFEST_NAME) as fh:
            json.dump(data, fh, indent=2, sort_keys=False, default=_json_default)
            fh.write("\n")
        return d / MANIFEST_NAME

    # ------------------------------------------------------------------ artifacts
    def path_of(self, fmt: str) -> Path:
        if fmt not in self.artifacts:
            have = ", ".join(self.artifacts) or "none"
            raise ModelError(f"model {self.name!r} has no {fmt} artifact (has: {have}); run `cifarbench convert`")
        assert self.directory is not None
        return self.directory / self.artifacts[fmt].file

    def add_artifact(self, fmt: str, file: str, **kwargs: Any) -> Artifact:
        assert self.directory is not None
        path = self.directory / file
        art = Artifact(file=file, format=fmt, sha256=sha256_file(path), size=path.stat().st_size, **kwargs)
        self.artifacts[fmt] = art
        return art

    def verify(self, fmt: str) -> Path:
        """The artifact's path, after checking size and checksum against the manifest."""
        path = self.path_of(fmt)
        art = self.artifacts[fmt]
        if not path.is_file():
            raise ModelError(f"{path}: listed in the manifest but missing")
        if path.stat().st_size != art.size or sha256_file(path) != art.sha256:
            raise ModelError(f"{path}: checksum does not match the manifest (file changed or corrupt)")
        return path


def sha256_file(path: str | os.PathLike[str]) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _json_default(o: Any) -> Any:
    try:
        import numpy as np

        if isinstance(o, np.generic):
            return o.item()
        if isinstance(o, np.ndarray):
            return o.tolist()
    except ImportError:  # pragma: no cover
        pass
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")
