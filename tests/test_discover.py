"""File discovery: sorted order, hidden entries, symlink loops, filters, unreadable entries."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import numpy as np
from PIL import Image

from cifarbench.data.discover import discover
from cifarbench.errors import UsageError
from conftest import class_pattern, run_unprivileged

LATIN1 = os.fsdecode(b"caf\xe9.png")  # a name that is not UTF-8


def _img(path: Path | str, label: int, seed: int = 0, fmt: str = "PNG") -> None:
    Image.fromarray(class_pattern(label, np.random.default_rng(seed))).save(path, fmt)


def _tree(root: Path) -> tuple[Path, list[str], set[str]]:
    """Good, awkward and ignored files; returns (root, expected row paths in order, the ones that fail)."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "b").mkdir()
    (root / "a").mkdir()
    for i, name in enumerate(["b/2.png", "b/10.png", "a/x.jpg", "with,comma.png", 'with"quote.png', "new\nline.png"]):
        _img(root / name, i % 10, seed=i, fmt="JPEG" if name.endswith("jpg") else "PNG")
    _img(os.path.join(os.fsencode(root), os.fsencode(LATIN1)), 3)
    Image.fromarray(np.full((1500, 2000, 3), 200, np.uint8)).save(root / "big.jpg", quality=80)  # 3 MP photo
    (root / "empty.jpg").write_bytes(b"")
    good = (root / "a" / "x.jpg").read_bytes()
    (root / "truncated.jpg").write_bytes(good[: len(good) // 2])
    (root / "text.png").write_text("not an image")
    (root / "notes.txt").write_text("skipped: not an image extension")
    (root / ".hidden.png").write_bytes(good)
    (root / ".cache").mkdir()
    _img(root / ".cache" / "h.png", 1)
    os.symlink("..", root / "a" / "loop")  # a symlink loop back to root
    names = sorted(["a/x.jpg", "b/10.png", "b/2.png", "big.jpg", "empty.jpg", "new\nline.png", "text.png",
                    "truncated.jpg", "with,comma.png", 'with"quote.png', LATIN1], key=lambda n: n.split("/"))
    expected = [os.path.join(str(root), n) for n in names]
    failing = {os.path.join(str(root), n) for n in ("empty.jpg", "text.png", "truncated.jpg")}
    return root, expected, failing


def test_order_hidden_loops_and_filters(tmp_path: Path) -> None:
    root, expected, _ = _tree(tmp_path / "photos")
    assert [e.path for e in discover([root])] == expected
    assert [e.path for e in discover([root], recursive=False)] == [p for p in expected if "/a/" not in p and "/b/" not in p]
    assert [os.path.basename(e.path) for e in discover([root], include=["*.JPG"])] == ["x.jpg", "big.jpg", "empty.jpg", "truncated.jpg"]
    assert [e.path for e in discover([root], include=["b/*"])] == [str(root / "b/10.png"), str(root / "b/2.png")]
    hidden = root / ".hidden.png"
    assert [e.path for e in discover([hidden, root / "b"], exclude=[root / "b" / "2.png"])] == [str(hidden), str(root / "b/10.png")]
    assert len(list(discover([root, root, root / "b"]))) == len(expected)  # each file once
    sizes = {e.path: e.size for e in discover([root])}
    assert sizes[str(root / "empty.jpg")] == 0


def test_reports_broken_links_and_missing_paths_as_entries(tmp_path: Path) -> None:
    os.symlink("nowhere.png", tmp_path / "dangling.png")
    (entry,) = discover([tmp_path])
    assert entry.error == "broken symbolic link"
    _img(tmp_path / "ok.png", 1)
    named = [tmp_path / "ok.png", tmp_path / "missing.jpg", tmp_path / "dangling.png", tmp_path / "no" / "dir"]
    got = [(os.path.basename(e.path), e.error) for e in discover(named)]
    assert got == [("ok.png", None), ("missing.jpg", "file not found"), ("dangling.png", "broken symbolic link"),
                   ("dir", "file not found")]  # named explicitly: each a row, never an abort
    os.symlink("self.png", tmp_path / "self.png")  # a link to itself
    (entry,) = discover([tmp_path / "self.png"])
    assert entry.error.startswith("broken symbolic link")
    with pytest.raises(UsageError):
        list(discover([""]))


def test_unreadable_directory_gets_an_entry(unprivileged_tmp: Path) -> None:
    """As a user who cannot list it (root can list anything: the test drops to nobody then)."""
    locked = unprivileged_tmp / "locked"
    locked.mkdir()
    _img(locked / "a.png", 1)
    locked.chmod(0)
    (entry,) = run_unprivileged(lambda: [(e.path, e.error) for e in discover([unprivileged_tmp])])
    assert entry[0] == str(locked) and entry[1].startswith("cannot list directory")
