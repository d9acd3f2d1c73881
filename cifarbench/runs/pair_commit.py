"""Replace an output and its ``--resume`` state together: after a failure at any point, both old or both new.

Two renames cannot be one atomic step, so the pair is committed through a marker file:

1. the new output and the new state are written to temp files beside them and fsynced (a full disk
   fails here: the temps are removed, both old files are untouched);
2. the marker ``.<output>.commit`` (itself written to a temp, fsynced and renamed into place) names
   both temps: from this instant the new pair is the committed one;
3. the temps are renamed over the output and the state, the folder fsynced, the marker removed.

A run that dies between 2 and 3 leaves the marker; the next run that takes the output lock calls
``recover`` first, which finishes the renames (both new). A run that dies before 2 leaves only temps,
which the stale-temp sweep removes (both old). Renames need no new space, so a full disk cannot
stop step 3 half way in practice; if a rename fails anyway, the marker stays for ``recover``.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import IO, Any, Callable

MARKER_SUFFIX = ".commit"


def marker_path(output: Path) -> Path:
    return output.with_name(f".{output.name}{MARKER_SUFFIX}")


def _step(name: str) -> None:
    """A named point of the commit (tests inject faults here)."""


def _temp(target: Path) -> Path:
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    return Path(tmp)


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _mode_like(tmp: Path, target: Path) -> None:
    with contextlib.suppress(OSError):
        if target.exists():
            os.chmod(tmp, target.stat().st_mode & 0o777)
        else:
            mask = os.umask(0)
            os.umask(mask)
            os.chmod(tmp, 0o666 & ~mask)


def write_pair(output: Path, state: Path, write_output: Callable[[IO[str]], None],
               make_state: Callable[[Path], dict[str, Any]]) -> None:
    """Write ``output`` with ``write_output(fh)`` and ``state`` from ``make_state(new output's temp path)``."""
    output.parent.mkdir(parents=True, exist_ok=True)
    temps: list[Path] = []
    try:
        out_tmp = _temp(output)
        temps.append(out_tmp)
        with open(out_tmp, "w", encoding="utf-8", newline="") as fh:
            write_output(fh)
            fh.flush()
            _step("output-written")
            os.fsync(fh.fileno())
        state_tmp = _temp(state)
        temps.append(state_tmp)
        doc = make_state(out_tmp)
        with open(state_tmp, "w", encoding="utf-8") as fh:
            json.dump(doc, fh, ensure_ascii=True, separators=(",", ":"))
            fh.write("\n")
            fh.flush()
            _step("state-written")
            os.fsync(fh.fileno())
        _mode_like(out_tmp, output)
        _mode_like(state_tmp, state)
        marker = marker_path(output)
        mark_tmp = _temp(output)  # the stale-temp sweep knows this pattern
        temps.append(mark_tmp)
        with open(mark_tmp, "w", encoding="utf-8") as fh:
            json.dump({"pairs": [[out_tmp.name, output.name], [state_tmp.name, state.name]]}, fh)
            fh.flush()
            _step("marker-written")
            os.fsync(fh.fileno())
        os.replace(mark_tmp, marker)  # the commit point
        temps.remove(mark_tmp)
        _fsync_dir(output.parent)
    except BaseException:
        for t in temps:
            with contextlib.suppress(OSError):
                t.unlink()
        raise
    recover(output)


def recover(output: Path) -> bool:
    """Finish a commit a dead run left (its marker exists): rename the new pair into place. True if one was found."""
    marker = marker_path(output)
    try:
        doc = json.loads(marker.read_text(encoding="utf-8"))
        pairs = [(str(a), str(b)) for a, b in doc["pairs"]]
    except FileNotFoundError:
        return False
    except (OSError, ValueError, KeyError, TypeError):
        with contextlib.suppress(OSError):
            marker.unlink()  # a marker is only renamed into place complete: this one is not ours
        return False
    for i, (tmp, final) in enumerate(pairs):
        if "/" in tmp or "/" in final or os.sep in tmp or os.sep in final:
            continue  # names only, beside the output
        src = output.parent / tmp
        if src.exists():
            _step(f"rename-{i}")
            os.replace(src, output.parent / final)
    _fsync_dir(output.parent)
    _step("renamed")
    marker.unlink()
    _fsync_dir(output.parent)
    return True
