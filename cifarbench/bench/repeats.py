"""``--repeat N``: one definition of a repeated row's figures, computed here and nowhere else.

Every figure a row shows (each latency statistic, images/s and the per-call percentiles at each batch
size, load time, first call, memory) is the **median across the repeats of that figure**; the row's
fields hold these medians, and ``repeat`` holds the same median with the min-max and the values. The
table, results.json, report.md and ``bench compare`` all read the row's fields, so they cannot disagree
(before, the row showed the repeat with the median throughput while compare read per-figure medians:
onnx p50 1.737 ms in the table was 1.857 in compare). What has no meaningful median (the runtime's
description, the server scenario's trials) comes from the repeat with the median throughput.
"""

from __future__ import annotations

import copy
import statistics
from typing import Any, Sequence

SCALARS = ("load_s", "first_call_ms", "peak_rss_mb", "rss_delta_mb")
JUDGED = ("images_per_s", "p50_ms", "p99_ms")  # the figures whose spread `repeat` records (and compare judges)


def spread(values: Sequence[float]) -> dict[str, Any]:
    vals = [float(v) for v in values]
    return {"median": statistics.median(vals), "min": min(vals), "max": max(vals), "values": vals}


def headline(run: dict[str, Any]) -> float:
    """What ranks repeats: images/s at the largest batch size, else minus batch-1 p50."""
    tp = run.get("throughput") or []
    if tp and tp[-1].get("images_per_s"):
        return float(tp[-1]["images_per_s"])
    return -float((run.get("latency") or {}).get("p50_ms") or 0.0)


def figure(row: dict[str, Any], metric: str) -> float | None:
    """A row's figure as every view shows it: images/s at the largest batch size, or a batch-1 latency stat."""
    if metric == "images_per_s":
        tp = row.get("throughput") or []
        v = tp[-1].get("images_per_s") if tp else None
    else:
        v = (row.get("latency") or {}).get(metric)
    return float(v) if v is not None else None


def _median_dicts(dicts: list[dict[str, Any]], base: dict[str, Any]) -> dict[str, Any]:
    """``base`` with each numeric key replaced by its median over ``dicts`` (keys missing somewhere are kept)."""
    out = dict(base)
    for k, v in base.items():
        vals = [d.get(k) for d in dicts]
        if isinstance(v, (int, float)) and not isinstance(v, bool) and all(
                isinstance(x, (int, float)) and not isinstance(x, bool) for x in vals):
            m = statistics.median(vals)  # type: ignore[type-var]
            out[k] = int(round(m)) if isinstance(v, int) and k in ("n", "calls", "images", "batch_size") else float(m)
    return out


def combine(runs: list[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(row fields, repeat summary) of ``runs``: per-figure medians; ``{}`` as the summary for one run."""
    if len(runs) == 1:
        return runs[0], {}
    ranked = sorted(runs, key=headline)
    out = copy.deepcopy(ranked[(len(ranked) - 1) // 2])
    for k in SCALARS:
        vals = [r.get(k) for r in runs]
        if all(isinstance(v, (int, float)) for v in vals):
            out[k] = float(statistics.median(vals))  # type: ignore[type-var]
    if all(r.get("latency") for r in runs):
        out["latency"] = _median_dicts([r["latency"] for r in runs], out["latency"])
    by_batch: dict[str, dict[str, Any]] = {}
    tps = [{t["batch_size"]: t for t in r.get("throughput") or []} for r in runs]
    for i, t in enumerate(out.get("throughput") or []):
        b = t["batch_size"]
        same = [x[b] for x in tps if b in x]
        if len(same) != len(runs):
            continue
        t = out["throughput"][i] = _median_dicts(same, t)
        if all(s.get("latency") for s in same):
            t["latency"] = _median_dicts([s["latency"] for s in same], t["latency"])
        entry = {}
        if all(s.get("images_per_s") for s in same):
            entry["images_per_s"] = spread([s["images_per_s"] for s in same])
        for q in ("p50_ms", "p99_ms"):
            if all((s.get("latency") or {}).get(q) is not None for s in same):
                entry[q] = spread([s["latency"][q] for s in same])
        by_batch[str(b)] = entry
    summary: dict[str, Any] = {"n": len(runs)}
    for metric in JUDGED:
        vals = [figure(r, metric) for r in runs]
        if all(v is not None for v in vals):
            summary[metric] = spread(vals)  # type: ignore[arg-type]
    if by_batch:
        summary["by_batch"] = by_batch
    return out, summary
