"""The decode sandbox's child side: a process that decodes one image at a time under an address-space cap.

Kept apart from ``decode_sandbox`` (the parent side, which ``images`` calls) so that the loader and
the sandbox do not import each other: only the child needs the loader.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time

from cifarbench.data import decode_sandbox
from cifarbench.data.decode_sandbox import _BODY, _HEAD, _OOM, DEFAULT_MEMORY
from cifarbench.data.images import load_image


def _vm_size() -> int:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmSize:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _watch_parent(ppid: int) -> None:
    while os.getppid() == ppid:
        time.sleep(0.5)
    os._exit(0)


def main() -> None:
    """The sandbox: read requests on stdin, answer on a private copy of stdout; C libraries print nowhere."""
    decode_sandbox._in_child = True  # load_image below decodes here, never in a sandbox of its own
    import resource

    out = os.fdopen(os.dup(1), "wb")
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 1)
    os.close(null)
    inp = sys.stdin.buffer
    threading.Thread(target=_watch_parent, args=(os.getppid(),), daemon=True).start()
    memory = int(os.environ.get("CIFARBENCH_SANDBOX_MEMORY", DEFAULT_MEMORY))
    base = _vm_size()
    if base:
        try:
            resource.setrlimit(resource.RLIMIT_AS, (base + memory, resource.getrlimit(resource.RLIMIT_AS)[1]))
        except (ValueError, OSError):
            pass  # a hard limit already below: it holds anyway
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    out.write(b"\x01")
    out.flush()
    while True:
        raw = inp.read(_HEAD.size)
        if len(raw) < _HEAD.size:
            return
        meta = json.loads(inp.read(_HEAD.unpack(raw)[0]))
        payload = inp.read(_BODY.unpack(inp.read(_BODY.size))[0])
        src = meta["path"] if meta["path"] is not None else payload
        try:
            args = {k: tuple(v) if isinstance(v, list) else v for k, v in meta["args"].items()}
            r = load_image(src, **args)
            reply, body = ({"error": r.error}, b"") if r.error else ({"error": None, "shape": r.array.shape[:2]},
                                                                     r.array.tobytes())
        except MemoryError:
            reply, body = {"error": _OOM}, b""
        except Exception as exc:  # a usage error cannot happen here: the parent validated the options
            reply, body = {"error": f"corrupt or unsupported image ({type(exc).__name__})"}, b""
        del src, payload
        head = json.dumps(reply).encode()
        out.write(_HEAD.pack(len(head)) + head + body)
        out.flush()
