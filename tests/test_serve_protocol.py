"""serve.protocol's guard on a fake transport, loop and base protocol: every limit at it and one past, no sockets.

The real uvicorn server is tested in test_serve_hardening.py; here each decision is checked in microseconds.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

pytest.importorskip("uvicorn")

from cifarbench.serve import protocol  # noqa: E402
from cifarbench.serve.protocol import REFUSED_LINGER_S, ConnectionLimits, error_response  # noqa: E402


class Handle:
    def __init__(self, delay: float, callback: Any) -> None:
        self.delay, self.callback, self.cancelled = delay, callback, False

    def cancel(self) -> None:
        self.cancelled = True


class Loop:
    def __init__(self) -> None:
        self.timers: list[Handle] = []

    def call_later(self, delay: float, callback: Any) -> Handle:
        h = Handle(delay, callback)
        self.timers.append(h)
        return h


class Transport:
    def __init__(self, eof: bool = True) -> None:
        self.out: list[bytes] = []
        self.closing = self.eof_written = False
        self.eof = eof

    def write(self, data: bytes) -> None:
        self.out.append(data)

    def can_write_eof(self) -> bool:
        return self.eof

    def write_eof(self) -> None:
        self.eof_written = True

    def close(self) -> None:
        self.closing = True

    def is_closing(self) -> bool:
        return self.closing


class Cycle:
    response_complete = False


class Base:
    """What the guard needs of uvicorn's protocol: it records calls; ``data_received`` starts a cycle when told."""

    def __init__(self, config: Any, connections: set, loop: Loop) -> None:
        self.config, self.connections, self.loop = config, connections, loop
        self.cycle: Any = None
        self.calls: list[tuple] = []
        self.start_cycle_on: bytes | None = None

    def connection_made(self, transport: Transport) -> None:
        self.transport = transport
        self.calls.append(("made",))

    def data_received(self, data: bytes) -> None:
        self.calls.append(("data", data))
        if self.start_cycle_on is not None and self.start_cycle_on in data:
            self.cycle = Cycle()

    def eof_received(self) -> Any:
        self.calls.append(("eof",))
        return "base-eof"

    def connection_lost(self, exc: Exception | None) -> None:
        self.calls.append(("lost", exc))

    def on_response_complete(self) -> None:
        self.calls.append(("complete",))


def guarded() -> type:
    """Built per test, not at import: mutation testing swaps _guarded's code after this module is imported."""
    return protocol._guarded(Base, "Guarded")


class Config:
    def __init__(self, limits: ConnectionLimits | None) -> None:
        if limits is not None:
            self.cifarbench_connection = limits


def make(limits: ConnectionLimits | None = None, open_connections: int = 0, eof: bool = True) -> tuple[Any, Transport]:
    loop = Loop()
    p = guarded()(config=Config(limits), connections=set(range(open_connections)), loop=loop)  # uvicorn: keywords
    t = Transport(eof)
    p.connection_made(t)
    return p, t


def parse(raw: bytes) -> tuple[str, dict[str, str], dict[str, Any]]:
    head, sep, body = raw.partition(b"\r\n\r\n")
    assert sep
    status, *lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines)
    assert len(headers) == len(lines)
    return status, headers, json.loads(body)


# --------------------------------------------------------------------------- error_response


def test_error_response_is_complete_json_with_the_security_headers() -> None:
    status, headers, body = parse(error_response(431, "too big"))
    assert status == "HTTP/1.1 431 Request Header Fields Too Large"
    assert body == {"error": "too big", "status": 431}
    assert headers == {"content-type": "application/json", "content-length": str(len(json.dumps(body))),
                       "connection": "close", "content-security-policy": protocol.CSP,
                       "x-content-type-options": "nosniff", "referrer-policy": "no-referrer"}
    raw = error_response(503, "busy", 0)
    assert parse(raw)[1]["retry-after"] == "0" and raw.startswith(b"HTTP/1.1 503 Service Unavailable\r\n")
    assert raw.endswith(b'\r\n\r\n{"error": "busy", "status": 503}')
    assert parse(error_response(400, "caf\u00e9 \u2603"))[2]["error"] == "caf\u00e9 \u2603"  # JSON-escaped


def test_csp_and_defaults() -> None:
    assert protocol.CSP.startswith("default-src 'self'; ") and "frame-ancestors 'none'" in protocol.CSP
    assert "object-src 'none'" in protocol.CSP and "script-src 'self'" in protocol.CSP
    d = ConnectionLimits()
    assert (d.header_timeout_s, d.max_header_bytes, d.max_connections, d.retry_after_s) == (10.0, 65536, 1000, 1)
    assert REFUSED_LINGER_S == 1.0


# --------------------------------------------------------------------------- connections


def test_default_limits_when_the_config_has_none() -> None:
    p, _ = make(None)
    assert p._limits == ConnectionLimits()
    assert p.loop.timers[0].delay == 10.0


def test_connection_below_the_limit_is_served_and_gets_a_head_deadline() -> None:
    lim = ConnectionLimits(header_timeout_s=2.5, max_connections=3)
    p, t = make(lim, open_connections=2)
    assert p.calls == [("made",)] and t.out == [] and not p._refused
    (timer,) = p.loop.timers
    assert timer.delay == 2.5 and timer.callback == p._head_timed_out and p._head_timer is timer


@pytest.mark.parametrize("timeout, linger", [(10.0, REFUSED_LINGER_S), (0.25, 0.25)])
def test_connection_at_the_limit_gets_503_at_once_and_a_short_linger(timeout: float, linger: float) -> None:
    lim = ConnectionLimits(header_timeout_s=timeout, max_connections=3, retry_after_s=7)
    p, t = make(lim, open_connections=3)
    assert p.calls == [] and p._refused and p.transport is t
    (raw,) = t.out
    status, headers, body = parse(raw)
    assert status.startswith("HTTP/1.1 503 ") and headers["retry-after"] == "7"
    assert body == {"error": "too many open connections; retry shortly", "status": 503}
    assert t.eof_written and not t.closing
    (timer,) = p.loop.timers
    assert timer.delay == linger and timer.callback == t.close
    p.data_received(b"GET / HTTP/1.1\r\n\r\n")  # dropped
    assert p.eof_received() is None and p.calls == [] and len(t.out) == 1
    p.connection_lost(None)
    assert timer.cancelled and p.calls == [] and p._head_timer is None


def test_refused_without_half_close_support() -> None:
    p, t = make(ConnectionLimits(max_connections=1), open_connections=1, eof=False)
    assert len(t.out) == 1 and not t.eof_written


def test_refused_timer_firing_closes_without_a_second_answer() -> None:
    p, t = make(ConnectionLimits(max_connections=1), open_connections=1)
    p.loop.timers[0].callback()
    assert t.closing and len(t.out) == 1


def test_served_connection_passes_eof_and_loss_to_uvicorn() -> None:
    p, _ = make(ConnectionLimits())
    assert p.eof_received() == "base-eof"
    timer = p._head_timer
    err = OSError("x")
    p.connection_lost(err)
    assert p.calls[-2:] == [("eof",), ("lost", err)] and timer.cancelled and p._head_timer is None


# --------------------------------------------------------------------------- the request head


def head_of(n: int) -> bytes:
    """A request head of exactly ``n`` bytes, its blank line included."""
    base = b"GET / HTTP/1.1\r\nX: \r\n\r\n"
    return base[:-4] + b"a" * (n - len(base)) + b"\r\n\r\n"


@pytest.mark.parametrize("chunks", [1, 2, 7])
def test_head_at_the_limit_passes_one_byte_more_is_431(chunks: int) -> None:
    n = 100
    for size, refused in ((n, False), (n + 1, True)):
        p, t = make(ConnectionLimits(max_header_bytes=n))
        data = head_of(size)
        step = -(-len(data) // chunks)
        for i in range(0, len(data), step):
            p.data_received(data[i:i + step])
        if refused:
            status, _, body = parse(t.out[0])
            assert status.startswith("HTTP/1.1 431 ") and body["error"] == f"request head exceeds {n} bytes"
            assert t.closing and p._head_timer is None
            assert b"".join(d for c, *d in p.calls if c == "data" for d in d) == data[:len(data) - (len(data) - 1) % step - 1]
        else:
            assert t.out == [] and not t.closing and p._head_bytes == size
            assert b"".join(c[1] for c in p.calls if c[0] == "data") == data


def test_body_sent_with_the_head_is_not_counted() -> None:
    p, t = make(ConnectionLimits(max_header_bytes=100))
    p.data_received(head_of(100) + b"B" * 5000)
    assert t.out == [] and p._head_bytes == 100


def test_the_head_ends_at_the_first_blank_line_even_if_the_body_has_more() -> None:
    p, t = make(ConnectionLimits(max_header_bytes=100))
    p.data_received(head_of(100) + b"B" * 50 + b"\r\n\r\n" + b"C" * 50)
    assert t.out == [] and p._head_bytes == 100


def test_answer_and_close_can_carry_retry_after() -> None:
    p, t = make(ConnectionLimits())
    p._answer_and_close(503, "busy", 9)
    assert parse(t.out[0])[1]["retry-after"] == "9" and t.closing


@pytest.mark.parametrize("split", [1, 2, 3])
def test_head_end_straddling_two_reads_is_found(split: int) -> None:
    """The blank line cut after ``split`` of its 4 bytes: the body after it still does not count."""
    p, t = make(ConnectionLimits(max_header_bytes=100))
    data = head_of(100)
    cut = len(data) - 4 + split
    p.data_received(data[:cut])
    p.data_received(data[cut:] + b"B" * 500)
    assert t.out == [] and p._head_bytes == 100 and p._head_tail == (data + b"B" * 500)[-3:]


def test_a_started_request_stops_the_head_clock_until_its_response_is_complete() -> None:
    p, t = make(ConnectionLimits(max_header_bytes=100))
    p.start_cycle_on = b"\r\n\r\n"
    first = p._head_timer
    p.data_received(head_of(50))
    assert first.cancelled and p._head_timer is None and p._seen_cycle is p.cycle
    p.data_received(b"B" * 1000)  # the body: no head accounting, no 431
    assert t.out == []
    p.cycle.response_complete = False
    p.on_response_complete()  # a pipelined request still running: no new deadline
    assert p._head_timer is None and p.calls[-1] == ("complete",)
    p.cycle.response_complete = True
    p.on_response_complete()
    second = p._head_timer
    assert second is not None and second.delay == 10.0 and p._head_bytes == 0 and p._head_tail == b""
    p.cycle = None
    p.on_response_complete()  # idle: a fresh deadline, the old one cancelled
    assert second.cancelled and p._head_timer is not second
    t.close()
    third = p._head_timer
    p.on_response_complete()  # closing: no deadline
    assert p._head_timer is third


def test_same_cycle_seen_twice_does_not_cancel_a_new_deadline() -> None:
    p, _ = make(ConnectionLimits())
    p.start_cycle_on = b"\r\n\r\n"
    p.data_received(head_of(60))
    p.cycle.response_complete = True
    p.on_response_complete()
    armed = p._head_timer
    p.start_cycle_on = None
    p.data_received(b"GET")  # the old cycle is still the current one: the new head's deadline stays
    assert not armed.cancelled and p._head_timer is armed and p._head_bytes == 3


def test_head_counting_restarts_for_each_request() -> None:
    p, t = make(ConnectionLimits(max_header_bytes=100))
    p.start_cycle_on = b"\r\n\r\n"
    p.data_received(head_of(100))
    p.cycle.response_complete = True
    p.on_response_complete()
    p.data_received(head_of(100))  # 200 bytes on the connection, 100 per head
    assert t.out == []


# --------------------------------------------------------------------------- deadlines and answers


def test_idle_connection_is_closed_silently_at_its_deadline() -> None:
    p, t = make(ConnectionLimits(header_timeout_s=3))
    p.loop.timers[0].callback()
    assert t.closing and t.out == [] and p._head_timer is None


def test_half_sent_head_at_its_deadline_is_408() -> None:
    p, t = make(ConnectionLimits(header_timeout_s=2.5))
    p.data_received(b"GET / HT")
    p.loop.timers[0].callback()
    status, _, body = parse(t.out[0])
    assert status == "HTTP/1.1 408 Request Timeout" and body["error"] == "request head not received within 2.5 s"
    assert t.closing
    p2, t2 = make(ConnectionLimits(header_timeout_s=10.0))
    p2.data_received(b"G")
    p2.loop.timers[0].callback()
    assert parse(t2.out[0])[2]["error"] == "request head not received within 10 s"


def test_deadline_on_a_closing_connection_does_nothing() -> None:
    p, t = make(ConnectionLimits())
    p.data_received(b"GET")
    t.close()
    p.loop.timers[0].callback()
    assert t.out == [] and p._head_timer is None


def test_malformed_request_is_400_json_and_closed() -> None:
    p, t = make(ConnectionLimits())
    timer = p._head_timer
    p.send_400_response("Invalid method")
    status, headers, body = parse(t.out[0])
    assert status == "HTTP/1.1 400 Bad Request" and "retry-after" not in headers
    assert body == {"error": "malformed HTTP request: Invalid method", "status": 400}
    assert t.closing and timer.cancelled and p._head_timer is None
    p.send_400_response("again")  # already closing: nothing more is written
    assert len(t.out) == 1


# --------------------------------------------------------------------------- the classes uvicorn gets


def test_guarded_classes_and_the_choice() -> None:
    Guarded = guarded()
    assert Guarded.__name__ == Guarded.__qualname__ == "Guarded" and Guarded.__module__ == protocol.__name__
    assert Guarded.__mro__[1:3] == (protocol._GuardMixin, Base)
    h11 = protocol.GuardedH11Protocol
    from uvicorn.protocols.http.h11_impl import H11Protocol

    assert h11 is not None and issubclass(h11, H11Protocol) and h11.__qualname__ == "GuardedH11Protocol"
    assert protocol.guarded_protocol("h11") is h11
    ht = protocol.GuardedHttpToolsProtocol
    if ht is not None:
        assert ht.__qualname__ == "GuardedHttpToolsProtocol"
        assert protocol.guarded_protocol() is ht and protocol.guarded_protocol("httptools") is ht
    else:
        assert protocol.guarded_protocol() is h11


def test_choice_without_httptools_and_without_h11(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(protocol, "GuardedHttpToolsProtocol", None)
    assert protocol.guarded_protocol("auto") is protocol.GuardedH11Protocol
    assert protocol.guarded_protocol("httptools") is protocol.GuardedH11Protocol
    Guarded = guarded()
    monkeypatch.setattr(protocol, "GuardedHttpToolsProtocol", Guarded)
    assert protocol.guarded_protocol("h11") is protocol.GuardedH11Protocol
    monkeypatch.setattr(protocol, "GuardedH11Protocol", None)
    assert protocol.guarded_protocol("auto") is Guarded
    with pytest.raises(ImportError, match="^uvicorn's HTTP protocols are not importable$"):
        protocol.guarded_protocol("h11")


def test_the_guard_passes_positional_and_keyword_arguments_through() -> None:
    loop = Loop()
    p = guarded()(Config(None), {1}, loop=loop)
    assert (p.connections, p.loop, p._limits) == ({1}, loop, ConnectionLimits())
