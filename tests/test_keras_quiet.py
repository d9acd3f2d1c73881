"""The keras backend keeps TensorFlow's native start-up lines (absl's pre-init CUDA probes, oneDNN's notice) off
stderr: `classify -b keras -q` is silent and `serve -b keras` logs only its own lines (issue 24, item 7).

A fresh process without the log-level variables (conftest.fresh_env) is the only place these lines show:
TensorFlow prints them once, on its first import, whatever TF_CPP_MIN_LOG_LEVEL says.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import REPO, fresh_env

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(importlib.util.find_spec("tensorflow") is None, reason="tensorflow not installed")]
FLAGSHIP = REPO / "trained" / "flagship"
NATIVE = ("absl", "InitializeLog", "cuda", "oneDNN", "I0000", "W0000", "E0000", "cpu_feature_guard")


def _images(root: Path) -> Path:
    root.mkdir()
    for i in range(2):
        Image.fromarray(np.random.default_rng(i).integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(root / f"{i}.png")
    return root


def test_classify_keras_quiet_is_silent(tmp_path: Path) -> None:
    r = subprocess.run([sys.executable, "-m", "cifarbench", "classify", str(_images(tmp_path / "in")), "-m",
                        str(FLAGSHIP), "-b", "keras", "-q", "-o", str(tmp_path / "o.csv")],
                       env=fresh_env(), capture_output=True, text=True, timeout=600, cwd=REPO)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stderr == "" and r.stdout == ""
    assert len((tmp_path / "o.csv").read_text().splitlines()) == 3


def test_serve_keras_logs_no_native_lines(tmp_path: Path) -> None:
    pytest.importorskip("uvicorn")
    proc = subprocess.Popen([sys.executable, "-m", "cifarbench", "serve", "-m", str(FLAGSHIP), "-b", "keras",
                             "--port", "0"], env=fresh_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, cwd=REPO)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(ln.rstrip("\n") for ln in proc.stderr), daemon=True)  # type: ignore[union-attr]
    reader.start()
    try:
        deadline = time.monotonic() + 300
        while not any("Application startup complete" in ln for ln in lines):
            assert proc.poll() is None and time.monotonic() < deadline, lines[-20:]
            time.sleep(0.05)
    finally:
        proc.terminate()
        proc.wait(timeout=60)
        reader.join(timeout=10)
    assert any(ln.startswith("serving flagship with keras on http://127.0.0.1:") for ln in lines), lines
    noisy = [ln for ln in lines if any(n in ln for n in NATIVE)]
    assert noisy == [], noisy


def test_classify_quiet_is_silent_with_a_lone_keras_file(tmp_path: Path) -> None:
    """A .keras file with no manifest beside it is opened once to read its size and outputs (model_ref):
    that first TensorFlow import must hide absl's lines too, or `classify -m lone.keras -q` prints six of them."""
    import shutil

    lone = tmp_path / "lone"
    lone.mkdir()
    shutil.copy(FLAGSHIP / "model.keras", lone / "flag.keras")
    r = subprocess.run([sys.executable, "-m", "cifarbench", "classify", str(_images(tmp_path / "in")), "-m",
                        str(lone / "flag.keras"), "-b", "keras", "-q", "-o", str(tmp_path / "o.csv")],
                       env=fresh_env(), capture_output=True, text=True, timeout=600, cwd=REPO)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stderr == "" and r.stdout == ""
    assert len((tmp_path / "o.csv").read_text().splitlines()) == 3
