"""Per-op time from each runtime's own profiler, in one shape: [{"op", "type", "ms", "calls", "share"}], slowest first.

``bench --profile`` loads a row's backend a second time with profiling on (so the timed figures never carry the
profiler's overhead), runs a few calls, and keeps the runtime's raw file beside the results plus this summary.
Sources: onnxruntime's chrome-trace JSON (``SessionOptions.enable_profiling``: one "Node" event per kernel run),
OpenVINO's performance counters (``PERF_COUNT``: each request's last inference). LiteRT's Python API has none.
"""

from __future__ import annotations

import json
from collections import defaultdict
from typing import Any, Iterable

TOP = 10


def summarize(records: Iterable[tuple[str, str, float]]) -> list[dict[str, Any]]:
    """(op, type, microseconds) per kernel run -> per op: total ms, calls, share of all ops' time; slowest first."""
    total: dict[tuple[str, str], float] = defaultdict(float)
    calls: dict[tuple[str, str], int] = defaultdict(int)
    for op, kind, us in records:
        total[(op, kind)] += us
        calls[(op, kind)] += 1
    whole = sum(total.values())
    rows = [{"op": op, "type": kind, "ms": us / 1000, "calls": calls[(op, kind)],
             "share": us / whole if whole else 0.0} for (op, kind), us in total.items()]
    return sorted(rows, key=lambda r: (-r["ms"], r["op"]))


def onnxruntime_ops(path: str) -> list[dict[str, Any]]:
    """Kernel events of an onnxruntime profile: ``cat`` "Node", name "<node>_kernel_time", ``dur`` in µs."""
    with open(path, encoding="utf-8") as fh:
        events = json.load(fh)
    suffix = "_kernel_time"
    return summarize((e["name"][: -len(suffix)], (e.get("args") or {}).get("op_name", "?"), float(e.get("dur", 0)))
                     for e in events if isinstance(e, dict) and e.get("cat") == "Node"
                     and str(e.get("name", "")).endswith(suffix))


def openvino_ops(entries: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """OpenVINO counters (see OpenVINOBackend.profile); layers that did not run (status NOT_RUN) are left out."""
    return summarize((e["node"], f"{e['type']} ({e['exec_type']})", float(e["real_time_us"]))
                     for e in entries if "NOT_RUN" not in str(e.get("status", "")) and e.get("real_time_us", 0) > 0)


def top(ops: list[dict[str, Any]], n: int = TOP) -> list[dict[str, Any]]:
    return ops[:n]
