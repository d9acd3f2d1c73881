"""``serve --access-log``: one line per request on stderr: time, status, method, path, images, milliseconds.

uvicorn's own access log is switched off (serve.server): it says neither how many images a request
carried nor how long it took, and it was on by default. This middleware wraps the whole app, so every
answer is logged once, whichever layer gave it (a route, an error handler, a 404): the status is read
from the response start, the image count from what the classify route records in the request's state.
Lines are written whole with one ``write`` to ``sys.stderr`` (moved apart from fd 2 by
``python_stderr_apart``, so a decode's stderr capture never swallows one).
"""

from __future__ import annotations

import sys
import time
from typing import IO, Any, Callable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

IMAGES_KEY = "cifarbench_images"  # scope["state"] key the classify route sets: images in the request


def format_line(when: float, status: int, method: str, path: str, images: int | None, ms: float) -> str:
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(when)) + f".{int(when % 1 * 1000):03d}Z"
    return f"{stamp} {status} {method} {path} images={'-' if images is None else images} {ms:.1f} ms\n"


class AccessLog:
    """ASGI middleware: one ``format_line`` per HTTP request, written when its response has been sent."""

    def __init__(self, app: ASGIApp, stream: Callable[[], IO[str]] | None = None) -> None:
        self.app = app
        self._stream = stream or (lambda: sys.stderr)  # looked up per line: serve moves sys.stderr at start-up

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        when, t0 = time.time(), time.perf_counter()
        status: list[int] = [500]  # what the client gets if the app dies before answering (Starlette's 500)
        state: dict[str, Any] = scope.setdefault("state", {})

        async def send_and_note(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        finally:
            line = format_line(when, status[0], scope.get("method", "-"), scope.get("path", "-"),
                               state.get(IMAGES_KEY), 1000 * (time.perf_counter() - t0))
            try:
                out = self._stream()
                out.write(line)
                out.flush()
            except (OSError, ValueError):  # a closed or full log must never fail a request
                pass
