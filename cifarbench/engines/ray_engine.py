"""``classify --engine ray``: decode as Ray Data tasks, infer in an actor pool, rows back in order.

The driver (``classify``) keeps discovery, ``--resume``, the lock and the writers; this module only
turns the files still to do into rows, so the output does not depend on the engine. Per file only an
index, its absolute path (raw bytes, so any name survives) and a known error travel to the cluster;
decoded pixels (at the model's own size) stay in the object store between the decode tasks and the actors; the driver
gets back ``(index, probabilities, error)`` in input order (Ray Data's ``preserve_order``) and
formats rows with the local engine's own code, one batch at a time, so its memory does not grow
with the folder.

Decode tasks use the project's one loader and reserve no CPU: like the local engine's decode pool,
they share the cores with the runtime threads (an actor reserves ``threads`` CPUs and runs that
many). The model travels through the object store, so only the input paths need to be shared
between nodes; a node that cannot see a PATH fails the run with a message saying so.

Ray is imported only by this package (cluster side: ray_tasks.py), and only when this engine runs.

Over 300 lines on purpose: the Ray session (start, join, shut down), the dataset plan and the ordered
row stream share one run's state; the cluster-side code is apart in ray_tasks.py.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import socket
import sys
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from cifarbench.data.discover import FileEntry
from cifarbench.data.images import DEFAULT_MAX_PIXELS
from cifarbench.engines import EngineOptions, ray_guard
from cifarbench.engines.ray_tasks import Predictor, _dec, _enc, decode_block
from cifarbench.errors import BackendUnavailable, CifarbenchError, UsageError, first_line
from cifarbench.events import Emit, Event, null_emit
from cifarbench.data.transform import Transform
from cifarbench.models.manifest import MANIFEST_NAME, Manifest
from cifarbench.runs.writers import Row
from cifarbench.sysinfo import usable_cores

BLOCK_MAX = 1024  # files per decode task at most; fewer for small runs so every CPU gets work
BLOCK_MIN = 32
MAX_ROOTS = 64  # PATH arguments each node checks once per process (a shell glob can name thousands)


@dataclass(frozen=True)
class Job:
    """What the cluster needs to compute rows; built by ``classify`` from its validated options."""

    manifest: Manifest
    backend: str
    device: str  # cpu | gpu | auto, as the user asked
    threads: int | None
    batch_size: int
    top_k: int
    resize: "str | Transform"  # the model's Transform (classify passes it), or a policy name
    size: "int | tuple[int, int]"  # H, W of the pixels
    classes: Sequence[str]
    roots: Sequence[str]  # the PATH arguments: checked on every node that decodes
    max_pixels: int | None = DEFAULT_MAX_PIXELS
    tta: str = "none"  # test-time augmentation, applied by each actor (backends/tta.py)


# --------------------------------------------------------------------------- driver side
def rows_of_batch(entries: Sequence[FileEntry], batch: dict[str, np.ndarray], classes: Sequence[str],
                  top_k: int) -> list[Row]:
    """The driver's only per-row work: a returned batch -> rows, with the local engine's own ``_rows``."""
    from cifarbench.runs.rows import _rows

    ok, probs = np.asarray(batch["ok"], bool), np.asarray(batch["probs"])
    good = iter(_rows(probs[ok], [e.path for e, o in zip(entries, ok) if o], classes, top_k))
    return [next(good) if o else Row(e.path, error=_dec(err) or "unknown error")
            for e, o, err in zip(entries, ok.tolist(), batch["error"])]


def _quiet_ray() -> None:
    """Ray's own logs and progress bars never reach the terminal: cifarbench reports for it."""
    for name in ("ray", "ray.data", "ray.train", "ray.tune"):
        logging.getLogger(name).setLevel(logging.CRITICAL + 1)  # a failure comes back as one CifarbenchError
    warnings.filterwarnings("ignore", module=r"ray(\.|$)")


def _import_ray(local: bool) -> Any:
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # nothing leaves the machine at run time
    os.environ.setdefault("RAY_ENABLE_AUTO_CONNECT", "0")  # a late call must never start or join a Ray
    os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "fatal")  # the driver's C++ core logs to stderr otherwise
    if local and "ray" not in sys.modules:
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # a private Ray: listen on 127.0.0.1 only
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise BackendUnavailable("--engine ray needs Ray Data: pip install 'cifarbench[ray]'") from None
    _quiet_ray()
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    ctx.execution_options.preserve_order = True
    ctx.raise_original_map_exception = True  # a worker's CifarbenchError reaches the driver as itself
    return ray


@contextlib.contextmanager
def connect(address: str | None) -> Iterator[Any]:
    """Join ``address`` (or $RAY_ADDRESS), or start a private local Ray; leave both as found at the end.

    A cluster the user started keeps running (the driver only disconnects, which also ends this run's
    tasks and actors); a local Ray started here is shut down. A connection made by the caller
    (``ray.init`` in a script) is used and left open.
    """
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address is not None:
        _probe(address)
    ray = _import_ray(local=address is None)
    if ray.is_initialized():
        yield ray
        return
    common: dict[str, Any] = {"log_to_driver": False, "logging_level": logging.ERROR}
    handlers = ray_guard.save_signal_handlers()
    try:
        with warnings.catch_warnings(), _fd2_aside():
            warnings.simplefilter("ignore")
            if address is None:
                ray.init(address="local", num_cpus=usable_cores(), include_dashboard=False, **common)
            else:
                ray.init(address=address, **common)
    except Exception as exc:  # Ray raises plain Exception too (a node that times out while starting)
        where = f"reach the Ray cluster at {address}" if address else "start a local Ray"
        raise BackendUnavailable(f"cannot {where}: {first_line(exc)}") from None
    finally:
        ray_guard.restore_signal_handlers(handlers)  # SIGTERM: exit 130 like Ctrl-C, not ray.init's sys.exit(15)
    _quiet_ray()  # ray.init configures logging again
    undo = ray_guard.route_driver_messages(ray)  # "(raylet) A worker died ..." to a log file, never stdout
    reaper = ray_guard.start_reaper(ray) if address is None else None  # kill -9 of this driver leaves nothing
    try:
        yield ray
    finally:
        with _fd2_aside():
            ray.shutdown()
        undo()
        ray_guard.stop_reaper(reaper)


def _probe(address: str, timeout: float = 10.0) -> None:
    """A HOST:PORT that does not answer is one clear error at once (``ray.init`` would wait forever)."""
    if "://" in address or address in ("auto", "local"):
        return  # Ray Client and discovery have their own timeouts
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise UsageError(f"--ray-address {address!r}: expected auto, HOST:PORT or ray://HOST:PORT")
    try:
        socket.create_connection((host.strip("[]") or "127.0.0.1", int(port)), timeout=timeout).close()
    except OSError as exc:
        raise BackendUnavailable(f"cannot reach the Ray cluster at {address}: "
                                 f"{(exc.strerror or str(exc) or type(exc).__name__).lower()}") from None


@contextlib.contextmanager
def _fd2_aside() -> Iterator[None]:
    """Ray's C++ core prints to file descriptor 2 while it starts (below Python's logging): drop that."""
    with contextlib.suppress(Exception):
        sys.stderr.flush()
    try:
        saved = os.dup(2)
    except OSError:  # no fd 2 (a daemon): nothing reaches a terminal anyway
        yield
        return
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 2)
            try:
                yield
            finally:
                os.dup2(saved, 2)
    finally:
        os.close(saved)


def _cause(exc: BaseException) -> CifarbenchError | None:
    """The cifarbench error a worker raised, found through Ray's wrappers."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        cause = getattr(e, "cause", None)
        if isinstance(cause, CifarbenchError):
            return type(cause)(first_line(cause))
        if isinstance(e, CifarbenchError) and type(e).__module__.startswith("cifarbench"):
            return e
        todo += [cause if isinstance(cause, BaseException) else None, e.__cause__, e.__context__]
    return None


@dataclass
class RayRun:
    """A connected cluster and the plan for this run: actors, threads per actor, GPUs."""

    ray: Any
    job: Job
    actors: int
    threads: int
    gpus: int
    nodes: int
    cpus: int
    model_ref: Any = None
    open_rows: list[Any] = field(default_factory=list)

    def close(self) -> None:
        """Stop row streams a caller left open (an error or Ctrl-C in the writer): before disconnecting."""
        while self.open_rows:
            self.open_rows.pop().close()

    def describe(self) -> dict[str, Any]:
        return {"engine": "ray", "ray": getattr(self.ray, "__version__", "?"), "nodes": self.nodes, "cpus": self.cpus,
                "actors": self.actors, "threads_per_actor": self.threads, "gpus_per_actor": self.gpus}

    def summary(self) -> str:
        return (f"ray: {self.actors} actor{'s' * (self.actors != 1)} x {self.threads} thread{'s' * (self.threads != 1)}"
                f" on {self.nodes} node{'s' * (self.nodes != 1)} ({self.cpus} CPUs)")

    def rows(self, todo: Sequence[FileEntry]) -> Iterator[list[Row]]:
        """Rows for ``todo`` in its order, one list per block that comes back; see the module doc."""
        gen = self._rows(todo)
        self.open_rows.append(gen)
        return gen

    def _rows(self, todo: Sequence[FileEntry]) -> Iterator[list[Row]]:
        if not todo:
            return
        ray, job = self.ray, self.job
        ds = self._dataset(todo)
        pos = 0
        it = ds.iter_batches(batch_size=None, batch_format="numpy", prefetch_batches=1)
        try:
            for b in it:
                idx = np.asarray(b["idx"])
                n = len(idx)
                if n == 0:
                    continue
                if not np.array_equal(idx, np.arange(pos, pos + n)):
                    raise CifarbenchError(f"ray engine: rows came back out of order at file {pos + 1}; nothing written")
                yield rows_of_batch(todo[pos:pos + n], b, job.classes, job.top_k)
                pos += n
        except Exception as exc:  # Ray's wrappers around a worker's error, or a cluster failure
            if isinstance(exc, CifarbenchError) and type(exc).__module__.startswith("cifarbench"):
                raise  # our own (the driver's), not a worker's wrapped in Ray's RayTaskError(...)
            found = _cause(exc)
            if found is not None:
                raise found from None
            if isinstance(exc, ray.exceptions.RayError) or type(exc).__module__.startswith("ray"):
                raise CifarbenchError(f"ray engine: {first_line(exc)}") from None
            raise
        finally:
            close = getattr(it, "close", None)
            if close is not None:
                close()
        if pos != len(todo):
            raise CifarbenchError(f"ray engine: {len(todo) - pos} of {len(todo)} rows never came back")

    def _dataset(self, todo: Sequence[FileEntry]) -> Any:
        import pyarrow as pa

        ray, job = self.ray, self.job
        n = len(todo)
        block = max(BLOCK_MIN, min(BLOCK_MAX, -(-n // max(1, 4 * self.cpus))))
        tables = []
        for start in range(0, n, block):
            chunk = todo[start:start + block]
            tables.append(pa.table({
                "idx": pa.array(np.arange(start, start + len(chunk), dtype=np.int64)),
                "path": pa.array([os.fsencode(os.path.abspath(e.path)) for e in chunk], pa.binary()),
                "error": pa.array([_enc(e.error) if e.error else b"" for e in chunk], pa.binary()),
            }))
        roots = list(dict.fromkeys(os.fsencode(os.path.abspath(r)) for r in job.roots))[:MAX_ROOTS]
        ds = ray.data.from_arrow(tables)
        ds = ds.map_batches(decode_block, batch_size=None, batch_format="numpy", num_cpus=0,
                            compute=ray.data.TaskPoolStrategy(size=max(1, self.cpus)),
                            fn_kwargs={"size": job.size, "resize": job.resize, "roots": roots,
                                       "max_pixels": job.max_pixels})
        device = "gpu" if self.gpus else ("cpu" if job.device == "auto" else job.device)
        return ds.map_batches(Predictor, batch_size=job.batch_size, batch_format="numpy", zero_copy_batch=True,
                              compute=ray.data.ActorPoolStrategy(size=self.actors), num_cpus=self.threads,
                              num_gpus=self.gpus or None,
                              fn_constructor_kwargs={"model": self._model(), "backend": job.backend,
                                                     "device": device, "threads": self.threads, "tta": job.tta})

    def _model(self) -> dict[str, Any]:
        """The manifest and the one artifact the actors load, put in the object store once."""
        spec_format = _format_of(self.job.backend)
        src = self.job.manifest.verify(spec_format)
        with tempfile.TemporaryDirectory(prefix="cifarbench-manifest-") as tmp:
            m = copy.deepcopy(self.job.manifest)
            m.save(tmp)
            manifest = Path(tmp, MANIFEST_NAME).read_bytes()
        if self.model_ref is None:
            self.model_ref = self.ray.put(src.read_bytes())
        # a dict, so Ray hands the reference itself to the actor (which fetches it on each (re)start)
        return {"manifest": manifest, "file": self.job.manifest.artifacts[spec_format].file, "artifact": self.model_ref}


def _format_of(backend: str) -> str:
    from cifarbench import backends

    return backends.get_spec(backend).format


def plan(ray: Any, job: Job, options: EngineOptions) -> RayRun:
    """Actors and threads from the cluster's CPUs (and GPUs for ``--device gpu``)."""
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    node_cpus = [int(n.get("Resources", {}).get("CPU", 0)) for n in nodes]
    total = sum(node_cpus)
    if total < 1:
        raise BackendUnavailable("the Ray cluster has no CPUs")
    threads = job.threads or max(1, min(c for c in node_cpus if c >= 1))
    hold = sum(c // threads for c in node_cpus)
    if hold < 1:
        raise UsageError(f"--threads {threads}: no Ray node has that many CPUs (largest: {max(node_cpus)})")
    actors = options.actors or hold
    if actors > hold:
        raise UsageError(f"--actors {actors} x {threads} threads do not fit the cluster's CPUs "
                         f"({'+'.join(map(str, node_cpus))}); at most {hold}")
    gpus = 0
    if job.device == "gpu":
        have = int(ray.cluster_resources().get("GPU", 0))
        if have < actors:
            raise BackendUnavailable(f"--device gpu: the Ray cluster has {have} GPU{'s' * (have != 1)} "
                                     f"for {actors} actor{'s' * (actors != 1)} (use --actors {max(have, 1)})"
                                     if have else "--device gpu: the Ray cluster has no GPU")
        gpus = 1
    return RayRun(ray, job, actors, threads, gpus, len(nodes), total)


@contextlib.contextmanager
def session(options: EngineOptions, job: Job, events: Emit = null_emit) -> Iterator[RayRun]:
    """Connect (or start Ray), plan the run (a ``note`` event describes it), and clean up on exit, Ctrl-C and errors alike."""
    with connect(options.ray_address) as ray:
        run = plan(ray, job, options)
        events(Event("note", run.summary()))
        try:
            yield run
        finally:
            run.close()
