"""Connection guards around uvicorn's HTTP/1.1 protocols: bounded in time, bytes and number.

Why: uvicorn waits forever for the first request on a new connection, never limits the
size of a request head (with httptools), and its ``limit_concurrency`` counts idle
connections against requests, so 64 silent sockets locked everyone out. Here:

* the request head (request line + headers) must arrive within ``header_timeout_s`` of the
  connection opening or of the previous response, however slowly it trickles; an idle
  connection is closed silently, a half-sent head gets 408;
* a head larger than ``max_header_bytes`` gets 431;
* beyond ``max_connections`` open connections a new one gets 503 with ``Retry-After`` at once,
  before it sends anything, and is closed within ``REFUSED_LINGER_S``: refused sockets cannot pile up.

Requests themselves are bounded inside the app (admission control, body and time limits).
Every answer written here is JSON with the same security headers as the app's, so no
``text/plain`` response of uvicorn's own ever reaches a client.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

REFUSED_LINGER_S = 1.0  # a refused connection's socket lives this long at most after its 503

# Shared with the app so that protocol-level and app-level answers look the same.
CSP = ("default-src 'self'; img-src 'self' blob: data:; script-src 'self'; style-src 'self'; "
       "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
SECURITY_HEADERS: tuple[tuple[str, str], ...] = (
    ("Content-Security-Policy", CSP),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "no-referrer"),
)


@dataclass(frozen=True)
class ConnectionLimits:
    """Per-process connection bounds; picklable, so ``--workers`` processes get them too."""

    header_timeout_s: float = 10.0
    max_header_bytes: int = 64 * 1024
    max_connections: int = 1000
    retry_after_s: int = 1


def error_response(status: int, message: str, retry_after: int | None = None) -> bytes:
    """A complete ``Connection: close`` HTTP/1.1 response with a JSON body ``{error, status}``."""
    body = json.dumps({"error": message, "status": status}).encode()
    lines = [f"HTTP/1.1 {status} {HTTPStatus(status).phrase}",
             "content-type: application/json", f"content-length: {len(body)}", "connection: close"]
    lines += [f"{k.lower()}: {v}" for k, v in SECURITY_HEADERS]
    if retry_after is not None:
        lines.append(f"retry-after: {retry_after}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


class _GuardMixin:
    """Wraps a uvicorn HTTP protocol class (httptools or h11); see the module docstring."""

    # set by uvicorn's protocol __init__
    config: Any
    connections: set[Any]
    transport: asyncio.Transport
    cycle: Any
    loop: asyncio.AbstractEventLoop

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[call-arg]
        self._limits: ConnectionLimits = getattr(self.config, "cifarbench_connection", None) or ConnectionLimits()
        self._head_timer: asyncio.TimerHandle | None = None
        self._head_bytes = 0  # bytes received since the current head started
        self._head_tail = b""  # the last bytes of the head so far: its end may straddle two reads
        self._seen_cycle: Any = None
        self._refused = False

    # ------------------------------------------------------------------ asyncio.Protocol
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        if len(self.connections) >= self._limits.max_connections:
            # Answered now, not when the client speaks: a silent one must not keep its fd for the head timeout.
            # Half-close after the 503 and drop what the client still sends (closing with unread bytes makes
            # the kernel reset the connection, which can destroy the 503); closed at its EOF or the linger.
            self.transport = transport
            self._refused = True
            transport.write(error_response(503, "too many open connections; retry shortly", self._limits.retry_after_s))
            if transport.can_write_eof():
                transport.write_eof()
            self._head_timer = self.loop.call_later(min(REFUSED_LINGER_S, self._limits.header_timeout_s),
                                                    transport.close)
            return
        super().connection_made(transport)  # type: ignore[misc]
        self._arm_head_timer()

    def data_received(self, data: bytes) -> None:
        if self._refused:  # already answered: read and dropped until the client's EOF or the linger
            return
        if self._head_timer is not None:  # still reading a request head: count it, not the body after it
            window = self._head_tail + data
            end = window.find(b"\r\n\r\n")
            self._head_bytes += len(data) if end < 0 else max(0, end + 4 - len(self._head_tail))
            self._head_tail = window[-3:]
            if self._head_bytes > self._limits.max_header_bytes:
                self._answer_and_close(431, f"request head exceeds {self._limits.max_header_bytes} bytes")
                return
        super().data_received(data)  # type: ignore[misc]
        if self.cycle is not None and self.cycle is not self._seen_cycle:  # a new request's head is complete
            self._seen_cycle = self.cycle
            self._cancel_head_timer()

    def eof_received(self) -> bool | None:
        if self._refused:
            return None  # a refused client has read its 503 and gone: close (asyncio does, on a falsy return)
        return super().eof_received()  # type: ignore[misc, no-any-return]

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_timer()
        if self._refused:
            return
        super().connection_lost(exc)  # type: ignore[misc]

    # ------------------------------------------------------------------ uvicorn hooks
    def on_response_complete(self) -> None:
        super().on_response_complete()  # type: ignore[misc]
        # Idle again unless a pipelined request was started: the next head gets a fresh deadline.
        if not self.transport.is_closing() and (self.cycle is None or self.cycle.response_complete):
            self._arm_head_timer()

    def send_400_response(self, msg: str) -> None:
        self._answer_and_close(400, f"malformed HTTP request: {msg}")

    # ------------------------------------------------------------------ helpers
    def _arm_head_timer(self) -> None:
        self._cancel_head_timer()
        self._head_bytes = 0
        self._head_tail = b""
        self._head_timer = self.loop.call_later(self._limits.header_timeout_s, self._head_timed_out)

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self.transport.is_closing():
            return
        if self._head_bytes and not self._refused:
            self._answer_and_close(408, f"request head not received within {self._limits.header_timeout_s:g} s")
        else:
            self.transport.close()  # an idle connection: close it like a keep-alive timeout

    def _answer_and_close(self, status: int, message: str, retry_after: int | None = None) -> None:
        self._cancel_head_timer()
        if not self.transport.is_closing():
            self.transport.write(error_response(status, message, retry_after))
            self.transport.close()


def _guarded(base: type, name: str) -> type:
    return type(name, (_GuardMixin, base), {"__module__": __name__, "__qualname__": name})


try:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    GuardedHttpToolsProtocol: type | None = _guarded(HttpToolsProtocol, "GuardedHttpToolsProtocol")
except ImportError:  # pragma: no cover - httptools is in the serve extra
    GuardedHttpToolsProtocol = None

try:
    from uvicorn.protocols.http.h11_impl import H11Protocol

    GuardedH11Protocol: type | None = _guarded(H11Protocol, "GuardedH11Protocol")
except ImportError:  # pragma: no cover - h11 comes with uvicorn
    GuardedH11Protocol = None


def guarded_protocol(prefer: str = "auto") -> type:
    """The guarded protocol class to pass as uvicorn's ``http=``: httptools when installed, else h11."""
    if prefer in ("auto", "httptools") and GuardedHttpToolsProtocol is not None:
        return GuardedHttpToolsProtocol
    if GuardedH11Protocol is None:
        raise ImportError("uvicorn's HTTP protocols are not importable")
    return GuardedH11Protocol
