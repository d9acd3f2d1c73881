"""Row writers for ``classify``: one row per input file, as CSV (RFC 4180) or JSONL.

Columns: ``path,label,class_index,confidence`` then ``label_2,confidence_2 … label_K,confidence_K``
for top-K > 1, then ``error``. A file that failed has empty prediction fields (``null`` in JSONL)
and a one-line reason in ``error``.

File names are bytes on POSIX and need not be UTF-8. Output is always valid UTF-8: a byte that is
not UTF-8 is written as the four characters ``\\xNN``, and a literal backslash as two (``\\\\``),
so the escaping is injective: two distinct names never share an output path (``x\\xff.jpg`` is the
name with byte 0xFF, ``x\\\\xff.jpg`` the name with a backslash), and the original bytes can be
recovered by undoing the two escapes.

Writers only turn rows into text; the caller owns the stream, so the same writer serves
stdout, an atomic output file and the resume reader.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
from dataclasses import dataclass, field
from typing import IO, Iterator, Sequence

from cifarbench.errors import UsageError

OUTPUT_FORMATS = ("csv", "jsonl")
CONFIDENCE_DIGITS = 6


@dataclass
class Row:
    """One input file's result; ``path`` is the name as the OS gave it (may hold surrogate escapes)."""

    path: str
    label: str | None = None
    class_index: int | None = None
    confidence: float | None = None
    alternatives: list[tuple[str, float]] = field(default_factory=list)  # ranks 2..K: (label, confidence)
    error: str | None = None


@dataclass(frozen=True)
class StoredRow:
    """A row read back from an earlier output: its shown path, whether it failed, its exact text."""

    path: str
    failed: bool
    text: str


def columns(top_k: int) -> list[str]:
    cols = ["path", "label", "class_index", "confidence"]
    for k in range(2, top_k + 1):
        cols += [f"label_{k}", f"confidence_{k}"]
    return cols + ["error"]


def display_text(text: str) -> str:
    """Any string (file names with undecodable bytes included) as clean UTF-8 text; see module doc.

    Backslashes are doubled, bytes that are not UTF-8 become ``\\xNN`` and any other lone surrogate
    ``\\uNNNN``: injective, so distinct names stay distinct in the output and in ``--resume`` state.
    """
    if "\\" not in text and _SURROGATES.search(text) is None:
        return text  # the common case: plain UTF-8, nothing to escape
    return _ESCAPE.sub(_escape_one, text)


_SURROGATES = re.compile("[\ud800-\udfff]")
_ESCAPE = re.compile("[\\\\\ud800-\udfff]")


def _escape_one(m: re.Match[str]) -> str:
    c = m.group()
    if c == "\\":
        return "\\\\"
    code = ord(c)
    if 0xDC80 <= code <= 0xDCFF:  # os.fsdecode's surrogateescape: the name's real byte
        return f"\\x{code - 0xDC00:02x}"
    return f"\\u{code:04x}"


def _confidence(p: float | None) -> float | None:
    if p is None or not math.isfinite(p):
        return None
    return round(float(p), CONFIDENCE_DIGITS)


def _error_text(error: str | None) -> str | None:
    if error is None:
        return None
    return " ".join(display_text(error).split()) or "error"


class RowWriter:
    """Base: ``header()`` and ``format(row)`` give text ending in a newline; ``read`` parses it back."""

    format_name = ""

    def __init__(self, top_k: int = 1) -> None:
        if top_k < 1:
            raise UsageError(f"--top-k must be at least 1, got {top_k}")
        self.top_k = top_k
        self.columns = columns(top_k)

    def values(self, row: Row) -> list[object]:
        """The row's fields in column order; ``None`` for a missing value."""
        vals: list[object] = [display_text(row.path), row.label, row.class_index, _confidence(row.confidence)]
        alts = list(row.alternatives[: self.top_k - 1])
        alts += [(None, None)] * (self.top_k - 1 - len(alts))  # type: ignore[list-item]
        for label, conf in alts:
            vals += [label, _confidence(conf)]
        return vals + [_error_text(row.error)]

    def header(self) -> str:
        raise NotImplementedError

    def format(self, row: Row) -> str:
        raise NotImplementedError

    def read(self, fh: IO[str]) -> Iterator[StoredRow]:
        """Rows of an earlier output in this format; raises ValueError if it is not one."""
        raise NotImplementedError


class CsvRowWriter(RowWriter):
    """RFC 4180: CRLF line ends, fields with ``,`` ``"`` CR or LF quoted, quotes doubled; UTF-8, no BOM."""

    format_name = "csv"

    def __init__(self, top_k: int = 1) -> None:
        super().__init__(top_k)
        self._buf = io.StringIO()
        self._csv = csv.writer(self._buf, lineterminator="\r\n")

    def _line(self, fields: Sequence[object]) -> str:
        self._buf.seek(0)
        self._buf.truncate()
        self._csv.writerow(fields)
        return self._buf.getvalue()

    def header(self) -> str:
        return self._line(self.columns)

    def format(self, row: Row) -> str:
        vals = self.values(row)
        return self._line(["" if v is None else (f"{v:.{CONFIDENCE_DIGITS}f}" if isinstance(v, float) else v) for v in vals])

    def read(self, fh: IO[str]) -> Iterator[StoredRow]:
        reader = csv.reader(fh, strict=True)
        if next(reader, None) != self.columns:
            raise ValueError("CSV header does not match these options")
        for fields in reader:
            if len(fields) != len(self.columns):
                raise ValueError(f"CSV row has {len(fields)} fields, expected {len(self.columns)}")
            yield StoredRow(fields[0], fields[-1] != "", self._line(fields))


class JsonlRowWriter(RowWriter):
    """One JSON object per line with the CSV's keys in the same order; missing values are ``null``."""

    format_name = "jsonl"

    def header(self) -> str:
        return ""

    def format(self, row: Row) -> str:
        return json.dumps(dict(zip(self.columns, self.values(row))), ensure_ascii=False, allow_nan=False) + "\n"

    def read(self, fh: IO[str]) -> Iterator[StoredRow]:
        for line in fh:
            obj = json.loads(line)
            if not isinstance(obj, dict) or list(obj) != self.columns:
                raise ValueError("JSONL keys do not match these options")
            yield StoredRow(str(obj["path"]), obj["error"] is not None, line if line.endswith("\n") else line + "\n")


def make_writer(fmt: str, top_k: int = 1) -> RowWriter:
    if fmt == "csv":
        return CsvRowWriter(top_k)
    if fmt == "jsonl":
        return JsonlRowWriter(top_k)
    raise UsageError(f"unknown output format {fmt!r}; choose from {', '.join(OUTPUT_FORMATS)}")


def format_for(path: str | os.PathLike[str] | None) -> str:
    """The default format for an output name: ``jsonl`` for .jsonl/.ndjson, else ``csv``."""
    name = os.fspath(path).lower() if path is not None else ""
    return "jsonl" if name.endswith((".jsonl", ".ndjson")) else "csv"
