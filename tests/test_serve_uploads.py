"""serve.uploads without a server: bodies fed to Starlette's Request chunk by chunk, every limit at it and one past."""

from __future__ import annotations

import asyncio
import io
from typing import Any

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("starlette")

from starlette.exceptions import HTTPException  # noqa: E402
from starlette.requests import Request  # noqa: E402

from cifarbench.serve import uploads  # noqa: E402
from cifarbench.serve.uploads import BodyMeter, ServeLimits, decode_guarded, limited_stream, read_uploads  # noqa: E402


def request(chunks: list[bytes], headers: dict[str, str]) -> tuple[Request, list[int]]:
    """A POST whose body arrives in ``chunks``; the list records how many chunks were read."""
    read: list[int] = []
    todo = list(chunks) or [b""]

    async def receive() -> dict[str, Any]:
        read.append(1)
        chunk = todo.pop(0)
        return {"type": "http.request", "body": chunk, "more_body": bool(todo)}

    scope = {"type": "http", "method": "POST", "path": "/", "query_string": b"",
             "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()]}
    return Request(scope, receive), read


def collect(req: Request, limit: int, meter: BodyMeter | None = None) -> bytes:
    async def go() -> bytes:
        return b"".join([c async for c in limited_stream(req, limit, meter)])

    return asyncio.run(go())


def uploads_of(chunks: list[bytes], ctype: str, limits: ServeLimits | None = None,
               meter: BodyMeter | None = None) -> tuple[list, str | None]:
    req, _ = request(chunks, {"content-type": ctype})
    return asyncio.run(read_uploads(req, limits or ServeLimits(), meter))


def multipart(parts: list[tuple[str, str | None, bytes]], boundary: str = "XyZ", close: bool = True) -> bytes:
    """A multipart/form-data body written by hand (name, filename or None for a field, bytes)."""
    out = b""
    for name, filename, data in parts:
        disp = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename is not None else "")
        out += f"--{boundary}\r\nContent-Disposition: {disp}\r\n".encode()
        out += (b"Content-Type: application/octet-stream\r\n" if filename is not None else b"") + b"\r\n" + data + b"\r\n"
    return out + (f"--{boundary}--\r\n".encode() if close else b"")


class Budget:
    def __init__(self) -> None:
        self.log: list[tuple[str, int]] = []

    def take(self, n: int) -> None:
        self.log.append(("take", n))

    def give_back(self, n: int) -> None:
        self.log.append(("give", n))


# --------------------------------------------------------------------------- ServeLimits


def test_limits_defaults_are_the_documented_ones() -> None:
    d = ServeLimits()
    assert (d.max_upload_bytes, d.max_pixels, d.max_images, d.timeout_s) == (10 * 2**20, 50_000_000, 128, 30.0)
    assert (d.max_active, d.max_queue, d.max_buffered_bytes) == (64, 256, 256 * 2**20)


@pytest.mark.parametrize("name", ["max_upload_bytes", "max_pixels", "max_images", "max_active", "max_buffered_bytes"])
def test_each_count_limit_accepts_1_and_refuses_0(name: str) -> None:
    assert getattr(ServeLimits(**{name: 1}), name) == 1
    with pytest.raises(ValueError, match=f"^{name} must be >= 1$"):
        ServeLimits(**{name: 0})


def test_queue_may_be_0_and_timeout_must_be_positive() -> None:
    assert ServeLimits(max_queue=0).max_queue == 0 and ServeLimits(timeout_s=1e-9).timeout_s == 1e-9
    for bad in ({"max_queue": -1}, {"timeout_s": 0.0}, {"timeout_s": -1.0}, {"timeout_s": float("nan")}):
        with pytest.raises(ValueError, match="^max_queue must be >= 0 and timeout_s > 0$"):
            ServeLimits(**bad)


# --------------------------------------------------------------------------- BodyMeter


def test_meter_takes_from_the_budget_and_gives_back_what_it_held() -> None:
    b = Budget()
    m = BodyMeter(b)  # type: ignore[arg-type]
    m.take(3)
    m.take(4)
    assert m.held == 7 and b.log == [("take", 3), ("take", 4)]
    m.release()
    assert m.held == 0 and b.log[-1] == ("give", 7)
    m.release()
    assert b.log[-1] == ("give", 0)
    free = BodyMeter(None)
    free.take(5)
    assert free.held == 5 and free.budget is None
    free.release()
    assert free.held == 0


# --------------------------------------------------------------------------- limited_stream


def test_declared_length_at_the_limit_passes_one_past_is_413_before_reading() -> None:
    req, read = request([b"abcd"], {"content-length": "4"})
    assert collect(req, 4) == b"abcd"
    req, read = request([b"abcde"], {"content-length": "5"})
    with pytest.raises(HTTPException) as err:
        collect(req, 4)
    assert err.value.status_code == 413 and read == []
    assert err.value.detail == "request body exceeds the limit of 4 bytes (3.8147e-06 MiB)"


def test_streamed_body_at_the_limit_passes_one_past_is_413_and_the_meter_counts_chunks() -> None:
    b = Budget()
    meter = BodyMeter(b)  # type: ignore[arg-type]
    req, _ = request([b"ab", b"cd", b""], {})
    assert collect(req, 4, meter) == b"abcd" and b.log == [("take", 2), ("take", 2), ("take", 0)] and meter.held == 4
    req, _ = request([b"ab", b"cde"], {})
    meter2 = BodyMeter(None)
    with pytest.raises(HTTPException) as err:
        collect(req, 4, meter2)
    assert err.value.status_code == 413 and meter2.held == 2  # the chunk past the limit is never taken


@pytest.mark.parametrize("declared", ["", "-1", "4.0", " 4", "0x4", "four"])
def test_bad_content_length_is_400(declared: str) -> None:
    req, read = request([b"abcd"], {"content-length": declared})
    with pytest.raises(HTTPException) as err:
        collect(req, 100)
    assert (err.value.status_code, err.value.detail) == (400, "invalid Content-Length header") and read == []


def test_too_large_message_in_bytes_and_mib() -> None:
    e = uploads.too_large(10 * 2**20)
    assert (e.status_code, e.detail) == (413, "request body exceeds the limit of 10485760 bytes (10 MiB)")


# --------------------------------------------------------------------------- read_uploads


def test_multipart_files_names_and_top_k() -> None:
    body = multipart([("file", "a.png", b"AAA"), ("top_k", None, b"3"), ("other", None, b"x"),
                      ("img", "", b"BB"), ("file", "n" * 201, b"C")])
    ups, k = uploads_of([body[:7], body[7:]], "Multipart/Form-Data; boundary=XyZ")
    assert ups == [("a.png", b"AAA"), ("img", b"BB"), ("n" * 200, b"C")] and k == "3"
    assert uploads.MAX_NAME == 200


def test_multipart_counts_against_the_meter() -> None:
    body = multipart([("file", "a.png", b"AAA")])
    meter = BodyMeter(None)
    uploads_of([body], "multipart/form-data; boundary=XyZ", meter=meter)
    assert meter.held == len(body)


def test_multipart_over_the_byte_limit_is_413() -> None:
    body = multipart([("file", "a.png", b"A" * 50)])
    assert uploads_of([body], "multipart/form-data; boundary=XyZ", ServeLimits(max_upload_bytes=len(body)))[0]
    with pytest.raises(HTTPException) as err:
        uploads_of([body], "multipart/form-data; boundary=XyZ", ServeLimits(max_upload_bytes=len(body) - 1))
    assert err.value.status_code == 413


def test_multipart_file_count_field_count_and_field_size_at_the_limit_and_one_past() -> None:
    ct = "multipart/form-data; boundary=XyZ"
    three = multipart([("file", f"{i}.png", b"x") for i in range(3)])
    assert len(uploads_of([three], ct, ServeLimits(max_images=3))[0]) == 3
    with pytest.raises(HTTPException) as err:
        uploads_of([three], ct, ServeLimits(max_images=2))
    assert err.value.status_code == 400 and err.value.detail.startswith("bad multipart body: ")
    fields = [(f"f{i}", None, b"v") for i in range(16)]
    assert uploads_of([multipart(fields)], ct) == ([], None)
    with pytest.raises(HTTPException) as err:
        uploads_of([multipart(fields + [("f16", None, b"v")])], ct)
    assert err.value.status_code == 400
    assert uploads_of([multipart([("top_k", None, b"1" * 4096)])], ct)[1] == "1" * 4096
    with pytest.raises(HTTPException) as err:
        uploads_of([multipart([("top_k", None, b"1" * 4097)])], ct)
    assert err.value.status_code == 400 and "bad multipart body" in err.value.detail


def test_multipart_without_its_closing_boundary_is_400() -> None:
    with pytest.raises(HTTPException) as err:
        uploads_of([multipart([("file", "a.png", b"AAA")], close=False)], "multipart/form-data; boundary=XyZ")
    assert (err.value.status_code, err.value.detail) == (
        400, "bad multipart body: truncated (the closing boundary never arrived)")


def test_multipart_parts_stay_in_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    """A part larger than Starlette's 1 MiB spool size is still not rolled to a temporary file."""
    import tempfile

    monkeypatch.setattr(tempfile, "TemporaryFile", lambda *a, **k: pytest.fail("an upload went to disk"))
    big = bytes(range(256)) * 8192  # 2 MiB
    ups, _ = uploads_of([multipart([("file", "big.bin", big)])], "multipart/form-data; boundary=XyZ",
                        ServeLimits(max_upload_bytes=3 * 2**20))
    assert ups == [("big.bin", big)]


@pytest.mark.parametrize("ctype", ["image/png", "IMAGE/JPEG; q=1", "application/octet-stream", "", "image/x-anything"])
def test_raw_bodies_are_one_unnamed_upload(ctype: str) -> None:
    assert uploads_of([b"ab", b"c"], ctype) == ([(None, b"abc")], None)
    assert uploads_of([b""], ctype) == ([], None)  # no body: no image


@pytest.mark.parametrize("ctype", ["text/plain", "application/json", "multipart/mixed; boundary=x", "imagex/png"])
def test_other_content_types_are_415(ctype: str) -> None:
    with pytest.raises(HTTPException) as err:
        uploads_of([b"abc"], ctype)
    bare = ctype.split(";")[0]
    assert err.value.status_code == 415
    assert err.value.detail == (f"unsupported Content-Type {bare!r}: send multipart/form-data, image/* or "
                                "application/octet-stream")


def test_raw_body_limit_and_meter() -> None:
    meter = BodyMeter(None)
    assert uploads_of([b"abcd"], "image/png", ServeLimits(max_upload_bytes=4), meter)[0] == [(None, b"abcd")]
    assert meter.held == 4
    with pytest.raises(HTTPException) as err:
        uploads_of([b"abcde"], "image/png", ServeLimits(max_upload_bytes=4))
    assert err.value.status_code == 413


# --------------------------------------------------------------------------- decode_guarded


def png(w: int, h: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((h, w, 3), 200, np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def test_decode_at_max_pixels_passes_one_past_is_refused_from_the_header() -> None:
    res, pixels = decode_guarded(png(40, 30), 8, None, 1200)
    assert res.ok and res.array is not None and res.array.shape == (8, 8, 3) and pixels == 1200
    res, pixels = decode_guarded(png(40, 30), 8, None, 1199)
    assert not res.ok and res.array is None and pixels == 0
    assert res.error == "image too large: 40x30 = 1200 pixels exceeds the limit of 1199"


def test_decode_of_a_non_image_reports_the_loaders_reason_and_zero_pixels() -> None:
    res, pixels = decode_guarded(b"not an image", 8, None, 10)
    assert not res.ok and res.error and pixels == 0


def test_decompression_bomb_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # Pillow refuses beyond twice this
    res, pixels = decode_guarded(png(20, 20), 8, None, 10**6)
    assert not res.ok and pixels == 0 and res.error.startswith("decompression bomb refused: ")


def test_decode_passes_size_and_resize_to_the_shared_loader() -> None:
    """pad on a 40x10 black image: white borders above and below (an independent read: the pixel values)."""
    buf = io.BytesIO()
    Image.fromarray(np.zeros((10, 40, 3), np.uint8)).save(buf, "PNG")
    res, pixels = decode_guarded(buf.getvalue(), (6, 8), "pad", 400)
    assert res.ok and res.array is not None and pixels == 400
    assert res.array.shape == (6, 8, 3)  # size is (height, width)
    assert res.array[0].min() == 255 and res.array[3].max() == 0  # white pad row, black image row
    cropped, _ = decode_guarded(buf.getvalue(), (6, 8), None, 400)  # the default, center-crop: all black
    assert cropped.array is not None and cropped.array.max() == 0


def test_no_content_type_header_is_a_raw_body() -> None:
    req, _ = request([b"abc"], {})
    assert asyncio.run(read_uploads(req, ServeLimits())) == ([(None, b"abc")], None)


def test_decode_uses_the_servers_limit_not_the_process_default() -> None:
    """A process-wide default (bench's --max-pixels) far below the server's limit must not refuse the image."""
    from cifarbench.data.images import default_max_pixels

    with default_max_pixels(10):
        res, pixels = decode_guarded(png(40, 30), 8, None, 1200)
    assert res.ok and pixels == 1200


@pytest.mark.parametrize("limit, ok", [(2_250_000, True), (2_249_999, False)])
def test_an_icon_hiding_a_big_image_meets_the_servers_limit(limit: int, ok: bool) -> None:
    """An ICO's header says 16x16, its entry is 1500x1500: only the decode (sandboxed) can see it, under this limit."""
    from hostile import ico_png

    res, pixels = decode_guarded(ico_png(1500, 1500), 8, None, limit)
    assert res.ok is ok and pixels == 0  # the header was not opened here: ICO's open would decode
    if not ok:
        assert f"over the limit of {limit:,} pixels" in res.error
