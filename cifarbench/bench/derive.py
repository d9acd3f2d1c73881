"""Figures a bench row gets from the others: agreement, accuracy delta, speed-up, int8 and parity flags, spread warnings.

Each row is compared with its model's reference backend at the same thread count: the first float32
backend in REFERENCE_ORDER that ran (keras, the source, then onnx, tflite, openvino-f32), so a run
without keras or onnx still has agreement, accuracy deltas and speed-ups.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from cifarbench import backends
from cifarbench.bench.metrics import exceeds_pp, images_in
from cifarbench.models.manifest import Manifest

if TYPE_CHECKING:
    from cifarbench.bench.row import Row

REFERENCE_ORDER = ("keras", "onnx", "tflite", "openvino-f32")  # float32 backends only (openvino may run bf16)
REFERENCE_TEXT = f"the first float32 backend measured of {', '.join(REFERENCE_ORDER)}"
INT8_FLAG_PP = 1.0  # an int8 row losing more accuracy than this (percentage points) is flagged
PARITY_FLAG = "convert's parity check: "  # prefix of a flag carrying the manifest's parity warning


def agreement(probs: np.ndarray, ref: np.ndarray) -> dict[str, float]:
    return {"top1": float(np.mean(probs.argmax(1) == ref.argmax(1))),
            "max_abs_dprob": float(np.max(np.abs(probs - ref))) if probs.size else 0.0}


def reference(model: str, rows: dict[Any, Row], threads: int | None = None) -> str | None:
    """keras if measured, else onnx; without labels (--synthetic) a row with speed figures serves for speed-up."""
    for b in REFERENCE_ORDER:
        r = rows.get((model, b, threads))
        if r is not None and r.status == "ok" and (r.quality or r.throughput):
            return b
    return None


def against_reference(manifests: list[Manifest], rows: dict[Any, Row], probs: dict[Any, np.ndarray]) -> list[str]:
    """Agreement, accuracy delta, int8 loss and speed-up of each row against its reference (same model and threads)."""
    notes = []
    for m in manifests:
        for threads in dict.fromkeys(t for (model, _, t) in rows if model == m.name):
            ref = reference(m.name, rows, threads)
            mine = [r for (model, _, t), r in rows.items() if model == m.name and t == threads and r.status == "ok"]
            if ref is None:
                if mine:
                    notes.append(f"{m.name}: no reference backend measured (a float32 one: {', '.join(REFERENCE_ORDER)}), "
                                 "so agreement, accuracy delta and speed-up are blank")
                for row in mine:
                    flag_int8(row, None, None, _parity_images(m, row.backend))
                continue
            ref_row, ref_p = rows[(m.name, ref, threads)], probs.get((m.name, ref, threads))
            ref_tp = ref_row.throughput[-1]["images_per_s"] if ref_row.throughput else None
            for row in mine:
                p = probs.get((row.model, row.backend, threads))
                if p is not None and ref_p is not None:
                    row.agreement = {"reference": ref, **agreement(p, ref_p)}
                n, ref_n = row.quality.get("support"), ref_row.quality.get("support")
                lost: tuple[int, int] | None = None
                if n and n == ref_n:  # the same images: the delta is a whole number of them
                    lost = (images_in(ref_row.quality["accuracy"], n) - images_in(row.quality["accuracy"], n), n)
                    row.accuracy_delta_pp = 0.0 - 100 * lost[0] / n  # 0.0 -: no -0.0
                elif row.quality and ref_row.quality:  # without labels (--synthetic) there is no accuracy
                    row.accuracy_delta_pp = 100 * (row.quality["accuracy"] - ref_row.quality["accuracy"])
                tp = row.throughput[-1]["images_per_s"] if row.throughput else None
                row.speedup = tp / ref_tp if tp and ref_tp else None
                ref_by = {t["batch_size"]: t["images_per_s"] for t in ref_row.throughput}
                row.speedup_by_batch = {str(t["batch_size"]): t["images_per_s"] / ref_by[t["batch_size"]]
                                        for t in row.throughput if t["images_per_s"] and ref_by.get(t["batch_size"])}
                flag_int8(row, row.accuracy_delta_pp, lost, _parity_images(m, row.backend))
    return list(dict.fromkeys(notes))


def flag_parity(row: Row, parity: dict[str, Any]) -> None:
    """The artifact's parity ``warning`` from convert (float16 rounding, int8 loss above 1 pp) as a row flag.

    A float artifact that failed its check (convert exited 6 but kept the numbers) is flagged too.
    """
    if parity.get("warning"):
        row.flags.append(f"{PARITY_FLAG}{parity['warning']}")
    elif parity.get("status") == "FAIL":
        row.flags.append(f"{PARITY_FLAG}FAILED (top-1 agreement {parity.get('top1_agreement', 0) * 100:.2f} %, "
                         f"max |dp| {parity.get('max_abs_dprob', 0):.1e})")


def _parity_images(m: Manifest, backend: str) -> int | None:
    art = m.artifacts.get(backends.get_spec(backend).format)
    n = (art.parity or {}).get("images") if art else None
    return int(n) if n else None


def flag_int8(row: Row, delta_pp: float | None, lost: tuple[int, int] | None = None,
              parity_images: int | None = None) -> None:
    """int8 loss from bench's own accuracy (vs the fp32 reference) and from the manifest's parity check.

    "More than 1 pp" is decided on image counts: ``lost`` is (images the reference got right beyond this row,
    images measured) and the manifest's loss is turned back into images of its ``parity_images``; only without
    counts (rows on different images, old manifests) is the rounded pp compared. The manifest's loss is flagged
    here only when its own warning is not already on the row (older manifests record the loss without one).
    """
    if not backends.get_spec(row.backend).int8:
        return
    row.int8_loss_pp = 0.0 - delta_pp if delta_pp is not None else None
    warned = any(f.startswith(PARITY_FLAG) for f in row.flags)
    manifest = None if warned else row.manifest_int8_loss_pp
    counted = {"measured here": lost,
               "manifest parity check": (images_in(manifest / 100, parity_images), parity_images)
               if manifest is not None and parity_images else None}
    for source, loss in (("measured here", row.int8_loss_pp), ("manifest parity check", manifest)):
        if loss is None:
            continue
        counts = counted[source]
        if exceeds_pp(*counts, INT8_FLAG_PP) if counts else round(loss, 6) > INT8_FLAG_PP:
            row.flags.append(f"int8 accuracy loss {loss:.2f} pp > {INT8_FLAG_PP:g} pp ({source})")


def busy_cpu_warnings(env: dict[str, Any]) -> list[str]:
    out = []
    cores = env["cpu"].get("usable_cores") or 1
    loads = [x for x in (env.get("loadavg_start"), env.get("loadavg_end")) if x]
    if loads and max(l[0] for l in loads) > 0.5 * cores:
        out.append(f"CPU was busy (1-min load average up to {max(l[0] for l in loads):.1f} on {cores} usable cores): "
                   "other processes competed for it, so latency and throughput are pessimistic and noisy")
    return out


def spread_warnings(rows: dict[tuple[str, str, int | None], Row]) -> list[str]:
    """Pairs of rows whose throughput ranges across repeats overlap: their order is not established."""
    out = []
    by_model: dict[str, list[Row]] = {}
    for r in rows.values():
        if r.status == "ok" and r.repeat.get("images_per_s"):
            by_model.setdefault(r.model, []).append(r)
    for model, rs in by_model.items():
        rs.sort(key=lambda r: r.repeat["images_per_s"]["median"])
        for a, b in zip(rs, rs[1:]):
            ra, rb = a.repeat["images_per_s"], b.repeat["images_per_s"]
            if ra["max"] >= rb["min"]:
                out.append(f"{model}: {a.backend} ({ra['min']:,.0f}-{ra['max']:,.0f} img/s) and {b.backend} "
                           f"({rb['min']:,.0f}-{rb['max']:,.0f}) overlap across {a.repeat['n']} repeats: the spread "
                           "is wider than their difference")
    return out
