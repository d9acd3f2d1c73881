"""Row writers: RFC 4180 CSV and JSONL, awkward names, top-k columns, and reading rows back."""

from __future__ import annotations

import csv
import io
import json
import os

import pytest

from cifarbench.errors import UsageError
from cifarbench.runs.writers import Row, columns, display_text, format_for, make_writer

AWKWARD = ["plain.jpg", "with,comma.jpg", 'with"quote".jpg', "new\nline.jpg", "cr\rreturn.jpg", " lead space.jpg",
           "ünïcødé 猫.jpg", os.fsdecode(b"caf\xe9-latin1.jpg"), os.fsdecode(b"\xff\xfe.png")]


def _rows() -> list[Row]:
    rows = [Row(p, "cat", 3, 0.9, [("dog", 0.05), ("frog", 0.01)]) for p in AWKWARD]
    rows.append(Row("bad.jpg", error="truncated image (image file is truncated)\nsecond line"))
    return rows


def test_columns_for_top_k() -> None:
    assert columns(1) == ["path", "label", "class_index", "confidence", "error"]
    assert columns(3) == ["path", "label", "class_index", "confidence", "label_2", "confidence_2",
                          "label_3", "confidence_3", "error"]


def test_display_text_keeps_distinct_names_distinct() -> None:
    assert display_text(os.fsdecode(b"caf\xe9.jpg")) == "caf\\xe9.jpg"
    assert display_text("ünï.jpg") == "ünï.jpg"
    assert display_text("\udcff\ud800") .encode("utf-8")  # any str becomes encodable UTF-8
    assert display_text(os.fsdecode(b"a\xe9")) != display_text(os.fsdecode(b"a\xe8"))


def _unescape(shown: str) -> bytes:
    """The documented inverse: ``\\\\`` -> backslash, ``\\xNN`` -> byte NN, ``\\uNNNN`` -> that code point."""
    import re

    out = bytearray()
    for m in re.finditer(r"\\\\|\\x([0-9a-f]{2})|\\u([0-9a-f]{4})|[^\\]+", shown, re.S):
        tok = m.group()
        if tok == "\\\\":
            out += b"\\"
        elif m.group(1):
            out.append(int(m.group(1), 16))
        elif m.group(2):
            out += chr(int(m.group(2), 16)).encode("utf-8", "surrogatepass")
        else:
            out += tok.encode("utf-8")
    return bytes(out)


def test_escaping_is_injective_and_reversible() -> None:
    names = [b"x\xff.jpg", b"x\\xff.jpg", b"x\\\xff.jpg", b"x\\\\xff.jpg", b"a\\b.png", b"a\\\\b.png",
             b"\xff\xfe.png", b"caf\xc3\xa9.png", "猫\\x41.png".encode(), b"x\\u00e9.jpg", b"plain.jpg"]
    shown = [display_text(os.fsdecode(n)) for n in names]
    assert len(set(shown)) == len(names)  # a name with byte 0xFF and one with a literal "\\xff" differ
    assert shown[0] == "x\\xff.jpg" and shown[1] == "x\\\\xff.jpg" and shown[7] == "café.png"
    assert [_unescape(s) for s in shown] == names
    assert display_text("\ud800") == "\\ud800" and display_text("\\ud800") == "\\\\ud800"


def test_csv_is_rfc4180_and_parses_back() -> None:
    w = make_writer("csv", top_k=3)
    text = w.header() + "".join(w.format(r) for r in _rows())
    text.encode("utf-8")  # valid UTF-8 throughout
    assert text.startswith("path,label,class_index,confidence,label_2,confidence_2,label_3,confidence_3,error\r\n")
    assert '"with,comma.jpg"' in text and '"with""quote"".jpg"' in text and '"new\nline.jpg"' in text
    parsed = list(csv.reader(io.StringIO(text, newline=""), strict=True))
    assert parsed[0] == w.columns
    assert [r[0] for r in parsed[1:]] == [display_text(p) for p in AWKWARD] + ["bad.jpg"]
    assert parsed[1][1:] == ["cat", "3", "0.900000", "dog", "0.050000", "frog", "0.010000", ""]
    assert parsed[-1][1:-1] == [""] * 7  # no prediction fields on a failed row
    assert parsed[-1][-1] == "truncated image (image file is truncated) second line"  # one line
    assert "caf\\xe9-latin1.jpg" in [r[0] for r in parsed]


def test_jsonl_has_the_csv_keys_and_nulls() -> None:
    w = make_writer("jsonl", top_k=2)
    lines = [w.format(r) for r in _rows()]
    assert w.header() == ""
    objs = [json.loads(line) for line in lines]
    assert all(line.count("\n") == 1 and line.endswith("\n") for line in lines)
    assert all(list(o) == columns(2) for o in objs)
    assert objs[0] == {"path": "plain.jpg", "label": "cat", "class_index": 3, "confidence": 0.9,
                       "label_2": "dog", "confidence_2": 0.05, "error": None}
    assert objs[3]["path"] == "new\nline.jpg"
    assert objs[-1]["label"] is None and objs[-1]["confidence"] is None and objs[-1]["error"].startswith("truncated")


def test_missing_alternatives_are_empty_and_nan_is_not_written() -> None:
    w = make_writer("jsonl", top_k=3)
    o = json.loads(w.format(Row("x.png", "cat", 3, float("nan"), [("dog", 0.1)])))
    assert o["confidence"] is None and o["label_2"] == "dog" and o["label_3"] is None and o["confidence_3"] is None


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_read_returns_the_exact_text(fmt: str) -> None:
    w = make_writer(fmt, top_k=2)
    rows = _rows()
    text = w.header() + "".join(w.format(r) for r in rows)
    back = list(w.read(io.StringIO(text, newline="")))
    assert [b.path for b in back] == [display_text(r.path) for r in rows]
    assert [b.failed for b in back] == [r.error is not None for r in rows]
    assert w.header() + "".join(b.text for b in back) == text


def test_read_refuses_other_options() -> None:
    text = make_writer("csv", top_k=2).header()
    with pytest.raises(ValueError):
        list(make_writer("csv", top_k=1).read(io.StringIO(text, newline="")))
    line = make_writer("jsonl", top_k=2).format(Row("a.png", "cat", 3, 0.5, [("dog", 0.4)]))
    with pytest.raises(ValueError):
        list(make_writer("jsonl", top_k=1).read(io.StringIO(line)))


def test_bad_options_are_usage_errors() -> None:
    with pytest.raises(UsageError):
        make_writer("xml")
    with pytest.raises(UsageError):
        make_writer("csv", top_k=0)
    assert format_for("out.JSONL") == "jsonl" and format_for("x.ndjson") == "jsonl"
    assert format_for("out.csv") == "csv" and format_for(None) == "csv"


def test_exact_messages_and_defaults() -> None:
    with pytest.raises(UsageError) as e:
        make_writer("xml")
    assert str(e.value) == "unknown output format 'xml'; choose from csv, jsonl"
    with pytest.raises(UsageError) as e:
        make_writer("csv", top_k=0)
    assert str(e.value) == "--top-k must be at least 1, got 0"
    assert make_writer("csv").columns == make_writer("jsonl").columns == ["path", "label", "class_index", "confidence",
                                                                           "error"]
    from cifarbench.runs.writers import CsvRowWriter, JsonlRowWriter

    assert CsvRowWriter().top_k == JsonlRowWriter().top_k == 1
    with pytest.raises(ValueError) as e2:
        list(make_writer("csv", top_k=2).read(io.StringIO("path,label\r\n", newline="")))
    assert str(e2.value) == "CSV header does not match these options"
    with pytest.raises(ValueError) as e2:
        list(make_writer("jsonl").read(io.StringIO('{"path": "a"}\n')))
    assert str(e2.value) == "JSONL keys do not match these options"
    w = make_writer("csv")
    with pytest.raises(ValueError) as e2:
        list(w.read(io.StringIO(w.header() + "a.png,cat\r\n", newline="")))
    assert str(e2.value) == "CSV row has 2 fields, expected 5"
    with pytest.raises(ValueError):  # no header at all (an empty file) is not this format either
        list(w.read(io.StringIO("", newline="")))
    assert list(w.read(io.StringIO(w.header(), newline=""))) == []


def test_csv_lines_end_in_crlf_and_strict_quoting_is_checked() -> None:
    w = make_writer("csv")
    assert w.header() == "path,label,class_index,confidence,error\r\n"
    assert w.format(Row("a.png", "cat", 3, 0.5)) == "a.png,cat,3,0.500000,\r\n"
    assert w.format(Row("b.png", error="x")) == "b.png,,,,x\r\n"  # None fields empty, not "None"
    bad = w.header() + 'a.png,"cat"x,3,0.5,\r\n'  # text after a closing quote: not RFC 4180
    with pytest.raises(csv.Error):
        list(w.read(io.StringIO(bad, newline="")))


def test_jsonl_is_utf8_text_and_writes_no_nan() -> None:
    w = make_writer("jsonl")
    line = w.format(Row("ünï 猫.png", "cat", 3, 0.5))
    assert "ünï 猫.png" in line and "\\u" not in line  # UTF-8, not \\u escapes
    back = list(w.read(io.StringIO(line.rstrip("\n"))))  # a last line without its newline gets one back
    assert back[0].text == line and back[0].path == "ünï 猫.png" and not back[0].failed
    from cifarbench.runs import writers

    assert writers._confidence(float("inf")) is None and writers._confidence(None) is None
    assert json.loads(w.format(Row("n.png", "cat", 3, float("-inf"))))["confidence"] is None


def test_error_text_is_one_line_and_never_empty() -> None:
    from cifarbench.runs.writers import _error_text

    assert _error_text("  \n\t ") == "error" and _error_text(None) is None
    assert _error_text("a\nb\r\nc") == "a b c"


def test_surrogate_escape_range_ends() -> None:
    """0xDC80..0xDCFF are os.fsdecode's stand-ins for bytes 0x80..0xFF; every other lone surrogate is \\uNNNN."""
    assert display_text("\udc80") == "\\x80" and display_text("\udcff") == "\\xff"
    assert display_text("\udc7f") == "\\udc7f" and display_text("\udd00") == "\\udd00"
    assert display_text("\ud800") == "\\ud800"


def test_format_for_without_a_path_and_with_odd_names() -> None:
    assert format_for(None) == "csv" and format_for("") == "csv" and format_for("x.JsonL") == "jsonl"
    assert format_for("jsonl") == "csv"  # a name, not an extension
