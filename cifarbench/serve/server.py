"""uvicorn configured the one way cifarbench serves: guarded protocol, no websockets, no
``limit_concurrency``. The CLI, the tests and the benchmarks all start servers through here.
"""

from __future__ import annotations

import socket
from typing import Any

from cifarbench.data.cstderr import python_stderr_apart
from cifarbench.serve.memory import tune_malloc
from cifarbench.serve.protocol import ConnectionLimits, guarded_protocol


def make_config(app: Any, connection: ConnectionLimits | None = None, keep_alive: int = 5, log_level: str = "info",
                protocol: str = "auto", **kwargs: Any) -> Any:
    """A ``uvicorn.Config`` for ``app`` (an ASGI app, or an import string with ``factory=True``).

    No ``limit_concurrency``: uvicorn counts idle connections against it, so 64 silent sockets
    locked every client out. Connections are bounded by the guarded protocol (head timeout,
    head size, count); requests by the app's admission control. ``protocol``: ``auto``
    (httptools when installed), ``httptools`` or ``h11``.
    """
    import uvicorn

    kwargs.setdefault("access_log", False)  # serve --access-log writes its own lines (serve/access_log.py)
    config = uvicorn.Config(app, log_level=log_level, timeout_keep_alive=keep_alive, server_header=False,
                            http=guarded_protocol(protocol), ws="none", **kwargs)
    config.cifarbench_connection = connection or ConnectionLimits()  # type: ignore[attr-defined]  # pickled to workers
    return config


def run(app: Any, sock: socket.socket, connection: ConnectionLimits | None = None, keep_alive: int = 5,
        log_level: str = "info") -> None:
    """Serve ``app`` on the bound socket ``sock`` in this process until SIGINT/SIGTERM."""
    import uvicorn

    tune_malloc()
    python_stderr_apart()  # before uvicorn's logging config: its handlers get the stream a decode never captures
    uvicorn.Server(make_config(app, connection, keep_alive, log_level)).run(sockets=[sock])
