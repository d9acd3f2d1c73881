"""The HTTP app: ``create_app(manifest, backend)`` -> a Starlette ASGI application.

Routes: ``GET /health``, ``GET /v1/model``, ``POST /v1/classify`` (multipart files or one
raw image body), ``GET /`` (the upload page) and ``/static/*``. Uploads are read into
memory under a byte limit and decoded from bytes by the one loader, so nothing a
client sends is ever opened or written by name. Decoding runs in a bounded thread
pool; inference runs in the micro-batcher's thread, so the event loop only moves bytes.

Over 300 lines on purpose: the routes share the admission, upload-budget and error-shaping helpers;
connection handling is in protocol.py, batching in batching.py, uploads in uploads.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, AsyncIterator
from urllib.parse import urlsplit

import anyio
import anyio.to_thread
import numpy as np
from starlette.applications import Starlette
from starlette.datastructures import MutableHeaders
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from cifarbench import __version__
from cifarbench.data import decode_sandbox
from cifarbench.data.batching import SERVE_BATCH, images_per_batch
from cifarbench.data.cstderr import python_stderr_apart
from cifarbench.data.images import ImageResult
from cifarbench.data.transform import as_transform
from cifarbench.models.manifest import Manifest
from cifarbench.serve.access_log import IMAGES_KEY, AccessLog
from cifarbench.serve.admission import Admission, Busy, UploadBudget
from cifarbench.serve.batching import BatcherClosed, MicroBatcher
from cifarbench.serve.memory import rss_bytes, trim_heap, tune_malloc
from cifarbench.serve.protocol import SECURITY_HEADERS
from cifarbench.serve.uploads import BodyMeter, ServeLimits, decode_guarded, read_uploads
from cifarbench.sysinfo import usable_cores

TRIM_AFTER_PIXELS = 4_000_000  # after decoding an image this big, hand freed heap pages back to the OS

STATIC_DIR = Path(__file__).resolve().parent / "static"


class _App:
    """Request handlers bound to one model, one backend and one batcher."""

    def __init__(self, manifest: Manifest, backend: Any, backend_name: str, top_k: int, limits: ServeLimits,
                 max_batch: int, max_wait_s: float, resize: str | None, crop_pct: float | None = None,
                 interpolation: str | None = None) -> None:
        self.manifest, self.backend, self.backend_name = manifest, backend, backend_name
        self.classes = list(manifest.classes)
        self.top_k = max(1, min(int(top_k), len(self.classes)))
        self.limits = limits
        contract = manifest.input  # an InputContract (or the first release's plain dict)
        self.input: dict[str, Any] = contract.to_dict() if hasattr(contract, "to_dict") else dict(contract or {})
        # Uploads decode straight to the model's own size with the transform convert stored (serve's options override).
        self.transform = contract.transform_with(resize, crop_pct, interpolation) if hasattr(contract, "transform_with") \
            else as_transform(int(self.input.get("shape", [32])[0]), resize, crop_pct, interpolation)
        self.size = self.transform.size
        self.resize = self.transform.resize
        self.batcher = MicroBatcher(backend.predict, max_batch=max_batch, max_wait_s=max_wait_s)
        self.decode_limiter = anyio.CapacityLimiter(max(2, usable_cores()))
        self.sandbox_limiter = anyio.CapacityLimiter(2)
        self.admission = Admission(limits.max_active, limits.max_queue)
        self.upload_budget = UploadBudget(max(limits.max_buffered_bytes, limits.max_upload_bytes))

    # ------------------------------------------------------------------ GET
    async def health(self, request: Request) -> Response:
        closed = self.batcher.closed
        return JSONResponse({"status": "closed" if closed else "ok", "model": self.manifest.name,
                             "backend": self.backend_name, "queued": self.batcher.queued(),
                             "batcher": self.batcher.stats.as_dict(), "admission": self.admission.as_dict(),
                             "buffered_bytes": self.upload_budget.used, "rss_bytes": rss_bytes()},
                            status_code=503 if closed else 200)

    async def model(self, request: Request) -> Response:
        m = self.manifest
        return JSONResponse({
            "name": m.name, "arch": m.arch, "classes": self.classes, "input": self.input, "params": m.params,
            "macs": m.macs, "metrics": _without_paths(_scalars(m.metrics)), "artifacts": sorted(m.artifacts), "created": m.created,
            "backend": {"name": self.backend_name, **_without_paths(_jsonable(self.backend.describe()))},
            "serving": {"top_k": self.top_k, "resize": self.resize, "transform": self.transform.describe(),
                        "max_batch": self.batcher.max_batch,
                        **asdict(self.limits), "cifarbench_version": __version__},
        })

    async def index(self, request: Request) -> Response:
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html; charset=utf-8")

    # ------------------------------------------------------------------ POST /v1/classify
    async def classify(self, request: Request) -> Response:
        t0 = time.perf_counter()
        phase = "upload"
        meter = BodyMeter(self.upload_budget)
        try:
            with anyio.fail_after(self.limits.timeout_s):
                uploads, form_k = await read_uploads(request, self.limits, meter)
                top_k = self._top_k(request.query_params.get("top_k", form_k))
                if not uploads:
                    raise HTTPException(400, "no images in the request: send multipart/form-data file fields "
                                             "or one raw image body (Content-Type: image/* or application/octet-stream)")
                names = [name for name, _ in uploads]
                setattr(request.state, IMAGES_KEY, len(names))  # for --access-log
                phase = "queue"
                t1 = time.perf_counter()
                async with self.admission.slot():
                    phase = "decode"
                    tq = time.perf_counter()
                    blobs = [b for _, b in uploads]  # formats the sandbox decodes wait apart from ordinary ones
                    trusted = all(decode_sandbox.looks_trusted(b) for b in blobs)
                    limiter = self.decode_limiter if trusted else self.sandbox_limiter
                    decoded = await anyio.to_thread.run_sync(self._decode_all, blobs, t0 + self.limits.timeout_s,
                                                             limiter=limiter)
                    del blobs
                    del uploads[:]  # names only from here on: the bytes go back to the budget
                    meter.release()
                    t2 = time.perf_counter()
                    phase = "inference"
                    good = [i for i, (r, _) in enumerate(decoded) if r.ok]
                    probs = np.zeros((0, len(self.classes)), np.float32)
                    if good:
                        batch = np.stack([decoded[i][0].array for i in good])  # type: ignore[misc]
                        probs = await asyncio.wrap_future(self.batcher.submit(batch))
                t3 = time.perf_counter()
        except TimeoutError:
            if phase == "upload":
                raise HTTPException(408, f"request body not received within {self.limits.timeout_s:g} s") from None
            if phase == "queue":
                raise _busy(f"server busy: no turn within {self.limits.timeout_s:g} s; retry shortly") from None
            raise HTTPException(504, f"classification did not finish within {self.limits.timeout_s:g} s") from None
        except Busy as exc:
            raise _busy(str(exc), exc.retry_after) from None
        except BatcherClosed:
            raise _busy("server is shutting down; retry shortly") from None  # a restart or another worker answers
        except ClientDisconnect:
            return Response(status_code=400)
        finally:
            meter.release()

        rows = iter(probs)
        results = []
        for i, (name, (res, _)) in enumerate(zip(names, decoded)):
            entry: dict[str, Any] = {"index": i, "name": name, "ok": res.ok}
            if res.ok:
                entry.update(self._top(next(rows), top_k))
            else:
                entry["error"] = res.error
            results.append(entry)
        body: dict[str, Any] = {
            "model": self.manifest.name, "backend": self.backend_name, "top_k": top_k, "results": results,
            "timing_ms": {"upload": _ms(t1 - t0), "queue": _ms(tq - t1), "decode": _ms(t2 - tq),
                          "inference": _ms(t3 - t2)},
        }
        if not good:
            body["error"] = "no image could be decoded" if len(results) > 1 else f"not a usable image: {results[0]['error']}"
            body["status"] = 422  # like every other error body: {error, status}
            return JSONResponse(body, status_code=422)
        return JSONResponse(body)

    def _decode_all(self, blobs: list[bytes], until: float) -> list[tuple[ImageResult, int]]:
        with decode_sandbox.deadline(until - time.perf_counter() + time.monotonic()):
            out = [decode_guarded(b, self.transform, None, self.limits.max_pixels) for b in blobs]
        if max(pixels for _, pixels in out) >= TRIM_AFTER_PIXELS:
            trim_heap()  # big decodes leave freed pages in glibc's heaps; an idle server should not keep them
        return out

    def _top_k(self, raw: str | None) -> int:
        if raw in (None, ""):
            return self.top_k
        try:
            k = int(raw)  # type: ignore[arg-type]
        except ValueError:
            raise HTTPException(400, f"top_k must be an integer, got {str(raw)[:40]!r}") from None
        if not 1 <= k <= len(self.classes):  # a bigger one is refused, not clamped: the caller learns the range
            raise HTTPException(400, f"top_k must be >= 1 and at most {len(self.classes)} (the model's classes), "
                                     f"got {str(raw)[:40]}")
        return k

    def _top(self, p: np.ndarray, k: int) -> dict[str, Any]:
        order = np.argsort(-p, kind="stable")[:k]
        top = [{"label": self.classes[j], "class_id": int(j), "probability": round(float(p[j]), 6)} for j in order]
        return {"label": top[0]["label"], "probability": top[0]["probability"], "top": top}


def _ms(seconds: float) -> float:
    return round(seconds * 1000.0, 3)


def _jsonable(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=str))


def _scalars(d: Any, depth: int = 0) -> Any:
    """Metrics without bulky arrays (confusion matrices, curves): a summary for /v1/model."""
    if isinstance(d, dict) and depth < 3:
        out = {k: _scalars(v, depth + 1) for k, v in d.items()}
        return {k: v for k, v in out.items() if v is not None}
    if isinstance(d, (int, float, str, bool)):
        return d
    return None


def _busy(message: str, retry_after: int = 1) -> HTTPException:
    return HTTPException(503, message, headers={"Retry-After": str(retry_after)})


def _without_paths(d: Any) -> Any:
    """Drop strings that name files (``metrics.parity.source`` etc.): the server's layout is not public."""
    if isinstance(d, dict):
        out = {k: _without_paths(v) for k, v in d.items()}
        return {k: v for k, v in out.items() if v is not None}
    if isinstance(d, list):
        return [v for v in (_without_paths(x) for x in d) if v is not None]
    if isinstance(d, str) and ("/" in d or "\\" in d or d.startswith("~")):
        return None
    return d


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    headers = {**dict(SECURITY_HEADERS), **dict(exc.headers or {})}
    return JSONResponse({"error": exc.detail, "status": exc.status_code}, status_code=exc.status_code, headers=headers)


async def _server_error(request: Request, exc: Exception) -> Response:
    # Sent by Starlette's outermost middleware, outside _SecurityHeaders: the headers are added here.
    return JSONResponse({"error": f"internal error: {type(exc).__name__}", "status": 500}, status_code=500,
                        headers=dict(SECURITY_HEADERS))


def _relative_location(location: str) -> str:
    """A redirect target without scheme and host: Starlette builds it from the client's Host header."""
    parts = urlsplit(location)
    path = "/" + parts.path.lstrip("/")  # one slash: "//host/x" would be read as another host
    return path + (f"?{parts.query}" if parts.query else "")


class _SecurityHeaders:
    """Everything is served locally, so the page can forbid any other origin outright.

    Also turns redirects (``/static`` -> ``/static/``) into relative ones, so a forged
    ``Host`` header is never reflected in ``Location``.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in SECURITY_HEADERS:
                    headers.setdefault(name, value)
                if "location" in headers:
                    headers["location"] = _relative_location(headers["location"])
            await send(message)

        await self.app(scope, receive, send_with_headers)


def create_app(
    manifest: Manifest,
    backend: Any,
    *,
    backend_name: str | None = None,
    top_k: int = 5,
    limits: ServeLimits | None = None,
    max_batch: int | None = None,
    max_wait_ms: float = 0.0,
    resize: str | None = None,
    crop_pct: float | None = None,
    interpolation: str | None = None,
    access_log: bool = False,
) -> Starlette:
    """An ASGI app serving ``backend`` (anything with ``predict`` and ``describe``) for ``manifest``.

    ``access_log``: one line per request on stderr (cifarbench.serve.access_log).

    ``app.state.handlers.batcher`` is closed on lifespan shutdown (or call ``close_app``).
    """
    if max_batch is None:  # 64 up to 128x128 pixels, fewer above: what `cifarbench serve` does without --max-batch
        max_batch = images_per_batch(manifest.input.size, SERVE_BATCH)
    h = _App(manifest, backend, backend_name or getattr(backend, "name", "unknown"), top_k, limits or ServeLimits(),
             max_batch, max_wait_ms / 1000.0, resize, crop_pct, interpolation)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        try:
            yield
        finally:
            h.batcher.close()

    routes = [
        Route("/", h.index, methods=["GET"]),
        Route("/health", h.health, methods=["GET"]),
        Route("/v1/model", h.model, methods=["GET"]),
        Route("/v1/classify", h.classify, methods=["POST"]),
        Mount("/static", StaticFiles(directory=STATIC_DIR), name="static"),
    ]
    middleware = ([Middleware(AccessLog)] if access_log else []) + [Middleware(_SecurityHeaders)]
    app = Starlette(routes=routes, lifespan=lifespan, middleware=middleware,
                    exception_handlers={HTTPException: _http_error, 500: _server_error})
    app.state.handlers = h
    return app


def close_app(app: Starlette) -> None:
    """Stop the batcher thread of an app whose lifespan never ran (tests, embedding)."""
    app.state.handlers.batcher.close()


def load_app(model: str | None = None, backend: str | None = None, device: str = "cpu", threads: int | None = None,
             tta: str = "none", **kwargs: Any) -> Starlette:
    """Resolve a model, load its backend and build the app: what ``cifarbench serve`` runs."""
    from cifarbench.backends import select
    from cifarbench.backends.tta import with_tta
    from cifarbench.models.model_ref import resolve_model

    manifest = resolve_model(model)
    if kwargs.get("max_batch") is None:
        kwargs["max_batch"] = images_per_batch(manifest.input.size, SERVE_BATCH)
    selection = select(manifest, backend, device, threads, batch_size=int(kwargs["max_batch"]))
    return create_app(manifest, with_tta(selection.load(manifest, threads), tta), backend_name=selection.name, **kwargs)


ENV_CONFIG = "CIFARBENCH_SERVE_CONFIG"


def app_from_env() -> Starlette:
    """Factory for ``--workers N``: each worker process loads its own backend from a JSON config."""
    cfg = json.loads(os.environ[ENV_CONFIG])
    limits = ServeLimits(**cfg.pop("limits", {}))
    tune_malloc()
    python_stderr_apart()  # uvicorn configured this worker's logging already: its handlers are moved
    return load_app(**cfg, limits=limits)
