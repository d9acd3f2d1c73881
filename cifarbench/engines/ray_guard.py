"""What a Ray driver must undo or add so ``classify --engine ray`` keeps the CLI's promises.

- Ray's driver prints the errors its raylet publishes (``(raylet) A worker died ...``, ``Task ... failed``)
  to the driver's *stdout*, even with ``log_to_driver=False``: ``-o -`` would carry them between CSV
  rows. ``route_driver_messages`` sends them to ``<session>/logs/cifarbench-driver.log`` instead
  (the cluster's own log folder: ``/tmp/ray/session_*/logs`` for a private Ray).
- ``ray.init`` installs the C++ core's failure-signal handler for SIGTERM (``*** SIGTERM received ***``,
  exit 15) over the CLI's: ``restore_signal_handlers`` puts the CLI's handlers back, so SIGTERM
  and Ctrl-C unwind like the local engine (previous output intact, exit 130).
- A private Ray's processes are fate-shared with their raylet, but its agents (dashboard and
  runtime-env agents) poll for a dead raylet and then wait on the dead GCS for about a minute.
  ``start_reaper`` starts a small process that keeps a list of the session's processes (the driver's
  children that name the session on their command line, raylet and gcs_server, and everything below
  them, refreshed twice a second), waits for the driver's end (its pipe closes, on a ``kill -9``
  too) and then kills whatever of that list is left (pid and start time must match), within about a second.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from typing import Any, Callable

LOG_NAME = "cifarbench-driver.log"

_REAPER = r"""
import os, select, signal, sys, time
session, grace, driver, me = sys.argv[1].encode(), float(sys.argv[2]), os.getppid(), os.getpid()
def table():
    kids, start = {}, {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat", "rb") as fh:
                    f = fh.read().rsplit(b")", 1)[1].split()
                kids.setdefault(int(f[1]), []).append(int(d))
                start[int(d)] = None if f[0] == b"Z" else f[19]  # a zombie is dead: nothing to kill
            except (OSError, IndexError):
                pass
    return kids, start
def cmdline(p):
    try:
        with open(f"/proc/{p}/cmdline", "rb") as fh:
            return fh.read()
    except OSError:
        return b""
def snapshot():
    # the session's daemons (the driver's children that name it: raylet, gcs_server) and all below them:
    # the agents rename themselves (ray::DashboardAgent), so only their ancestry tells whose they are
    kids, start = table()
    todo = [p for p in kids.get(driver, []) if p != me and session in cmdline(p)]
    out = {}
    while todo:
        p = todo.pop()
        out[p] = start.get(p)
        todo += kids.get(p, [])
    return out
seen = snapshot()
while True:
    if select.select([0], [], [], 0.5)[0]:
        if not os.read(0, 4096):
            break  # the driver is gone (done, crashed or killed)
    else:
        seen.update(snapshot())
deadline = time.monotonic() + grace
while time.monotonic() < deadline:
    kids, start = table()
    alive = [p for p, st in seen.items() if p != me and st is not None and start.get(p) == st]
    if not alive:
        break
    for p in alive:
        try:
            os.kill(p, signal.SIGKILL)
        except OSError:
            pass
    time.sleep(0.1)
"""


def session_dir(ray: Any) -> str | None:
    try:
        return str(ray._private.worker._global_node.get_session_dir_path())
    except Exception:
        return None


def route_driver_messages(ray: Any) -> Callable[[], None]:
    """Send what Ray's driver threads would print to stdout/stderr to the session's log; returns an undo."""
    try:
        import ray._private.worker as worker
    except ImportError:
        return lambda: None
    where = session_dir(ray)
    path = os.path.join(where, "logs", LOG_NAME) if where else None
    lock = threading.Lock()

    def to_log(data: dict[str, Any], ignore_prefix: bool = False) -> None:
        if path is None:
            return
        try:
            with lock, open(path, "a", encoding="utf-8", errors="replace") as fh:
                for line in data.get("lines", ()):
                    fh.write(f"({data.get('pid', '?')}) {line}\n")
        except OSError:
            pass

    old = worker.print_to_stdstream
    worker.print_to_stdstream = to_log

    def undo() -> None:
        worker.print_to_stdstream = old

    return undo


def save_signal_handlers() -> dict[int, Any]:
    """The Python handlers of SIGTERM and SIGINT now (before ``ray.init``, which replaces SIGTERM's with
    ``sys.exit(15)`` and lets its C++ core print ``*** SIGTERM received ***``)."""
    if threading.current_thread() is not threading.main_thread():
        return {}
    return {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}


def restore_signal_handlers(saved: dict[int, Any]) -> None:
    """Put back what ``save_signal_handlers`` saw (as Python handlers, over whatever was set in C)."""
    if threading.current_thread() is not threading.main_thread():
        return
    for sig, handler in saved.items():
        if handler is not None:
            signal.signal(sig, handler)


def start_reaper(ray: Any, grace_s: float = 10.0) -> subprocess.Popen | None:
    """After a private ``ray.init``: a process that kills the session's leftovers once the driver ends.

    Returns it (the driver keeps its stdin pipe open while it lives); ``None`` off Linux or without a
    session directory. On a normal end ``ray.shutdown`` has stopped everything and it finds nothing.
    """
    where = session_dir(ray)
    if not where or not sys.platform.startswith("linux"):
        return None
    name = os.path.basename(where.rstrip("/"))
    if not name.startswith("session_"):
        return None
    try:
        return subprocess.Popen([sys.executable, "-c", _REAPER, name, str(grace_s)], stdin=subprocess.PIPE,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, close_fds=True,
                                start_new_session=True)  # a Ctrl-C to the terminal's group must not end it first
    except OSError:
        return None


def stop_reaper(proc: subprocess.Popen | None, wait_s: float = 2.0) -> None:
    """Close the pipe (the reaper sweeps once) and wait briefly for it."""
    if proc is None:
        return
    try:
        proc.stdin.close()  # type: ignore[union-attr]
        proc.wait(wait_s)
    except Exception:
        pass

