"""Training: data -> augmented epochs -> checkpoint -> best model -> one final test evaluation.

Reads top to bottom as the recipe runs. The test split is loaded only after the last
epoch, so it can never influence model selection. Each epoch draws its shuffling and
augmentation from (seed, epoch) alone and the optimizer state lives in the checkpoint,
so ``resume`` continues exactly where an interrupted run stopped.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np

from cifarbench.atomic import atomic_write
from cifarbench.data import Dataset, load_dataset, train_val_split
from cifarbench.errors import UsageError
from cifarbench.manifest import Manifest
from cifarbench.metrics import classification_report, confusion_matrix, format_report
from cifarbench.sysinfo import cpu_info, has_fast_bf16, nvidia_gpus
from cifarbench.zoo import Recipe, count_macs, get_arch, init_whitening


def airbench_steps(n_images: int, batch_size: int, epochs: float) -> tuple[int, int]:
    """(steps per epoch with the last partial batch dropped, total steps of a possibly fractional run)."""
    per_epoch = n_images // batch_size
    return per_epoch, int(math.ceil(per_epoch * epochs))

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


def augment(images: np.ndarray, ops: tuple[str, ...], rng: np.random.Generator,
            flip_mask: np.ndarray | None = None, epoch: int = 0) -> np.ndarray:
    """Flips and translation by up to 2 pixels (reflect padding), vectorised.

    ``flip``: i.i.d. random flips. ``alternating-flip`` (airbench): ``flip_mask`` flips each image once
    for the run, and odd epochs mirror the whole set on top of it, so consecutive epochs see both views.
    """
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
    flip = None
    if "flip" in ops:
        flip = rng.random(len(x)) < 0.5
    elif "alternating-flip" in ops and flip_mask is not None:
        flip = flip_mask ^ bool(epoch % 2)
    if flip is not None:
        x = x.copy() if x is images else x
        x[flip] = x[flip, :, ::-1]
    return x


def _lr_schedule(keras: Any, recipe: Recipe, steps_per_epoch: int, total_steps: int) -> Any:
    if recipe.schedule == "constant":
        return recipe.lr
    if recipe.schedule == "airbench":
        from cifarbench.airbench import WarmupDecay

        return WarmupDecay(recipe.lr, total_steps)

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

    return WarmupLinear(recipe.lr, int(recipe.warmup_epochs * steps_per_epoch), total_steps)


def _compile(keras: Any, model: Any, recipe: Recipe, lr: Any, jit: bool) -> None:
    if recipe.optimizer == "adam":
        opt = keras.optimizers.Adam(lr, weight_decay=recipe.weight_decay or None)
    elif recipe.optimizer == "sgd-nesterov":
        opt = keras.optimizers.SGD(lr, momentum=recipe.momentum, nesterov=True, weight_decay=recipe.weight_decay or None)
    else:  # pragma: no cover - recipes are fixed in the zoo
        raise UsageError(f"unknown optimizer {recipe.optimizer!r}")
    if recipe.weight_decay:
        opt.exclude_from_weight_decay(var_names=["gamma", "beta", "bias"])
    loss = keras.losses.CategoricalCrossentropy(label_smoothing=recipe.label_smoothing, reduction=(
        "sum" if recipe.loss_reduction == "sum" else "sum_over_batch_size"))
    model.compile(optimizer=opt, loss=loss, metrics=["accuracy"], jit_compile=jit)


def tta_accuracy(model: Any, ds: Dataset, mode: str = "flip") -> dict[str, Any]:
    """Test accuracy with test-time augmentation, recorded beside the single-view figure."""
    from cifarbench.backends.tta import VIEWS, predict_tta

    probs = predict_tta(lambda b: model.predict(b.astype(np.float32), batch_size=1000, verbose=0), ds.images, mode)
    return {"mode": mode, "views": VIEWS[mode], "accuracy": float((probs.argmax(1) == ds.labels).mean()),
            "size": len(ds)}


def _evaluate(model: Any, ds: Dataset, batch_size: int = 1000) -> tuple[np.ndarray, float]:
    probs = model.predict(ds.images.astype(np.float32), batch_size=batch_size, verbose=0)
    p = np.clip(probs[np.arange(len(ds)), ds.labels], 1e-12, 1.0)
    return probs, float(-np.log(p).mean())


@dataclass(frozen=True)
class TrainOptions:
    """Everything ``train`` takes besides the architecture and output folder; validated once."""

    data: str = "cifar10"
    epochs: float | None = None  # None: the recipe's; fractional epochs end part-way through the last one
    batch_size: int | None = None
    val_size: int = 5000  # 0: train on the whole split with the fixed schedule, ship the last epoch
    seed: int = 0
    precision: str = "auto"
    resume: bool = False
    threads: int | None = None
    jit: str = "auto"  # XLA: "auto" = on for GPUs, off on CPUs (measured slower there: benchmarks/train)
    test_data: str | None = None
    command: str | None = None

    def __post_init__(self) -> None:
        if self.epochs is not None and not self.epochs > 0:
            raise UsageError(f"--epochs must be > 0, got {self.epochs}")
        if self.batch_size is not None and self.batch_size < 1:
            raise UsageError(f"--batch-size must be >= 1, got {self.batch_size}")
        if self.val_size < 0:
            raise UsageError(f"--val-size must be >= 0, got {self.val_size}")
        if self.jit not in JIT_CHOICES:
            raise UsageError(f"--jit must be one of {', '.join(JIT_CHOICES)}, got {self.jit!r}")
        resolve_precision(self.precision)


JIT_CHOICES = ("auto", "on", "off")


def _import_backend(threads: int | None) -> Any:
    """Keras, with TensorFlow's thread pools set only when TensorFlow is the backend."""
    import keras

    if keras.backend.backend() == "tensorflow" and threads:
        import tensorflow as tf

        try:
            tf.config.threading.set_intra_op_parallelism_threads(threads)
            tf.config.threading.set_inter_op_parallelism_threads(min(2, threads))
        except RuntimeError:  # TensorFlow already started in this process: keep its pools
            pass
    elif keras.backend.backend() == "torch" and threads:
        import torch

        torch.set_num_threads(threads)
    return keras


def _framework_versions(keras: Any) -> dict[str, str]:
    import importlib.metadata as md

    out = {"keras": keras.__version__, "backend": keras.backend.backend()}
    for dist in ("tensorflow", "jax", "torch"):
        if dist == keras.backend.backend() or (dist == "tensorflow" and out["backend"] == "tensorflow"):
            try:
                out[dist] = md.version(dist)
            except md.PackageNotFoundError:
                pass
    return out


def _save_model(model: Any, path: Path) -> None:
    """Keras insists on a .keras suffix, so the temp file gets one; the rename is atomic."""
    tmp = path.with_name(f".{path.stem}.tmp.keras")
    model.save(tmp)
    os.replace(tmp, path)


def _save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    with atomic_write(path, "wb") as fh:
        np.savez(fh, **arrays)


def _refuse_flat_tree(full: Dataset, data: str, test_data: str | None) -> None:
    """A ``<root>/<class>/`` tree has no test split: its "test" images would be the training images."""
    if test_data or not full.paths:
        return
    if not any(len(parts) >= 3 and parts[-3] == "train" for parts in (p.split("/") for p in full.paths[:50])):
        raise UsageError(f"{data} has no train/ and test/ folders, so it has no test split: pass --test-data "
                         "(e.g. --test-data bundled) to measure on images the model never saw")


def train(arch_name: str, out: str | os.PathLike[str], options: TrainOptions | None = None,
          on_epoch: Callable[[dict[str, Any]], None] | None = None, **overrides: Any) -> Manifest:
    """Train ``arch_name`` and write model.keras, manifest.json, history.json, report.txt and plots to ``out``.

    ``overrides`` are ``TrainOptions`` fields, for callers that set one or two.
    """
    o = replace(options or TrainOptions(), **overrides)
    arch = get_arch(arch_name)
    recipe = arch.recipe
    epochs = float(o.epochs or recipe.epochs)
    batch_size = o.batch_size or recipe.batch_size
    out = Path(out)
    ckpt = out / CHECKPOINT_DIR
    if not o.resume and ckpt.exists():
        shutil.rmtree(ckpt)
    ckpt.mkdir(parents=True, exist_ok=True)
    started = time.time()

    # 1. Data: the train split, and a stratified validation slice held out of it (none with --val-size 0).
    full = load_dataset(o.data, "train")
    _refuse_flat_tree(full, o.data, o.test_data)
    train_ds, val_ds = train_val_split(full, o.val_size, o.seed) if o.val_size else (full, None)
    num_classes = len(full.class_names)
    y_train = np.eye(num_classes, dtype=np.float32)[train_ds.labels]
    if recipe.drop_remainder and len(train_ds) >= batch_size:
        steps_per_epoch, total_steps = airbench_steps(len(train_ds), batch_size, epochs)
    else:
        steps_per_epoch = -(-len(train_ds) // batch_size)
        total_steps = int(math.ceil(steps_per_epoch * epochs))
    n_epochs = int(math.ceil(epochs))

    # 2. Framework set-up: threads, precision, XLA, seeds (TensorFlow only when it is Keras' backend).
    keras = _import_backend(o.threads)
    policy = resolve_precision(o.precision)
    keras.mixed_precision.set_global_policy(policy)
    keras.utils.set_random_seed(o.seed)
    jit = o.jit == "on" or (o.jit == "auto" and bool(nvidia_gpus()))
    lookahead = None
    if recipe.lookahead:
        from cifarbench.airbench import Lookahead

        lookahead = Lookahead(total_steps)

    # 3. Model: fresh (whitening from train patches, Dirac init), or the checkpoint of an interrupted run.
    state: dict[str, Any] = {"epoch": 0, "history": [], "best_val_acc": -1.0, "best_epoch": 0, "train_seconds": 0.0}
    if o.resume and (ckpt / "state.json").is_file():
        _lr_schedule(keras, recipe, steps_per_epoch, total_steps)  # registers the schedule class for loading
        if arch.build_train:
            import cifarbench.airbench  # noqa: F401  registers the training graph's layers
        model = keras.models.load_model(ckpt / "last.keras")
        state = json.loads((ckpt / "state.json").read_text())
        if recipe.weight_decay:
            model.optimizer.exclude_from_weight_decay(var_names=["gamma", "beta", "bias"])
        if lookahead and (ckpt / "lookahead.npz").is_file():
            with np.load(ckpt / "lookahead.npz") as z:
                lookahead.load_state(dict(z))
    else:
        model = (arch.build_train or arch.build)(num_classes)
        if arch.needs_whitening:
            init_whitening(model, train_ds.images, seed=o.seed)
        if arch.build_train:
            from cifarbench.airbench import dirac_init

            dirac_init(model)
        _compile(keras, model, recipe, _lr_schedule(keras, recipe, steps_per_epoch, total_steps), jit)
    flip_mask = np.random.default_rng([o.seed, 0xF11]).random(len(train_ds)) < 0.5
    state["flip_mask_seed"] = [o.seed, 0xF11]  # the alternating-flip phase: fixed per run, parity per epoch

    def epoch_data(epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """Shuffling and augmentation from (seed, epoch) alone, so a resumed run sees the same batches."""
        rng = np.random.default_rng([o.seed, epoch])
        order = rng.permutation(len(train_ds))
        x = augment(train_ds.images[order], recipe.augment, rng, flip_mask[order], epoch)
        steps = min(steps_per_epoch, total_steps - epoch * steps_per_epoch)
        n = min(len(x), steps * batch_size)
        return x[:n].astype(np.float32), y_train[order][:n]

    # 4. Epochs: the next epoch's data is prepared in a thread while this one trains.
    callbacks = [lookahead] if lookahead else []
    with ThreadPoolExecutor(1) as prep:
        upcoming = prep.submit(epoch_data, state["epoch"]) if state["epoch"] < n_epochs else None
        for epoch in range(state["epoch"], n_epochs):
            x, y = upcoming.result()
            n_seen = len(x)
            upcoming = prep.submit(epoch_data, epoch + 1) if epoch + 1 < n_epochs else None
            keras.utils.set_random_seed(o.seed * 1000 + epoch)
            if recipe.whiten_bias_epochs and arch.build_train:
                from cifarbench.airbench import set_whiten_bias_trainable

                set_whiten_bias_trainable(model, epoch < recipe.whiten_bias_epochs)
            t0 = time.time()
            h = model.fit(x, y, batch_size=batch_size, epochs=1, shuffle=False, verbose=0, callbacks=callbacks)
            fit_s = time.time() - t0
            del x, y
            row = {"epoch": epoch + 1, "loss": float(h.history["loss"][-1]), "acc": float(h.history["accuracy"][-1]),
                   "img_per_s": n_seen / fit_s, "seconds": round(fit_s, 1),
                   "lr_end": float(keras.ops.convert_to_numpy(model.optimizer.learning_rate))}
            if val_ds is not None:
                probs, row["val_loss"] = _evaluate(model, val_ds)
                row["val_acc"] = float((probs.argmax(1) == val_ds.labels).mean())
            state["train_seconds"] += time.time() - t0
            state["history"].append(row)
            if val_ds is not None and row["val_acc"] > state["best_val_acc"]:
                state["best_val_acc"], state["best_epoch"] = row["val_acc"], epoch + 1
                _save_model(model, ckpt / "best.keras")
            state["epoch"] = epoch + 1
            _save_model(model, ckpt / "last.keras")
            if lookahead:
                _save_npz(ckpt / "lookahead.npz", lookahead.state())
            with atomic_write(ckpt / "state.json") as fh:
                json.dump(state, fh, indent=1)
            if on_epoch:
                done = epoch + 1
                eta = state["train_seconds"] / max(1, done) * (n_epochs - done)
                on_epoch({**row, "epochs": n_epochs, "eta_s": eta, "best_epoch": state["best_epoch"]})

    # 5. Model selection on validation only (the last epoch without one); then the one look at the test split.
    chosen = "best.keras" if val_ds is not None else "last.keras"
    if arch.build_train:
        import cifarbench.airbench  # noqa: F401
    best = keras.models.load_model(ckpt / chosen, compile=False)
    if arch.to_plain:
        best = arch.to_plain(best, num_classes)
    best.save(out / "model.keras")
    best_epoch = state["best_epoch"] if val_ds is not None else state["epoch"]
    val_metrics = None
    if val_ds is not None:
        _, val_loss = _evaluate(best, val_ds)
        val_metrics = {"accuracy": state["best_val_acc"], "loss": val_loss, "size": len(val_ds)}
    test_ds = load_dataset(o.test_data or o.data, "test")
    probs, test_loss = _evaluate(best, test_ds)
    cm = confusion_matrix(test_ds.labels, probs.argmax(1), num_classes)
    report = classification_report(cm, full.class_names)

    # 6. Outputs.
    manifest = Manifest(name=out.name, arch=arch.name, classes=list(full.class_names))
    manifest.directory = out
    manifest.params = int(best.count_params())
    manifest.macs = count_macs(best)
    cpu = cpu_info()
    manifest.training = {
        "data": {"source": str(o.data), "fingerprint": full.fingerprint, "train": len(train_ds),
                 "val": len(val_ds) if val_ds is not None else 0,
                 "test_source": str(o.test_data or o.data), "test_fingerprint": test_ds.fingerprint},
        "recipe": {**recipe.as_dict(), "epochs": epochs, "batch_size": batch_size},
        "seed": o.seed, "epochs_run": state["epoch"], "steps": total_steps, "best_epoch": best_epoch,
        "precision": policy, "threads": o.threads, "jit_compile": jit,
        "wall_seconds": round(state["train_seconds"], 1),
        "device": {"cpu": cpu["model"], "cpu_flags": sorted(k for k, v in cpu["flags"].items() if v),
                   "cores": os.cpu_count(), "gpus": nvidia_gpus(), **_framework_versions(keras)},
        "command": o.command or " ".join(["cifarbench"] + sys.argv[1:]),
    }
    manifest.metrics = {"test": {"accuracy": report["accuracy"], "loss": test_loss, "macro_f1": report["macro"]["f1"],
                                 "size": len(test_ds), "views": 1},
                        "test_tta": tta_accuracy(best, test_ds)}
    if val_metrics:
        manifest.metrics = {"val": val_metrics, **manifest.metrics}
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
