"""`cifarbench train`."""

from __future__ import annotations

import sys
from typing import Any

import click

from cifarbench.train import PRECISIONS
from cifarbench.zoo import ZOO


def _fmt_eta(s: float) -> str:
    m, s = divmod(int(s), 60)
    return f"{m // 60}:{m % 60:02d}:{s:02d}"


@click.command("train")
@click.option("--arch", type=click.Choice(sorted(ZOO)), required=True, help="Zoo architecture.")
@click.option("--data", default="cifar10", show_default=True, help="Data source (see README: bundled, cifar10, dir, archive).")
@click.option("--epochs", type=click.IntRange(1), help="Epochs (default: the architecture's recipe).")
@click.option("--batch-size", type=click.IntRange(1), help="Batch size (default: the recipe's).")
@click.option("--val-size", type=click.IntRange(1), default=5000, show_default=True, help="Validation images held out of train.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--precision", type=click.Choice(PRECISIONS), default="auto", show_default=True,
              help="auto: mixed_float16 on GPU, mixed_bfloat16 on CPUs with native bf16, else float32.")
@click.option("--threads", type=click.IntRange(1), help="TensorFlow intra-op threads (default: all cores).")
@click.option("--out", type=click.Path(file_okay=False), help="Output directory (default: runs/<arch>).")
@click.option("--resume", is_flag=True, help="Continue an interrupted run from its last checkpoint.")
@click.option("--quiet", "-q", is_flag=True, help="No progress output.")
def command(arch: str, data: str, epochs: int | None, batch_size: int | None, val_size: int, seed: int,
            precision: str, threads: int | None, out: str | None, resume: bool, quiet: bool) -> None:
    """Train ARCH; writes model.keras, manifest.json, history.json, report.txt, curves.png, confusion.png."""
    from cifarbench.train import train

    def on_epoch(r: dict[str, Any]) -> None:
        if not quiet:
            click.echo(
                f"epoch {r['epoch']}/{r['epochs']}  loss {r['loss']:.4f}  acc {r['acc']:.4f}  "
                f"val_loss {r['val_loss']:.4f}  val_acc {r['val_acc']:.4f}  {r['img_per_s']:.0f} img/s  "
                f"ETA {_fmt_eta(r['eta_s'])}", err=True)

    out = out or f"runs/{arch}"
    manifest = train(arch, out, data=data, epochs=epochs, batch_size=batch_size, val_size=val_size, seed=seed,
                     precision=precision, resume=resume, threads=threads, on_epoch=on_epoch,
                     command=" ".join(["cifarbench"] + sys.argv[1:]))
    if not quiet:
        t = manifest.metrics["test"]
        click.echo(f"{arch}: test accuracy {t['accuracy']:.4f} (macro F1 {t['macro_f1']:.4f}) on {t['size']} images; "
                   f"val {manifest.metrics['val']['accuracy']:.4f}; {manifest.training['wall_seconds']:.0f} s; "
                   f"written to {out}", err=True)
