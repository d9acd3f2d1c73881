"""The atomic writer: a failed or interrupted write never leaves a half file or a temp file."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from cifarbench.atomic import atomic_write


def listing(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir())


def test_writes_text_and_binary_and_creates_parents(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b" / "out.csv"
    with atomic_write(target, newline="") as fh:
        fh.write("x,y\r\n1,2\r\n")
    assert target.read_bytes() == b"x,y\r\n1,2\r\n"
    with atomic_write(target, "wb") as fh:
        fh.write(b"\x00\x01")
    assert target.read_bytes() == b"\x00\x01"
    assert listing(target.parent) == ["out.csv"]


def test_text_is_utf8_by_default(tmp_path: Path) -> None:
    with atomic_write(tmp_path / "t.txt") as fh:
        fh.write("naïve – 猫")
    assert (tmp_path / "t.txt").read_bytes().decode("utf-8") == "naïve – 猫"


@pytest.mark.parametrize("exc", [RuntimeError("boom"), KeyboardInterrupt()])
def test_failure_keeps_the_old_file_and_leaves_no_temp(tmp_path: Path, exc: BaseException) -> None:
    target = tmp_path / "results.jsonl"
    target.write_text("old complete content\n")
    with pytest.raises(type(exc)):
        with atomic_write(target) as fh:
            fh.write("new partial")
            fh.flush()
            assert target.read_text() == "old complete content\n"  # not visible until the end
            raise exc
    assert target.read_text() == "old complete content\n"
    assert listing(tmp_path) == ["results.jsonl"]


def test_failure_on_a_new_file_leaves_nothing(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        with atomic_write(tmp_path / "new.txt") as fh:
            fh.write("x")
            raise ValueError
    assert listing(tmp_path) == []


def test_temp_file_is_beside_the_target(tmp_path: Path) -> None:
    with atomic_write(tmp_path / "x.bin", "wb"):
        seen = listing(tmp_path)  # same directory, so the final rename is atomic
        assert len(seen) == 1 and seen[0].startswith(".x.bin.") and seen[0].endswith(".tmp")
    assert listing(tmp_path) == ["x.bin"]


def test_permissions_kept_or_from_umask(tmp_path: Path) -> None:
    existing = tmp_path / "script.sh"
    existing.write_text("#!/bin/sh\n")
    existing.chmod(0o750)
    with atomic_write(existing) as fh:
        fh.write("#!/bin/sh\necho hi\n")
    assert stat.S_IMODE(existing.stat().st_mode) == 0o750

    old = os.umask(0o027)
    try:
        with atomic_write(tmp_path / "fresh.txt") as fh:
            fh.write("x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "fresh.txt").stat().st_mode) == 0o640  # not mkstemp's 0600

