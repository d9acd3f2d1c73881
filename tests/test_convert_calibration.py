"""convert and --calibration-data (issue 24, item 8): checked before the model loads; not needed without int8."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from cifarbench import CIFAR10_CLASSES
from cifarbench.conversion import convert as conv
from cifarbench.conversion.convert import ConvertOptions
from cifarbench.errors import ExitStatus, UsageError
from conftest import REPO, run_cli

FLAGSHIP = REPO / "trained" / "flagship"


@pytest.fixture
def no_model_load(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Loading the model (seconds: TensorFlow's import) is recorded and refused: these errors must come first."""
    loaded: list[str] = []

    def refuse(src: Path, *a: object) -> None:
        loaded.append(str(src))
        raise AssertionError("the model was loaded before the options were checked")

    monkeypatch.setattr(conv, "_open_source", refuse)
    return loaded


@pytest.mark.parametrize("value,code,needle", [
    ("nowhere/at/all", ExitStatus.DATA, "--calibration-data nowhere/at/all: not found"),
    ("bundled", ExitStatus.USAGE, "the bundled data is the test split"),
])
def test_bad_calibration_data_fails_before_the_model_loads(tmp_path: Path, no_model_load: list[str], value: str,
                                                           code: int, needle: str) -> None:
    r = run_cli("convert", FLAGSHIP, "--out", tmp_path / "o", "--calibration-data", value)
    assert r.exit_code == code and needle in r.stderr and r.stderr.count("\n") == 1, r.stderr
    assert no_model_load == [] and not (tmp_path / "o").exists()


def test_int8_without_any_calibration_data_fails_before_the_model_loads(tmp_path: Path,
                                                                        no_model_load: list[str]) -> None:
    shutil.copy(FLAGSHIP / "model.keras", tmp_path / "m.keras")  # no manifest: its training data is unknown
    for formats in ("all", "onnx,onnx-int8"):
        r = run_cli("convert", tmp_path / "m.keras", "--out", tmp_path / "o", "--formats", formats)
        assert r.exit_code == ExitStatus.USAGE and "--calibration-data" in r.stderr
    assert no_model_load == []


@pytest.mark.parametrize("formats,needed", [(None, True), (("onnx-int8",), True), (("tflite-int8", "onnx"), True),
                                            (("tflite", "onnx"), False), (("tflite-fp16",), False)])
def test_calibration_data_is_demanded_only_for_int8(formats: tuple[str, ...] | None, needed: bool) -> None:
    opts = ConvertOptions(formats=formats)
    if needed:
        with pytest.raises(UsageError, match="--calibration-data"):
            conv._calibration_source(None, opts, list(CIFAR10_CLASSES))
    else:
        assert conv._calibration_source(None, opts, list(CIFAR10_CLASSES)) is None
        with pytest.raises(UsageError, match="images of the model's classes"):  # bundled holds CIFAR-10 only
            conv._calibration_source(None, opts, ["a", "b"])


def test_without_int8_parity_runs_on_the_test_split() -> None:
    data = conv._test_split_parity(ConvertOptions(formats=("onnx",), parity_size=50), list(CIFAR10_CLASSES),
                                   lambda e: None)
    assert data.split == "test" and len(data.par_x) == 50 == len(data.par_y) and len(data.cal_x) == 0
    assert data.par_x.dtype == np.uint8 and set(np.unique(data.par_y)) <= set(range(10))


@pytest.mark.slow
def test_float_formats_convert_without_calibration_data(tmp_path: Path) -> None:
    shutil.copy(FLAGSHIP / "model.keras", tmp_path / "m.keras")
    r = run_cli("convert", tmp_path / "m.keras", "--out", tmp_path / "o", "--formats", "tflite,onnx",
                "--parity-size", "64", "--preprocess", "none")
    assert r.exit_code == 0, r.output
    assert "64 test-split images" in r.stdout and "accuracy (test split)" in r.stdout
    from cifarbench.models.manifest import Manifest

    m = Manifest.load(tmp_path / "o")
    assert m.metrics["parity"]["split"] == "test" and set(m.artifacts) == {"keras", "tflite", "onnx"}
    assert m.artifacts["onnx"].parity["status"] == "ok" and m.artifacts["onnx"].parity["accuracy"] > 0.8
