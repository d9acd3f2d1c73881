"""Execution engines for ``classify``: where decoding and inference run.

``local`` is the in-process pipeline of :mod:`cifarbench.runs.classify`; every other engine is one module
and one registry entry here, imported only when used (so ``local`` runs never import Ray). An engine
only computes rows for the files the driver hands it; discovery, ``--resume``, the lock, the atomic
output and the writers stay in ``classify`` and do not depend on the engine.
"""

from __future__ import annotations

from dataclasses import dataclass

from cifarbench.errors import UsageError

# name -> (module under cifarbench.engines, or "" for the built-in pipeline; one-line description)
ENGINES: dict[str, tuple[str, str]] = {
    "local": ("", "this process: a decode pool and the runtime's threads"),
    "ray": ("ray_engine", "a Ray cluster via Ray Data: decode tasks and an actor pool (extra `ray`)"),
}


@dataclass(frozen=True)
class EngineOptions:
    """``--engine``, ``--ray-address`` and ``--actors``, validated once."""

    name: str = "local"
    ray_address: str | None = None  # None: $RAY_ADDRESS, else a local Ray started for the run
    actors: int | None = None  # None: as many as the cluster's CPUs hold

    def __post_init__(self) -> None:
        if self.name not in ENGINES:
            raise UsageError(f"unknown engine {self.name!r}; choose from {', '.join(ENGINES)}")
        if self.actors is not None and self.actors < 1:
            raise UsageError(f"--actors must be at least 1, got {self.actors}")
        if self.name == "local" and (self.ray_address or self.actors is not None):
            raise UsageError("--ray-address and --actors need --engine ray")
