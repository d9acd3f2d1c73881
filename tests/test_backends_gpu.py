"""--device gpu on a machine without CUDA: the refusal names what is missing, per backend."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from cifarbench.errors import ExitStatus
from conftest import run_cli

ort = pytest.importorskip("onnxruntime")
pytestmark = pytest.mark.skipif("CUDAExecutionProvider" in ort.get_available_providers(),
                                reason="onnxruntime has CUDA here: nothing is missing")


def test_classify_on_gpu_without_cuda_names_the_missing_provider(tmp_path: Path) -> None:
    img = tmp_path / "a.png"
    Image.new("RGB", (32, 32), (10, 200, 30)).save(img)
    res = run_cli("classify", str(img), "--device", "gpu")
    assert res.exit_code == ExitStatus.UNAVAILABLE, res.stderr
    line = res.stderr.strip().splitlines()[-1]
    assert "no backend can run" in line and "device gpu" in line
    assert "onnx-int8: onnxruntime has no CUDAExecutionProvider" in line  # the default backend's reason
    assert "Traceback" not in res.stderr
