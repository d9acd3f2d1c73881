"""`cifarbench convert`: options -> ConvertOptions, progress and warnings to stderr, the parity table to stdout."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from cifarbench.conversion.exporters import EXPORTERS
from cifarbench.data.transform import INTERPOLATIONS, RESIZE_POLICIES
from cifarbench.models.manifest import Manifest

FORMAT_NAMES = tuple(EXPORTERS)


def _formats(ctx: click.Context, param: click.Parameter, value: str) -> tuple[str, ...] | None:
    if value.strip() == "all":
        return None
    items = [v.strip() for v in value.split(",") if v.strip()]
    bad = [v for v in items if v not in FORMAT_NAMES]
    if bad or not items:
        raise click.BadParameter(f"unknown format(s) {', '.join(bad) or '(none)'}; choose from all, {', '.join(FORMAT_NAMES)}")
    return tuple(items)


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
              help=f"Comma-separated: {', '.join(FORMAT_NAMES)} (an ONNX model: onnx, onnx-int8).")
@click.option("--calibration-data", help="Train-split source for int8 calibration and parity (default: the model's "
              "training data; not needed without int8 formats: parity then uses --test-data's test split).")
@click.option("--test-data", default="bundled", show_default=True,
              help="Test-split source scoring a model cifarbench did not train (its train split may be in the parity images).")
@click.option("--calibration-size", type=click.IntRange(1), default=1000, show_default=True,
              help="Train-split images that calibrate the int8 formats' activation ranges.")
@click.option("--parity-size", type=click.IntRange(1), default=2000, show_default=True, help="Images for the parity check.")
@click.option("--opset", type=click.IntRange(13, 21), default=17, show_default=True, help="ONNX opset (Keras models).")
@click.option("--preprocess", help="Preprocessing a foreign model expects, baked into the graphs: a preset (torch: 0-1 then "
              "ImageNet mean/std; tf: [-1,1]; caffe: BGR minus the ImageNet mean; none) or steps: scale:1/255, "
              "mean-std:R,G,B/R,G,B, bgr, joined by +.")
@click.option("--layout", type=click.Choice(["nchw", "nhwc"]), help="Input layout of an ONNX model (default: from its shape).")
@click.option("--classes", "classes_file", type=click.Path(exists=True, dir_okay=False),
              help="Class names: one per line, a JSON list, or a JSON object (index -> name). Default: the prior "
                   "manifest's; else class_0..class_N-1 (CIFAR-10's names for 10 outputs, with a warning).")
@click.option("--input-size", callback=_size, help="H,W for a model whose spatial input size is dynamic (a fixed size "
              "is read from the model; every artifact takes pixels at the model's own size).")
@click.option("--resize", type=click.Choice(RESIZE_POLICIES), help="How photos become the model's H x W (stored in the "
              "manifest, used by classify, bench and serve): center-crop (default), squash, pad.")
@click.option("--crop-pct", type=float, help="timm's crop_pct: resize to floor(size / crop_pct), then centre-crop (e.g. 0.875).")
@click.option("--interpolation", type=click.Choice(INTERPOLATIONS), help="Resampling filter (default lanczos).")
@click.option("--unsafe", is_flag=True, help="Allow Lambda/custom layers (runs code from the model file).")
@click.option("--verbose", is_flag=True, help="Show TensorFlow/absl/CUDA/converter logging (hidden by default).")
@click.option("--quiet", "-q", is_flag=True, help="No progress and no parity table; warnings and errors still go to stderr.")
def command(model: str, out: str | None, quiet: bool, verbose: bool, **options: Any) -> None:
    """Convert MODEL (.keras, .h5, SavedModel dir, .onnx, or a converted model dir) to TFLite and ONNX.

    Every artifact takes raw RGB uint8 pixels. float32 artifacts must match the reference (top-1
    agreement >= 99.9 %, max |dp| <= 1e-3) and float16 ones must keep agreement >= 99 % and accuracy
    within 0.5 pp (counted in images, one image always allowed), or the command exits 6; float16
    rounding above 1e-2 and int8 accuracy losses above 1 pp are warnings, int8 losses above 0.3 pp
    are flagged.
    """
    from cifarbench.cli.ui import EventPrinter
    from cifarbench.conversion.convert import ConvertOptions, ParityFailed, convert
    from cifarbench.models.tfquiet import framework_logs

    opts = ConvertOptions(**options)

    with framework_logs(verbose):
        try:
            manifest = convert(model, out, opts, events=EventPrinter("convert", quiet))
        except ParityFailed as exc:
            _report(exc.manifest, quiet=False)  # the numbers behind the failure, always
            raise
    _report(manifest, quiet)


def _report(manifest: Manifest, quiet: bool) -> None:
    """The parity table on stdout (unless quiet), then one warning line per artifact that needs a look."""
    if not quiet:
        from cifarbench.cli.ui import stdout_console

        stdout_console().print(parity_table(manifest))
    for line in manifest.metrics.get("input_check", {}).get("warnings", []):
        click.echo(f"warning: {line}", err=True)
    for fmt, art in manifest.artifacts.items():
        if art.parity.get("warning"):
            click.echo(f"warning: {fmt}: {art.parity['warning']}", err=True)


def parity_table(manifest: Manifest) -> Any:
    from rich.table import Table

    par = manifest.metrics.get("parity", {})
    test = par.get("test_split", {})
    has_test = "images" in test
    # Only cifarbench's own models are known not to have trained on the parity images.
    seen = "held-out train images" if par.get("held_out", not has_test) else "train-split images (possibly seen in training)"
    on_test = par.get("split") == "test"  # no int8 format asked and no calibration data: parity on test images
    seen = "test-split images" if on_test else seen
    t = Table(title=f"{manifest.name}: parity on {par.get('images', 0)} {seen}"
                    + (f"; accuracy also on {test['images']} test-split images" if has_test else "")
                    # a foreign model whose test split was skipped: say why, or the column just vanishes
                    + (f"; test-split accuracy {test['note']} (--test-data DIR)"
                       if not has_test and str(test.get("note", "")).startswith("not measured") else ""))
    cols = ["artifact", "file", "MB", "top-1 agree", "max |dp|", "accuracy (test split)" if on_test else "accuracy (train val)"]
    cols += ["accuracy (test split)"] if has_test else []
    for col in cols + ["acc drop pp", "status"]:
        t.add_column(col, justify="left" if col in ("artifact", "file", "status") else "right")
    if not any(a.parity and "status" not in a.parity for a in manifest.artifacts.values()) and "reference_accuracy" in par:
        # No Keras artifact (an ONNX source): the original model is the reference; show its accuracy too.
        source = Path(str(manifest.training.get("source_file", "original model"))).name
        row = ["source", source, "", "100.00%", "0.0e+00", f"{par['reference_accuracy'] * 100:.2f}%"]
        row += [f"{test['reference_accuracy'] * 100:.2f}%"] if has_test else []
        t.add_row(*row, "", "reference")
    for fmt, art in manifest.artifacts.items():
        p = art.parity
        if not p:
            continue
        row = [fmt, art.file, f"{art.size / 1e6:.2f}", f"{p['top1_agreement'] * 100:.2f}%", f"{p['max_abs_dprob']:.1e}",
               f"{p['accuracy'] * 100:.2f}%"]
        if has_test:
            row.append(f"{p['test_accuracy'] * 100:.2f}%" if "test_accuracy" in p else "")
        status = p.get("status", "reference")
        style = {"FAIL": "bold red", "warn": "bold yellow", "flagged": "yellow"}.get(status)
        row += [f"{p['accuracy_drop_pp']:+.2f}" if "accuracy_drop_pp" in p else "",
                f"[{style}]{status.upper() if status == 'warn' else status}[/]" if style else status]
        t.add_row(*row)
    return t
