"""The output and its --resume state are replaced together: a failure at any step leaves both old or both new."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path

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
