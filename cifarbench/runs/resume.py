"""``classify --resume`` bookkeeping: which rows of an earlier output can be kept.

``--resume`` keeps rows of an earlier run whose file has the same path, size and mtime. Those three
facts live in a sidecar ``<output>.state.json``, written after the output and tied to it by the
output's SHA-256; if the pair does not match, or the model or options changed, every file is
classified again, so a resumed run always equals a fresh one. Failed rows are always retried.
Paths are compared as the injective ``display_text`` the output shows, so two names never merge.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Sequence

from cifarbench.atomic import atomic_write
from cifarbench.data.discover import FileEntry
from cifarbench.runs.writers import RowWriter, display_text

STATE_SUFFIX = ".state.json"
STATE_SCHEMA = 1


def state_path_for(output: str | os.PathLike[str]) -> Path:
    o = Path(output)
    return o.with_name(o.name + STATE_SUFFIX)


def load_previous(output: Path, writer: RowWriter, fingerprint: dict[str, Any]) -> tuple[dict[tuple[str, int, int], str], str | None]:
    """Reusable rows of an earlier run, keyed by (path, size, mtime_ns), and a note if none could be used."""
    state_file = state_path_for(output)
    if not output.exists():
        return {}, None
    try:
        state = json.loads(state_file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}, f"no {state_file.name} beside {output.name}: classifying every file"
    except (OSError, ValueError) as exc:
        return {}, f"unreadable {state_file.name} ({exc}): classifying every file"
    from cifarbench.models.manifest import sha256_file

    try:
        digest = sha256_file(output)
    except OSError as exc:
        return {}, f"cannot read {output.name} ({exc.strerror or exc}): classifying every file"
    if not isinstance(state, dict) or state.get("schema") != STATE_SCHEMA or state.get("output_sha256") != digest:
        return {}, f"{output.name} changed since {state_file.name} was written: classifying every file"
    if state.get("fingerprint") != fingerprint:
        return {}, "model or options changed since the last run: classifying every file"
    files = state.get("files") or []
    kept: dict[tuple[str, int, int], str] = {}
    try:
        with open(output, encoding="utf-8", newline="") as fh:
            rows = list(writer.read(fh))
        if len(rows) != len(files):
            raise ValueError("row count differs from the state")
        for (path, size, mtime_ns), row in zip(files, rows):
            if row.path != display_text(path):
                raise ValueError("rows are not in the recorded order")
            if not row.failed:
                kept[(path, int(size), int(mtime_ns))] = row.text
    except (OSError, ValueError, TypeError, UnicodeDecodeError) as exc:
        return {}, f"cannot reuse {output.name} ({exc}): classifying every file"
    return kept, None


def write_state(output: Path, entries: Sequence[FileEntry], fingerprint: dict[str, Any]) -> None:
    from cifarbench.models.manifest import sha256_file

    state = {"schema": STATE_SCHEMA, "tool": "cifarbench classify", "fingerprint": fingerprint,
             "output_sha256": sha256_file(output), "files": [[e.path, e.size, e.mtime_ns] for e in entries]}
    with atomic_write(state_path_for(output)) as fh:
        json.dump(state, fh, ensure_ascii=True, separators=(",", ":"))  # ASCII: names with any bytes survive
        fh.write("\n")
