"""Request bodies to images, under limits: the part of serving that faces untrusted input.

Bodies are counted while they stream in (a missing or lying Content-Length does not
help), multipart parts stay in memory (never spooled to a temporary file), client
file names are only echoed back, and every image's pixel count is checked from its
header before anything is decoded. Body bytes are also counted against the server-wide
``UploadBudget`` while they arrive, and a multipart body that ends before its closing
boundary is a multipart error, not "no images".
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass
from typing import AsyncIterator, Optional

from PIL import Image
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import Request

from cifarbench.data import decode_sandbox
from cifarbench.data.images import DEFAULT_MAX_PIXELS, ImageResult, load_image
from cifarbench.data.transform import SizeLike
from cifarbench.serve.admission import UploadBudget

RAW_TYPES = ("application/octet-stream", "")  # plus any image/*; no Content-Type: the body is sniffed as an image
# python-multipart logs each parse error as a warning before raising it ("Expected boundary character 79,
# got 88 at index 4"): the client gets a 400 that says so; the server log keeps only the request's line.
for _name in ("python_multipart", "multipart"):
    logging.getLogger(_name).setLevel(logging.CRITICAL + 1)
MAX_NAME = 200

Upload = tuple[Optional[str], bytes]  # (client's file name, bytes)


@dataclass(frozen=True)
class ServeLimits:
    """What one request may cost; every limit answers with a JSON 4xx, never a crash."""

    max_upload_bytes: int = 10 * 1024 * 1024
    max_pixels: int = DEFAULT_MAX_PIXELS  # per image, checked from the header before decoding
    max_images: int = 128  # per request
    timeout_s: float = 30.0  # upload + decode + inference of one request (queueing included)
    max_active: int = 64  # requests decoding/inferring at once
    max_queue: int = 256  # requests waiting for a turn; more get 503
    max_buffered_bytes: int = 256 * 1024 * 1024  # request bodies held in memory, all requests together

    def __post_init__(self) -> None:
        for name in ("max_upload_bytes", "max_pixels", "max_images", "max_active", "max_buffered_bytes"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        if self.max_queue < 0 or not self.timeout_s > 0:
            raise ValueError("max_queue must be >= 0 and timeout_s > 0")


class BodyMeter:
    """One request's share of the ``UploadBudget``; ``release`` when its bytes are gone."""

    def __init__(self, budget: UploadBudget | None) -> None:
        self.budget, self.held = budget, 0

    def take(self, n: int) -> None:
        if self.budget is not None:
            self.budget.take(n)
        self.held += n

    def release(self) -> None:
        if self.budget is not None:
            self.budget.give_back(self.held)
        self.held = 0


class _MultiPartParser(MultiPartParser):
    """Starlette's parser, but it notices a body that stops before the closing boundary."""

    ended = False

    def on_end(self) -> None:
        self.ended = True


async def read_uploads(request: Request, limits: ServeLimits,
                       meter: BodyMeter | None = None) -> tuple[list[Upload], str | None]:
    """(client name, bytes) per image, read into memory under the body limit; plus a form ``top_k``.

    Raises ``admission.Busy`` when the server-wide body budget (``meter``) is spent.
    """
    meter = meter or BodyMeter(None)
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype == "multipart/form-data":
        parser = _MultiPartParser(request.headers, limited_stream(request, limits.max_upload_bytes, meter),
                                  max_files=limits.max_images, max_fields=16, max_part_size=4096)
        parser.spool_max_size = limits.max_upload_bytes + 1  # keep every part in memory, never on disk
        try:
            form = await parser.parse()
        except MultiPartException as exc:
            raise HTTPException(400, f"bad multipart body: {exc.message}") from None
        if not parser.ended:
            await form.close()
            raise HTTPException(400, "bad multipart body: truncated (the closing boundary never arrived)")
        uploads: list[Upload] = []
        form_k: str | None = None
        try:
            for key, value in form.multi_items():
                if isinstance(value, UploadFile):
                    uploads.append(((value.filename or key)[:MAX_NAME], await value.read()))
                elif key == "top_k":
                    form_k = value
        finally:
            await form.close()
        return uploads, form_k
    if ctype.startswith("image/") or ctype in RAW_TYPES:
        body = b"".join([c async for c in limited_stream(request, limits.max_upload_bytes, meter)])
        return ([(None, body)] if body else []), None
    raise HTTPException(415, f"unsupported Content-Type {ctype!r}: send multipart/form-data, image/* "
                             "or application/octet-stream")


async def limited_stream(request: Request, limit: int, meter: BodyMeter | None = None) -> AsyncIterator[bytes]:
    """The body, refused with 413 as soon as it is known to exceed ``limit`` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise HTTPException(400, "invalid Content-Length header")
        if int(declared) > limit:
            raise too_large(limit)
    received = 0
    async for chunk in request.stream():
        received += len(chunk)
        if received > limit:
            raise too_large(limit)
        if meter is not None:
            meter.take(len(chunk))
        yield chunk


def too_large(limit: int) -> HTTPException:
    return HTTPException(413, f"request body exceeds the limit of {limit} bytes ({limit / 2**20:g} MiB)")


def decode_guarded(data: bytes, size: "SizeLike", resize: str | None, max_pixels: int) -> tuple[ImageResult, int]:
    """Refuse oversized images from their header alone, then decode with the shared loader.

    Returns the result and the pixel count the header declared (0 if unreadable), so the
    caller knows when a big decode is worth returning memory to the OS. The explicit check
    does not depend on Pillow's process-wide limit, so concurrent decodes cannot weaken it.
    """
    w = h = 0  # not an image (load_image words the reason), or one whose open decodes (ICO: load_image sandboxes it)
    if not decode_sandbox.decodes_at_open(data[:4]):
        try:
            with Image.open(io.BytesIO(data)) as im:
                w, h = im.size
        except Image.DecompressionBombError as exc:
            return ImageResult(None, f"decompression bomb refused: {exc}"), 0
        except Exception:
            pass
    if w * h > max_pixels:
        return ImageResult(None, f"image too large: {w}x{h} = {w * h} pixels exceeds the limit of {max_pixels}"), 0
    return load_image(data, size=size, resize=resize, max_pixels=max_pixels), w * h
