"""The keras backend's preprocessing against numpy's own (x - mean) / std: an oracle not built from the same helper."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cifarbench import backends
from cifarbench.models.manifest import InputContract, Manifest

keras = pytest.importorskip("keras")

# (flat index into a 32x32x3 NHWC image) for each of the 10 outputs: corners, centre, every channel
PICK = [0, 1, 2, (5 * 32 + 7) * 3 + 1, (16 * 32 + 16) * 3 + 2, (31 * 32 + 31) * 3, (31 * 32 + 31) * 3 + 2,
        (0 * 32 + 31) * 3 + 1, (31 * 32 + 0) * 3 + 2, (20 * 32 + 9) * 3]


def _oracle(x: np.ndarray, spec: str) -> np.ndarray:
    """numpy in float64, written out per form (no cifarbench code): what the model should see."""
    v = x.astype(np.float64)
    if spec == "scale:1/255":
        v = v / 255
    elif spec == "mean-std:127.5/64":
        v = (v - 127.5) / 64
    elif spec == "mean-std:0.485,0.456,0.406/0.229,0.224,0.225":
        v = (v - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])
    elif spec == "scale:1/255+mean-std:0.485,0.456,0.406/0.229,0.224,0.225":
        v = (v / 255 - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])
    elif spec == "mean-std:0.5,0.5,0.5/0.25,0.25,0.25+scale:2":
        v = (v - 0.5) / 0.25 * 2
    else:
        assert spec == "none"
    return v.reshape(len(x), -1)[:, PICK]


@pytest.fixture(scope="module")
def picker(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Keras model whose 10 outputs are 10 chosen input values: Flatten + a 0/1 selection Dense."""
    d = tmp_path_factory.mktemp("picker")
    kernel = np.zeros((32 * 32 * 3, 10), np.float32)
    kernel[PICK, np.arange(10)] = 1
    model = keras.Sequential([keras.Input((32, 32, 3)), keras.layers.Flatten(), keras.layers.Dense(10)])
    model.layers[-1].set_weights([kernel, np.zeros(10, np.float32)])
    model.save(d / "picker.keras")
    return d


@pytest.mark.parametrize("spec", ["none", "scale:1/255", "mean-std:127.5/64",
                                  "mean-std:0.485,0.456,0.406/0.229,0.224,0.225",
                                  "scale:1/255+mean-std:0.485,0.456,0.406/0.229,0.224,0.225",
                                  "mean-std:0.5,0.5,0.5/0.25,0.25,0.25+scale:2"])
def test_keras_path_preprocessing_matches_numpy(picker: Path, tmp_path: Path, spec: str) -> None:
    model = tmp_path / "m"
    model.mkdir()
    (model / "picker.keras").symlink_to(picker / "picker.keras")
    m = Manifest(name="picker", arch="picker", input=InputContract(preprocess=spec), directory=model)
    m.add_artifact("keras", "picker.keras")
    m.save()
    x = np.random.default_rng(len(spec)).integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
    x[0] = 255  # the extremes, where a wrong scale or a swapped mean/std shows most
    x[1] = 0
    got = backends.load_backend("keras", Manifest.load(model)).predict(x)
    np.testing.assert_allclose(got, _oracle(x, spec), rtol=1e-5, atol=1e-5)
