"""Classification quality and latency statistics, in numpy only."""

from __future__ import annotations

from fractions import Fraction
from typing import Any, Sequence

import numpy as np


def images_in(fraction: float, n: int) -> int:
    """The whole number of images behind a fraction of ``n`` (an accuracy, an agreement, a difference of two)."""
    return round(fraction * n)


def exceeds_pp(images: int, n: int, threshold_pp: float) -> bool:
    """Whether ``images`` out of ``n`` is more than ``threshold_pp`` percentage points, decided on integers.

    On floats, (0.50 - 0.49) * 100 is 1.0000000000000009 > 1: one image in a hundred would exceed "more than 1 pp".
    The threshold is read as the decimal it is written as (0.3 is 3/10), so 3 images of 1,000 is not above 0.3 pp.
    """
    t = Fraction(str(threshold_pp))
    return n > 0 and images * 100 * t.denominator > t.numerator * n


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """Rows are true classes, columns predicted classes.

    Labels outside ``[0, num_classes)`` raise: a -1 would otherwise wrap into the last class unnoticed.
    """
    t, p = np.asarray(y_true, np.int64).ravel(), np.asarray(y_pred, np.int64).ravel()
    if t.shape != p.shape:
        raise ValueError(f"y_true has {t.size} labels, y_pred {p.size}")
    for name, a in (("y_true", t), ("y_pred", p)):
        if a.size and (a.min() < 0 or a.max() >= num_classes):
            raise ValueError(f"{name} holds labels outside 0..{num_classes - 1}")
    cm = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(cm, (t, p), 1)
    return cm


def top_k_accuracy(probs: np.ndarray, y_true: np.ndarray, k: int = 5) -> float | None:
    """Share of images whose true class is among the ``k`` highest scores; None with fewer than ``k`` classes.

    Ties at the k-th score count against the image (a stable sort keeps the lower class index), as a
    hit must be strictly among the k shown. None when the model has fewer than ``k`` classes: top-k is
    then trivially 1 and would only mislead.
    """
    p = np.asarray(probs)
    t = np.asarray(y_true, np.int64).ravel()
    if p.ndim != 2 or p.shape[0] != t.size:
        raise ValueError(f"probs of shape {p.shape} do not match {t.size} labels")
    if p.shape[1] < k or t.size == 0:
        return None
    top = np.argsort(-p, axis=1, kind="stable")[:, :k]
    return float((top == t[:, None]).any(axis=1).mean())


MOST_CONFUSED = 20  # pairs listed in reports and plotted instead of the matrix for many classes
DENSE_CONFUSION_MAX = 100  # above this many classes, results.json keeps the non-zero cells only


def most_confused(cm: np.ndarray, class_names: Sequence[str], n: int = MOST_CONFUSED) -> list[dict[str, Any]]:
    """The ``n`` largest off-diagonal cells: what a 1000x1000 matrix hides, as (true, predicted, count) rows.

    Ordered by count, then by true and predicted index (deterministic); ``share`` is the count over the
    true class's support.
    """
    cm = np.asarray(cm, np.int64)
    off = cm.copy()
    np.fill_diagonal(off, 0)
    i, j = np.nonzero(off)
    counts = off[i, j]
    order = np.lexsort((j, i, -counts))[:n]
    support = cm.sum(axis=1)
    return [{"true": class_names[i[o]], "predicted": class_names[j[o]], "count": int(counts[o]),
             "share": float(counts[o] / support[i[o]])} for o in order]


def sparse_confusion(cm: np.ndarray) -> list[list[int]]:
    """``[true, predicted, count]`` of every non-zero cell: at most one per image, however many classes."""
    cm = np.asarray(cm, np.int64)
    i, j = np.nonzero(cm)
    return [[int(a), int(b), int(cm[a, b])] for a, b in zip(i, j)]


def dense_confusion(sparse: Sequence[Sequence[int]], num_classes: int) -> np.ndarray:
    """The matrix back from ``sparse_confusion``."""
    cm = np.zeros((num_classes, num_classes), np.int64)
    for a, b, c in sparse:
        cm[a, b] = c
    return cm


def classification_report(cm: np.ndarray, class_names: Sequence[str]) -> dict[str, Any]:
    """Per-class precision/recall/F1/support plus macro and weighted averages.

    A class never predicted has precision 0 (not NaN), as scikit-learn's zero_division=0.
    """
    cm = np.asarray(cm, dtype=np.float64)
    tp = np.diag(cm)
    support = cm.sum(axis=1)
    predicted = cm.sum(axis=0)
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    recall = np.divide(tp, support, out=np.zeros_like(tp), where=support > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(tp), where=denom > 0)
    total = support.sum()
    weights = support / total if total else np.zeros_like(support)
    per_class = {
        name: {"precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]), "support": int(support[i])}
        for i, name in enumerate(class_names)
    }
    return {
        "accuracy": float(tp.sum() / total) if total else 0.0,
        "per_class": per_class,
        "macro": {"precision": float(precision.mean()), "recall": float(recall.mean()), "f1": float(f1.mean())},
        "weighted": {
            "precision": float((precision * weights).sum()),
            "recall": float((recall * weights).sum()),
            "f1": float((f1 * weights).sum()),
        },
        "support": int(total),
    }


def format_report(report: dict[str, Any]) -> str:
    """The familiar text classification report."""
    names = list(report["per_class"])
    w = max(12, max(len(n) for n in names) + 2)
    lines = [f"{'':>{w}} {'precision':>9} {'recall':>9} {'f1-score':>9} {'support':>9}", ""]
    for n in names:
        r = report["per_class"][n]
        lines.append(f"{n:>{w}} {r['precision']:9.4f} {r['recall']:9.4f} {r['f1']:9.4f} {r['support']:9d}")
    lines.append("")
    lines.append(f"{'accuracy':>{w}} {'':>9} {'':>9} {report['accuracy']:9.4f} {report['support']:9d}")
    for avg in ("macro", "weighted"):
        r = report[avg]
        lines.append(f"{avg + ' avg':>{w}} {r['precision']:9.4f} {r['recall']:9.4f} {r['f1']:9.4f} {report['support']:9d}")
    return "\n".join(lines) + "\n"


def latency_stats(seconds: Sequence[float]) -> dict[str, float]:
    """Percentiles use numpy's default (linear) interpolation; values in milliseconds."""
    a = np.asarray(seconds, dtype=np.float64) * 1000.0
    if a.size == 0:
        return {}
    p = np.percentile(a, [50, 90, 95, 99])
    return {
        "n": int(a.size),
        "p50_ms": float(p[0]),
        "p90_ms": float(p[1]),
        "p95_ms": float(p[2]),
        "p99_ms": float(p[3]),
        "mean_ms": float(a.mean()),
        "std_ms": float(a.std(ddof=1)) if a.size > 1 else 0.0,
        "min_ms": float(a.min()),
        "max_ms": float(a.max()),
    }
