"""Decode functions that misbehave inside a worker process (imported by the worker, so not a test module)."""

from __future__ import annotations

import os


def crash_on_marker(items, size, resize, *rest):  # type: ignore[no-untyped-def]
    """Like the real chunk decoder, but the worker process dies on a file named *CRASH*."""
    from cifarbench.data.decode_pool import _decode_chunk

    if any("CRASH" in os.path.basename(path) for path, _ in items):
        os._exit(3)  # what the OOM killer or a segfaulting decoder looks like to the pool
    return _decode_chunk(items, size, resize, *rest)


def failing_init(*args: object) -> None:
    """A worker that cannot start (as with a script lacking its ``__main__`` guard)."""
    raise RuntimeError("worker processes cannot start here")


def budget_probe(items, size, resize, *rest):  # type: ignore[no-untyped-def]
    """Hold 6 MiB of this worker's decode budget for 5 ms per file; report (total, start, end)."""
    import time

    from cifarbench.data.decode_budget import MIB, process_budget

    out = []
    for _ in items:
        b = process_budget()
        with b.hold(6 * MIB):
            t0 = time.monotonic()
            time.sleep(0.005)
            out.append((None, f"{b.total} {t0} {time.monotonic()}"))
    return out
