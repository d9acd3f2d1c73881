"""Training: data -> augmented epochs -> checkpoint -> best model -> one final test evaluation.

Reads top to bottom as the recipe runs. The test split is loaded only after the last
epoch, so it can never influence model selection. Each epoch draws its shuffling and
augmentation from (seed, epoch) alone and the optimizer state lives in the checkpoint,
so ``resume`` continues exactly where an interrupted run stopped. The parts live beside it:
``train_data`` (step plan, augmentation, each epoch's images), ``train_optim`` (schedule,
optimizer, loss) and ``train_state`` (the checkpoint).
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from cifarbench.atomic import atomic_write
from cifarbench.bench.metrics import classification_report, confusion_matrix, format_report
from cifarbench.data.sources import Dataset, load_dataset, train_val_split, tree_classes
from cifarbench.data.transform import parse_size
from cifarbench.errors import UsageError
from cifarbench.events import Emit, Event, null_emit
from cifarbench.models.manifest import InputContract, Manifest
from cifarbench.models.tfquiet import quiet_tensorflow
from cifarbench.models.zoo import count_macs, get_arch, init_whitening
from cifarbench.sysinfo import cpu_info, has_fast_bf16, nvidia_gpus
from cifarbench.training.data import EpochData, airbench_steps, augment, refuse_flat_tree, step_plan
from cifarbench.training.optim import compile_recipe, lr_schedule
from cifarbench.training.state import CHECKPOINT_DIR, Checkpoint, fresh_state

__all__ = ["train", "TrainOptions", "resolve_precision", "tta_accuracy", "augment", "airbench_steps",
           "PRECISIONS", "JIT_CHOICES", "CHECKPOINT_DIR"]

PRECISIONS = ("auto", "float32", "mixed_bfloat16", "mixed_float16")
MIN_IMAGE_SIZE = 8  # three 2x poolings leave at least one pixel
_compile, _lr_schedule = compile_recipe, lr_schedule  # the names benchmarks/train/bench_train.py imports


def resolve_precision(precision: str) -> str:
    """auto: mixed_float16 on a GPU, mixed_bfloat16 on CPUs with native bf16, else float32."""
    if precision not in PRECISIONS:
        raise UsageError(f"unknown precision {precision!r}; choose from {', '.join(PRECISIONS)}")
    if precision != "auto":
        return precision
    if nvidia_gpus():
        return "mixed_float16"
    return "mixed_bfloat16" if has_fast_bf16() else "float32"


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
    micro_batch: int | None = None  # gradient accumulation: fit micro-batches, one update per batch_size images
    val_size: int = 5000  # 0: train on the whole split with the fixed schedule, ship the last epoch
    seed: int = 0
    precision: str = "auto"
    resume: bool = False
    threads: int | None = None
    jit: str = "auto"  # compiled step: see resolve_jit
    test_data: str | None = None
    command: str | None = None
    image_size: tuple[int, int] | None = None  # (H, W) the zoo net takes; None: 32x32 (CIFAR-10)

    def __post_init__(self) -> None:
        if self.epochs is not None and not self.epochs > 0:
            raise UsageError(f"--epochs must be > 0, got {self.epochs}")
        if self.batch_size is not None and self.batch_size < 1:
            raise UsageError(f"--batch-size must be >= 1, got {self.batch_size}")
        if self.micro_batch is not None and self.micro_batch < 1:
            raise UsageError(f"--micro-batch must be >= 1, got {self.micro_batch}")
        if self.image_size is not None:
            h, w = parse_size(self.image_size)
            if min(h, w) < MIN_IMAGE_SIZE:
                raise UsageError(f"--image-size must be at least {MIN_IMAGE_SIZE} pixels a side (the zoo nets pool "
                                 f"three times), got {h},{w}")
            object.__setattr__(self, "image_size", (h, w))
        if self.val_size < 0:
            raise UsageError(f"--val-size must be >= 0, got {self.val_size}")
        if self.jit not in JIT_CHOICES:
            raise UsageError(f"--jit must be one of {', '.join(JIT_CHOICES)}, got {self.jit!r}")
        resolve_precision(self.precision)


JIT_CHOICES = ("auto", "on", "off")


def accumulation_steps(batch_size: int, micro_batch: int | None) -> int:
    """Micro-batches per optimizer update: ``batch_size / micro_batch`` (1 without ``--micro-batch``)."""
    if not micro_batch or micro_batch == batch_size:
        return 1
    if micro_batch > batch_size or batch_size % micro_batch:
        raise UsageError(f"--micro-batch must divide the batch size ({batch_size}), got {micro_batch}")
    return batch_size // micro_batch


def spread_bn_momentum(model: Any, micro: int) -> None:
    """BatchNorm's running statistics update once per micro-batch under accumulation: momentum m**(1/micro)
    keeps their horizon in images what the recipe's m gives per full batch."""
    if micro > 1:
        import keras

        for layer in model.layers:
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.momentum = float(layer.momentum) ** (1.0 / micro)


def resolve_jit(mode: str, backend: str, gpu: bool) -> bool:
    """Keras' ``jit_compile`` for ``--jit``: "auto" is on for GPUs and for JAX, off for TensorFlow and PyTorch on CPUs.

    Measured on a 2-core Zen 3 (benchmarks/train/speed.md): TensorFlow's XLA is slower than its oneDNN kernels
    there; JAX without jit runs op by op, slower than with it; torch.compile needs a C compiler and minutes of
    compilation per process, so it is opt-in (``--jit on``).
    """
    if mode != "auto":
        return mode == "on"
    return gpu or backend == "jax"


def _import_backend(threads: int | None) -> Any:
    """Keras, with TensorFlow's thread pools set only when TensorFlow is the backend.

    TSL's log level is set first (a user's own setting wins): its INFO lines, such as TensorFlow's CPU-feature
    notice, are not training output. absl's pre-initialisation lines ignore it; ``train -q`` hides fd 2 instead.
    """
    quiet_tensorflow()
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


def _fmt_eta(s: float) -> str:
    m, s = divmod(int(s), 60)
    return f"{m // 60}:{m % 60:02d}:{s:02d}"


def _epoch_event(r: dict[str, Any]) -> Event:
    """One finished epoch: its history row in ``data`` and the line the CLI prints in ``message``."""
    val = f"val_loss {r['val_loss']:.4f}  val_acc {r['val_acc']:.4f}  " if "val_acc" in r else ""
    line = (f"epoch {r['epoch']}/{r['epochs']}  loss {r['loss']:.4f}  acc {r['acc']:.4f}  {val}"
            f"{r['img_per_s']:.0f} img/s  ETA {_fmt_eta(r['eta_s'])}")
    return Event("epoch", line, done=r["epoch"], total=r["epochs"], data=r)


def train(arch_name: str, out: str | os.PathLike[str], options: TrainOptions | None = None, *,
          events: Emit | None = None, **overrides: Any) -> Manifest:
    """Train ``arch_name`` and write model.keras, manifest.json, history.json, report.txt and plots to ``out``.

    ``overrides`` are ``TrainOptions`` fields, for callers that set one or two. ``events`` hears an
    ``epoch`` event after each epoch's checkpoint is written (``cifarbench.events``).
    """
    o = replace(options or TrainOptions(), **overrides)
    emit = events or null_emit
    arch = get_arch(arch_name)
    recipe = arch.recipe
    epochs = float(o.epochs or recipe.epochs)
    batch_size = o.batch_size or recipe.batch_size
    out = Path(out)
    started = time.time()

    # 1. Data: the train split, and a stratified validation slice held out of it (none with --val-size 0).
    #    A tree's classes are its folder names (sorted: CIFAR-10's folders sort into CIFAR-10's order).
    size = o.image_size or (32, 32)
    classes = tree_classes(o.data, "train")
    full = load_dataset(o.data, "train", classes=classes, transform=size)
    refuse_flat_tree(full, o.data, o.test_data)
    train_ds, val_ds = train_val_split(full, o.val_size, o.seed) if o.val_size else (full, None)
    num_classes = len(full.class_names)
    micro = accumulation_steps(batch_size, o.micro_batch)
    steps_per_epoch, total_steps = step_plan(len(train_ds), batch_size, epochs, recipe.drop_remainder)
    epoch_data = EpochData(train_ds, num_classes, recipe.augment, o.seed, batch_size, (steps_per_epoch, total_steps))
    n_epochs = int(math.ceil(epochs))
    ckpt = Checkpoint(out, o.resume)  # only now: a bad --data leaves no output folder (and keeps an old checkpoint)

    # 2. Framework set-up: threads, precision, XLA, seeds (TensorFlow only when it is Keras' backend).
    keras = _import_backend(o.threads)
    policy = resolve_precision(o.precision)
    keras.mixed_precision.set_global_policy(policy)
    keras.utils.set_random_seed(o.seed)
    jit = resolve_jit(o.jit, keras.backend.backend(), bool(nvidia_gpus()))
    lookahead = None
    if recipe.lookahead:
        from cifarbench.models.airbench import Lookahead

        lookahead = Lookahead(total_steps, micro=micro)

    # 3. Model: fresh (whitening from train patches, Dirac init), or the checkpoint of an interrupted run.
    state = fresh_state()
    if ckpt.resumable:
        lr_schedule(keras, recipe, steps_per_epoch * micro, total_steps * micro)  # registers the schedule class
        if arch.build_train:
            import cifarbench.models.airbench  # noqa: F401  registers the training graph's layers
        model, state = ckpt.load(keras, bool(recipe.weight_decay), lookahead)
    else:
        model = (arch.build_train or arch.build)(num_classes, image_size=size)
        spread_bn_momentum(model, micro)
        if arch.needs_whitening:
            init_whitening(model, train_ds.images, seed=o.seed)
        if arch.build_train:
            from cifarbench.models.airbench import dirac_init

            dirac_init(model)
        compile_recipe(keras, model, recipe, lr_schedule(keras, recipe, steps_per_epoch * micro, total_steps * micro),
                       jit, micro)
    state["flip_mask_seed"] = epoch_data.flip_mask_seed

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
                from cifarbench.models.airbench import set_whiten_bias_trainable

                set_whiten_bias_trainable(model, epoch < recipe.whiten_bias_epochs)
            t0 = time.time()
            h = model.fit(x, y, batch_size=batch_size // micro, epochs=1, shuffle=False, verbose=0, callbacks=callbacks)
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
            improved = val_ds is not None and row["val_acc"] > state["best_val_acc"]
            if improved:
                state["best_val_acc"], state["best_epoch"] = row["val_acc"], epoch + 1
            state["epoch"] = epoch + 1
            ckpt.save(model, state, lookahead, improved)
            eta = state["train_seconds"] / (epoch + 1) * (n_epochs - epoch - 1)
            emit(_epoch_event({**row, "epochs": n_epochs, "eta_s": eta, "best_epoch": state["best_epoch"]}))

    # 5. Model selection on validation only (the last epoch without one); then the one look at the test split.
    chosen = "best.keras" if val_ds is not None else "last.keras"
    if arch.build_train:
        import cifarbench.models.airbench  # noqa: F401
    best = keras.models.load_model(ckpt.path(chosen), compile=False)
    if arch.to_plain:
        best = arch.to_plain(best, num_classes)
    best.save(out / "model.keras")
    best_epoch = state["best_epoch"] if val_ds is not None else state["epoch"]
    val_metrics = None
    if val_ds is not None:
        _, val_loss = _evaluate(best, val_ds)
        val_metrics = {"accuracy": state["best_val_acc"], "loss": val_loss, "size": len(val_ds)}
    test_ds = load_dataset(o.test_data or o.data, "test", classes=full.class_names, transform=size)
    probs, test_loss = _evaluate(best, test_ds)
    cm = confusion_matrix(test_ds.labels, probs.argmax(1), num_classes)
    report = classification_report(cm, full.class_names)

    # 6. Outputs.
    manifest = Manifest(name=out.name, arch=arch.name, classes=list(full.class_names), input=InputContract(size=size))
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
        "precision": policy, "threads": o.threads, "jit_compile": jit, "micro_batch": batch_size // micro,
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
    from cifarbench.bench.plots import plot_confusion, plot_curves

    plot_curves(state["history"], out / "curves.png")
    plot_confusion(cm, full.class_names, out / "confusion.png", f"{arch.name}: test accuracy {report['accuracy']:.4f}")
    manifest.training["total_wall_seconds"] = round(time.time() - started, 1)
    manifest.save()
    return manifest
