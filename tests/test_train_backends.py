"""Training on a Keras backend other than TensorFlow: the real CLI in a subprocess on JAX, with ``tensorflow``,
``tf_keras`` and ``tf2onnx`` poisoned, and what it saves predicts the same when loaded under TensorFlow.

The subprocesses share a JAX compilation cache (a temporary folder), so only the first one compiles.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from cifarbench.models.manifest import Manifest
from conftest import fresh_env, make_tree

pytestmark = pytest.mark.slow
pytest.importorskip("jax")  # in the test extra (train-jax); a guard for installs without it

POISONED = ("tensorflow", "tf_keras", "tf2onnx")
# Each poisoned package records who tried to import it, then fails as if it were not installed.
_POISON = """
import json, os, traceback
stack = [f.filename for f in traceback.extract_stack()[:-1]]
with open(os.environ["CIFARBENCH_POISON_LOG"], "a") as fh:
    fh.write(json.dumps({"module": __name__, "stack": stack}) + "\\n")
raise ImportError(__name__ + " is poisoned for this test")
"""
# The one importer allowed to try: Keras' optional-dependency probe (keras.utils.set_random_seed asks whether
# TensorFlow is there to seed it too), which takes the ImportError as "not installed".
_KERAS_PROBE = os.path.join("keras", "src", "utils", "module_utils.py")

_PREDICT = """
import sys
import keras
import numpy as np
from cifarbench.data.sources import load_dataset

x = load_dataset(sys.argv[1], "test").images.astype("float32")
out = {"backend": np.array(keras.backend.backend())}
for name, run in zip(sys.argv[3::2], sys.argv[4::2]):
    out[name] = keras.models.load_model(run + "/model.keras", compile=False).predict(x, verbose=0)
np.savez(sys.argv[2], **out)
"""

_CUT = """
import sys
from cifarbench.training.train import TrainOptions, train

class Stop(Exception):
    pass

def stop_after_first(event):
    if event.kind == "epoch" and event.data["epoch"] == 1:
        raise Stop

try:
    train(sys.argv[1], sys.argv[2], TrainOptions(**__import__("json").loads(sys.argv[3])), events=stop_after_first)
except Stop:
    sys.exit(0)
sys.exit("the run was not interrupted")
"""

TINY = {"epochs": 2, "batch_size": 115, "val_size": 30}  # 230 train images: two full batches an epoch
FLAGSHIP = {"epochs": 1, "batch_size": 32, "val_size": 0}  # 8 steps: lookahead pulls at step 5, EMA swap at 8


@pytest.fixture(scope="module")
def jax_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """KERAS_BACKEND=jax, the poisoned packages first on PYTHONPATH, a fresh poison log and JAX cache."""
    root = tmp_path_factory.mktemp("nontf")
    for name in POISONED:
        (root / "poison" / name).mkdir(parents=True)
        (root / "poison" / name / "__init__.py").write_text(_POISON)
    path = os.pathsep.join(p for p in (str(root / "poison"), os.environ.get("PYTHONPATH")) if p)
    return {**fresh_env(), "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu", "PYTHONPATH": path,
            "CIFARBENCH_POISON_LOG": str(root / "poison.log"), "CIFARBENCH_CACHE_DIR": str(root / "cache"),
            "JAX_COMPILATION_CACHE_DIR": str(root / "jax-cache"), "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
            "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "-1"}


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("nontf_tree")
    make_tree(root, per_class=26, splits=("train",), seed=5)
    make_tree(root, per_class=3, splits=("test",), seed=6)
    return root


def _run(env: dict[str, str], *args: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, *map(str, args)], env=env, capture_output=True, text=True, timeout=900)


def _train_cli(env: dict[str, str], arch: str, tree: Path, out: Path, opts: dict[str, Any], *extra: str) -> None:
    r = _run(env, "-m", "cifarbench", "train", "--arch", arch, "--data", tree, "--epochs", opts["epochs"],
             "--batch-size", opts["batch_size"], "--val-size", opts["val_size"], "--precision", "float32",
             "--out", out, "--quiet", *extra)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stderr == ""  # -q: silent on success, TSL/XLA logging included (e.g. XLA's "slow compile" banner)


@pytest.fixture(scope="module")
def tiny_run(jax_env: dict[str, str], tree: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("jax_runs") / "tiny"
    _train_cli(jax_env, "tiny-cnn", tree, out, TINY)
    return out


@pytest.fixture(scope="module")
def flagship_run(jax_env: dict[str, str], tree: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """airbench's recipe: lookahead/EMA callback (jax_state_sync), whitening-bias gate, alternating flips."""
    out = tmp_path_factory.mktemp("jax_runs") / "flagship"
    _train_cli(jax_env, "flagship", tree, out, FLAGSHIP)
    return out


def _poison_attempts(env: dict[str, str]) -> list[dict[str, Any]]:
    log = Path(env["CIFARBENCH_POISON_LOG"])
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def _importer(stack: list[str]) -> str:
    """The frame that asked for the import (below it: importlib's own frames)."""
    return next(f for f in reversed(stack) if "importlib" not in f and not f.startswith("<frozen"))


@pytest.mark.parametrize("run", ["tiny_run", "flagship_run"])
def test_trains_on_jax_without_tensorflow(run: str, request: pytest.FixtureRequest) -> None:
    import importlib.metadata as md

    out: Path = request.getfixturevalue(run)
    for name in ("model.keras", "manifest.json", "history.json", "report.txt"):
        assert (out / name).is_file(), name
    m = Manifest.load(out)
    device = m.training["device"]
    assert device["backend"] == "jax" and device["jax"] == md.version("jax") and "tensorflow" not in device
    assert m.training["jit_compile"] is True  # --jit auto on JAX
    epochs = (TINY if run == "tiny_run" else FLAGSHIP)["epochs"]
    assert m.training["epochs_run"] == epochs and len(json.loads((out / "history.json").read_text())) == epochs
    assert m.metrics["test"]["size"] == 30 and np.isfinite(m.metrics["test"]["loss"])
    assert m.verify("keras").name == "model.keras"  # listed with its checksum


def test_only_keras_optional_probe_tried_the_poisoned_imports(jax_env: dict[str, str], tiny_run: Path,
                                                              flagship_run: Path) -> None:
    attempts = _poison_attempts(jax_env)
    # Keras asks once per process; both runs got past it (no ImportError escaped), so the poison was in place.
    assert attempts and {a["module"] for a in attempts} <= set(POISONED)
    assert all(_importer(a["stack"]).endswith(_KERAS_PROBE) for a in attempts), [a["stack"][-6:] for a in attempts]


def test_jax_models_predict_the_same_under_tensorflow(jax_env: dict[str, str], tree: Path, tiny_run: Path,
                                                      flagship_run: Path, tmp_path: Path) -> None:
    """The jax process's own predictions, against the project's keras backend (TensorFlow) on the same file."""
    pytest.importorskip("tensorflow")
    from cifarbench.backends import load_backend
    from cifarbench.data.sources import load_dataset

    r = _run(jax_env, "-c", _PREDICT, tree, tmp_path / "jax.npz", "tiny", tiny_run, "flagship", flagship_run)
    assert r.returncode == 0, r.stderr[-3000:]
    test = load_dataset(str(tree), "test")
    with np.load(tmp_path / "jax.npz") as z:
        assert str(z["backend"]) == "jax"
        for name, run in (("tiny", tiny_run), ("flagship", flagship_run)):
            m = Manifest.load(run)
            tf_probs = load_backend("keras", m).predict(test.images)
            assert tf_probs.shape == z[name].shape == (30, 10)
            np.testing.assert_allclose(tf_probs, z[name], rtol=1e-3, atol=1e-4, err_msg=name)
            # the test loss the jax run reported is what TensorFlow measures on the same images
            tf_loss = -np.log(np.clip(tf_probs[np.arange(len(test)), test.labels], 1e-12, 1.0)).mean()
            assert m.metrics["test"]["loss"] == pytest.approx(tf_loss, rel=1e-4), name


# The flagship's resume (lookahead EMA, flip phase) is tested on TensorFlow in test_train.py; on JAX it would
# add a minute of XLA compilation to this file, so only tiny-cnn resumes here.
@pytest.mark.parametrize("arch,opts,run", [("tiny-cnn", TINY, "tiny_run")])
def test_resume_on_jax_equals_uninterrupted(arch: str, opts: dict[str, Any], run: str, jax_env: dict[str, str],
                                            tree: Path, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    """Interrupted after epoch 1 (the event receiver raises), then ``train --resume``: the same weights."""
    full: Path = request.getfixturevalue(run)
    cut = tmp_path / "cut"
    train_opts = {"data": str(tree), "precision": "float32", **opts}
    r = _run(jax_env, "-c", _CUT, arch, cut, json.dumps(train_opts))
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads((cut / "checkpoint" / "state.json").read_text())["epoch"] == 1
    _train_cli(jax_env, arch, tree, cut, opts, "--resume")

    import keras

    a = keras.models.load_model(full / "model.keras").get_weights()
    b = keras.models.load_model(cut / "model.keras").get_weights()
    assert len(a) == len(b) > 0
    for wa, wb in zip(a, b):
        np.testing.assert_allclose(wa, wb, rtol=1e-4, atol=1e-5)
    ha = json.loads((full / "history.json").read_text())
    hb = json.loads((cut / "history.json").read_text())
    assert [round(h["loss"], 4) for h in ha] == [round(h["loss"], 4) for h in hb]
