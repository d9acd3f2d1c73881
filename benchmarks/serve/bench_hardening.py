"""`cifarbench serve` under hostile clients: the targets of issue 13, measured on the real CLI server.

Three parts, each against a fresh `python -m cifarbench serve` on 127.0.0.1 (loopback only):

* ``attack``: 500 idle connections plus 50 clients trickling request bodies, all held open for the
  whole probe (re-opened as soon as the server's head/body timeouts close them, as an attacker
  would). 100 probes spread over 30 s (past the 10 s head and 30 s request timeouts), each a new
  connection for ``GET /health`` then a new one for a 32x32 JPEG
  classify: p50/p99/max. Throughput (8 keep-alive clients, 32x32 JPEGs) before and after the
  attack in the same run; the target is p99 <= 1 s and the after/before ratio ~1.
* ``bigpng``: six concurrent uploads of a 49 MP (7000x7000) RGBA PNG (< 1 MB on the wire):
  server peak RSS (VmHWM) and idle RSS 2 s after the burst. Targets: < 1 GB and < 300 MB.
* ``soak``: ``--soak`` seconds (<= 600) of a mix of good, corrupt, huge, slow and malformed
  requests from 4 clients: no 5xx except by-design 503s, RSS flat after warm-up (the first 20 %).

    python benchmarks/serve/bench_hardening.py --model flagship --backend onnx-int8 --soak 180 \\
        --out benchmarks/serve/results-hardening.json  # about 6 min, on a quiet CPU
    python benchmarks/serve/bench_hardening.py --idle 20 --trickle 5 --probes 10 --side 1500 --soak 10  # smoke
"""

from __future__ import annotations

import argparse
import http.client
import io
import json
import os
import random
import selectors
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

import numpy as np
from PIL import Image

from cifarbench.sysinfo import environment

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_serve import free_port, load, summarize, test_jpegs  # noqa: E402


class Server:
    """The CLI server in a subprocess; RSS read from /proc."""

    def __init__(self, model: str | None, backend: str, extra: list[str]) -> None:
        self.port = free_port()
        cmd = [sys.executable, "-m", "cifarbench", "serve", "--backend", backend, "--port", str(self.port),
               "--log-level", "critical", *extra] + (["--model", model] if model else [])
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 180
        while True:
            if self.proc.poll() is not None:
                raise SystemExit(f"server exited: {self.proc.stderr.read().decode(errors='replace')[-2000:]}")  # type: ignore[union-attr]
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=2).read()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise SystemExit("server did not start within 180 s")
                time.sleep(0.2)

    def status_mb(self, key: str = "VmRSS") -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def request(port: int, method: str, path: str, body: bytes | None = None, ctype: str | None = None,
            timeout: float = 60.0) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers={"Content-Type": ctype} if ctype else {})
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


def pct(values: list[float], q: float) -> float:
    return round(float(np.percentile(values, q)), 1) if values else float("nan")


# ---------------------------------------------------------------------- attack
class Attackers:
    """``idle`` silent connections and ``trickle`` slow bodies, re-opened whenever the server drops one."""

    BODY_HEAD = (b"POST /v1/classify HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\n"
                 b"Content-Length: 1000000\r\n\r\n")

    def __init__(self, port: int, idle: int, trickle: int, interval: float = 0.5) -> None:
        self.port, self.interval = port, interval
        self.sel = selectors.DefaultSelector()
        self.kinds = ["idle"] * idle + ["trickle"] * trickle
        self.reopened = {"idle": 0, "trickle": 0}
        self.answers: dict[str, int] = {}
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _open(self, kind: str) -> None:
        s = socket.create_connection(("127.0.0.1", self.port))
        if kind == "trickle":
            s.sendall(self.BODY_HEAD)
        s.setblocking(False)
        self.sel.register(s, selectors.EVENT_READ, kind)

    def start(self) -> None:
        for kind in self.kinds:
            self._open(kind)
        self.thread.start()

    def _run(self) -> None:
        last = time.monotonic()
        while not self.stop.is_set():
            for key, _ in self.sel.select(timeout=0.05):
                s, kind = key.fileobj, key.data
                try:
                    data = s.recv(65536)  # type: ignore[union-attr]
                except OSError:
                    data = b""
                if data.startswith(b"HTTP/1.1 "):
                    code = data[9:12].decode()
                    self.answers[code] = self.answers.get(code, 0) + 1
                self.sel.unregister(s)
                s.close()  # type: ignore[union-attr]
                self.reopened[kind] += 1
                self._open(kind)
            if time.monotonic() - last >= self.interval:
                last = time.monotonic()
                for key in list(self.sel.get_map().values()):
                    if key.data == "trickle":
                        try:
                            key.fileobj.send(b"\xff")  # type: ignore[union-attr]
                        except OSError:
                            pass

    def close(self) -> None:
        self.stop.set()
        self.thread.join(10)
        for key in list(self.sel.get_map().values()):
            key.fileobj.close()  # type: ignore[union-attr]


def probe(port: int, jpeg: bytes, n: int, seconds: float) -> dict[str, Any]:
    """``n`` probe pairs spread over at least ``seconds`` (so the server's timeouts fire meanwhile)."""
    health, classify, failures = [], [], []
    t_start = time.monotonic()
    for i in range(n):
        time.sleep(max(0.0, t_start + i * seconds / n - time.monotonic()))
        for path, body, out in (("/health", None, health), ("/v1/classify", jpeg, classify)):
            t0 = time.perf_counter()
            try:
                status, data = request(port, "POST" if body else "GET", path, body, "image/jpeg" if body else None, 10)
            except OSError as exc:
                status, data = 0, repr(exc).encode()
            out.append((time.perf_counter() - t0) * 1000)
            if status != 200:
                failures.append(f"{path}: {status} {data[:120]!r}")
    both = health + classify
    return {"probes": n, "failures": len(failures), "first_failure": failures[0] if failures else None,
            "health_ms": {"p50": pct(health, 50), "p99": pct(health, 99), "max": round(max(health), 1)},
            "classify_ms": {"p50": pct(classify, 50), "p99": pct(classify, 99), "max": round(max(classify), 1)},
            "all_p99_ms": pct(both, 99)}


def part_attack(args: argparse.Namespace, jpegs: list[bytes]) -> dict[str, Any]:
    server = Server(args.model, args.backend, [])
    try:
        before = summarize([load(server.port, jpegs, 8, 10**9, args.load_seconds)])
        attackers = Attackers(server.port, args.idle, args.trickle)
        attackers.start()
        time.sleep(1.0)
        open_fds = len(os.listdir(f"/proc/{server.proc.pid}/fd"))
        result = probe(server.port, jpegs[0], args.probes, args.attack_seconds)
        attackers.close()
        time.sleep(1.0)
        after = summarize([load(server.port, jpegs, 8, 10**9, args.load_seconds)])
    finally:
        server.stop()
    result.update(idle=args.idle, trickle=args.trickle, server_fds_during_attack=open_fds,
                  reopened=attackers.reopened, attacker_answers=attackers.answers,
                  throughput_before_rps=before["requests_per_s"], throughput_after_rps=after["requests_per_s"],
                  after_over_before=round(after["requests_per_s"] / before["requests_per_s"], 3)
                  if before["requests_per_s"] else None, load_errors=before["errors"] + after["errors"])
    return result


# ---------------------------------------------------------------------- big PNG
def big_png(side: int) -> bytes:
    """A half-transparent RGBA PNG of ``side`` x ``side``: the issue's 190 KB, 7000x7000 kind."""
    buf = io.BytesIO()
    Image.new("RGBA", (side, side), (200, 30, 40, 128)).save(buf, "PNG", compress_level=9)
    return buf.getvalue()


def part_bigpng(args: argparse.Namespace) -> dict[str, Any]:
    png = big_png(args.side)
    server = Server(args.model, args.backend, ["--max-upload-mb", str(max(10, len(png) / 2**20 + 1))])
    try:
        request(server.port, "POST", "/v1/classify", test_jpegs(1)[0], "image/jpeg")  # warm-up
        base = server.status_mb()
        with ThreadPoolExecutor(args.uploads) as pool:
            t0 = time.perf_counter()
            answers = list(pool.map(lambda _: request(server.port, "POST", "/v1/classify", png, "image/png"),
                                    range(args.uploads)))
            seconds = time.perf_counter() - t0
        peak = server.status_mb("VmHWM")
        time.sleep(2.0)
        idle = server.status_mb()
    finally:
        server.stop()
    ok = sum(1 for s, b in answers if s == 200 and json.loads(b)["results"][0]["ok"])
    return {"side": args.side, "megapixels": round(args.side ** 2 / 1e6, 1), "png_bytes": len(png),
            "uploads": args.uploads, "ok": ok, "statuses": sorted(s for s, _ in answers), "seconds": round(seconds, 2),
            "rss_before_mb": round(base, 1), "peak_rss_mb": round(peak, 1), "idle_rss_after_mb": round(idle, 1)}


# ---------------------------------------------------------------------- soak
def soak_kinds(port: int, jpegs: list[bytes], png: bytes) -> dict[str, Callable[[], int]]:
    good = lambda: request(port, "POST", "/v1/classify", random.choice(jpegs), "image/jpeg")[0]  # noqa: E731
    corrupt = lambda: request(port, "POST", "/v1/classify", random.choice(jpegs)[:100], "image/jpeg")[0]  # noqa: E731
    huge = lambda: request(port, "POST", "/v1/classify", png, "image/png")[0]  # noqa: E731

    def slow() -> int:
        body = random.choice(jpegs)
        with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
            s.sendall(b"POST /v1/classify HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\nConnection: close\r\n"
                      b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n")
            for i in range(0, len(body), max(1, len(body) // 10)):
                s.sendall(body[i:i + max(1, len(body) // 10)])
                time.sleep(0.1)
            return _status(s)

    def malformed() -> int:
        kind = random.randrange(4)
        if kind == 0:
            return _raw(port, b"GARBAGE / HTTP/9\r\n\r\n")
        if kind == 1:
            return _raw(port, b"GET /health HTTP/1.1\r\nHost: x\r\nX: " + b"a" * 100_000 + b"\r\n\r\n")
        if kind == 2:
            body = b"--b\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.jpg\"\r\n\r\n" + jpegs[0][:50]
            return request(port, "POST", "/v1/classify", body, "multipart/form-data; boundary=b")[0]
        return request(port, "POST", "/v1/classify", b"{}", "application/json")[0]

    return {"good": good, "corrupt": corrupt, "huge": huge, "slow": slow, "malformed": malformed}


def _status(s: socket.socket) -> int:
    data = b""
    while b"\r\n" not in data:
        chunk = s.recv(4096)
        if not chunk:
            return 0
        data += chunk
    return int(data[9:12])


def _raw(port: int, data: bytes) -> int:
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        try:
            s.sendall(data)
        except OSError:
            pass
        try:
            return _status(s)
        except OSError:
            return 0


def part_soak(args: argparse.Namespace, jpegs: list[bytes]) -> dict[str, Any]:
    weights = {"good": 70, "corrupt": 10, "huge": 1, "slow": 5, "malformed": 14}
    png = big_png(args.side)
    server = Server(args.model, args.backend, [])
    counts: dict[str, dict[int, int]] = {k: {} for k in weights}
    unexpected: list[str] = []
    lock = threading.Lock()
    rss: list[tuple[float, float]] = []
    t_end = time.monotonic() + args.soak
    try:
        kinds = soak_kinds(server.port, jpegs, png)

        def client(seed: int) -> None:
            rng = random.Random(seed)
            while time.monotonic() < t_end:
                kind = rng.choices(list(weights), list(weights.values()))[0]
                try:
                    status = kinds[kind]()
                except OSError as exc:
                    status = 0
                    with lock:
                        unexpected.append(f"{kind}: {exc!r}")
                with lock:
                    counts[kind][status] = counts[kind].get(status, 0) + 1
                    if status >= 500 and status != 503 or (kind == "good" and status not in (200, 503)):
                        unexpected.append(f"{kind}: HTTP {status}")

        threads = [threading.Thread(target=client, args=(i,)) for i in range(4)]
        t0 = time.monotonic()
        for t in threads:
            t.start()
        while any(t.is_alive() for t in threads):
            rss.append((time.monotonic() - t0, server.status_mb()))
            time.sleep(1.0)
        for t in threads:
            t.join()
        time.sleep(2.0)
        idle = server.status_mb()
        peak = server.status_mb("VmHWM")
    finally:
        server.stop()
    warm = [m for t, m in rss if t >= 0.2 * args.soak]
    slope = float(np.polyfit([t for t, _ in rss if t >= 0.2 * args.soak], warm, 1)[0] * 60) if len(warm) >= 3 else None
    return {"seconds": args.soak, "weights": weights, "statuses": counts,
            "requests": sum(sum(c.values()) for c in counts.values()), "unexpected": len(unexpected),
            "first_unexpected": unexpected[:5], "rss_after_warmup_mb": round(warm[0], 1) if warm else None,
            "rss_max_after_warmup_mb": round(max(warm), 1) if warm else None,
            "rss_slope_mb_per_min": round(slope, 2) if slope is not None else None,
            "idle_rss_end_mb": round(idle, 1), "peak_rss_mb": round(peak, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="model name/dir/file [default: the default shipped model]")
    ap.add_argument("--backend", default="onnx-int8")
    ap.add_argument("--parts", default="attack,bigpng,soak")
    ap.add_argument("--idle", type=int, default=500)
    ap.add_argument("--trickle", type=int, default=50)
    ap.add_argument("--probes", type=int, default=100)
    ap.add_argument("--attack-seconds", type=float, default=30.0,
                    help="spread the probes over this long: longer than --header-timeout and --timeout")
    ap.add_argument("--load-seconds", type=float, default=10.0, help="throughput measurement before/after the attack")
    ap.add_argument("--side", type=int, default=7000, help="big PNG side (7000: 49 MP)")
    ap.add_argument("--uploads", type=int, default=6)
    ap.add_argument("--soak", type=float, default=180.0, help="soak seconds (at most 600)")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    args.soak = min(args.soak, 600.0)
    env = environment()
    print(f"# {env['cpu']['model']}, {env['cpu']['usable_cores']} usable cores; load average "
          f"{os.getloadavg()[0]:.2f}", file=sys.stderr)
    jpegs = test_jpegs(64)
    doc: dict[str, Any] = {"model": args.model or "default", "backend": args.backend, "environment": env,
                           "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    for part in args.parts.split(","):
        t0 = time.monotonic()
        doc[part] = {"attack": lambda: part_attack(args, jpegs), "bigpng": lambda: part_bigpng(args),
                     "soak": lambda: part_soak(args, jpegs)}[part]()
        print(f"## {part} ({time.monotonic() - t0:.0f} s)\n{json.dumps(doc[part], indent=1)}", file=sys.stderr)
    doc["load_average_1m_end"] = os.getloadavg()[0]
    if args.out:
        args.out.write_text(json.dumps(doc, indent=2) + "\n")


if __name__ == "__main__":
    main()
