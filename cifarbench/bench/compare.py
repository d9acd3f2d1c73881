"""`bench compare`: per-row deltas between two bench runs, and a verdict a CI job can exit on.

A speed change counts only when it is larger than the noise the runs themselves show: the
sum of both runs' relative min-max spreads across their repeats (``--repeat N``), and never
less than a floor (``tolerance``, 5 % by default) for runs without repeats. p99 deltas are
shown but not judged: in a run of seconds it is set by scheduler preemption (a 0.13 ms model
measured p99 16.6 then 20.4 ms beside a busy process), not by the backend. A p50 change is also
judged only when it is larger than ``latency_floor_ms`` (0.1 ms by default) in absolute terms: a sub-0.1 ms
call moves by that much between two runs with no code change (tflite-int8 at batch 1 on the test model:
p50 0.047 then 0.099 ms in a CI run, against a ±91 % spread over its repeats). Accuracy on the same data
is deterministic up to runtime rounding, so a drop of more than 0.1 pp counts. A row that
was ok and now fails is a regression too; a row present in only one run (a backend not installed on one
machine, a narrower ``--backend`` list) is "absent", not a regression, unless ``strict``.

The figures compared are the rows' own (``cifarbench.bench.repeats.figure``): the same numbers the
table and report.md of each run show, medians across ``--repeat`` by that module's one definition.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from cifarbench.bench.repeats import figure

ACCURACY_PP = 0.1
ARROW = "→"  # the one arrow every view uses, old → new
FORMATS = ("table", "md", "json")
LATENCY_FLOOR_MS = 0.1
METRICS = (  # (metric, higher is better)
    ("images_per_s", True),
    ("p50_ms", False),
    ("p99_ms", False),
)


def _results_path(p: str | os.PathLike[str]) -> Path:
    path = Path(p)
    return path / "results.json" if path.is_dir() else path


def _key(r: dict[str, Any]) -> tuple[str, str, Any]:
    return r["model"], r["backend"], r.get("threads")


def _figure(r: dict[str, Any], metric: str) -> tuple[float | None, float]:
    """(the row's figure, relative min-max spread across its repeats) of one metric; spread 0 without repeats."""
    value = figure(r, metric)
    rep = (r.get("repeat") or {}).get(metric)
    if value and rep and rep.get("max") is not None and rep.get("min") is not None:
        return value, (float(rep["max"]) - float(rep["min"])) / value
    return value, 0.0


def _accuracy_change(oa: float, na: float, old_n: int | None, new_n: int | None) -> dict[str, Any]:
    """Accuracy delta in percentage points; "more than 0.1 pp" decided on image counts when both runs saw as many
    images (on floats, 0.700 -> 0.699 of 1,000 images is -0.10000000000000009 pp: one image would count)."""
    from cifarbench.bench.metrics import exceeds_pp, images_in  # numpy: only once there is something to compare

    if old_n and old_n == new_n:
        gained = images_in(na, new_n) - images_in(oa, old_n)
        d = 100 * gained / new_n
        worse, better = exceeds_pp(-gained, new_n, ACCURACY_PP), exceeds_pp(gained, new_n, ACCURACY_PP)
    else:
        d = 100 * (na - oa)
        worse, better = round(d, 6) < -ACCURACY_PP, round(d, 6) > ACCURACY_PP
    return {"old": oa, "new": na, "delta_pp": d, "verdict": "regression" if worse else "improved" if better else "same"}


def compare_docs(old: dict[str, Any], new: dict[str, Any], tolerance: float = 0.05,
                 latency_floor_ms: float = LATENCY_FLOOR_MS, strict: bool = False) -> dict[str, Any]:
    """Row-by-row comparison of two results documents; ``verdict`` is same, improved or regression.

    A row in only one run gets the verdict ``absent`` (``strict``: a row that was ok and is absent now is
    a regression).
    """
    olds = {_key(r): r for r in old["results"]}
    news = {_key(r): r for r in new["results"]}
    rows = []
    notes = []
    if old.get("data", {}).get("fingerprint") != new.get("data", {}).get("fingerprint") or \
            old.get("data", {}).get("subset") != new.get("data", {}).get("subset"):
        notes.append("the runs used different data, so accuracy deltas compare different images")
    old_cpu, new_cpu = (d.get("environment", {}).get("cpu", {}).get("model") for d in (old, new))
    if old_cpu != new_cpu:
        notes.append(f"different CPUs: {old_cpu} vs {new_cpu}")
    for key in list(olds) + [k for k in news if k not in olds]:
        o, n = olds.get(key), news.get(key)
        row: dict[str, Any] = {"model": key[0], "backend": key[1], "threads": key[2], "verdict": "same", "changes": {}}
        rows.append(row)
        if o is None or n is None or o["status"] != "ok" or n["status"] != "ok":
            was, now = (o or {}).get("status", "absent"), (n or {}).get("status", "absent")
            row["status"] = f"{was} {ARROW} {now}"
            if "absent" in (was, now):
                row["verdict"] = "regression" if strict and was == "ok" else "absent"
            else:
                row["verdict"] = "regression" if was == "ok" else ("improved" if now == "ok" else "same")
            continue
        for metric, higher_better in METRICS:
            (ov, os_), (nv, ns) = _figure(o, metric), _figure(n, metric)
            if ov is None or nv is None or ov == 0:
                continue
            rel = (nv - ov) / ov
            noise = max(tolerance, os_ + ns)
            worse = -rel if higher_better else rel
            verdict = "regression" if worse > noise else "improved" if -worse > noise else "same"
            # rounded to the nanosecond: 1.1 - 1.0 is 0.10000000000000009 ms, which is the 0.1 ms floor, not above it
            if metric == "p99_ms" or (metric == "p50_ms" and round(abs(nv - ov), 6) <= latency_floor_ms):
                verdict = "same"  # shown, not judged (see the module doc)
            row["changes"][metric] = {"old": ov, "new": nv, "delta_pct": 100 * rel, "noise_pct": 100 * noise,
                                      "verdict": verdict}
        oa, na = (o.get("quality") or {}).get("accuracy"), (n.get("quality") or {}).get("accuracy")
        if oa is not None and na is not None:
            row["changes"]["accuracy"] = _accuracy_change(oa, na, (o.get("quality") or {}).get("support"),
                                                          (n.get("quality") or {}).get("support"))
        verdicts = {c["verdict"] for c in row["changes"].values()}
        row["verdict"] = "regression" if "regression" in verdicts else "improved" if "improved" in verdicts else "same"
    verdicts = {r["verdict"] for r in rows}
    overall = "regression" if "regression" in verdicts else "improved" if "improved" in verdicts else "same"
    absent = [r for r in rows if r["verdict"] == "absent"]
    if absent:
        notes.append(f"{len(absent)} row(s) present in one run only: not judged (--strict makes a row that was ok "
                     "and is gone a regression)")
    return {"verdict": overall, "rows": rows, "notes": notes, "tolerance_pct": 100 * tolerance,
            "latency_floor_ms": latency_floor_ms, "strict": strict,
            "old": {"created": old.get("created"), "command": old.get("command")},
            "new": {"created": new.get("created"), "command": new.get("command")}}


def compare_files(old: str | os.PathLike[str], new: str | os.PathLike[str], tolerance: float = 0.05,
                  latency_floor_ms: float = LATENCY_FLOOR_MS, strict: bool = False) -> dict[str, Any]:
    from cifarbench.bench.results_schema import load_results  # (imports the runner: kept out of the CLI's import)

    return compare_docs(load_results(_results_path(old)), load_results(_results_path(new)), tolerance,
                        latency_floor_ms, strict)


def _cells(r: dict[str, Any]) -> list[str]:
    name = r["backend"] + (f" ({r['threads']}t)" if r["threads"] else "")
    if "status" in r:
        return [r["model"], name, r["status"], "", "", "", r["verdict"]]
    out = [r["model"], name]
    for metric, spec in (("images_per_s", ",.0f"), ("p50_ms", ".3f"), ("p99_ms", ".3f")):
        c = r["changes"].get(metric)
        out.append(f"{c['old']:{spec}} {ARROW} {c['new']:{spec}} ({c['delta_pct']:+.1f} %, noise ±{c['noise_pct']:.0f} %)"
                   + (" **" + c["verdict"] + "**" if c["verdict"] != "same" else "") if c else "–")
    a = r["changes"].get("accuracy")
    out.append(f"{a['old']:.4f} {ARROW} {a['new']:.4f} ({a['delta_pp']:+.2f} pp)" if a else "–")
    out.append(r["verdict"])
    return out


HEADER = ["model", "backend", "img/s", "p50 ms", "p99 ms", "accuracy", "verdict"]


def to_markdown(result: dict[str, Any]) -> str:
    lines = [f"### cifarbench bench compare: **{result['verdict']}**", "",
             f"Old: {result['old']['created']}; new: {result['new']['created']}. A speed change counts beyond the "
             f"larger of {result['tolerance_pct']:.0f} % and the sum of the runs' min–max spreads, and a p50 change "
             f"only beyond {result['latency_floor_ms']:g} ms (p99 shown, not judged); accuracy beyond "
             f"{ACCURACY_PP} pp.", ""]
    lines += ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(_cells(r)) + " |" for r in result["rows"]]
    lines += [""] + [f"> {n}" for n in result["notes"]]
    return "\n".join(lines).rstrip() + "\n"


def to_json(result: dict[str, Any]) -> str:
    return json.dumps(result, indent=2) + "\n"


def render(result: dict[str, Any], fmt: str) -> str:
    """The comparison in one of FORMATS."""
    return {"md": to_markdown, "json": to_json, "table": to_text}[fmt](result)


def to_text(result: dict[str, Any]) -> str:
    table = [HEADER] + [[c.replace("**", "") for c in _cells(r)] for r in result["rows"]]
    widths = [max(len(row[i]) for row in table) for i in range(len(HEADER))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in table]
    lines += [f"note: {n}" for n in result["notes"]] + [f"verdict: {result['verdict']}"]
    return "\n".join(lines) + "\n"
