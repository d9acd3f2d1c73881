"""convert's parity verdicts on hand-made figures: int8 thresholds decided on image counts, at and one past them."""

from __future__ import annotations

import pytest

from cifarbench.conversion.parity import INT8_TARGET_PP, INT8_WARN_PP, fp16_breaks, judge


def _par(correct: int, n: int, agree: float = 0.97, dp: float = 0.2) -> dict:
    return {"images": n, "top1_agreement": agree, "max_abs_dprob": dp, "mean_abs_dprob": dp / 100, "accuracy": correct / n}


@pytest.mark.parametrize("n", [100, 300, 1000, 2000, 10_000])
def test_int8_warning_exactly_at_1pp_and_one_image_past(n: int) -> None:
    assert INT8_WARN_PP == 1.0 and INT8_TARGET_PP == 0.3
    ref_correct = n * 49 // 100 + 1  # odd counts: accuracies whose float difference is not a clean 0.01
    for ref_acc in (ref_correct / n, 0.50):
        base = round(ref_acc * n)
        at = _par(base - n // 100, n)  # exactly 1 pp lost: flagged (above 0.3) but no warning
        assert judge("onnx-int8", at, {"accuracy": ref_acc}) is None
        assert at["status"] == "flagged" and "warning" not in at, (n, ref_acc, at)
        past = _par(base - n // 100 - 1, n)  # one image more: a warning
        assert judge("tflite-int8", past, {"accuracy": ref_acc}) is None
        assert past["status"] == "warn" and "above 1 pp" in past["warning"]


def test_the_float_trap_case_is_not_a_warning() -> None:
    par = {"images": 100, "top1_agreement": 0.99, "max_abs_dprob": 0.1, "mean_abs_dprob": 0.01, "accuracy": 0.49}
    judge("onnx-int8", par, {"accuracy": 0.50})
    assert (0.50 - 0.49) * 100 > 1 and par["status"] == "flagged" and "warning" not in par
    assert par["accuracy_drop_pp"] == 1.0


@pytest.mark.parametrize("n, at", [(1000, 3), (10_000, 30), (2000, 6)])
def test_int8_target_exactly_at_0_3pp_and_one_image_past(n: int, at: int) -> None:
    ok = _par(700 * n // 1000 - at, n)
    judge("onnx-int8", ok, {"accuracy": 0.7})
    assert ok["status"] == "ok" and "warning" not in ok
    flagged = _par(700 * n // 1000 - at - 1, n)
    judge("onnx-int8", flagged, {"accuracy": 0.7})
    assert flagged["status"] == "flagged"


def test_int8_gain_and_message() -> None:
    gain = _par(720, 1000)
    judge("onnx-int8", gain, {"accuracy": 0.7})
    assert gain["status"] == "ok" and gain["accuracy_drop_pp"] == -2.0
    warn = _par(685, 1000)
    judge("onnx-int8", warn, {"accuracy": 0.7})
    assert warn["warning"] == "int8 loses 1.50 pp accuracy vs the reference (above 1 pp)"
    assert warn["accuracy_drop_pp"] == 1.5


@pytest.mark.parametrize("n, flips_allowed", [(2000, 20), (40, 1), (100, 1), (1000, 10)])
def test_fp16_flips_at_the_limit_and_one_past(n: int, flips_allowed: int) -> None:
    """1 % of n flips (never below one image) pass; one more fails. Accuracy unchanged in both."""
    ref = {"accuracy": 0.5}
    at = {"images": n, "top1_agreement": 1 - flips_allowed / n, "accuracy": 0.5}
    past = {"images": n, "top1_agreement": 1 - (flips_allowed + 1) / n, "accuracy": 0.5}
    assert not fp16_breaks(at, ref) and fp16_breaks(past, ref)


@pytest.mark.parametrize("n, changed_allowed", [(2000, 10), (100, 1), (1000, 5)])
def test_fp16_accuracy_change_at_the_limit_and_one_past(n: int, changed_allowed: int) -> None:
    """0.5 pp of n images newly right or wrong (never below one image) pass; one more fails, in either direction."""
    ref = {"accuracy": 0.5}
    half = n // 2
    for sign in (1, -1):
        at = {"images": n, "top1_agreement": 1.0, "accuracy": (half + sign * changed_allowed) / n}
        past = {"images": n, "top1_agreement": 1.0, "accuracy": (half + sign * (changed_allowed + 1)) / n}
        assert not fp16_breaks(at, ref) and fp16_breaks(past, ref)
