"""Keep TensorFlow, absl, CUDA, tf2onnx and the TFLite converter from flooding stderr.

A conversion on a CPU machine printed ~30 lines ("Could not find cuda drivers", "failed call
to cuInit", absl's "All log messages before absl::InitializeLog()", converter statistics).
Most come from native code, so log levels alone do not catch them: the environment is set
before TensorFlow is imported and, around the work itself, file descriptor 2 goes to a
temporary file while Python's own ``sys.stderr`` keeps writing to the terminal.
``verbose=True`` leaves everything as it is.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
import tempfile
import warnings
from typing import Iterator

_ENV = {
    "TF_CPP_MIN_LOG_LEVEL": "3",  # tsl/TensorFlow C++ logging: errors too (cuInit failures are "errors")
    "GLOG_minloglevel": "3",
    "GRPC_VERBOSITY": "ERROR",
}
_LOGGERS = ("tensorflow", "absl", "tf2onnx", "h5py", "onnxruntime", "keras")


def quiet_tensorflow() -> None:
    """Set the log-level variables TensorFlow reads at import time (a user's own setting wins)."""
    if os.environ.get("CIFARBENCH_VERBOSE_FRAMEWORKS") == "1":
        return
    for key, value in _ENV.items():
        os.environ.setdefault(key, value)


@contextlib.contextmanager
def framework_logs(verbose: bool = False) -> Iterator[None]:
    """Run a block with framework logging hidden (native fd 2 and Python loggers); nothing changes if verbose."""
    if verbose:
        os.environ["CIFARBENCH_VERBOSE_FRAMEWORKS"] = "1"
        try:
            yield
        finally:
            os.environ.pop("CIFARBENCH_VERBOSE_FRAMEWORKS", None)
        return
    quiet_tensorflow()
    levels = {name: logging.getLogger(name).level for name in _LOGGERS}
    for name in _LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    with warnings.catch_warnings(), _native_stderr_hidden():
        warnings.simplefilter("ignore")
        try:
            yield
        finally:
            for name, level in levels.items():
                logging.getLogger(name).setLevel(level)


@contextlib.contextmanager
def _native_stderr_hidden() -> Iterator[None]:
    """fd 2 -> a temporary file; ``sys.stderr`` (if it was fd 2) -> a duplicate of the real stderr."""
    try:
        saved = os.dup(2)
    except OSError:  # no fd 2 at all
        yield
        return
    py_stderr = sys.stderr
    replaced = _is_fd2(py_stderr)
    with tempfile.TemporaryFile() as sink:
        with contextlib.suppress(Exception):
            py_stderr.flush()
        os.dup2(sink.fileno(), 2)
        if replaced:
            # Not closed afterwards on purpose: a logging handler created meanwhile may hold it,
            # and it still points at the real stderr.
            sys.stderr = io.TextIOWrapper(os.fdopen(os.dup(saved), "wb", buffering=0), encoding=py_stderr.encoding,
                                          errors="backslashreplace", line_buffering=True)
        try:
            yield
        finally:
            with contextlib.suppress(Exception):
                sys.stderr.flush()
            if replaced:
                sys.stderr = py_stderr
            os.dup2(saved, 2)
            os.close(saved)


def _is_fd2(stream: object) -> bool:
    try:
        return stream.fileno() == 2  # type: ignore[attr-defined]
    except Exception:  # a captured stream (tests, CliRunner) has no file descriptor
        return False
