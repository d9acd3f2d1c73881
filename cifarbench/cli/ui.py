"""Rendering helpers shared by the commands: a stderr console and a transient progress bar."""

from __future__ import annotations

import contextlib
import sys
from typing import Iterator

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn


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
