"""Runtime tuning a user can ask for, as benchmark_app / onnxruntime_perf_test offer it: one typed value, validated
once, passed whole to the backend that loads; each backend reads the fields for its runtime and ignores the rest.

Every field's default (None / False) means "what the backend does without it", so defaults are unchanged.
``profile_dir``: each runtime's own per-op profile goes there (see cifarbench.backends.profiling).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

from cifarbench.errors import UsageError

OV_HINTS = ("latency", "throughput")
ORT_OPT_LEVELS = ("disable", "basic", "extended", "all")  # onnxruntime's GraphOptimizationLevel, in order

# Which runtime reads which field (for the record a row keeps: only what concerns its runtime).
_RUNTIME_FIELDS = {"openvino": ("ov_hint", "ov_streams"), "onnxruntime": ("ort_opt_level", "ort_providers"),
                   "ai-edge-litert": ("xnnpack",)}


@dataclass(frozen=True)
class RuntimeOptions:
    ov_hint: str | None = None  # None: LATENCY-compiled model at batch 1, THROUGHPUT above (the backend's default)
    ov_streams: int | None = None  # OpenVINO NUM_STREAMS of the throughput model (None: the hint's choice)
    ort_opt_level: str | None = None  # None: all (ORT_ENABLE_ALL), as before
    ort_providers: tuple[str, ...] = ()  # execution providers tried before CPUExecutionProvider, e.g. OpenVINO
    xnnpack: bool | None = None  # LiteRT's XNNPACK delegate; None: on (LiteRT's default)
    profile_dir: str | None = None  # write each runtime's per-op profile here

    def __post_init__(self) -> None:
        if self.ov_hint is not None and self.ov_hint not in OV_HINTS:
            raise UsageError(f"--ov-hint must be one of {', '.join(OV_HINTS)}, got {self.ov_hint!r}")
        if self.ov_streams is not None and (isinstance(self.ov_streams, bool) or not isinstance(self.ov_streams, int)
                                            or self.ov_streams < 1):
            raise UsageError(f"--ov-streams must be an integer >= 1, got {self.ov_streams!r}")
        if self.ort_opt_level is not None and self.ort_opt_level not in ORT_OPT_LEVELS:
            raise UsageError(f"--ort-opt-level must be one of {', '.join(ORT_OPT_LEVELS)}, got {self.ort_opt_level!r}")
        if isinstance(self.ort_providers, str) or not all(isinstance(p, str) and p for p in self.ort_providers):
            raise UsageError(f"--ort-provider takes provider names, got {self.ort_providers!r}")
        object.__setattr__(self, "ort_providers", tuple(dict.fromkeys(self.ort_providers)))

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> "RuntimeOptions":
        """From ``as_dict``'s JSON (a bench row crossing into its isolated process)."""
        d = dict(d or {})
        unknown = set(d) - {f.name for f in fields(cls)}
        if unknown:
            raise UsageError(f"unknown runtime option(s): {', '.join(sorted(unknown))}")
        if "ort_providers" in d:
            d["ort_providers"] = tuple(d["ort_providers"] or ())
        return cls(**d)

    def as_dict(self) -> dict[str, Any]:
        """The fields set away from their defaults (JSON-able)."""
        default = RuntimeOptions()
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items()
                if v != getattr(default, k)}

    def for_runtime(self, runtime: str) -> dict[str, Any]:
        """The tuning fields ``runtime`` (describe()'s "runtime") reads, as set: what its row records."""
        chosen = self.as_dict()
        return {k: chosen[k] for k in _RUNTIME_FIELDS.get(runtime, ()) if k in chosen}


DEFAULT = RuntimeOptions()
