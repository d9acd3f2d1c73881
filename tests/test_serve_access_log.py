"""`serve --access-log`: one line per request (time, status, images, ms) from a real server on 127.0.0.1; off by default."""

from __future__ import annotations

import io
import re
import time
import urllib.error
import urllib.request
import uuid

import numpy as np
import pytest
from PIL import Image

from conftest import REPO

pytest.importorskip("uvicorn")
MODEL = REPO / "trained" / "baseline-cnn"
LINE = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z) (\d{3}) (\S+) (\S+) images=(\S+) (\d+\.\d) ms$")


@pytest.fixture
def server_factory(serve_process):  # type: ignore[no-untyped-def]
    return lambda *extra: serve_process(MODEL, "onnx-int8", *extra)


def _png(seed: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def _multipart(files: list[bytes]) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    parts = b"".join(
        f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{i}.png\"\r\n"
        f"Content-Type: image/png\r\n\r\n".encode() + f + b"\r\n" for i, f in enumerate(files))
    return parts + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def _request(url: str, data: bytes | None = None, ctype: str | None = None) -> tuple[int, float]:
    req = urllib.request.Request(url, data=data, headers={"Content-Type": ctype} if ctype else {})
    t0 = time.perf_counter()
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            r.read()
            status = r.status
    except urllib.error.HTTPError as e:
        e.read()
        status = e.code
    return status, 1000 * (time.perf_counter() - t0)


def test_access_log_writes_one_line_per_request(server_factory) -> None:  # type: ignore[no-untyped-def]
    srv = server_factory("--access-log")
    before = time.time()
    body, ctype = _multipart([_png(1), _png(2), _png(3)])
    status, client_ms = _request(srv.url + "v1/classify", body, ctype)
    assert status == 200
    assert _request(srv.url + "health")[0] == 200
    assert _request(srv.url + "nowhere")[0] == 404
    bad = _request(srv.url + "v1/classify", b"not an image", "image/png")[0]
    after = time.time()
    got = [LINE.match(srv.wait_for(lambda ln, p=p: bool(LINE.match(ln)) and f" {p} " in ln, 30))
           for p in ("/v1/classify", "/health", "/nowhere")]
    srv.wait_for(lambda ln: bool(LINE.match(ln)) and f"{bad} POST /v1/classify images=1 " in ln, 30)
    classify, health, missing = got
    assert classify and classify.group(2, 3, 5) == ("200", "POST", "3")
    assert float(classify.group(6)) <= client_ms  # the server's time is inside the client's round trip
    stamp = time.mktime(time.strptime(classify.group(1)[:19], "%Y-%m-%dT%H:%M:%S")) - time.timezone
    assert before - 1 <= stamp <= after + 1  # UTC, when the request came
    assert health and health.group(2, 3, 5) == ("200", "GET", "-")  # no images in a health check
    assert missing and missing.group(2) == "404"
    assert len([ln for ln in srv.lines if LINE.match(ln)]) == 4  # one per request, no more


def test_no_request_lines_by_default(server_factory) -> None:  # type: ignore[no-untyped-def]
    srv = server_factory()
    body, ctype = _multipart([_png(4)])
    assert _request(srv.url + "v1/classify", body, ctype)[0] == 200
    assert _request(srv.url + "health")[0] == 200
    srv.stop()
    assert not [ln for ln in srv.lines if LINE.match(ln) or "/v1/classify" in ln or "/health" in ln], srv.lines
