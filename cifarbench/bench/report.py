"""Bench outputs: results.json (versioned schema), results.csv, report.md and plots, from one results document.

The JSON document built by ``cifarbench.bench.runner.run_bench`` is the single source; CSV, Markdown,
plots and the CLI table are views of it, so they can never disagree.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
from pathlib import Path
from typing import Any

import numpy as np

from cifarbench.atomic import atomic_write
from cifarbench.bench import plots
from cifarbench.bench.derive import REFERENCE_TEXT
from cifarbench.bench.metrics import dense_confusion
from cifarbench.errors import DataError
from cifarbench.bench.results_schema import RESULTS_SCHEMA, load_results, row_schema, upgrade, validate  # noqa: F401 (re-exported)

# --------------------------------------------------------------------------- flat views


def batch_sizes(doc: dict[str, Any]) -> list[int]:
    return sorted({t["batch_size"] for r in doc["results"] for t in r["throughput"]})


def summary_rows(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """One flat dict per (model, backend): the CSV columns and the CLI table's source."""
    sizes = batch_sizes(doc)
    out = []
    for r in doc["results"]:
        q, lat, ag = r["quality"], r["latency"], r["agreement"]
        tp = {t["batch_size"]: t["images_per_s"] for t in r["throughput"]}
        call = {t["batch_size"]: t.get("latency") or {} for t in r["throughput"]}
        row: dict[str, Any] = {
            "model": r["model"], "backend": r["backend"], "threads": r.get("threads"), "status": r["status"],
            "reason": r["reason"], "accuracy": q.get("accuracy"), "top5_accuracy": q.get("top5"),
            "accuracy_delta_pp": r.get("accuracy_delta_pp"),
            "int8_loss_pp": r.get("int8_loss_pp"), "flags": "; ".join(r.get("flags") or []) or None,
            "macro_f1": q.get("macro", {}).get("f1"), "weighted_f1": q.get("weighted", {}).get("f1"),
            "macro_precision": q.get("macro", {}).get("precision"), "macro_recall": q.get("macro", {}).get("recall"),
            "reference": ag.get("reference"), "agreement_top1": ag.get("top1"), "max_abs_dprob": ag.get("max_abs_dprob"),
            "first_call_ms": r["first_call_ms"], "latency_n": lat.get("n"),
            **{f"{k}_ms": lat.get(f"{k}_ms") for k in ("p50", "p90", "p95", "p99", "mean", "std", "min", "max")},
            **{f"img_per_s_b{b}": tp.get(b) for b in sizes},
            **{f"{q}_ms_b{b}": call.get(b, {}).get(f"{q}_ms") for b in sizes for q in ("p50", "p90", "p99")},
            "speedup": r["speedup"],
            **{f"speedup_b{b}": (r.get("speedup_by_batch") or {}).get(str(b)) for b in sizes},
            "size_mb": r["size_bytes"] / 1e6 if r["size_bytes"] is not None else None,
            "load_s": r["load_s"], "peak_rss_mb": r["peak_rss_mb"], "rss_delta_mb": r.get("rss_delta_mb"),
            "runtime_note": runtime_note(r["runtime"]),
            "tta_mode": (r.get("tta") or {}).get("mode"), "tta_accuracy": (r.get("tta") or {}).get("accuracy"),
            "tta_cost_x": (r.get("tta") or {}).get("cost_x"),
            **_repeat_columns(r.get("repeat") or {}), **_server_columns(r.get("server") or {}),
        }
        out.append(row)
    return out


def _repeat_columns(rep: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"repeats": rep.get("n", 1)}
    for k in ("images_per_s", "p50_ms", "p99_ms"):
        s = rep.get(k) or {}
        out.update({f"{k}_median": s.get("median"), f"{k}_min": s.get("min"), f"{k}_max": s.get("max")})
    return out


def _server_columns(server: dict[str, Any]) -> dict[str, Any]:
    search, at = server.get("search") or {}, server.get("at_rate") or {}
    best = search.get("at_max") or {}
    return {"server_p99_bound_ms": search.get("p99_bound_ms"), "server_max_rate": search.get("max_rate"),
            "server_max_rate_p99_ms": best.get("p99_ms"), "server_target_rate": at.get("target_rate"),
            "server_achieved_rate": at.get("achieved_rate"), "server_p50_ms": at.get("p50_ms"),
            "server_p90_ms": at.get("p90_ms"), "server_p99_ms": at.get("p99_ms")}


NOT_MEASURED = "not measured"
PER_CLASS_MAX = 30  # above this many classes report.md lists the weakest classes, per_class.csv has them all
WEAKEST = 15


def synthetic(doc: dict[str, Any]) -> bool:
    """Was the run on random pixels (no labels, so no accuracy)?"""
    return bool(doc["data"].get("synthetic"))


def accuracy_text(r: dict[str, Any], spec: str = ".4f") -> str:
    """A summary row's accuracy, or "not measured" (never 0 or NaN) when the row had no labelled data."""
    return NOT_MEASURED if r.get("accuracy") is None and r["status"] == "ok" else _f(r.get("accuracy"), spec)


def confusion(quality: dict[str, Any]) -> np.ndarray | None:
    """The row's confusion matrix, dense, whether results.json kept it dense or as non-zero cells."""
    if quality.get("confusion") is not None:
        return np.asarray(quality["confusion"], np.int64)
    if quality.get("confusion_sparse") is not None:
        return dense_confusion(quality["confusion_sparse"], len(quality.get("per_class") or {}))
    return None


def per_class_rows(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per (model, backend, class): the per_class.csv file, readable at any class count."""
    out = []
    for r in doc["results"]:
        for c, v in ((r.get("quality") or {}).get("per_class") or {}).items():
            out.append({"model": r["model"], "backend": label(r), "class": c, **v})
    return out


def label(r: dict[str, Any]) -> str:
    """backend, with the thread count when the run swept threads."""
    return r["backend"] + (f" ({r['threads']}t)" if r.get("threads") else "")


def runtime_note(runtime: dict[str, Any]) -> str | None:
    """The inference precision and execution mode a backend reports (OpenVINO does), and the tuning asked for
    (--ov-hint, --ort-opt-level...), shown with its row."""
    tuning = runtime.get("tuning")
    note = {**runtime, "tuning": ", ".join(f"{k}={v}" for k, v in tuning.items()) if isinstance(tuning, dict) else None}
    return "; ".join(f"{k} {note[k]}" for k in ("precision", "mode", "tuning") if note.get(k)) or None


def _profile_lines(ok: list[dict[str, Any]]) -> list[str]:
    """bench --profile: each row's top ops by time, from its runtime's own profiler."""
    rows = [r for r in ok if r.get("profile")]
    if not rows:
        return []
    lines = ["", "## Per-op profile (top 10 by time)", "",
             "From each runtime's own profiler in an extra pass after the timed ones (calls at batch 1 and the "
             "largest batch); share = the op's part of all profiled op time.", ""]
    for r in rows:
        p = r["profile"]
        lines += [f"### {r['model']} / {label(r)}", ""]
        if not p.get("top_ops"):
            lines += [f"No per-op profile: {p.get('unavailable') or 'the profiler recorded no ops'}.", ""]
            continue
        lines += [f"Raw profile: `{p.get('file')}` ({p.get('runtime')}).", ""]
        lines += _table(["op", "type", "ms", "calls", "share"],
                        [[o["op"], o["type"], _f(o["ms"]), str(o["calls"]), f"{100 * o['share']:.1f} %"]
                         for o in p["top_ops"]]) + [""]
    return lines


def all_warnings(doc: dict[str, Any]) -> list[str]:
    """The run's warnings, then each row's (e.g. too few latency samples for p99), prefixed with the row."""
    return list(doc["warnings"]) + [f"{r['model']}/{r['backend']}: {w}" for r in doc["results"] for w in r["warnings"]]


def to_json(doc: dict[str, Any]) -> str:
    return json.dumps(doc, indent=2, default=str) + "\n"


def to_csv(doc: dict[str, Any]) -> str:
    return _csv(summary_rows(doc))


def _csv(rows: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    if rows:
        w = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
        w.writeheader()
        for r in rows:
            w.writerow({k: ("" if v is None else f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})
    return buf.getvalue()


def _f(v: Any, spec: str = ".3f", none: str = "–") -> str:
    return none if v is None else format(v, spec)


def _x(v: Any, spec: str = ".2f") -> str:
    """A ratio with its ×, or a bare dash when there is none (never "–×")."""
    return "–" if v is None else format(v, spec) + "×"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"] + \
        ["| " + " | ".join(r) + " |" for r in rows]


def to_markdown(doc: dict[str, Any], plot_files: list[str] | None = None, notes: list[str] | None = None) -> str:
    rows = summary_rows(doc)
    ok = [r for r in rows if r["status"] == "ok"]
    sizes = batch_sizes(doc)
    big = sizes[-1] if sizes else None
    d, env = doc["data"], doc["environment"]
    lines = ["# cifarbench bench results", "",
             f"- Command: `{doc['command']}`", f"- Created: {doc['created']} (wall time {_f(doc.get('wall_s'), '.0f')} s), "
             f"cifarbench {doc['cifarbench_version']}, schema {doc['schema']}/{doc['schema_version']}",
             f"- Data: `{d['source']}` test split, {d.get('subset') or str(d['images']) + ' images'}", ""]
    for w in all_warnings(doc):
        lines.append(f"> **Warning:** {w}")
    lines += ["", "## Summary", "",
              f"Speed-up: images/s at batch {big} over the reference backend's ({REFERENCE_TEXT})."
              " Δ acc: accuracy minus the reference's, in percentage points.", ""]
    top5 = any(r.get("top5_accuracy") is not None for r in ok)
    if synthetic(doc):
        lines += [f"Accuracy: {NOT_MEASURED} (synthetic pixels at each model's input size, no labels).", ""]
    lines += _table(["model", "backend", "accuracy"] + (["top-5"] if top5 else []) + [
                     "Δ acc (pp)", "macro F1", "top-1 agree", "max Δp", "p50 ms",
                     "p99 ms", f"img/s @{big}", "speed-up", "size MB"],
                    [[r["model"], label(r), accuracy_text(r)] + ([_f(r["top5_accuracy"], ".4f")] if top5 else []) +
                     [_f(r["accuracy_delta_pp"], "+.2f"),
                      _f(r["macro_f1"], ".4f"), _f(r["agreement_top1"], ".4f"), _f(r["max_abs_dprob"], ".2e"),
                      _f(r["p50_ms"]), _f(r["p99_ms"]), _f(r.get(f"img_per_s_b{big}"), ",.0f"), _x(r["speedup"]),
                      _f(r["size_mb"], ".2f")] for r in ok])
    tta = [r for r in ok if r.get("tta_accuracy") is not None]
    if tta:
        lines += ["", "Test-time augmentation (the accuracy pass again over the views; cost = its time / single view's):", ""]
        lines += _table(["model", "backend", "single view", "TTA", "mode", "cost"],
                        [[r["model"], label(r), _f(r["accuracy"], ".4f"), _f(r["tta_accuracy"], ".4f"), r["tta_mode"],
                          _x(r["tta_cost_x"], ".1f")] for r in tta])
    noted = [r for r in ok if r.get("runtime_note")]
    if noted:
        lines += ["", "What ran, as the runtime reports it:", ""]
        lines += [f"- {r['model']} / {r['backend']}: {r['runtime_note']}" for r in noted]
    flagged = [r for r in ok if r.get("flags")]
    if flagged:
        lines += ["", "## Flags", ""] + [f"- **{r['model']} / {label(r)}**: {r['flags']}" for r in flagged]
    lines += _repeat_lines(ok) + _server_lines(ok) + _profile_lines([r for r in doc["results"] if r["status"] == "ok"])
    other = [r for r in rows if r["status"] != "ok"]
    if other:
        lines += ["", "## Skipped and failed", ""]
        lines += [f"- {r['model']} / {r['backend']}: **{r['status']}**: {r['reason']}" for r in other]
    lines += ["", "## Latency at batch 1 (ms)", "", doc["definitions"]["latency"] + ".", ""]
    lines += _table(["model", "backend", "n", "first call", "p50", "p90", "p95", "p99", "mean", "std", "min", "max"],
                    [[r["model"], label(r), str(r["latency_n"]), _f(r["first_call_ms"])] +
                     [_f(r[f"{k}_ms"]) for k in ("p50", "p90", "p95", "p99", "mean", "std", "min", "max")] for r in ok])
    lines += ["", "## Throughput (images/s)", "", "Definition: " + doc["definitions"]["throughput"] + ".", ""]
    lines += _table(["model", "backend"] + [f"batch {b}" for b in sizes],
                    [[r["model"], label(r)] + [_f(r.get(f"img_per_s_b{b}"), ",.0f") for b in sizes] for r in ok])
    if any(r.get(f"p50_ms_b{b}") is not None for r in ok for b in sizes):  # (results written before issue 24 lack them)
        lines += ["", "## Latency per call at each batch size (ms, p50 / p90 / p99)", "",
                  "One call is one batch of that size (at batch 1: the single-stream samples).", ""]
        lines += _table(["model", "backend"] + [f"batch {b}" for b in sizes],
                        [[r["model"], label(r)] + [" / ".join(_f(r.get(f"{q}_ms_b{b}")) for q in ("p50", "p90", "p99"))
                                                   for b in sizes] for r in ok])
    by = {(x["model"], x["backend"]): x.get("speedup_by_batch") or {} for x in doc["results"]}
    if any(by.values()):
        lines += ["", "Speed-up over the reference backend at each batch size (images/s ratio):", ""]
        lines += _table(["model", "backend", "reference"] + [f"batch {b}" for b in sizes],
                        [[r["model"], label(r), r["reference"] or "–"] +
                         [_x(by[(r["model"], r["backend"])].get(str(b))) for b in sizes]
                         for r in ok if r["reference"]])
    dec = d["decode"]
    lines += ["", "## Decode and preprocess (not in the numbers above)", ""]
    if dec.get("images"):
        failed = f", {dec['failed']} failed" if dec.get("failed") else ""
        lines.append(f"`load_image` on {dec['images']} encoded files of the source (mean {dec['mean_bytes']:.0f} bytes): "
                     f"{dec['mean_ms']:.3f} ms per image, {dec['images_per_s']:,.0f} images/s on one thread"
                     f"{failed}. Loading the whole data set took "
                     f"{_f(d.get('load_s'), '.2f')} s (including any cache).")
    else:
        lines.append(dec.get("note", "not measured"))
    lines += ["", "## Load time and memory", "", doc["definitions"]["peak_rss"] + ".", ""]
    lines += _table(["model", "backend", "size MB", "load s", "RSS delta MB", "peak RSS MB"],
                    [[r["model"], label(r), _f(r["size_mb"], ".2f"), _f(r["load_s"]), _f(r["rss_delta_mb"], ".0f"),
                      _f(r["peak_rss_mb"], ".0f")] for r in ok])
    for model in doc["models"]:
        res = [x for x in doc["results"] if x["model"] == model and x["status"] == "ok" and x["quality"]]
        if not res:
            continue
        lines += _per_class_lines(model, res)
    lines += ["", "## Environment", ""] + _environment_lines(doc)
    if plot_files or notes:
        lines += ["", "## Plots", ""] + [f"![{p}]({p})" for p in plot_files or []] + [f"- {n}" for n in notes or []]
    lines += ["", "## Definitions", ""] + [f"- **{k}**: {v}." for k, v in doc["definitions"].items()]
    return "\n".join(lines) + "\n"


def _per_class_lines(model: str, res: list[dict[str, Any]]) -> list[str]:
    """Per-class F1 by backend (the weakest classes only, beyond PER_CLASS_MAX) and the most-confused pairs."""
    per = res[0]["quality"]["per_class"]
    classes = list(per)
    title = f"## Per-class F1: {model}"
    if len(classes) > PER_CLASS_MAX:  # 1,000 rows would bury the report: the weakest classes, all in per_class.csv
        classes = sorted(classes, key=lambda c: (per[c]["f1"], c))[:WEAKEST]
        title += (f" (the {WEAKEST} lowest by {res[0]['backend']} of {len(per)} classes; every class in "
                  "per_class.csv)")
    lines = ["", title, ""] + _table(["class", "support"] + [label(x) for x in res],
                                     [[c, str(per[c]["support"])] +
                                      [_f(x["quality"]["per_class"][c]["f1"], ".4f") for x in res] for c in classes])
    pairs = res[0]["quality"].get("most_confused")
    if pairs is None:  # results written before most_confused existed
        return lines
    lines += ["", f"Most-confused pairs ({res[0]['backend']}; share = count / the true class's images):", ""]
    if not pairs:
        return lines + ["none: every image was classified correctly."]
    return lines + _table(["true", "predicted as", "images", "share"],
                          [[p["true"], p["predicted"], str(p["count"]), _f(100 * p["share"], ".1f") + " %"]
                           for p in pairs])


def _repeat_lines(ok: list[dict[str, Any]]) -> list[str]:
    rep = [r for r in ok if (r.get("repeats") or 1) > 1]
    if not rep:
        return []
    rng = lambda r, k, spec: f"{_f(r[k + '_median'], spec)} ({_f(r[k + '_min'], spec)}–{_f(r[k + '_max'], spec)})"  # noqa: E731
    return ["", "## Repeats: median (min–max)", ""] + _table(
        ["model", "backend", "runs", "img/s", "p50 ms", "p99 ms"],
        [[r["model"], label(r), str(r["repeats"]), rng(r, "images_per_s", ",.0f"), rng(r, "p50_ms", ".3f"),
          rng(r, "p99_ms", ".3f")] for r in rep])


def _server_lines(ok: list[dict[str, Any]]) -> list[str]:
    srv = [r for r in ok if r.get("server_p99_bound_ms") is not None or r.get("server_target_rate") is not None]
    if not srv:
        return []
    return ["", "## Server scenario (Poisson arrivals, dynamic batching)", ""] + _table(
        ["model", "backend", "p99 bound ms", "max rate q/s", "p99 there ms", "target q/s", "achieved q/s",
         "p50 ms", "p90 ms", "p99 ms"],
        [[r["model"], label(r), _f(r["server_p99_bound_ms"], "g"), _f(r["server_max_rate"], ",.0f"),
          _f(r["server_max_rate_p99_ms"]), _f(r["server_target_rate"], ",.0f"), _f(r["server_achieved_rate"], ",.0f"),
          _f(r["server_p50_ms"]), _f(r["server_p90_ms"]), _f(r["server_p99_ms"])] for r in srv])


def _environment_lines(doc: dict[str, Any]) -> list[str]:
    env = doc["environment"]
    cpu = env["cpu"]
    flags = ", ".join(f for f, on in cpu["flags"].items() if on) or "none of " + ", ".join(cpu["flags"])
    versions = ", ".join(f"{k} {v}" for k, v in env["versions"].items() if v)
    runtimes = {}
    for r in doc["results"]:
        if r["runtime"]:
            runtimes[r["backend"]] = r["runtime"]
    out = [f"- CPU: {cpu['model']} ({cpu['machine']}), {cpu['usable_cores']} usable of {cpu['cores']} cores",
           f"- CPU speed flags present: {flags}", f"- Platform: {env.get('platform')}",
           f"- GPUs: {', '.join(env.get('gpus') or []) or 'none'}; device requested: {env.get('device')}",
           f"- Threads requested: {env['threads_requested'] or 'backend default'}",
           f"- onnxruntime providers available: {', '.join(env.get('onnxruntime_providers') or []) or 'none'}",
           f"- Versions: {versions}"]
    for model, text in (env.get("transform") or {}).items():
        out.append(f"- Images to {model}'s input: {text}")
    for model, info in doc["models"].items():
        if info.get("auto"):
            out.append(f"- `auto` for {model}: {info['auto']['backend']} ({info['auto']['how']}: {info['auto']['note']})")
    if env.get("tensorflow_import_s") is not None:
        out.append(f"- TensorFlow import (keras backend only): {env['tensorflow_import_s']:.2f} s")
    if env.get("loadavg_start"):
        out.append(f"- Load average (1/5/15 min) at start {', '.join(f'{x:.2f}' for x in env['loadavg_start'])}, "
                   f"at end {', '.join(f'{x:.2f}' for x in env['loadavg_end'] or [])}; nice {env.get('nice')}")
    for name, rt in runtimes.items():
        out.append(f"- Backend {name}: " + ", ".join(f"{k}={v}" for k, v in rt.items()))
    return out


# --------------------------------------------------------------------------- files


def _slug(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", s)


def write_plots(doc: dict[str, Any], out_dir: Path) -> tuple[list[str], list[str]]:
    """Plot files written (names relative to ``out_dir``) and notes; matplotlib missing means notes only."""
    if plots._pyplot() is None:
        return [], ["plots skipped: matplotlib is not installed (pip install 'cifarbench[plot]')"]
    written = []
    ok = [r for r in doc["results"] if r["status"] == "ok"]
    for r in ok:
        cm = confusion(r["quality"])
        if cm is None:  # no labels (--synthetic)
            continue
        name = f"confusion_{_slug(r['model'])}_{_slug(r['backend'])}.png"
        classes = list(r["quality"]["per_class"])
        if plots.plot_confusion(cm, classes, out_dir / name,
                                title=f"{r['model']} / {r['backend']}: accuracy {r['quality']['accuracy']:.4f}"):
            written.append(name)
    one_model = len({r["model"] for r in ok}) == 1  # then the title names it and each label is the backend alone
    points = [{"label": label(r) if one_model else f"{r['model']}/{label(r)}", "tp": r["throughput"][-1]["images_per_s"],
               "acc": 100 * r["quality"]["accuracy"]} for r in ok
              if r["quality"] and r["throughput"] and r["throughput"][-1]["images_per_s"]]
    big = batch_sizes(doc)[-1] if ok else None
    title = f"{ok[0]['model']}: " if one_model and ok else ""
    if plots.plot_scatter(points, "tp", "acc", "label", out_dir / "throughput_vs_accuracy.png",
                          f"images/s at batch {big} (log scale)", "top-1 accuracy (%)", logx=True,
                          title=f"{title}throughput vs accuracy ({doc['data']['source']})"):
        written.append("throughput_vs_accuracy.png")
    lat = [{"label": f"{r['model']}/{r['backend']}", "p50_ms": r["latency"]["p50_ms"], "p99_ms": r["latency"]["p99_ms"]}
           for r in ok if r["latency"]]
    if plots.plot_latency(lat, out_dir / "latency.png", title="batch-1 latency: bar p50, whisker p99"):
        written.append("latency.png")
    return written, []


def write_outputs(doc: dict[str, Any], out_dir: str | os.PathLike[str]) -> tuple[list[Path], list[str]]:
    """results.json, results.csv, plots and report.md in ``out_dir``; each written atomically."""
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(f"cannot create output directory {out}: {exc}") from None
    errs = validate(doc)
    if errs:  # a bug, not user input: refuse to publish a document that breaks its own schema
        raise ValueError(f"results do not match their schema: {errs[:3]}")
    plot_files, notes = write_plots(doc, out)
    files = {"results.json": to_json(doc), "results.csv": to_csv(doc), "report.md": to_markdown(doc, plot_files, notes)}
    per_class = per_class_rows(doc)
    if per_class:
        files["per_class.csv"] = _csv(per_class)
    for name, text in files.items():
        with atomic_write(out / name) as fh:
            fh.write(text)
    return [out / n for n in files] + [out / p for p in plot_files], notes
