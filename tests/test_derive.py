"""bench's derived figures on hand-made rows: accuracy delta in pp, int8 flags decided on image counts, speed-up."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from cifarbench.bench import derive
from cifarbench.bench.runner import Row
from cifarbench.models.manifest import Artifact, Manifest


def _row(backend: str, correct: int, n: int, ips: float | None = 100.0, threads: int | None = None, **kw: object) -> Row:
    tp = [{"batch_size": 1, "images_per_s": ips and ips / 4}, {"batch_size": 32, "images_per_s": ips}] if ips else []
    return Row(model="m", backend=backend, threads=threads, quality={"accuracy": correct / n, "support": n},
               throughput=tp, **kw)  # type: ignore[arg-type]


def _manifest(parity_images: int | None = 300) -> Manifest:
    m = Manifest(name="m", arch="x")
    for fmt in ("onnx", "onnx-int8", "tflite-int8"):
        m.artifacts[fmt] = Artifact(format=fmt, file=f"m.{fmt}", size=1, sha256="0" * 64,
                                    parity={"images": parity_images} if parity_images else {})
    return m


def _derive(rows: list[Row], m: Manifest | None = None, probs: dict | None = None) -> dict[str, Row]:
    table = {(r.model, r.backend, r.threads): r for r in rows}
    derive.against_reference([m or _manifest()], table, probs or {k: np.eye(2)[[0]] for k in table})
    return {r.backend: r for r in rows}


@pytest.mark.parametrize("n", [100, 200, 300, 1000])
def test_int8_flag_exactly_at_1pp_and_one_image_past(n: int) -> None:
    ref_correct = n // 2  # 0.50, the float trap: (0.50 - 0.49) * 100 > 1
    at = _derive([_row("onnx", ref_correct, n), _row("onnx-int8", ref_correct - n // 100, n)])["onnx-int8"]
    assert at.accuracy_delta_pp == -1.0 and at.int8_loss_pp == 1.0 and at.flags == []
    past = _derive([_row("onnx", ref_correct, n), _row("onnx-int8", ref_correct - n // 100 - 1, n)])["onnx-int8"]
    loss = 100 * (n // 100 + 1) / n
    assert past.int8_loss_pp == pytest.approx(loss)
    assert past.flags == [f"int8 accuracy loss {loss:.2f} pp > 1 pp (measured here)"]


def test_accuracy_delta_is_in_percentage_points_with_its_sign() -> None:
    rows = _derive([_row("onnx", 700, 1000), _row("onnx-int8", 712, 1000), _row("tflite-int8", 695, 1000)])
    assert rows["onnx-int8"].accuracy_delta_pp == pytest.approx(1.2)  # pp, not a fraction (0.012) nor percent of 70 %
    assert rows["tflite-int8"].accuracy_delta_pp == pytest.approx(-0.5)
    assert rows["onnx-int8"].int8_loss_pp == pytest.approx(-1.2) and rows["onnx-int8"].flags == []
    assert rows["onnx"].accuracy_delta_pp == 0.0 and str(rows["onnx"].accuracy_delta_pp) == "0.0"  # not -0.0
    assert rows["onnx"].int8_loss_pp is None  # a float32 row has no int8 loss


def test_rows_on_different_images_fall_back_to_pp() -> None:
    rows = _derive([_row("onnx", 50, 100), _row("onnx-int8", 97, 200)])
    assert rows["onnx-int8"].accuracy_delta_pp == pytest.approx(-1.5)
    assert rows["onnx-int8"].flags == ["int8 accuracy loss 1.50 pp > 1 pp (measured here)"]
    rows = _derive([_row("onnx", 1, 3), _row("onnx-int8", 1, 2)])  # 1/3 is no whole number of 2 images
    assert rows["onnx-int8"].accuracy_delta_pp == pytest.approx(100 / 6)


def test_manifest_loss_is_turned_back_into_images() -> None:
    ref, int8 = _row("onnx", 150, 300), _row("onnx-int8", 150, 300)
    int8.manifest_int8_loss_pp = 1.0  # 3 of 300 images: exactly 1 pp, not above
    assert _derive([ref, int8])["onnx-int8"].flags == []
    ref, int8 = _row("onnx", 150, 300), _row("onnx-int8", 150, 300)
    int8.manifest_int8_loss_pp = 1.333  # 4 of 300 images, as convert rounds it
    assert _derive([ref, int8])["onnx-int8"].flags == ["int8 accuracy loss 1.33 pp > 1 pp (manifest parity check)"]
    ref, int8 = _row("onnx", 150, 300), _row("onnx-int8", 150, 300)
    int8.manifest_int8_loss_pp = 1.333
    int8.flags = [derive.PARITY_FLAG + "int8 loses 1.33 pp"]  # convert's own warning: not flagged twice
    assert _derive([ref, int8])["onnx-int8"].flags == [derive.PARITY_FLAG + "int8 loses 1.33 pp"]


def test_manifest_loss_is_judged_by_its_image_count_not_its_rounding() -> None:
    """1.00001 pp of 100 images is one image: exactly 1 pp, not above; without the count the pp is all there is."""
    for images, flagged in ((100, False), (None, True)):
        ref, int8 = _row("onnx", 50, 100), _row("onnx-int8", 50, 100)
        int8.manifest_int8_loss_pp = 1.00001
        assert bool(_derive([ref, int8], _manifest(parity_images=images))["onnx-int8"].flags) == flagged, images
        lone = _row("onnx-int8", 50, 100)  # and without a reference row
        lone.manifest_int8_loss_pp = 1.00001
        derive.against_reference([_manifest(parity_images=images)], {("m", "onnx-int8", None): lone}, {})
        assert bool(lone.flags) == flagged, images
    m = _manifest()
    m.artifacts["onnx-int8"].parity = {}  # an artifact without parity figures
    int8 = _row("onnx-int8", 50, 100)
    int8.manifest_int8_loss_pp = 1.00001
    derive.against_reference([m], {("m", "onnx-int8", None): int8}, {})
    assert int8.flags == ["int8 accuracy loss 1.00 pp > 1 pp (manifest parity check)"]


def test_manifest_loss_of_one_image_past_1pp_of_10000() -> None:
    ref, int8 = _row("onnx", 5000, 10000), _row("onnx-int8", 5000, 10000)
    int8.manifest_int8_loss_pp = 1.01  # 101 of 10,000 images: one past the threshold
    assert _derive([ref, int8], _manifest(parity_images=10000))["onnx-int8"].flags == [
        "int8 accuracy loss 1.01 pp > 1 pp (manifest parity check)"]


def test_a_thread_count_without_reference_does_not_stop_the_next_one() -> None:
    lone = _row("onnx-int8", 1, 2, threads=1)  # threads=1: no reference measured at 1 thread
    ref, int8 = _row("onnx", 5, 10, threads=2), _row("onnx-int8", 3, 10, threads=2)
    table = {(r.model, r.backend, r.threads): r for r in (lone, ref, int8)}
    notes = derive.against_reference([_manifest()], table, {k: np.eye(2)[[0]] for k in table})
    assert len(notes) == 1 and int8.accuracy_delta_pp == pytest.approx(-20.0)


def test_measured_loss_without_counts_still_ignores_float_noise() -> None:
    r = Row(model="m", backend="onnx-int8")
    derive.flag_int8(r, -(0.50 - 0.49) * 100)  # -1.0000000000000009: one image in a hundred
    assert r.flags == [] and r.int8_loss_pp == pytest.approx(1.0)
    for loss, flagged in ((1.0000004, False), (1.000002, True)):  # compared at 1e-6 pp: far below one image
        r = Row(model="m", backend="onnx-int8")
        derive.flag_int8(r, -loss)
        assert r.flags == (["int8 accuracy loss 1.00 pp > 1 pp (measured here)"] if flagged else []), loss


def test_manifest_loss_without_image_count_compares_pp() -> None:
    for pp, flagged in ((1.0, False), (1.001, True)):
        ref, int8 = _row("onnx", 150, 300), _row("onnx-int8", 150, 300)
        int8.manifest_int8_loss_pp = pp
        rows = _derive([ref, int8], _manifest(parity_images=None))
        assert bool(rows["onnx-int8"].flags) == flagged, pp


def test_without_reference_the_manifest_loss_is_still_flagged() -> None:
    int8 = _row("onnx-int8", 150, 300)
    int8.manifest_int8_loss_pp = 2.0
    table = {("m", "onnx-int8", None): int8}
    notes = derive.against_reference([_manifest()], table, {})
    assert notes == [f"m: no reference backend measured (a float32 one: {', '.join(derive.REFERENCE_ORDER)}), so "
                     "agreement, accuracy delta and speed-up are blank"]
    assert "keras, onnx" in notes[0]
    assert int8.flags == ["int8 accuracy loss 2.00 pp > 1 pp (manifest parity check)"]
    assert int8.accuracy_delta_pp is None and int8.int8_loss_pp is None and int8.speedup is None


def test_speedup_and_agreement_against_the_reference_at_the_same_threads() -> None:
    p_ref = np.eye(10, dtype=np.float32)[[0, 1, 2, 3]]
    p_int8 = np.eye(10, dtype=np.float32)[[0, 1, 2, 4]] * 0.75
    rows = [_row("onnx", 3, 4, ips=200.0, threads=2), _row("onnx-int8", 3, 4, ips=500.0, threads=2),
            _row("onnx", 3, 4, ips=100.0, threads=None), _row("keras", 2, 4, ips=50.0, threads=None)]
    table = {(r.model, r.backend, r.threads): r for r in rows}
    probs = {("m", "onnx-int8", 2): p_int8, ("m", "onnx", 2): p_ref, ("m", "keras", None): p_ref}
    derive.against_reference([_manifest()], table, probs)
    i8 = table[("m", "onnx-int8", 2)]
    assert i8.speedup == pytest.approx(2.5) and i8.speedup_by_batch == {"1": pytest.approx(2.5), "32": pytest.approx(2.5)}
    # the speed-up is the largest batch's (the last throughput entry), each batch against the same batch
    i8.throughput = [{"batch_size": 1, "images_per_s": 30.0}, {"batch_size": 8, "images_per_s": 80.0},
                     {"batch_size": 32, "images_per_s": 600.0}]
    table[("m", "onnx", 2)].throughput = [{"batch_size": 1, "images_per_s": 10.0}, {"batch_size": 8, "images_per_s": 0},
                                          {"batch_size": 32, "images_per_s": 200.0}]
    derive.against_reference([_manifest()], table, probs)
    assert i8.speedup == pytest.approx(3.0) and i8.speedup_by_batch == {"1": pytest.approx(3.0), "32": pytest.approx(3.0)}
    i8.throughput[-1]["images_per_s"] = None  # a batch that did not run: no speed-up, not a crash
    derive.against_reference([_manifest()], table, probs)
    assert i8.speedup is None and set(i8.speedup_by_batch) == {"1"}
    table[("m", "onnx", 2)].throughput = []  # a reference without throughput: nothing to divide by
    derive.against_reference([_manifest()], table, probs)
    assert i8.speedup is None and i8.speedup_by_batch == {}
    assert i8.agreement == {"reference": "onnx", "top1": 0.75, "max_abs_dprob": 1.0}
    # keras is the reference where it was measured (threads None): onnx's delta is against keras's 2/4
    assert table[("m", "onnx", None)].accuracy_delta_pp == pytest.approx(25.0)
    assert table[("m", "onnx", None)].speedup == pytest.approx(2.0)


def test_reference_prefers_keras_then_onnx_and_skips_failed_rows() -> None:
    rows = {("m", "keras", None): Row(model="m", backend="keras", status="error", reason="x"),
            ("m", "onnx", None): _row("onnx", 1, 2)}
    assert derive.reference("m", rows) == "onnx"
    rows[("m", "keras", None)] = _row("keras", 1, 2)
    assert derive.reference("m", rows) == "keras"
    assert derive.reference("m", rows, threads=4) is None
    rows[("m", "onnx", None)].quality = {}
    assert derive.reference("other", rows) is None


def test_agreement_by_hand() -> None:
    ref = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]], np.float32)
    got = np.array([[0.7, 0.3], [0.6, 0.4], [0.6, 0.4]], np.float32)
    a = derive.agreement(got, ref)
    assert a["top1"] == pytest.approx(2 / 3) and a["max_abs_dprob"] == pytest.approx(0.4)
    with warnings.catch_warnings():  # numpy's mean of nothing warns
        warnings.simplefilter("ignore")
        assert derive.agreement(np.zeros((0, 2)), np.zeros((0, 2)))["max_abs_dprob"] == 0.0


def test_parity_flags() -> None:
    r = Row(model="m", backend="tflite-fp16")
    derive.flag_parity(r, {"warning": "float16 rounding: x"})
    derive.flag_parity(r, {"status": "FAIL", "top1_agreement": 0.9812, "max_abs_dprob": 0.25})
    derive.flag_parity(r, {"status": "ok"})
    derive.flag_parity(r, {"status": "FAIL"})  # an old manifest without the figures
    assert r.flags == [derive.PARITY_FLAG + "float16 rounding: x",
                       derive.PARITY_FLAG + "FAILED (top-1 agreement 98.12 %, max |dp| 2.5e-01)",
                       derive.PARITY_FLAG + "FAILED (top-1 agreement 0.00 %, max |dp| 0.0e+00)"]


def test_a_model_without_reference_does_not_stop_the_next_model() -> None:
    a, b = _manifest(), _manifest()
    b.name = "n"
    lone = Row(model="m", backend="onnx-int8", quality={"accuracy": 0.5, "support": 2})
    ref, int8 = _row("onnx", 5, 10), _row("onnx-int8", 3, 10)
    ref.model = int8.model = "n"
    table = {("m", "onnx-int8", None): lone, ("n", "onnx", None): ref, ("n", "onnx-int8", None): int8}
    derive.against_reference([a, b], table, {k: np.eye(2)[[0]] for k in table})
    assert int8.accuracy_delta_pp == pytest.approx(-20.0) and int8.flags[0].startswith("int8 accuracy loss 20.00 pp")


def test_busy_cpu_warning_above_half_the_usable_cores() -> None:
    env = {"cpu": {"usable_cores": 4}, "loadavg_start": [2.0, 0, 0], "loadavg_end": [1.0, 0, 0]}
    assert derive.busy_cpu_warnings(env) == []  # 2.0 is exactly half: not busy
    env["loadavg_end"] = [2.1, 0, 0]
    (w,) = derive.busy_cpu_warnings(env)
    assert w == ("CPU was busy (1-min load average up to 2.1 on 4 usable cores): other processes competed for it, "
                 "so latency and throughput are pessimistic and noisy")
    assert derive.busy_cpu_warnings({"cpu": {}, "loadavg_start": [0.6, 0, 0]}) != []  # unknown cores: one
    assert derive.busy_cpu_warnings({"cpu": {"usable_cores": 1}}) == []


def test_spread_warnings_only_for_overlapping_ranges() -> None:
    def rep(backend: str, lo: float, med: float, hi: float) -> Row:
        return Row(model="m", backend=backend, repeat={"n": 3, "images_per_s": {"min": lo, "median": med, "max": hi}})

    rows = {("m", b, None): r for b, r in (("onnx", rep("onnx", 90, 100, 110)), ("onnx-int8", rep("onnx-int8", 110, 120, 130)),
                                           ("tflite", rep("tflite", 200, 210, 220)))}
    rows[("m", "tflite-int8", None)] = rep("tflite-int8", 100, 215, 300)
    rows[("m", "tflite-int8", None)].status = "error"  # a failed row is never compared
    (w,) = derive.spread_warnings(rows)  # 110 touches 110: overlap; 130 < 200: none
    assert w == ("m: onnx (90-110 img/s) and onnx-int8 (110-130) overlap across 3 repeats: the spread is wider "
                 "than their difference")
