"""classify from cron: the summary names the failed files (three, then "and N more"); --allow-errors accepts them."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cifarbench.errors import ExitStatus
from conftest import REPO, run_cli

MODEL = REPO / "trained" / "baseline-cnn"  # shipped int8 artifacts: no conversion needed


def _folder(root: Path, bad: int, good: int = 2) -> list[str]:
    """``bad`` files that are not images and ``good`` real ones; returns the bad paths in classify's (sorted) order."""
    root.mkdir()
    for i in range(good):
        Image.fromarray(np.full((32, 32, 3), 40 * i, np.uint8)).save(root / f"good{i}.png")
    for i in range(bad):
        (root / f"bad{i:02d}.png").write_bytes(b"not a png at all")
    return [str(root / f"bad{i:02d}.png") for i in range(bad)]


@pytest.mark.parametrize("bad", [1, 3, 4, 7])
def test_quiet_summary_names_the_first_three_failed_files(tmp_path: Path, bad: int) -> None:
    names = _folder(tmp_path / "in", bad)
    out = tmp_path / "labels.csv"
    r = run_cli("classify", tmp_path / "in", "-m", MODEL, "-b", "onnx-int8", "-o", out, "-q")
    assert r.exit_code == ExitStatus.PARTIAL
    shown = ", ".join(names[:3]) + (f" and {bad - 3} more" if bad > 3 else "")  # the limit: 3 named, 4th counted
    assert r.stderr == f"classify: {bad} of {bad + 2} files failed ({shown}); see the error column\n"
    r = run_cli("classify", tmp_path / "in", "-m", MODEL, "-b", "onnx-int8", "-o", tmp_path / "l2.csv")
    assert f"{bad} failed ({shown})" in r.stderr.splitlines()[-1]  # the full summary names them too


def test_allow_errors_writes_the_rows_and_exits_0_silently(tmp_path: Path) -> None:
    _folder(tmp_path / "in", 2)
    out = tmp_path / "labels.csv"
    for _ in range(2):  # a cron job's second run (--resume retries failed files) stays silent too
        r = run_cli("classify", tmp_path / "in", "-m", MODEL, "-b", "onnx-int8", "-o", out, "--resume", "-q",
                    "--allow-errors")
        assert r.exit_code == 0 and r.stderr == "" and r.stdout == ""
        rows = list(csv.DictReader(io.StringIO(out.read_text())))
        assert len(rows) == 4 and sum(1 for x in rows if x["error"]) == 2 and all(x["label"] for x in rows if not x["error"])
    r = run_cli("classify", tmp_path / "in", "-m", MODEL, "-b", "onnx-int8", "-o", out, "--allow-errors")
    assert r.exit_code == 0 and "2 failed (" in r.stderr  # not quiet: still said
    r = run_cli("classify", tmp_path / "nothing-here", "-m", MODEL, "-b", "onnx-int8", "--allow-errors", "-q")
    assert r.exit_code == 0  # a missing PATH is a row error like any other
    r = run_cli("classify", tmp_path / "in", "-m", tmp_path / "no-model", "--allow-errors", "-q")
    assert r.exit_code == ExitStatus.DATA  # errors that are not a file's still fail


def test_help_documents_allow_errors() -> None:
    out = run_cli("classify", "--help").stdout
    assert "--allow-errors" in out and "0 with --allow-errors" in out
