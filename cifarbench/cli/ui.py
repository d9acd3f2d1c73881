"""Rendering helpers shared by the commands: a stderr console, a transient progress bar, library events."""

from __future__ import annotations

import contextlib
import sys
from typing import Iterator

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from cifarbench.events import Event


def stderr_console() -> Console:
    return Console(stderr=True, highlight=False)


def stdout_console() -> Console:
    """Tables for data: when piped or captured, wide enough that columns are never truncated."""
    con = Console(highlight=False, soft_wrap=True)
    if not con.is_terminal:
        con = Console(highlight=False, soft_wrap=True, width=200)
    return con


class _NoProgress:
    def advance(self, n: int = 1) -> None:
        pass

    def update(self, **kwargs: object) -> None:
        pass


class _Bar:
    def __init__(self, progress: Progress, task: int) -> None:
        self.progress, self.task = progress, task

    def advance(self, n: int = 1) -> None:
        self.progress.advance(self.task, n)

    def update(self, **kwargs: object) -> None:
        self.progress.update(self.task, **kwargs)  # type: ignore[arg-type]


@contextlib.contextmanager
def progress_bar(total: int | None, description: str, quiet: bool = False) -> Iterator[_Bar | _NoProgress]:
    """A transient bar on stderr, only when stderr is a terminal and not --quiet."""
    if quiet or not sys.stderr.isatty():
        yield _NoProgress()
        return
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=stderr_console(), transient=True) as progress:
        yield _Bar(progress, progress.add_task(description, total=total))


class EventPrinter:
    """An ``Emit`` that renders library events (``cifarbench.events``) on stderr.

    ``note`` and ``step``: "<command>: message" lines; ``epoch``: the message as a line; ``start``,
    ``progress`` and ``status`` drive ``bar``; ``row``: a line printed above the bar, which advances.
    ``quiet`` drops the lines; the bar is already a no-op under --quiet and off a terminal.
    """

    def __init__(self, command: str, quiet: bool = False, bar: _Bar | _NoProgress | None = None) -> None:
        self.command, self.quiet = command, quiet
        self.bar = bar or _NoProgress()

    def __call__(self, event: Event) -> None:
        if event.kind == "start":
            self.bar.update(total=event.total)
        elif event.kind == "progress":
            self.bar.update(completed=event.done)
        elif event.kind == "status":
            self.bar.update(description=event.message)
        elif event.kind == "row":
            self.bar.update(description=event.message)
            if not self.quiet:
                console = self.bar.progress.console if isinstance(self.bar, _Bar) else stderr_console()
                console.print(event.message, markup=False, highlight=False, soft_wrap=True)
            self.bar.advance()
        elif not self.quiet:
            click.echo(f"{self.command}: {event.message}" if event.kind in ("note", "step") else event.message, err=True)
