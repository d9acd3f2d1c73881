"""`classify --engine ray` against the local engine, measured in the same run on the same files.

1. Engine ratio: the 10,000 bundled CIFAR-10 test JPEGs and a folder of generated 1920x1080 photos,
   classified by the local engine and by the ray engine on a private local Ray sized to this machine
   (started once; each ray run still creates its own decode tasks and actor pool and loads the model,
   as every CLI run does). Rounds are interleaved and the best of each is kept. Ratio = ray / local
   wall-clock rate; Ray's overhead on 2 cores should cost no more than ~30 % (ratio >= 0.7).
2. The same ray runs on a two-node cluster built on this machine (``ray.cluster_utils.Cluster``, one
   CPU per node, 127.0.0.1): the cost of crossing nodes (object transfer between raylets).
3. Driver cost: (a) rows/s the driver can turn into written output when the cluster is infinitely
   fast (returned batches replayed through ``rows_of_batch`` and the CSV writer), i.e. the rate at
   which the driver becomes the bottleneck; (b) the driver's peak RSS over a ray run of
   ``--driver-files`` files (hard links to the test JPEGs), against a run of a tenth of them: bounded
   memory means the two peaks are close.
4. Ray start-up: ``ray.init`` of a private local Ray, and the first run's extra time.

    nice -n 19 python benchmarks/ray/bench_ray.py [--model flagship] [--rounds 3]

Writes results.json and the generated part of results.md beside this script (text outside the
GENERATED markers is kept). Smoke test: ``--images 300 --photos 4 --driver-files 2000 --rounds 1``.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(REPO), str(REPO / "benchmarks" / "classify")]
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # every Ray this script starts listens on 127.0.0.1
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

from bench_classify import BEGIN, END, environment, extract_test_jpegs, make_photos, write_md  # noqa: E402

from cifarbench.data.discover import FileEntry, discover  # noqa: E402
from cifarbench.engines import EngineOptions  # noqa: E402
from cifarbench.events import Event  # noqa: E402
from cifarbench.runs.classify import classify  # noqa: E402


def rss_mb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


class PeakRss:
    """The driver's peak RSS during a block, sampled every 50 ms (VmHWM cannot be reset between runs)."""

    def __enter__(self) -> "PeakRss":
        self.peak, self.start, self._stop = 0.0, rss_mb(), threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            self.peak = max(self.peak, rss_mb())

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._t.join()
        self.peak = max(self.peak, rss_mb())


def run_once(folder: Path, model: str, backend: str, batch: int, engine: EngineOptions | None) -> dict[str, float]:
    sink = io.StringIO()
    first: list[tuple[float, int]] = []  # (time, rows) when the first rows were written

    def progress(event: Event) -> None:
        n = event.done or 0
        if event.kind == "progress" and n and not first:
            first.append((time.perf_counter(), n))

    t0 = time.perf_counter()
    with PeakRss() as mem:
        rep = classify([folder], model=model, backend=backend, batch_size=batch, stream=sink, engine=engine,
                       events=progress)
    end = time.perf_counter()
    wall = end - t0
    assert rep.failed == 0, rep.summary()
    t1, n1 = first[0] if first else (end, rep.files)
    # after the first rows: the rate once start-up (Ray job, actors, model load) is paid
    streaming = (rep.files - n1) / (end - t1) if end > t1 and rep.files > n1 else float("nan")
    return {"files": rep.files, "wall_s": wall, "rate": rep.files / wall, "first_rows_s": t1 - t0,
            "streaming_rate": streaming, "rss_peak_mb": mem.peak, "rss_start_mb": mem.start,
            "rows_bytes": len(sink.getvalue())}


def compare(name: str, folder: Path, model: str, backend: str, batch: int, rounds: int,
            engines: dict[str, EngineOptions | None]) -> dict[str, Any]:
    """Best-of-``rounds`` wall-clock rate per engine, interleaved; outputs checked identical."""
    best: dict[str, dict[str, float]] = {}
    outputs: dict[str, int] = {}
    for r in range(rounds):
        for label, eng in engines.items():
            got = run_once(folder, model, backend, batch, eng)
            outputs.setdefault(label, int(got["rows_bytes"]))
            print(f"  [{name} round {r + 1}] {label}: {got['rate']:.0f} files/s ({got['wall_s']:.1f} s)", flush=True)
            if label not in best or got["rate"] > best[label]["rate"]:
                best[label] = got
    if len(set(outputs.values())) != 1:
        raise SystemExit(f"{name}: outputs differ between engines ({outputs})")
    local = best["local"]["rate"]
    return {"set": name, "files": best["local"]["files"], "batch": batch,
            "engines": {k: {"rate": round(v["rate"], 1), "wall_s": round(v["wall_s"], 2),
                            "first_rows_s": round(v["first_rows_s"], 2), "streaming_rate": round(v["streaming_rate"], 1),
                            "ratio_to_local": round(v["rate"] / local, 3),
                            "streaming_ratio": round(v["streaming_rate"] / best["local"]["streaming_rate"], 3)}
                        for k, v in best.items()}}


def driver_rate(classes: list[str], files: int = 200_000, block: int = 1024, top_k: int = 1) -> dict[str, float]:
    """Rows/s through the driver's per-row code alone: returned batches -> rows -> CSV text."""
    from cifarbench.engines.ray_engine import rows_of_batch
    from cifarbench.runs.writers import make_writer

    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(len(classes)), block).astype(np.float32)
    ok = np.ones(block, bool)
    ok[::97] = False  # about 1 % failed files, as in a real folder
    err = np.array([b"" if o else b"not an image (no installed Pillow plugin recognises it)" for o in ok], object)
    entries = [FileEntry(f"/shared/photos/2026/11/30/IMG_{i:07d}.jpg") for i in range(block)]
    writer = make_writer("csv", top_k)
    out = open(os.devnull, "w", encoding="utf-8", newline="")
    t0 = time.perf_counter()
    done = 0
    while done < files:
        rows = rows_of_batch(entries, {"idx": np.arange(block), "probs": probs, "ok": ok, "error": err}, classes, top_k)
        out.write("".join(writer.format(row) for row in rows))
        done += block
    dt = time.perf_counter() - t0
    out.close()
    return {"rows": done, "seconds": round(dt, 3), "rows_per_s": round(done / dt, 0), "top_k": top_k}


def link_tree(src: list[FileEntry], dest: Path, n: int) -> Path:
    """``n`` files as hard links to ``src`` (many folders of 1,000), so a 100,000-file run costs no disk."""
    for i in range(n):
        d = dest / f"d{i // 1000:04d}"
        if i % 1000 == 0:
            d.mkdir(parents=True, exist_ok=True)
        os.link(src[i % len(src)].path, d / f"{i:07d}.jpg")
    return dest


def with_ray(address: str | None, fn: Callable[[], Any]) -> tuple[Any, float]:
    """Run ``fn`` connected to ``address`` (None: a private local Ray); returns its result and the connect time."""
    from cifarbench.engines.ray_engine import connect

    t0 = time.perf_counter()
    with connect(address):
        up = time.perf_counter() - t0
        return fn(), up


def render(res: dict[str, Any]) -> str:
    env = res["environment"]
    lines = [BEGIN, "", f"Generated by `{res['command']}` on {res['date']}.", "",
             f"Machine: {env['cpu']} ({res['cpu_flags']}), {env['cores']} usable cores, Python {env['python']}; "
             + ", ".join(f"{k} {v}" for k, v in env["packages"].items() if k in ("onnxruntime", "ray", "pillow", "numpy"))
             + ".", f"Load average at start {tuple(round(x, 2) for x in env['loadavg_start'])}, at end "
             f"{tuple(round(x, 2) for x in res['loadavg_end'])}.", "",
             f"Model `{res['model']}`, backend `{res['backend']}`. Rates are files/s over the whole `classify` call "
             f"(wall clock, model load and actor start-up included; a running Ray), best of {res['rounds']} "
             "interleaved rounds; every engine's output was checked byte-identical.", "",
             "Streaming = files/s after the first rows were written (start-up paid); first rows = seconds to them.", "",
             "| files | engine | files/s | ratio to local | streaming files/s | streaming ratio | first rows (s) |",
             "|---|---|---:|---:|---:|---:|---:|"]
    names = {"local": "local", "ray": "ray, 1 node (all CPUs)", "ray-2-nodes": "ray, 2 nodes x 1 CPU",
             "local-2-nodes": "local, interleaved with the 2-node runs"}
    for s in res["sets"]:
        for k, e in s["engines"].items():
            if k == "ray-2-nodes" and "local-2-nodes" in s:  # the local rate the 2-node ratios divide by
                lines.append(_row(s, names["local-2-nodes"], s["local-2-nodes"]))
            lines.append(_row(s, names[k], e))
    if any("local-2-nodes" in s for s in res["sets"]):
        lines += ["", "The 2-node ratios are against the local runs interleaved with them (the row above each), "
                  "not against the first local row (the sections ran at different times)."]
    d, m = res["driver"], res["driver_memory"]
    lines += ["", f"Start-up: a private local Ray is ready in {res['ray_start_s']:.1f} s"
              + (f"; a two-node cluster on this machine in {res['cluster_start_s']:.1f} s." if "cluster_start_s" in res else "."),
              "", f"Driver: formats and writes {d['rows_per_s']:,.0f} rows/s (top-1 CSV, 1 % error rows) when the "
              "cluster is infinitely fast: the rate above which the driver is the bottleneck."]
    if m:
        lines.append(f"Driver peak RSS: {m['small']['rss_peak_mb']:.0f} MB over {m['small']['files']:,} files, "
                     f"{m['large']['rss_peak_mb']:.0f} MB over {m['large']['files']:,} files "
                     f"(ray engine, {m['large']['rate']:.0f} files/s; RSS before the run {m['large']['rss_start_mb']:.0f} MB).")
    return "\n".join(lines + ["", END])


def _row(s: dict[str, Any], name: str, e: dict[str, Any]) -> str:
    return (f"| {s['set']} ({s['files']}) | {name} | {e['rate']:.0f} | {e['ratio_to_local']:.2f} | "
            f"{e['streaming_rate']:.0f} | {e['streaming_ratio']:.2f} | {e['first_rows_s']:.1f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="flagship")
    ap.add_argument("--backend", default="onnx-int8")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--images", type=int, default=10000, help="how many of the 10,000 test JPEGs")
    ap.add_argument("--photos", type=int, default=200, help="generated 1920x1080 JPEGs (0: skip)")
    ap.add_argument("--driver-files", type=int, default=100_000, help="files in the driver-memory run (0: skip)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--no-cluster", action="store_true", help="skip the two-node cluster")
    ap.add_argument("--out", type=Path, default=HERE)
    args = ap.parse_args()

    from cifarbench.models.model_ref import resolve_model
    from cifarbench.sysinfo import cpu_info

    manifest = resolve_model(args.model)
    import importlib.metadata

    flags = cpu_info().get("flags") or {}
    res: dict[str, Any] = {"command": "python benchmarks/ray/bench_ray.py " + " ".join(sys.argv[1:]),
                           "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "model": manifest.name,
                           "backend": args.backend, "rounds": args.rounds, "environment": environment(),
                           "cpu_flags": " ".join(f for f, on in flags.items() if on) or "?", "sets": []}
    res["environment"]["packages"]["ray"] = importlib.metadata.version("ray")
    print(f"model {manifest.name}, backend {args.backend}, load {os.getloadavg()}", flush=True)
    with tempfile.TemporaryDirectory(prefix="cifarbench-bench-ray-") as td:
        test = extract_test_jpegs(Path(td) / "cifar") / "test"
        jpegs = list(discover([test]))
        if args.images < len(jpegs):
            for e in jpegs[args.images:]:
                os.unlink(e.path)
            jpegs = jpegs[: args.images]
        sets = [("CIFAR-10 test JPEGs 32x32", test)]
        if args.photos:
            sets.append(("generated 1920x1080 photos", make_photos(Path(td) / "photos", args.photos)))
        ray_opts = EngineOptions("ray")

        def local_and_ray() -> list[dict[str, Any]]:
            return [compare(n, f, args.model, args.backend, args.batch_size, args.rounds,
                            {"local": None, "ray": ray_opts}) for n, f in sets]

        def driver_memory() -> dict[str, Any]:
            if not args.driver_files:
                return {}
            big = link_tree(jpegs, Path(td) / "many", args.driver_files)
            small = link_tree(jpegs, Path(td) / "fewer", max(1, args.driver_files // 10))
            out = {"small": run_once(small, args.model, args.backend, args.batch_size, ray_opts),
                   "large": run_once(big, args.model, args.backend, args.batch_size, ray_opts)}
            print(f"  driver RSS: {out['small']['rss_peak_mb']:.0f} MB / {out['large']['rss_peak_mb']:.0f} MB", flush=True)
            return out

        (sets_res, mem), res["ray_start_s"] = with_ray(None, lambda: (local_and_ray(), driver_memory()))
        res["sets"], res["driver_memory"] = sets_res, mem
        if not args.no_cluster:
            from ray.cluster_utils import Cluster

            t0 = time.perf_counter()
            node = {"num_cpus": 1, "node_ip_address": "127.0.0.1", "object_store_memory": 300 * 1024**2}
            cluster = Cluster(initialize_head=True, head_node_args={**node, "include_dashboard": False})
            try:
                cluster.add_node(**node)
                cluster.wait_for_nodes()
                res["cluster_start_s"] = time.perf_counter() - t0
                two = EngineOptions("ray", cluster.address)
                for s, (n, f) in zip(res["sets"], sets):
                    got = with_ray(cluster.address, lambda f=f, n=n: compare(
                        n, f, args.model, args.backend, args.batch_size, args.rounds, {"local": None, "ray-2-nodes": two}))[0]
                    s["engines"]["ray-2-nodes"] = got["engines"]["ray-2-nodes"]  # ratio to its own interleaved local runs
                    s["local-2-nodes"] = got["engines"]["local"]  # ... whose rate render() prints beside it
            finally:
                cluster.shutdown()
    res["driver"] = driver_rate(list(manifest.classes))
    res["loadavg_end"] = os.getloadavg()
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(res, indent=2) + "\n", encoding="utf-8")
    md = render(res)
    if not (args.out / "results.md").exists():
        (args.out / "results.md").write_text("# ray engine benchmark\n\n" + BEGIN + "\n" + END + "\n", encoding="utf-8")
    write_md(args.out / "results.md", md)
    print(md)


if __name__ == "__main__":
    main()
