"""The results.json schema: derived from bench.Row, a small validator, loading (and upgrading version 1 files).

The row schema is built from ``bench.Row``'s fields and annotations, so a field added to the
row is required and typed in the schema without a second edit; the few nested shapes the views
read (latency, throughput, quality, agreement) are spelled out in ``_DETAIL``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import types
import typing
from pathlib import Path
from typing import Any

from cifarbench.bench.row import Row
from cifarbench.bench.runner import SCHEMA, SCHEMA_VERSION
from cifarbench.errors import DataError

_NUM = {"type": ["number", "null"]}
_LATENCY = {"type": "object", "properties": {k: _NUM for k in (
    "n", "p50_ms", "p90_ms", "p95_ms", "p99_ms", "mean_ms", "std_ms", "min_ms", "max_ms", "total_s")}}
_THROUGHPUT = {"type": "object", "required": ["batch_size", "calls", "images", "seconds", "images_per_s"],
               "properties": {"batch_size": {"type": "integer"}, "calls": {"type": "integer"},
                              "images": {"type": "integer"}, "seconds": {"type": "number"}, "images_per_s": _NUM,
                              "latency": _LATENCY}}  # per-call percentiles at that batch size (optional: v2 files)
_DETAIL: dict[str, Any] = {  # sub-schemas of the fields whose inner shape the views read
    "status": {"enum": ["ok", "skipped", "failed"]},
    "latency": _LATENCY, "throughput": {"type": "array", "items": _THROUGHPUT},
    "quality": {"type": "object", "properties": {
        "accuracy": {"type": "number"}, "support": {"type": "integer"},
        "macro": {"type": "object", "required": ["precision", "recall", "f1"]},
        "weighted": {"type": "object", "required": ["precision", "recall", "f1"]},
        "top5": _NUM, "per_class": {"type": "object"}, "confusion": {"type": "array", "items": {"type": "array"}},
        "confusion_sparse": {"type": "array", "items": {"type": "array"}},  # [true, predicted, count] beyond 100 classes
        "most_confused": {"type": "array", "items": {"type": "object", "required": ["true", "predicted", "count"]}}}},
    "agreement": {"type": "object", "properties": {"reference": {"type": "string"}, "top1": {"type": "number"},
                                                    "max_abs_dprob": {"type": "number"}}},
    "warnings": {"type": "array", "items": {"type": "string"}},
    "flags": {"type": "array", "items": {"type": "string"}},
}
_JSON_TYPES = {str: "string", int: "integer", float: "number", bool: "boolean", dict: "object", list: "array",
               type(None): "null"}


def _json_types(hint: Any) -> list[str]:
    """JSON types of a dataclass field's annotation (``float | None`` -> number, null)."""
    args = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
    return [_JSON_TYPES[typing.get_origin(a) or a] for a in args]


def row_schema() -> dict[str, Any]:
    """The results row schema, derived from bench.Row: every field required, typed from its annotation."""
    hints = typing.get_type_hints(Row)
    props = {}
    for f in dataclasses.fields(Row):
        t = _json_types(hints[f.name])
        props[f.name] = {**{"type": t if len(t) > 1 else t[0]}, **_DETAIL.get(f.name, {})}
    return {"type": "object", "required": [f.name for f in dataclasses.fields(Row)], "properties": props}


_ROW = row_schema()
RESULTS_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": f"{SCHEMA} results, version {SCHEMA_VERSION}",
    "type": "object",
    "required": ["schema", "schema_version", "cifarbench_version", "created", "command", "config", "definitions",
                 "environment", "data", "models", "results", "warnings"],
    "properties": {
        "schema": {"const": SCHEMA}, "schema_version": {"const": SCHEMA_VERSION},
        "cifarbench_version": {"type": "string"}, "created": {"type": "string"}, "command": {"type": "string"},
        "wall_s": {"type": "number"}, "config": {"type": "object"},
        "definitions": {"type": "object", "required": ["throughput", "latency"]},
        "environment": {"type": "object", "required": ["cpu", "versions", "command", "threads_requested"]},
        "data": {"type": "object", "required": ["source", "images", "decode"]},
        "models": {"type": "object"},
        "results": {"type": "array", "items": _ROW},
        "warnings": {"type": "array", "items": {"type": "string"}},
    },
}
_TYPES = {"object": dict, "array": list, "string": str, "number": (int, float), "integer": int, "boolean": bool, "null": type(None)}


def validate(doc: Any, schema: dict[str, Any] = RESULTS_SCHEMA, where: str = "$") -> list[str]:
    """Errors of ``doc`` against the JSON-Schema subset used here (type, const, enum, required, properties, items)."""
    errs: list[str] = []
    if "const" in schema and doc != schema["const"]:
        errs.append(f"{where}: expected {schema['const']!r}, got {doc!r}")
    if "enum" in schema and doc not in schema["enum"]:
        errs.append(f"{where}: {doc!r} not one of {schema['enum']}")
    if "type" in schema:
        types = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
        ok = any(isinstance(doc, _TYPES[t]) and not (t in ("number", "integer") and isinstance(doc, bool)) for t in types)
        if not ok:
            return errs + [f"{where}: expected {'/'.join(types)}, got {type(doc).__name__}"]
    if isinstance(doc, dict):
        errs += [f"{where}: missing {k!r}" for k in schema.get("required", []) if k not in doc]
        for k, sub in schema.get("properties", {}).items():
            if k in doc:
                errs += validate(doc[k], sub, f"{where}.{k}")
    if isinstance(doc, list) and "items" in schema:
        for i, item in enumerate(doc):
            errs += validate(item, schema["items"], f"{where}[{i}]")
    return errs


def load_results(path: str | os.PathLike[str]) -> dict[str, Any]:
    try:
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: unreadable results ({exc})") from None
    errs = validate(upgrade(doc))
    if errs:
        raise DataError(f"{path}: not {SCHEMA} version {SCHEMA_VERSION} results ({errs[0]})")
    return doc


# Row fields added within version 2 (optional sections, empty when absent): older version-2 files gain them empty.
ADDED_IN_V2 = ("profile",)


def upgrade(doc: Any) -> Any:
    """Version 1 results (before thread sweeps, repeats and scenarios) in version 2 shape, in place; version 2
    files written before a field of ADDED_IN_V2 existed get it empty."""
    if isinstance(doc, dict) and doc.get("schema") == SCHEMA and doc.get("schema_version") in (1, SCHEMA_VERSION):
        blank = dataclasses.asdict(Row(model="", backend=""))
        keys = blank if doc.get("schema_version") == 1 else ADDED_IN_V2
        for r in doc.get("results") or []:
            if isinstance(r, dict):
                for k in keys:
                    r.setdefault(k, blank[k])
        doc["schema_version"] = SCHEMA_VERSION
    return doc
