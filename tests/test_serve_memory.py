"""Memory of `serve` per upload, measured on a real server process (small scale).

A small PNG that declares many pixels is the cheap way to make a server allocate; the
issue's repro (190 KB, 7000x7000 RGBA) cost 1 GB per request and 1.6 GB idle afterwards.
Here: 9 MP RGBA PNGs (36 MB of pixels each, ~100 KB on the wire), uploaded concurrently.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from PIL import Image

from conftest import fake_server_script

pytest.importorskip("uvicorn")
pytest.importorskip("starlette")

SIDE = 3000  # 9 MP
MIB = 1 << 20

SERVER = fake_server_script(limits="ServeLimits(timeout_s=600)", log_level="critical")  # slow CPUs too


def status_kb(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def big_png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGBA", (SIDE, SIDE), (200, 30, 40, 128)).save(buf, "PNG", compress_level=1)
    return buf.getvalue()


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs /proc to read a process's RSS")
def test_big_png_uploads_have_bounded_peak_and_idle_memory(tmp_path: Path) -> None:
    script = tmp_path / "server.py"
    script.write_text(SERVER)
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        port = int(proc.stdout.readline())  # type: ignore[union-attr]
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(base + "/health", timeout=2).read()
                break
            except OSError:
                assert time.monotonic() < deadline and proc.poll() is None, "server did not start"
                time.sleep(0.1)
        png = big_png()
        assert len(png) < 1 * MIB

        def upload(_: int) -> dict:
            req = urllib.request.Request(base + "/v1/classify", data=png, headers={"Content-Type": "image/png"})
            return json.loads(urllib.request.urlopen(req, timeout=600).read())

        upload(0)  # warm-up: thread pools, first-decode allocations
        idle_before = status_kb(proc.pid, "VmRSS") * 1024
        with ThreadPoolExecutor(3) as pool:
            answers = list(pool.map(upload, range(3)))
        assert all(a["results"][0]["ok"] for a in answers)
        peak = status_kb(proc.pid, "VmHWM") * 1024
        deadline = time.monotonic() + 10  # freed buffers go back as the last responses finish: wait, with a deadline
        while True:
            idle_after = status_kb(proc.pid, "VmRSS") * 1024
            if idle_after - idle_before < 24 * MIB or time.monotonic() > deadline:
                break
            time.sleep(0.05)
    finally:
        proc.terminate()
        proc.wait(10)
    pixels = SIDE * SIDE * 4  # one image's RGBA pixels: 36 MB
    # The whole image is in memory once per decode (no PNG decoder decodes reduced), as many decodes at
    # a time as the decode pool is wide (the cores, at least 2; 3 uploads here), and everything else is
    # a few MB. Before the fixes one such decode alone peaked at ~5x its pixels.
    at_once = min(3, max(2, len(os.sched_getaffinity(0))))
    assert peak - idle_before < at_once * pixels + 48 * MIB, (peak - idle_before) / MIB
    assert idle_after - idle_before < 24 * MIB, (idle_after - idle_before) / MIB
