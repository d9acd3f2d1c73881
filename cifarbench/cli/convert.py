"""`cifarbench convert`."""

from __future__ import annotations

import click

from cifarbench.convert import EXPORT_FORMATS
from cifarbench.manifest import Manifest


def _formats(ctx: click.Context, param: click.Parameter, value: str) -> list[str]:
    items = [v.strip() for v in value.split(",") if v.strip()]
    if value.strip() == "all":
        return list(EXPORT_FORMATS)
    bad = [v for v in items if v not in EXPORT_FORMATS]
    if bad or not items:
        raise click.BadParameter(f"unknown format(s) {', '.join(bad) or '(none)'}; choose from all, {', '.join(EXPORT_FORMATS)}")
    return items


def _size(ctx: click.Context, param: click.Parameter, value: str | None) -> tuple[int, int] | None:
    if value is None:
        return None
    try:
        h, w = (int(v) for v in value.replace("x", ",").split(","))
    except ValueError:
        raise click.BadParameter("use H,W, e.g. 64,64") from None
    return h, w


@click.command("convert")
@click.argument("model", type=click.Path(exists=True))
@click.option("--out", type=click.Path(file_okay=False), help="Output directory (default: beside the model).")
@click.option("--formats", default="all", show_default=True, callback=_formats,
              help=f"Comma-separated: {', '.join(EXPORT_FORMATS)}.")
@click.option("--calibration-data", help="Train-split source for int8 calibration and parity (default: the model's training data).")
@click.option("--calibration-size", type=click.IntRange(1), default=1000, show_default=True)
@click.option("--parity-size", type=click.IntRange(1), default=2000, show_default=True, help="Images for the parity check.")
@click.option("--opset", type=click.IntRange(13, 21), default=17, show_default=True, help="ONNX opset.")
@click.option("--preprocess", help="Preprocessing a foreign model expects, baked into the graphs: none, scale:1/255, "
              "mean-std:R,G,B/R,G,B, or steps joined by +.")
@click.option("--classes", "classes_file", type=click.Path(exists=True, dir_okay=False), help="Class names, one per line or a JSON list.")
@click.option("--input-size", callback=_size, help="H,W of a model whose input is not 32x32: pixels are resized inside the graph.")
@click.option("--unsafe", is_flag=True, help="Allow Lambda/custom layers (runs code from the model file).")
@click.option("--quiet", "-q", is_flag=True)
def command(model: str, out: str | None, formats: list[str], calibration_data: str | None, calibration_size: int,
            parity_size: int, opset: int, preprocess: str | None, classes_file: str | None,
            input_size: tuple[int, int] | None, unsafe: bool, quiet: bool) -> None:
    """Convert MODEL (.keras, .h5, SavedModel dir, or a trained model dir) to TFLite and ONNX.

    Every artifact takes raw RGB uint8 pixels. Float32 artifacts must match Keras (top-1 agreement
    >= 99.9 %, max |dp| <= 1e-3; float16 weights >= 99.5 %, <= 1e-2) or the command exits 6.
    int8 accuracy drops above 0.3 pp are flagged, above 1 pp warned.
    """
    from cifarbench.convert import convert

    def step(msg: str) -> None:
        if not quiet:
            click.echo(f"convert: {msg}", err=True)

    manifest = convert(model, out, formats=formats, calibration_data=calibration_data,
                       calibration_size=calibration_size, parity_size=parity_size, opset=opset,
                       preprocess=preprocess, classes_file=classes_file, unsafe=unsafe, input_size=input_size,
                       on_step=step)
    _print_table(manifest, quiet)


def _print_table(manifest: "Manifest", quiet: bool) -> None:
    from rich.table import Table

    from cifarbench.cli.ui import stdout_console

    t = Table(title=f"{manifest.name}: parity on {manifest.metrics['parity']['images']} held-out train images")
    for col in ("artifact", "file", "MB", "top-1 agree", "max |dp|", "accuracy", "acc drop pp", "status"):
        t.add_column(col, justify="right" if col not in ("artifact", "file", "status") else "left")
    for fmt, art in manifest.artifacts.items():
        p = art.parity
        if not p:
            continue
        t.add_row(fmt, art.file, f"{art.size / 1e6:.2f}", f"{p['top1_agreement'] * 100:.2f}%", f"{p['max_abs_dprob']:.1e}",
                  f"{p['accuracy'] * 100:.2f}%", f"{p.get('accuracy_drop_pp', 0):+.2f}" if "accuracy_drop_pp" in p else "",
                  p.get("status", "reference"))
    if not quiet:
        stdout_console().print(t)
    for fmt, art in manifest.artifacts.items():
        if str(art.parity.get("status", "")).lower().startswith("warn"):
            click.echo(f"warning: {fmt} loses {art.parity['accuracy_drop_pp']:.2f} pp accuracy vs Keras", err=True)
