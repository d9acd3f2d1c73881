"""`cifarbench classify`."""

from __future__ import annotations

import contextlib
import io
import os
import signal
import sys
import threading
from typing import Iterator

import click

from cifarbench.backends.tta import TTA_MODES
from cifarbench.cli.choices import BackendChoice
from cifarbench.cli.transform_options import transform_options
from cifarbench.data.images import DEFAULT_MAX_PIXELS
from cifarbench.engines import ENGINES
from cifarbench.errors import ExitStatus

EPILOG = f"""\b
Output: one row per file, in input order. CSV (RFC 4180, UTF-8) columns:
  path,label,class_index,confidence[,label_2,confidence_2 ... label_K,confidence_K],error
JSONL: the same keys, one object per line. A file that cannot be classified gets
empty prediction fields (null in JSONL) and its reason in `error`; so does a PATH
that is missing, unreadable or a broken link. Bytes of a file name that are not
UTF-8 are written as \\xNN and a backslash as \\\\, so distinct names stay distinct.

\b
Exit codes:
  {int(ExitStatus.OK):>3}  every file classified
  {int(ExitStatus.ERROR):>3}  output not writable, or an unexpected error (cifarbench --traceback classify ...)
  {int(ExitStatus.USAGE):>3}  usage error (bad option or PATH)
  {int(ExitStatus.PARTIAL):>3}  some files failed (their rows were still written; 0 with --allow-errors)
  {int(ExitStatus.DATA):>3}  model file missing, corrupt or not a model
  {int(ExitStatus.LOCKED):>3}  another run is writing the same --output (lock held)
  {int(ExitStatus.UNAVAILABLE):>3}  backend, device or runtime not available here
  {int(ExitStatus.INTERRUPTED):>3}  interrupted (Ctrl-C or SIGTERM); a previous --output file is left intact

\b
Cron (no flock needed: the run locks <output>.lock itself):
  */15 * * * *  cifarbench classify /srv/photos --output /srv/labels.csv --resume --quiet
With --quiet, a run whose files all classified prints nothing; one with failures prints one line
naming the first three failed files and exits 3, every run, since failed files are retried. Once
those files are known bad, --allow-errors keeps their error rows, prints nothing and exits 0.
"""


@click.command("classify", epilog=EPILOG)
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=str, readable=False))
@click.option("--model", "-m", help="Shipped model name, a directory with manifest.json, or one artifact file "
              "(default: the shipped flagship).")
@click.option("--backend", "-b", type=BackendChoice(),
              help="Runtime (default auto: the fastest int8 one, measured on this machine once and cached).")
@click.option("--device", type=click.Choice(("cpu", "gpu", "auto")), default="cpu", show_default=True,
              help="gpu: onnxruntime CUDA, TensorFlow GPU or OpenVINO's GPU plugin (Intel GPUs); fails clearly when "
                   "absent. TFLite is CPU only.")
@click.option("--threads", type=click.IntRange(1), help="Runtime threads (default: all usable cores).")
@click.option("--batch-size", type=click.IntRange(1),
              help="Images per model call (default: 256 for inputs up to 64x64 pixels, fewer above so a call holds "
                   "as many pixels: 20 at 224x224).")
@click.option("--workers", type=click.IntRange(0), help="Decode workers: processes for big runs, threads for small ones (default: all usable cores; "
              "0 decodes inline).")
@click.option("--top-k", type=click.IntRange(1), default=1, show_default=True, help="Labels per row.")
@click.option("--output", "-o", default="-", show_default=True,
              help="Output file, written atomically (a killed run leaves the old file intact); - streams to stdout.")
@click.option("--format", "fmt", type=click.Choice(("csv", "jsonl")),
              help="Default: jsonl for a .jsonl/.ndjson output, else csv.")
@click.option("--recursive/--no-recursive", default=True, show_default=True, help="Descend into subdirectories.")
@click.option("--include", multiple=True, metavar="GLOB",
              help="Take files matching GLOB (case-insensitive; a GLOB with / matches the path under PATH). "
              "Repeatable. Default: common image extensions.")
@transform_options
@click.option("--resume", is_flag=True, help="Reuse rows of --output FILE for files whose path, size and mtime are "
              "unchanged (state in FILE.state.json); the result equals a fresh run.")
@click.option("--engine", type=click.Choice(tuple(ENGINES)), default="local", show_default=True,
              help="Where decoding and inference run: local (this process), ray (a Ray cluster; extra `ray`).")
@click.option("--ray-address", metavar="ADDR", help="--engine ray: cluster to join (auto, HOST:PORT, ray://HOST:10001; "
              "default $RAY_ADDRESS, else a local Ray started for this run).")
@click.option("--actors", type=click.IntRange(1), help="--engine ray: inference actors, each with --threads CPUs "
              "(default: as many as the cluster holds).")
@click.option("--max-pixels", type=click.IntRange(min=1), default=DEFAULT_MAX_PIXELS, show_default=True,
              help="Refuse images with more pixels, from their header before decoding (a row error); same default as serve.")
@click.option("--tta", type=click.Choice(TTA_MODES), default="none", show_default=True,
              help="Test-time augmentation: average the probabilities of the image and its mirror (flip, 2x the "
                   "model work) or of 6 mirrored/shifted views (flip-translate, 6x).")
@click.option("--allow-errors", is_flag=True,
              help="Files that cannot be classified are not a failure: their error rows are still written, the exit "
                   "code is 0 and --quiet prints nothing about them (for cron, once the bad files are known).")
@click.option("--quiet", "-q", is_flag=True, help="Print nothing on success; only errors otherwise.")
def command(paths: tuple[str, ...], model: str | None, backend: str | None, device: str, threads: int | None,
            batch_size: int | None, workers: int | None, top_k: int, output: str, fmt: str | None, recursive: bool,
            include: tuple[str, ...], resize: str | None, crop_pct: float | None, interpolation: str | None,
            resume: bool, engine: str, ray_address: str | None,
            actors: int | None, max_pixels: int, tta: str, allow_errors: bool, quiet: bool) -> None:
    """Classify image files and folders (PATH...) into CSV or JSONL rows.

    Folders are walked recursively in sorted order; hidden files and folders are skipped and
    symlink loops are cut. Decoding runs in a worker pool while the model runs, in batches.
    """
    from cifarbench.runs.classify import classify
    from cifarbench.cli.ui import EventPrinter, progress_bar
    from cifarbench.engines import EngineOptions
    from cifarbench.runs.writers import format_for

    engine_options = EngineOptions(engine, ray_address, actors)
    to_stdout = output == "-"
    fmt = fmt or format_for(None if to_stdout else output)
    stream = None
    if to_stdout:
        stream = io.TextIOWrapper(click.get_binary_stream("stdout"), encoding="utf-8", newline="", write_through=True)

    def note(msg: str) -> None:
        if not quiet:
            click.echo(f"classify: {msg}", err=True)

    try:
        with _sigterm_as_interrupt(), progress_bar(None, "classify", quiet=quiet) as bar:
            report = classify(
                list(paths), model=model, backend=backend, device=device, threads=threads, batch_size=batch_size,
                workers=workers, top_k=top_k, output=None if to_stdout else output, stream=stream, fmt=fmt,
                recursive=recursive, include=include, resize=resize, crop_pct=crop_pct, interpolation=interpolation,
                resume=resume, engine=engine_options,
                max_pixels=max_pixels, tta=tta, events=EventPrinter("classify", quiet, bar))
    except BrokenPipeError:  # `classify ... | head`: the reader left; not an error worth a traceback
        _silence_stdout()
        sys.exit(int(ExitStatus.ERROR))
    except OSError as exc:  # the library wraps the ones it expects; never a traceback for the rest
        click.echo(f"error: {exc}", err=True)
        sys.exit(int(ExitStatus.ERROR))
    finally:
        if stream is not None:
            try:
                stream.flush()
                stream.detach()  # leave the real stdout open
            except (BrokenPipeError, ValueError):
                _silence_stdout()

    if report.files == 0:
        note("no image files found (see --include)")
    if report.failed and quiet and not allow_errors:
        click.echo(f"classify: {report.failed} of {report.files} files failed ({report.failed_text()}); "
                   "see the error column", err=True)
    elif not quiet:
        click.echo(report.summary(), err=True)
    status = report.exit_status
    if allow_errors and status == ExitStatus.PARTIAL:
        status = ExitStatus.OK
    click.get_current_context().exit(int(status))


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM (kill, a cron or systemd timeout) unwinds like Ctrl-C: temp file removed, lock
    released, decode workers stopped, previous output intact, exit 130."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def _silence_stdout() -> None:
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, io.UnsupportedOperation):
        pass
