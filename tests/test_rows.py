"""Scores to rows (runs/rows.py), against rows written out by hand: top-k order and ties, non-finite scores,
unnamed output columns, and the one-line errors a failing or misshapen backend gets."""

from __future__ import annotations

import numpy as np
import pytest

from cifarbench.errors import ModelError
from cifarbench.runs.rows import _rows, probs_of
from cifarbench.runs.writers import Row


def test_top_k_rows_by_hand() -> None:
    probs = np.array([[0.1, 0.6, 0.3], [0.5, 0.2, 0.3]], np.float32)
    rows = _rows(probs, ["a.png", "b.png"], ["cat", "dog", "eel"], 2)
    f = lambda x: float(np.float32(x))  # noqa: E731 - the scores as float32 gave them
    assert rows == [Row("a.png", "dog", 1, f(0.6), [("eel", f(0.3))]),
                    Row("b.png", "cat", 0, f(0.5), [("eel", f(0.3))])]


def test_ties_keep_the_lower_class_first_and_k_is_capped_by_the_columns() -> None:
    probs = np.array([[0.25, 0.25, 0.25, 0.25]], np.float32)
    (row,) = _rows(probs, ["t.png"], ["a", "b", "c", "d"], 9)
    assert (row.label, row.class_index) == ("a", 0)
    assert [name for name, _ in row.alternatives] == ["b", "c", "d"]  # k = 4 columns, not 9


def test_columns_without_a_class_name_are_named_by_index() -> None:
    (row,) = _rows(np.array([[0.1, 0.2, 0.7]], np.float32), ["x"], ["only", "two"], 2)
    assert (row.label, row.class_index, row.alternatives[0][0]) == ("2", 2, "two")


def test_a_row_with_a_non_finite_score_is_an_error_row_and_the_others_are_kept() -> None:
    probs = np.array([[0.2, np.nan], [0.9, 0.1], [np.inf, 0.0]], np.float32)
    rows = _rows(probs, ["n", "ok", "i"], ["a", "b"], 1)
    assert rows[0] == Row("n", error="model output is not finite") and rows[2] == Row("i", error="model output is not finite")
    assert (rows[1].label, rows[1].error) == ("a", None)


def test_probs_of_gives_float32_and_words_failures_in_one_line() -> None:
    x = np.zeros((3, 2, 2, 3), np.uint8)
    out = probs_of(lambda b: np.ones((len(b), 4), np.float64) / 4, x)
    assert out.dtype == np.float32 and out.shape == (3, 4)

    def boom(b: np.ndarray) -> np.ndarray:
        raise RuntimeError("CUDA out of memory\nstack trace line")

    with pytest.raises(ModelError) as e:
        probs_of(boom, x)
    assert str(e.value) == "inference failed: CUDA out of memory"
    with pytest.raises(ModelError) as e:
        probs_of(lambda b: np.ones((2, 4)), x)
    assert str(e.value) == "model returned shape (2, 4) for a batch of 3"
    with pytest.raises(ModelError) as e:
        probs_of(lambda b: np.ones(3), x)
    assert str(e.value) == "model returned shape (3,) for a batch of 3"


def test_ties_among_many_classes_keep_class_order() -> None:
    """Many tied scores (a 1,000-class model's saturated output): the stable order, not quicksort's, for every k."""
    rng = np.random.default_rng(0)
    probs = rng.choice(np.array([0.1, 0.2, 0.3], np.float32), (1, 50))
    (row,) = _rows(probs, ["p"], [f"c{i}" for i in range(50)], 5)
    top = np.flatnonzero(probs[0] == probs[0].max())  # the tied best classes, in class order
    assert [row.class_index] + [int(n[1:]) for n, _ in row.alternatives] == top[:5].tolist()
