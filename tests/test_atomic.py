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
    for mode in (0o751, 0o604, 0o777):  # every bit of the old mode carried over, none invented
        existing.chmod(mode)
        with atomic_write(existing) as fh:
            fh.write("#!/bin/sh\necho hi\n")
        assert stat.S_IMODE(existing.stat().st_mode) == mode

    old = os.umask(0o027)
    try:
        with atomic_write(tmp_path / "fresh.txt") as fh:
            fh.write("x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "fresh.txt").stat().st_mode) == 0o640  # not mkstemp's 0600
    for mask, expect in ((0o000, 0o666), (0o022, 0o644)):  # 0666 minus the umask, whatever the umask
        old = os.umask(mask)
        try:
            with atomic_write(tmp_path / f"fresh{mask}.txt") as fh:
                fh.write("x")
            assert os.umask(mask) == mask  # and the process umask is left as it was
        finally:
            os.umask(old)
        assert stat.S_IMODE((tmp_path / f"fresh{mask}.txt").stat().st_mode) == expect


def test_fsync_of_the_temp_file_comes_before_the_replace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without fsync before rename, a power cut can leave a renamed but empty file."""
    events: list[tuple[str, object]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}") if os.path.exists("/proc/self/fd") else fd))
        real_fsync(fd)

    def replace(src: str, dst: object) -> None:
        events.append(("replace", Path(src).read_bytes()))
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    with atomic_write(tmp_path / "out.txt") as fh:
        fh.write("all of it")
        assert events == []  # nothing synced or renamed while the caller still writes
    assert [e[0] for e in events] == ["fsync", "replace"]
    assert events[1][1] == b"all of it"  # flushed before the rename
    if os.path.exists("/proc/self/fd"):
        synced = str(events[0][1])
        assert Path(synced).name.startswith(".out.txt.") and synced.endswith(".tmp")  # the temp file, not another fd



def test_encoding_and_newline_reach_the_text_file_and_not_a_binary_one(tmp_path: Path) -> None:
    with atomic_write(tmp_path / "l1.txt", encoding="latin-1") as fh:
        fh.write("é")
    assert (tmp_path / "l1.txt").read_bytes() == b"\xe9"  # not UTF-8's c3 a9
    with atomic_write(tmp_path / "crlf.txt", newline="\r\n") as fh:
        fh.write("a\nb\n")
    assert (tmp_path / "crlf.txt").read_bytes() == b"a\r\nb\r\n"  # the caller's newline translation
    with atomic_write(tmp_path / "b.bin", "wb", encoding="latin-1", newline="\r\n") as fh:
        fh.write(b"a\nb")  # text options are ignored for bytes (open() would refuse them)
    assert (tmp_path / "b.bin").read_bytes() == b"a\nb"


def test_a_chmod_or_unlink_that_fails_changes_nothing_else(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Copying the old mode is best effort (a file owned by another user); the cleanup never hides the real error."""
    target = tmp_path / "owned.txt"
    target.write_text("old")

    def refuse(*_: object) -> None:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "chmod", refuse)
    with atomic_write(target) as fh:
        fh.write("new")
    assert target.read_text() == "new"
    monkeypatch.setattr(os, "unlink", refuse)
    with pytest.raises(ValueError, match="the caller's"):
        with atomic_write(target) as fh:
            raise ValueError("the caller's")
    assert target.read_text() == "new"
