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


def plot_scatter(points: Sequence[dict[str, Any]], x: str, y: str, label: str, path: str | os.PathLike[str], xlabel: str, ylabel: str, logx: bool = False) -> bool:
    plt = _pyplot()
    if plt is None or not points:
        return False
    fig, ax = plt.subplots(figsize=(7, 5))
    for p in points:
        ax.scatter(p[x], p[y])
        ax.annotate(p[label], (p[x], p[y]), fontsize=7, xytext=(3, 3), textcoords="offset points")
    if logx:
        ax.set_xscale("log")
    ax.set_xlabel(xlabel), ax.set_ylabel(ylabel), ax.grid(alpha=0.3)
    fig.tight_layout()
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
