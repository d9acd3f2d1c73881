"""Keras or ONNX model -> TFLite (fp32, fp16, int8) and ONNX (fp32, int8) artifacts, with a parity check.

Every artifact takes raw RGB uint8 pixels at the model's own input size (the manifest's
``InputContract``, with the eval transform every command decodes with): the graph casts, applies
the declared preprocessing and ends in probabilities. Calibration, parity and test images are
decoded at that size with that transform, so the reference sees exactly the artifacts' pixels. ``convert`` runs named stages:
open the source, pick the data, export through the registry in ``exporters``, check parity
through the runtimes ``classify`` and ``bench`` use (``parity``), write the manifest once. int8 artifacts
are calibrated on the train split's validation slice, never the test split; parity uses other
images of that slice. A model cifarbench did not train is also scored on the test split
(bundled), because its training set may well include the train-split images.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import importlib.util
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from cifarbench import CIFAR10_CLASSES
from cifarbench.conversion import input_check
from cifarbench.conversion.exporters import EXPORTERS, ExportContext, Source
from cifarbench.conversion.parity import SampleSet, check_parity
from cifarbench.data.sources import Dataset, images_at, load_dataset, train_val_split
from cifarbench.errors import BackendUnavailable, CheckFailed, DataError, ModelError, UsageError
from cifarbench.events import Emit, Event, null_emit
from cifarbench.data.transform import Transform
from cifarbench.models.classes import MAX_CLASSES, default_classes, read_classes  # noqa: F401 (re-exported)
from cifarbench.models.manifest import ARTIFACT_FORMATS, InputContract, Manifest, parse_preprocess, sha256_file

EXPORT_FORMATS = tuple(f for f in ARTIFACT_FORMATS if f in EXPORTERS)  # everything but keras itself, in speed order

__all__ = ["convert", "ConvertOptions", "ParityFailed", "EXPORT_FORMATS"]


@dataclass(frozen=True)
class ConvertOptions:
    """Everything ``cifarbench convert`` takes besides the model and the output folder; validated once."""

    formats: tuple[str, ...] | None = None  # None: every format the source can produce
    calibration_data: str | None = None  # a train-split source; default: the model's training data
    calibration_size: int = 1000
    parity_size: int = 2000
    opset: int = 17
    preprocess: str | None = None  # None: the prior manifest's, else "none"
    classes_file: str | None = None
    unsafe: bool = False
    input_size: tuple[int, int] | None = None  # only for a model whose spatial input size is dynamic
    layout: str | None = None  # an ONNX model's input layout (nchw/nhwc); None: from its shape
    test_data: str = "bundled"  # where a foreign model's test-split accuracy comes from
    resize: str | None = None  # the eval transform stored in the manifest; None: the prior manifest's, else default
    crop_pct: float | None = None
    interpolation: str | None = None

    def __post_init__(self) -> None:
        if self.formats is not None:
            formats = tuple(self.formats)
            bad = [f for f in formats if f not in EXPORTERS]
            if bad or not formats:
                raise UsageError(f"--formats: unknown format(s) {', '.join(bad) or '(none)'}; choose from {', '.join(EXPORT_FORMATS)}")
            object.__setattr__(self, "formats", tuple(f for f in EXPORT_FORMATS if f in formats))
        for name in ("calibration_size", "parity_size"):
            if int(getattr(self, name)) < 1:
                raise UsageError(f"--{name.replace('_', '-')} must be at least 1")
        if not 13 <= int(self.opset) <= 21:
            raise UsageError("--opset must be between 13 and 21")
        parse_preprocess(self.preprocess)  # UsageError (exit 2) now, not half way through
        if self.layout is not None and self.layout.lower() not in ("nchw", "nhwc"):
            raise UsageError("--layout must be nchw or nhwc")
        if self.input_size is not None and (len(self.input_size) != 2 or min(self.input_size) < 1):
            raise UsageError("--input-size must be H,W with positive sizes")
        Transform((1, 1), self.resize or "center-crop", self.crop_pct, self.interpolation or "lanczos")  # UsageError now


class ParityFailed(CheckFailed):
    """A float artifact does not compute what the reference computes; ``manifest`` holds the measurements."""

    def __init__(self, message: str, manifest: Manifest) -> None:
        super().__init__(message)
        self.manifest = manifest


def convert(model_path: str | os.PathLike[str], out: str | os.PathLike[str] | None = None,
            options: ConvertOptions | None = None, *, events: Emit | None = None, **fields: Any) -> Manifest:
    """Convert ``model_path`` into ``out`` (default: beside it); artifacts and parity go to manifest.json.

    ``fields`` override ``options`` (``convert(path, out, parity_size=300)``). Raises ``ParityFailed``
    after saving the manifest when a float artifact disagrees with the reference. ``events`` hears a
    ``step`` event as each stage starts (``cifarbench.events``).
    """
    if "formats" in fields and fields["formats"] is not None:
        fields["formats"] = tuple(fields["formats"])
    opts = dataclasses.replace(options or ConvertOptions(), **fields)
    emit = events or null_emit
    src, prior = _locate(Path(model_path))
    out_dir = Path(out) if out else (src if src.is_dir() else src.parent)
    classes: list[str] | None = read_classes(opts.classes_file) if opts.classes_file else (prior.classes if prior else None)

    # Checked before the model loads (TensorFlow's import alone takes seconds): a wrong --calibration-data fails now.
    cal_source = _calibration_source(prior, opts, classes)
    emit(Event("step", f"loading {src}"))
    source = _open_source(src, prior, opts, len(classes) if classes is not None else None)
    notes: list[str] = []
    if classes is None:
        classes, note = default_classes(source.n_outputs)
        notes += [note] if note else []
    formats = _formats_for(source, opts)
    transform = source.contract.transform
    data = _pick_data(prior, opts, classes, transform, emit) if cal_source else \
        _test_split_parity(opts, classes, emit, transform)
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest = _start_manifest(prior, source, out_dir, classes, formats, opts)
    with tempfile.TemporaryDirectory(prefix="cifarbench-convert-") as scratch:
        _export(ExportContext(source, out_dir, data.cal_x, opts.opset, Path(scratch)), manifest, formats, data, emit)
    failures = check_parity(manifest, source, formats, data, emit)
    if not _trained_here(prior):
        notes += _input_checks(manifest, source, data, classes, emit)
    manifest.metrics["input_check"] = {**manifest.metrics.get("input_check", {}), "warnings": notes}
    manifest.save()
    if failures:
        raise ParityFailed("float artifacts disagree with the reference: " + "; ".join(failures), manifest)
    return manifest


# --------------------------------------------------------------------------- stage 1: the source


def _locate(path: Path) -> tuple[Path, Manifest | None]:
    """The model file to read and its manifest, if it has one; a model folder means its Keras artifact."""
    if path.is_dir() and (path / "manifest.json").is_file():
        m = Manifest.load(path)
        if "keras" not in m.artifacts:
            raise ModelError(f"{path}: its manifest lists no Keras artifact (has: {', '.join(m.artifacts) or 'none'}), "
                             "so there is nothing to convert from; pass the original model file")
        path = path / m.artifacts["keras"].file
        if not path.is_file():
            raise ModelError(f"{path}: listed in the manifest but missing")
    return path, _prior_manifest(path)


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


def _trained_here(prior: Manifest | None) -> bool:
    """True for a model `cifarbench train` made (its recipe is in the manifest)."""
    return prior is not None and bool(prior.training.get("recipe"))


def _input_checks(m: Manifest, source: Source, data: SampleSet, classes: list[str], emit: Emit) -> list[str]:
    """A foreign model: near-chance accuracy and a clearly better preset, as one-line warnings (kept in the manifest)."""
    out = []
    par = m.metrics.get("parity", {})
    test = par.get("test_split", {})
    if "reference_accuracy" in test:
        acc, where = float(test["reference_accuracy"]), "test-split"
    else:
        acc, where = float(par.get("reference_accuracy", 1.0)), "parity-image"
    chance = input_check.near_chance(acc, len(classes), where)
    if chance:
        out.append(chance)
    if hasattr(source, "scores_with") and len(data.par_x):
        emit(Event("step", "checking the preprocessing presets on the parity images"))
        scan = input_check.preset_scan(source, data.par_x, data.par_y, m.input.preprocess)
        m.metrics["input_check"] = {"presets": scan}
        if scan.get("warning"):
            out.append(scan["warning"])
    return out


def _open_source(src: Path, prior: Manifest | None, opts: ConvertOptions, n_classes: int | None) -> Source:
    before = prior.input if prior else InputContract()
    contract = dataclasses.replace(
        before, preprocess=opts.preprocess if opts.preprocess is not None else before.preprocess,
        resize=opts.resize or before.resize, crop_pct=opts.crop_pct if opts.crop_pct is not None else before.crop_pct,
        interpolation=opts.interpolation or before.interpolation)
    fallback = tuple(before.size) if prior is not None else None  # a prior manifest's size serves a dynamic model
    is_onnx = src.suffix.lower() == ".onnx"
    missing = [m for m in (("onnx", "onnxruntime") if is_onnx else ("tensorflow",)) if importlib.util.find_spec(m) is None]
    if missing:
        raise BackendUnavailable(f"converting {src.name} needs {', '.join(missing)}: pip install 'cifarbench[train]'")
    if is_onnx:
        from cifarbench.models.onnxio import OnnxSource

        return OnnxSource(src, contract, n_classes, opts.layout, opts.input_size, fallback)  # type: ignore[arg-type]
    if opts.layout is not None and opts.layout.lower() != "nhwc":
        raise UsageError("--layout nchw applies to ONNX models; Keras models take NHWC")
    from cifarbench.models.keras_source import KerasSource

    return KerasSource(src, contract, n_classes, opts.unsafe, opts.input_size, fallback)  # type: ignore[arg-type]


def _formats_for(source: Source, opts: ConvertOptions) -> tuple[str, ...]:
    if opts.formats is None:
        return tuple(f for f in EXPORT_FORMATS if f in source.formats)
    bad = [f for f in opts.formats if f not in source.formats]
    if bad:
        kind = {"onnx": "an ONNX", "keras": "a Keras"}.get(source.kind, f"a {source.kind}")
        raise UsageError(f"--formats: {kind} model converts to {', '.join(source.formats)}, not {', '.join(bad)}")
    return tuple(opts.formats)


# --------------------------------------------------------------------------- stage 2: data


def _pick_data(prior: Manifest | None, opts: ConvertOptions, classes: list[str], transform: Transform,
               emit: Emit) -> SampleSet:
    """Calibration and parity images, decoded at the model's size: disjoint parts of the train split's validation slice."""
    source = opts.calibration_data or _default_calibration_source(prior)
    if source != "cifar10" and Path(source).exists():
        source = str(Path(source).resolve())  # the manifest must still name it when read from elsewhere
    own = _trained_here(prior)
    seed = int(prior.training.get("seed", 0)) if own and prior else 0
    val_size = int(prior.training.get("data", {}).get("val", 5000)) if own and prior else opts.calibration_size + opts.parity_size
    emit(Event("step", f"loading calibration/parity data from {source}"))
    # Only ever the train split; loaded (and cached) at 32x32, then just the chosen images at the model's size.
    full = load_dataset(source, "train", classes=classes)
    if len(full) <= 2:
        raise DataError(f"{source}: too few images for calibration ({len(full)})")
    whole = own and val_size == 0  # trained with --val-size 0: no train image is unseen, so sample the split
    _, val = (full, full) if whole else train_val_split(full, min(val_size, len(full) - 1), seed)
    order = np.random.default_rng(seed).permutation(len(val))
    n_cal = min(opts.calibration_size, max(1, len(val) // 2))
    par_idx = order[n_cal : n_cal + opts.parity_size] if len(val) > n_cal else order[: opts.parity_size]
    test, note = None, "trained by cifarbench: test accuracy is in metrics.test"
    if not own or whole:  # accuracy on images the model never saw: the test split
        test, note = _test_sample(opts, classes, seed, transform, emit)
        if whole:
            note = f"{note.split(':')[0]}: the model trained on the whole train split (parity images were seen in training)"
    chosen = images_at(val, np.concatenate([order[:n_cal], par_idx]), transform)
    return SampleSet(source, seed, chosen[:n_cal], chosen[n_cal:], val.labels[par_idx], test, note,
                     held_out=own and not whole)


def _test_sample(opts: ConvertOptions, classes: list[str], seed: int, transform: Transform,
                 emit: Emit) -> tuple[Dataset | None, str]:
    if list(classes) != list(CIFAR10_CLASSES) and opts.test_data == "bundled":
        return None, "not measured: the model's classes are not CIFAR-10's"
    where = opts.test_data if opts.test_data in ("bundled", "cifar10") else str(Path(opts.test_data).resolve())
    emit(Event("step", f"loading test split from {where} (accuracy on images the model never saw)"))
    test = load_dataset(where, "test", classes=classes)
    idx = np.sort(np.random.default_rng(seed).permutation(len(test))[: opts.parity_size])
    sample = dataclasses.replace(test, images=images_at(test, idx, transform), labels=test.labels[idx], paths=[],
                                 skipped=[])
    return sample, f"test split of {where} ({len(idx)} images): the model was not trained by cifarbench"


def _calibration_source(prior: Manifest | None, opts: ConvertOptions, classes: list[str] | None) -> str | None:
    """The train-split source calibration and parity will read, checked without reading it; None when no
    int8 format is asked and none is at hand (parity then runs on the test split: no calibration needed)."""
    int8 = opts.formats is None or any(EXPORTERS[f].quantized for f in opts.formats)
    given = opts.calibration_data
    if given is not None:
        if given == "bundled":
            raise UsageError("--calibration-data bundled: the bundled data is the test split, and calibrating on "
                             "test images would flatter int8 accuracy; pass a train-split source (cifar10, a folder "
                             "tree or an archive with train/)")
        if given != "cifar10" and not Path(given).expanduser().exists():
            raise DataError(f"--calibration-data {given}: not found")
        return given
    try:
        return _default_calibration_source(prior)
    except UsageError:
        if int8:
            raise
    if classes is not None and list(classes) != list(CIFAR10_CLASSES) and opts.test_data == "bundled":
        raise UsageError("no --calibration-data given and the model's training data is not at hand; the parity "
                         "check needs images of the model's classes: pass --calibration-data or --test-data")
    return None


def _test_split_parity(opts: ConvertOptions, classes: list[str], emit: Emit,
                       transform: Transform | None = None) -> SampleSet:
    """Parity images from the test split (--test-data): float formats need no calibration data, only images."""
    where = opts.test_data if opts.test_data in ("bundled", "cifar10") else str(Path(opts.test_data).resolve())
    emit(Event("step", f"loading parity images from the test split of {where} (no int8 format: no calibration data)"))
    test = load_dataset(where, "test", classes=classes)
    idx = np.sort(np.random.default_rng(0).permutation(len(test))[: opts.parity_size])
    pixels = images_at(test, idx, transform or Transform())  # only these, at the model's size
    return SampleSet(where, 0, pixels[:0], pixels, test.labels[idx], None,
                     "parity measured on the test split itself", held_out=True, split="test")


def _default_calibration_source(prior: Manifest | None) -> str:
    data = (prior.training.get("data", {}) if prior else {}).get("source")
    data = data or (prior.metrics.get("parity", {}).get("source") if prior else None)  # a converted foreign model
    if data and (data == "cifar10" or Path(data).exists()):
        return str(data)
    raise UsageError("no --calibration-data given and the model's training data is not at hand; pass "
                     "--calibration-data SOURCE (a train-split source: never the test split)")


# --------------------------------------------------------------------------- stage 3: export


def _start_manifest(prior: Manifest | None, source: Source, out_dir: Path, classes: list[str],
                    formats: Sequence[str], opts: ConvertOptions) -> Manifest:
    if prior is not None:
        m = Manifest.load(prior.directory)  # type: ignore[arg-type]
    else:
        m = Manifest(name=out_dir.name, arch="foreign", classes=classes, params=source.params)
        m.training = {"source_file": str(source.path), "source_format": source.kind}
        if source.path.is_file():
            m.training["source_sha256"] = sha256_file(source.path)
    m.classes, m.directory, m.input = classes, out_dir, source.contract
    # Artifacts this run does not rebuild stay listed, if their files are still there.
    m.artifacts = {k: v for k, v in m.artifacts.items() if k not in formats and (out_dir / v.file).is_file()}
    if source.kind == "keras" and not source.path.is_dir():
        keras_dst = out_dir / source.path.name
        if source.path.resolve() != keras_dst.resolve():
            shutil.copy2(source.path, keras_dst)
        m.add_artifact("keras", keras_dst.name, input_dtype="float32 pixels 0-255 (cast uint8)",
                       details={"unsafe": True} if opts.unsafe else {})
    return m


def _export(ctx: ExportContext, m: Manifest, formats: Sequence[str], data: SampleSet, emit: Emit) -> None:
    for fmt in formats:
        exporter = EXPORTERS[fmt]
        emit(Event("step", f"exporting {fmt}"))
        t0 = time.time()
        path = ctx.out_dir / exporter.file
        details = dict(exporter.run(ctx, path))
        ctx.built[fmt] = path
        details["convert_seconds"] = round(time.time() - t0, 2)
        details["versions"] = {k: _version(k) for k in ("tensorflow", "tf2onnx", "onnx", "onnxruntime", "ai-edge-litert")}
        details["preprocess"] = m.input.preprocess
        if fmt.startswith("onnx"):
            details["opset"] = details.get("source_opset") or ctx.opset
        if exporter.quantized:
            details["calibration"] = {"source": data.source, "split": "train (validation slice)", "images": len(data.cal_x)}
        inq, outq = details.pop("input_quantization", None), details.pop("output_quantization", None)
        m.add_artifact(fmt, exporter.file, input_dtype="uint8", output_dtype=details.pop("output_dtype", "float32"),
                       input_quantization=inq, output_quantization=outq, details=details)


def _version(pkg: str) -> str | None:
    try:
        return importlib.metadata.version(pkg)
    except importlib.metadata.PackageNotFoundError:
        return None
