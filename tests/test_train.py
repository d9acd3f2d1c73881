"""Training: every zoo entry trains, outputs are complete, resume is exact, the test split comes last."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from cifarbench.manifest import Manifest
from conftest import make_tree, run_cli

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


def test_macs_and_params_by_hand() -> None:
    from cifarbench.zoo import ZOO, count_macs

    model = ZOO["tiny-cnn"].build()
    # conv 3->8 (3x3, same) at 32x32 + conv 8->16 at 16x16 + dense 16->10
    assert count_macs(model) == 32 * 32 * 8 * 27 + 16 * 16 * 16 * 72 + 16 * 10
    # conv1 216 + BN 32 + conv2 1152 + BN 64 + dense 170 (Normalization built from constants adds none)
    assert model.count_params() == 216 + 32 + 1152 + 64 + 170


def test_resume_equals_uninterrupted(tmp_path: Path, tree: Path) -> None:
    from cifarbench.train import train

    train("tiny-cnn", tmp_path / "full", data=str(tree), epochs=2, val_size=30, precision="float32", threads=1)

    class Stop(Exception):
        pass

    def stop_after_first(row: dict) -> None:
        if row["epoch"] == 1:
            raise Stop

    with pytest.raises(Stop):
        train("tiny-cnn", tmp_path / "cut", data=str(tree), epochs=2, val_size=30, precision="float32", threads=1,
              on_epoch=stop_after_first)
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
    import cifarbench.train as train_mod

    events: list[str] = []
    real = train_mod.load_dataset

    def spy(source, split="test", **kw):  # type: ignore[no-untyped-def]
        events.append(f"load:{split}")
        return real(source, split, **kw)

    monkeypatch.setattr(train_mod, "load_dataset", spy)
    train_mod.train("tiny-cnn", tmp_path / "o", data=str(tree), epochs=2, val_size=30, precision="float32",
                    on_epoch=lambda row: events.append(f"epoch:{row['epoch']}"))
    assert events == ["load:train", "epoch:1", "epoch:2", "load:test"]


def test_precision_auto_is_float32_without_bf16(monkeypatch: pytest.MonkeyPatch) -> None:
    import cifarbench.train as train_mod

    monkeypatch.setattr(train_mod, "nvidia_gpus", lambda: [])
    monkeypatch.setattr(train_mod, "has_fast_bf16", lambda: False)
    assert train_mod.resolve_precision("auto") == "float32"
    monkeypatch.setattr(train_mod, "has_fast_bf16", lambda: True)
    assert train_mod.resolve_precision("auto") == "mixed_bfloat16"
    monkeypatch.setattr(train_mod, "nvidia_gpus", lambda: ["H100"])
    assert train_mod.resolve_precision("auto") == "mixed_float16"


def test_augment_is_deterministic_and_label_preserving() -> None:
    from cifarbench.train import augment

    x = np.random.default_rng(0).integers(0, 256, (50, 32, 32, 3)).astype(np.uint8)
    a = augment(x, ("flip", "translate2"), np.random.default_rng([1, 2]))
    b = augment(x, ("flip", "translate2"), np.random.default_rng([1, 2]))
    assert np.array_equal(a, b) and a.shape == x.shape and not np.array_equal(a, x)
    assert np.array_equal(augment(x, (), np.random.default_rng(0)), x)


def test_unknown_arch_is_usage_error(tmp_path: Path) -> None:
    r = run_cli("train", "--arch", "resnet9000")
    assert r.exit_code == 2
