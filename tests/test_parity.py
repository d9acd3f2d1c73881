"""convert's parity verdicts on hand-made figures: int8 thresholds decided on image counts, at and one past them."""

from __future__ import annotations

import numpy as np
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


def _f(agree: float, dp: float, acc: float, n: int = 2000) -> dict:
    return {"images": n, "top1_agreement": agree, "max_abs_dprob": dp, "mean_abs_dprob": dp / 100, "accuracy": acc}


def test_float32_bounds_at_the_limit_and_one_step_past() -> None:
    assert judge("onnx", at := _f(0.999, 1e-3, 0.5), {"accuracy": 0.5}) is None and at["status"] == "ok"
    for par in (_f(0.9985, 1e-3, 0.5), _f(0.999, 1.01e-3, 0.5)):
        assert judge("tflite", par, {"accuracy": 0.5}) is not None and par["status"] == "FAIL"
    assert judge("onnx", _f(0.998, 2e-3, 0.5), {"accuracy": 0.5}) == "onnx: agreement 0.9980, max|dp| 2.00e-03"
    assert "warning" not in at and at["accuracy_drop_pp"] == 0.0


def test_fp16_failure_and_rounding_warning_messages() -> None:
    fail = _f(1 - 21 / 2000, 0.3, 0.5)
    assert judge("tflite-fp16", fail, {"accuracy": 0.5}) == (
        "tflite-fp16: agreement 0.9895 (21 of 2000 images flipped), accuracy change +0.00 pp")
    assert fail["status"] == "FAIL" and "warning" not in fail
    # the rounding warning: agreement at 99.5 % and max |dp| at 1e-2 are fine, a step past either warns
    ok = _f(0.995, 1e-2, 0.5)
    assert judge("tflite-fp16", ok, {"accuracy": 0.5}) is None and ok["status"] == "ok" and "warning" not in ok
    low = _f(0.994, 1e-2, 0.499)
    assert judge("tflite-fp16", low, {"accuracy": 0.5}) is None and low["status"] == "warn"
    assert low["warning"] == "float16 rounding: agreement 99.40 %, max |dp| 1.0e-02, accuracy change -0.10 pp"
    wide = _f(0.995, 1.01e-2, 0.505)
    judge("tflite-fp16", wide, {"accuracy": 0.5})
    assert wide["status"] == "warn" and wide["warning"].endswith("max |dp| 1.0e-02, accuracy change +0.50 pp")
    # float16's bounds are not float32's: 0.998 agreement with a 2e-3 dp is fine for fp16, a failure for fp32
    assert judge("tflite-fp16", _f(0.998, 2e-3, 0.5), {"accuracy": 0.5}) is None


def test_accuracy_drop_is_recorded_to_three_decimals() -> None:
    par = _par(299, 300)
    judge("onnx-int8", par, {"accuracy": 1.0})
    assert par["accuracy_drop_pp"] == 0.333 and par["status"] == "flagged"


class _Source:
    kind = "keras"

    def __init__(self, labels: np.ndarray) -> None:
        self.labels = labels

    def reference(self, pixels: np.ndarray) -> np.ndarray:
        return _onehot(self.labels[pixels[:, 0, 0, 0]])


def _onehot(y: np.ndarray) -> np.ndarray:
    p = np.full((len(y), 10), 0.01, np.float32)
    p[np.arange(len(y)), y] = 0.91
    return p


class _Backend:
    def __init__(self, answers: np.ndarray) -> None:
        self.answers, self.batches = answers, []

    def predict(self, x: np.ndarray) -> np.ndarray:
        self.batches.append(len(x))
        return _onehot(self.answers[x[:, 0, 0, 0]])


def test_check_parity_end_to_end_on_fake_runtimes(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every format's figures, counted by hand: 300 parity images, the reference right on 240 of them."""
    from cifarbench import backends
    from cifarbench.conversion.parity import SampleSet, check_parity
    from cifarbench.data.sources import Dataset
    from cifarbench.events import Recorder
    from cifarbench.models.manifest import Artifact, Manifest

    n = 300
    truth = np.arange(n) % 10
    ref_answers = truth.copy()
    ref_answers[:60] = (truth[:60] + 1) % 10  # the reference is wrong on 60: accuracy 0.8
    answers = {"onnx": ref_answers.copy(), "tflite-fp16": ref_answers.copy(), "onnx-int8": ref_answers.copy()}
    answers["tflite-fp16"][100:104] = (ref_answers[100:104] + 5) % 10  # 4 flips, 4 images newly wrong: FAIL
    answers["onnx-int8"][200:204] = (ref_answers[200:204] + 5) % 10  # 4 images lost: 1.33 pp, a warning
    loaded = {f: _Backend(a) for f, a in answers.items()}
    monkeypatch.setattr(backends, "load_backend", lambda fmt, m, device, threads: loaded[fmt])
    pixels = np.zeros((n, 2, 2, 3), np.uint16)
    pixels[:, 0, 0, 0] = np.arange(n)  # each image carries its index, for the fakes
    test = Dataset(images=pixels[:50], labels=truth[:50], class_names=tuple("abcdefghij"), source="t", split="test",
                   fingerprint="x")
    data = SampleSet(source="synthetic", seed=0, cal_x=pixels[:10], par_x=pixels, par_y=truth, test=test,
                     test_note="a sample", held_out=True)
    m = Manifest(name="m", arch="x")
    for f in ("keras", *answers):
        m.artifacts[f] = Artifact(file=f, format=f, sha256="0", size=1)
    rec = Recorder()
    failures = check_parity(m, _Source(ref_answers), list(answers), data, rec)
    assert failures == ["tflite-fp16: agreement 0.9867 (4 of 300 images flipped), accuracy change -1.33 pp"]
    assert [e.message for e in rec.events] == ["parity check on 300 images"]
    onnx = m.artifacts["onnx"].parity
    assert onnx == {"images": 300, "top1_agreement": 1.0, "max_abs_dprob": 0.0, "mean_abs_dprob": 0.0,
                    "accuracy": 0.8, "test_accuracy": 0.0, "accuracy_drop_pp": 0.0, "status": "ok"}
    fp16 = m.artifacts["tflite-fp16"].parity
    assert fp16["status"] == "FAIL" and fp16["top1_agreement"] == pytest.approx(296 / 300)
    assert fp16["max_abs_dprob"] == pytest.approx(0.9) and fp16["mean_abs_dprob"] == pytest.approx(4 * 2 * 0.9 / 3000)
    i8 = m.artifacts["onnx-int8"].parity
    assert i8["status"] == "warn" and i8["accuracy"] == pytest.approx(236 / 300) and i8["accuracy_drop_pp"] == 1.333
    assert m.artifacts["keras"].parity == {"images": 300, "top1_agreement": 1.0, "max_abs_dprob": 0.0,
                                           "mean_abs_dprob": 0.0, "accuracy": 0.8, "test_accuracy": 0.0}
    meta = m.metrics["parity"]
    assert meta["reference"] == "keras" and meta["reference_accuracy"] == 0.8 and meta["images"] == 300
    assert meta["warnings"] == ["onnx-int8: " + i8["warning"]] and meta["held_out"] is True
    assert meta["source"] == "synthetic" and meta["split"] == "train (validation slice)"
    assert meta["test_split"] == {"note": "a sample", "images": 50, "reference_accuracy": 0.0}
    assert meta["thresholds"]["int8_warn_drop_pp"] == 1.0 and meta["thresholds"]["int8_target_drop_pp"] == 0.3
    assert loaded["onnx"].batches == [256, 44, 50]  # parity in batches of 256, then the test sample


def test_check_parity_for_an_onnx_source_without_a_test_sample(monkeypatch: pytest.MonkeyPatch) -> None:
    from cifarbench import backends
    from cifarbench.conversion import parity
    from cifarbench.conversion.parity import SampleSet, check_parity
    from cifarbench.events import Recorder
    from cifarbench.models.manifest import Artifact, Manifest

    n = 20
    truth = np.arange(n) % 10
    calls: list[tuple] = []

    def load(fmt: str, manifest: object, device: str, threads: object) -> _Backend:
        calls.append((fmt, manifest, device, threads))
        return _Backend(truth)

    monkeypatch.setattr(backends, "load_backend", load)
    pixels = np.zeros((n, 2, 2, 3), np.uint16)
    pixels[:, 0, 0, 0] = np.arange(n)
    data = SampleSet(source="s", seed=0, cal_x=pixels[:2], par_x=pixels, par_y=truth, test=None, test_note="none here",
                     split="test")
    m = Manifest(name="m", arch="x")
    for f in ("keras", "onnx"):  # a keras artifact beside an ONNX source keeps its own (empty) parity
        m.artifacts[f] = Artifact(file=f, format=f, sha256="0", size=1)
    source = _Source(truth)
    source.kind = "onnx"
    rec = Recorder()
    assert check_parity(m, source, ["onnx"], data, rec) == []
    assert calls == [("onnx", m, "cpu", None)]  # the manifest's artifact, on the CPU, runtime-default threads
    assert [(e.kind, e.message) for e in rec.events] == [("step", "parity check on 20 images")]
    assert m.artifacts["keras"].parity == {} and "test_accuracy" not in m.artifacts["onnx"].parity
    meta = m.metrics["parity"]
    assert meta["reference"] == "the original ONNX model (onnxruntime)" and meta["held_out"] is False
    assert meta["test_split"] == {"note": "none here"} and meta["split"] == "test"
    assert meta["thresholds"] == {
        "float32 (min top-1 agreement, max |dp|)": parity.FLOAT32_BOUNDS,
        "float16 fail (min top-1 agreement, max |accuracy change| pp)": parity.FP16_FAIL,
        "float16 fail: images always allowed to flip or change": parity.FP16_MIN_IMAGES,
        "float16 rounding warning (min top-1 agreement, max |dp|)": parity.FP16_ROUNDING,
        "int8_target_drop_pp": 0.3, "int8_warn_drop_pp": 1.0}
