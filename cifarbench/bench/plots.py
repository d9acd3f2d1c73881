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


def plot_confusion(cm: np.ndarray, class_names: Sequence[str], path: str | os.PathLike[str], title: str = "") -> bool:
    plt = _pyplot()
    if plt is None:
        return False
    cm = np.asarray(cm)
    fig, ax = plt.subplots(figsize=(7, 6))
    ax.imshow(cm, cmap="Blues")
    ax.set_xticks(range(len(class_names)), class_names, rotation=45, ha="right")
    ax.set_yticks(range(len(class_names)), class_names)
    ax.set_xlabel("predicted"), ax.set_ylabel("true")
    if title:
        ax.set_title(title)
    thresh = cm.max() / 2 if cm.size else 0
    for i in range(cm.shape[0]):
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
