"""``cifarbench serve``: an ASGI app (Starlette) around any backend, with a micro-batcher.

Starlette, uvicorn and python-multipart come with the ``serve`` extra; they are
imported only when ``create_app`` is used, so ``cifarbench.serve.batching`` stays
dependency-free.
"""

from __future__ import annotations

from typing import Any

__all__ = ["create_app", "load_app", "ServeLimits", "MicroBatcher"]


def __getattr__(name: str) -> Any:
    if name in ("create_app", "load_app", "ServeLimits"):
        from cifarbench.serve import app

        return getattr(app, name)
    if name == "MicroBatcher":
        from cifarbench.serve.batching import MicroBatcher

        return MicroBatcher
    raise AttributeError(name)
