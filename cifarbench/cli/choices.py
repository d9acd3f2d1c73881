"""Option types read from the library's registries when used, not when imported.

A backend registered after the CLI modules were imported (a plug-in, a test) is
accepted, listed in --help and completed like the built-in ones.
"""

from __future__ import annotations

from typing import Any, Sequence

import click


class BackendChoice(click.Choice):
    """``--backend``: every registered backend, plus ``extra`` names such as ``auto``."""

    def __init__(self, extra: Sequence[str] = ("auto",)) -> None:
        self._extra = tuple(extra)
        super().__init__((), case_sensitive=True)

    @property  # type: ignore[override]
    def choices(self) -> tuple[str, ...]:
        from cifarbench.backends import BACKENDS

        return tuple(BACKENDS) + self._extra

    @choices.setter
    def choices(self, value: Any) -> None:  # click.Choice.__init__ assigns it; the registry is the source
        pass
