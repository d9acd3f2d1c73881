"""One bench result row: what runner, derive, the results schema and the reports share (a module of its own, so
derive's figures need not import the runner that calls them)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Row:
    """One (model, backend, threads) result; ``status`` is ok, skipped (with the reason) or failed."""

    model: str
    backend: str
    threads: int | None = None
    status: str = "ok"
    reason: str | None = None
    format: str | None = None
    file: str | None = None
    size_bytes: int | None = None
    load_s: float | None = None
    first_call_ms: float | None = None
    latency: dict[str, Any] = field(default_factory=dict)
    throughput: list[dict[str, Any]] = field(default_factory=list)
    server: dict[str, Any] = field(default_factory=dict)
    eval: dict[str, Any] = field(default_factory=dict)
    quality: dict[str, Any] = field(default_factory=dict)
    tta: dict[str, Any] = field(default_factory=dict)  # --tta: mode, views, accuracy, img/s and cost vs single view
    agreement: dict[str, Any] = field(default_factory=dict)
    speedup: float | None = None
    speedup_by_batch: dict[str, float] = field(default_factory=dict)  # str(batch size) -> ratio, for JSON keys
    accuracy_delta_pp: float | None = None
    int8_loss_pp: float | None = None
    manifest_int8_loss_pp: float | None = None  # the parity check's, recorded by convert
    flags: list[str] = field(default_factory=list)
    repeat: dict[str, Any] = field(default_factory=dict)
    peak_rss_mb: float | None = None
    rss_delta_mb: float | None = None
    isolated: bool = False
    pinned_cpus: list[int] | None = None  # isolated rows with --threads N run pinned to N usable CPUs
    runtime: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    profile: dict[str, Any] = field(default_factory=dict)  # --profile: runtime, file, top_ops (or why unavailable)
