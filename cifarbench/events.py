"""One event channel from the library to whoever watches: the CLI renders events, tests record them.

A long-running library function (``train``, ``convert``, ``classify``, ``run_bench``) takes one
``events: Emit | None`` argument and calls it with ``Event`` objects; it never prints. The kinds:

========  ==========================================  ===============================================
kind      sent by                                     fields
========  ==========================================  ===============================================
note      classify (backend choice, resume, Ray)      ``message``: a line for the user
step      convert (each stage as it starts)           ``message``: what it is doing now
start     classify (files found)                      ``total``
progress  classify (rows written so far)              ``done`` (of ``total`` from ``start``)
epoch     train (each finished epoch)                 ``message``, ``done``/``total`` epochs, ``data``:
                                                      the history row, ``eta_s``, ``best_epoch``
status    run_bench (what is being measured now)      ``message``
row       run_bench (each finished model x backend)   ``message``: the row in one line
========  ==========================================  ===============================================

An exception raised by the receiver propagates out of the library call (the tests stop a training
run after its first epoch that way); the library's cleanup runs as for any other error.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

__all__ = ["Event", "Emit", "null_emit", "Recorder", "KINDS"]

KINDS = ("note", "step", "start", "progress", "epoch", "status", "row")


@dataclass(frozen=True)
class Event:
    kind: str
    message: str = ""
    done: int | None = None
    total: int | None = None
    data: Mapping[str, Any] = field(default_factory=dict)


Emit = Callable[[Event], None]


def null_emit(event: Event) -> None:
    """The receiver of a caller that does not listen."""


class Recorder:
    """An ``Emit`` that keeps every event, for tests: ``rec.kinds`` is the sequence of kinds."""

    def __init__(self) -> None:
        self.events: list[Event] = []

    def __call__(self, event: Event) -> None:
        self.events.append(event)

    @property
    def kinds(self) -> list[str]:
        return [e.kind for e in self.events]

    def of(self, kind: str) -> list[Event]:
        return [e for e in self.events if e.kind == kind]
