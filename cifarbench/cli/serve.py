"""`cifarbench serve`: the HTTP API and upload page (Starlette on uvicorn)."""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import os
import socket
from typing import TYPE_CHECKING

import click

from cifarbench.backends import DEVICES
from cifarbench.backends.tta import TTA_MODES
from cifarbench.cli.choices import BackendChoice
from cifarbench.cli.transform_options import transform_options
from cifarbench.data.batching import SERVE_BATCH, images_per_batch
from cifarbench.data.images import DEFAULT_MAX_PIXELS
from cifarbench.errors import BackendUnavailable, UsageError

if TYPE_CHECKING:
    import uvicorn


@click.command("serve")
@click.option("--model", "-m", default=None, help="Shipped model name, model directory or artifact file [default: flagship].")
@click.option("--backend", "-b", type=BackendChoice(), default=None,
              help="Runtime [default auto: the fastest int8 one, measured on this machine once and cached].")
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to listen on; 0.0.0.0 exposes the server to the network.")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True, help="TCP port (0: pick a free one).")
@click.option("--max-upload-mb", type=click.FloatRange(min=0.001), default=10.0, show_default=True, help="Largest request body.")
@click.option("--max-pixels", type=click.IntRange(min=1), default=DEFAULT_MAX_PIXELS, show_default=True,
              help="Largest image (width x height), checked before decoding: the decompression-bomb guard.")
@click.option("--max-images", type=click.IntRange(min=1), default=128, show_default=True, help="Most images in one request.")
@click.option("--timeout", type=click.FloatRange(min=0.1), default=30.0, show_default=True,
              help="Seconds one request may take (upload, decode, inference).")
@click.option("--top-k", type=click.IntRange(min=1), default=5, show_default=True, help="Default number of labels per image.")
@click.option("--max-batch", type=click.IntRange(min=1),
              help="Most images the micro-batcher sends to the backend at once (default: 64 for inputs up to "
                   "128x128 pixels, fewer above so a call holds as many pixels: 20 at 224x224).")
@click.option("--max-concurrency", type=click.IntRange(min=1), default=64, show_default=True,
              help="Most classify requests decoding/inferring at once per process; more wait in the queue.")
@click.option("--max-queue", type=click.IntRange(min=0), default=256, show_default=True,
              help="Most classify requests waiting for a turn; beyond it 503 with Retry-After.")
@click.option("--max-buffered-mb", type=click.FloatRange(min=0.001), default=256.0, show_default=True,
              help="Request bodies held in memory, all requests together; a body over it gets 503 with Retry-After.")
@click.option("--max-connections", type=click.IntRange(min=1), default=1000, show_default=True,
              help="Open connections per process; more get 503 (idle ones are closed after --header-timeout).")
@click.option("--header-timeout", type=click.FloatRange(min=0.1), default=10.0, show_default=True,
              help="Seconds a client has to send a request's headers (from connecting, or from the last response).")
@click.option("--keep-alive", type=click.IntRange(min=1), default=5, show_default=True,
              help="Seconds an idle keep-alive connection stays open.")
@click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True,
              help="Server processes, each with its own copy of the model.")
@click.option("--threads", type=click.IntRange(min=1), default=None, help="Backend threads per process [default: runtime's choice].")
@click.option("--device", type=click.Choice(DEVICES), default="cpu", show_default=True,
              help="gpu: onnxruntime CUDA, TensorFlow GPU or OpenVINO's GPU plugin; auto: a GPU when the backend can "
                   "use one here, else the CPU.")
@transform_options
@click.option("--tta", type=click.Choice(TTA_MODES), default="none", show_default=True,
              help="Test-time augmentation: average over the image and its mirror (flip, 2x the model work) "
                   "or 6 mirrored/shifted views (flip-translate).")
@click.option("--log-level", type=click.Choice(["critical", "error", "warning", "info", "debug"]), default="info",
              show_default=True, help="uvicorn log level (logs go to stderr).")
@click.option("--access-log", is_flag=True,
              help="One line per request on stderr: UTC time, status, method, path, images, milliseconds.")
def command(model: str | None, backend: str | None, host: str, port: int, max_upload_mb: float, max_pixels: int,
            max_images: int, timeout: float, top_k: int, max_batch: int | None, max_concurrency: int, max_queue: int,
            max_buffered_mb: float, max_connections: int, header_timeout: float, keep_alive: int, workers: int,
            threads: int | None, device: str, resize: str | None, crop_pct: float | None, interpolation: str | None,
            tta: str, log_level: str, access_log: bool) -> None:
    """Serve a model over HTTP: GET / (upload page), GET /health, GET /v1/model, POST /v1/classify.

    \b
    curl -F file=@cat.jpg -F file=@dog.png http://127.0.0.1:8000/v1/classify
    curl --data-binary @cat.jpg -H 'Content-Type: image/jpeg' 'http://127.0.0.1:8000/v1/classify?top_k=3'
    """
    try:
        import uvicorn  # noqa: F401  (the serve extra's server: fail here, with the hint, if missing)

        from cifarbench.serve import server
        from cifarbench.serve.app import ENV_CONFIG, ServeLimits, create_app
        from cifarbench.serve.protocol import ConnectionLimits
    except ImportError as exc:
        raise BackendUnavailable(f"serving needs the serve extra: pip install 'cifarbench[serve]' ({exc.name} missing)") from None
    from cifarbench.backends import select
    from cifarbench.backends.tta import with_tta
    from cifarbench.cli.ui import EventPrinter
    from cifarbench.models.model_ref import emit_model_notes, resolve_model

    if workers > 1 and port == 0:
        raise UsageError("--port 0 cannot be shared by several --workers; name a port")
    limits = ServeLimits(max_upload_bytes=int(max_upload_mb * 1024 * 1024), max_pixels=max_pixels,
                         max_images=max_images, timeout_s=timeout, max_active=max_concurrency, max_queue=max_queue,
                         max_buffered_bytes=int(max_buffered_mb * 1024 * 1024))
    connection = ConnectionLimits(header_timeout_s=header_timeout, max_connections=_fd_capped(max_connections))
    manifest = resolve_model(model)
    emit_model_notes(manifest, EventPrinter("serve"))  # e.g. a lone artifact's classes named as CIFAR-10's
    transform = {"resize": resize, "crop_pct": crop_pct, "interpolation": interpolation}  # None: the manifest's
    if max_batch is None:
        max_batch = images_per_batch(manifest.input.size, SERVE_BATCH)
    selection = select(manifest, backend, device, threads, batch_size=max_batch)
    name = selection.name
    if selection.how in ("measured", "fallback", "cached"):
        click.echo(f"backend {selection.note}", err=True)
    sock = _bind(host, port)
    url_host = f"[{host}]" if ":" in host else host
    url = f"http://{url_host}:{sock.getsockname()[1]}/"
    if not _is_loopback(host):
        click.echo(f"warning: listening on {host}: anyone who can reach this machine can use the server "
                   "(no authentication, no TLS; put a reverse proxy in front)", err=True)

    if workers == 1:
        app = create_app(manifest, with_tta(selection.load(manifest, threads), tta), backend_name=name, top_k=top_k,
                         limits=limits, max_batch=max_batch, access_log=access_log, **transform)
        click.echo(f"serving {manifest.name} with {name} on {url}  (Ctrl-C to stop)", err=True)
        server.run(app, sock, connection, keep_alive, log_level)
        return

    # Several processes: each worker builds its own app from a JSON config (uvicorn imports the factory).
    os.environ[ENV_CONFIG] = json.dumps({
        "model": os.path.abspath(model) if model and os.path.exists(model) else model, "backend": name,
        "device": selection.device, "threads": threads, "tta": tta, "top_k": top_k, "max_batch": max_batch,
        "access_log": access_log, **transform,
        "limits": dataclasses.asdict(limits),
    })
    click.echo(f"serving {manifest.name} with {name} on {url} in {workers} worker processes  (Ctrl-C to stop)", err=True)
    config = server.make_config("cifarbench.serve.app:app_from_env", connection, keep_alive, log_level,
                                factory=True, workers=workers)
    _run_workers(config, sock)


def _run_workers(config: "uvicorn.Config", sock: socket.socket) -> None:
    """uvicorn's supervisor on our socket (uvicorn's own bind loses TCP_NODELAY: Kludex/uvicorn#3149)."""
    import inspect

    from uvicorn.supervisors import Multiprocess

    if "target" in inspect.signature(Multiprocess).parameters:  # older uvicorn releases
        import uvicorn

        Multiprocess(config, target=uvicorn.Server(config).run, sockets=[sock]).run()  # type: ignore[call-arg]
    else:
        Multiprocess(config, sockets=[sock]).run()


def _fd_capped(max_connections: int) -> int:
    """Raise the open-file soft limit as far as allowed; keep connections within it (with room for models, logs)."""
    try:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        want = max_connections + 64
        if soft != resource.RLIM_INFINITY and soft < want:
            new = want if hard == resource.RLIM_INFINITY else min(want, hard)
            resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
            soft = new
        return max(1, min(max_connections, int(soft) - 64)) if soft != resource.RLIM_INFINITY else max_connections
    except (ImportError, ValueError, OSError):
        return max_connections


def _bind(host: str, port: int) -> socket.socket:
    """Bind before loading anything heavy, so a busy port is a one-line error, not a uvicorn log.

    ``IPPROTO_TCP`` explicitly: asyncio sets TCP_NODELAY only on accepted sockets whose
    protocol says TCP, and without it every keep-alive request waits ~40 ms for a delayed ACK.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise UsageError(f"cannot listen on {host}:{port}: {exc.strerror or exc}; choose another --host or --port") from None
    sock.set_inheritable(True)
    return sock


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
