"""Does `auto` pick the fastest int8 backend of a full bench run on this machine, and how long does its probe take?

For each model: probe N times from an empty cache (each probe is what a first classify/serve pays),
record the choice and the probe's wall time; then run `cifarbench bench` (offline scenario, the
candidates only, --repeat R, isolated rows) and compare the choice with the row that has the highest
median images/s at the largest batch size. A disagreement is only meaningful when the two rows'
ranges across repeats do not overlap, so the ranges are recorded too.

Run on a quiet machine from the repository root:

    python benchmarks/autoselect/bench_autoselect.py

writes benchmarks/autoselect/results.json and results.md. ``--smoke`` runs tiny sizes.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from cifarbench import backends  # noqa: E402
from cifarbench.bench.runner import BenchConfig, run_bench  # noqa: E402
from cifarbench.models.model_ref import resolve_model  # noqa: E402
from cifarbench.sysinfo import cpu_info, package_versions  # noqa: E402


def probe_fresh(model: str) -> dict[str, Any]:
    """One probe in a new process, as a user's first classify pays it: nothing imported, nothing compiled yet
    (OpenVINO caches compiled models per process, so a second probe in one process would be flattered)."""
    out = subprocess.run([sys.executable, __file__, "--probe-child", model], capture_output=True, text=True,
                         check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def probe_once(model: str) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="auto-cache-") as cache:
        os.environ["CIFARBENCH_CACHE_DIR"] = cache
        m = resolve_model(model)
        t0 = time.perf_counter()
        sel = backends.select(m)
        wall = time.perf_counter() - t0
        again = backends.select(m)
    os.environ.pop("CIFARBENCH_CACHE_DIR", None)
    return {"choice": sel.name, "how": sel.how, "probe_wall_s": wall, "figures": sel.figures,
            "cached_choice": again.name, "cached_how": again.how}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", action="append", help="repeatable (default: every shipped model)")
    ap.add_argument("--probes", type=int, default=5)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--batch-sizes", default="256", help="the largest is compared (classify's default batch: 256)")
    ap.add_argument("--min-time", type=float, default=3.0)
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent))
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--probe-child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.probe_child:
        print(json.dumps(probe_once(args.probe_child), default=float))
        return 0
    limit = None
    if args.smoke:
        args.probes, args.repeat, args.min_time, limit = 1, 2, 0.05, 100
    from cifarbench.models.model_ref import shipped_models

    models = args.model or shipped_models()
    out_rows = []
    for model in models:
        m = resolve_model(model)
        cands = list(backends.auto_candidates(m))
        probes = [probe_fresh(model) for _ in range(args.probes)]
        doc = run_bench(BenchConfig(models=[model], backends=cands, limit=limit, scenarios=("offline",),
                                    batch_sizes=[int(b) for b in args.batch_sizes.split(",")], repeat=args.repeat,
                                    isolate=True, min_time=args.min_time, min_calls=3))
        rows = {r["backend"]: r for r in doc["results"] if r["status"] == "ok"}
        med = {b: (r["repeat"].get("images_per_s") or {}).get("median") or r["throughput"][-1]["images_per_s"]
               for b, r in rows.items()}
        fastest = max(med, key=lambda b: med[b]) if med else None
        choices = [p["choice"] for p in probes]
        rng = {b: ((rows[b]["repeat"].get("images_per_s") or {}).get("min") or med[b],
                   (rows[b]["repeat"].get("images_per_s") or {}).get("max") or med[b]) for b in rows}
        # Tied: the pick's range across repeats reaches the fastest row's, so bench itself cannot rank them.
        tied = sum(c != fastest and c in rng and fastest is not None and rng[c][1] >= rng[fastest][0] for c in choices)
        out_rows.append({
            "model": model, "candidates": cands, "probes": probes, "fastest_in_bench": fastest,
            "bench_images_per_s": {b: {"median": med[b], **{k: (rows[b]["repeat"].get("images_per_s") or {}).get(k)
                                                            for k in ("min", "max")}} for b in rows},
            "batch_size": doc["config"]["batch_sizes"][-1],
            "agree": sum(c == fastest for c in choices), "tied": tied, "of": len(choices),
            "pick_share_of_fastest_median": [med.get(c, 0) / med[fastest] if fastest else None for c in choices],
            "probe_wall_s": [p["probe_wall_s"] for p in probes],
        })
        print(f"{model}: auto {choices} vs fastest in bench {fastest} {med}", file=sys.stderr)
    lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    result = {"command": " ".join(sys.argv), "smoke": args.smoke,
              "machine": {"lscpu_model_name": next((ln.split(":", 1)[1].strip() for ln in lscpu.splitlines()
                                                    if ln.startswith("Model name")), ""),
                          "flags": cpu_info()["flags"], "usable_cores": cpu_info()["usable_cores"],
                          "loadavg": os.getloadavg(), "versions": package_versions()},
              "models": out_rows}
    stem = "results-smoke" if args.smoke else "results"
    out = Path(args.out)
    (out / f"{stem}.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    lines = ["# `auto` vs the fastest int8 row of a bench run", "", f"Command: `{result['command']}`", "",
             f"- CPU: {result['machine']['lscpu_model_name']}, {result['machine']['usable_cores']} usable cores, flags: "
             + ", ".join(f for f, on in result["machine"]["flags"].items() if on),
             f"- Load average at the end: {result['machine']['loadavg']}", "",
             "| model | candidates | auto picked (fresh-process probes) | bench at the largest batch: median img/s "
             "(min–max) | fastest | tied | pick / fastest median | probe wall s |",
             "|---|---|---|---|---:|---:|---|---|"]
    for r in out_rows:
        tp = "; ".join(f"{b} {v['median']:,.0f}" + (f" ({v['min']:,.0f}–{v['max']:,.0f})" if v.get("min") else "")
                       for b, v in r["bench_images_per_s"].items())
        lines.append(f"| {r['model']} | {', '.join(r['candidates'])} | {', '.join(p['choice'] for p in r['probes'])} | "
                     f"{r['fastest_in_bench']}: {tp} | {r['agree']}/{r['of']} | {r['tied']}/{r['of']} | "
                     f"{', '.join(f'{s:.2f}' for s in r['pick_share_of_fastest_median'])} | "
                     f"{', '.join(f'{s:.2f}' for s in r['probe_wall_s'])} |")
    (out / f"{stem}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
