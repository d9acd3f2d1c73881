"""One memory budget for every image decode of a run, shared by threads and worker processes.

The loader knows from an image's header what decoding it will cost (see ``images.decode_cost``).
Before allocating, it takes that many bytes from the budget and gives them back when done, so the
pixels being decoded at any moment never add up to more than the budget, however many workers run:
peak memory follows the budget, not "worst image x workers". An image larger than the whole budget
(but under the pixel limit) is decoded alone. Costs under one MiB are not counted.

Tokens are 1 MiB each, held in one semaphore; a second lock makes each decoder gather all its
tokens before the next starts gathering, so two big decodes never each hold half and wait forever.
"""

from __future__ import annotations

import contextlib
import ctypes
import sys
import threading
from typing import Any, Iterator

MIB = 1 << 20
DEFAULT_DECODE_BUDGET = 256 * MIB  # bytes in flight per run: a 50 MP RGBA decode runs alone


class DecodeBudget:
    """``hold(nbytes)`` blocks until ``nbytes`` fit under ``total`` bytes, and holds them.

    ``ctx`` (a multiprocessing context) makes a budget that worker processes share: pass it to
    them when they start (initializer arguments). Without it the budget is for threads.
    """

    def __init__(self, total: int = DEFAULT_DECODE_BUDGET, ctx: Any = None) -> None:
        if total < MIB:
            raise ValueError(f"decode budget must be at least 1 MiB, got {total} bytes")
        self.units = total // MIB
        lib = threading if ctx is None else ctx
        self._gate = lib.Lock()
        self._tokens = lib.Semaphore(self.units)

    @property
    def total(self) -> int:
        return self.units * MIB

    def units_for(self, nbytes: int) -> int:
        """Tokens a decode of ``nbytes`` takes: whole MiB, at most the whole budget."""
        return min(self.units, max(0, nbytes) // MIB)

    @contextlib.contextmanager
    def hold(self, nbytes: int) -> Iterator[int]:
        """Hold ``nbytes`` of the budget for the ``with`` block; yields the tokens taken."""
        n = self.units_for(nbytes)
        got = 0
        try:
            if n:
                with self._gate:
                    while got < n:
                        self._tokens.acquire()
                        got += 1
            yield got
        finally:
            for _ in range(got):
                self._tokens.release()

    def free_units(self) -> int:
        """Tokens free right now (for tests and diagnostics; racy by nature)."""
        taken = []
        while self._tokens.acquire(False):
            taken.append(1)
        for _ in taken:
            self._tokens.release()
        return len(taken)


_process_budget = DecodeBudget()
_MMAP_THRESHOLD = 1 * MIB
_malloc_tuned: bool | None = None


def return_big_frees_to_os() -> bool:
    """Make glibc give freed image memory back to the OS at once; True if it could.

    Pillow stores a big image in 16 MB blocks. glibc's malloc raises its mmap threshold after such
    blocks are freed, so later ones come from per-thread arenas that keep the memory: four decode
    threads kept ~200 MB each after their 49 MP images were gone, so a 256 MiB budget still peaked
    at 676 MB (benchmarks/loader/results_bombs.md). A fixed 1 MiB threshold serves every block of
    1 MiB or more with mmap and unmaps it on free. The loader calls this before the first decode
    that costs 4 MiB or more, so processes that never decode big images are untouched.
    """
    global _malloc_tuned
    if _malloc_tuned is None:
        _malloc_tuned = False
        if sys.platform.startswith("linux"):
            try:
                _malloc_tuned = bool(ctypes.CDLL(None).mallopt(-3, _MMAP_THRESHOLD))  # M_MMAP_THRESHOLD
            except (OSError, AttributeError):  # not glibc (musl has no mallopt)
                pass
    return _malloc_tuned


def process_budget() -> DecodeBudget:
    """The budget this process's decodes use (a worker process gets its run's shared one)."""
    return _process_budget


def set_process_budget(budget: DecodeBudget) -> DecodeBudget:
    """Make ``budget`` the one every ``load_image`` in this process uses; returns the previous one."""
    global _process_budget
    old, _process_budget = _process_budget, budget
    return old
