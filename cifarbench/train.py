"""Training: data -> augmented epochs -> checkpoint -> best model -> one final test evaluation.

Reads top to bottom as the recipe runs. The test split is loaded only after the last
epoch, so it can never influence model selection. Each epoch draws its shuffling and
augmentation from (seed, epoch) alone and the optimizer state lives in the checkpoint,
so ``resume`` continues exactly where an interrupted run stopped.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from cifarbench.atomic import atomic_write
from cifarbench.data import Dataset, load_dataset, train_val_split
from cifarbench.errors import UsageError
from cifarbench.manifest import Manifest
from cifarbench.metrics import classification_report, confusion_matrix, format_report
from cifarbench.sysinfo import has_fast_bf16, nvidia_gpus
from cifarbench.zoo import Recipe, count_macs, get_arch, init_whitening

PRECISIONS = ("auto", "float32", "mixed_bfloat16", "mixed_float16")
CHECKPOINT_DIR = "checkpoint"


def resolve_precision(precision: str) -> str:
    """auto: mixed_float16 on a GPU, mixed_bfloat16 on CPUs with native bf16, else float32."""
    if precision not in PRECISIONS:
        raise UsageError(f"unknown precision {precision!r}; choose from {', '.join(PRECISIONS)}")
    if precision != "auto":
        return precision
    if nvidia_gpus():
        return "mixed_float16"
    return "mixed_bfloat16" if has_fast_bf16() else "float32"


def augment(images: np.ndarray, ops: tuple[str, ...], rng: np.random.Generator) -> np.ndarray:
    """Random horizontal flip and translation by up to 2 pixels (reflect padding), vectorised."""
    x = images
    if "translate2" in ops:
        pad = np.pad(x, ((0, 0), (2, 2), (2, 2), (0, 0)), mode="reflect")
        dy, dx = rng.integers(0, 5, len(x)), rng.integers(0, 5, len(x))
        out = np.empty_like(x)
        for oy in range(5):
            for ox in range(5):
                sel = np.flatnonzero((dy == oy) & (dx == ox))
                out[sel] = pad[sel, oy : oy + 32, ox : ox + 32]
        x = out
    if "flip" in ops:
        flip = rng.random(len(x)) < 0.5
        x = x.copy() if x is images else x
        x[flip] = x[flip, :, ::-1]
    return x


def _lr_schedule(keras: Any, recipe: Recipe, steps_per_epoch: int, epochs: int) -> Any:
    if recipe.schedule == "constant":
        return recipe.lr

    @keras.saving.register_keras_serializable(package="cifarbench")
    class WarmupLinear(keras.optimizers.schedules.LearningRateSchedule):
        """Linear warm-up to the peak, then linear decay to zero at the last step."""

        def __init__(self, peak: float, warmup: int, total: int) -> None:
            self.peak, self.warmup, self.total = float(peak), int(warmup), int(total)

        def __call__(self, step: Any) -> Any:
            ops = keras.ops
            s = ops.cast(step, "float32") + 1.0
            up = s / max(1, self.warmup)
            down = (self.total - s) / max(1, self.total - self.warmup)
            return self.peak * ops.clip(ops.minimum(up, down), 0.0, 1.0)

        def get_config(self) -> dict[str, Any]:
            return {"peak": self.peak, "warmup": self.warmup, "total": self.total}

    return WarmupLinear(recipe.lr, int(recipe.warmup_epochs * steps_per_epoch), epochs * steps_per_epoch)


def _compile(keras: Any, model: Any, recipe: Recipe, lr: Any) -> None:
    if recipe.optimizer == "adam":
        opt = keras.optimizers.Adam(lr, weight_decay=recipe.weight_decay or None)
    elif recipe.optimizer == "sgd-nesterov":
        opt = keras.optimizers.SGD(lr, momentum=recipe.momentum, nesterov=True, weight_decay=recipe.weight_decay or None)
    else:  # pragma: no cover - recipes are fixed in the zoo
        raise UsageError(f"unknown optimizer {recipe.optimizer!r}")
    if recipe.weight_decay:
        opt.exclude_from_weight_decay(var_names=["gamma", "beta", "bias"])
    loss = keras.losses.CategoricalCrossentropy(label_smoothing=recipe.label_smoothing)
    model.compile(optimizer=opt, loss=loss, metrics=["accuracy"])


def _evaluate(model: Any, ds: Dataset, batch_size: int = 1000) -> tuple[np.ndarray, float]:
    probs = model.predict(ds.images.astype(np.float32), batch_size=batch_size, verbose=0)
    p = np.clip(probs[np.arange(len(ds)), ds.labels], 1e-12, 1.0)
    return probs, float(-np.log(p).mean())


def train(
    arch_name: str,
    out: str | os.PathLike[str],
    data: str = "cifar10",
    epochs: int | None = None,
    batch_size: int | None = None,
    val_size: int = 5000,
    seed: int = 0,
    precision: str = "auto",
    resume: bool = False,
    threads: int | None = None,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
    test_data: str | None = None,
    command: str | None = None,
) -> Manifest:
    """Train ``arch_name`` and write model.keras, manifest.json, history.json, report.txt and plots to ``out``."""
    arch = get_arch(arch_name)
    recipe = arch.recipe
    epochs = epochs or recipe.epochs
    batch_size = batch_size or recipe.batch_size
    out = Path(out)
    ckpt = out / CHECKPOINT_DIR
    if not resume and ckpt.exists():
        shutil.rmtree(ckpt)
    ckpt.mkdir(parents=True, exist_ok=True)
    started = time.time()

    # 1. Data: the train split, a stratified validation slice held out of it.
    full = load_dataset(data, "train")
    train_ds, val_ds = train_val_split(full, val_size, seed)
    num_classes = len(full.class_names)
    y_train = np.eye(num_classes, dtype=np.float32)[train_ds.labels]
    steps_per_epoch = -(-len(train_ds) // batch_size)

    # 2. Framework set-up: threads, precision, seeds (imports TensorFlow only here).
    import keras
    import tensorflow as tf

    if threads:
        try:
            tf.config.threading.set_intra_op_parallelism_threads(threads)
            tf.config.threading.set_inter_op_parallelism_threads(min(2, threads))
        except RuntimeError:  # TensorFlow already started in this process: keep its pools
            pass
    policy = resolve_precision(precision)
    keras.mixed_precision.set_global_policy(policy)
    keras.utils.set_random_seed(seed)

    # 3. Model: fresh (with whitening from train patches), or the checkpoint of an interrupted run.
    state: dict[str, Any] = {"epoch": 0, "history": [], "best_val_acc": -1.0, "best_epoch": 0, "train_seconds": 0.0}
    if resume and (ckpt / "state.json").is_file():
        _lr_schedule(keras, recipe, steps_per_epoch, epochs)  # registers the schedule class for loading
        model = keras.models.load_model(ckpt / "last.keras")
        state = json.loads((ckpt / "state.json").read_text())
        if recipe.weight_decay:
            model.optimizer.exclude_from_weight_decay(var_names=["gamma", "beta", "bias"])
    else:
        model = arch.build(num_classes)
        if arch.needs_whitening:
            init_whitening(model, train_ds.images)
        _compile(keras, model, recipe, _lr_schedule(keras, recipe, steps_per_epoch, epochs))

    # 4. Epochs: augment with an rng of (seed, epoch), fit one pass, validate, checkpoint.
    for epoch in range(state["epoch"], epochs):
        rng = np.random.default_rng([seed, epoch])
        keras.utils.set_random_seed(seed * 1000 + epoch)
        order = rng.permutation(len(train_ds))
        x = augment(train_ds.images[order], recipe.augment, rng).astype(np.float32)
        t0 = time.time()
        h = model.fit(x, y_train[order], batch_size=batch_size, epochs=1, shuffle=False, verbose=0)
        fit_s = time.time() - t0
        probs, val_loss = _evaluate(model, val_ds)
        val_acc = float((probs.argmax(1) == val_ds.labels).mean())
        state["train_seconds"] += time.time() - t0
        row = {
            "epoch": epoch + 1, "loss": float(h.history["loss"][-1]), "acc": float(h.history["accuracy"][-1]),
            "val_loss": val_loss, "val_acc": val_acc, "img_per_s": len(train_ds) / fit_s,
            "lr_end": float(keras.ops.convert_to_numpy(model.optimizer.learning_rate)),
        }
        state["history"].append(row)
        if val_acc > state["best_val_acc"]:
            state["best_val_acc"], state["best_epoch"] = val_acc, epoch + 1
            model.save(ckpt / "best.keras")
        state["epoch"] = epoch + 1
        model.save(ckpt / "last.keras.tmp.keras")
        os.replace(ckpt / "last.keras.tmp.keras", ckpt / "last.keras")
        with atomic_write(ckpt / "state.json") as fh:
            json.dump(state, fh, indent=1)
        if on_epoch:
            done = epoch + 1
            eta = state["train_seconds"] / max(1, done - 0) * (epochs - done)
            on_epoch({**row, "epochs": epochs, "eta_s": eta, "best_epoch": state["best_epoch"]})

    # 5. Model selection on validation only; then the one and only look at the test split.
    best = keras.models.load_model(ckpt / "best.keras", compile=False)
    best.save(out / "model.keras")
    _, val_loss = _evaluate(best, val_ds)
    test_ds = load_dataset(test_data or data, "test")
    probs, test_loss = _evaluate(best, test_ds)
    cm = confusion_matrix(test_ds.labels, probs.argmax(1), num_classes)
    report = classification_report(cm, full.class_names)

    # 6. Outputs.
    manifest = Manifest(name=out.name, arch=arch.name, classes=list(full.class_names))
    manifest.directory = out
    manifest.params = int(best.count_params())
    manifest.macs = count_macs(best)
    manifest.training = {
        "data": {"source": str(data), "fingerprint": full.fingerprint, "train": len(train_ds), "val": len(val_ds),
                 "test_source": str(test_data or data), "test_fingerprint": test_ds.fingerprint},
        "recipe": {**recipe.as_dict(), "epochs": epochs, "batch_size": batch_size},
        "seed": seed, "epochs_run": state["epoch"], "best_epoch": state["best_epoch"],
        "precision": policy, "threads": threads,
        "wall_seconds": round(state["train_seconds"], 1),
        "device": {"cpu": platform.processor() or platform.machine(), "gpus": nvidia_gpus(),
                   "tensorflow": tf.__version__, "keras": keras.__version__},
        "command": command or " ".join(["cifarbench"] + sys.argv[1:]),
    }
    manifest.metrics = {
        "val": {"accuracy": state["best_val_acc"], "loss": val_loss, "size": len(val_ds)},
        "test": {"accuracy": report["accuracy"], "loss": test_loss, "macro_f1": report["macro"]["f1"],
                 "size": len(test_ds), "views": 1},
    }
    manifest.add_artifact("keras", "model.keras", input_dtype="float32 pixels 0-255 (cast uint8)")
    manifest.save()
    with atomic_write(out / "history.json") as fh:
        json.dump(state["history"], fh, indent=1)
    with atomic_write(out / "report.txt") as fh:
        fh.write(f"{arch.name} on {test_ds.source} (test split, {len(test_ds)} images, single view)\n\n")
        fh.write(format_report(report))
    from cifarbench.plots import plot_confusion, plot_curves

    plot_curves(state["history"], out / "curves.png")
    plot_confusion(cm, full.class_names, out / "confusion.png", f"{arch.name}: test accuracy {report['accuracy']:.4f}")
    manifest.training["total_wall_seconds"] = round(time.time() - started, 1)
    manifest.save()
    return manifest
