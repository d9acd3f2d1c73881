"""Capture what C libraries write straight to file descriptor 2 while one image decodes.

libtiff (and some other codecs' default handlers) print warnings and errors with ``fprintf(stderr)``,
below Python: a corrupt TIFF can print hundreds of lines, past ``--quiet``, into cron mail or a
server log. The loader runs such decodes with fd 2 pointed at a temporary file and keeps the first
line as part of the file's error. Decodes that capture are serialised within a process (fd 2 is
process-wide), so every line belongs to the file being decoded; decoders that never write to
stderr skip the capture and run in parallel.

A server has other threads that keep writing while one decode captures (uvicorn's log, tracebacks):
``python_stderr_apart`` moves Python's own stderr onto a descriptor of its own, so only C libraries'
direct writes to fd 2 are ever captured.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
import threading
from typing import IO, Iterator

_LOCK = threading.Lock()
MAX_KEEP = 4096  # bytes of captured text kept per decode


class Captured:
    """The text written to fd 2 during the ``with`` block (available after it ends)."""

    def __init__(self) -> None:
        self.text = ""

    def first_line(self, limit: int = 160) -> str:
        """The first line a C library wrote; terminal redraws (a progress bar's ANSI codes) are skipped."""
        for line in self.text.split("\n"):
            if "\x1b" in line or "\r" in line.rstrip("\r"):  # a redraw: escape codes or carriage returns
                continue
            line = " ".join(line.split())
            if line:
                return line if len(line) <= limit else line[: limit - 1] + "…"
        return ""


@contextlib.contextmanager
def capture_fd2() -> Iterator[Captured]:
    """Redirect fd 2 to a temp file for the block; the captured text lands in the yielded object."""
    out = Captured()
    with _LOCK:
        with contextlib.suppress(Exception):
            sys.stderr.flush()  # Python's own buffered text goes where it was meant to
        try:
            saved = os.dup(2)
        except OSError:  # no fd 2 at all (a daemon): nothing can reach a terminal anyway
            yield out
            return
        try:
            tmp = _scratch()
            os.dup2(tmp.fileno(), 2)
            try:
                yield out
            finally:
                os.dup2(saved, 2)
                tmp.seek(0)
                out.text = tmp.read(MAX_KEEP).decode("utf-8", "replace")
        finally:
            os.close(saved)


_APART: list[IO[str]] = []  # the stream python_stderr_apart made, once per process


def python_stderr_apart() -> bool:
    """Point ``sys.stderr`` and the logging handlers that write to it at a dup of fd 2.

    Why: the capture redirects fd 2 for the whole process. Without this, a log line or traceback that
    another thread writes while a TIFF decodes would vanish into the capture, and its first line could
    become that upload's error. Call it once in a long-running process with threads (``serve``);
    idempotent. False where there is no fd 2 to copy.
    """
    if _APART:
        return True
    try:
        fd = os.dup(2)
    except OSError:
        return False
    old = sys.stderr
    with contextlib.suppress(Exception):
        old.flush()
    new = os.fdopen(fd, "w", buffering=1, encoding=getattr(old, "encoding", None) or "utf-8",
                    errors="backslashreplace")
    sys.stderr = new
    _APART.append(new)
    loggers = [logging.getLogger()] + [lg for lg in logging.Logger.manager.loggerDict.values()
                                       if isinstance(lg, logging.Logger)]
    for handler in (h for lg in loggers for h in lg.handlers):
        if isinstance(handler, logging.StreamHandler) and handler.stream in (old, sys.__stderr__):
            handler.setStream(new)  # handlers configured before this call (uvicorn's, in worker processes)
    return True


_SCRATCH: list[IO[bytes]] = []  # one unlinked temp file per process, reused (used under _LOCK only)


def _scratch() -> IO[bytes]:
    if not _SCRATCH:
        _SCRATCH.append(tempfile.TemporaryFile())
    tmp = _SCRATCH[0]
    tmp.seek(0)
    tmp.truncate()
    return tmp
