"""fd-2 capture: what C code writes during the block is kept, nothing reaches the real fd 2."""

from __future__ import annotations

import ctypes
import os
import threading

import pytest

from cifarbench.data.cstderr import capture_fd2


def _c_write(text: bytes) -> None:
    libc = ctypes.CDLL(None)
    libc.write(2, text, len(text))  # below Python, like libtiff's fprintf(stderr)


def test_capture_keeps_the_text_and_restores_fd2(capfd: pytest.CaptureFixture[str]) -> None:
    with capture_fd2() as cap:
        _c_write(b"TIFFReadDirectory: Warning, unknown tag 50000.\n\nZIPDecode: Decoding error at scanline 0\n")
    os.write(2, b"after\n")
    assert capfd.readouterr().err == "after\n"
    assert cap.first_line() == "TIFFReadDirectory: Warning, unknown tag 50000."
    assert "ZIPDecode" in cap.text


def test_capture_is_bounded_and_first_line_is_short() -> None:
    with capture_fd2() as cap:
        _c_write(b"x" * 100_000)
    assert len(cap.text) == 4096 and len(cap.first_line(limit=50)) == 50


def test_captures_in_threads_do_not_mix(capfd: pytest.CaptureFixture[str]) -> None:
    got: dict[int, str] = {}

    def work(i: int) -> None:
        with capture_fd2() as cap:
            _c_write(f"thread {i}\n".encode())
        got[i] = cap.text

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert got == {i: f"thread {i}\n" for i in range(8)} and capfd.readouterr().err == ""


def test_a_progress_bar_redraw_is_not_taken_for_the_librarys_message() -> None:
    with capture_fd2() as cap:
        _c_write(b"\x1b[2K\rclassify 40% 12/30\r\nTIFFFillStrip: Read error on strip 3\n")
    assert cap.first_line() == "TIFFFillStrip: Read error on strip 3"


APART = r"""
import ctypes, logging, sys, threading
from cifarbench.data.cstderr import capture_fd2, python_stderr_apart

early = logging.getLogger("early")
early.addHandler(logging.StreamHandler())  # on sys.stderr before the move, like uvicorn's in a worker
assert python_stderr_apart() and python_stderr_apart()  # idempotent
late = logging.getLogger("late")
late.addHandler(logging.StreamHandler())
inside, done = threading.Event(), threading.Event()

def decode():
    with capture_fd2() as cap:
        inside.set()
        ctypes.CDLL(None).write(2, b"libtiff says\n", 13)
        done.wait(60)
    print(repr(cap.text))

t = threading.Thread(target=decode)
t.start()
inside.wait(60)
early.warning("early handler line")  # another thread's log while the capture holds fd 2
late.warning("late handler line")
print("plain print line", file=sys.stderr)
done.set()
t.join()
"""


def test_python_stderr_apart_keeps_other_threads_lines_out_of_a_capture() -> None:
    """serve's log lines and tracebacks must reach the log, not a decode's capture (or an upload's error)."""
    import subprocess
    import sys

    res = subprocess.run([sys.executable, "-c", APART], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == repr("libtiff says\n")  # the capture holds the C library's line only
    assert res.stderr.splitlines() == ["early handler line", "late handler line", "plain print line"]
