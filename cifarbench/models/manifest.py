"""The one manifest: a ``manifest.json`` beside every artifact set.

It is the contract between train, convert, classify, bench and serve: class names,
input contract, each file's checksum and quantization, the training recipe and the
metrics that were measured. Backends read only this to know how to feed a model.

Just over 300 lines: the dataclasses, their validation and the readers of first-release manifests
belong together so that one file says what a manifest may contain.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cifarbench import CIFAR10_CLASSES, __version__
from cifarbench.atomic import atomic_write
from cifarbench.data.transform import DEFAULT_INTERPOLATION, Transform
from cifarbench.errors import ModelError, UsageError

MANIFEST_NAME = "manifest.json"
SCHEMA_VERSION = 1

# Artifact formats, in the order a user would pick them for speed on a CPU.
ARTIFACT_FORMATS = ("keras", "tflite", "tflite-fp16", "tflite-int8", "onnx", "onnx-int8")
FORMAT_FILES = {
    "keras": "model.keras",
    "tflite": "model.tflite",
    "tflite-fp16": "model_fp16.tflite",
    "tflite-int8": "model_int8.tflite",
    "onnx": "model.onnx",
    "onnx-int8": "model_int8.onnx",
}


# --------------------------------------------------------------------------- input contract


@dataclass(frozen=True)
class Step:
    """One preprocessing step baked into a graph: ``x * scale``, ``(x - mean) / std`` or ``bgr`` (reverse channels)."""

    kind: str  # "scale", "mean-std" or "bgr"
    scale: float = 1.0
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()


# Keras applications' preprocess_input modes, by name, as explicit steps (ImageNet statistics).
PRESETS = {
    "torch": "scale:1/255+mean-std:0.485,0.456,0.406/0.229,0.224,0.225",  # 0-1, then ImageNet mean/std (RGB)
    "tf": "scale:1/127.5+mean-std:1/1",  # [-1, 1]
    "caffe": "bgr+mean-std:103.939,116.779,123.68/1",  # BGR, ImageNet mean (BGR order) subtracted, no scaling
    "none": "none",
}
_PREPROCESS_HELP = ("use a preset (torch, tf, caffe, none), or scale:1/255, mean-std:R,G,B/R,G,B, bgr, "
                    "or steps joined by +")


def parse_preprocess(spec: str | None) -> tuple[Step, ...]:
    """A preset name, or ``none`` | ``scale:1/255`` | ``mean-std:R,G,B/R,G,B`` | ``bgr``; steps joined with ``+`` run in order.

    Raises ``UsageError`` (exit 2) for anything else, including zero or non-finite numbers.
    """
    if spec and spec.strip().lower() in PRESETS:
        spec = PRESETS[spec.strip().lower()]
    if not spec or spec.strip().lower() == "none":
        return ()
    steps = []
    for part in spec.split("+"):
        kind, _, arg = part.strip().partition(":")
        kind = kind.strip().lower()
        try:
            if kind == "bgr" and not arg.strip():
                steps.append(Step("bgr"))
            elif kind == "scale":
                scale = _number(arg)
                if scale == 0:
                    raise ValueError("scale must not be 0")
                steps.append(Step("scale", scale=scale))
            elif kind == "mean-std":
                mean_s, _, std_s = arg.partition("/")
                mean = tuple(_number(v) for v in mean_s.split(","))
                std = tuple(_number(v) for v in std_s.split(","))
                if len(mean) not in (1, 3) or len(std) not in (1, 3) or any(s == 0 for s in std):
                    raise ValueError("need 1 or 3 means and non-zero stds")
                steps.append(Step("mean-std", mean=mean, std=std))
            else:
                raise ValueError(f"unknown step {kind!r}")
        except ValueError as exc:
            raise UsageError(f"bad --preprocess {spec!r} ({exc}); {_PREPROCESS_HELP}") from None
    return tuple(steps)


def _number(text: str) -> float:
    text = text.strip()
    if re.fullmatch(r"[-+0-9.eE]+/[-+0-9.eE]+", text):
        a, b = (float(v) for v in text.split("/"))
        if b == 0:
            raise ValueError(f"division by zero in {text!r}")
        value = a / b
    else:
        value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text!r} is not a finite number")
    return value


@dataclass(frozen=True)
class InputContract:
    """What every artifact of a model takes, and what convert baked in front of the original model.

    Artifacts take RGB pixels as ``dtype`` in ``layout`` at ``size``: the model's own input size.
    ``preprocess`` (a preset or steps, parsed once into ``steps``), the transpose to ``model_layout``
    and the softmax are inside the graphs. ``resize``, ``crop_pct`` and ``interpolation`` are the eval
    transform every command decodes images with (``transform``). ``model_input_size`` is only read
    from first-release manifests, whose graphs resized 32x32 pixels inside; convert no longer writes
    it. The Keras artifact is the original model, so the keras backend applies the same steps itself.
    Stored in manifest.json under ``input`` with the first release's keys, so old manifests load and
    old readers keep working.
    """

    size: tuple[int, int] = (32, 32)
    channels: int = 3
    dtype: str = "uint8"
    layout: str = "NHWC"
    color: str = "RGB"
    value_range: tuple[int, int] = (0, 255)
    preprocess: str = "none"
    softmax_added: bool = False
    model_input_size: tuple[int, int] | None = None
    model_layout: str = "NHWC"
    resize: str = "center-crop"
    crop_pct: float | None = None
    interpolation: str = DEFAULT_INTERPOLATION
    steps: tuple[Step, ...] = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "size", (int(self.size[0]), int(self.size[1])))
        object.__setattr__(self, "steps", parse_preprocess(self.preprocess))
        self.transform  # validates resize, crop_pct and interpolation (UsageError)

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.size[0], self.size[1], self.channels)

    @property
    def transform(self) -> Transform:
        """How every command turns a photo into this model's pixels (unless its options override a field)."""
        return Transform(self.size, self.resize, self.crop_pct, self.interpolation)

    def transform_with(self, resize: str | None = None, crop_pct: float | None = None,
                       interpolation: str | None = None) -> Transform:
        """The contract's transform with a command line's overrides (None: keep the manifest's)."""
        return Transform(self.size, resize or self.resize, self.crop_pct if crop_pct is None else crop_pct,
                         interpolation or self.interpolation)

    def with_transform(self, resize: str | None = None, crop_pct: float | None = None,
                       interpolation: str | None = None) -> "InputContract":
        """This contract decoding with a command line's overrides (None: keep the manifest's); validated."""
        t = self.transform_with(resize, crop_pct, interpolation)
        if (t.resize, t.crop_pct, t.interpolation) == (self.resize, self.crop_pct, self.interpolation):
            return self
        return dataclasses.replace(self, resize=t.resize, crop_pct=t.crop_pct, interpolation=t.interpolation)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "shape": list(self.shape), "layout": self.layout, "dtype": self.dtype, "color": self.color,
            "range": list(self.value_range), "preprocess": "inside the model",
            "preprocess_baked": self.preprocess or "none", "softmax_added": bool(self.softmax_added),
            "resize": self.resize, "crop_pct": self.crop_pct, "interpolation": self.interpolation,
        }
        if self.model_input_size is not None:
            d["model_input_size"] = list(self.model_input_size)
        if self.model_layout != "NHWC":
            d["model_layout"] = self.model_layout
        return d

    @classmethod
    def from_dict(cls, raw: Any) -> "InputContract":
        """Read the ``input`` block of any release's manifest; missing keys take the first release's defaults."""
        if raw is None:
            return cls()
        if isinstance(raw, InputContract):
            return raw
        if not isinstance(raw, dict):
            raise ModelError(f"input contract must be an object, not {type(raw).__name__}")
        try:
            shape = [int(v) for v in raw.get("shape", (32, 32, 3))]
            if len(shape) != 3 or min(shape) <= 0:
                raise ValueError(f"shape {shape} is not H,W,C")
            mis = raw.get("model_input_size")
            return cls(size=(shape[0], shape[1]), channels=shape[2], dtype=str(raw.get("dtype", "uint8")),
                       layout=str(raw.get("layout", "NHWC")).upper(), color=str(raw.get("color", "RGB")),
                       value_range=tuple(int(v) for v in raw.get("range", (0, 255))),  # type: ignore[arg-type]
                       preprocess=str(raw.get("preprocess_baked") or "none"),
                       softmax_added=bool(raw.get("softmax_added", False)),
                       model_input_size=(int(mis[0]), int(mis[1])) if mis else None,
                       model_layout=str(raw.get("model_layout", "NHWC")).upper(),
                       resize=str(raw.get("resize") or "center-crop"),
                       crop_pct=None if raw.get("crop_pct") is None else float(raw["crop_pct"]),
                       interpolation=str(raw.get("interpolation") or DEFAULT_INTERPOLATION))
        except UsageError as exc:
            raise ModelError(f"input contract: {exc}") from None
        except (TypeError, ValueError, IndexError) as exc:
            raise ModelError(f"input contract: {exc}") from None

    # Mapping-style reads of the JSON keys, for code written against the first release's dict.
    def __getitem__(self, key: str) -> Any:
        return self.to_dict()[key]

    def get(self, key: str, default: Any = None) -> Any:
        return self.to_dict().get(key, default)


def default_input() -> dict[str, Any]:
    return InputContract().to_dict()


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
    input: InputContract = field(default_factory=InputContract)
    params: int | None = None
    macs: int | None = None
    training: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    artifacts: dict[str, Artifact] = field(default_factory=dict)
    created: str = field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    cifarbench_version: str = __version__
    schema: int = SCHEMA_VERSION
    directory: Path | None = field(default=None, repr=False, compare=False)
    notes: list[str] = field(default_factory=list, repr=False, compare=False)  # one-line warnings for the user; not saved

    def __post_init__(self) -> None:
        if not isinstance(self.input, InputContract):  # a dict, e.g. from an old caller or an old file
            self.input = InputContract.from_dict(self.input)

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
            known = {f.name for f in dataclasses.fields(cls)} - {"directory", "artifacts", "notes"}
            m = cls(**{k: v for k, v in raw.items() if k in known}, artifacts=arts)
        except (TypeError, AttributeError) as exc:
            raise ModelError(f"{p}: not a valid cifarbench manifest ({exc})") from None
        except ModelError as exc:
            raise ModelError(f"{p}: {exc}") from None
        m.directory = p.parent
        return m

    def save(self, directory: str | os.PathLike[str] | None = None) -> Path:
        d = Path(directory) if directory is not None else self.directory
        if d is None:
            raise ValueError("manifest has no directory")
        self.directory = d
        data = dataclasses.asdict(self)
        data.pop("directory")
        data.pop("notes")
        data["input"] = self.input.to_dict()
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
