"""Why the openvino backends compile the way they do: CPU pinning and latency vs throughput mode, as ratios.

Every variant runs in one process on the same uint8 images, round-robin (one call of each per round),
so a burst of load from elsewhere hits all of them alike; onnxruntime on the same ONNX file is the
baseline in the same run. Two measurements per artifact:

* batch 1: p50/p90 of single calls: OpenVINO LATENCY hint pinned (the runtime's default) and unpinned
  (what the backend uses), and onnxruntime;
* batch 256: median images/s of one call: THROUGHPUT hint split over its async requests (pinned and
  unpinned, the latter is the backend's path), LATENCY hint on the whole batch, and onnxruntime.

Run it twice, quiet and loaded, to see both sides of the pinning trade-off; the machine and load
average are written with the results.

    python benchmarks/openvino/bench_openvino.py --rounds 300 --out benchmarks/openvino/results.json
    python benchmarks/openvino/bench_openvino.py --rounds 5 --big-rounds 2  # smoke
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from cifarbench.backends.openvino_backend import import_openvino
from cifarbench.sysinfo import environment

ARTIFACTS = ("trained/flagship/model.onnx", "trained/flagship/model_int8.onnx", "trained/baseline-cnn/model_int8.onnx")


def _ov_call(core: Any, model: Any, config: dict[str, Any], x: np.ndarray) -> Callable[[], None]:
    """One predict of ``x`` on a compiled model: split over its optimal number of async requests."""
    compiled = core.compile_model(model, "CPU", config)
    n = int(compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")) if len(x) > 1 else 1
    reqs = [compiled.create_infer_request() for _ in range(n)]
    chunks = [np.ascontiguousarray(c) for c in np.array_split(x, n)]

    def call() -> None:
        for r, c in zip(reqs, chunks):
            r.start_async({0: c}, share_inputs=True)
        for r in reqs:
            r.wait()

    return call


def _ort_call(path: str, x: np.ndarray) -> Callable[[], None]:
    import onnxruntime as ort

    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    return lambda: sess.run(None, {name: x}) and None


def _round_robin(calls: dict[str, Callable[[], None]], rounds: int, warmup: int = 5) -> dict[str, list[float]]:
    for fn in calls.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {k: [] for k in calls}
    for _ in range(rounds):
        for k, fn in calls.items():
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
    return times


def measure(path: str, rounds: int, big_rounds: int) -> dict[str, Any]:
    ov = import_openvino()  # without OpenVINO's import-time telemetry

    core = ov.Core()
    model = core.read_model(path)
    rng = np.random.default_rng(0)
    one = rng.integers(0, 256, (1, 32, 32, 3), dtype=np.uint8)
    big = rng.integers(0, 256, (256, 32, 32, 3), dtype=np.uint8)
    lat, tput = {"PERFORMANCE_HINT": "LATENCY"}, {"PERFORMANCE_HINT": "THROUGHPUT"}
    unpinned = {"ENABLE_CPU_PINNING": False}
    t1 = _round_robin({"latency_pinned": _ov_call(core, model, lat, one),
                       "latency_unpinned": _ov_call(core, model, {**lat, **unpinned}, one),
                       "onnxruntime": _ort_call(path, one)}, rounds)
    tb = _round_robin({"throughput_pinned": _ov_call(core, model, tput, big),
                       "throughput_unpinned": _ov_call(core, model, {**tput, **unpinned}, big),
                       "latency_unpinned_whole_batch": _ov_call(core, model, {**lat, **unpinned}, big),
                       "onnxruntime": _ort_call(path, big)}, big_rounds, warmup=2)
    pct = lambda v, q: 1000 * float(np.percentile(v, q))  # noqa: E731
    batch1 = {k: {"p50_ms": pct(v, 50), "p90_ms": pct(v, 90), "n": len(v)} for k, v in t1.items()}
    batch256 = {k: {"images_per_s": 256 / statistics.median(v), "n": len(v)} for k, v in tb.items()}
    return {"artifact": path, "batch1": batch1, "batch256": batch256,
            "ratios": {"batch1_p50_pinned_over_unpinned": batch1["latency_pinned"]["p50_ms"] / batch1["latency_unpinned"]["p50_ms"],
                       "batch256_throughput_over_latency_mode": batch256["throughput_unpinned"]["images_per_s"]
                       / batch256["latency_unpinned_whole_batch"]["images_per_s"],
                       "batch256_unpinned_over_onnxruntime": batch256["throughput_unpinned"]["images_per_s"]
                       / batch256["onnxruntime"]["images_per_s"]}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=300, help="batch-1 calls per variant")
    ap.add_argument("--big-rounds", type=int, default=20, help="batch-256 calls per variant")
    ap.add_argument("--artifact", action="append", help=f"ONNX file(s) [default: {', '.join(ARTIFACTS)}]")
    ap.add_argument("--out", type=Path, help="write the JSON results here")
    args = ap.parse_args()
    ov = import_openvino()

    try:
        lscpu = next((l for l in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines()
                      if l.startswith("Model name")), "")
    except OSError:
        lscpu = ""
    env = environment()
    load0 = os.getloadavg()
    results = [measure(p, args.rounds, args.big_rounds) for p in (args.artifact or ARTIFACTS)]
    doc = {"machine": lscpu.split(":", 1)[-1].strip(), "cpu": env["cpu"], "versions": env["versions"],
           "openvino": ov.get_version(), "loadavg_start": load0, "loadavg_end": os.getloadavg(),
           "nice": os.nice(0), "command": " ".join([Path(sys.argv[0]).name] + sys.argv[1:]), "results": results}
    text = json.dumps(doc, indent=2)
    if args.out:
        args.out.write_text(text + "\n", encoding="utf-8")
    for r in results:
        b1, b256 = r["batch1"], r["batch256"]
        print(f"{r['artifact']}: batch 1 p50 ms " + ", ".join(f"{k} {v['p50_ms']:.3f}" for k, v in b1.items())
              + "; batch 256 img/s " + ", ".join(f"{k} {v['images_per_s']:,.0f}" for k, v in b256.items()))
        print("  ratios: " + ", ".join(f"{k} {v:.2f}" for k, v in r["ratios"].items()))
    print(f"load average {load0[0]:.2f} -> {doc['loadavg_end'][0]:.2f} on {env['cpu']['usable_cores']} usable cores")


if __name__ == "__main__":
    main()
