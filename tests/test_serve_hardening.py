"""cifarbench serve under hostile clients: a real uvicorn server on 127.0.0.1, small scale.

Idle and trickling connections, oversized and malformed heads, full queues and upload
budgets, truncated multipart bodies, forged Host headers and path leaks. Every refusal
must be JSON with the security headers, whatever layer (protocol or app) sends it.
"""

from __future__ import annotations

import http.client
import importlib.util
import json
import os
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any, Iterator

import pytest

from cifarbench.models.manifest import Manifest
from conftest import fake_server_script
from test_serve import FakeBackend, manifest, png  # also skips this module without the serve extra

import uvicorn  # noqa: E402  (after the skip above)

from cifarbench.cli.serve import _bind  # noqa: E402
from cifarbench.serve.app import ServeLimits, create_app  # noqa: E402
from cifarbench.serve.protocol import ConnectionLimits  # noqa: E402
from cifarbench.serve.server import make_config  # noqa: E402


PROTOCOLS = ["httptools", "h11"] if importlib.util.find_spec("httptools") else ["h11"]


# ---------------------------------------------------------------------- a live server
@contextmanager
def live_server(backend: Any = None, limits: ServeLimits | None = None, connection: ConnectionLimits | None = None,
                keep_alive: int = 5, model: Manifest | None = None, protocol: str = "auto") -> Iterator[int]:
    """The app on a real uvicorn server (guarded protocol, as the CLI runs it) in a thread; yields the port."""
    app = create_app(model or manifest(), backend or FakeBackend(), limits=limits)
    sock = _bind("127.0.0.1", 0)
    server = uvicorn.Server(make_config(app, connection, keep_alive, log_level="critical", protocol=protocol,
                                       log_config=None))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "server did not start"
        time.sleep(0.01)
    try:
        yield sock.getsockname()[1]
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


def raw(port: int, data: bytes, timeout: float = 5.0) -> bytes:
    """Send ``data`` on a fresh connection and read until the server closes it."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        return read_to_close(s)


def read_to_close(s: socket.socket) -> bytes:
    out = b""
    while True:
        try:
            chunk = s.recv(65536)
        except ConnectionResetError:
            break
        if not chunk:
            break
        out += chunk
    return out


def parse(response: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = response.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
    return status, headers, body


def request(port: int, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None,
            timeout: float = 60.0) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        r = conn.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        conn.close()


def assert_json_error(status: int, headers: dict[str, str], body: bytes, expected: int) -> dict[str, Any]:
    assert status == expected, (status, body[:200])
    assert headers["content-type"].startswith("application/json")
    assert "default-src 'self'" in headers["content-security-policy"]
    assert headers["x-content-type-options"] == "nosniff"
    doc = json.loads(body)
    assert doc["status"] == expected and doc["error"]
    return doc


def classify_32(port: int) -> tuple[int, float]:
    t = time.perf_counter()
    status, _, body = request(port, "POST", "/v1/classify", png(3), {"Content-Type": "image/png"})
    elapsed = time.perf_counter() - t
    if status == 200:
        assert json.loads(body)["results"][0]["label"] == "cat"
    return status, elapsed


# ---------------------------------------------------------------------- connections
def still_open(s: socket.socket) -> bool:
    """True if the server has neither closed ``s`` nor answered on it."""
    s.setblocking(False)
    try:
        return s.recv(1, socket.MSG_PEEK) != b""  # data waiting: the server answered (then closes)
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        s.setblocking(True)


def wait_for(check: Any, seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.05)


def test_idle_and_trickling_clients_do_not_block_health_or_classify() -> None:
    """The issue's repro, scaled up: 64 silent sockets used to make every request a 503.

    No latency is asserted (that is benchmarks/serve/bench_hardening.py's job); what must hold is that
    every probe is answered 200 while all the idle and trickling connections are still open.
    """
    with live_server(connection=ConnectionLimits(header_timeout_s=60.0)) as port:
        idle = [socket.create_connection(("127.0.0.1", port)) for _ in range(100)]
        heads = [socket.create_connection(("127.0.0.1", port)) for _ in range(10)]
        bodies = [socket.create_connection(("127.0.0.1", port)) for _ in range(10)]
        for s in bodies:
            s.sendall(b"POST /v1/classify HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
                      b"Content-Length: 100000\r\n\r\n")
        for s in heads:
            s.sendall(b"GET /health HTTP/1.1\r\nX-Slow: ")
        try:
            for i in range(10):
                for s in heads + bodies:  # keep trickling between probes
                    s.sendall(b"a" if s in heads else b"\x89")
                status, _, body = request(port, "GET", "/health")
                assert status == 200 and json.loads(body)["status"] == "ok"
                assert classify_32(port)[0] == 200
            assert all(still_open(s) for s in idle + heads + bodies)  # the probes ran while all were held
        finally:
            for s in idle + heads + bodies:
                s.close()
        assert classify_32(port)[0] == 200


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_idle_connection_is_closed_and_slow_head_and_body_get_408(protocol: str) -> None:
    with live_server(limits=ServeLimits(timeout_s=0.5), connection=ConnectionLimits(header_timeout_s=0.5),
                     protocol=protocol) as port:
        t0 = time.monotonic()  # before connecting: the server's deadlines start later than this
        idle = socket.create_connection(("127.0.0.1", port), timeout=30)
        slow_head = socket.create_connection(("127.0.0.1", port), timeout=30)
        slow_head.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")  # never finished
        slow_body = socket.create_connection(("127.0.0.1", port), timeout=30)
        slow_body.sendall(b"POST /v1/classify HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
                          b"Content-Length: 1000\r\n\r\n\x89PNG")  # the rest never comes
        assert read_to_close(idle) == b""
        assert_json_error(*parse(read_to_close(slow_head)), 408)
        doc = assert_json_error(*parse(read_to_close(slow_body)), 408)
        assert "body" in doc["error"] and time.monotonic() - t0 >= 0.5  # never before the deadline
        for s in (idle, slow_head, slow_body):
            s.close()
        assert request(port, "GET", "/health")[0] == 200


def test_keep_alive_connection_gets_a_fresh_head_deadline_per_request() -> None:
    with live_server(connection=ConnectionLimits(header_timeout_s=3.0), keep_alive=60) as port:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        for _ in range(3):  # 3.6 s in all on one connection, each head well within its own 3 s
            conn.request("GET", "/health")
            r = conn.getresponse()
            assert r.status == 200
            r.read()
            time.sleep(1.2)
        conn.close()


def test_connection_limit_answers_json_503_and_recovers() -> None:
    with live_server(connection=ConnectionLimits(max_connections=4, header_timeout_s=60)) as port:
        held = [socket.create_connection(("127.0.0.1", port)) for _ in range(4)]
        wait_for(lambda: all(still_open(s) for s in held))
        status, headers, body = parse(raw(port, b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n", timeout=30))
        assert_json_error(status, headers, body, 503)
        assert headers["retry-after"] == "1"
        for s in held:
            s.close()

        def healthy() -> bool:
            return request(port, "GET", "/health")[0] == 200  # 503 until the server has seen the closes

        wait_for(healthy)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_connections_over_the_limit_are_answered_and_closed_without_a_word_from_them(protocol: str) -> None:
    """Refused sockets must not wait for the client to speak (or for the head timeout): that let them pile up."""
    with live_server(connection=ConnectionLimits(max_connections=2, header_timeout_s=120), protocol=protocol) as port:
        held = [socket.create_connection(("127.0.0.1", port)) for _ in range(2)]
        wait_for(lambda: all(still_open(s) for s in held))
        silent = [socket.create_connection(("127.0.0.1", port), timeout=60) for _ in range(20)]  # never send a byte
        answers = [read_to_close(s) for s in silent]  # a timeout here (OSError) fails the test
        for s in silent:
            s.close()
        for answer in answers:
            status, headers, body = parse(answer)
            assert_json_error(status, headers, body, 503)
            assert headers["retry-after"] == "1"
        assert all(still_open(s) for s in held)  # the connections under the limit are untouched
        status, headers, body = parse(raw(port, b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n", timeout=60))
        assert_json_error(status, headers, body, 503)  # a client that speaks at once still reads its 503
        for s in held:
            s.close()
        wait_for(lambda: request(port, "GET", "/health")[0] == 200)


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("data, expected", [
    (b"GET / HTTP/1.1\r\nHost: x\r\nBad Header Line\r\n\r\n", 400),
    (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 40, 400),  # TLS hello on plain HTTP
    (b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 80_000 + b"\r\n\r\n", 431),
])
def test_protocol_level_refusals_are_json(data: bytes, expected: int, protocol: str) -> None:
    with live_server(protocol=protocol) as port:
        assert_json_error(*parse(raw(port, data)), expected)
        assert request(port, "GET", "/health")[0] == 200


def test_body_sent_with_the_head_is_not_counted_as_head() -> None:
    """A client that writes head and a 100 KB body at once must not look like a 64 KB head."""
    body = png(3, size=(400, 400)) + b"\0" * 100_000  # trailing bytes after IEND: still a valid PNG
    with live_server(connection=ConnectionLimits(max_header_bytes=4096)) as port:
        data = (b"POST /v1/classify HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nConnection: close\r\n"
                b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
        status, _, answer = parse(raw(port, data))
    assert status == 200 and json.loads(answer)["results"][0]["label"] == "cat"


# ---------------------------------------------------------------------- requests
class GatedBackend(FakeBackend):
    """Holds every predict until the test opens the gate: a request's turn lasts exactly as long as needed."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = threading.Event()

    def predict(self, batch: Any) -> Any:
        assert self.gate.wait(60), "gate never opened"
        return super().predict(batch)


def test_full_queue_is_json_503_with_retry_after() -> None:
    backend = GatedBackend()
    with live_server(backend, limits=ServeLimits(max_active=1, max_queue=1)) as port:
        def admission() -> dict[str, int]:
            return json.loads(request(port, "GET", "/health")[2])["admission"]

        def post(_: int) -> tuple[int, dict[str, str], bytes]:
            return request(port, "POST", "/v1/classify", png(1), {"Content-Type": "image/png"}, timeout=60)

        with ThreadPoolExecutor(2) as pool:
            first = pool.submit(post, 0)
            wait_for(lambda: admission()["active"] == 1)  # holds the one slot, stuck in predict
            second = pool.submit(post, 1)
            wait_for(lambda: admission()["waiting"] == 1)  # fills the queue
            refused = [post(i) for i in range(3)]  # answered at once, while the other two wait
            backend.gate.set()
            admitted = [first.result(), second.result()]
        assert [a[0] for a in admitted] == [200, 200]
        for status, headers, body in refused:
            doc = assert_json_error(status, headers, body, 503)
            assert headers["retry-after"] == "1" and "busy" in doc["error"]
        assert admission() == {"active": 0, "waiting": 0, "max_active": 1, "max_queue": 1, "refused": 3}
    assert not backend.overlapped


def test_keep_alive_clients_below_the_limits_never_see_503() -> None:
    """uvicorn's limit_concurrency gave 503s well below its limit under keep-alive load; admission does not."""
    backend = FakeBackend(delay=0.01)
    with live_server(backend, limits=ServeLimits(max_active=2, max_queue=32)) as port:
        def client(i: int) -> list[int]:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
            statuses = []
            for j in range(5):
                conn.request("POST", "/v1/classify", body=png((i + j) % 10), headers={"Content-Type": "image/png"})
                r = conn.getresponse()
                r.read()
                statuses.append(r.status)
            conn.close()
            return statuses

        with ThreadPoolExecutor(24) as pool:
            statuses = [s for one in pool.map(client, range(24)) for s in one]
    assert statuses == [200] * 120


def test_upload_budget_refuses_while_another_upload_holds_it() -> None:
    limits = ServeLimits(max_upload_bytes=25_000, max_buffered_bytes=30_000, timeout_s=60)
    with live_server(limits=limits) as port:
        holder = socket.create_connection(("127.0.0.1", port), timeout=60)
        holder.sendall(b"POST /v1/classify HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
                       b"Content-Length: 24000\r\n\r\n" + b"\x00" * 20_000)
        wait_for(lambda: json.loads(request(port, "GET", "/health")[2])["buffered_bytes"] >= 20_000)
        doc = assert_json_error(*request(port, "POST", "/v1/classify", b"\x01" * 20_000,
                                         {"Content-Type": "image/png"}), 503)
        assert "uploads in progress" in doc["error"]
        holder.close()  # its bytes go back to the budget
        wait_for(lambda: json.loads(request(port, "GET", "/health")[2])["buffered_bytes"] == 0)
        assert classify_32(port)[0] == 200


def test_truncated_multipart_is_a_multipart_error() -> None:
    body = (b"--xyz\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.png\"\r\n"
            b"Content-Type: image/png\r\n\r\n" + png(2)[:40])  # no closing boundary
    with live_server() as port:
        doc = assert_json_error(*request(port, "POST", "/v1/classify", body,
                                         {"Content-Type": "multipart/form-data; boundary=xyz"}), 400)
    assert "multipart" in doc["error"] and "truncated" in doc["error"]


def test_every_error_is_json_with_security_headers() -> None:
    with live_server(FakeBackend(fail=True)) as port:
        assert_json_error(*request(port, "GET", "/nope"), 404)
        assert_json_error(*request(port, "DELETE", "/v1/classify"), 405)
        assert_json_error(*request(port, "POST", "/v1/classify", b"x", {"Content-Type": "text/plain"}), 415)
        assert_json_error(*request(port, "POST", "/v1/classify", b"x" * 20, {"Content-Type": "image/png",
                                                                             "Content-Length": "abc"}), 400)
        doc = assert_json_error(*request(port, "POST", "/v1/classify", png(1), {"Content-Type": "image/png"}), 500)
        assert doc["error"] == "internal error: RuntimeError"


# ---------------------------------------------------------------------- what the server reveals
def test_redirect_does_not_reflect_the_host_header() -> None:
    with live_server() as port:
        status, headers, _ = parse(raw(port, b"GET /static HTTP/1.1\r\nHost: evil.example\r\nConnection: close\r\n\r\n"))
    assert 300 <= status < 400 and headers["location"] == "/static/"


def test_model_info_shows_no_server_paths(tmp_path: Any) -> None:
    secret = str(tmp_path / "datasets" / "cifar10.tar.xz")
    m = Manifest(name="m", arch="fake", metrics={
        "test": {"accuracy": 0.8},
        "parity": {"source": secret, "split": "train", "agreement": 0.99,
                   "not_shipped_reason": "rebuild with `cifarbench convert trained/m --out DIR`"}})
    with live_server(model=m) as port:
        status, _, body = request(port, "GET", "/v1/model")
    doc = json.loads(body)
    assert status == 200 and str(tmp_path) not in body.decode() and "trained/m" not in body.decode()
    assert doc["metrics"] == {"test": {"accuracy": 0.8}, "parity": {"split": "train", "agreement": 0.99}}


def test_connection_limit_is_kept_under_the_open_file_limit() -> None:
    resource = pytest.importorskip("resource")
    from cifarbench.cli.serve import _fd_capped

    n = _fd_capped(10**9)  # raises the soft limit as far as the hard one allows, then fits under it
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert 1 <= n <= soft - 64 or soft == resource.RLIM_INFINITY
    assert _fd_capped(10) == 10


# ---------------------------------------------------------------------- soak (benchmarks/serve/bench_hardening.py, small)
SOAK_SERVER = fake_server_script(
    limits="ServeLimits(max_upload_bytes=1 << 20, max_pixels=5_000_000, timeout_s=600)",  # slow CPUs too
    connection="ConnectionLimits(header_timeout_s=1.0)")
ALLOWED = {200, 400, 408, 413, 415, 422, 431, 503}


def soak_mix(port: int) -> dict[str, Any]:
    """The bench's soak kinds, one function each: good, corrupt, huge, over the pixel limit, slow, malformed."""
    import io

    from PIL import Image

    def image(side: int, mode: str = "RGB", fmt: str = "PNG") -> bytes:
        buf = io.BytesIO()
        Image.new(mode, (side, side), (200, 30, 40, 128)[:len(mode)]).save(buf, fmt, compress_level=1)
        return buf.getvalue()

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    jpeg, huge = image(32, fmt="JPEG"), image(2048, "RGBA")  # 4.2 MP: the server trims its heap after it
    bomb = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 10_000, 10_000, 8, 2, 0, 0, 0)) + chunk(b"IEND", b"")
    post = lambda body, ctype: request(port, "POST", "/v1/classify", body, {"Content-Type": ctype})[0]  # noqa: E731

    def status_of(data: bytes, pause: float = 0.0) -> int:
        """Send ``data`` (in 5 pieces ``pause`` s apart when given), then read the answer until the close."""
        step = max(1, len(data) // 5) if pause else len(data)
        with socket.create_connection(("127.0.0.1", port), timeout=60) as s:
            for i in range(0, len(data), step):
                s.sendall(data[i:i + step])
                time.sleep(pause)
            answer = read_to_close(s)
        return parse(answer)[0] if answer.startswith(b"HTTP/1.1 ") else 0

    head = b"POST /v1/classify HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\nConnection: close\r\n"
    return {
        "good-png": lambda: post(png(3), "image/png"),
        "good-jpeg": lambda: post(jpeg, "image/jpeg"),
        "corrupt": lambda: post(jpeg[:100], "image/jpeg"),
        "huge": lambda: post(huge, "image/png"),
        "over-max-pixels": lambda: post(bomb, "image/png"),
        "slow-body": lambda: status_of(head + b"Content-Length: %d\r\n\r\n" % len(jpeg) + jpeg, pause=0.05),
        "slow-head": lambda: status_of(b"GET /health HTTP/1.1\r\nHost: x\r\n", pause=0.05),  # never ends: 408 at 1 s
        "garbage": lambda: status_of(b"GARBAGE / HTTP/9\r\n\r\n"),
        "big-head": lambda: status_of(b"GET /health HTTP/1.1\r\nHost: x\r\nX: " + b"a" * 80_000 + b"\r\n\r\n"),
        "truncated-multipart": lambda: post(b"--b\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a\"\r\n"
                                            b"\r\n" + jpeg[:50], "multipart/form-data; boundary=b"),
        "wrong-type": lambda: post(b"{}", "application/json"),
        "too-big": lambda: post(b"\0" * (1 << 20) + b"\0", "image/png"),
    }


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="needs /proc to read the server's RSS")
def test_soak_mix_gets_only_allowed_statuses_and_flat_memory(tmp_path: Any) -> None:
    """A few rounds of the soak's mix from 4 clients against the CLI's server process: the target at small scale.

    Nothing is timed: every request must get a status the server documents (no 5xx but 503), and the
    server's RSS at rest after the soak must stay near its RSS at rest after a warm-up round.
    """
    script = tmp_path / "server.py"
    script.write_text(SOAK_SERVER)
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    seen: dict[str, dict[int, int]] = {}
    lock = threading.Lock()
    try:
        port = int(proc.stdout.readline())  # type: ignore[union-attr]
        wait_for(lambda: _answers(port), 120)
        mix = soak_mix(port)
        kinds = list(mix) + ["good-png", "good-jpeg"] * 2  # mostly good traffic, as in the bench

        def client(seed: int, rounds: int) -> None:
            order = kinds[seed:] + kinds[:seed]
            for _ in range(rounds):
                for kind in order:
                    status = mix[kind]()
                    with lock:
                        seen.setdefault(kind, {}).setdefault(status, 0)
                        seen[kind][status] += 1

        def soak(rounds: int) -> None:
            with ThreadPoolExecutor(4) as pool:
                list(pool.map(lambda i: client(i * 4, rounds), range(4)))

        def rss_at_rest() -> int:
            """RSS once it stops moving (3 equal readings 50 ms apart), or after 10 s: a condition, not a fixed sleep."""
            deadline, last, same = time.monotonic() + 10, -1, 0
            while same < 3 and time.monotonic() < deadline:
                now = status_kb(proc.pid, "VmRSS")
                same, last = (same + 1 if now == last else 0), now
                time.sleep(0.05)
            return last

        soak(1)  # thread pools, first decodes, the allocator's arenas
        warm = rss_at_rest()
        soak(2)
        after = rss_at_rest()
        assert _answers(port)
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    statuses = {s for by in seen.values() for s in by}
    assert statuses <= ALLOWED, seen
    assert set(seen["good-png"]) | set(seen["good-jpeg"]) <= {200, 503} and seen["good-png"].get(200), seen
    expected = {"corrupt": 422, "huge": 200, "over-max-pixels": 422, "slow-body": 200, "slow-head": 408,
                "garbage": 400, "big-head": 431, "truncated-multipart": 400, "wrong-type": 415, "too-big": 413}
    for kind, status in expected.items():  # each kind hit what it aims at (a 503 would also be allowed)
        assert set(seen[kind]) <= {status, 503}, (kind, seen[kind])
    assert sum(n for by in seen.values() for n in by.values()) == 3 * 4 * len(kinds)
    assert after - warm < 48 * 1024, f"RSS grew {(after - warm) / 1024:.0f} MB over the soak"
    assert b"Traceback" not in err, err.decode(errors="replace")[-2000:]
    print(f"soak: {dict(sorted(seen.items()))}; RSS at rest {warm / 1024:.0f} -> {after / 1024:.0f} MB")


def _answers(port: int) -> bool:
    try:
        return request(port, "GET", "/health", timeout=5)[0] == 200
    except OSError:
        return False


def status_kb(pid: int, key: str) -> int:
    for line in open(f"/proc/{pid}/status", encoding="ascii"):
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


# ---------------------------------------------------------------------- stderr during a decode's fd-2 capture
CAPTURE_SERVER = """
import logging, sys
import numpy as np
from cifarbench.cli.serve import _bind
from cifarbench.data.cstderr import capture_fd2
from cifarbench.models.manifest import Manifest
from cifarbench.serve import server
from cifarbench.serve.app import create_app

class Backend:
    name = "fake"
    def predict(self, x):
        with capture_fd2() as cap:  # as a TIFF decode on another thread holds fd 2
            logging.getLogger("uvicorn.error").warning("a server log line during a capture")
        with open(sys.argv[1], "w") as fh:
            fh.write(cap.text)
        return np.full((len(x), 10), 0.1, np.float32)

sock = _bind("127.0.0.1", 0)
print(sock.getsockname()[1], flush=True)
server.run(create_app(Manifest(name="m", arch="fake"), Backend()), sock, log_level="warning")
"""


def test_server_log_lines_are_never_captured_by_a_decode(tmp_path: Any) -> None:
    """The fd-2 capture is process-wide: serve's own log must bypass it (cstderr.python_stderr_apart)."""
    script, captured = tmp_path / "server.py", tmp_path / "captured.txt"
    script.write_text(CAPTURE_SERVER)
    proc = subprocess.Popen([sys.executable, str(script), str(captured)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    try:
        port = int(proc.stdout.readline())  # type: ignore[union-attr]
        wait_for(lambda: _answers(port), 120)
        assert request(port, "POST", "/v1/classify", png(3), {"Content-Type": "image/png"})[0] == 200
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    assert captured.read_text() == ""
    assert "a server log line during a capture" in err.decode()


def test_shutting_down_is_a_json_503_with_retry_after() -> None:
    from starlette.testclient import TestClient

    app = create_app(manifest(), FakeBackend())
    with TestClient(app) as client:
        app.state.handlers.batcher.close()  # what lifespan shutdown does while requests still arrive
        r = client.post("/v1/classify", content=png(3), headers={"Content-Type": "image/png"})
    doc = assert_json_error(r.status_code, {k.lower(): v for k, v in r.headers.items()}, r.content, 503)
    assert "shutting down" in doc["error"] and r.headers["retry-after"] == "1"
