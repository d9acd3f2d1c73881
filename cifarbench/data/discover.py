"""File discovery for batch commands: PATH arguments -> files, in a deterministic order, each once.

Folders are walked with an explicit stack (no recursion limit) holding one sorted listing per
level; hidden entries are skipped, and a directory reached twice (a symlink loop, or the same
folder named twice) is walked once. A file that cannot be listed or stat'ed still yields an entry,
with the reason, so it gets its row instead of silently vanishing.
"""

from __future__ import annotations

import fnmatch
import os
import stat
from dataclasses import dataclass
from typing import Iterable, Iterator, Sequence

from cifarbench.data.images import IMAGE_EXTENSIONS
from cifarbench.errors import UsageError


@dataclass(frozen=True, slots=True)
class FileEntry:
    """A file found; size and mtime (ns) for resume; ``error`` when it is known to fail before decoding."""

    path: str
    size: int = -1
    mtime_ns: int = -1
    error: str | None = None


def _reason(exc: OSError) -> str:
    return exc.strerror.lower() if exc.strerror else type(exc).__name__


def discover(paths: Sequence[str | os.PathLike[str]], recursive: bool = True, include: Sequence[str] = (),
             exclude: Iterable[str | os.PathLike[str]] = ()) -> Iterator[FileEntry]:
    """Files under ``paths`` in a deterministic order; each file once.

    A named file is always taken; one that is missing, cannot be stat'ed or is a broken link
    yields an entry with the reason (a row in the output), never an error for the whole run. Inside directories: names starting with ``.`` are skipped,
    entries are visited in code-point order of their names, a directory reached twice (symlink
    loops) is walked once, and a file is taken if it has an image extension or, when ``include``
    globs are given, if one matches its name (or its path under the argument, for globs with
    ``/``), case-insensitively. ``exclude`` names files never to take (the output and its sidecars).
    """
    excluded = {os.path.abspath(os.fspath(p)) for p in exclude}
    globs = [g.lower() for g in include]
    seen: set[str] = set()
    visited: set[tuple[int, int]] = set()

    def wanted(name: str, rel: str) -> bool:
        if not globs:
            return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS
        return any(fnmatch.fnmatchcase((rel if "/" in g else name).lower(), g) for g in globs)

    def take(path: str, de: os.DirEntry[str] | None) -> FileEntry | None:
        if path in seen or (excluded and os.path.abspath(path) in excluded):
            return None
        seen.add(path)
        try:
            st = de.stat() if de is not None else os.stat(path)
        except FileNotFoundError:
            return FileEntry(path, error="broken symbolic link" if os.path.islink(path) else "file not found")
        except OSError as exc:
            if os.path.islink(path) and not os.path.exists(path):  # a link loop or an unreachable target
                return FileEntry(path, error=f"broken symbolic link ({_reason(exc)})")
            return FileEntry(path, error=f"cannot stat file ({_reason(exc)})")
        return FileEntry(path, st.st_size, st.st_mtime_ns)

    for arg in (os.fspath(p) for p in paths):
        if not arg:
            raise UsageError("an empty PATH argument")
        try:
            st = os.stat(arg)
        except OSError:  # missing, unreadable or a broken link, named explicitly: still a row, not an abort
            entry = take(arg, None)
            if entry is not None:
                yield entry
            continue
        if not stat.S_ISDIR(st.st_mode):
            entry = take(arg, None)
            if entry is not None:
                yield entry
            continue
        if (st.st_dev, st.st_ino) in visited:
            continue
        visited.add((st.st_dev, st.st_ino))
        stack: list[tuple[str, Iterator[os.DirEntry[str]]]] = []
        try:
            stack.append(("", iter(_listdir(arg))))
        except OSError as exc:
            yield FileEntry(arg, error=f"cannot list directory ({_reason(exc)})")
        while stack:
            prefix, it = stack[-1]
            de = next(it, None)
            if de is None:
                stack.pop()
                continue
            if de.name.startswith("."):
                continue
            rel = prefix + de.name
            try:
                is_dir = de.is_dir()
            except OSError:
                is_dir = False
            if is_dir:
                if not recursive:
                    continue
                try:
                    dst = de.stat()
                    key = (dst.st_dev, dst.st_ino)
                    if key in visited:
                        continue
                    visited.add(key)
                    stack.append((rel + "/", iter(_listdir(de.path))))
                except OSError as exc:
                    yield FileEntry(de.path, error=f"cannot list directory ({_reason(exc)})")
            elif wanted(de.name, rel):
                entry = take(de.path, de)
                if entry is not None:
                    yield entry


def _listdir(path: str) -> list[os.DirEntry[str]]:
    with os.scandir(path) as it:
        return sorted(it, key=lambda e: e.name)
