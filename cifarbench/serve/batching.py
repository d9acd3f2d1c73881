"""A micro-batcher: concurrent requests share one backend call.

Why: a CNN answers 32 images in barely more time than one, so a server that runs
each request alone wastes most of the CPU under load. Requests are queued; one
worker thread drains whatever is waiting (up to ``max_batch`` images, optionally
lingering ``max_wait_s`` for more), runs a single ``predict`` and hands each
request its rows. With one worker thread the backend is never called from two
threads at once, which also makes runtimes that are not thread-safe (the LiteRT
interpreter) safe behind a multi-threaded server.
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

PredictFn = Callable[[np.ndarray], np.ndarray]


class BatcherClosed(RuntimeError):
    """Raised by ``submit`` after ``close``."""


@dataclass
class _Item:
    images: np.ndarray
    future: "Future[np.ndarray]"
    enqueued: float = field(default_factory=time.perf_counter)


@dataclass
class BatcherStats:
    """Counters for /health and the benchmark: how well requests are being merged."""

    requests: int = 0
    images: int = 0
    batches: int = 0
    largest_batch: int = 0
    errors: int = 0

    def as_dict(self) -> dict[str, float]:
        mean = self.images / self.batches if self.batches else 0.0
        return {"requests": self.requests, "images": self.images, "batches": self.batches,
                "mean_batch": round(mean, 2), "largest_batch": self.largest_batch, "errors": self.errors}


class MicroBatcher:
    """Thread-safe: ``submit`` may be called from any thread; one worker calls ``predict``."""

    def __init__(self, predict: PredictFn, max_batch: int = 64, max_wait_s: float = 0.0, name: str = "cifarbench-batcher") -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be >= 1")
        self._predict = predict
        self.max_batch = max_batch
        self.max_wait_s = max(0.0, max_wait_s)
        self._queue: "queue.Queue[_Item | None]" = queue.Queue()
        self._lock = threading.Lock()
        self._closed = False
        self._carry: _Item | None = None  # an item that did not fit the last batch
        self.stats = BatcherStats()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ client side
    def submit(self, images: np.ndarray) -> "Future[np.ndarray]":
        """Queue uint8 NHWC ``images``; the future yields their (N, classes) probabilities in order."""
        n = len(images)
        if n == 0:
            raise ValueError("submit needs at least one image")
        with self._lock:
            if self._closed:
                raise BatcherClosed("the batcher is closed")
            self.stats.requests += 1
            if n <= self.max_batch:
                fut: Future[np.ndarray] = Future()
                self._queue.put(_Item(images, fut))
                return fut
            parts = [Future() for _ in range(0, n, self.max_batch)]
            for i, part in enumerate(parts):
                self._queue.put(_Item(images[i * self.max_batch:(i + 1) * self.max_batch], part))
        return _join(parts)

    def predict(self, images: np.ndarray, timeout: float | None = None) -> np.ndarray:
        """Blocking convenience: submit and wait."""
        return self.submit(images).result(timeout)

    def close(self, timeout: float | None = 5.0) -> None:
        """Finish queued work, then stop the worker; later ``submit`` calls raise ``BatcherClosed``."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._queue.put(None)
        self._thread.join(timeout)

    @property
    def closed(self) -> bool:
        return self._closed

    def queued(self) -> int:
        return self._queue.qsize()

    # ------------------------------------------------------------------ worker side
    def _run(self) -> None:
        while True:
            first = self._carry or self._queue.get()
            self._carry = None
            if first is None:
                return
            batch, stop = self._collect(first)
            self._run_batch(batch)
            if stop:  # close() queued the sentinel last, under the lock submit() takes: nothing follows it
                return

    def _collect(self, first: _Item) -> tuple[list[_Item], bool]:
        """``first`` plus whatever else is queued, up to ``max_batch`` images."""
        batch, total = [first], len(first.images)
        deadline = time.perf_counter() + self.max_wait_s
        while total < self.max_batch:
            remaining = deadline - time.perf_counter()
            try:
                item = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if item is None:
                return batch, True
            if total + len(item.images) > self.max_batch:
                self._carry = item
                break
            batch.append(item)
            total += len(item.images)
        return batch, False

    def _run_batch(self, batch: list[_Item]) -> None:
        live = [it for it in batch if it.future.set_running_or_notify_cancel()]
        if not live:
            return
        x = live[0].images if len(live) == 1 else np.concatenate([it.images for it in live])
        try:
            probs = np.asarray(self._predict(x))
            if len(probs) != len(x):
                raise RuntimeError(f"backend returned {len(probs)} rows for {len(x)} images")
        except BaseException as exc:  # every waiting request must hear about the failure
            self.stats.errors += 1
            for it in live:
                it.future.set_exception(exc)
            return
        self.stats.batches += 1
        self.stats.images += len(x)
        self.stats.largest_batch = max(self.stats.largest_batch, len(x))
        start = 0
        for it in live:
            it.future.set_result(probs[start:start + len(it.images)])
            start += len(it.images)


def _join(parts: list["Future[np.ndarray]"]) -> "Future[np.ndarray]":
    """One future for a request that was split into several batches.

    Cancelling it (serve's request timeout does, through ``asyncio.wrap_future``) cancels the parts still
    queued, so the worker skips them instead of computing answers nobody waits for.
    """
    joined: Future[np.ndarray] = Future()
    remaining = [len(parts)]
    lock = threading.Lock()

    def cancel_parts(f: "Future[np.ndarray]") -> None:
        if f.cancelled():
            for p in parts:
                p.cancel()  # False for a part already running: it finishes, and nobody reads it

    def done(_: "Future[np.ndarray]") -> None:
        with lock:
            remaining[0] -= 1
            last = remaining[0] == 0
        if not last or joined.cancelled():
            return
        error = next((p.exception() for p in parts if p.exception() is not None), None)
        with contextlib.suppress(InvalidStateError):  # cancelled meanwhile
            if error is not None:
                joined.set_exception(error)
            else:
                joined.set_result(np.concatenate([p.result() for p in parts]))

    joined.add_done_callback(cancel_parts)
    for p in parts:
        p.add_done_callback(done)
    return joined
