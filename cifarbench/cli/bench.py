"""`cifarbench bench`: one table that answers "which artifact should I deploy on this machine?"."""

from __future__ import annotations

import shlex
import sys
import time
from pathlib import Path
from typing import Any

import click
from click.core import ParameterSource

from cifarbench.backends import DEVICES
from cifarbench.backends.options import ORT_OPT_LEVELS, OV_HINTS, RuntimeOptions
from cifarbench.backends.tta import TTA_MODES
from cifarbench.bench.compare import FORMATS as COMPARE_FORMATS
from cifarbench.bench.scenarios import SCENARIOS
from cifarbench.cli.choices import BackendChoice
from cifarbench.cli.transform_options import transform_options
from cifarbench.data.images import DEFAULT_MAX_PIXELS
from cifarbench.errors import BackendUnavailable, ExitStatus

STDOUT_FORMATS = ("table", "json", "csv", "md")


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


def _threads(ctx: click.Context, param: click.Parameter, value: str | None) -> tuple[int, ...] | None:
    if value is None:
        return None
    try:
        counts = tuple(dict.fromkeys(int(v) for v in value.split(",") if v.strip()))
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a comma-separated list of integers, e.g. 1,2") from None
    if not counts or min(counts) < 1:
        raise click.BadParameter("thread counts must be positive integers, e.g. 1,2")
    return counts


@click.group("bench", invoke_without_command=True)
@click.option("--model", "-m", "models", multiple=True, metavar="NAME|DIR",
              help="Model to bench (repeatable): shipped name, directory with manifest.json, or artifact file. "
                   "Default: every shipped model.")
@click.option("--all", "all_backends", is_flag=True,
              help="Every backend (the default when no --backend is given); unavailable ones are listed as skipped.")
@click.option("--backend", "-b", "backend_names", multiple=True, type=BackendChoice(),
              help="Backend to bench (repeatable); auto: the one classify and serve pick here (measured, cached).")
@click.option("--data", default="bundled", show_default=True,
              help="Labelled data source: bundled (10,000-image test split), cifar10, an image-folder tree <root>/<class>/* "
                   "(folders matched to the model's classes; a test/ split if it has one) or an archive.")
@click.option("--limit", type=click.IntRange(1), help="Use a seeded random subset of N images.")
@click.option("--synthetic", is_flag=True,
              help="Random pixels at each model's input size, no labels (like benchmark_app without -i): speed, "
                   "latency and memory; accuracy is not measured.")
@click.option("--batch-sizes", default="1,32,256", show_default=True, callback=_batch_sizes,
              help="Comma-separated batch sizes for throughput; the largest also runs the accuracy pass (capped at "
                   "64x64 pixels' worth of 256 images: 20 at 224x224) and bounds the server scenario's dynamic batches.")
@click.option("--threads", callback=_threads, metavar="N[,N...]",
              help="Intra-op threads per backend; a list (1,2) measures one row per count (default: each runtime's own).")
@click.option("--device", type=click.Choice(DEVICES), default="cpu", show_default=True,
              help="gpu: CUDA for onnx/keras rows, OpenVINO's GPU plugin (Intel GPUs) for openvino rows; backends "
                   "that cannot use it are listed as skipped. auto: each row on a GPU when its backend can use one "
                   "here, else the CPU (as classify and serve).")
@click.option("--scenario", "scenarios", multiple=True, type=click.Choice(SCENARIOS),
              help="single-stream (batch-1 latency), offline (throughput per batch size), server (Poisson arrivals); "
                   "repeatable [default: single-stream and offline].")
@click.option("--repeat", type=click.IntRange(1), default=1, show_default=True,
              help="Measure each row N times: median and min-max, and a warning where the spread hides a difference.")
@click.option("--isolate/--no-isolate", default=True, show_default=True,
              help="Measure each row in a fresh process, so its load time and peak RSS are its own.")
@click.option("--server-rate", type=click.FloatRange(min=0, min_open=True), metavar="QPS",
              help="Server scenario: also run at this Poisson arrival rate and report achieved rate and p50/p90/p99.")
@click.option("--p99-bound-ms", type=click.FloatRange(min=0, min_open=True), default=10.0, show_default=True,
              help="Server scenario: search the highest arrival rate whose p99 latency stays within this bound.")
@click.option("--server-time", type=click.FloatRange(min=0, min_open=True), default=2.0, show_default=True,
              help="Server scenario: seconds of arrivals per tried rate.")
@click.option("--warmup", type=click.IntRange(0), default=10, show_default=True,
              help="Untimed batch-1 calls before latency is measured.")
@click.option("--min-time", type=click.FloatRange(0), default=2.0, show_default=True,
              help="Seconds of timed calls at least, for latency and for each throughput batch size.")
@click.option("--min-iters", type=click.IntRange(1), default=200, show_default=True,
              help="Batch-1 latency calls at least (p99 needs >= 100).")
@click.option("--output-dir", "-o", type=click.Path(file_okay=False, path_type=Path),
              help="Where results.json, results.csv, report.md and plots go [default: bench-results/<timestamp>].")
@click.option("--format", "fmt", type=click.Choice(STDOUT_FORMATS),
              help="What goes to stdout [default: table; nothing with --quiet]; the files in --output-dir are always "
                   "written.")
@click.option("--max-pixels", type=click.IntRange(min=1), default=DEFAULT_MAX_PIXELS, show_default=True,
              help="Refuse data images with more pixels, from their header before decoding; same default as classify/serve.")
@transform_options
@click.option("--tta", type=click.Choice(TTA_MODES), default="none", show_default=True,
              help="Also measure test-time augmentation (flip: image + mirror; flip-translate: 6 views): its accuracy "
                   "beside single view, and its cost in time.")
@click.option("--ov-hint", type=click.Choice(OV_HINTS),
              help="OpenVINO rows: one performance hint for every batch size, as benchmark_app's -hint [default: "
                   "latency at batch 1, throughput above].")
@click.option("--ov-streams", type=click.IntRange(1), metavar="N",
              help="OpenVINO rows: NUM_STREAMS for batches above 1 (benchmark_app's -nstreams) [default: the hint's].")
@click.option("--ort-opt-level", type=click.Choice(ORT_OPT_LEVELS),
              help="onnx rows: onnxruntime graph optimization level [default: all].")
@click.option("--ort-provider", "ort_providers", multiple=True, metavar="NAME",
              help="onnx rows: an installed onnxruntime execution provider to try before the CPU one, e.g. "
                   "OpenVINOExecutionProvider or DnnlExecutionProvider (repeatable; `cifarbench info` lists them).")
@click.option("--xnnpack/--no-xnnpack", default=None,
              help="tflite rows: LiteRT's XNNPACK delegate on or off [default: on].")
@click.option("--profile", is_flag=True,
              help="Also write each row's per-op profile (onnxruntime profiler JSON, OpenVINO performance counters) "
                   "to OUTPUT_DIR/profiles, in an untimed pass, and its top-10 ops to report.md.")
@click.option("--quiet", "-q", is_flag=True, help="Print nothing on success (results still go to --output-dir).")
@click.pass_context
def command(ctx: click.Context, models: tuple[str, ...], all_backends: bool, backend_names: tuple[str, ...], data: str,
            limit: int | None, synthetic: bool, batch_sizes: tuple[int, ...], threads: tuple[int, ...] | None, device: str,
            scenarios: tuple[str, ...], repeat: int, isolate: bool, server_rate: float | None, p99_bound_ms: float,
            server_time: float, warmup: int, min_time: float, min_iters: int, output_dir: Path | None,
            fmt: str | None, max_pixels: int, resize: str | None, crop_pct: float | None, interpolation: str | None,
            tta: str, ov_hint: str | None, ov_streams: int | None, ort_opt_level: str | None,
            ort_providers: tuple[str, ...], xnnpack: bool | None, profile: bool, quiet: bool) -> None:
    """Accuracy, F1, agreement, latency and throughput for every model x backend.

    Throughput is images / wall time of the backend calls alone (decode timed apart).
    Exit 3 when a row failed, 7 when no row could run.
    `cifarbench bench compare OLD NEW` compares two runs' results.json.
    """
    if ctx.invoked_subcommand is not None:
        given = [p for p in ctx.command.params if ctx.get_parameter_source(p.name) == ParameterSource.COMMANDLINE]
        if given:  # `bench -q compare A B` would otherwise drop -q without a word
            flags = " ".join(p.opts[0] for p in given)
            sub = ctx.invoked_subcommand
            raise click.UsageError(f"bench option(s) {flags} given before `{sub}` do not apply to `bench {sub}`; "
                                   f"put {sub}'s own options after it (see bench {sub} --help)")
        return
    from cifarbench.bench import runner as bench
    from cifarbench.bench import report
    from cifarbench.cli.ui import EventPrinter, progress_bar, stderr_console

    if all_backends and backend_names:
        raise click.UsageError("--all and --backend exclude each other")
    out = output_dir or _default_output_dir()
    tuning = RuntimeOptions(ov_hint=ov_hint, ov_streams=ov_streams, ort_opt_level=ort_opt_level,
                            ort_providers=ort_providers, xnnpack=xnnpack)
    if synthetic:
        given = [o for o, v in (("--data", ctx.get_parameter_source("data") == click.core.ParameterSource.COMMANDLINE),
                                ("--limit", limit is not None), ("--tta", tta != "none")) if v]
        if given:
            raise click.UsageError(f"--synthetic measures random pixels without labels; it excludes {', '.join(given)}")
    config = bench.BenchConfig(
        models=models, backends=list(backend_names) or None, data=data, limit=limit, batch_sizes=batch_sizes,
        threads=list(threads) if threads else None, device=device, warmup=warmup, min_time=min_time,
        min_iters=min_iters, command=shlex.join(["cifarbench"] + sys.argv[1:]),
        scenarios=tuple(scenarios) or ("single-stream", "offline"), repeat=repeat, isolate=isolate,
        server_rate=server_rate, p99_bound_ms=p99_bound_ms, server_time=server_time, tta=tta, max_pixels=max_pixels,
        resize=resize, crop_pct=crop_pct, interpolation=interpolation,
        runtime=tuning, profile_dir=str((out / "profiles").resolve()) if profile else None,
        synthetic=synthetic)
    plan = bench.resolve_plan(config)
    err = stderr_console()
    for model, sel in plan.chosen.items():
        if not quiet:
            err.print(f"{model}: auto = {sel.note or sel.name}", markup=False, soft_wrap=True)
    with progress_bar(len(plan.jobs), "bench", quiet=quiet) as bar:
        doc = bench.run_bench(config, EventPrinter("bench", quiet, bar), plan)
    statuses = {r["status"] for r in doc["results"]}
    if "ok" not in statuses:  # nothing measured: no table of blanks, no files of blanks; the reasons, even with -q
        for r in doc["results"] if quiet else []:  # (without -q each row's line is already above)
            err.print(f"{r['model']}/{report.label(r)} {r['status']}: {r['reason']}", markup=False, soft_wrap=True)
        raise BackendUnavailable("no model x backend could run here (reasons above); no result files written")
    files, notes = report.write_outputs(doc, out)
    if not quiet:
        for w in report.all_warnings(doc):
            err.print(f"warning: {w}", markup=False, soft_wrap=True)
        for r in doc["results"]:  # int8 losses and convert's parity warnings, whatever --format prints
            for flag in r["flags"] if r["status"] == "ok" else []:
                err.print(f"warning: {r['model']}/{report.label(r)}: {flag}", markup=False, soft_wrap=True)
        for n in notes:
            err.print(f"note: {n}", markup=False, soft_wrap=True)
        err.print(f"wrote {len(files)} files to {out}", markup=False, soft_wrap=True)
    if fmt == "json":
        click.echo(report.to_json(doc), nl=False)
    elif fmt == "csv":
        click.echo(report.to_csv(doc), nl=False)
    elif fmt == "md":
        click.echo(report.to_markdown(doc, [f.name for f in files if f.suffix == ".png"], notes), nl=False)
    elif fmt == "table" or not quiet:
        _print_table(doc)
    if "failed" in statuses:
        sys.exit(int(ExitStatus.PARTIAL))


@command.command("compare")
@click.argument("old", type=click.Path(dir_okay=True, path_type=Path))
@click.argument("new", type=click.Path(dir_okay=True, path_type=Path))
@click.option("--format", "fmt", type=click.Choice(COMPARE_FORMATS), default="table", show_default=True,
              help="table (plain text), md (Markdown, for a pull-request comment) or json (the comparison document).")
@click.option("--markdown", is_flag=True, help="Same as --format md (kept for existing CI scripts).")
@click.option("--strict", is_flag=True,
              help="A row that was ok in OLD and is absent from NEW is a regression (default: reported as absent).")
@click.option("--tolerance", type=click.FloatRange(0, 100), default=5.0, show_default=True,
              help="Smallest speed change in percent that counts, when the runs' own spread is narrower.")
@click.option("--latency-floor-ms", type=click.FloatRange(0), default=0.1, show_default=True,
              help="Smallest p50 change in milliseconds that counts (sub-0.1 ms calls jitter by that much).")
@click.option("--quiet", "-q", is_flag=True, help="Print nothing; the exit code says it.")
def compare_command(old: Path, new: Path, fmt: str, markdown: bool, strict: bool, tolerance: float,
                    latency_floor_ms: float, quiet: bool) -> None:
    """Per-row deltas of two bench runs (results.json or their folders); exit 0 same, 3 regression.

    A change of img/s or p50 counts only when it exceeds both --tolerance and the sum of the
    runs' min-max spreads across --repeat, a p50 change only beyond --latency-floor-ms (p99 is
    shown, not judged); accuracy beyond 0.1 pp. A row in only one run is "absent" (--strict: a regression
    when it was ok in OLD).
    """
    from cifarbench.bench import compare

    if markdown and click.get_current_context().get_parameter_source("fmt") == ParameterSource.COMMANDLINE \
            and fmt != "md":
        raise click.UsageError(f"--markdown and --format {fmt} exclude each other")
    result = compare.compare_files(old, new, tolerance / 100, latency_floor_ms, strict)
    if not quiet:
        click.echo(compare.render(result, "md" if markdown else fmt), nl=False)
    if result["verdict"] == "regression":
        sys.exit(int(ExitStatus.PARTIAL))


def _print_table(doc: dict[str, Any]) -> None:
    from rich.table import Table

    from cifarbench.cli.ui import stdout_console
    from cifarbench.bench.derive import REFERENCE_TEXT
    from cifarbench.bench.report import accuracy_text, batch_sizes, label, summary_rows

    sizes = batch_sizes(doc) or sorted(doc["config"]["batch_sizes"])
    big = sizes[-1]
    rows = summary_rows(doc)
    top5 = any(r.get("top5_accuracy") is not None for r in rows)
    t = Table(title=f"cifarbench bench: {doc['data']['source']}, {doc['data']['subset'] or str(doc['data']['images']) + ' images'}")
    for name in ("model", "backend", "accuracy", *(["top-5"] if top5 else []), "macro F1", "p50 ms", "p99 ms",
                 f"img/s @{big}", "speed-up", "size MB", "RSS MB"):
        t.add_column(name, justify="left" if name in ("model", "backend") else "right")
    f = lambda v, spec: "–" if v is None else format(v, spec)  # noqa: E731
    skipped = []
    for r in rows:
        if r["status"] != "ok":
            t.add_row(r["model"], label(r), f"[yellow]{r['status']}[/yellow]", *[""] * (8 + top5))
            skipped.append(r)
            continue
        ref = r["reference"] == r["backend"]
        t.add_row(r["model"], label(r), accuracy_text(r) + (" [red]![/red]" if r["flags"] else ""),
                  *([f(r["top5_accuracy"], ".4f")] if top5 else []), f(r["macro_f1"], ".4f"), f(r["p50_ms"], ".3f"),
                  f(r["p99_ms"], ".3f"), f(r.get(f"img_per_s_b{big}"), ",.0f"),
                  "ref" if ref else (f(r["speedup"], ".2f") + "×" if r["speedup"] else "–"), f(r["size_mb"], ".2f"),
                  f(r["peak_rss_mb"], ",.0f"))
    con = stdout_console()
    if not con.is_terminal:  # a pipe or file: no 80-column truncation of the data
        con.width = 200
    con.print(t)
    for r in skipped:
        con.print(f"{r['model']}/{r['backend']} {r['status']}: {r['reason']}", markup=False)
    for r in summary_rows(doc):
        if r["status"] == "ok" and r["flags"]:
            con.print(f"! {r['model']}/{label(r)}: {r['flags']}", markup=False)
    for r in summary_rows(doc):
        if r["status"] == "ok" and r.get("runtime_note"):
            con.print(f"{r['model']}/{r['backend']}: {r['runtime_note']}", markup=False)
    con.print(f"img/s = images ÷ wall time of the backend calls only, at batch {big}; speed-up vs the reference backend "
              f"({REFERENCE_TEXT}).", markup=False)
