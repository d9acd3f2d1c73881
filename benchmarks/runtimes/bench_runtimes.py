"""`cifarbench bench` beside each runtime's own benchmark tool, on the same shipped artifacts, in one run.

For every backend row, batch 1 and batch 256, rounds interleaved (bench, then the tool, then the next backend) so a
burst of load from other processes lands on both sides alike; the figure per side is the median over rounds and
the ratio is bench / tool (target >= 0.9x).

The tools, all run as subprocesses with their own defaults except where said:

- OpenVINO: ``benchmark_app`` (openvino.tools.benchmark), ``-hint latency`` at batch 1 and ``-hint throughput`` at
  batch 256 (what the openvino backends compile for those sizes), ``-shape [B,H,W,3]``, ``-t`` seconds; its
  "Throughput: N FPS" (images/s: it multiplies by the batch). ``openvino-f32`` adds ``-infer_precision f32``.
- LiteRT: ``litert-benchmark`` (ai_edge_litert.tools.benchmark_litert_model, the Python port of
  benchmark_litert_model that the wheel ships; the C++ ``benchmark_model`` binary is not in the wheel). It has no
  batch option, so the one thing added is a resize of the input to [B,H,W,3] right after loading (through its own
  CompiledModel API); ``--num_threads`` = usable cores, as the tflite backends use. Figure: B / its mean ms.
- onnxruntime: ``onnxruntime_perf_test`` is not in the pip wheel; its Python equivalent shipped there is
  ``onnxruntime_test`` (onnxruntime.tools.onnxruntime_test: a bare ``InferenceSession.run`` loop, default session
  options, every available provider), with ``--symbolic_dims <batch dim>=B``. Figure: B / its mean ms.

bench: ``cifarbench bench --model M --backend X --batch-sizes 1,256 --scenario offline`` (isolated row process,
as users run it); batch-1 and batch-256 images/s from its throughput table.

    nice -n 10 python benchmarks/runtimes/bench_runtimes.py --rounds 3 --out benchmarks/runtimes/results.json
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
BACKENDS = ("tflite", "tflite-fp16", "tflite-int8", "onnx", "onnx-int8", "openvino", "openvino-f32", "openvino-int8")
FILES = {"tflite": "model.tflite", "tflite-fp16": "model_fp16.tflite", "tflite-int8": "model_int8.tflite",
         "onnx": "model.onnx", "onnx-int8": "model_int8.onnx", "openvino": "model.onnx", "openvino-f32": "model.onnx",
         "openvino-int8": "model_int8.onnx"}

# The LiteRT tool with the input resized to the batch after loading; everything else is the tool's own code.
_LITERT_SHIM = r"""
import sys
from ai_edge_litert.tools import benchmark_litert_model as b
batch, h, w = (int(v) for v in sys.argv.pop(1).split(","))
orig = b._import_litert
def patched():
    t = orig()
    cm = t[0]
    class Resized:
        @staticmethod
        def from_file(path, environment=None, options=None):
            m = cm.from_file(path, environment=environment, options=options)
            m.resize_input_tensor(0, [batch, h, w, 3], 0, strict=False)
            return m
    return (Resized,) + tuple(t[1:])
b._import_litert = patched
b.main()
"""


def _run(cmd: list[str], timeout: float = 600) -> str:
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
    if p.returncode:
        raise RuntimeError(f"{cmd[:3]} exited {p.returncode}: {(p.stderr or p.stdout).strip().splitlines()[-3:]}")
    return p.stdout + p.stderr


def tool(backend: str, path: Path, batch: int, seconds: float, hw: tuple[int, int], threads: int,
         guess: float) -> float:
    """The runtime's own tool on ``path`` at ``batch``: images/s. ``guess`` (bench's img/s in this round) sizes
    the tools that take a number of runs rather than seconds, so every tool runs about ``seconds``."""
    h, w = hw
    runs = max(20, int(seconds * guess / batch))
    if backend.startswith("openvino"):
        cmd = [str(BIN / "benchmark_app"), "-m", str(path), "-d", "CPU", "-t", str(max(1, round(seconds))),
               "-hint", "latency" if batch == 1 else "throughput", "-shape", f"[{batch},{h},{w},3]"]
        if backend == "openvino-f32":
            cmd += ["-infer_precision", "f32"]
        out = _run(cmd)
        return float(re.findall(r"Throughput:\s+([\d.]+) FPS", out)[-1])
    if backend.startswith("tflite"):
        with tempfile.TemporaryDirectory() as tmp:
            res = Path(tmp) / "r.json"
            _run([sys.executable, "-c", _LITERT_SHIM, f"{batch},{h},{w}", "--model", str(path), "--num_threads",
                  str(threads), "--num_runs", str(runs), "--warmup_runs", "5", "--result_json", str(res)])
            ms = json.loads(res.read_text())["latency"]["avg_ms"]
        return batch / (ms / 1000)
    import onnxruntime as ort

    dim = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).get_inputs()[0].shape[0]
    out = _run([str(BIN / "onnxruntime_test"), str(path), str(runs), "--symbolic_dims", f"{dim}={batch}"])
    return batch / (float(re.findall(r"avg latency: ([\d.]+) ms", out)[-1]) / 1000)


def bench(model: Path, backend: str, seconds: float, extra: list[str]) -> tuple[dict[int, float], dict[str, Any]]:
    """`cifarbench bench`'s row for ``backend``: images/s per batch size."""
    with tempfile.TemporaryDirectory() as tmp:
        _run([sys.executable, "-m", "cifarbench", "bench", "--model", str(model), "--backend", backend,
              "--batch-sizes", "1,256", "--scenario", "offline", "--limit", "512", "--min-time", str(seconds),
              "--output-dir", f"{tmp}/o", "-q", *extra])
        doc = json.loads(Path(f"{tmp}/o/results.json").read_text())
    row = doc["results"][0]
    return {int(t["batch_size"]): float(t["images_per_s"]) for t in row["throughput"]}, row["runtime"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=str(ROOT / "trained" / "flagship"))
    ap.add_argument("--backend", action="append", help="default: every backend with an artifact")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--bench-arg", action="append", default=[], help="extra option for cifarbench bench")
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args()
    model = Path(a.model)
    manifest = json.loads((model / "manifest.json").read_text())
    shape = (manifest.get("input") or {}).get("shape") or [32, 32, 3]
    hw = (int(shape[0]), int(shape[1]))
    threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    names = [b for b in (a.backend or BACKENDS) if (model / FILES[b]).is_file()]
    samples: dict[str, dict[str, dict[int, list[float]]]] = {b: {"tool": {1: [], 256: []}, "bench": {1: [], 256: []}}
                                                             for b in names}
    runtime: dict[str, Any] = {}
    load0, t0 = os.getloadavg(), time.time()
    for r in range(a.rounds):
        for b in names:
            got, runtime[b] = bench(model, b, a.seconds, a.bench_arg)
            for batch in (1, 256):
                samples[b]["bench"][batch].append(got[batch])
                samples[b]["tool"][batch].append(tool(b, model / FILES[b], batch, a.seconds, hw, threads, got[batch]))
            print(f"round {r + 1} {b}: tool {samples[b]['tool'][1][-1]:,.0f} / {samples[b]['tool'][256][-1]:,.0f}, "
                  f"bench {got[1]:,.0f} / {got[256]:,.0f} img/s (batch 1 / 256)", file=sys.stderr, flush=True)
    rows = []
    for b in names:
        row: dict[str, Any] = {"backend": b, "file": FILES[b], "runtime": runtime.get(b)}
        for batch in (1, 256):
            t, s = (statistics.median(samples[b][k][batch]) for k in ("tool", "bench"))
            paired = [x / y for x, y in zip(samples[b]["bench"][batch], samples[b]["tool"][batch])]
            row[f"b{batch}"] = {"tool": t, "bench": s, "ratio": s / t, "tool_all": samples[b]["tool"][batch],
                                "bench_all": samples[b]["bench"][batch], "paired_ratio_median": statistics.median(paired)}
        rows.append(row)
    from cifarbench.sysinfo import environment

    doc = {"command": " ".join(sys.argv), "rounds": a.rounds, "seconds": a.seconds, "loadavg_start": load0,
           "loadavg_end": os.getloadavg(), "wall_s": time.time() - t0, "environment": environment(), "rows": rows}
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(doc, indent=1, default=str))
    print("| backend | file | batch 1: bench / tool img/s | ratio | batch 256: bench / tool img/s | ratio |")
    print("|---|---|---:|---:|---:|---:|")
    for row in rows:
        c = [f"{row[k]['bench']:,.0f} / {row[k]['tool']:,.0f} | {row[k]['ratio']:.2f}×" for k in ("b1", "b256")]
        print(f"| {row['backend']} | {row['file']} | {c[0]} | {c[1]} |")


if __name__ == "__main__":
    main()
