"""``classify --resume``: kept rows are read back from the earlier output as they are written, never all held."""

from __future__ import annotations

import json
import os
import tracemalloc
from pathlib import Path
from typing import Any

import pytest

from cifarbench import CIFAR10_CLASSES
from cifarbench.data.discover import discover
from cifarbench.errors import CifarbenchError
from cifarbench.events import Event
from cifarbench.runs.classify import classify
from cifarbench.runs.resume import state_path_for, write_state
from cifarbench.runs.writers import Row, make_writer
from conftest import make_tree
from test_discover import _img

MODEL = dict(model="baseline-cnn", backend="onnx-int8")  # shipped: no training, no TensorFlow


def _previous_output(folder: Path, out: Path, top_k: int, tmp_path: Path) -> None:
    """An earlier ``--resume`` output for every file of ``folder``, all rows reusable.

    The files are not images (nothing is decoded when every row is reused); the fingerprint comes
    from a real run with the same options on one real image, so the state matches what classify
    expects without copying its rules here.
    """
    probe, probe_out = tmp_path / f"probe{top_k}", tmp_path / f"probe{top_k}.csv"
    probe.mkdir()
    _img(probe / "one.png", 1)
    classify([probe], output=probe_out, resume=True, top_k=top_k, **MODEL)
    fingerprint = json.loads(state_path_for(probe_out).read_text())["fingerprint"]
    writer = make_writer("csv", top_k)
    entries = list(discover([folder]))
    with open(out, "w", encoding="utf-8", newline="") as fh:
        fh.write(writer.header())
        for n, e in enumerate(entries):
            alts = [(CIFAR10_CLASSES[(n + k) % 10], 0.5 / k) for k in range(1, top_k)]
            fh.write(writer.format(Row(e.path, CIFAR10_CLASSES[n % 10], n % 10, 0.5, alts)))
    write_state(out, entries, fingerprint)


def _held_bytes(folder: Path, out: Path, top_k: int) -> int:
    """Python memory in use when the first computed row is written and every kept row is still to come.

    That is when a driver that loads the kept rows up front holds all of them; ``a-new.png`` sorts
    before the earlier output's files, so it is the first row.
    """
    held: list[int] = []

    def sample(event: Event) -> None:
        if event.kind == "progress" and not held:
            held.append(tracemalloc.get_traced_memory()[0])

    tracemalloc.start()
    try:
        report = classify([folder], output=out, resume=True, top_k=top_k, events=sample, **MODEL)
    finally:
        tracemalloc.stop()
    assert (report.classified, report.reused) == (1, report.files - 1)
    return held[0]


@pytest.mark.slow  # two classify runs over thousands of rows under tracemalloc: ~7 s
def test_kept_rows_are_not_held_in_memory(tmp_path: Path) -> None:
    """Rows 7x longer (top-10) must not raise the memory held while rows are written.

    Holding every kept row's text (as before issue 12's fix) raises it by at least the outputs'
    size difference (~1.1 MB here); reading them back as they are written, by a few kB.
    """
    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(8_000):
        (folder / f"f{i:04d}.png").write_bytes(b"x")  # never decoded: every row of theirs is kept
    outs = {k: tmp_path / f"labels{k}.csv" for k in (1, 10)}
    for k, out in outs.items():
        _previous_output(folder, out, k, tmp_path)  # its real runs also warm imports and caches
    _img(folder / "a-new.png", 4)
    held, kept = {}, {}
    for k, out in outs.items():
        kept[k] = out.read_bytes().split(b"\r\n", 1)[1]
        held[k] = _held_bytes(folder, out, k)
        assert out.read_bytes().endswith(kept[k])  # every earlier row kept, byte for byte, after the new one
    grown = len(kept[10]) - len(kept[1])
    assert grown > 1_000_000
    assert held[10] - held[1] < grown / 4, (held, grown)


def test_paths_in_another_order_still_equal_a_fresh_run(tmp_path: Path) -> None:
    """PATHs named in another order ask for earlier rows again: the reader restarts, same bytes."""
    root = make_tree(tmp_path / "photos", per_class=2, splits=("test",), seed=3)
    a, b = root / "test" / "airplane", root / "test" / "truck"
    out, fresh = tmp_path / "labels.csv", tmp_path / "fresh.csv"
    classify([a, b], output=out, resume=True, top_k=2, **MODEL)
    _img(a / "added.png", 4)
    report = classify([b, a], output=out, resume=True, top_k=2, **MODEL)
    assert (report.reused, report.classified) == (4, 1)
    classify([b, a], output=fresh, top_k=2, **MODEL)
    assert out.read_bytes() == fresh.read_bytes()
    assert out.read_text().splitlines()[1].split(",")[0].startswith(str(b))


def test_an_output_edited_in_place_during_the_run_stops_it_and_is_not_replaced(tmp_path: Path) -> None:
    """The kept rows come from the file hashed at the start; cut in place mid-run, it is not mixed in."""
    root = make_tree(tmp_path / "photos", per_class=1, splits=("test",), seed=4)
    out = tmp_path / "labels.csv"
    classify([root], output=out, resume=True, batch_size=1, **MODEL)
    _img(root / "test" / "0-first.png", 2)  # sorts first: computed, then every kept row follows
    cut = out.read_bytes()[:200]

    def edit(event: Event) -> None:
        if event.kind == "progress" and out.stat().st_size > len(cut):
            with open(out, "r+b") as fh:  # same inode: an editor writing in place
                fh.truncate(len(cut))

    with pytest.raises(CifarbenchError, match="changed during the run"):
        classify([root], output=out, resume=True, batch_size=1, events=edit, **MODEL)
    assert out.read_bytes() == cut
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no temp file left
    assert not os.path.exists(str(out) + ".lock")


def _rows(path: Path) -> dict[str, list[str]]:
    import csv

    with open(path, newline="", encoding="utf-8") as fh:
        return {r[0]: r[1:] for r in list(csv.reader(fh))[1:]}


def test_a_file_whose_mtime_changed_but_not_its_size_is_classified_again(tmp_path: Path) -> None:
    """The key is (path, size, mtime): touching a file alone makes its row stale; each kept row keeps its own path."""
    root = make_tree(tmp_path / "photos", per_class=1, splits=("test",), seed=5)
    out = tmp_path / "labels.csv"
    first = classify([root], output=out, resume=True, top_k=2, **MODEL)
    before = _rows(out)
    touched = root / "test" / "cat" / "0000.png"
    st = touched.stat()
    os.utime(touched, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))  # same bytes, same size, newer mtime
    assert touched.stat().st_size == st.st_size
    seen: list[str] = []
    real_decode = __import__("cifarbench.data.decode_pool", fromlist=["decode_ordered"]).decode_ordered

    def spy(entries: Any, *a: Any, **k: Any) -> Any:
        seen.extend(e.path for e in entries)
        return real_decode(entries, *a, **k)

    import cifarbench.runs.classify as core

    mp = pytest.MonkeyPatch()
    mp.setattr(core, "decode_ordered", spy)
    try:
        again = classify([root], output=out, resume=True, top_k=2, **MODEL)
    finally:
        mp.undo()
    assert (again.classified, again.reused) == (1, first.files - 1)
    assert seen == [str(touched)]  # only the touched file was decoded again
    after = _rows(out)
    assert after == before  # same answers, and every kept row is the row of its own path
    assert list(after) == sorted(after) == [str(p) for p in sorted(root.rglob("*.png"))]
