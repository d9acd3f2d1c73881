"""The output and its --resume state are replaced together: a failure at any step leaves both old or both new."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from cifarbench.runs import pair_commit
from cifarbench.runs.classify import _remove_stale_temps
from cifarbench.runs.pair_commit import marker_path, recover, write_pair
from conftest import make_tree, run_cli

BEFORE_COMMIT = ["output-written", "state-written", "marker-written"]
AFTER_COMMIT = ["rename-0", "rename-1", "renamed"]


class Fault(Exception):
    pass


def _pair(folder: Path) -> tuple[bytes, dict]:
    out, state = folder / "out.csv", folder / "out.csv.state.json"
    return out.read_bytes(), json.loads(state.read_text())


def _consistent(folder: Path) -> bytes:
    """The output's bytes, after checking that the state records exactly their SHA-256 (hashlib, not the code's)."""
    data, state = _pair(folder)
    assert state["output_sha256"] == hashlib.sha256(data).hexdigest()
    return data


def _write(folder: Path, text: str) -> None:
    write_pair(folder / "out.csv", folder / "out.csv.state.json", lambda fh: fh.write(text),
               lambda new: {"output_sha256": hashlib.sha256(new.read_bytes()).hexdigest()})


def _next_run(folder: Path) -> None:
    """What the next run does under the lock before anything else."""
    recover(folder / "out.csv")
    _remove_stale_temps(folder / "out.csv")


@pytest.mark.parametrize("step", BEFORE_COMMIT + AFTER_COMMIT)
def test_an_error_at_any_step_leaves_both_old_or_both_new(step: str, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    _write(tmp_path, "old\n")

    def fail(name: str) -> None:
        if name == step:
            raise Fault(name)

    monkeypatch.setattr(pair_commit, "_step", fail)
    with pytest.raises(Fault):
        _write(tmp_path, "new\n")
    if step in BEFORE_COMMIT:  # nothing left behind at all: no temps, no marker
        assert sorted(p.name for p in tmp_path.iterdir()) == ["out.csv", "out.csv.state.json"]
        assert _consistent(tmp_path) == b"old\n"
    monkeypatch.setattr(pair_commit, "_step", lambda name: None)
    _next_run(tmp_path)
    assert _consistent(tmp_path) == (b"old\n" if step in BEFORE_COMMIT else b"new\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.csv", "out.csv.state.json"]


@pytest.mark.parametrize("step", BEFORE_COMMIT + AFTER_COMMIT)
def test_a_crash_at_any_step_leaves_both_old_or_both_new(step: str, tmp_path: Path) -> None:
    """The process dies (no cleanup at all) at ``step``; the next run recovers a consistent pair."""
    _write(tmp_path, "old\n")
    pid = os.fork()
    if pid == 0:  # the child dies at the step, as a kill -9 would
        pair_commit._step = lambda name: os._exit(9) if name == step else None  # type: ignore[assignment]
        try:
            _write(tmp_path, "new\n")
        finally:
            os._exit(0)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 9
    assert marker_path(tmp_path / "out.csv").exists() == (step in AFTER_COMMIT)
    _next_run(tmp_path)
    assert _consistent(tmp_path) == (b"old\n" if step in BEFORE_COMMIT else b"new\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.csv", "out.csv.state.json"]


def test_a_marker_naming_paths_outside_the_folder_is_ignored(tmp_path: Path) -> None:
    _write(tmp_path, "old\n")
    (tmp_path / "victim").write_text("keep")
    marker_path(tmp_path / "out.csv").write_text(json.dumps({"pairs": [["../victim", "out.csv"]]}))
    assert recover(tmp_path / "out.csv") and _consistent(tmp_path) == b"old\n"
    assert (tmp_path / "victim").read_text() == "keep"


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Path:
    """A 5 MiB tmpfs (needs root and mount); skipped where it cannot be made."""
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    if not shutil.which("mount") or os.geteuid() != 0:
        pytest.skip("a 5 MiB tmpfs needs root")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=5m", "tmpfs", str(mnt)], capture_output=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.decode(errors='replace').strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def test_resume_on_a_full_disk_keeps_the_old_output_and_state(tiny_disk: Path, tmp_path: Path) -> None:
    """The issue's case: room for the new output, none for its state (the old code replaced the output, then failed)."""
    root = make_tree(tmp_path / "imgs", per_class=4, splits=("test",), seed=7)
    out = tiny_disk / "out.csv"
    args = ("classify", root, "--model", "baseline-cnn", "--backend", "onnx-int8", "--resume", "-q", "-o")
    assert run_cli(*args, out).exit_code == 0
    old = _consistent(tiny_disk)
    make_tree(root / "more", per_class=4, splits=("test",), seed=8)  # the next run writes twice the rows
    assert run_cli(*args, tmp_path / "ref.csv").exit_code == 0  # the sizes the next run's files will have
    page = os.statvfs(tiny_disk).f_frsize
    need = -(-(tmp_path / "ref.csv").stat().st_size // page) * page
    assert (tmp_path / "ref.csv.state.json").stat().st_size > len(old)  # so the old code failed on the state
    with open(tiny_disk / "filler", "wb") as fh:  # room for the new output, none for its state
        fh.write(b"\0" * (shutil.disk_usage(tiny_disk).free - need))
    r = run_cli(*args, out)
    assert r.exit_code == 1 and "No space left on device" in r.stderr, r.stderr
    assert _consistent(tiny_disk) == old
    assert sorted(p.name for p in tiny_disk.iterdir()) == ["filler", "out.csv", "out.csv.state.json"]
    (tiny_disk / "filler").unlink()
    assert run_cli(*args, out).exit_code == 0 and _consistent(tiny_disk) == (tmp_path / "ref.csv").read_bytes()


# ----------------------------------------------------------------------------- the parts, one at a time


def test_a_new_pair_gets_the_umask_mode_and_a_replaced_one_keeps_its_mode(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        _write(tmp_path, "a\n")
        assert (tmp_path / "out.csv").stat().st_mode & 0o777 == 0o644  # 0o666 less the umask, like open()
        assert (tmp_path / "out.csv.state.json").stat().st_mode & 0o777 == 0o644
        os.chmod(tmp_path / "out.csv", 0o600)  # the user tightened it
        os.chmod(tmp_path / "out.csv.state.json", 0o640)
        _write(tmp_path, "b\n")
        assert (tmp_path / "out.csv").stat().st_mode & 0o777 == 0o600
        assert (tmp_path / "out.csv.state.json").stat().st_mode & 0o777 == 0o640
        assert os.umask(0o022) == 0o022  # put back
    finally:
        os.umask(old)


def test_a_folder_that_refuses_chmod_and_fsync_still_gets_the_pair(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """vfat and some network mounts refuse chmod; some refuse fsync on a directory: the data still lands."""
    import stat

    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            raise OSError(22, "Invalid argument")
        real_fsync(fd)

    def chmod(*_: object, **__: object) -> None:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "chmod", chmod)
    _write(tmp_path, "x\n")
    _write(tmp_path, "y\n")
    assert _consistent(tmp_path) == b"y\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.csv", "out.csv.state.json"]


def test_the_output_folder_is_made_with_its_parents(tmp_path: Path) -> None:
    folder = tmp_path / "a" / "b"
    _write(folder, "z\n")
    assert _consistent(folder) == b"z\n"


def test_state_is_compact_ascii_json_and_the_output_keeps_its_bytes(tmp_path: Path) -> None:
    write_pair(tmp_path / "out.csv", tmp_path / "s.json", lambda fh: fh.write("café,1\r\n"),
               lambda new: {"file": "café.jpg", "n": 1})
    assert (tmp_path / "s.json").read_bytes() == b'{"file":"caf\\u00e9.jpg","n":1}\n'
    assert (tmp_path / "out.csv").read_bytes() == "café,1\r\n".encode("utf-8")  # csv's \r\n kept, UTF-8


def test_recover_without_a_marker_or_with_a_broken_one(tmp_path: Path) -> None:
    out = tmp_path / "out.csv"
    assert recover(out) is False
    marker_path(out).write_text("{not json")
    assert recover(out) is False and not marker_path(out).exists()  # not ours: removed
    marker_path(out).mkdir()  # unreadable and not removable as a file
    assert recover(out) is False


def test_recover_skips_a_bad_pair_and_finishes_the_others(tmp_path: Path) -> None:
    _write(tmp_path, "old\n")
    (tmp_path / ".new.tmp").write_text("renamed")
    marker_path(tmp_path / "out.csv").write_text(json.dumps({"pairs": [["../x", "out.csv"], [".new.tmp", "other"]]}))
    assert recover(tmp_path / "out.csv") is True
    assert (tmp_path / "other").read_text() == "renamed" and _consistent(tmp_path) == b"old\n"
    assert not marker_path(tmp_path / "out.csv").exists()


def test_cleanup_after_a_failure_tolerates_a_temp_already_gone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _write(tmp_path, "old\n")

    def fail(name: str) -> None:
        if name == "state-written":
            for p in tmp_path.glob(".out.csv.*.tmp"):
                p.unlink()  # another cleaner got there first
            raise Fault(name)

    monkeypatch.setattr(pair_commit, "_step", fail)
    with pytest.raises(Fault):
        _write(tmp_path, "new\n")
    assert _consistent(tmp_path) == b"old\n"


def test_the_output_is_utf8_even_under_an_ascii_locale(tmp_path: Path) -> None:
    """A cron job's minimal environment (C locale, UTF-8 mode off) must not change the output's encoding."""
    import sys

    code = ("import sys; from pathlib import Path; from cifarbench.runs.pair_commit import write_pair; "
            "p = Path(sys.argv[1]); write_pair(p / 'out.csv', p / 's.json', lambda fh: fh.write('caf\\u00e9\\n'), "
            "lambda new: {'n': 1})")
    env = {**os.environ, "LC_ALL": "C", "LANG": "C", "PYTHONUTF8": "0", "PYTHONCOERCECLOCALE": "0"}
    r = subprocess.run([sys.executable, "-c", code, str(tmp_path)], env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "out.csv").read_bytes() == "café\n".encode("utf-8")


def test_every_text_file_is_opened_as_utf8_and_the_output_without_newline_translation(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """In-process twin of the C-locale test (a subprocess cannot see a mutated module): the encoding is named,
    never the locale's, and the CSV output is opened with newline="" as the csv module requires."""
    import builtins
    import codecs

    opened: list[tuple[str, str, Any, Any]] = []

    def spy(file: Any, mode: str = "r", *args: Any, **kw: Any) -> Any:
        if "b" not in mode:
            opened.append((Path(file).name, mode, kw.get("encoding"), kw.get("newline", "unset")))
        return builtins.open(file, mode, *args, **kw)

    monkeypatch.setattr(pair_commit, "open", spy, raising=False)
    _write(tmp_path, "x\n")
    writes = [o for o in opened if o[1] == "w"]
    assert len(writes) == 3  # output, state, marker
    assert all(enc is not None and codecs.lookup(enc).name == "utf-8" for _, _, enc, _ in writes), writes
    assert writes[0][0].startswith(".out.csv.") and writes[0][3] == ""
