"""The micro-batcher, deterministically: a backend that holds its first call until the test lets it go, so the
queue behind it is exactly what the test put there, and every batch the worker forms can be written out.

test_serve.py checks the batcher under real concurrency; these pin its rules: a request of exactly
``max_batch`` images is one item and one more is split, items merge up to ``max_batch`` and not one past it,
the linger waits ``max_wait_s`` and no longer, cancelled requests cost no compute, and the counters.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import CancelledError, TimeoutError as FutureTimeout
from typing import Any, Callable

import numpy as np
import pytest

from cifarbench.serve.batching import BatcherClosed, MicroBatcher


def wait_for(cond: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.002)


class Gated:
    """Records each call's batch size; the first call blocks until ``release()``. Row i's answer: pixel [0,0,0]."""

    def __init__(self, hold_first: bool = True, fail: bool = False, rows: Callable[[int], int] | None = None) -> None:
        self.calls: list[int] = []
        self.arrays: list[np.ndarray] = []
        self.gate = threading.Event()
        self.inside = threading.Event()
        self.hold_first, self.fail, self.rows = hold_first, fail, rows
        if not hold_first:
            self.gate.set()

    def release(self) -> None:
        self.gate.set()

    def __call__(self, x: np.ndarray) -> np.ndarray:
        self.calls.append(len(x))
        self.arrays.append(x)
        self.inside.set()
        self.gate.wait(10)
        if self.fail:
            raise RuntimeError("backend exploded")
        n = self.rows(len(x)) if self.rows else len(x)
        out = np.zeros((n, 10), np.float32)
        out[np.arange(n), x[:n, 0, 0, 0].astype(int) % 10] = 1.0
        return out


def imgs(*labels: int) -> np.ndarray:
    x = np.zeros((len(labels), 2, 2, 3), np.uint8)
    x[:, 0, 0, 0] = labels
    return x


def blocked(backend: Gated, **kw: Any) -> tuple[MicroBatcher, Any]:
    """A batcher whose worker is inside its first predict call (one image, label 9): the queue is ours."""
    b = MicroBatcher(backend, **kw)
    first = b.submit(imgs(9))
    wait_for(backend.inside.is_set, "the worker to enter predict")
    return b, first


def test_defaults_and_the_worker_thread() -> None:
    b = MicroBatcher(Gated(hold_first=False))
    try:
        assert b.max_batch == 64 and b.max_wait_s == 0.0 and b.closed is False
        assert b._thread.name == "cifarbench-batcher"  # named in thread dumps (py-spy, faulthandler)
        assert b._thread.daemon  # a hung backend never keeps the interpreter from exiting
    finally:
        b.close()
    assert b.closed is True
    assert MicroBatcher(Gated(hold_first=False), max_wait_s=-1.0).max_wait_s == 0.0


def test_bad_arguments_are_refused_word_for_word() -> None:
    with pytest.raises(ValueError) as e:
        MicroBatcher(Gated(), max_batch=0)
    assert str(e.value) == "max_batch must be >= 1"
    b = MicroBatcher(Gated(hold_first=False), max_batch=1)
    with pytest.raises(ValueError) as e:
        b.submit(imgs())
    assert str(e.value) == "submit needs at least one image"
    b.close()
    with pytest.raises(BatcherClosed) as e2:
        b.submit(imgs(1))
    assert str(e2.value) == "the batcher is closed"


@pytest.mark.parametrize("n, calls", [(4, [4]), (5, [4, 1]), (9, [4, 4, 1]), (8, [4, 4])])
def test_a_request_of_max_batch_is_one_call_and_one_more_is_split(n: int, calls: list[int]) -> None:
    backend = Gated()
    b, first = blocked(backend, max_batch=4)
    fut = b.submit(imgs(*range(n)))
    backend.release()
    assert fut.result(10).argmax(1).tolist() == [i % 10 for i in range(n)]
    b.close()
    assert backend.calls == [1] + calls


@pytest.mark.parametrize("sizes, calls", [
    ([2, 2], [4]),        # exactly max_batch: merged
    ([2, 3], [2, 3]),     # one past it: the second waits for the next batch
    ([1, 1, 1, 1, 1], [4, 1]),
    ([3, 2, 1], [3, 3]),  # the 2 does not fit after the 3; the 1 joins the 2
])
def test_queued_requests_merge_up_to_max_batch_and_not_one_past(sizes: list[int], calls: list[int]) -> None:
    backend = Gated()
    b, first = blocked(backend, max_batch=4)
    futs = [b.submit(imgs(*[k] * n)) for k, n in enumerate(sizes)]
    backend.release()
    for k, (f, n) in enumerate(zip(futs, sizes)):
        assert f.result(10).argmax(1).tolist() == [k] * n  # each request gets its own rows
    b.close()
    assert backend.calls == [1] + calls


def test_a_lone_request_reaches_the_backend_without_a_copy() -> None:
    backend = Gated(hold_first=False)
    b = MicroBatcher(backend, max_batch=8)
    x = imgs(1, 2, 3)
    b.predict(x, timeout=10)
    b.close()
    assert backend.arrays[0] is x


def test_the_linger_gathers_a_request_that_arrives_within_max_wait() -> None:
    backend = Gated(hold_first=False)
    b = MicroBatcher(backend, max_batch=2, max_wait_s=30.0)  # the second request fills the batch: no wait
    f1 = b.submit(imgs(1))
    wait_for(lambda: b.queued() == 0, "the worker to take the first request")  # now lingering for more
    f2 = b.submit(imgs(2))
    assert f1.result(10).argmax(1).tolist() == [1] and f2.result(10).argmax(1).tolist() == [2]
    b.close()
    assert backend.calls == [2]


def test_the_linger_ends_at_max_wait_when_nothing_comes() -> None:
    backend = Gated(hold_first=False)
    b = MicroBatcher(backend, max_batch=8, max_wait_s=0.2)
    t0 = time.monotonic()
    assert b.predict(imgs(5), timeout=5).argmax(1).tolist() == [5]  # answered after the linger, not never
    assert time.monotonic() - t0 >= 0.2  # it did wait for company (a lower bound: safe on a slow host)
    b.close()


def test_cancelled_requests_cost_no_compute() -> None:
    """serve's request timeout cancels the future (asyncio.wrap_future): queued work is then skipped."""
    backend = Gated()
    b, first = blocked(backend, max_batch=4)
    small = b.submit(imgs(1, 1))
    big = b.submit(imgs(*range(9)))  # split into 4 + 4 + 1
    kept = b.submit(imgs(3))
    assert small.cancel() and big.cancel()
    backend.release()
    assert kept.result(10).argmax(1).tolist() == [3]
    b.close()
    assert backend.calls == [1, 1]  # the gate's call and `kept`: nothing of the cancelled 11 images
    with pytest.raises(CancelledError):
        big.result(0)


def test_a_split_request_whose_part_fails_fails_whole() -> None:
    backend = Gated(hold_first=False, rows=lambda n: n - 1 if n == 1 else n)  # the 1-image part comes back short
    b = MicroBatcher(backend, max_batch=4)
    with pytest.raises(RuntimeError) as e:
        b.predict(imgs(*range(5)), timeout=10)
    assert str(e.value) == "backend returned 0 rows for 1 images"
    b.close()


def test_counters_after_known_batches() -> None:
    backend = Gated()
    b, first = blocked(backend, max_batch=4)
    assert b.stats.as_dict() == {"requests": 1, "images": 0, "batches": 0, "mean_batch": 0.0, "largest_batch": 0,
                                 "errors": 0}
    futs = [b.submit(imgs(*[1] * n)) for n in (2, 2, 3, 2)]
    backend.release()
    for f in futs:
        f.result(10)
    b.close()
    assert backend.calls == [1, 4, 3, 2]
    assert b.stats.as_dict() == {"requests": 5, "images": 10, "batches": 4, "mean_batch": 2.5, "largest_batch": 4,
                                 "errors": 0}
    third = MicroBatcher(Gated(hold_first=False), max_batch=4)
    for n in (1, 1, 2):
        third.predict(imgs(*[0] * n), timeout=10)
    third.close()
    assert third.stats.as_dict()["mean_batch"] == 1.33  # 4 images / 3 batches, rounded to 2 places


def test_every_failed_batch_is_counted_and_every_waiter_hears() -> None:
    backend = Gated(fail=True)
    b, first = blocked(backend, max_batch=2)
    futs = [b.submit(imgs(1, 1)), b.submit(imgs(2, 2))]
    backend.release()
    for f in [first, *futs]:
        with pytest.raises(RuntimeError, match="exploded"):
            f.result(10)
    b.close()
    assert b.stats.errors == 3 and b.stats.batches == 0


def test_close_waits_no_longer_than_its_timeout_and_the_worker_ends_after_the_queue() -> None:
    backend = Gated()
    b, first = blocked(backend, max_batch=4)
    queued = b.submit(imgs(4))
    t0 = time.monotonic()
    b.close(timeout=0.2)  # the backend is stuck: close gives up waiting, the work stays queued
    assert time.monotonic() - t0 < 5 and b._thread.is_alive()
    backend.release()
    assert queued.result(10).argmax(1).tolist() == [4]  # finished after close, not dropped
    wait_for(lambda: not b._thread.is_alive(), "the worker to stop after the close sentinel")


def test_predict_honours_its_timeout() -> None:
    backend = Gated()
    b, first = blocked(backend, max_batch=4)
    with pytest.raises(FutureTimeout):
        b.predict(imgs(1), timeout=0.05)
    backend.release()
    b.close()
