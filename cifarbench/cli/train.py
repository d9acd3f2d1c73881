"""`cifarbench train`."""

from __future__ import annotations

import contextlib
import sys

import click

from cifarbench.models.zoo import ZOO
from cifarbench.training.train import JIT_CHOICES, PRECISIONS


def _size(value: str | None) -> tuple[int, int] | None:
    if value is None:
        return None
    try:
        parts = [int(v) for v in value.split(",")]
    except ValueError:
        raise click.BadParameter(f"{value!r} is not H or H,W, e.g. 64 or 96,128", param_hint="--image-size") from None
    if len(parts) not in (1, 2):
        raise click.BadParameter(f"{value!r} is not H or H,W, e.g. 64 or 96,128", param_hint="--image-size")
    return (parts[0], parts[-1])


@click.command("train")
@click.option("--arch", type=click.Choice(sorted(ZOO)), required=True, help="Zoo architecture.")
@click.option("--data", default="cifar10", show_default=True, help="Data source (see README: bundled, cifar10, dir, archive).")
@click.option("--epochs", type=click.FloatRange(0, min_open=True),
              help="Epochs (default: the recipe's; fractional: the last epoch stops part-way).")
@click.option("--batch-size", type=click.IntRange(1), help="Batch size (default: the recipe's).")
@click.option("--micro-batch", type=click.IntRange(1),
              help="Accumulate gradients over micro-batches of this size, one update per --batch-size images "
                   "(same recipe; BatchNorm sees micro-batches). PyTorch on CPUs runs faster at 256 (benchmarks/train).")
@click.option("--val-size", type=click.IntRange(0), default=5000, show_default=True,
              help="Validation images held out of train for model selection; 0: train on all, keep the last epoch.")
@click.option("--image-size", metavar="H[,W]",
              help="Input size of the zoo net (default 32): images of --data are resized to it (center-crop). A tree's "
                   "classes are its folder names.")
@click.option("--test-data", help="Test split source when --data has none (e.g. a flat <class>/ tree); default: --data.")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Seed of weight init, data order, augmentation and the validation split (same seed, same run).")
@click.option("--precision", type=click.Choice(PRECISIONS), default="auto", show_default=True,
              help="auto: mixed_float16 on GPU, mixed_bfloat16 on CPUs with native bf16, else float32.")
@click.option("--threads", type=click.IntRange(1), help="Framework intra-op threads (default: all cores).")
@click.option("--jit", type=click.Choice(JIT_CHOICES), default="auto", show_default=True,
              help="Keras jit_compile; auto: on for GPUs and JAX, off for TensorFlow/PyTorch on CPUs (benchmarks/train).")
@click.option("--out", type=click.Path(file_okay=False), help="Output directory (default: runs/<arch>).")
@click.option("--resume", is_flag=True, help="Continue an interrupted run from its last checkpoint.")
@click.option("--quiet", "-q", is_flag=True, help="No progress output.")
def command(arch: str, data: str, epochs: float | None, batch_size: int | None, micro_batch: int | None, val_size: int,
            image_size: str | None, test_data: str | None,
            seed: int, precision: str, threads: int | None, jit: str, out: str | None, resume: bool, quiet: bool) -> None:
    """Train ARCH; writes model.keras, manifest.json, history.json, report.txt, curves.png, confusion.png."""
    from cifarbench.cli.ui import EventPrinter
    from cifarbench.models.tfquiet import framework_logs
    from cifarbench.training.train import TrainOptions, train

    out = out or f"runs/{arch}"
    opts = TrainOptions(data=data, epochs=epochs, batch_size=batch_size, micro_batch=micro_batch, val_size=val_size, seed=seed,
                        precision=precision, resume=resume, threads=threads, jit=jit, test_data=test_data,
                        command=" ".join(["cifarbench"] + sys.argv[1:]), image_size=_size(image_size))
    # -q is silent on success: native code (absl's "before InitializeLog" CUDA probes on TensorFlow's import, XLA's
    # "slow compile" banner under JAX) writes to fd 2 whatever the log levels say, so it goes to a discarded file.
    with framework_logs() if quiet else contextlib.nullcontext():
        manifest = train(arch, out, opts, events=EventPrinter("train", quiet))
    if not quiet:
        t = manifest.metrics["test"]
        val = f"val {manifest.metrics['val']['accuracy']:.4f}; " if "val" in manifest.metrics else ""
        click.echo(f"{arch}: test accuracy {t['accuracy']:.4f} (macro F1 {t['macro_f1']:.4f}) on {t['size']} images; "
                   f"{val}{manifest.training['wall_seconds']:.0f} s; written to {out}", err=True)
