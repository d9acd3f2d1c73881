"""Decode the formats whose decoders can outgrow their header's price in a child process with a cap.

The loader prices a decode from the image header (``image_reduce.decode_cost``) and holds that much of
the ``DecodeBudget``. That price is exact for the C decoders of the common formats (JPEG, PNG, WebP,
PPM, uncompressed BMP), whose work is bounded by the pixels the header declares. Other decoders are
not: Pillow's Python decoders (BLP, BMP RLE, DDS, QOI, ...) build the image in Python loops (a
148-byte BLP that claims 1x33.5 MP spins and allocates three copies of its claim), and containers
(ICNS, MPO, PSD, TIFF, GIF, FLI, ...) decode parts whose size the outer header does not state.

So every other image is decoded in a sandbox: a long-lived child process (started on first use, one
per process that decodes) whose address space is capped at what it had after start-up plus
``memory`` bytes, and that is killed when one decode takes longer than ``seconds``. An allocation past
the cap fails inside the child (one "out of memory" error for that file); a spin ends at the deadline
with a clear error; a crash kills only the child, which the next file restarts. While the child
decodes, the caller holds ``memory`` bytes of its decode budget, so the budget keeps bounding what
all decodes of a run allocate together. A header already priced above the cap is refused at once.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import select
import struct
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from typing import IO, Any, Iterator

import numpy as np
from PIL import Image

from cifarbench.data.decode_budget import MIB, process_budget

# C decoders whose work and memory follow the header's pixel count: decoded in the calling process.
TRUSTED_FORMATS = frozenset(("JPEG", "PNG", "WEBP", "PPM", "BMP", "DIB", "AVIF", "HEIF"))
DEFAULT_MEMORY = 128 * MIB  # per sandboxed decode, on top of the child's own start-up size
DEFAULT_SECONDS = 5.0  # per sandboxed decode
_OOM = "out of memory while decoding"
_DIED = "decoder process died (out of memory, or a crash inside an image decoder)"
_HEAD = struct.Struct("!I")
_BODY = struct.Struct("!Q")


class DecodeRefused(Exception):
    """A sandboxed decode that failed for a reason the loader reports as the file's error."""


@dataclass(frozen=True)
class SandboxLimits:
    memory: int = DEFAULT_MEMORY
    seconds: float = DEFAULT_SECONDS
    enabled: bool = True


_limits = SandboxLimits()
_in_child = False


def configure(limits: SandboxLimits) -> SandboxLimits:
    """Set this process's sandbox limits (children already started keep theirs); returns the old ones."""
    global _limits
    if limits.memory < 4 * MIB or limits.seconds <= 0:
        raise ValueError("sandbox needs at least 4 MiB and a positive time limit")
    old, _limits = _limits, limits
    if (old.memory, old.seconds) != (limits.memory, limits.seconds):
        _POOL.close()
    return old


def limits() -> SandboxLimits:
    return _limits


_local = threading.local()
# magic numbers of the trusted formats except BMP (whose RLE variants use a Python decoder)
_TRUSTED_MAGIC = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"P1", b"P2", b"P3", b"P4", b"P5", b"P6", b"P7", b"Pf", b"PF")


@contextlib.contextmanager
def deadline(until: float | None) -> Iterator[None]:
    """Sandboxed decodes in this thread end by ``until`` (``time.monotonic()``): a request's own time limit."""
    old, _local.deadline = getattr(_local, "deadline", None), until
    try:
        yield
    finally:
        _local.deadline = old


# Formats whose Image.open already decodes pixels: Pillow loads an ICO's chosen entry (an embedded PNG or BMP that
# may claim 8000x8000 behind a 16x16 directory) inside open() to learn its real size, so the open itself belongs in
# the sandbox, decided from the magic number before Pillow sees the file.
_DECODES_AT_OPEN = (b"\x00\x00\x01\x00",)  # ICO


def decodes_at_open(head: bytes | bytearray | memoryview) -> bool:
    """From the first 4 bytes: a format whose ``Image.open`` decodes an image (ICO)."""
    return bytes(head[:4]) in _DECODES_AT_OPEN


def wanted_before_open(head: bytes | bytearray | memoryview) -> bool:
    """Whether this process must hand the file to the sandbox before even opening it."""
    return not _in_child and _limits.enabled and decodes_at_open(head)


def looks_trusted(data: bytes | bytearray | memoryview) -> bool:
    """From the first bytes only: JPEG, PNG, PNM or WebP, decoded here without the sandbox (a server
    keeps its CPU decode slots for these, so hostile uploads queue apart from ordinary ones)."""
    head = bytes(data[:16])
    return head.startswith(_TRUSTED_MAGIC) or (head[:4] == b"RIFF" and head[8:12] == b"WEBP")


def wanted(im: Image.Image) -> bool:
    """Whether ``im`` (opened, not loaded) must be decoded in the sandbox."""
    if _in_child or not _limits.enabled:
        return False
    if im.format not in TRUSTED_FORMATS:
        return True
    # a Python decoder (BMP RLE, ...) in a trusted container spins and allocates as it likes
    return any(t.codec_name in Image.DECODERS for t in getattr(im, "tile", ()) or ())


def decode(fp: IO[bytes], fmt: str | None, cost: int, **load_args: Any) -> np.ndarray:
    """Decode the image in ``fp`` (positioned anywhere) in the sandbox; raises ``DecodeRefused``.

    ``load_args``: ``load_image``'s keyword arguments (JSON values; lists come back as tuples).
    """
    lim = _limits
    if cost >= lim.memory:
        raise DecodeRefused(f"image too large for its format: {fmt} needs {cost / 1e6:,.0f} MB to decode, over the "
                            f"{lim.memory / MIB:g} MiB a {fmt} decode may use")
    name = getattr(fp, "name", None)
    if isinstance(name, int):  # a big file streamed from its descriptor (images._read_source): the child opens it
        name = _fd_path(name)
    if isinstance(name, str) and os.path.isfile(name):
        meta, payload = {"path": name}, b""
    else:
        size = fp.seek(0, os.SEEK_END)
        if size > lim.memory:  # never read a file whole into this process just to pipe it to the child
            raise DecodeRefused(f"image too large for its format: a {size / 1e6:,.0f} MB {fmt} file, over the "
                                f"{lim.memory / MIB:g} MiB a {fmt} decode may use")
        fp.seek(0)
        meta, payload = {"path": None}, fp.read()
    meta["args"] = load_args
    until = getattr(_local, "deadline", None)
    with process_budget().hold(lim.memory):
        seconds = lim.seconds if until is None else min(lim.seconds, until - time.monotonic())
        if seconds <= 0:
            raise DecodeRefused("not decoded: the request's time limit had passed")
        try:
            return _POOL.run(meta, payload, SandboxLimits(lim.memory, seconds))
        except DecodeRefused as exc:
            if str(exc) != _OOM:
                raise
            raise DecodeRefused(f"{_OOM} (a {fmt} decode may use {lim.memory / MIB:g} MiB)") from None


def _fd_path(fd: int) -> str | None:
    """The file an open descriptor reads (Linux's /proc), or None."""
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return None


# --------------------------------------------------------------------------- parent side
class _Child:
    def __init__(self, lim: SandboxLimits) -> None:
        env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",
                   CIFARBENCH_SANDBOX_MEMORY=str(lim.memory))
        self.proc = subprocess.Popen([sys.executable, "-c", "from cifarbench.data.sandbox_child import main; main()"],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL, env=env, close_fds=True)
        assert self.proc.stdout is not None and self.proc.stdin is not None
        self.rfd, self.w = self.proc.stdout.fileno(), self.proc.stdin
        self.ready = False

    def _read(self, n: int, deadline: float) -> bytes:
        buf = bytearray()
        while len(buf) < n:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.rfd], [], [], left)[0]:
                raise TimeoutError
            chunk = os.read(self.rfd, n - len(buf))
            if not chunk:
                raise EOFError
            buf += chunk
        return bytes(buf)

    def request(self, meta: dict[str, Any], payload: bytes, seconds: float) -> np.ndarray:
        if not self.ready:  # start-up (imports) is not part of the decode's time limit
            self._read(1, time.monotonic() + 120)
            self.ready = True
        head = json.dumps(meta).encode()
        self.w.write(_HEAD.pack(len(head)) + head + _BODY.pack(len(payload)))
        self.w.write(payload)
        self.w.flush()
        deadline = time.monotonic() + seconds
        reply = json.loads(self._read(_HEAD.unpack(self._read(_HEAD.size, deadline))[0], deadline))
        if reply.get("error") is not None:
            raise DecodeRefused(reply["error"])
        h, w = reply["shape"]
        data = self._read(h * w * 3, deadline)
        return np.frombuffer(bytearray(data), dtype=np.uint8).reshape(h, w, 3)

    def kill(self) -> None:
        try:
            self.proc.kill()
            self.proc.wait(5)
        except Exception:
            pass
        for f in (self.proc.stdin, self.proc.stdout):
            try:
                f.close()  # type: ignore[union-attr]
            except Exception:
                pass


class _Pool:
    """One child per process: sandboxed decodes are rare, so they take turns rather than cost memory."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.child: _Child | None = None
        self.pid = os.getpid()

    def run(self, meta: dict[str, Any], payload: bytes, lim: SandboxLimits) -> np.ndarray:
        with self.lock:
            if self.pid != os.getpid():  # forked: the parent's child is not ours
                self.child, self.pid = None, os.getpid()
            if self.child is None or self.child.proc.poll() is not None:
                if self.child is not None:
                    self.child.kill()
                self.child = _Child(lim)
            child = self.child
            try:
                return child.request(meta, payload, lim.seconds)
            except TimeoutError:
                child.kill()
                self.child = None
                raise DecodeRefused(f"decoding took longer than {lim.seconds:g} s; stopped") from None
            except (EOFError, OSError, ValueError):
                child.kill()
                self.child = None
                raise DecodeRefused(_DIED) from None

    def close(self) -> None:
        with self.lock:
            if self.child is not None and self.pid == os.getpid():
                self.child.kill()
            self.child = None


_POOL = _Pool()
atexit.register(_POOL.close)
