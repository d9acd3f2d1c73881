"""The decode worker pool of ``classify``: files -> arrays at the model's size, in order, a bounded distance ahead.

Decoding small JPEGs is mostly Python work inside Pillow, so big runs decode in worker processes
(threads would share one core through the GIL); small runs use threads, which start at once.
The pool decodes about one model batch ahead, so it works while the backend runs the batch before,
and never holds more than that: memory does not grow with the folder. Pixels being decoded are
bounded too: every worker process of a pool takes each decode's cost from one shared
``DecodeBudget`` (threads share their process's), so memory follows the budget, not the worst
image times the number of workers.
"""

from __future__ import annotations

import os
from collections import deque
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import numpy as np

from cifarbench.data.decode_budget import DEFAULT_DECODE_BUDGET, DecodeBudget, set_process_budget
from cifarbench.data.discover import FileEntry
from cifarbench.data.images import DEFAULT_MAX_PIXELS, load_image
from cifarbench.data.transform import SizeLike  # an int, (H, W), or a model's whole Transform
from cifarbench.errors import UsageError

POOLS = ("auto", "thread", "process", "inline")
CHUNK = 32  # files per decode task: amortises the pool's per-task cost
PROCESS_POOL_MIN_FILES = 2000  # below this, starting worker processes costs more than it saves


def _decode_chunk(items: list[tuple[str, str | None]], size: "SizeLike", resize: str | None,
                  max_pixels: int | None = DEFAULT_MAX_PIXELS) -> list[tuple[np.ndarray | None, str | None]]:
    out: list[tuple[np.ndarray | None, str | None]] = []
    for path, error in items:
        if error is not None:
            out.append((None, error))
        else:
            r = load_image(path, size=size, resize=resize, max_pixels=max_pixels)
            out.append((r.array, r.error))
    return out


def _worker_init(parent: int | None = None, budget: DecodeBudget | None = None) -> None:
    """In each worker process: leave Ctrl-C to the parent, die with it, and share the pool's decode budget.

    A pool worker blocks on its queue forever if the parent is killed (SIGKILL, OOM killer), and
    keeps the forkserver alive too; a watchdog thread ends it as soon as the parent is gone.
    """
    import signal
    import threading

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and stops the pool
    if budget is not None:
        set_process_budget(budget)
    if parent:
        threading.Thread(target=_exit_with, args=(parent,), name="cifarbench-parent-watch", daemon=True).start()


def _exit_with(pid: int) -> None:
    import select
    import time

    try:
        fd = os.pidfd_open(pid)  # Linux >= 5.3: readable once the process has exited
        select.select([fd], [], [])
    except (AttributeError, OSError):
        while True:  # elsewhere: poll
            time.sleep(1.0)
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            except PermissionError:
                pass
    os._exit(0)


def _quiet_resource_tracker() -> None:
    """Start multiprocessing's resource tracker with our one fd-2 capture around it, discarding what it says.

    After a kill -9 the tracker still unlinks the pool's semaphores (nothing leaks), but it inherited
    our stderr and warns there ("N leaked semaphore objects"): noise on a cron run's terminal.
    """
    from multiprocessing import resource_tracker

    from cifarbench.data.cstderr import capture_fd2

    with capture_fd2():
        resource_tracker.ensure_running()


def pick_pool(pool: str, workers: int, files: int) -> str:
    """``auto``: processes for big runs (decoding is mostly Python, so threads share one core), else threads."""
    if pool not in POOLS:
        raise UsageError(f"unknown pool {pool!r}; choose from {', '.join(POOLS)}")
    if workers == 0 or files <= CHUNK:
        return "inline"
    if pool == "auto":
        return "process" if files >= PROCESS_POOL_MIN_FILES else "thread"
    return pool


DecodeFn = Callable[..., list[tuple["np.ndarray | None", "str | None"]]]  # (items, size, resize, max_pixels)
CRASHED = "decoder process died (out of memory, or a crash inside an image decoder)"


class _Pool:
    """A decode pool that survives a dying worker process.

    A worker killed by the OOM killer or a crashing decoder breaks a ``ProcessPoolExecutor``. The
    pool is then rebuilt and the chunk that was running is decoded again one file per task, so only
    the culprit gets an error row. If worker processes cannot run at all here (no ``__main__``
    guard in a calling script, no semaphores), decoding carries on in threads.
    """

    def __init__(self, kind: str, workers: int, fn: DecodeFn, size: int, resize: str,
                 max_pixels: int | None = DEFAULT_MAX_PIXELS, budget_bytes: int = DEFAULT_DECODE_BUDGET) -> None:
        self.kind, self.workers, self.fn, self.args = kind, workers, fn, (size, resize, max_pixels)
        self.budget_bytes = budget_bytes
        self.ex: Executor | None = None
        self.proven = False  # a process pool has completed a task

    def _make(self) -> Executor:
        if self.kind == "thread":
            return ThreadPoolExecutor(self.workers, thread_name_prefix="cifarbench-decode")
        import multiprocessing

        ctx = multiprocessing.get_context("forkserver")  # fork is unsafe once a runtime has started threads
        ctx.set_forkserver_preload(["cifarbench.data.images"])
        _quiet_resource_tracker()
        # a new budget with every pool: a rebuilt pool's workers are all new, and tokens a dead one held are gone
        budget = DecodeBudget(self.budget_bytes, ctx)
        return ProcessPoolExecutor(self.workers, mp_context=ctx, initializer=_worker_init,
                                   initargs=(os.getpid(), budget))

    def submit(self, items: list[tuple[str, str | None]]) -> Future:
        for _ in range(2):
            if self.ex is None:
                self.ex = self._make()
            try:
                return self.ex.submit(self.fn, items, *self.args)
            except (BrokenProcessPool, RuntimeError):  # broken, or shut down under us
                self.reset()
        return self.ex.submit(self.fn, items, *self.args)  # type: ignore[union-attr]

    def result(self, items: list[tuple[str, str | None]], fut: Future) -> tuple[list, bool]:
        """The chunk's results, and whether the pool broke (other in-flight futures are then lost)."""
        try:
            out = fut.result()
            self.proven = True
            return out, False
        except BrokenProcessPool:
            self.reset()
        if not self.proven and not self._processes_work():
            self.kind = "thread"
            return self.submit(items).result(), True
        out = []
        for item in items:  # find the culprit: one file per task
            try:
                out += self.submit([item]).result()
            except BrokenProcessPool:
                self.reset()
                out.append((None, CRASHED))
        return out, True

    def _processes_work(self) -> bool:
        try:
            self.submit([]).result(timeout=120)
            return True
        except Exception:
            self.reset()
            return False

    def reset(self) -> None:
        if self.ex is not None:
            self.ex.shutdown(wait=False, cancel_futures=True)
            self.ex = None


@dataclass(frozen=True)
class DecodeLimits:
    """``max_pixels`` refuses bigger images from their header; ``budget_bytes`` bounds the pixels being
    decoded at once by all worker processes together (threads and inline decoding share the process's own budget)."""

    max_pixels: int | None = DEFAULT_MAX_PIXELS
    budget_bytes: int = DEFAULT_DECODE_BUDGET


def decode_ordered(entries: Sequence[FileEntry], size: "SizeLike", resize: str | None, workers: int, pool: str = "auto",
                   ahead: int = 256, decode_fn: DecodeFn | None = None,
                   limits: DecodeLimits = DecodeLimits()) -> Iterator[tuple[np.ndarray | None, str | None]]:
    """(array, error) per entry, in order, decoded at most ``ahead`` files + 2 chunks per worker in advance.

    ``ahead`` is a model batch: the pool keeps decoding the next batch while the model runs this one.
    ``decode_fn`` replaces the chunk decoder (module-level, so a worker process can import it).
    """
    kind = pick_pool(pool, workers, len(entries))
    fn = decode_fn or _decode_chunk
    chunks = ([(e.path, e.error) for e in entries[i:i + CHUNK]] for i in range(0, len(entries), CHUNK))
    if kind == "inline":
        for items in chunks:
            yield from fn(items, size, resize, limits.max_pixels)
        return
    p = _Pool(kind, workers, fn, size, resize, limits.max_pixels, limits.budget_bytes)
    inflight: deque[tuple[list, Future]] = deque()
    max_inflight = 2 * workers + -(-ahead // CHUNK)

    def next_done() -> list:
        items, fut = inflight.popleft()
        out, broke = p.result(items, fut)
        if broke:  # every future of the old pool is lost: submit those chunks again
            for k, (its, _) in enumerate(inflight):
                inflight[k] = (its, p.submit(its))
        return out

    try:
        for items in chunks:
            inflight.append((items, p.submit(items)))
            if len(inflight) > max_inflight:
                yield from next_done()
        while inflight:
            yield from next_done()
    finally:
        for _, f in inflight:
            f.cancel()
        p.reset()
