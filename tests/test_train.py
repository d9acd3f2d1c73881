"""Training: every zoo entry trains, outputs are complete, resume is exact, the test split comes last."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from cifarbench.events import Event
from cifarbench.models.manifest import Manifest
from conftest import fresh_env, make_tree, run_cli

pytestmark = pytest.mark.slow
pytest.importorskip("tensorflow")


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("train_tree")
    make_tree(root, per_class=26, splits=("train",), seed=5)
    make_tree(root, per_class=3, splits=("test",), seed=6)
    return root


@pytest.mark.parametrize("arch", ["baseline-cnn", "vgg-bn", "benchmark-cnn", "flagship", "tiny-cnn"])
def test_each_zoo_entry_trains_one_epoch(tmp_path: Path, tree: Path, arch: str) -> None:
    out = tmp_path / arch
    r = run_cli("train", "--arch", arch, "--data", tree, "--epochs", "1", "--batch-size", "64", "--val-size", "30",
                "--precision", "float32", "--out", out, "--quiet")
    assert r.exit_code == 0, r.output
    assert r.stderr == ""  # --quiet
    for name in ("model.keras", "manifest.json", "history.json", "report.txt", "curves.png", "confusion.png"):
        assert (out / name).is_file(), name
    m = Manifest.load(out)
    assert m.arch == arch and m.params > 0 and m.macs > 0
    assert m.training["data"]["train"] == 230 and m.training["data"]["val"] == 30
    assert m.training["precision"] == "float32" and m.training["epochs_run"] == 1
    assert m.metrics["test"]["size"] == 30 and 0.0 <= m.metrics["test"]["accuracy"] <= 1.0
    assert "macro avg" in (out / "report.txt").read_text()
    assert len(json.loads((out / "history.json").read_text())) == 1


def test_quiet_is_silent_in_a_fresh_process(tmp_path: Path, tree: Path) -> None:
    """-q covers native logging too: TensorFlow's first import prints absl's CUDA-probe lines, which no log-level
    variable stops, and only once per process, so only a fresh process without those variables shows it."""
    import subprocess
    import sys

    env = fresh_env(KERAS_BACKEND="tensorflow")
    r = subprocess.run([sys.executable, "-m", "cifarbench", "train", "--arch", "tiny-cnn", "--data", str(tree),
                        "--epochs", "1", "--batch-size", "64", "--val-size", "30", "--precision", "float32",
                        "--out", str(tmp_path / "run"), "-q"], env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stderr == "" and r.stdout == ""


@pytest.mark.parametrize("precision", ["mixed_bfloat16", "mixed_float16"])
def test_flagship_trains_under_mixed_precision(tmp_path: Path, tree: Path, precision: str) -> None:
    """`--precision auto` picks mixed_bfloat16 on bf16 CPUs and mixed_float16 on GPUs; the flagship's training
    graph crashed under both (its gated whitening bias added a bf16 penalty beside float32 regularizers, and
    Keras cannot sum a mixed list). The policy is forced, so this runs on any CPU (slowly where it is emulated)."""
    import keras

    from cifarbench.training.train import train

    try:
        m = train("flagship", tmp_path / precision, data=str(tree), epochs=1, batch_size=64, val_size=30,
                  precision=precision, threads=1)
    finally:
        keras.mixed_precision.set_global_policy("float32")  # the policy is process-global: later tests expect f32
    assert m.training["precision"] == precision
    history = json.loads((tmp_path / precision / "history.json").read_text())
    assert len(history) == 1 and np.isfinite(history[0]["loss"]) and history[0]["loss"] > 0
    assert 0.0 <= m.metrics["test"]["accuracy"] <= 1.0


def test_training_graph_losses_are_float32_under_a_mixed_policy() -> None:
    """Keras sums model.losses in one op: every term must be float32 whatever the policy (the crash of issue 24)."""
    import keras

    from cifarbench.models.airbench import build_train

    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        model = build_train(10, widths=(8, 8, 8))
        model(np.zeros((2, 32, 32, 3), np.float32), training=True)
        dtypes = [keras.backend.standardize_dtype(t.dtype) for t in model.losses]
        gated = [layer for layer in model.layers if layer.name == "whiten_bias"]
        assert gated and gated[0].losses  # the gated bias's own penalty is among them
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert dtypes and set(dtypes) == {"float32"}, dtypes


def test_macs_and_params_by_hand() -> None:
    from cifarbench.models.zoo import ZOO, count_macs

    model = ZOO["tiny-cnn"].build()
    # conv 3->8 (3x3, same) at 32x32 + conv 8->16 at 16x16 + dense 16->10
    assert count_macs(model) == 32 * 32 * 8 * 27 + 16 * 16 * 16 * 72 + 16 * 10
    # conv1 216 + BN 32 + conv2 1152 + BN 64 + dense 170 (Normalization built from constants adds none)
    assert model.count_params() == 216 + 32 + 1152 + 64 + 170


class _Stop(Exception):
    """Raised from the event receiver: an interruption after the first epoch's checkpoint."""


def _stop_after_first(event: Event) -> None:
    if event.kind == "epoch" and event.data["epoch"] == 1:
        raise _Stop


def test_resume_equals_uninterrupted(tmp_path: Path, tree: Path) -> None:
    from cifarbench.training.train import train

    train("tiny-cnn", tmp_path / "full", data=str(tree), epochs=2, val_size=30, precision="float32", threads=1)

    with pytest.raises(_Stop):
        train("tiny-cnn", tmp_path / "cut", data=str(tree), epochs=2, val_size=30, precision="float32", threads=1,
              events=_stop_after_first)
    assert json.loads((tmp_path / "cut" / "checkpoint" / "state.json").read_text())["epoch"] == 1
    train("tiny-cnn", tmp_path / "cut", data=str(tree), epochs=2, val_size=30, precision="float32", threads=1, resume=True)

    import keras

    a = keras.models.load_model(tmp_path / "full" / "model.keras").get_weights()
    b = keras.models.load_model(tmp_path / "cut" / "model.keras").get_weights()
    for wa, wb in zip(a, b):
        np.testing.assert_allclose(wa, wb, rtol=1e-4, atol=1e-5)
    ha = json.loads((tmp_path / "full" / "history.json").read_text())
    hb = json.loads((tmp_path / "cut" / "history.json").read_text())
    assert [round(h["val_acc"], 6) for h in ha] == [round(h["val_acc"], 6) for h in hb]


def test_test_split_loaded_only_after_training(tmp_path: Path, tree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import cifarbench.training.train as train_mod

    events: list[str] = []
    real = train_mod.load_dataset

    def spy(source, split="test", **kw):  # type: ignore[no-untyped-def]
        events.append(f"load:{split}")
        return real(source, split, **kw)

    monkeypatch.setattr(train_mod, "load_dataset", spy)
    train_mod.train("tiny-cnn", tmp_path / "o", data=str(tree), epochs=2, val_size=30, precision="float32",
                    events=lambda e: events.append(f"epoch:{e.data['epoch']}"))
    assert events == ["load:train", "epoch:1", "epoch:2", "load:test"]


def test_precision_auto_is_float32_without_bf16(monkeypatch: pytest.MonkeyPatch) -> None:
    import cifarbench.training.train as train_mod

    monkeypatch.setattr(train_mod, "nvidia_gpus", lambda: [])
    monkeypatch.setattr(train_mod, "has_fast_bf16", lambda: False)
    assert train_mod.resolve_precision("auto") == "float32"
    monkeypatch.setattr(train_mod, "has_fast_bf16", lambda: True)
    assert train_mod.resolve_precision("auto") == "mixed_bfloat16"
    monkeypatch.setattr(train_mod, "nvidia_gpus", lambda: ["H100"])
    assert train_mod.resolve_precision("auto") == "mixed_float16"


def test_augment_is_deterministic_and_label_preserving() -> None:
    from cifarbench.training.train import augment

    x = np.random.default_rng(0).integers(0, 256, (50, 32, 32, 3)).astype(np.uint8)
    a = augment(x, ("flip", "translate2"), np.random.default_rng([1, 2]))
    b = augment(x, ("flip", "translate2"), np.random.default_rng([1, 2]))
    assert np.array_equal(a, b) and a.shape == x.shape and not np.array_equal(a, x)
    assert np.array_equal(augment(x, (), np.random.default_rng(0)), x)


def test_unknown_arch_is_usage_error(tmp_path: Path) -> None:
    r = run_cli("train", "--arch", "resnet9000")
    assert r.exit_code == 2


# --------------------------------------------------------------------------- the airbench port


def test_flagship_recipe_is_airbench94_translated() -> None:
    from cifarbench.models.zoo import get_arch

    r = get_arch("flagship").recipe
    assert r.batch_size == 1024 and r.momentum == 0.85 and r.loss_reduction == "sum" and r.drop_remainder
    assert r.lr == pytest.approx(1.4648e-3, rel=1e-3)  # 11.5 / (1024 * (1 + 1 / 0.15)) on the summed loss
    assert r.lr * 2 * r.l2 == pytest.approx(1.9957e-3, rel=1e-3)  # lr x coupled decay per step, as PyTorch's
    assert r.lookahead and r.whiten_bias_epochs == 3 and "alternating-flip" in r.augment


def test_training_graph_folds_into_the_plain_flagship() -> None:
    import keras

    from cifarbench.models import airbench

    m = airbench.build_train()
    airbench.dirac_init(m)
    rng = np.random.default_rng(0)
    for v in m.weights:
        if v.path.endswith("/b") or v.path.endswith("moving_mean"):
            v.assign(rng.normal(size=v.shape).astype("float32"))
    plain = airbench.to_plain(m)
    assert not any(type(layer).__module__.startswith("cifarbench") for layer in plain.layers)  # loads anywhere
    x = rng.integers(0, 256, (8, 32, 32, 3)).astype("float32")
    np.testing.assert_allclose(m.predict(x, verbose=0), plain.predict(x, verbose=0), atol=1e-5)
    k = keras.ops.convert_to_numpy(m.get_layer("g0_conv2").kernel)
    assert np.array_equal(k[1, 1, :, :64], np.eye(64)) and k[0, 0, :, :64].max() == 0  # Dirac init


def test_schedule_and_whitening_bias_gate() -> None:
    from cifarbench.models.airbench import WarmupDecay

    s = WarmupDecay(1.0, 100)
    got = [float(s(i)) for i in (0, 23, 100)]
    assert got == pytest.approx([0.2, 1.0, 0.07], abs=1e-6)


@pytest.mark.parametrize("micro_batch", [None, 16])
def test_flagship_resume_is_exact_with_lookahead(tmp_path: Path, tree: Path, micro_batch: int | None) -> None:
    """Fractional epochs, dropped remainder, lookahead EMA, the flip phase and gradient accumulation survive a restart."""
    from cifarbench.training.train import TrainOptions, train

    opts = TrainOptions(data=str(tree), epochs=2.5, batch_size=64, micro_batch=micro_batch, val_size=0,
                        precision="float32", threads=1)
    train("flagship", tmp_path / "full", opts)

    with pytest.raises(_Stop):
        train("flagship", tmp_path / "cut", opts, events=_stop_after_first)
    assert (tmp_path / "cut" / "checkpoint" / "lookahead.npz").is_file()
    m = train("flagship", tmp_path / "cut", opts, resume=True)
    assert m.training["steps"] == 10 and m.training["epochs_run"] == 3 and "val" not in m.metrics  # 260 // 64 = 4 a epoch

    import keras

    a = keras.models.load_model(tmp_path / "full" / "model.keras").get_weights()
    b = keras.models.load_model(tmp_path / "cut" / "model.keras").get_weights()
    for wa, wb in zip(a, b):
        np.testing.assert_allclose(wa, wb, rtol=1e-4, atol=1e-5)


def test_flat_tree_without_test_data_is_refused(tmp_path: Path) -> None:
    flat = tmp_path / "flat"
    make_tree(tmp_path / "nested", per_class=2, splits=("train",), seed=1)
    (tmp_path / "nested" / "train").rename(flat)
    r = run_cli("train", "--arch", "tiny-cnn", "--data", flat, "--epochs", "1", "--val-size", "5", "--out", tmp_path / "o")
    assert r.exit_code == 2 and "--test-data" in r.output and "Traceback" not in r.output
    assert not (tmp_path / "o").exists()  # refused before any output folder is made


def test_bad_data_leaves_no_output_and_keeps_an_old_checkpoint(tmp_path: Path) -> None:
    r = run_cli("train", "--arch", "tiny-cnn", "--data", tmp_path / "missing", "--out", tmp_path / "new")
    assert r.exit_code == 4 and "not found" in r.output and "Traceback" not in r.output
    assert not (tmp_path / "new").exists()
    old = tmp_path / "old" / "checkpoint"
    old.mkdir(parents=True)
    (old / "state.json").write_text('{"epoch": 7}')
    r = run_cli("train", "--arch", "tiny-cnn", "--data", tmp_path / "missing", "--out", tmp_path / "old")
    assert r.exit_code == 4 and (old / "state.json").read_text() == '{"epoch": 7}'  # not wiped by a typo


def test_alternating_flip_mirrors_the_whole_set_on_odd_epochs() -> None:
    from cifarbench.training.train import augment

    x = np.random.default_rng(0).integers(0, 256, (20, 32, 32, 3)).astype(np.uint8)
    mask = np.random.default_rng(1).random(20) < 0.5
    e0 = augment(x, ("alternating-flip",), np.random.default_rng(0), mask, epoch=0)
    e1 = augment(x, ("alternating-flip",), np.random.default_rng(0), mask, epoch=1)
    assert np.array_equal(e0[mask], x[mask, :, ::-1]) and np.array_equal(e0[~mask], x[~mask])
    assert np.array_equal(e1, e0[:, :, ::-1])


def test_checkpoints_are_written_atomically(tmp_path: Path, tree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A save that dies part-way leaves the previous best/last checkpoint intact."""
    import cifarbench.training.train as train_mod

    opts = train_mod.TrainOptions(data=str(tree), epochs=1, batch_size=64, val_size=30, precision="float32", threads=1)
    train_mod.train("tiny-cnn", tmp_path / "o", opts)
    before = (tmp_path / "o" / "checkpoint" / "best.keras").read_bytes()

    def dying_save(self, path, *a, **kw):  # type: ignore[no-untyped-def]
        Path(path).write_bytes(b"half a zip")
        raise KeyboardInterrupt

    import keras

    monkeypatch.setattr(keras.Model, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        train_mod.train("tiny-cnn", tmp_path / "o", opts.__class__(**{**opts.__dict__, "epochs": 2}), resume=True)
    assert (tmp_path / "o" / "checkpoint" / "best.keras").read_bytes()[:2] == b"PK"
    assert (tmp_path / "o" / "checkpoint" / "last.keras").read_bytes()[:2] == b"PK"
    assert before[:2] == b"PK"



def test_jit_auto_is_on_for_jax_and_gpus_only() -> None:
    from cifarbench.training.train import resolve_jit

    assert resolve_jit("auto", "jax", gpu=False)  # JAX without jit runs op by op
    assert not resolve_jit("auto", "tensorflow", gpu=False) and not resolve_jit("auto", "torch", gpu=False)
    assert resolve_jit("auto", "tensorflow", gpu=True) and resolve_jit("auto", "torch", gpu=True)
    assert resolve_jit("on", "tensorflow", gpu=False) and not resolve_jit("off", "jax", gpu=True)


def test_micro_batches_make_the_same_update_as_the_full_batch() -> None:
    """Accumulation is the recipe unchanged: summed loss, L2 through momentum, Nesterov; one update per full batch."""
    import keras

    from cifarbench.models.zoo import get_arch
    from cifarbench.training.optim import compile_recipe

    recipe = get_arch("flagship").recipe  # sgd-nesterov, summed loss, label smoothing
    rng = np.random.default_rng(0)
    x = rng.normal(size=(16, 6)).astype("float32")
    y = np.eye(10, dtype="float32")[rng.integers(0, 10, 16)]

    def fit(micro: int) -> list[np.ndarray]:
        keras.utils.set_random_seed(1)
        inp = keras.Input((6,))
        out = keras.layers.Dense(10, activation="softmax", kernel_regularizer=keras.regularizers.L2(0.3))(inp)
        model = keras.Model(inp, out)
        compile_recipe(keras, model, recipe, 0.05, False, micro)
        model.fit(x, y, batch_size=16 // micro, epochs=3, shuffle=False, verbose=0)  # 3 updates either way
        return [keras.ops.convert_to_numpy(w) for w in model.weights]

    full, accumulated = fit(1), fit(4)
    for a, b in zip(full, accumulated):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_micro_batch_must_divide_the_batch() -> None:
    from cifarbench.errors import UsageError
    from cifarbench.training.train import accumulation_steps

    assert accumulation_steps(1024, None) == 1 and accumulation_steps(1024, 1024) == 1
    assert accumulation_steps(1024, 256) == 4
    for bad in (300, 2048):
        with pytest.raises(UsageError, match="--micro-batch must divide"):
            accumulation_steps(1024, bad)


def test_lookahead_counts_optimizer_updates_under_accumulation() -> None:
    from cifarbench.models.airbench import Lookahead

    la = Lookahead(total_steps=10, micro=4)
    assert (la.total, la.every) == (40, 20)  # every 5 updates = every 20 micro-batches; the last at update 10
