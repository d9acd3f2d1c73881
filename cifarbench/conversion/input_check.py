"""Does a foreign model get the input it expects? The checks convert makes before anyone trusts its artifacts.

A model converted with the wrong preprocessing still converts, agrees with itself at 100 % and scores
like a coin. So for a model cifarbench did not train, convert scores the reference under every
preset on the parity images and warns, naming the preset, when one the user did not pass scores
clearly better; it also warns when the test-split accuracy is near chance. Both warnings are one
line each and are kept in the manifest (``metrics.input_check``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from cifarbench.models.manifest import parse_preprocess

# Candidates: Keras applications' modes and plain 0-1 scaling (the commonest export of all).
CANDIDATES = ("none", "torch", "tf", "caffe", "scale:1/255")
BETTER_PP = 10  # a preset is "clearly better" by this many accuracy points (an integer: decided on counts)...
BETTER_IMAGES = 5  # ...and by at least this many images (small samples flip on ties)
CHANCE_FACTOR = 1.5  # accuracy under 1.5 x chance (1 / classes) is "near chance"
MAX_IMAGES = 256  # the preset scan runs each candidate on at most this many parity images (5 passes: cheap at 224x224 too)


def _same(a: str, b: str) -> bool:
    return parse_preprocess(a) == parse_preprocess(b)


def preset_scan(source: Any, pixels: np.ndarray, labels: np.ndarray, chosen: str) -> dict[str, Any]:
    """Accuracy of the reference under each candidate preprocessing; ``warning`` names a clearly better one."""
    x, y = pixels[:MAX_IMAGES], labels[:MAX_IMAGES]
    n = int(len(y))
    right: dict[str, int] = {}  # images right under each preset: the rule below is decided on these counts
    for name in CANDIDATES:
        try:
            raw = source.scores_with(x, parse_preprocess(name))
        except Exception:  # a preset the model cannot run (overflow, NaN): it simply does not score
            continue
        right[name] = int((np.asarray(raw).argmax(1) == y).sum())
    mine = next((v for k, v in right.items() if _same(k, chosen)), None)
    if mine is None:
        mine = int((np.asarray(source.scores_with(x, parse_preprocess(chosen))).argmax(1) == y).sum())
    share = (lambda k: k / n) if n else (lambda k: 0.0)
    out: dict[str, Any] = {"chosen": chosen or "none", "images": n, "accuracy": {k: share(v) for k, v in right.items()},
                           "chosen_accuracy": share(mine)}
    others = {k: v for k, v in right.items() if not _same(k, chosen)}
    if others:
        best = max(others, key=lambda k: others[k])
        gain = others[best] - mine  # images; >= BETTER_PP points of n on integers (60 vs 50 of 100 is 10 pp, not 9.99)
        if gain * 100 >= BETTER_PP * n and gain >= BETTER_IMAGES:
            out["better"] = best
            out["warning"] = (f"--preprocess {best} scores {share(others[best]) * 100:.1f} % on {n} parity images "
                              f"against {share(mine) * 100:.1f} % with {chosen or 'none'}: the model probably expects "
                              f"--preprocess {best}")
    return out


def near_chance(accuracy: float, n_classes: int, where: str) -> str | None:
    """A one-line warning when ``accuracy`` is under ``CHANCE_FACTOR`` x chance, else None."""
    chance = 1.0 / max(1, n_classes)
    if accuracy * max(1, n_classes) < CHANCE_FACTOR - 1e-9:  # exactly 1.5 x chance is not "near"
        return (f"{where} accuracy {accuracy * 100:.1f} % is near chance ({chance * 100:.1f} % for {n_classes} classes): "
                "check --preprocess, --classes and the class order")
    return None
