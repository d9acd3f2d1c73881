"""onnxruntime keeps no telemetry store when cifarbench runs it (issue 25): HOME is a fresh folder."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from conftest import REPO, make_tree


def test_classify_with_onnxruntime_writes_nothing_under_home(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    root = make_tree(tmp_path / "imgs", per_class=1, splits=("test",))
    env = {k: v for k, v in os.environ.items() if k != "ORT_DISABLE_TELEMETRY"}
    env.update(HOME=str(home), PYTHONPATH=str(REPO), CIFARBENCH_CACHE_DIR=str(tmp_path / "cache"))
    r = subprocess.run([sys.executable, "-m", "cifarbench", "classify", str(root), "--model", "baseline-cnn",
                        "--backend", "onnx-int8", "-q", "-o", str(tmp_path / "out.csv")], env=env, capture_output=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    assert [str(p.relative_to(home)) for p in home.rglob("*")] == []  # no .cache/Microsoft/DeveloperTools


def test_the_variable_is_set_on_import_and_a_users_choice_wins() -> None:
    code = "import os, cifarbench; print(os.environ['ORT_DISABLE_TELEMETRY'])"
    base = {k: v for k, v in os.environ.items() if k != "ORT_DISABLE_TELEMETRY"}
    for env, want in ((base, "1"), ({**base, "ORT_DISABLE_TELEMETRY": "0"}, "0")):
        out = subprocess.run([sys.executable, "-c", code], env={**env, "PYTHONPATH": str(REPO)}, capture_output=True,
                             text=True, timeout=60, check=True).stdout.strip()
        assert out == want
