"""runs.resume without classify: earlier outputs and states written here by hand, every reason to refuse them, and
the kept rows read back in and out of order. Fast: no model, no image (test_resume.py runs the real command)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from cifarbench.data.discover import FileEntry
from cifarbench.errors import CifarbenchError
from cifarbench.runs import resume
from cifarbench.runs.resume import KeptRows, load_previous, state_path_for, write_state
from cifarbench.runs.writers import Row, make_writer

FP = {"model": "m", "top_k": 1}


def earlier(tmp_path: Path, rows: list[Row], entries: list[FileEntry] | None = None, fmt: str = "csv",
            fingerprint: dict[str, Any] = FP) -> tuple[Path, Any]:
    """An earlier output of ``rows`` and its state (files: ``entries``, default one per row, size 10+i, mtime i)."""
    w = make_writer(fmt, 1)
    out = tmp_path / f"out.{fmt}"
    with open(out, "w", encoding="utf-8", newline="") as fh:
        fh.write(w.header())
        for r in rows:
            fh.write(w.format(r))
    entries = entries if entries is not None else [FileEntry(r.path, 10 + i, i) for i, r in enumerate(rows)]
    write_state(out, entries, fingerprint)
    return out, w


def ok(path: str) -> Row:
    return Row(path, "cat", 3, 0.5)


def test_state_file_name_and_exact_content(tmp_path: Path) -> None:
    assert state_path_for("d/x.csv") == Path("d/x.csv.state.json")
    out, _ = earlier(tmp_path, [ok("caf\udce9.png"), ok("b.png")])
    raw = state_path_for(out).read_text(encoding="ascii")  # ASCII: an undecodable name survives escaped
    expected = {"schema": 1, "tool": "cifarbench classify", "fingerprint": FP,
                "output_sha256": hashlib.sha256(out.read_bytes()).hexdigest(),
                "files": [["caf\udce9.png", 10, 0], ["b.png", 11, 1]]}
    assert raw == json.dumps(expected, ensure_ascii=True, separators=(",", ":")) + "\n"
    assert "\\udce9" in raw and resume.STATE_SCHEMA == 1 and resume.STATE_SUFFIX == ".state.json"


def test_kept_rows_by_path_size_and_mtime(tmp_path: Path) -> None:
    rows = [ok("a.png"), Row("bad.png", error="cannot decode"), ok("c.png")]
    out, w = earlier(tmp_path, rows)
    prev, note = load_previous(out, w, FP)
    assert note is None and prev is not None
    entries = [FileEntry("c.png", 12, 2), FileEntry("a.png", 10, 0), FileEntry("bad.png", 11, 1),
               FileEntry("a.png", 10, 5), FileEntry("a.png", 9, 0), FileEntry("c.png", 12, 2, error="vanished"),
               FileEntry("new.png", 1, 1)]
    kept = KeptRows(entries, prev)
    assert len(kept) == 7 and [kept.kept(i) for i in range(7)] == [True, True, False, False, False, False, False]
    assert [e.path for e in kept.todo()] == ["bad.png", "a.png", "a.png", "c.png", "new.png"]
    assert kept.text(0) == w.format(rows[2]) and kept.text(1) == w.format(rows[0])  # row 2 then row 0: restarts
    assert prev.lookup(entries).tolist() == [-1] * 7  # the index is dropped after the one lookup
    kept.close()
    assert prev._fh.closed


def test_rows_read_forward_in_one_pass(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rows = [ok(f"{i}.png") for i in range(5)]
    out, w = earlier(tmp_path, rows)
    prev, _ = load_previous(out, w, FP)
    seeks: list[int] = []
    real_seek = prev._fh.seek
    monkeypatch.setattr(prev._fh, "seek", lambda *a: seeks.append(a[0]) or real_seek(*a))
    assert [prev.text(n, f"{n}.png") for n in (0, 1, 3, 4)] == [w.format(rows[n]) for n in (0, 1, 3, 4)]
    assert seeks == [0]  # forward: one pass
    seeks.clear()
    assert prev.text(1, "1.png") == w.format(rows[1]) and seeks == [0]  # an earlier row: back to the start
    assert prev.text(1, "1.png") == w.format(rows[1]) and seeks == [0, 0]  # the same row again: restarts too


def test_a_row_that_no_longer_matches_stops_the_run(tmp_path: Path) -> None:
    rows = [ok("a.png"), Row("b.png", error="x"), ok("c.png")]
    out, w = earlier(tmp_path, rows)
    for number, path in ((0, "other.png"), (1, "b.png"), (3, "d.png")):
        prev, _ = load_previous(out, w, FP)
        with pytest.raises(CifarbenchError) as err:
            prev.text(number, path)
        assert str(err.value) == f"{out} changed during the run; run again"
        prev.close()


def test_edited_in_place_during_the_run(tmp_path: Path) -> None:
    out, w = earlier(tmp_path, [ok("a.png"), ok("b.png")])
    prev, _ = load_previous(out, w, FP)
    out.write_bytes(b"\xff\xfe garbage\n")
    with pytest.raises(CifarbenchError, match="changed during the run"):
        prev.text(1, "b.png")


def test_jsonl_output_too(tmp_path: Path) -> None:
    rows = [ok("a.png"), ok("b.png")]
    out, w = earlier(tmp_path, rows, fmt="jsonl")
    prev, note = load_previous(out, w, FP)
    assert note is None and prev.text(1, "b.png") == w.format(rows[1])


def test_an_empty_earlier_run_is_reusable(tmp_path: Path) -> None:
    out, w = earlier(tmp_path, [])
    prev, note = load_previous(out, w, FP)
    assert note is None and prev is not None and KeptRows([FileEntry("a.png", 1, 1)], prev).todo()[0].path == "a.png"


def test_no_previous_output(tmp_path: Path) -> None:
    out, w = earlier(tmp_path, [ok("a.png")])
    out.unlink()
    assert load_previous(out, w, FP) == (None, None)
    kept = KeptRows([FileEntry("a.png", 1, 1), FileEntry("b.png", 1, 1)], None)
    assert len(kept) == 2 and not kept.kept(0) and not kept.kept(1) and len(kept.todo()) == 2
    kept.close()


def test_every_reason_to_classify_everything(tmp_path: Path) -> None:
    out, w = earlier(tmp_path, [ok("a.png"), ok("b.png")])
    state = state_path_for(out)
    good = state.read_text()

    def note(**kw: Any) -> str:
        prev, why = load_previous(out, w, kw.get("fp", FP))
        assert prev is None and why is not None
        return why

    assert note(fp={"model": "other"}) == "model or options changed since the last run: classifying every file"
    doc = json.loads(good)
    for bad in ({**doc, "schema": 2}, {**doc, "output_sha256": "0" * 64}, [doc]):
        state.write_text(json.dumps(bad))
        assert note() == "out.csv changed since out.csv.state.json was written: classifying every file"
    state.write_text("{not json")
    assert note().startswith("unreadable out.csv.state.json (") and note().endswith("): classifying every file")
    state.unlink()
    assert note() == "no out.csv.state.json beside out.csv: classifying every file"


@pytest.mark.parametrize("files, why", [
    ([["a.png", 10, 0]], "row count differs from the state"),
    ([["a.png", 10, 0], ["b.png", 11, 1], ["c.png", 12, 2]], "row count differs from the state"),
    ([["b.png", 11, 1], ["a.png", 10, 0]], "rows are not in the recorded order"),
    ([["a.png", 10, 0], ["b.png", "eleven", 1]], "invalid literal for int() with base 10: 'eleven'"),
])
def test_a_state_that_does_not_describe_the_rows(tmp_path: Path, files: list, why: str) -> None:
    out, w = earlier(tmp_path, [ok("a.png"), ok("b.png")])
    state = state_path_for(out)
    doc = json.loads(state.read_text())
    state.write_text(json.dumps({**doc, "files": files}))
    prev, note = load_previous(out, w, FP)
    assert prev is None and note == f"cannot reuse out.csv ({why}): classifying every file"


def test_an_output_in_another_format_is_not_reused(tmp_path: Path) -> None:
    out, _ = earlier(tmp_path, [ok("a.png")])
    prev, note = load_previous(out, make_writer("csv", 3), FP)
    assert prev is None and note == "cannot reuse out.csv (CSV header does not match these options): classifying every file"


def test_an_unreadable_output(tmp_path: Path) -> None:
    out = tmp_path / "out.csv"
    out.mkdir()
    state_path_for(out).write_text(json.dumps({"schema": 1}))
    prev, note = load_previous(out, make_writer("csv", 1), FP)
    assert prev is None and note == "cannot read out.csv (Is a directory): classifying every file"


def test_an_output_that_is_not_utf8(tmp_path: Path) -> None:
    out, w = earlier(tmp_path, [ok("a.png")])
    out.write_bytes(out.read_bytes().replace(b"a.png", b"\xff.png"))
    write_state(out, [FileEntry("a.png", 10, 0)], FP)  # the state matches the bytes, the bytes are not text
    prev, note = load_previous(out, w, FP)
    assert prev is None and note.startswith("cannot reuse out.csv (") and "utf-8" in note


def test_a_large_output_is_hashed_whole(tmp_path: Path) -> None:
    """Over 1 MiB: the SHA-256 covers every chunk, so an edit past the first MiB is seen."""
    rows = [ok(f"{i:07d}" + "x" * 100 + ".png") for i in range(12000)]
    out, w = earlier(tmp_path, rows)
    assert out.stat().st_size > 1 << 20
    assert load_previous(out, w, FP)[1] is None
    data = bytearray(out.read_bytes())
    data[-10] = ord("9") if data[-10] != ord("9") else ord("8")
    out.write_bytes(bytes(data))
    assert load_previous(out, w, FP)[1] == "out.csv changed since out.csv.state.json was written: classifying every file"


def test_a_name_with_a_carriage_return_is_kept_as_written(tmp_path: Path) -> None:
    """The output is read with newline='': a CR inside a quoted name is not turned into a line feed."""
    rows = [ok("a\rb.png"), ok("c\r\nd.png")]
    out, w = earlier(tmp_path, rows)
    prev, note = load_previous(out, w, FP)
    assert note is None
    kept = KeptRows([FileEntry("a\rb.png", 10, 0), FileEntry("c\r\nd.png", 11, 1)], prev)
    assert kept.todo() == [] and [kept.text(i) for i in (0, 1)] == [w.format(r) for r in rows]


def test_asking_for_a_row_that_is_not_kept_is_a_programming_error(tmp_path: Path) -> None:
    out, w = earlier(tmp_path, [ok("a.png")])
    prev, _ = load_previous(out, w, FP)
    kept = KeptRows([FileEntry("a.png", 10, 0), FileEntry("new.png", 1, 1)], prev)
    with pytest.raises(AssertionError):
        kept.text(1)
    with pytest.raises(AssertionError):
        KeptRows([FileEntry("a.png", 10, 0)], None).text(0)
