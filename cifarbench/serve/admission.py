"""Admission control for requests: bounded work, bounded queue, bounded buffered bytes.

Why: connections are cheap and bounded at the protocol level; requests cost memory (their
bodies) and CPU (decode, inference). Two separate limits keep a slow or hostile client from
starving the others:

* ``UploadBudget``: the bytes of request bodies held in memory across all requests. A body
  that would push the total over the budget is refused (503, ``Retry-After``) instead of
  waiting, so trickling uploads can hold at most their own small share.
* ``Admission``: at most ``max_active`` requests decode and infer at once, at most
  ``max_queue`` more wait for a turn; beyond that a request is refused at once (503).
  Waiting counts against the request's own time limit.

Both raise ``Busy``, which the app answers as JSON 503 with ``Retry-After``.
"""

from __future__ import annotations

import contextlib
from typing import AsyncIterator

import anyio


class Busy(Exception):
    """The server is at a limit; the client should retry after ``retry_after`` seconds."""

    def __init__(self, message: str, retry_after: int = 1) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class UploadBudget:
    """Bytes of request bodies in memory; ``take`` refuses what would exceed ``total``.

    Only touched from the event loop thread, so plain integers are enough.
    """

    def __init__(self, total: int) -> None:
        self.total = max(1, int(total))
        self.used = 0

    def take(self, n: int) -> None:
        if self.used + n > self.total:
            raise Busy(f"server busy: uploads in progress already hold {self.used} of {self.total} bytes; retry shortly")
        self.used += n

    def give_back(self, n: int) -> None:
        self.used = max(0, self.used - n)


class Admission:
    """A counting gate with a bounded waiting room (anyio, so it runs under any event loop)."""

    def __init__(self, max_active: int, max_queue: int) -> None:
        if max_active < 1 or max_queue < 0:
            raise ValueError("max_active must be >= 1 and max_queue >= 0")
        self.max_active, self.max_queue = max_active, max_queue
        self._sem: anyio.Semaphore | None = None  # created on first use, inside the serving loop
        self.active = 0
        self.waiting = 0
        self.refused = 0

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """Hold one of ``max_active`` slots; raises ``Busy`` when the waiting room is full."""
        if self._sem is None:
            self._sem = anyio.Semaphore(self.max_active)
        if self.active >= self.max_active and self.waiting >= self.max_queue:
            self.refused += 1
            raise Busy(f"server busy: {self.active} requests in progress and {self.waiting} waiting; retry shortly")
        self.waiting += 1
        try:
            await self._sem.acquire()
        finally:
            self.waiting -= 1
        self.active += 1
        try:
            yield
        finally:
            self.active -= 1
            self._sem.release()

    def as_dict(self) -> dict[str, int]:
        return {"active": self.active, "waiting": self.waiting, "max_active": self.max_active,
                "max_queue": self.max_queue, "refused": self.refused}
