"""Load benchmark for `cifarbench serve`: requests/s and latency percentiles on loopback.

Starts the real CLI server (subprocess) on 127.0.0.1 and drives it with 1 and 8 concurrent
keep-alive clients, each POSTing one CIFAR-10 test JPEG per request as a raw body. Each
configuration stops at --requests completed requests or --duration seconds, whichever
comes first, and runs --repeat times, interleaved with the others. Two server configurations run in the same session:

* ``batched``   - the default micro-batcher (--max-batch 64)
* ``unbatched`` - --max-batch 1: one backend call per image, the baseline for batching

and an in-process baseline without HTTP: backend.predict on one image at a time, and
load_image + predict, so the HTTP/serving overhead is a ratio measured in the same run.

    python benchmarks/serve/bench_serve.py --model flagship --backend onnx-int8 \
        --requests 2000 --duration 10 --repeat 3 --out benchmarks/serve/results-flagship.json
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import subprocess
import sys
import tarfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np

from cifarbench.backends import load_backend
from cifarbench.data.images import load_image
from cifarbench.models.model_ref import resolve_model
from cifarbench.paths import BUNDLED_TEST_ARCHIVE
from cifarbench.sysinfo import environment


def test_jpegs(n: int) -> list[bytes]:
    """The first ``n`` JPEGs of the bundled CIFAR-10 test split, as bytes."""
    out: list[bytes] = []
    with tarfile.open(BUNDLED_TEST_ARCHIVE) as tf:
        for member in tf:
            if member.isfile() and member.name.lower().endswith((".jpg", ".jpeg", ".png")):
                fh = tf.extractfile(member)
                if fh is not None:
                    out.append(fh.read())
                if len(out) >= n:
                    break
    if not out:
        raise SystemExit(f"no images found in {BUNDLED_TEST_ARCHIVE}")
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`cifarbench serve` in a subprocess, waited for until /health answers."""

    def __init__(self, model: str, backend: str, threads: int | None, max_batch: int) -> None:
        self.port = free_port()
        cmd = [sys.executable, "-m", "cifarbench", "serve", "--model", model, "--backend", backend,
               "--port", str(self.port), "--max-batch", str(max_batch), "--log-level", "warning"]
        if threads:
            cmd += ["--threads", str(threads)]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 120
        while True:
            if self.proc.poll() is not None:
                raise SystemExit(f"server exited: {self.proc.stderr.read().decode(errors='replace')[-2000:]}")  # type: ignore[union-attr]
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=2):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise SystemExit("server did not start within 120 s")
                time.sleep(0.2)

    def health(self) -> dict[str, Any]:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=5) as r:
            return json.loads(r.read())

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def load(port: int, images: list[bytes], clients: int, max_requests: int, duration: float, warmup: int = 10) -> dict[str, Any]:
    """``clients`` threads, each a keep-alive connection sending one image per request."""
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    issued = [0]
    start_gate = threading.Barrier(clients + 1)
    stop_at = [0.0]

    def take() -> int | None:
        with lock:
            if issued[0] >= max_requests or time.perf_counter() >= stop_at[0]:
                return None
            issued[0] += 1
            return issued[0]

    def client(cid: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        conn.connect()
        conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # as curl and browsers do
        headers = {"Content-Type": "image/jpeg"}

        def one(i: int) -> float:
            body = images[(cid * 7919 + i) % len(images)]
            t0 = time.perf_counter()
            conn.request("POST", "/v1/classify?top_k=1", body=body, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
            dt = time.perf_counter() - t0
            if resp.status != 200 or not json.loads(data)["results"][0]["ok"]:
                raise RuntimeError(f"HTTP {resp.status}: {data[:200]!r}")
            return dt

        try:
            for i in range(warmup):
                one(i)
            start_gate.wait()
            while (n := take()) is not None:
                dt = one(n)
                with lock:
                    latencies.append(dt)
        except Exception as exc:  # noqa: BLE001 - reported, counted
            with lock:
                errors.append(f"{type(exc).__name__}: {exc}")
            try:
                start_gate.abort()
            except threading.BrokenBarrierError:
                pass
        finally:
            conn.close()

    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    for t in threads:
        t.start()
    try:
        stop_at[0] = time.perf_counter() + duration + 3600  # provisional, set properly below
        start_gate.wait()
    except threading.BrokenBarrierError:
        pass
    t0 = time.perf_counter()
    stop_at[0] = t0 + duration
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - t0
    return {"latencies": latencies, "seconds": elapsed, "errors": errors}


def summarize(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """Repeats of one configuration: median requests/s, latency percentiles over all requests."""
    lat = np.array([x for p in parts for x in p["latencies"]]) * 1000.0
    rates = [len(p["latencies"]) / p["seconds"] for p in parts if p["seconds"] > 0]
    errors = [e for p in parts for e in p["errors"]]
    return {
        "requests": int(len(lat)), "repeats": len(parts), "errors": len(errors), "first_error": errors[0] if errors else None,
        "requests_per_s": round(float(np.median(rates)), 1) if rates else 0.0,
        "requests_per_s_each": [round(r, 1) for r in rates],
        "p50_ms": round(float(np.percentile(lat, 50)), 2) if len(lat) else None,
        "p99_ms": round(float(np.percentile(lat, 99)), 2) if len(lat) else None,
        "max_ms": round(float(lat.max()), 2) if len(lat) else None,
    }


def in_process_baseline(model: str, backend_name: str, threads: int | None, images: list[bytes], seconds: float) -> dict[str, Any]:
    """The same work without HTTP: one image per predict call, with and without decoding."""
    backend = load_backend(backend_name, resolve_model(model), "cpu", threads)
    arrays = [load_image(b).array for b in images]
    for a in arrays[:20]:
        backend.predict(a[None])
    out: dict[str, Any] = {}
    for label, decode in (("predict_only", False), ("decode_and_predict", True)):
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            i = n % len(images)
            x = load_image(images[i]).array if decode else arrays[i]
            backend.predict(x[None])  # type: ignore[index]
            n += 1
        out[label + "_per_s"] = round(n / (time.perf_counter() - t0), 1)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="model name/dir/file [default: the default shipped model]")
    ap.add_argument("--backend", default="onnx-int8")
    ap.add_argument("--threads", type=int, default=None, help="backend threads in the server")
    ap.add_argument("--clients", default="1,8", help="comma-separated concurrent client counts")
    ap.add_argument("--requests", type=int, default=1000, help="most measured requests per configuration")
    ap.add_argument("--duration", type=float, default=15.0, help="most seconds per configuration")
    ap.add_argument("--repeat", type=int, default=3, help="interleaved repeats of every configuration")
    ap.add_argument("--images", type=int, default=256, help="distinct test JPEGs to cycle through")
    ap.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = ap.parse_args()

    manifest = resolve_model(args.model)
    model = str(manifest.directory) if args.model is None else args.model
    images = test_jpegs(args.images)
    clients = [int(c) for c in args.clients.split(",")]
    env = environment()
    print(f"# {manifest.name} ({manifest.arch}) on {args.backend}; {env['cpu']['model']}, "
          f"{env['cpu']['usable_cores']} usable cores; load average {os.getloadavg()[0]:.2f}", file=sys.stderr)

    baseline = in_process_baseline(model, args.backend, args.threads, images, seconds=min(5.0, args.duration))
    configs = (("batched", 64), ("unbatched", 1))
    servers = {name: Server(model, args.backend, args.threads, mb) for name, mb in configs}
    parts: dict[tuple[str, int], list[dict[str, Any]]] = {}
    calls: dict[tuple[str, int], list[int]] = {}
    try:
        for rep in range(args.repeat):  # interleaved, so drifting background load hits every configuration alike
            for name, _ in configs:
                for c in clients:
                    before = servers[name].health()["batcher"]
                    part = load(servers[name].port, images, c, args.requests, args.duration)
                    after = servers[name].health()["batcher"]
                    parts.setdefault((name, c), []).append(part)
                    calls.setdefault((name, c), []).extend([after["batches"] - before["batches"], after["images"] - before["images"]])
                    print(f"[{rep + 1}/{args.repeat}] {name:9s} clients={c}: {len(part['latencies']) / part['seconds']:.1f} req/s"
                          f"{', errors: ' + part['errors'][0] if part['errors'] else ''}", file=sys.stderr)
    finally:
        for server in servers.values():
            server.stop()
    runs: list[dict[str, Any]] = []
    for name, max_batch in configs:
        for c in clients:
            r = summarize(parts[(name, c)])
            batches, imgs = sum(calls[(name, c)][0::2]), sum(calls[(name, c)][1::2])
            r.update(config=name, max_batch=max_batch, clients=c, backend_calls=batches,
                     mean_batch=round(imgs / batches, 2) if batches else None)
            runs.append(r)

    doc = {"model": manifest.name, "arch": manifest.arch, "backend": args.backend, "threads": args.threads,
           "limits": {"requests": args.requests, "duration_s": args.duration, "repeat": args.repeat},
           "in_process": baseline, "runs": runs, "load_average_1m": os.getloadavg()[0],
           "environment": env, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    if args.out:
        args.out.write_text(json.dumps(doc, indent=2) + "\n")

    print("| server | clients | requests | req/s | p50 ms | p99 ms | mean batch | vs in-process predict |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in runs:
        ratio = r["requests_per_s"] / baseline["predict_only_per_s"] if baseline["predict_only_per_s"] else 0
        print(f"| {r['config']} (max-batch {r['max_batch']}) | {r['clients']} | {r['requests']} | {r['requests_per_s']} | "
              f"{r['p50_ms']} | {r['p99_ms']} | {r['mean_batch']} | {ratio:.2f}x |")
    print(f"\nIn-process, one image per call: predict {baseline['predict_only_per_s']}/s, "
          f"decode+predict {baseline['decode_and_predict_per_s']}/s.")
    batched = {r["clients"]: r for r in runs if r["config"] == "batched"}
    unbatched = {r["clients"]: r for r in runs if r["config"] == "unbatched"}
    for c in clients:
        if c in batched and c in unbatched and unbatched[c]["requests_per_s"]:
            print(f"Micro-batching at {c} client(s): {batched[c]['requests_per_s'] / unbatched[c]['requests_per_s']:.2f}x "
                  f"the requests/s of --max-batch 1.")


if __name__ == "__main__":
    main()
