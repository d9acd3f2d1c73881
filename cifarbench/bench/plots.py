"""Optional matplotlib plots; every function returns False when matplotlib is missing."""

from __future__ import annotations

import os
from typing import Any, Sequence

import numpy as np


def _pyplot() -> Any | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def plot_curves(history: Sequence[dict[str, float]], path: str | os.PathLike[str]) -> bool:
    plt = _pyplot()
    if plt is None or not history:
        return False
    ep = [h["epoch"] for h in history]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    a.plot(ep, [h["loss"] for h in history], "o-", label="train")
    if all("val_loss" in h for h in history):  # --val-size 0 trains without a validation slice
        a.plot(ep, [h["val_loss"] for h in history], "o-", label="val")
    a.set_xlabel("epoch"), a.set_ylabel("loss"), a.legend(), a.grid(alpha=0.3)
    b.plot(ep, [h["acc"] for h in history], "o-", label="train (augmented)")
    if all("val_acc" in h for h in history):
        b.plot(ep, [h["val_acc"] for h in history], "o-", label="val")
    b.set_xlabel("epoch"), b.set_ylabel("accuracy"), b.legend(), b.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


MATRIX_MAX_CLASSES = 30  # above this a matrix is unreadable: the most-confused pairs are plotted instead
ANNOTATE_MAX_CLASSES = 15  # counts written in the cells up to this many classes


def plot_confusion(cm: np.ndarray, class_names: Sequence[str], path: str | os.PathLike[str], title: str = "") -> bool:
    """The matrix up to MATRIX_MAX_CLASSES classes; beyond, a bar chart of the most-confused pairs."""
    plt = _pyplot()
    if plt is None:
        return False
    cm = np.asarray(cm)
    n = len(class_names)
    if n > MATRIX_MAX_CLASSES:
        from cifarbench.bench.metrics import most_confused

        return plot_confused_pairs(most_confused(cm, class_names), path, title, n)
    side = max(7.0, 0.3 * n + 2)
    fig, ax = plt.subplots(figsize=(side, side * 6 / 7))
    ax.imshow(cm, cmap="Blues")
    ax.set_xticks(range(n), class_names, rotation=45 if n <= ANNOTATE_MAX_CLASSES else 90, ha="right", fontsize=8)
    ax.set_yticks(range(n), class_names, fontsize=8)
    ax.set_xlabel("predicted"), ax.set_ylabel("true")
    if title:
        ax.set_title(title)
    thresh = cm.max() / 2 if cm.size else 0
    for i in range(cm.shape[0] if n <= ANNOTATE_MAX_CLASSES else 0):
        for j in range(cm.shape[1]):
            ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=7, color="white" if cm[i, j] > thresh else "black")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def log_ticks(lo: float, hi: float) -> list[float]:
    """Plain tick values in [lo, hi] for a log axis: 1-2-5 per decade, 1-1.5-2-3-5-7 when that gives fewer than
    three, and evenly spaced round numbers (steps of 1, 2, 2.5 or 5 x 10^k) for a range narrower still."""
    if not (lo > 0 and hi > lo):
        return []
    for mantissas in ((1, 2, 5), (1, 1.5, 2, 3, 5, 7)):
        ticks = [m * 10.0 ** e for e in range(int(np.floor(np.log10(lo))) - 1, int(np.ceil(np.log10(hi))) + 1)
                 for m in mantissas]
        inside = [t for t in ticks if lo <= t * (1 + 1e-9) and t <= hi * (1 + 1e-9)]
        if len(inside) >= 3:
            return inside
    mag = 10.0 ** np.floor(np.log10((hi - lo) / 4))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if (hi - lo) / (m * mag) <= 5)
    first = np.ceil(lo / step) * step
    return [float(v) for v in np.arange(first, hi + step * 1e-9, step)]


def plain_number(v: float) -> str:
    """1,000 and 300 and 1.5: what a tick says, never 3×10²."""
    return f"{v:,.0f}" if v >= 10 or float(v).is_integer() else f"{v:g}"


def _text_box(ann: Any, renderer: Any) -> Any:
    """An annotation's text in display pixels, without its leader line (which always reaches its own point)."""
    from matplotlib.text import Text

    ann.update_positions(renderer)
    return Text.get_window_extent(ann, renderer)


def place_labels(fig: Any, ax: Any, labels: Sequence[tuple[str, float, float]], fontsize: float = 8) -> list[Any]:
    """Annotate each (text, x, y) beside its point where it overlaps no other label, marker or the axes' edge.

    Greedy: candidate offsets right and left of the point, stepping further up and down (with a thin leader
    line once away from the point); the first free one wins, the nearest one when none is free.
    """
    from matplotlib.transforms import Bbox

    renderer = fig.canvas.get_renderer()
    frame = ax.get_window_extent(renderer)
    markers = [Bbox.from_bounds(px - 4, py - 4, 8, 8) for px, py in
               (ax.transData.transform((x, y)) for _, x, y in labels)]
    placed: list[Any] = []
    out = []
    steps = [0] + [s * k for k in range(1, 9) for s in (1, -1)]
    candidates = [(dx, 3 + 11 * k) for k in steps for dx in (6, -6)]
    for text, x, y in labels:
        best = None
        for dx, dy in candidates:
            ann = ax.annotate(text, (x, y), xytext=(dx, dy), textcoords="offset points", fontsize=fontsize,
                              ha="left" if dx > 0 else "right", va="center",
                              arrowprops={"arrowstyle": "-", "lw": 0.6, "color": "0.4", "shrinkB": 4} if dy != 3 else None)
            box = _text_box(ann, renderer)
            free = (frame.contains(box.x0, box.y0) and frame.contains(box.x1, box.y1)
                    and not any(box.overlaps(o) for o in placed + markers))
            if free:
                best = (ann, box)
                break
            ann.remove()
        if best is None:  # crowded: the first candidate, overlapping
            ann = ax.annotate(text, (x, y), xytext=candidates[0], textcoords="offset points", fontsize=fontsize,
                              ha="left", va="center")
            best = (ann, _text_box(ann, renderer))
        placed.append(best[1])
        out.append(best[0])
    return out


def plot_confused_pairs(pairs: Sequence[dict[str, Any]], path: str | os.PathLike[str], title: str = "",
                        num_classes: int | None = None) -> bool:
    """Horizontal bars: the most-confused (true -> predicted) pairs and their counts, largest on top."""
    plt = _pyplot()
    if plt is None:
        return False
    fig, ax = plt.subplots(figsize=(8, 0.3 * max(len(pairs), 1) + 1.8))
    y = np.arange(len(pairs))
    ax.barh(y, [p["count"] for p in pairs], color="tab:blue")
    ax.set_yticks(y, [f"{p['true']} -> {p['predicted']}" for p in pairs], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("images"), ax.grid(alpha=0.3, axis="x")
    what = f"{len(pairs)} most-confused pairs" + (f" of {num_classes} classes" if num_classes else "")
    ax.set_title(f"{title}\n{what}" if title else what, fontsize=9)
    if not pairs:
        ax.text(0.5, 0.5, "no confusions", ha="center", va="center", transform=ax.transAxes)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def scatter_figure(points: Sequence[dict[str, Any]], x: str, y: str, label: str, xlabel: str, ylabel: str,
                   logx: bool = False, title: str = "") -> tuple[Any, Any, list[Any]]:
    """(figure, axes, label annotations) of a labelled scatter: plain tick numbers, labels that do not overlap."""
    plt = _pyplot()
    from matplotlib.ticker import FuncFormatter, NullFormatter

    fig, ax = plt.subplots(figsize=(8, 5.5))
    xs = np.array([float(p[x]) for p in points])
    ys = np.array([float(p[y]) for p in points])
    ax.scatter(xs, ys, s=30, zorder=3, color=[plt.get_cmap("tab10")(i % 10) for i in range(len(points))])
    if logx:
        ax.set_xscale("log")
    lo, hi = float(xs.min()), float(xs.max())
    pad = max(1.2, (hi / lo) ** 0.15)  # room for labels left and right of the end points
    ax.set_xlim(lo / pad, hi * pad) if logx else ax.set_xlim(lo - (hi - lo + 1) * 0.3, hi + (hi - lo + 1) * 0.3)
    ylo, yhi = float(ys.min()), float(ys.max())
    ypad = max((yhi - ylo) * 0.25, 0.002)
    ax.set_ylim(ylo - ypad, yhi + ypad)
    if logx:
        ax.set_xticks(log_ticks(*ax.get_xlim()))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: plain_number(v)))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel(xlabel), ax.set_ylabel(ylabel), ax.grid(alpha=0.3)
    if title:
        ax.set_title(title)
    fig.tight_layout()
    fig.canvas.draw()
    anns = place_labels(fig, ax, [(str(p[label]), float(p[x]), float(p[y])) for p in points])
    return fig, ax, anns


def plot_scatter(points: Sequence[dict[str, Any]], x: str, y: str, label: str, path: str | os.PathLike[str],
                 xlabel: str, ylabel: str, logx: bool = False, title: str = "") -> bool:
    plt = _pyplot()
    if plt is None or not points:
        return False
    fig, _, _ = scatter_figure(points, x, y, label, xlabel, ylabel, logx, title)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def plot_latency(rows: Sequence[dict[str, Any]], path: str | os.PathLike[str], title: str = "") -> bool:
    """Horizontal bars at p50 with a whisker to p99, one per row (``label``, ``p50_ms``, ``p99_ms``); log x."""
    plt = _pyplot()
    if plt is None or not rows:
        return False
    fig, ax = plt.subplots(figsize=(8, 0.35 * len(rows) + 1.5))
    y = np.arange(len(rows))
    p50 = np.array([r["p50_ms"] for r in rows], dtype=float)
    p99 = np.array([r["p99_ms"] for r in rows], dtype=float)
    ax.barh(y, p50, color="tab:blue", label="p50")
    ax.errorbar(p99, y, xerr=[p99 - p50, np.zeros_like(p99)], fmt="|", color="black", capsize=0, label="p99")
    ax.set_yticks(y, [r["label"] for r in rows])
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlabel("batch-1 latency (ms, log scale)"), ax.grid(alpha=0.3, axis="x"), ax.legend(loc="lower right")
    if title:
        ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True
