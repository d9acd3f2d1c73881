"""A model's class names: read from a file in any common form, or named by its output width.

One place for the rules every command shares: 2 to ``MAX_CLASSES`` unique names; a model with no list
gets ``class_0 .. class_{N-1}``, and CIFAR-10's names only when it has exactly 10 outputs (with a note,
since a 10-class model need not be CIFAR-10's).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from cifarbench import CIFAR10_CLASSES
from cifarbench.errors import UsageError

MAX_CLASSES = 100_000
MAX_CLASS_FILE_BYTES = 64 << 20  # 100,000 ImageNet-21k-style lines are ~5 MB


def read_classes(path: str | os.PathLike[str] | None) -> list[str]:
    """Class names from a text file (one per line), a JSON list, or a JSON object; CIFAR-10's by default.

    An object maps indices to names (``{"0": "tench", ...}``, values may be ``[id, name]`` lists as in
    ImageNet's class index: the last item is the name, and a name given twice gets its id, as in
    "crane (n02012849)") or names to indices (``{"tench": 0, ...}``).
    Between 2 and ``MAX_CLASSES`` unique, non-empty names; anything else is a UsageError (exit 2).
    """
    if path is None:
        return list(CIFAR10_CLASSES)
    try:
        size = Path(path).stat().st_size
        if size > MAX_CLASS_FILE_BYTES:  # checked before reading: a wrong path must not fill the memory
            raise UsageError(f"--classes {path}: {size:,} bytes is too large for a class list "
                             f"(at most {MAX_CLASS_FILE_BYTES // 2**20} MiB)")
        text = Path(path).read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"--classes {path}: unreadable ({exc})") from None
    try:
        names = _class_names(text)
    except (ValueError, TypeError, KeyError) as exc:
        raise UsageError(f"--classes {path}: {exc}; use one name per line, a JSON list or a JSON object") from None
    if len(names) < 2 or len(names) > MAX_CLASSES:
        raise UsageError(f"--classes {path}: need 2 to {MAX_CLASSES:,} class names, got {len(names)}")
    if any(not n for n in names):
        raise UsageError(f"--classes {path}: a class name is empty")
    seen: set[str] = set()
    dup = next((n for n in names if n in seen or seen.add(n)), None)  # one pass: 100,000 names stay instant
    if dup is not None:
        raise UsageError(f"--classes {path}: class name {dup!r} appears twice")
    return names


def _class_names(text: str) -> list[str]:
    head = text.lstrip()[:1]
    if head not in ("[", "{"):
        return [ln.strip() for ln in text.splitlines() if ln.strip()]
    data = json.loads(text)
    if isinstance(data, list):
        return _disambiguate(data, [_name(v) for v in data])
    if not isinstance(data, dict) or not data:
        raise ValueError("not a JSON list or object of class names")
    if all(isinstance(v, int) and not isinstance(v, bool) for v in data.values()):  # name -> index
        pairs = sorted((int(v), str(k).strip()) for k, v in data.items())
        raw: list[Any] = []
    else:  # index -> name
        items = sorted((int(k), v) for k, v in data.items())
        pairs, raw = [(i, _name(v)) for i, v in items], [v for _, v in items]
    if [i for i, _ in pairs] != list(range(len(pairs))):
        raise ValueError("the indices are not 0..N-1 without gaps")
    return _disambiguate(raw, [n for _, n in pairs])


def _disambiguate(raw: list[Any], names: list[str]) -> list[str]:
    """Names that repeat but come as ``[id, name]`` pairs get their id: ImageNet's index names two classes
    "crane" (n02012849 the bird, n03126707 the machine) and two "maillot"; "crane (n02012849)" keeps both."""
    counts: dict[str, int] = {}
    for n in names:
        counts[n] = counts.get(n, 0) + 1
    out = list(names)
    for i, (v, n) in enumerate(zip(raw, names)):
        if counts[n] > 1 and isinstance(v, list) and len(v) >= 2 and isinstance(v[0], (str, int)) \
                and not isinstance(v[0], bool) and str(v[0]).strip():
            out[i] = f"{n} ({str(v[0]).strip()})"
    return out


def _name(v: Any) -> str:
    if isinstance(v, list) and v:
        v = v[-1]
    if not isinstance(v, (str, int)) or isinstance(v, bool):
        raise ValueError(f"{v!r} is not a class name")
    return str(v).strip()


def default_classes(n_outputs: int) -> tuple[list[str], str | None]:
    """Names for a model given no class list: CIFAR-10's for 10 outputs (with a note), else class_0..class_{N-1}."""
    if n_outputs == len(CIFAR10_CLASSES):
        return list(CIFAR10_CLASSES), ("no class list: the model's 10 outputs are named as CIFAR-10's classes "
                                       "(pass --classes FILE if they are not)")
    return [f"class_{i}" for i in range(n_outputs)], None
