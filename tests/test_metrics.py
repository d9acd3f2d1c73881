"""Metrics against hand-computed confusion matrices and numpy's own percentiles."""

from __future__ import annotations

import numpy as np
import pytest

from cifarbench.bench.metrics import classification_report, confusion_matrix, format_report, latency_stats

# 3 classes; class "c" is never predicted. Hand-computed below.
Y_TRUE = [0, 0, 1, 1, 1, 2]
Y_PRED = [0, 1, 1, 1, 0, 1]
NAMES = ["a", "b", "c"]


def test_confusion_matrix_by_hand() -> None:
    cm = confusion_matrix(Y_TRUE, Y_PRED, 3)
    assert cm.tolist() == [[1, 1, 0], [1, 2, 0], [0, 1, 0]]
    assert cm.dtype == np.int64


def test_report_by_hand_with_a_class_never_predicted() -> None:
    r = classification_report(confusion_matrix(Y_TRUE, Y_PRED, 3), NAMES)
    # precision: tp / predicted = 1/2, 2/4, 0/0 -> 0 ; recall: tp / support = 1/2, 2/3, 0/1
    pc = r["per_class"]
    assert [pc[n]["precision"] for n in NAMES] == pytest.approx([0.5, 0.5, 0.0])
    assert [pc[n]["recall"] for n in NAMES] == pytest.approx([0.5, 2 / 3, 0.0])
    assert [pc[n]["f1"] for n in NAMES] == pytest.approx([0.5, 4 / 7, 0.0])
    assert [pc[n]["support"] for n in NAMES] == [2, 3, 1]
    assert not any(np.isnan(v) for c in pc.values() for v in c.values())
    assert r["accuracy"] == pytest.approx(0.5)
    assert r["support"] == 6
    assert r["macro"] == pytest.approx({"precision": 1 / 3, "recall": 7 / 18, "f1": 5 / 14})
    # weights 2/6, 3/6, 1/6; weighted recall always equals accuracy
    assert r["weighted"] == pytest.approx({"precision": 5 / 12, "recall": 0.5, "f1": 19 / 42})


def test_class_with_no_support_and_no_predictions() -> None:
    r = classification_report(confusion_matrix([0, 1, 1], [0, 1, 0], 3), NAMES)
    assert r["per_class"]["c"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    assert r["accuracy"] == pytest.approx(2 / 3)
    assert r["macro"]["recall"] == pytest.approx((1 + 0.5 + 0) / 3)


def test_perfect_and_empty() -> None:
    r = classification_report(confusion_matrix([0, 1, 2], [0, 1, 2], 3), NAMES)
    assert r["accuracy"] == 1.0 and r["macro"]["f1"] == 1.0 and r["weighted"]["f1"] == 1.0
    empty = classification_report(confusion_matrix([], [], 3), NAMES)
    assert empty["accuracy"] == 0.0 and empty["support"] == 0


def test_confusion_matrix_matches_a_loop_on_random_labels() -> None:
    rng = np.random.default_rng(0)
    t, p = rng.integers(0, 10, 500), rng.integers(0, 10, 500)
    expected = np.zeros((10, 10), int)
    for a, b in zip(t, p):
        expected[a, b] += 1
    assert (confusion_matrix(t, p, 10) == expected).all()


@pytest.mark.parametrize("t,p,message", [([0, -1], [0, 0], "y_true holds labels outside 0..2"),
                                         ([0, 0], [0, 3], "y_pred holds labels outside 0..2"),
                                         ([0, 1], [0], "y_true has 2 labels, y_pred 1")])
def test_bad_labels_raise_instead_of_wrapping(t: list[int], p: list[int], message: str) -> None:
    with pytest.raises(ValueError) as e:
        confusion_matrix(t, p, 3)
    assert str(e.value) == message
    assert confusion_matrix([0, 2], [2, 0], 3).sum() == 2  # 0 and num_classes - 1 are inside


def test_format_report_by_hand() -> None:
    """The whole text, typed out: columns of 9, names right-aligned to max(12, longest + 2)."""
    text = format_report(classification_report(confusion_matrix(Y_TRUE, Y_PRED, 3), NAMES))
    assert text == (
        "             precision    recall  f1-score   support\n"
        "\n"
        "           a    0.5000    0.5000    0.5000         2\n"
        "           b    0.5000    0.6667    0.5714         3\n"
        "           c    0.0000    0.0000    0.0000         1\n"
        "\n"
        "    accuracy" + " " * 24 + "0.5000         6\n"
        "   macro avg    0.3333    0.3889    0.3571         6\n"
        "weighted avg    0.4167    0.5000    0.4524         6\n")
    names = ["a", "b", "a-long-name-xyz"]  # 15 characters: the name column widens to 17
    lines = format_report(classification_report(confusion_matrix(Y_TRUE, Y_PRED, 3), names)).splitlines()
    assert lines[4] == "  a-long-name-xyz    0.0000    0.0000    0.0000         1"
    assert lines[0] == " " * 17 + " precision    recall  f1-score   support"


def test_empty_report_weighs_nothing() -> None:
    r = classification_report(np.zeros((3, 3), np.int64), NAMES)
    assert r["weighted"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0}  # not NaN from 0 / 0


@pytest.mark.parametrize("n", [2, 7, 100, 1001])
def test_latency_stats_match_numpy(n: int) -> None:
    s = np.random.default_rng(n).lognormal(-7, 0.5, n)
    st = latency_stats(list(s))
    ms = s * 1000
    for q in (50, 90, 95, 99):
        assert st[f"p{q}_ms"] == pytest.approx(np.percentile(ms, q))
    assert st["n"] == n
    assert st["mean_ms"] == pytest.approx(ms.mean())
    assert st["std_ms"] == pytest.approx(ms.std(ddof=1))
    assert (st["min_ms"], st["max_ms"]) == pytest.approx((ms.min(), ms.max()))
    assert st["min_ms"] <= st["p50_ms"] <= st["p90_ms"] <= st["p95_ms"] <= st["p99_ms"] <= st["max_ms"]


def test_latency_stats_compute_in_float64_whatever_comes_in() -> None:
    s32 = np.array([0.1, 0.2, 0.3], np.float32)
    st = latency_stats(s32)
    oracle = s32.astype(np.float64) * 1000.0
    assert st["mean_ms"] == float(oracle.mean()) and st["p50_ms"] == float(oracle[1])  # exact, not float32 rounding


def test_latency_stats_edge_cases() -> None:
    assert latency_stats([]) == {}
    one = latency_stats([0.002])
    assert one["n"] == 1 and one["std_ms"] == 0.0 and one["p99_ms"] == pytest.approx(2.0)


@pytest.mark.parametrize("threshold, n, at", [(1.0, 100, 1), (1.0, 1000, 10), (0.3, 1000, 3), (0.3, 10_000, 30),
                                             (0.5, 2000, 10), (1.0, 7, 0), (0.3, 10, 0)])
def test_exceeds_pp_is_decided_on_image_counts_at_the_threshold_and_one_past(threshold: float, n: int, at: int) -> None:
    from cifarbench.bench.metrics import exceeds_pp

    # ``at`` images are exactly the threshold (or the most below it when it is no whole number of images): never above.
    assert not exceeds_pp(at, n, threshold) and exceeds_pp(at + 1, n, threshold)
    assert not exceeds_pp(0, n, threshold) and not exceeds_pp(-5, n, threshold)  # a gain is no loss
    assert not exceeds_pp(5, 0, threshold)  # nothing measured, nothing flagged


def test_exceeds_pp_with_a_single_image() -> None:
    from cifarbench.bench.metrics import exceeds_pp

    assert exceeds_pp(1, 1, 1.0) and not exceeds_pp(0, 1, 1.0)  # 100 pp of one image is above 1 pp


def test_float_pp_would_flag_one_image_in_a_hundred_counts_do_not() -> None:
    """The bug this replaces: (0.50 - 0.49) * 100 > 1 on floats."""
    from cifarbench.bench.metrics import exceeds_pp, images_in

    assert (0.50 - 0.49) * 100 > 1.0  # the float trap (1.0000000000000009)
    flagged_by_floats = 0
    for n in (100, 200, 300, 500, 1000):
        for k in range(n // 4, n, 7):  # an accuracy of k/n against (k + n/100)/n: exactly 1 pp lost
            a, b = k / n, (k + n // 100) / n
            assert images_in(b - a, n) == n // 100 and not exceeds_pp(images_in(b - a, n), n, 1.0)
            flagged_by_floats += (b - a) * 100 > 1.0
    assert flagged_by_floats > 0  # the counted decision differs from the float one on real pairs
