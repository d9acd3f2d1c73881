"""Batch classification of image files and folders: the library side of ``cifarbench classify``.

The pipeline streams: files are discovered (sorted, hidden skipped, symlink loops cut), decoded by
a bounded worker pool while the backend runs the previous batch, and each row is written as soon as
every row before it is known. Only file names and one batch of pixels (at the model's size) are held at a time,
so 100,000-file folders and 50-megapixel photos run in bounded memory.

``--resume`` keeps rows of an earlier run whose file has the same path, size and mtime; the
bookkeeping (the ``<output>.state.json`` sidecar) lives in ``resume.py``.

Over 300 lines on purpose: discovery, resume, decoding and writing meet in one streaming loop; the
options, writers, lock and resume bookkeeping are modules of their own.
"""

from __future__ import annotations

import contextlib
import glob
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Callable, Iterable, Iterator, Sequence

import numpy as np

from cifarbench.atomic import atomic_write
from cifarbench.backends.tta import with_tta
from cifarbench.data.batching import DEFAULT_BATCH, images_per_batch
from cifarbench.data.decode_pool import DecodeLimits, decode_ordered
from cifarbench.data.discover import FileEntry, discover
from cifarbench.errors import CifarbenchError, ExitStatus, ModelError, UsageError
from cifarbench.events import Emit, Event, null_emit
from cifarbench.runs.options import ClassifyOptions
from cifarbench.runs.pair_commit import recover as recover_pair
from cifarbench.runs.pair_commit import write_pair
from cifarbench.runs.resume import STATE_SUFFIX, KeptRows, PreviousRows, load_previous, state_path_for, write_state  # noqa: F401 (re-exported)
from cifarbench.runs.resume import state_doc
from cifarbench.runs.rows import _rows, probs_of  # noqa: F401 (re-exported: the API and engines used them here)
from cifarbench.runs.writers import Row, RowWriter, display_text, make_writer
from cifarbench.data.transform import Transform
from cifarbench.sysinfo import usable_cores

# --------------------------------------------------------------------------- rows
def predict_rows(entries: Sequence[FileEntry], decoded: Iterable[tuple[np.ndarray | None, str | None]],
                 predict: Callable[[np.ndarray], np.ndarray], classes: Sequence[str], top_k: int,
                 batch_size: int, size: int | tuple[int, int]) -> Iterator[list[Row]]:
    """Rows in input order, one list per model batch; failed files get rows without a model call.

    The model runs in a helper thread on one of two buffers while this thread collects the next
    batch and formats the previous one's rows (runtimes release the GIL), so that Python work does
    not stall inference.
    """
    from concurrent.futures import Future, ThreadPoolExecutor

    h, w = (size, size) if isinstance(size, int) else size
    bufs = [np.empty((batch_size, h, w, 3), np.uint8) for _ in range(2)]
    cur, filled = 0, 0
    pending: list[tuple[FileEntry, int, str | None]] = []  # (entry, slot in the buffer or -1, error)
    running: tuple[Future, list[tuple[FileEntry, int, str | None]]] | None = None
    ex = ThreadPoolExecutor(1, thread_name_prefix="cifarbench-predict")

    def finish(job: tuple[Future, list[tuple[FileEntry, int, str | None]]]) -> list[Row]:
        fut, items = job
        probs = fut.result()
        done = iter(_rows(probs, [e.path for e, slot, _ in items if slot >= 0], classes, top_k))
        return [Row(e.path, error=err) if slot < 0 else next(done) for e, slot, err in items]

    def advance() -> Iterator[list[Row]]:
        """Send the filled part of the current buffer to the model; emit everything before it."""
        nonlocal running, pending, filled, cur
        job = (ex.submit(probs_of, predict, bufs[cur][:filled]), pending) if filled else None
        if running is not None:
            yield finish(running)  # after this the other buffer is free again
        if job is None:
            if pending:
                yield [Row(e.path, error=err) for e, _, err in pending]
            running = None
        else:
            running, cur = job, 1 - cur
        pending, filled = [], 0

    try:
        for entry, (arr, err) in zip(entries, decoded):
            if arr is None:
                pending.append((entry, -1, err or "unknown error"))
                # emit failed rows at once when nothing before them waits on the model, and never
                # hold more than a few batches of them back (a folder of mostly broken files)
                if (filled == 0 and (running is None or running[0].done())) or len(pending) >= 4 * batch_size:
                    yield from advance()
                continue
            bufs[cur][filled] = arr
            pending.append((entry, filled, None))
            filled += 1
            if filled == batch_size:
                yield from advance()
        yield from advance()
        if running is not None:
            yield finish(running)
    finally:
        ex.shutdown(wait=False, cancel_futures=True)


# --------------------------------------------------------------------------- the run
@dataclass
class ClassifyReport:
    """What a run did; ``exit_status`` is the code the CLI exits with."""

    files: int = 0
    classified: int = 0  # rows computed in this run (failed ones included)
    reused: int = 0  # rows kept from the previous output (--resume)
    failed: int = 0
    failed_examples: list[str] = field(default_factory=list)  # the first FAILED_NAMED failed files, as written
    seconds: float = 0.0  # decode + inference + writing, model load excluded
    load_seconds: float = 0.0
    backend: str = ""
    device: str = ""
    model: str = ""
    output: str | None = None
    notes: list[str] = field(default_factory=list)
    runtime: dict[str, Any] = field(default_factory=dict)

    @property
    def images_per_second(self) -> float:
        """Images the model classified in this run per second: reused and failed rows do not count."""
        done = self.classified - self.failed
        return done / self.seconds if self.seconds > 0 and done > 0 else 0.0

    @property
    def exit_status(self) -> ExitStatus:
        return ExitStatus.PARTIAL if self.failed else ExitStatus.OK

    def failed_text(self) -> str:
        """The failed files by name, the first FAILED_NAMED of them: "a.jpg, b.png, c.gif and 7 more"."""
        names = ", ".join(self.failed_examples)
        more = self.failed - len(self.failed_examples)
        return names + (f" and {more} more" if more > 0 else "")

    def summary(self) -> str:
        parts = [f"{self.files} file" + ("" if self.files == 1 else "s"), f"{self.failed} failed" + (f" ({self.failed_text()})" if self.failed else "")]
        if self.reused:
            parts.append(f"{self.reused} reused")
        rate = self.images_per_second
        if rate:
            parts.append(f"{rate:.0f} img/s" if rate >= 10 else f"{rate:.2f} img/s")
        parts += [f"backend {self.backend} ({self.device})", f"model {self.model}"]
        return "classify: " + ", ".join(parts) + (f" -> {display_text(self.output)}" if self.output else "")


def classify(paths: Sequence[str | os.PathLike[str]], options: ClassifyOptions | None = None, *,
             stream: IO[str] | None = None, events: Emit | None = None, **kwargs: Any) -> ClassifyReport:
    """Classify ``paths`` into ``options.output`` (atomic file + lock) or ``stream``; see the module doc.

    Options come as a ``ClassifyOptions`` or as its fields by keyword (``model=..., top_k=3``),
    and are validated once, before anything is loaded or locked. ``events`` hears ``note``s, a
    ``start`` with the number of files and ``progress`` as rows are written (``cifarbench.events``).
    """
    from cifarbench import backends
    from cifarbench.runs.lock import OutputLock, lock_path_for
    from cifarbench.models.model_ref import emit_model_notes, resolve_model

    if options is not None and kwargs:
        raise TypeError("pass a ClassifyOptions or keyword options, not both")
    opts = (options or ClassifyOptions(**kwargs)).validated(has_stream=stream is not None)
    model, backend, device, threads, batch_size = opts.model, opts.backend, opts.device, opts.threads, opts.batch_size
    workers, top_k, output, fmt, recursive, include = opts.workers, opts.top_k, opts.output, opts.fmt, opts.recursive, opts.include
    resize, resume, pool, max_pixels, engine = opts.resize, opts.resume, opts.pool, opts.max_pixels, opts.engine
    # a symlinked output is written through: the link stays, its target is replaced and locked
    out_path = Path(os.path.realpath(output)) if output is not None else None
    if out_path is not None and out_path.is_dir():
        raise UsageError(f"--output {display_text(os.fspath(output))} is a directory")  # type: ignore[arg-type]

    manifest = resolve_model(model)
    # The model's own size and the transform convert stored; a command-line option overrides one field.
    transform = manifest.input.transform_with(resize, opts.crop_pct, opts.interpolation)
    size = transform.size
    if batch_size is None:  # ResNet50 at 224x224: 2,881 MB at 256 a call, 727 MB at 20, same speed
        batch_size = images_per_batch(size, DEFAULT_BATCH)
    selection = backends.select(manifest, backend, device, threads, batch_size=batch_size)
    name, spec = selection.name, selection.spec
    classes = list(manifest.classes)
    if top_k > len(classes):
        raise UsageError(f"--top-k {top_k} is more than the model's {len(classes)} classes")
    writer = make_writer(fmt, top_k)
    workers = usable_cores() if workers is None else workers
    report = ClassifyReport(backend=name, device=selection.device, model=manifest.name,
                            output=os.fspath(output) if output is not None else None)
    emit = events or null_emit
    emit_model_notes(manifest, emit)  # e.g. a lone artifact's classes named by its output width
    if selection.how in ("measured", "fallback"):  # a cached choice is silent: cron runs stay quiet
        emit(Event("note", f"backend {selection.note}"))

    with contextlib.ExitStack() as stack:
        excludes: list[Path] = []
        if out_path is not None:
            with _writing(out_path):
                stack.enter_context(OutputLock(out_path))
            with _writing(out_path):
                recover_pair(out_path)  # a run that died mid-commit: finish it before the temps are swept
            _remove_stale_temps(out_path)
            excludes = [out_path, state_path_for(out_path), lock_path_for(out_path), Path(os.path.abspath(output))]
        entries = list(discover(paths, recursive=recursive, include=include, exclude=excludes))
        report.files = len(entries)
        emit(Event("start", total=len(entries)))
        fingerprint = {"model": manifest.name, "artifact_sha256": manifest.artifacts[spec.format].sha256,
                       "backend": name, "device": device, "threads": threads, "top_k": top_k,
                       "resize": transform.resize,  # the first release's key; other transforms add theirs
                       **({"transform": transform.describe()} if transform != Transform(size) else {}),
                       "format": fmt, "classes": classes, "max_pixels": max_pixels,
                       **({"tta": opts.tta} if opts.tta != "none" else {})}
        previous: PreviousRows | None = None  # kept rows stay in the earlier output until written
        if resume and out_path is not None:
            previous, msg = load_previous(out_path, writer, fingerprint)
            if previous is not None:
                stack.callback(previous.close)
            if msg:
                emit(Event("note", msg))
                report.notes.append(msg)
        reuse = KeptRows(entries, previous)
        todo = reuse.todo()

        predict: Callable[[np.ndarray], np.ndarray] = _no_model
        engine_rows: Callable[[Sequence[FileEntry]], Iterable[list[Row]]] | None = None
        if todo and engine is not None and engine.name == "ray":  # rows computed on a cluster: engines/ray_engine.py
            from cifarbench.engines import ray_engine

            t0 = time.perf_counter()
            job = ray_engine.Job(manifest, name, device, threads, batch_size, top_k, transform, size, classes,
                                 [os.fspath(p) for p in paths], max_pixels, opts.tta)
            run = stack.enter_context(ray_engine.session(engine, job, emit))
            report.load_seconds = time.perf_counter() - t0
            report.runtime, engine_rows = run.describe(), run.rows
        elif todo:
            t0 = time.perf_counter()
            be = with_tta(selection.load(manifest, threads), opts.tta)
            report.load_seconds = time.perf_counter() - t0
            report.device, report.runtime, predict = be.device, be.describe(), be.predict

        def write_rows(fh: IO[str]) -> None:
            t0 = time.perf_counter()
            fh.write(writer.header())
            if engine_rows is not None:
                _emit_rows(fh, writer, reuse, engine_rows(todo), report, flush_each=out_path is None, emit=emit)
                fh.flush()
                report.seconds = time.perf_counter() - t0
                return
            decoded = decode_ordered(todo, transform, None, workers, pool, ahead=batch_size,
                                     limits=DecodeLimits(max_pixels=max_pixels))
            try:
                _emit_rows(fh, writer, reuse, predict_rows(todo, decoded, predict, classes, top_k, batch_size, size),
                           report, flush_each=out_path is None, emit=emit)
            finally:
                decoded.close()  # stops the decode pool, also on Ctrl-C
            fh.flush()
            report.seconds = time.perf_counter() - t0

        if out_path is None:
            assert stream is not None
            write_rows(stream)
        else:
            if resume:  # the output and its state: both new, or (disk full, a crash) both old
                with _writing(out_path):
                    write_pair(out_path, state_path_for(out_path), write_rows,
                               lambda new: state_doc(new, entries, fingerprint))
            else:
                with _writing(out_path), atomic_write(out_path, "w", newline="") as fh:
                    write_rows(fh)
    emit(Event("progress", done=len(entries), total=len(entries)))
    return report


def _emit_rows(fh: IO[str], writer: RowWriter, reuse: KeptRows, batches: Iterable[list[Row]],
               report: ClassifyReport, flush_each: bool, emit: Emit) -> None:
    """Interleave kept rows with computed ones, in input order, in writes of at most ``_WRITE_ROWS`` rows.

    Kept rows are read back from the earlier output as they are written (``KeptRows``), so no run
    holds more than one write's worth of them; the earlier output is closed before the new one
    replaces it.
    """
    parts: list[str] = []

    def put(text: str) -> None:
        parts.append(text)
        if len(parts) >= _WRITE_ROWS:
            fh.write("".join(parts))
            parts.clear()

    i = 0
    for rows in batches:
        for row in rows:
            while reuse.kept(i):  # kept rows that come before this one
                put(reuse.text(i))
                report.reused += 1
                i += 1
            put(writer.format(row))
            i += 1
            report.classified += 1
            if row.error is not None:
                report.failed += 1
                if len(report.failed_examples) < FAILED_NAMED:
                    report.failed_examples.append(display_text(row.path))
        fh.write("".join(parts))
        parts.clear()
        if flush_each:
            fh.flush()
        emit(Event("progress", done=i, total=len(reuse)))
    for j in range(i, len(reuse)):  # kept rows after the last computed one
        if reuse.kept(j):
            put(reuse.text(j))
            report.reused += 1
    fh.write("".join(parts))
    reuse.close()


_WRITE_ROWS = 1024  # rows joined into one write
FAILED_NAMED = 3  # failed files named in the summary line (cron mail), then "and N more"


def _remove_stale_temps(output: Path) -> None:
    """Temp files of earlier runs that were killed (SIGKILL, power loss) before their rename.

    Called under the output lock, so no live run owns them. Only the atomic writer's own pattern
    ``.<name>.<random>.tmp`` (and that of the state sidecar) is touched.
    """
    with contextlib.suppress(OSError):
        for p in output.parent.glob(f".{glob.escape(output.name)}.*.tmp"):
            if p.is_file() and not p.is_symlink():
                with contextlib.suppress(OSError):
                    p.unlink()


@contextlib.contextmanager
def _writing(path: Path) -> Iterator[None]:
    """An OSError while writing the output (read-only folder, disk full) as one clear error, exit 1."""
    try:
        yield
    except BrokenPipeError:
        raise
    except OSError as exc:
        raise CifarbenchError(f"cannot write {display_text(str(path))}: {exc.strerror or exc}") from None


def _no_model(batch: np.ndarray) -> np.ndarray:  # pragma: no cover - only called if todo is empty
    raise ModelError("no backend loaded")
