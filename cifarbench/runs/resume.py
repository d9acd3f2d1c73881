"""``classify --resume`` bookkeeping: which rows of an earlier output can be kept.

``--resume`` keeps rows of an earlier run whose file has the same path, size and mtime. Those three
facts live in a sidecar ``<output>.state.json``, committed together with the output (pair_commit.py:
after a failure, both old or both new) and tied to it by the output's SHA-256; if the pair does not match, or the model or options changed, every file is
classified again, so a resumed run always equals a fresh one. Failed rows are always retried.
Paths are compared as the injective ``display_text`` the output shows, so two names never merge.

The kept rows are not held in memory: loading indexes the earlier output (a row number per
reusable file), and the rows' text is read again from the same open file while the new output
is written, in input order (issue 12: driver memory must not grow with the previous output).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from array import array
from pathlib import Path
from typing import IO, Any, Iterator, Sequence

from cifarbench.atomic import atomic_write
from cifarbench.data.discover import FileEntry
from cifarbench.errors import CifarbenchError
from cifarbench.runs.writers import RowWriter, StoredRow, display_text

STATE_SUFFIX = ".state.json"
STATE_SCHEMA = 1

Key = tuple[str, int, int]  # (path, size, mtime_ns)


def state_path_for(output: str | os.PathLike[str]) -> Path:
    o = Path(output)
    return o.with_name(o.name + STATE_SUFFIX)


class PreviousRows:
    """The reusable rows of an earlier output, read back from its open file as they are written.

    ``lookup`` gives each input file its row number in the earlier output (-1: classify it) and
    drops the keys; ``text`` then returns row N's text, parsing forward from the last row read.
    Rows are asked for in input order, which is the earlier output's order when the PATHs are the
    same, so one forward pass serves a whole run; an earlier row (PATHs given in another order)
    restarts the pass. The file is the one whose SHA-256 was checked: if it is edited in place
    during the run, the row read back no longer matches and the run stops before replacing it.
    """

    def __init__(self, output: Path, writer: RowWriter, fh: IO[str], index: dict[Key, int]) -> None:
        self._output, self._writer, self._fh, self._index = output, writer, fh, index
        self._rows: Iterator[StoredRow] | None = None
        self._next = 0  # number of the row self._rows gives next

    def lookup(self, entries: Sequence[FileEntry]) -> array:
        """Each entry's row number in the earlier output, -1 when it must be classified."""
        get = self._index.get
        numbers = array("q", (get((e.path, e.size, e.mtime_ns), -1) if e.error is None else -1 for e in entries))
        self._index = {}
        return numbers

    def text(self, number: int, path: str) -> str:
        """Row ``number``'s exact text; ``path`` is the input file it must belong to."""
        try:
            if self._rows is None or number < self._next:
                self._fh.seek(0)
                self._rows, self._next = self._writer.read(self._fh), 0
            for row in self._rows:
                self._next += 1
                if self._next > number:
                    if row.path == display_text(path) and not row.failed:
                        return row.text
                    break
        except (OSError, ValueError, UnicodeDecodeError):
            pass
        raise CifarbenchError(f"{display_text(str(self._output))} changed during the run; run again")

    def close(self) -> None:
        self._fh.close()


class KeptRows:
    """Per input file, whether its earlier row is kept; the kept rows' text on demand, in input order."""

    def __init__(self, entries: Sequence[FileEntry], previous: PreviousRows | None) -> None:
        self._entries, self._previous = entries, previous
        self._numbers = previous.lookup(entries) if previous is not None else array("q", [-1]) * len(entries)

    def __len__(self) -> int:
        return len(self._numbers)

    def kept(self, i: int) -> bool:
        return self._numbers[i] >= 0

    def todo(self) -> list[FileEntry]:
        """The files to classify in this run, in input order."""
        return [e for e, n in zip(self._entries, self._numbers) if n < 0]

    def text(self, i: int) -> str:
        assert self._previous is not None and self._numbers[i] >= 0
        return self._previous.text(self._numbers[i], self._entries[i].path)

    def close(self) -> None:
        """Done reading: called before the new output replaces the earlier one."""
        if self._previous is not None:
            self._previous.close()


def load_previous(output: Path, writer: RowWriter, fingerprint: dict[str, Any]) -> tuple[PreviousRows | None, str | None]:
    """The earlier output's reusable rows (None: classify every file), and a note saying why if none."""
    state_file = state_path_for(output)
    if not output.exists():
        return None, None
    try:
        state = json.loads(state_file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None, f"no {state_file.name} beside {output.name}: classifying every file"
    except (OSError, ValueError) as exc:
        return None, f"unreadable {state_file.name} ({exc}): classifying every file"
    try:
        raw = open(output, "rb")  # one open file: the rows read back later are the bytes hashed here
    except OSError as exc:
        return None, f"cannot read {output.name} ({exc.strerror or exc}): classifying every file"
    fh = io.TextIOWrapper(raw, encoding="utf-8", newline="")
    try:
        digest = hashlib.sha256()
        for chunk in iter(lambda: raw.read(1 << 20), b""):
            digest.update(chunk)
        if not isinstance(state, dict) or state.get("schema") != STATE_SCHEMA or state.get("output_sha256") != digest.hexdigest():
            fh.close()
            return None, f"{output.name} changed since {state_file.name} was written: classifying every file"
        if state.get("fingerprint") != fingerprint:
            fh.close()
            return None, "model or options changed since the last run: classifying every file"
        files = state.get("files") or []
        index: dict[Key, int] = {}
        fh.seek(0)
        n = 0
        for n, row in enumerate(writer.read(fh), 1):
            if n > len(files):
                raise ValueError("row count differs from the state")
            path, size, mtime_ns = files[n - 1]
            if row.path != display_text(path):
                raise ValueError("rows are not in the recorded order")
            if not row.failed:
                index[(path, int(size), int(mtime_ns))] = n - 1
        if n != len(files):
            raise ValueError("row count differs from the state")
    except (OSError, ValueError, TypeError, UnicodeDecodeError) as exc:
        fh.close()
        return None, f"cannot reuse {output.name} ({exc}): classifying every file"
    return PreviousRows(output, writer, fh, index), None


def state_doc(output: Path, entries: Sequence[FileEntry], fingerprint: dict[str, Any]) -> dict[str, Any]:
    """The state of ``output`` (the file whose SHA-256 it records: the new output's temp file, when paired)."""
    from cifarbench.models.manifest import sha256_file

    return {"schema": STATE_SCHEMA, "tool": "cifarbench classify", "fingerprint": fingerprint,
            "output_sha256": sha256_file(output), "files": [[e.path, e.size, e.mtime_ns] for e in entries]}


def write_state(output: Path, entries: Sequence[FileEntry], fingerprint: dict[str, Any]) -> None:
    """The state alone (the output already in place); ``classify`` commits both with ``pair_commit.write_pair``."""
    state = state_doc(output, entries, fingerprint)
    with atomic_write(state_path_for(output)) as fh:
        json.dump(state, fh, ensure_ascii=True, separators=(",", ":"))  # ASCII: names with any bytes survive
        fh.write("\n")
