"""Hostile image files through ``classify`` and ``serve`` (issue 25): peak memory of the process tree, time, latency.

The corpus is built in code (tests/hostile.py: no downloads): a 148-byte BLP2 that claims 1 x 33.5 MP
RGBA, a BLP1 whose Python decoder loops over 1 MB of indices for a 1x1 claim, and TGA (RLE), PCX,
SGI, DDS and GIF headers that claim 8192x4096 with almost no data.

* ``corpus``: for each file, 40 copies through ``classify --workers W`` (W = 1 and 4: the thread
  pool), and 2,000 copies of the BLP claim (the process pool); the peak RSS of the whole process
  tree (sampled every 10 ms from /proc) and the wall time. Target: < 500 MB with ``--workers 4``.
* ``serve``: ``serve`` with the shipped model; 8 clients each upload a request of 24 BLP claims + 1
  spinning BLP, 3 times, while one client sends plain 32x32 PNGs back to back: that client's
  p50/p99/max, and the server's peak RSS. Target: p99 < 1 s.

``--baseline SRC`` runs everything a second time with the cifarbench package found in SRC (e.g. a
``git archive`` of the commit before issue 25) in the same run, for the ratio.

    python benchmarks/reliability/bench_hostile.py --out benchmarks/reliability/results-hostile.json \\
        --baseline /tmp/base   # git archive 82e97f0 cifarbench | tar -x -C /tmp/base
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "benchmarks" / "serve"))
from hostile import CORPUS, blp1_spin, blp2_claim, peak_tree_rss  # noqa: E402

MODEL = ["--model", "baseline-cnn", "--backend", "onnx-int8"]


def _env(src: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(src)}


def corpus_run(src: Path, tmp: Path, name: str, data: bytes, copies: int, workers: int) -> dict[str, Any]:
    d = tmp / f"{name}-{copies}"
    if not d.exists():
        d.mkdir()
        for i in range(copies):
            (d / f"f{i:05}.img").write_bytes(data)
    t0 = time.monotonic()
    p = subprocess.Popen([sys.executable, "-m", "cifarbench", "classify", str(d), "--include", "*.img", *MODEL,
                          "--workers", str(workers), "-q", "-o", str(tmp / "out.csv")], env=_env(src), cwd=tmp,
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    peak = peak_tree_rss(p)
    err = p.communicate()[1]
    rows = (tmp / "out.csv").read_text(errors="replace").splitlines()[1:] if (tmp / "out.csv").exists() else []
    errors = sorted({r.rsplit(",", 1)[-1][:70] for r in rows})
    return {"file": name, "bytes": len(data), "copies": copies, "workers": workers, "exit": p.returncode,
            "peak_tree_mb": round(peak / 1e6), "seconds": round(time.monotonic() - t0, 1), "errors": errors[:3],
            "stderr": err.decode(errors="replace")[-200:] if p.returncode not in (0, 3, 4) else ""}


def part_corpus(src: Path, tmp: Path, big: bool) -> list[dict[str, Any]]:
    out = []
    for name, build in CORPUS.items():
        data = build()
        for workers in (1, 4):
            r = corpus_run(src, tmp, name, data, 40, workers)
            print(json.dumps(r), flush=True)
            out.append(r)
    if big:
        r = corpus_run(src, tmp, "blp2-claim-1x33.5MP", blp2_claim(), 2000, 4)
        print(json.dumps(r), flush=True)
        out.append(r)
    return out


def _multipart(parts: list[bytes]) -> tuple[bytes, str]:
    b = uuid.uuid4().hex
    body = b"".join(f"--{b}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"x.blp\"\r\n"
                    f"Content-Type: application/octet-stream\r\n\r\n".encode() + p + b"\r\n" for p in parts)
    return body + f"--{b}--\r\n".encode(), f"multipart/form-data; boundary={b}"


def _post(port: int, body: bytes, ctype: str, timeout: float = 120) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("POST", "/v1/classify", body=body, headers={"Content-Type": ctype})
        r = conn.getresponse()
        r.read()
        return r.status
    finally:
        conn.close()


def part_serve(src: Path, tmp: Path) -> dict[str, Any]:
    import io

    from PIL import Image

    from bench_hardening import Server  # noqa: E402  (the CLI server in a subprocess, from benchmarks/serve)

    buf = io.BytesIO()
    Image.new("RGB", (32, 32), (120, 40, 90)).save(buf, "PNG")
    png = buf.getvalue()
    hostile, ctype = _multipart([blp2_claim()] * 24 + [blp1_spin(1_000_000)])
    old, here = os.environ.get("PYTHONPATH"), os.getcwd()
    os.environ["PYTHONPATH"] = str(src)
    os.chdir(tmp)  # `python -m` puts the working folder first on sys.path: never this checkout's for a baseline
    try:
        server = Server("baseline-cnn", "onnx-int8", [])
    finally:
        os.chdir(here)
        if old is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = old
    try:
        for _ in range(5):
            _post(server.port, png, "image/png")
        quiet = []
        for _ in range(40):
            t = time.perf_counter()
            _post(server.port, png, "image/png")
            quiet.append(time.perf_counter() - t)
        statuses: list[int] = []
        peak = [0.0]
        stop = threading.Event()

        def watch() -> None:
            while not stop.is_set():
                peak[0] = max(peak[0], peak_mb(server.proc.pid))
                time.sleep(0.01)

        def attack() -> None:
            for _ in range(3):
                try:
                    statuses.append(_post(server.port, hostile, ctype))
                except OSError as exc:
                    statuses.append(-1)
                    print("attack:", exc, file=sys.stderr)

        w = threading.Thread(target=watch, daemon=True)
        w.start()
        lat: list[float] = []
        bad: list[int] = []
        t0 = time.monotonic()
        with ThreadPoolExecutor(8) as ex:
            futs = [ex.submit(attack) for _ in range(8)]
            while not all(f.done() for f in futs):
                t = time.perf_counter()
                s = _post(server.port, png, "image/png")
                lat.append(time.perf_counter() - t)
                if s != 200:
                    bad.append(s)
        stop.set()
        w.join()
        lat.sort()
        q = lambda v, p: v[min(len(v) - 1, int(len(v) * p))]  # noqa: E731
        return {"hostile_requests": len(statuses), "hostile_statuses": {str(s): statuses.count(s) for s in set(statuses)},
                "attack_seconds": round(time.monotonic() - t0, 1), "plain_requests": len(lat),
                "plain_not_200": bad[:10], "plain_p50_ms": round(statistics.median(lat) * 1000),
                "plain_p99_ms": round(q(lat, 0.99) * 1000), "plain_max_ms": round(lat[-1] * 1000),
                "quiet_p50_ms": round(statistics.median(quiet) * 1000), "quiet_max_ms": round(max(quiet) * 1000),
                "server_tree_peak_mb": round(peak[0])}
    finally:
        server.stop()


def peak_mb(pid: int) -> float:
    from hostile import tree_rss

    return tree_rss(pid) / 1e6


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path)
    ap.add_argument("--baseline", type=Path, help="a source tree holding an older cifarbench package")
    ap.add_argument("--only", default="corpus,big,serve")
    args = ap.parse_args()
    parts = args.only.split(",")
    results: dict[str, Any] = {"cpu": _cpu_line()}
    runs = [("this", REPO)] + ([("baseline", args.baseline)] if args.baseline else [])
    with tempfile.TemporaryDirectory(prefix="cifarbench-hostile-") as t:
        for label, src in runs:
            res: dict[str, Any] = {}
            print(f"== {label}: {src}", flush=True)
            if "corpus" in parts:
                res["corpus"] = part_corpus(src, Path(t), big="big" in parts and label == "this")
            if "serve" in parts:
                res["serve"] = part_serve(src, Path(t))
                print(json.dumps(res["serve"]), flush=True)
            results[label] = res
    if args.out:
        args.out.write_text(json.dumps(results, indent=2) + "\n")



def _cpu_line() -> str:
    from cifarbench.sysinfo import cpu_info

    cpu = cpu_info()
    return f"{cpu['model']}, {cpu['cores']} CPUs, flags {' '.join(f for f, on in cpu['flags'].items() if on)}"


if __name__ == "__main__":
    main()
