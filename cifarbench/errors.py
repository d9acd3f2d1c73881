"""Error types and the one exit-code table.

The library raises these; only the CLI turns them into messages and exit codes,
so every command reports failures the same way.
"""

from __future__ import annotations

import enum


def first_line(exc_or_text: BaseException | str, limit: int | None = None) -> str:
    """The first line of a message, stripped, cut to ``limit`` characters when given.

    An exception with an empty message gives its type name; empty text gives "".
    """
    text = str(exc_or_text).strip()
    if not text and isinstance(exc_or_text, BaseException):
        text = type(exc_or_text).__name__
    return text.splitlines()[0][:limit] if text else ""


class ExitStatus(enum.IntEnum):
    """Process exit codes, documented in ``--help`` and the README."""

    OK = 0
    ERROR = 1  # unexpected failure, or a library error without a more specific code
    USAGE = 2  # bad options or arguments (Click's own code)
    PARTIAL = 3  # some inputs failed; their rows were still written
    DATA = 4  # a dataset, image or model file could not be read or is invalid
    LOCKED = 5  # another run holds the output lock
    CHECK_FAILED = 6  # a parity or quality check did not pass
    UNAVAILABLE = 7  # a backend, device or optional dependency is missing
    INTERRUPTED = 130  # Ctrl-C


class CifarbenchError(Exception):
    """Base class; ``exit_status`` tells the CLI which code to use."""

    exit_status: ExitStatus = ExitStatus.ERROR


class UsageError(CifarbenchError):
    exit_status = ExitStatus.USAGE


class DataError(CifarbenchError):
    """A dataset source, image or file that cannot be read or does not fit."""

    exit_status = ExitStatus.DATA


class ModelError(CifarbenchError):
    """A model file that cannot be loaded, converted or does not fit the contract."""

    exit_status = ExitStatus.DATA


class BackendUnavailable(CifarbenchError):
    """A runtime, device or optional dependency is not installed or not present."""

    exit_status = ExitStatus.UNAVAILABLE


class LockHeld(CifarbenchError):
    exit_status = ExitStatus.LOCKED


class CheckFailed(CifarbenchError):
    exit_status = ExitStatus.CHECK_FAILED


EXIT_CODE_MEANINGS: dict[ExitStatus, str] = {
    ExitStatus.OK: "success",
    ExitStatus.ERROR: "unexpected failure (details with --traceback)",
    ExitStatus.USAGE: "bad option or argument",
    ExitStatus.PARTIAL: "some inputs failed; their rows were still written",
    ExitStatus.DATA: "dataset, image or model file missing or invalid",
    ExitStatus.LOCKED: "another run holds the output lock",
    ExitStatus.CHECK_FAILED: "a parity or quality check did not pass",
    ExitStatus.UNAVAILABLE: "a backend, device or optional dependency is missing",
    ExitStatus.INTERRUPTED: "interrupted (Ctrl-C); finished outputs are kept",
}

# One line per code: number, name, meaning. The CLI shows it
# verbatim (a Click \b paragraph) in `cifarbench --help`; the README repeats it.
EXIT_CODE_HELP = "\n".join(
    f"{int(s):>5}  {s.name.lower():<14}{EXIT_CODE_MEANINGS.get(s, '')}".rstrip() for s in ExitStatus
)


class BatchError(UsageError, ValueError):
    """A backend's ``predict()`` was given a batch of the wrong dtype or shape (not uint8 N x H x W x 3)."""
