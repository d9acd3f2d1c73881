"""Parity: every artifact against the source model, through the runtimes classify and bench use.

float32 artifacts must compute what the reference computes; float16 weights are judged by
agreement and accuracy, counted in images so a single near-tie flip in a small sample never fails
(their rounding moves probabilities by design); int8 artifacts are judged by their accuracy loss and
never fail a conversion. An artifact that needs a look (float16 rounding, int8 loss above 1 pp)
carries a ``warning`` that convert prints and bench shows on its row.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from cifarbench.bench.metrics import exceeds_pp, images_in
from cifarbench.conversion.exporters import EXPORTERS, Source
from cifarbench.data.sources import Dataset
from cifarbench.events import Emit, Event
from cifarbench.models.manifest import Manifest

# float32 must match the reference: (min top-1 agreement, max |dp|).
FLOAT32_BOUNDS = (0.999, 1e-3)
# float16 weights carry a 2**-11 relative rounding error by construction, so max |dp| alone is no verdict
# (a 0.04 pp accuracy change came with max |dp| 1.2e-2): fail on agreement or accuracy, warn on rounding.
FP16_FAIL = (0.99, 0.5)  # fail below this agreement or above this |accuracy change| in pp
# ...counted in images, never less than one: with fewer than 100 parity images a single near-tie flip is
# already below 99 % (and over 0.5 pp), which says nothing about the artifact, so one image is always allowed.
FP16_MIN_IMAGES = 1
FP16_ROUNDING = (0.995, 1e-2)  # warn below this agreement or above this max |dp|
INT8_TARGET_PP, INT8_WARN_PP = 0.3, 1.0


@dataclass
class SampleSet:
    """The images convert measures on: calibration and parity (train split), a test-split sample for foreign models."""

    source: str
    seed: int
    cal_x: np.ndarray
    par_x: np.ndarray
    par_y: np.ndarray
    test: Dataset | None  # a foreign model's test-split sample
    test_note: str
    held_out: bool = False  # True only for cifarbench's own models: the parity images are known to be unseen
    split: str = "train (validation slice)"  # "test" when no int8 format needs calibration data (convert)


def check_parity(m: Manifest, source: Source, formats: Sequence[str], data: SampleSet, emit: Emit) -> list[str]:
    """Every artifact against the source model itself; returns the failures (float artifacts only)."""
    from cifarbench.backends import load_backend

    emit(Event("step", f"parity check on {len(data.par_x)} images"))
    ref = source.reference(data.par_x)
    ref_test = source.reference(data.test.images) if data.test is not None else None
    ref_parity = _parity(ref, ref, data.par_y)
    if ref_test is not None and data.test is not None:
        ref_parity["test_accuracy"] = float((ref_test.argmax(1) == data.test.labels).mean())
    if "keras" in m.artifacts and source.kind == "keras":
        m.artifacts["keras"].parity = dict(ref_parity)
    failures, warnings = [], []
    for fmt in formats:
        backend = load_backend(fmt, m, "cpu", None)
        par = _parity(_predict(backend, data.par_x), ref, data.par_y)
        if data.test is not None:
            par["test_accuracy"] = float((_predict(backend, data.test.images).argmax(1) == data.test.labels).mean())
        failure = judge(fmt, par, ref_parity)
        m.artifacts[fmt].parity = par
        if failure:
            failures.append(failure)
        if par.get("warning"):
            warnings.append(f"{fmt}: {par['warning']}")
    m.metrics["parity"] = {
        "reference": "keras" if source.kind == "keras" else "the original ONNX model (onnxruntime)",
        "reference_accuracy": ref_parity["accuracy"], "source": data.source, "split": data.split,
        "held_out": data.held_out,
        "images": int(len(data.par_x)), "warnings": warnings,
        "test_split": {"note": data.test_note, **({"images": len(data.test), "reference_accuracy": ref_parity["test_accuracy"]}
                                                  if data.test is not None else {})},
        "thresholds": {"float32 (min top-1 agreement, max |dp|)": FLOAT32_BOUNDS,
                       "float16 fail (min top-1 agreement, max |accuracy change| pp)": FP16_FAIL,
                       "float16 fail: images always allowed to flip or change": FP16_MIN_IMAGES,
                       "float16 rounding warning (min top-1 agreement, max |dp|)": FP16_ROUNDING,
                       "int8_target_drop_pp": INT8_TARGET_PP, "int8_warn_drop_pp": INT8_WARN_PP},
    }
    return failures


def _predict(backend: Any, x: np.ndarray) -> np.ndarray:
    from cifarbench.data.batching import images_per_batch

    n = images_per_batch(x.shape[1:3], 256)
    return np.concatenate([backend.predict(x[i : i + n]) for i in range(0, len(x), n)])


def _parity(got: np.ndarray, ref: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
    return {
        "images": int(len(labels)),
        "top1_agreement": float((got.argmax(1) == ref.argmax(1)).mean()),
        "max_abs_dprob": float(np.abs(got - ref).max()),
        "mean_abs_dprob": float(np.abs(got - ref).mean()),
        "accuracy": float((got.argmax(1) == labels).mean()),
    }


def fp16_breaks(par: dict[str, Any], ref: dict[str, Any]) -> bool:
    """float16 fails on more flipped (or newly wrong/right) images than ``FP16_FAIL`` allows at this sample size.

    The bounds are ratios, turned into image counts for ``par['images']`` and never below
    ``FP16_MIN_IMAGES``: at 2,000 images 21 flips fail (as 99 % says), at 40 one flip does not, two do.
    """
    n = int(par["images"])
    flips = round((1 - par["top1_agreement"]) * n)
    changed = round(abs(ref["accuracy"] - par["accuracy"]) * n)  # net images that became right or wrong
    allowed_flips = max(FP16_MIN_IMAGES, int((1 - FP16_FAIL[0]) * n + 1e-9))
    allowed_changed = max(FP16_MIN_IMAGES, int(FP16_FAIL[1] / 100 * n + 1e-9))
    return flips > allowed_flips or changed > allowed_changed


def judge(fmt: str, par: dict[str, Any], ref: dict[str, Any]) -> str | None:
    """Set ``par['status']`` (ok, flagged, warn, FAIL) and ``par['warning']``; return a failure line or None.

    ``warning`` is present exactly when the artifact needs a look (``bench`` shows it too).
    """
    drop = (ref["accuracy"] - par["accuracy"]) * 100
    change = 0.0 - drop  # not -drop: no "-0.00" in messages
    par["accuracy_drop_pp"] = round(drop, 3)
    agree, dp = par["top1_agreement"], par["max_abs_dprob"]
    if EXPORTERS[fmt].quantized:
        n = int(par["images"])
        lost = images_in(ref["accuracy"] - par["accuracy"], n)  # decided in images: floats put 1/100 above 1 pp
        if exceeds_pp(lost, n, INT8_WARN_PP):
            par["status"] = "warn"
            par["warning"] = f"int8 loses {drop:.2f} pp accuracy vs the reference (above {INT8_WARN_PP:g} pp)"
        else:
            par["status"] = "flagged" if exceeds_pp(lost, n, INT8_TARGET_PP) else "ok"
        return None
    if fmt == "tflite-fp16":
        if fp16_breaks(par, ref):
            par["status"] = "FAIL"
            flips = round((1 - agree) * par["images"])
            return f"{fmt}: agreement {agree:.4f} ({flips} of {par['images']} images flipped), accuracy change {change:+.2f} pp"
        if agree < FP16_ROUNDING[0] or dp > FP16_ROUNDING[1]:
            par["status"] = "warn"
            par["warning"] = (f"float16 rounding: agreement {agree * 100:.2f} %, max |dp| {dp:.1e}, "
                              f"accuracy change {change:+.2f} pp")
        else:
            par["status"] = "ok"
        return None
    if agree >= FLOAT32_BOUNDS[0] and dp <= FLOAT32_BOUNDS[1]:
        par["status"] = "ok"
        return None
    par["status"] = "FAIL"
    return f"{fmt}: agreement {agree:.4f}, max|dp| {dp:.2e}"
