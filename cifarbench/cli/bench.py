"""`cifarbench bench`: one table that answers "which artifact should I deploy on this machine?"."""

from __future__ import annotations

import shlex
import sys
import time
from pathlib import Path
from typing import Any

import click

from cifarbench.backends import BACKENDS
from cifarbench.errors import BackendUnavailable, ExitStatus

FORMATS = ("table", "json", "csv", "md")


def _batch_sizes(ctx: click.Context, param: click.Parameter, value: str) -> tuple[int, ...]:
    try:
        sizes = tuple(sorted({int(v) for v in value.split(",") if v.strip()}))
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a comma-separated list of integers, e.g. 1,32,256") from None
    if not sizes or sizes[0] < 1:
        raise click.BadParameter("batch sizes must be positive integers, e.g. 1,32,256")
    return sizes


def _default_output_dir() -> Path:
    base = Path("bench-results") / time.strftime("%Y%m%d-%H%M%S")
    out, i = base, 1
    while out.exists():  # never overwrite an earlier run's results
        out, i = base.with_name(f"{base.name}-{i}"), i + 1
    return out


@click.command("bench")
@click.option("--model", "models", multiple=True, metavar="NAME|DIR",
              help="Model to bench (repeatable): shipped name, directory with manifest.json, or artifact file. "
                   "Default: every shipped model.")
@click.option("--all", "all_backends", is_flag=True,
              help="Every backend (the default when no --backend is given); unavailable ones are listed as skipped.")
@click.option("--backend", "backend_names", multiple=True, type=click.Choice(list(BACKENDS)),
              help="Backend to bench (repeatable).")
@click.option("--data", default="bundled", show_default=True,
              help="Labelled data source: bundled (10,000-image test split), cifar10, a folder tree or an archive.")
@click.option("--limit", type=click.IntRange(1), help="Use a seeded random subset of N images.")
@click.option("--batch-sizes", default="1,32,256", show_default=True, callback=_batch_sizes,
              help="Comma-separated batch sizes for throughput; the largest also runs the accuracy pass.")
@click.option("--threads", type=click.IntRange(1), help="Intra-op threads per backend (default: each runtime's own).")
@click.option("--device", type=click.Choice(["cpu", "gpu"]), default="cpu", show_default=True,
              help="gpu: CUDA for onnx/keras rows; backends that cannot use it are listed as skipped.")
@click.option("--warmup", type=click.IntRange(0), default=10, show_default=True,
              help="Untimed batch-1 calls before latency is measured.")
@click.option("--min-time", type=click.FloatRange(0), default=2.0, show_default=True,
              help="Seconds of timed calls at least, for latency and for each throughput batch size.")
@click.option("--min-iters", type=click.IntRange(1), default=200, show_default=True,
              help="Batch-1 latency calls at least (p99 needs >= 100).")
@click.option("--output-dir", type=click.Path(file_okay=False, path_type=Path),
              help="Where results.json, results.csv, report.md and plots go [default: bench-results/<timestamp>].")
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="table", show_default=True,
              help="What goes to stdout; the files in --output-dir are always written.")
def command(models: tuple[str, ...], all_backends: bool, backend_names: tuple[str, ...], data: str, limit: int | None,
            batch_sizes: tuple[int, ...], threads: int | None, device: str, warmup: int, min_time: float,
            min_iters: int, output_dir: Path | None, fmt: str) -> None:
    """Accuracy, F1, agreement, latency and throughput for every model x backend.

    Throughput is images / wall time of the backend calls alone (decode timed apart).
    Exit 3 when a row failed, 7 when no row could run.
    """
    from cifarbench import bench, report
    from cifarbench.cli.ui import progress_bar, stderr_console

    if all_backends and backend_names:
        raise click.UsageError("--all and --backend exclude each other")
    config = bench.BenchConfig(
        models=models, backends=list(backend_names) or None, data=data, limit=limit, batch_sizes=batch_sizes,
        threads=threads, device=device, warmup=warmup, min_time=min_time, min_iters=min_iters,
        command=shlex.join(["cifarbench"] + sys.argv[1:]))
    manifests, order = bench.resolve_plan(config)
    err = stderr_console()
    with progress_bar(len(manifests) * len(order), "bench") as bar:
        printer = getattr(getattr(bar, "progress", None), "console", err)

        def on_progress(message: str, done: bool) -> None:
            bar.update(description=message)
            if done:
                printer.print(message, markup=False, highlight=False, soft_wrap=True)
                bar.advance()

        doc = bench.run_bench(config, on_progress)
    out = output_dir or _default_output_dir()
    files, notes = report.write_outputs(doc, out)
    for w in report.all_warnings(doc):
        err.print(f"warning: {w}", markup=False, soft_wrap=True)
    for n in notes:
        err.print(f"note: {n}", markup=False, soft_wrap=True)
    err.print(f"wrote {len(files)} files to {out}", markup=False, soft_wrap=True)
    if fmt == "json":
        click.echo(report.to_json(doc), nl=False)
    elif fmt == "csv":
        click.echo(report.to_csv(doc), nl=False)
    elif fmt == "md":
        click.echo(report.to_markdown(doc, [f.name for f in files if f.suffix == ".png"], notes), nl=False)
    else:
        _print_table(doc)
    statuses = {r["status"] for r in doc["results"]}
    if "ok" not in statuses:
        raise BackendUnavailable("no model x backend could run here; see the skipped reasons above")
    if "failed" in statuses:
        sys.exit(int(ExitStatus.PARTIAL))


def _print_table(doc: dict[str, Any]) -> None:
    from rich.table import Table

    from cifarbench.cli.ui import stdout_console
    from cifarbench.report import batch_sizes, summary_rows

    sizes = batch_sizes(doc)
    big = sizes[-1] if sizes else "-"
    t = Table(title=f"cifarbench bench: {doc['data']['source']}, {doc['data']['subset'] or str(doc['data']['images']) + ' images'}")
    for name in ("model", "backend", "accuracy", "macro F1", "p50 ms", "p99 ms", f"img/s @{big}", "speed-up", "size MB"):
        t.add_column(name, justify="left" if name in ("model", "backend") else "right")
    f = lambda v, spec: "–" if v is None else format(v, spec)  # noqa: E731
    skipped = []
    for r in summary_rows(doc):
        if r["status"] != "ok":
            t.add_row(r["model"], r["backend"], f"[yellow]{r['status']}[/yellow]", *[""] * 6)
            skipped.append(r)
            continue
        ref = r["reference"] == r["backend"]
        t.add_row(r["model"], r["backend"], f(r["accuracy"], ".4f"), f(r["macro_f1"], ".4f"), f(r["p50_ms"], ".3f"),
                  f(r["p99_ms"], ".3f"), f(r.get(f"img_per_s_b{big}"), ",.0f"),
                  "ref" if ref else (f(r["speedup"], ".2f") + "×" if r["speedup"] else "–"), f(r["size_mb"], ".2f"))
    con = stdout_console()
    if not con.is_terminal:  # a pipe or file: no 80-column truncation of the data
        con.width = 200
    con.print(t)
    for r in skipped:
        con.print(f"{r['model']}/{r['backend']} {r['status']}: {r['reason']}", markup=False)
    for r in summary_rows(doc):
        if r["status"] == "ok" and r.get("runtime_note"):
            con.print(f"{r['model']}/{r['backend']}: {r['runtime_note']}", markup=False)
    con.print(f"img/s = images ÷ wall time of the backend calls only, at batch {big}; speed-up vs the reference backend "
              "(keras if measured, else onnx).", markup=False)
