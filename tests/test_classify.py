"""`cifarbench classify`: CSV/JSONL contract, error rows, exit codes, atomic output, resume, lock."""

from __future__ import annotations

import csv
import io
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from cifarbench import CIFAR10_CLASSES
from cifarbench.errors import ExitStatus
from cifarbench.runs import classify as core
from cifarbench.runs.lock import OutputLock, lock_path_for
from cifarbench.runs.writers import columns, display_text
from conftest import run_cli
from test_discover import LATIN1, _img, _tree

pytestmark = pytest.mark.slow  # the tiny_model fixture trains and converts a model once per session
pytest.importorskip("tensorflow")


@pytest.fixture()
def tree(tmp_path: Path) -> tuple[Path, list[str], set[str]]:
    return _tree(tmp_path / "photos")


def _csv(text: str) -> list[list[str]]:
    return list(csv.reader(io.StringIO(text, newline=""), strict=True))


# --------------------------------------------------------------------------- pipeline
@pytest.mark.parametrize("batch_size", [1, 2, 3, 7])
def test_rows_keep_input_order_around_failures_and_batches(batch_size: int) -> None:
    rng = np.random.default_rng(batch_size)
    n = 60
    bad = set(rng.choice(n, 25, replace=False).tolist()) | set(range(40, 55))  # a long run of failures too
    entries = [core.FileEntry(f"f{i}") for i in range(n)]
    decoded = [(None, f"bad {i}") if i in bad else (np.full((32, 32, 3), i, np.uint8), None) for i in range(n)]
    seen: list[int] = []

    def predict(batch: np.ndarray) -> np.ndarray:
        assert 1 <= len(batch) <= batch_size
        seen.append(len(batch))
        return np.eye(10, dtype=np.float32)[batch[:, 0, 0, 0] % 10]

    batches = list(core.predict_rows(entries, iter(decoded), predict, CIFAR10_CLASSES, 2, batch_size, 32))
    rows = [r for b in batches for r in b]
    assert [r.path for r in rows] == [e.path for e in entries]
    for i, r in enumerate(rows):
        if i in bad:
            assert r.error == f"bad {i}" and r.label is None
        else:
            assert r.error is None and r.class_index == i % 10 and r.label == CIFAR10_CLASSES[i % 10]
            assert r.confidence == 1.0 and r.alternatives[0][1] == 0.0
    assert sum(seen) == n - len(bad)


def test_a_failing_model_is_one_model_error() -> None:
    def predict(batch: np.ndarray) -> np.ndarray:
        raise RuntimeError("[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : bad shape\nmore")

    entries = [core.FileEntry(f"f{i}") for i in range(3)]
    decoded = [(np.zeros((32, 32, 3), np.uint8), None)] * 3
    with pytest.raises(core.ModelError, match="inference failed: .*bad shape$"):
        list(core.predict_rows(entries, iter(decoded), predict, CIFAR10_CLASSES, 1, 2, 32))


# --------------------------------------------------------------------------- output contract
def test_csv_schema_quoting_and_error_rows(tiny_model: Path, tree: tuple[Path, list[str], set[str]], tmp_path: Path) -> None:
    root, expected, failing = tree
    r = run_cli("classify", root, "--model", tiny_model, "--backend", "onnx", "--top-k", "3")
    assert r.exit_code == ExitStatus.PARTIAL, r.stderr
    raw = r.stdout_bytes
    raw.decode("utf-8")  # strict UTF-8 even with a non-UTF-8 file name
    rows = _csv(raw.decode())
    assert rows[0] == columns(3) and raw.startswith(b"path,label,class_index,confidence,label_2,")
    assert [row[0] for row in rows[1:]] == [display_text(p) for p in expected]
    assert display_text(str(root / LATIN1)).endswith("caf\\xe9.png")
    for row, path in zip(rows[1:], expected):
        if path in failing:
            assert row[1:-1] == [""] * 7 and row[-1], row
            continue
        assert row[-1] == "", row
        label, idx, confs = row[1], int(row[2]), [float(row[3]), float(row[5]), float(row[7])]
        assert CIFAR10_CLASSES[idx] == label and len({label, row[4], row[6]}) == 3
        assert 0 <= confs[2] <= confs[1] <= confs[0] <= 1
    errors = {row[0]: row[-1] for row in rows[1:] if row[-1]}
    assert "empty" in errors[display_text(str(root / "empty.jpg"))]
    assert "truncated" in errors[display_text(str(root / "truncated.jpg"))]
    assert "not an image" in errors[display_text(str(root / "text.png"))]
    assert "11 files, 3 failed" in r.stderr and "backend onnx" in r.stderr


def test_jsonl_matches_csv(tiny_model: Path, tree: tuple[Path, list[str], set[str]], tmp_path: Path) -> None:
    root, expected, failing = tree
    out_csv, out_jsonl = tmp_path / "o.csv", tmp_path / "o.jsonl"
    assert run_cli("classify", root, "-m", tiny_model, "-b", "onnx", "-o", out_csv, "--top-k", "2").exit_code == 3
    assert run_cli("classify", root, "-m", tiny_model, "-b", "onnx", "-o", out_jsonl, "--top-k", "2", "-q").exit_code == 3
    objs = [json.loads(line) for line in out_jsonl.read_text(encoding="utf-8").splitlines()]
    rows = _csv(out_csv.read_text(encoding="utf-8"))
    assert all(list(o) == rows[0] for o in objs)
    for o, row in zip(objs, rows[1:]):
        assert o["path"] == row[0] and (o["label"] or "") == row[1]
        assert (o["error"] is None) == (row[-1] == "") and (o["path"] in {display_text(p) for p in failing}) == (o["error"] is not None)
        if o["error"] is None:
            assert o["confidence"] == pytest.approx(float(row[3]), abs=1e-6) and o["class_index"] == int(row[2])
    assert len(objs) == len(expected)


def test_all_good_is_exit_0_and_quiet_is_silent(tiny_model: Path, tmp_path: Path) -> None:
    for i in range(3):
        _img(tmp_path / f"{i}.png", i)
    r = run_cli("classify", tmp_path, "-m", tiny_model, "-b", "tflite-int8", "-q")
    assert r.exit_code == ExitStatus.OK and r.stderr == ""
    assert len(_csv(r.stdout)) == 4
    r = run_cli("classify", tmp_path / "0.png", "-m", tiny_model, "-b", "onnx-int8", "--resize", "pad")
    assert r.exit_code == 0 and r.stderr.count("\n") == 1 and "1 file, 0 failed" in r.stderr  # no progress bar off a TTY


@pytest.mark.parametrize("args, code, message", [
    (["--resume"], ExitStatus.USAGE, "--resume needs --output"),
    (["--top-k", "11"], ExitStatus.USAGE, "more than the model's 10 classes"),
    (["--batch-size", "0"], ExitStatus.USAGE, ""),
    (["-b", "tflite", "--device", "gpu"], ExitStatus.UNAVAILABLE, "CPU only"),
])
def test_exit_codes(tiny_model: Path, tmp_path: Path, args: list[str], code: int, message: str) -> None:
    _img(tmp_path / "a.png", 1)
    r = run_cli("classify", tmp_path, "-m", tiny_model, *args)
    assert r.exit_code == code and message in r.stderr and "Traceback" not in r.stderr


def test_missing_path_and_model_are_clear(tiny_model: Path, tmp_path: Path) -> None:
    r = run_cli("classify", tmp_path / "nope", "-m", tiny_model, "-b", "onnx")
    assert r.exit_code == ExitStatus.PARTIAL and _csv(r.stdout)[1][-1] == "file not found"  # a row, not an abort
    r = run_cli("classify", tmp_path, "-m", tmp_path / "nomodel")
    assert r.exit_code == ExitStatus.DATA and "not found" in r.stderr


def test_unwritable_output_is_one_line(tiny_model: Path, tmp_path: Path) -> None:
    _img(tmp_path / "a.png", 1)
    (tmp_path / "file").write_text("x")
    r = run_cli("classify", tmp_path / "a.png", "-m", tiny_model, "-b", "onnx", "-o", tmp_path / "file" / "out.csv")
    assert r.exit_code == ExitStatus.ERROR and r.stderr.startswith("error: cannot write") and r.stderr.count("\n") == 1


def test_help_documents_exit_codes() -> None:
    r = run_cli("classify", "--help")
    for code in ("0  every file", "3  some files failed", "2  usage", "5  another run", "130  interrupted"):
        assert code in r.stdout
    assert "--resume --quiet" in r.stdout


def test_threads_reach_the_runtime(tiny_model: Path, tmp_path: Path) -> None:
    _img(tmp_path / "a.png", 1)
    for backend in ("onnx", "tflite-int8"):
        rep = core.classify([tmp_path], model=tiny_model, backend=backend, threads=1, stream=io.StringIO())
        assert rep.runtime["threads"] == 1 and rep.exit_status == ExitStatus.OK


# --------------------------------------------------------------------------- atomic output, resume, lock
@pytest.mark.parametrize("how", ["ctrl-c", "sigterm"])
def test_interrupted_run_leaves_previous_output_intact(tiny_model: Path, tree: tuple[Path, list[str], set[str]],
                                                       tmp_path: Path, monkeypatch: pytest.MonkeyPatch, how: str) -> None:
    root, _, _ = tree
    out = tmp_path / "labels.csv"
    out.write_text("previous results\n")
    from cifarbench.runs import writers

    real, calls = writers.CsvRowWriter.format, []

    def crash_after_some_rows(self, row):  # type: ignore[no-untyped-def]
        calls.append(row)
        if len(calls) == 5:  # halfway through writing
            if how == "sigterm":
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(5)  # the handler interrupts this sleep
            raise KeyboardInterrupt
        return real(self, row)

    monkeypatch.setattr(writers.CsvRowWriter, "format", crash_after_some_rows)
    before = signal.getsignal(signal.SIGTERM)
    t0 = time.monotonic()
    r = run_cli("classify", root, "-m", tiny_model, "-b", "onnx", "-o", out, "--batch-size", "2")
    assert r.exit_code == ExitStatus.INTERRUPTED and time.monotonic() - t0 < 5
    assert out.read_text() == "previous results\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["labels.csv", "photos"]  # no temp file, no lock left
    assert signal.getsignal(signal.SIGTERM) is before


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_resume_equals_fresh_run(tiny_model: Path, tmp_path: Path, fmt: str) -> None:
    root, _, _ = _tree(tmp_path / "photos")
    out, fresh = tmp_path / f"labels.{fmt}", tmp_path / f"fresh.{fmt}"
    base = ["classify", root, "-m", tiny_model, "-b", "onnx", "--top-k", "2"]
    first = run_cli(*base, "-o", out, "--resume")
    assert first.exit_code == 3 and Path(str(out) + ".state.json").is_file()
    # the folder changes: one file added, one removed, one rewritten, one broken file repaired
    _img(root / "b" / "new.png", 7)
    (root / "b" / "10.png").unlink()
    _img(root / "with,comma.png", 9, seed=42)
    os.utime(root / "with,comma.png", ns=(1, 1))
    _img(root / "text.png", 5)
    second = run_cli(*base, "-o", out, "--resume")
    assert second.exit_code == 3, second.stderr
    assert "reused" in second.stderr
    reused = int(second.stderr.split(" reused")[0].rsplit(", ", 1)[1])
    assert reused == 6  # unchanged good files only; failed rows are always retried
    assert run_cli(*base, "-o", fresh).exit_code == 3
    assert out.read_bytes() == fresh.read_bytes()
    # nothing changed: everything reused, no model needed, same bytes
    third = run_cli(*base, "-o", out, "--resume")
    assert out.read_bytes() == fresh.read_bytes() and "2 failed" in third.stderr


def test_resume_ignores_a_mismatched_state(tiny_model: Path, tmp_path: Path) -> None:
    root = tmp_path / "p"
    root.mkdir()
    for i in range(4):
        _img(root / f"{i}.png", i)
    out = tmp_path / "labels.csv"
    base = ["classify", root, "-m", tiny_model, "-b", "onnx", "-o", out, "--resume"]
    assert run_cli(*base).exit_code == 0
    good = out.read_bytes()
    out.write_bytes(good.replace(b"0.", b"9.", 1))  # someone edited the output
    r = run_cli(*base)
    assert "changed since" in r.stderr and out.read_bytes() == good
    r = run_cli(*base, "--top-k", "2")  # other options: all rows computed again
    assert "options changed" in r.stderr and len(_csv(out.read_text())[0]) == 7
    Path(str(out) + ".state.json").write_text("{not json")
    r = run_cli(*base, "--top-k", "2")
    assert r.exit_code == 0 and "unreadable" in r.stderr


def test_temp_files_of_killed_runs_are_cleaned_up(tiny_model: Path, tmp_path: Path) -> None:
    _img(tmp_path / "a.png", 1)
    out = tmp_path / "out" / "labels.csv"
    out.parent.mkdir()
    stale = [out.parent / ".labels.csv.k2j3h4.tmp", out.parent / ".labels.csv.state.json.x8y9.tmp"]
    keep = [out.parent / ".other.csv.k2j3h4.tmp", out.parent / "labels.csv.tmp"]
    for p in stale + keep:
        p.write_text("left by a run killed with SIGKILL")
    assert run_cli("classify", tmp_path / "a.png", "-m", tiny_model, "-b", "onnx", "-o", out).exit_code == 0
    assert not any(p.exists() for p in stale) and all(p.exists() for p in keep)


def test_lock_held_exits_5_and_stale_lock_is_ignored(tiny_model: Path, tmp_path: Path) -> None:
    _img(tmp_path / "a.png", 1)
    out = tmp_path / "out" / "labels.csv"
    with OutputLock(out):
        r = run_cli("classify", tmp_path / "a.png", "-m", tiny_model, "-b", "onnx", "-o", out)
    assert r.exit_code == ExitStatus.LOCKED and "lock" in r.stderr and not out.exists()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    lock_path_for(out).write_text(json.dumps({"pid": dead.pid}))
    r = run_cli("classify", tmp_path / "a.png", "-m", tiny_model, "-b", "onnx", "-o", out)
    assert r.exit_code == 0 and out.is_file() and not lock_path_for(out).exists()


# --------------------------------------------------------------------------- lazy imports
@pytest.mark.parametrize("backend", ["onnx", "onnx-int8", "tflite", "tflite-int8"])
def test_onnx_and_tflite_never_import_tensorflow(tiny_model: Path, tmp_path: Path, backend: str) -> None:
    _img(tmp_path / "a.png", 1)
    code = textwrap.dedent("""
        import json, sys
        from cifarbench.cli import cli
        try:
            cli.main(sys.argv[1:], prog_name="cifarbench")
        except SystemExit as exc:
            status = exc.code
        heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("tensorflow", "keras", "tf_keras", "tf2onnx"))
        print(json.dumps({"status": status, "heavy": heavy}))
    """)
    out = tmp_path / "o.csv"
    p = subprocess.run([sys.executable, "-c", code, "classify", str(tmp_path), "-m", str(tiny_model), "-b", backend,
                        "-o", str(out), "-q"], capture_output=True, text=True, timeout=120)
    got = json.loads(p.stdout.strip().splitlines()[-1])
    assert got == {"status": 0, "heavy": []}, p.stderr
    assert p.stderr == ""  # --quiet: nothing at all, not even runtime logs


# --------------------------------------------------------------------------- hardening (issue 13)
def test_named_missing_unreadable_and_broken_link_files_get_rows(tiny_model: Path, tmp_path: Path) -> None:
    _img(tmp_path / "ok.png", 1)
    os.symlink("nowhere.png", tmp_path / "dangling.png")
    (tmp_path / "secret.png").write_bytes((tmp_path / "ok.png").read_bytes())
    (tmp_path / "secret.png").chmod(0)
    out = tmp_path / "out.csv"
    names = ["ok.png", "missing.jpg", "dangling.png", "secret.png"]
    r = run_cli("classify", *[tmp_path / n for n in names], "-m", tiny_model, "-b", "onnx", "-o", out)
    assert r.exit_code == ExitStatus.PARTIAL, r.stderr
    rows = _csv(out.read_text(encoding="utf-8"))[1:]
    assert [os.path.basename(row[0]) for row in rows] == names
    errors = [row[-1] for row in rows]
    assert errors[:3] == ["", "file not found", "broken symbolic link"]
    assert errors[3] == ("" if os.geteuid() == 0 else "permission denied")  # root reads chmod 000 files


def test_names_with_0xff_and_a_literal_backslash_stay_distinct_through_resume(tiny_model: Path, tmp_path: Path) -> None:
    root = tmp_path / "p"
    root.mkdir()
    raw = [b"x\xff.png", b"x\\xff.png", b"x\\\\xff.png"]  # byte 0xFF; a backslash then "xff"; two backslashes
    for i, name in enumerate(raw):
        _img(os.path.join(os.fsencode(root), name), i)
    out, fresh = tmp_path / "labels.csv", tmp_path / "fresh.csv"
    base = ["classify", root, "-m", tiny_model, "-b", "onnx"]
    assert run_cli(*base, "-o", out, "--resume").exit_code == 0
    paths = [row[0] for row in _csv(out.read_text(encoding="utf-8"))[1:]]
    assert len(set(paths)) == 3 and paths == sorted(display_text(os.path.join(str(root), os.fsdecode(n))) for n in raw)
    assert str(root) + "/x\\xff.png" in paths and str(root) + "/x\\\\xff.png" in paths
    again = run_cli(*base, "-o", out, "--resume")
    assert "3 reused" in again.stderr and "img/s" not in again.stderr  # nothing classified: no rate
    assert run_cli(*base, "-o", fresh).exit_code == 0 and out.read_bytes() == fresh.read_bytes()


def test_symlinked_output_is_written_through_and_the_target_locked(tiny_model: Path, tmp_path: Path) -> None:
    _img(tmp_path / "a.png", 1)
    (tmp_path / "real").mkdir()
    target, link = tmp_path / "real" / "labels.csv", tmp_path / "link.csv"
    target.write_text("old\n")
    os.symlink(target, link)
    args = ["classify", tmp_path / "a.png", "-m", tiny_model, "-b", "onnx", "-o", link]
    with OutputLock(target):  # the lock is the resolved path's
        assert run_cli(*args).exit_code == ExitStatus.LOCKED
    r = run_cli(*args, "--resume")
    assert r.exit_code == 0, r.stderr
    assert link.is_symlink() and os.readlink(link) == str(target) and target.read_text().startswith("path,")
    assert sorted(p.name for p in target.parent.iterdir()) == ["labels.csv", "labels.csv.state.json"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png", "link.csv", "real"]  # no lock beside the link
    assert "reused" in run_cli(*args, "--resume").stderr


def test_disk_full_keeps_the_previous_output_and_leaves_no_lock(tiny_model: Path, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    import errno

    _img(tmp_path / "a.png", 1)
    out = tmp_path / "o" / "labels.csv"
    out.parent.mkdir()
    out.write_text("previous\n")

    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)  # the atomic writer's last step before the rename
    monkeypatch.setattr(os, "pwrite", lambda *a: full(0))  # the lock's owner line: the lock file was created empty
    r = run_cli("classify", tmp_path / "a.png", "-m", tiny_model, "-b", "onnx", "-o", out, "-q")
    assert r.exit_code == ExitStatus.ERROR and "No space left" in r.stderr and r.stderr.count("\n") == 1
    assert out.read_text() == "previous\n" and sorted(p.name for p in out.parent.iterdir()) == ["labels.csv"]


def test_quiet_run_on_a_corrupt_tiff_prints_one_line(tiny_model: Path, tmp_path: Path,
                                                     capfd: pytest.CaptureFixture[str]) -> None:
    from PIL import features

    from test_images import corrupt_tiff

    if not features.check("libtiff"):
        pytest.skip("Pillow without libtiff")
    (tmp_path / "bad.tif").write_bytes(corrupt_tiff())
    _img(tmp_path / "good.png", 2)
    out = tmp_path / "o.csv"
    r = run_cli("classify", tmp_path, "-m", tiny_model, "-b", "onnx", "-o", out, "-q")
    fd = capfd.readouterr()
    assert r.exit_code == ExitStatus.PARTIAL
    assert r.stderr == f"classify: 1 of 2 files failed ({tmp_path / 'bad.tif'}); see the error column\n"
    assert fd.err == "" and fd.out == ""
    assert "libtiff: ZIPDecode" in _csv(out.read_text())[1][-1]


def test_max_pixels_refuses_from_the_header_as_a_row(tiny_model: Path, tmp_path: Path) -> None:
    from test_images import png_header_bomb

    _img(tmp_path / "a.png", 1)  # 32 x 32 = 1,024 pixels
    (tmp_path / "bomb.png").write_bytes(png_header_bomb(9000, 9000))
    r = run_cli("classify", tmp_path, "-m", tiny_model, "-b", "onnx")
    rows = {os.path.basename(row[0]): row[-1] for row in _csv(r.stdout)[1:]}
    assert r.exit_code == ExitStatus.PARTIAL and rows["a.png"] == ""
    assert rows["bomb.png"].startswith("image too large") and "81,000,000 pixels" in rows["bomb.png"]
    r = run_cli("classify", tmp_path, "-m", tiny_model, "-b", "onnx", "--max-pixels", "1000")
    assert all("limit 1,000 pixels" in row[-1] for row in _csv(r.stdout)[1:])
    assert run_cli("classify", tmp_path, "-m", tiny_model, "--max-pixels", "0").exit_code == ExitStatus.USAGE


BOMB_CHILD = """
import sys
from cifarbench.runs.classify import classify
folder, model, out, pool = sys.argv[1:5]
rep = classify([folder], model=model, backend="onnx", output=out, workers=4, pool=pool)
print(rep.files, rep.failed)
"""


def _peak_tree_rss_mb(args: list[str]) -> tuple[float, str]:
    """Run ``args`` and sample the summed RSS of it and its descendants every 10 ms: (peak MB, stdout)."""
    def tree_pids(pid: int) -> list[int]:
        out, todo = [], [pid]
        while todo:
            p = todo.pop()
            out.append(p)
            try:
                for task in os.listdir(f"/proc/{p}/task"):
                    with open(f"/proc/{p}/task/{task}/children") as fh:
                        todo += [int(c) for c in fh.read().split()]
            except OSError:  # gone meanwhile
                pass
        return out

    def rss(pid: int) -> int:
        try:
            with open(f"/proc/{pid}/statm") as fh:
                return int(fh.read().split()[1])
        except (OSError, IndexError, ValueError):
            return 0

    child = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak = 0
    while child.poll() is None:
        peak = max(peak, sum(rss(p) for p in tree_pids(child.pid)))
        time.sleep(0.01)
    stdout, stderr = child.communicate()
    assert child.returncode == 0, stderr[-2000:]
    return peak * os.sysconf("SC_PAGE_SIZE") / 2**20, stdout


@pytest.mark.skipif(not os.path.exists("/proc/self/task"), reason="needs /proc to follow the process tree")
@pytest.mark.parametrize("pool", ["thread", "process"])
def test_header_bombs_through_four_workers_are_rows_at_baseline_memory(tiny_model: Path, tmp_path: Path,
                                                                         pool: str) -> None:
    """The bombs target at small scale: 20 tiny files declaring 81+ MP, 4 decode workers, every row an error.

    Peak RSS of the whole process tree (pool workers included) is compared with the same run over 20 valid
    images: one decode of any of these files alone would cost 300+ MB.
    """
    from test_images import blp_header_bomb, png_header_bomb

    good, bombs = tmp_path / "good", tmp_path / "bombs"
    good.mkdir()
    bombs.mkdir()
    for i in range(20):
        _img(good / f"{i:02d}.png", i % 10)
        side = 9000 + 37 * i
        if i % 2:
            (bombs / f"{i:02d}.png").write_bytes(png_header_bomb(side, side))
        else:
            (bombs / f"{i:02d}.jpg").write_bytes(blp_header_bomb(side, side))  # named as a photo
    runs = {}
    for name, folder in (("good", good), ("bombs", bombs)):
        out = tmp_path / f"{name}.csv"
        peak, stdout = _peak_tree_rss_mb([sys.executable, "-c", BOMB_CHILD, str(folder), str(tiny_model), str(out), pool])
        runs[name] = peak, stdout.split(), _csv(out.read_text(encoding="utf-8"))[1:]
    assert runs["good"][1] == ["20", "0"] and runs["bombs"][1] == ["20", "20"]
    errors = [row[-1] for row in runs["bombs"][2]]
    assert len(errors) == 20 and all(e.startswith("image too large") and "--max-pixels" in e for e in errors), errors
    assert runs["bombs"][0] < runs["good"][0] + 50, {k: round(v[0]) for k, v in runs.items()}


def test_rate_counts_only_images_classified_in_this_run(tiny_model: Path, tmp_path: Path) -> None:
    root = tmp_path / "p"
    root.mkdir()
    for i in range(6):
        _img(root / f"{i}.png", i)
    (root / "bad.png").write_text("not an image")
    out = tmp_path / "labels.csv"
    opts = dict(model=tiny_model, backend="onnx", output=out, resume=True)
    core.classify([root], **opts)  # type: ignore[arg-type]
    _img(root / "new.png", 7)
    rep = core.classify([root], **opts)  # type: ignore[arg-type]
    assert (rep.files, rep.reused, rep.classified, rep.failed) == (8, 6, 2, 1)  # new.png, and bad.png retried
    assert rep.images_per_second == pytest.approx(1 / rep.seconds)  # one image went through the model
