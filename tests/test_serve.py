"""cifarbench.serve: the micro-batcher, the HTTP API (Starlette test client) and the CLI's refusals."""

from __future__ import annotations

import importlib.util
import io
import socket
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest
from PIL import Image

from cifarbench import CIFAR10_CLASSES
from cifarbench.errors import ExitStatus
from cifarbench.models.manifest import Manifest
from cifarbench.serve.batching import BatcherClosed, MicroBatcher
from conftest import class_pattern, run_cli

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")
if importlib.util.find_spec("python_multipart") is None and importlib.util.find_spec("multipart") is None:
    pytest.skip("python-multipart is not installed (pip install 'cifarbench[serve]')", allow_module_level=True)
from starlette.testclient import TestClient  # noqa: E402

from cifarbench.serve.app import ServeLimits, create_app  # noqa: E402


# ---------------------------------------------------------------------- helpers
class FakeBackend:
    """Deterministic and deliberately thread-hostile: class = red channel of pixel (0, 0) mod 10.

    ``predict`` fails the test if two threads ever enter it at once, which is what the
    batcher must prevent.
    """

    name = "fake"

    def __init__(self, delay: float = 0.0, fail: bool = False) -> None:
        self.delay, self.fail = delay, fail
        self.inside = threading.Lock()
        self.calls: list[int] = []
        self.overlapped = False

    def predict(self, batch: np.ndarray) -> np.ndarray:
        if not self.inside.acquire(blocking=False):
            self.overlapped = True
            raise AssertionError("predict entered concurrently")
        try:
            assert batch.dtype == np.uint8 and batch.shape[1:] == (32, 32, 3)
            self.calls.append(len(batch))
            if self.delay:
                time.sleep(self.delay)
            if self.fail:
                raise RuntimeError("backend exploded")
            out = np.full((len(batch), 10), 0.01, np.float32)
            out[np.arange(len(batch)), batch[:, 0, 0, 0].astype(int) % 10] = 0.91
            return out
        finally:
            self.inside.release()

    def describe(self) -> dict[str, Any]:
        return {"runtime": "fake", "threads": 1}


def png(red: int, size: tuple[int, int] = (32, 32)) -> bytes:
    """A flat image whose red channel selects the fake backend's class."""
    buf = io.BytesIO()
    Image.new("RGB", size, (red, 40, 90)).save(buf, "PNG")
    return buf.getvalue()


def manifest() -> Manifest:
    return Manifest(name="fake-model", arch="fake", metrics={"test": {"accuracy": 0.5, "confusion": [[1, 2], [3, 4]]}})


@pytest.fixture()
def make_client() -> Iterator[Any]:
    clients: list[TestClient] = []

    def make(backend: FakeBackend | None = None, raise_server_exceptions: bool = True, **kwargs: Any) -> TestClient:
        app = create_app(manifest(), backend or FakeBackend(), **kwargs)
        client = TestClient(app, raise_server_exceptions=raise_server_exceptions)
        client.__enter__()  # runs the lifespan: the batcher is closed on exit
        clients.append(client)
        return client

    yield make
    for c in clients:
        c.__exit__(None, None, None)


# ---------------------------------------------------------------------- batcher
def test_batcher_splits_large_requests_and_keeps_order() -> None:
    backend = FakeBackend()
    b = MicroBatcher(backend.predict, max_batch=4)
    x = np.zeros((10, 32, 32, 3), np.uint8)
    x[:, 0, 0, 0] = np.arange(10)
    try:
        probs = b.predict(x, timeout=10)
    finally:
        b.close()
    assert probs.argmax(1).tolist() == list(range(10))
    assert max(backend.calls) <= 4 and sum(backend.calls) == 10


def test_batcher_merges_concurrent_requests_without_concurrent_predict() -> None:
    backend = FakeBackend(delay=0.02)
    b = MicroBatcher(backend.predict, max_batch=8)

    def one(i: int) -> int:
        x = np.zeros((1 + i % 3, 32, 32, 3), np.uint8)
        x[:, 0, 0, 0] = i
        p = b.predict(x, timeout=20)
        assert p.shape == (len(x), 10)
        return int(p.argmax(1)[0])

    try:
        with ThreadPoolExecutor(16) as pool:
            answers = list(pool.map(one, range(48)))
    finally:
        b.close()
    assert answers == [i % 10 for i in range(48)]
    assert not backend.overlapped
    assert max(backend.calls) <= 8
    assert b.stats.batches < b.stats.requests == 48  # requests were merged
    assert b.stats.images == sum(1 + i % 3 for i in range(48))


def test_batcher_error_reaches_every_waiter_and_close_refuses_new_work() -> None:
    b = MicroBatcher(FakeBackend(fail=True).predict, max_batch=4)
    futs = [b.submit(np.zeros((n, 32, 32, 3), np.uint8)) for n in (1, 2, 6)]
    for f in futs:
        with pytest.raises(RuntimeError, match="exploded"):
            f.result(10)
    b.close()
    with pytest.raises(BatcherClosed):
        b.submit(np.zeros((1, 32, 32, 3), np.uint8))
    assert b.stats.errors >= 1


def test_batcher_close_finishes_queued_work() -> None:
    b = MicroBatcher(FakeBackend(delay=0.05).predict, max_batch=1)
    futs = [b.submit(np.zeros((1, 32, 32, 3), np.uint8)) for _ in range(4)]
    b.close(timeout=10)
    assert all(f.result(0).shape == (1, 10) for f in futs)


# ---------------------------------------------------------------------- API
def test_health_and_model(make_client: Any) -> None:
    c = make_client(top_k=3)
    h = c.get("/health")
    assert h.status_code == 200 and h.json()["status"] == "ok" and h.json()["backend"] == "fake"
    m = c.get("/v1/model").json()
    assert m["name"] == "fake-model" and m["classes"] == list(CIFAR10_CLASSES)
    assert m["backend"] == {"name": "fake", "runtime": "fake", "threads": 1}
    assert m["serving"]["top_k"] == 3 and m["serving"]["max_upload_bytes"] == 10 * 1024 * 1024
    assert m["metrics"] == {"test": {"accuracy": 0.5}}  # bulky arrays left out


def test_classify_multipart_several_images_with_top_k_and_per_image_errors(make_client: Any) -> None:
    c = make_client()
    files = [("file", ("cat.png", png(3))), ("file", ("notes.txt", b"hello, not an image")),
             ("image", ("ship.png", png(8))), ("file", ("empty.png", b""))]
    r = c.post("/v1/classify?top_k=3", files=files)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["top_k"] == 3 and body["backend"] == "fake"
    res = body["results"]
    assert [x["name"] for x in res] == ["cat.png", "notes.txt", "ship.png", "empty.png"]
    assert [x["ok"] for x in res] == [True, False, True, False]
    assert res[0]["label"] == "cat" and res[2]["label"] == "ship"
    assert [t["label"] for t in res[0]["top"]][0] == "cat" and len(res[0]["top"]) == 3
    probs = [t["probability"] for t in res[0]["top"]]
    assert probs == sorted(probs, reverse=True) and probs[0] == pytest.approx(0.91)
    assert "not an image" in res[1]["error"] and "empty" in res[3]["error"]


def test_classify_raw_bytes_and_form_top_k(make_client: Any) -> None:
    c = make_client(top_k=2)
    r = c.post("/v1/classify", content=png(5), headers={"Content-Type": "image/png"})
    assert r.status_code == 200
    one = r.json()["results"][0]
    assert one["label"] == "dog" and len(one["top"]) == 2 and one["name"] is None
    r = c.post("/v1/classify", content=png(6), headers={"Content-Type": "application/octet-stream"})
    assert r.json()["results"][0]["label"] == "frog"
    r = c.post("/v1/classify", files=[("file", ("a.png", png(1)))], data={"top_k": "4"})
    assert len(r.json()["results"][0]["top"]) == 4
    r = c.post("/v1/classify?top_k=99", content=png(1), headers={"Content-Type": "image/png"})
    assert r.status_code == 400 and "at most 10" in r.json()["error"]  # refused, not clamped (issue 25)


@pytest.mark.parametrize("query, fragment", [("top_k=0", ">= 1"), ("top_k=abc", "integer")])
def test_bad_top_k_is_400(make_client: Any, query: str, fragment: str) -> None:
    r = make_client().post(f"/v1/classify?{query}", content=png(1), headers={"Content-Type": "image/png"})
    assert r.status_code == 400 and fragment in r.json()["error"]


def test_non_images_and_bad_requests_are_4xx_json(make_client: Any) -> None:
    c = make_client()
    r = c.post("/v1/classify", content=b"%PDF-1.4 not an image", headers={"Content-Type": "application/octet-stream"})
    assert r.status_code == 422 and "not a usable image" in r.json()["error"]
    r = c.post("/v1/classify", files=[("file", ("a.txt", b"text")), ("file", ("b.bin", b"\x00\x01"))])
    assert r.status_code == 422 and all(not x["ok"] for x in r.json()["results"])
    r = c.post("/v1/classify", json={"image": "base64?"})
    assert r.status_code == 415 and "Content-Type" in r.json()["error"]
    r = c.post("/v1/classify", content=b"", headers={"Content-Type": "image/png"})
    assert r.status_code == 400 and "no images" in r.json()["error"]
    r = c.post("/v1/classify", data={"top_k": "3"}, files=[])
    assert r.status_code in (400, 415)
    r = c.post("/v1/classify", content=b"--x\r\ngarbage", headers={"Content-Type": "multipart/form-data; boundary=x"})
    assert r.status_code == 400 and r.json()["status"] == 400
    assert c.get("/v1/classify").status_code == 405
    assert c.get("/nope").json() == {"error": "Not Found", "status": 404}


def test_body_too_large_is_413(make_client: Any) -> None:
    c = make_client(limits=ServeLimits(max_upload_bytes=50_000))
    big = np.random.default_rng(0).integers(0, 255, (200, 200, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(big).save(buf, "PNG")
    assert len(buf.getvalue()) > 50_000
    r = c.post("/v1/classify", files=[("file", ("big.png", buf.getvalue()))])
    assert r.status_code == 413 and "50000 bytes" in r.json()["error"]

    def chunked() -> Iterator[bytes]:  # no Content-Length: the limit is counted while streaming
        for _ in range(10):
            yield b"\xff" * 10_000

    r = c.post("/v1/classify", content=chunked(), headers={"Content-Type": "image/jpeg"})
    assert r.status_code == 413
    assert c.post("/v1/classify", content=png(2), headers={"Content-Type": "image/png"}).status_code == 200


def test_too_many_images_is_rejected(make_client: Any) -> None:
    c = make_client(limits=ServeLimits(max_images=3))
    r = c.post("/v1/classify", files=[("file", (f"{i}.png", png(i))) for i in range(4)])
    assert r.status_code == 400 and "3" in r.json()["error"]


def test_pixel_limit_refuses_small_file_with_huge_dimensions(make_client: Any) -> None:
    c = make_client(limits=ServeLimits(max_pixels=1_000_000))
    bomb = png(3, size=(4000, 3000))  # 12 MP of one colour: a few kB on the wire
    assert len(bomb) < 100_000
    r = c.post("/v1/classify", files=[("file", ("bomb.png", bomb)), ("file", ("ok.png", png(4)))])
    assert r.status_code == 200
    bad, good = r.json()["results"]
    assert not bad["ok"] and "12000000 pixels" in bad["error"] and "1000000" in bad["error"]
    assert good["label"] == "deer"


def test_uploads_never_touch_the_filesystem(make_client: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Parts larger than Starlette's 1 MB spool still stay in memory, and client names are only echoed."""
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("an upload was written to disk")

    for fn in ("TemporaryFile", "NamedTemporaryFile", "mkstemp", "mkdtemp"):
        monkeypatch.setattr(tempfile, fn, refuse)
    monkeypatch.chdir(tmp_path)
    c = make_client()
    noise = np.random.default_rng(1).integers(0, 255, (700, 700, 3), dtype=np.uint8)
    noise[:, :, 0] = 7
    buf = io.BytesIO()
    Image.fromarray(noise).save(buf, "PNG")
    assert len(buf.getvalue()) > 1024 * 1024
    r = c.post("/v1/classify", files=[("file", ("../../etc/passwd", buf.getvalue())), ("file", ("/tmp/x.png", png(9)))])
    assert r.status_code == 200, r.text
    res = r.json()["results"]
    assert [x["name"] for x in res] == ["../../etc/passwd", "/tmp/x.png"]
    assert [x["label"] for x in res] == ["horse", "truck"]
    assert list(tmp_path.iterdir()) == []


def test_concurrent_clients_get_their_own_answers(make_client: Any) -> None:
    backend = FakeBackend(delay=0.03)
    c = make_client(backend)

    def one(i: int) -> list[str]:
        files = [("file", (f"{i}-{j}.png", png((i + j) % 10))) for j in range(1 + i % 3)]
        r = c.post("/v1/classify", files=files)
        assert r.status_code == 200, r.text
        return [x["label"] for x in r.json()["results"]]

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(one, range(24)))
    for i, labels in enumerate(answers):
        assert labels == [CIFAR10_CLASSES[(i + j) % 10] for j in range(1 + i % 3)]
    stats = c.get("/health").json()["batcher"]
    assert not backend.overlapped
    assert stats["requests"] == 24 and stats["images"] == sum(1 + i % 3 for i in range(24))
    assert stats["batches"] < 24  # concurrent requests shared backend calls


def test_backend_failure_is_500_json_and_timeout_is_504(make_client: Any) -> None:
    c = make_client(FakeBackend(fail=True), raise_server_exceptions=False)
    r = c.post("/v1/classify", content=png(1), headers={"Content-Type": "image/png"})
    assert r.status_code == 500 and r.json()["error"].startswith("internal error")
    slow = make_client(FakeBackend(delay=1.0), limits=ServeLimits(timeout_s=0.2))
    r = slow.post("/v1/classify", content=png(1), headers={"Content-Type": "image/png"})
    assert r.status_code == 504 and "0.2 s" in r.json()["error"]


def test_page_and_static_files_are_local(make_client: Any) -> None:
    c = make_client()
    r = c.get("/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in r.headers["content-security-policy"]
    assert 'id="file-input"' in r.text and "/static/app.js" in r.text
    for name in ("app.js", "app.css"):
        assert c.get(f"/static/{name}").status_code == 200
    for text in (r.text, c.get("/static/app.js").text, c.get("/static/app.css").text):
        assert "http://" not in text and "https://" not in text  # no CDN, nothing external
    assert c.get("/static/../app.py").status_code == 404


# ---------------------------------------------------------------------- real model
def test_real_onnx_int8_backend_matches_direct_prediction(tiny_model: Path) -> None:
    from cifarbench.backends import load_backend
    from cifarbench.data.images import load_image
    from cifarbench.models.model_ref import resolve_model

    m = resolve_model(tiny_model)
    backend = load_backend("onnx-int8", m, "cpu", 1)
    rng = np.random.default_rng(5)
    blobs = []
    for label in (0, 3, 8):
        buf = io.BytesIO()
        Image.fromarray(class_pattern(label, rng)).resize((64, 48)).save(buf, "JPEG", quality=92)
        blobs.append(buf.getvalue())
    expected = backend.predict(np.stack([load_image(b).array for b in blobs]))  # type: ignore[misc]
    with TestClient(create_app(m, backend, backend_name="onnx-int8")) as c:
        assert c.get("/v1/model").json()["backend"]["runtime"] == "onnxruntime"
        r = c.post("/v1/classify?top_k=10", files=[("file", (f"{i}.jpg", b)) for i, b in enumerate(blobs)])
    assert r.status_code == 200
    for row, res in zip(expected, r.json()["results"]):
        assert res["label"] == m.classes[int(row.argmax())]
        got = {t["label"]: t["probability"] for t in res["top"]}
        assert [got[name] for name in m.classes] == pytest.approx(row.tolist(), abs=1e-5)


# ---------------------------------------------------------------------- CLI refusals (no server started)
def test_cli_unknown_model_is_exit_4() -> None:
    res = run_cli("serve", "--model", "/no/such/model")
    assert res.exit_code == ExitStatus.DATA and "not found" in res.stderr and "Traceback" not in res.stderr


def test_cli_busy_port_is_a_usage_error(tiny_model: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        res = run_cli("serve", "--model", str(tiny_model), "--backend", "onnx-int8", "--port", str(port))
    assert res.exit_code == ExitStatus.USAGE and f"127.0.0.1:{port}" in res.stderr


def test_listening_socket_gives_connections_tcp_nodelay() -> None:
    """Without it every keep-alive request waits ~40 ms on a delayed ACK (uvicorn's own bind: Kludex/uvicorn#3149)."""
    import asyncio

    from cifarbench.cli.serve import _bind

    sock = _bind("127.0.0.1", 0)
    seen: list[int] = []

    class Probe(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            seen.append(transport.get_extra_info("socket").getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
            transport.close()  # type: ignore[attr-defined]

    async def main() -> None:
        server = await asyncio.get_running_loop().create_server(Probe, sock=sock)
        async with server:
            _, writer = await asyncio.open_connection(*sock.getsockname()[:2])
            for _ in range(200):
                if seen:
                    break
                await asyncio.sleep(0.01)
            writer.close()

    asyncio.run(main())
    assert seen and seen[0] != 0


def test_cli_help_documents_limits() -> None:
    res = run_cli("serve", "--help")
    assert res.exit_code == 0
    for opt in ("--max-upload-mb", "--max-pixels", "--timeout", "--workers", "--top-k", "curl", "--max-connections",
                "--header-timeout", "--keep-alive", "--max-concurrency", "--max-queue", "--max-buffered-mb"):
        assert opt in res.output


def test_upload_exactly_at_the_byte_limit_passes_one_byte_more_is_413(make_client: Any) -> None:
    body = png(3)
    c = make_client(limits=ServeLimits(max_upload_bytes=len(body)))
    assert c.post("/v1/classify", content=body, headers={"Content-Type": "image/png"}).status_code == 200
    r = c.post("/v1/classify", content=body + b"\0", headers={"Content-Type": "image/png"})
    assert r.status_code == 413 and f"limit of {len(body)} bytes" in r.json()["error"]

    def streamed(extra: bytes) -> Iterator[bytes]:  # no Content-Length: counted while streaming
        yield body[:10]
        yield body[10:] + extra

    ok = c.post("/v1/classify", content=streamed(b""), headers={"Content-Type": "image/png"})
    assert ok.status_code == 200
    over = c.post("/v1/classify", content=streamed(b"\0"), headers={"Content-Type": "image/png"})
    assert over.status_code == 413


def test_image_exactly_at_max_pixels_passes_one_pixel_more_is_422(make_client: Any) -> None:
    c = make_client(limits=ServeLimits(max_pixels=40 * 30))
    assert c.post("/v1/classify", content=png(3, (40, 30)), headers={"Content-Type": "image/png"}).status_code == 200
    c2 = make_client(limits=ServeLimits(max_pixels=40 * 30 - 1))  # the same image, one pixel past the limit
    r = c2.post("/v1/classify", content=png(3, (40, 30)), headers={"Content-Type": "image/png"})
    assert r.status_code == 422, r.text


def test_admission_queue_at_its_size_and_one_past() -> None:
    """max_active requests run, max_queue wait, the next one is refused at once (counted)."""
    import anyio

    from cifarbench.serve.admission import Admission, Busy, UploadBudget

    async def main() -> None:
        adm = Admission(max_active=2, max_queue=3)
        release = anyio.Event()
        entered: list[int] = []

        async def hold(i: int) -> None:
            async with adm.slot():
                entered.append(i)
                await release.wait()

        async with anyio.create_task_group() as tg:
            for i in range(5):  # 2 active + 3 waiting: exactly at both limits
                tg.start_soon(hold, i)
            with anyio.fail_after(10):
                while (adm.active, adm.waiting) != (2, 3):
                    await anyio.sleep(0.001)
            with pytest.raises(Busy, match="2 requests in progress and 3 waiting"):
                async with adm.slot():
                    pass
            assert adm.as_dict() == {"active": 2, "waiting": 3, "max_active": 2, "max_queue": 3, "refused": 1}
            release.set()
        assert sorted(entered) == [0, 1, 2, 3, 4] and adm.as_dict()["active"] == adm.as_dict()["waiting"] == 0

        none_waiting = Admission(max_active=1, max_queue=0)
        async with none_waiting.slot():
            with pytest.raises(Busy):
                async with none_waiting.slot():
                    pass
        async with none_waiting.slot():  # free again
            pass

    anyio.run(main)
    for bad in ((0, 1), (1, -1)):
        with pytest.raises(ValueError) as e:
            Admission(*bad)
        assert str(e.value) == "max_active must be >= 1 and max_queue >= 0"
    assert Busy("x").retry_after == 1 and Busy("x", 5).retry_after == 5 and str(Busy("x")) == "x"
    one = UploadBudget(0)  # never below one byte, so a budget can always be exceeded and refused
    assert one.total == 1
    one.take(1)
    with pytest.raises(Busy):
        one.take(1)
    b = UploadBudget(100)
    b.take(60)
    b.take(40)  # exactly the budget
    with pytest.raises(Busy, match="already hold 100 of 100 bytes"):
        b.take(1)
    b.give_back(100)
    b.take(100)
    b.give_back(1000)
    assert b.used == 0
