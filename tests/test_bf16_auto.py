"""`auto` and the bf16 openvino row: a candidate only on CPUs with native bf16, and only under the accuracy guard."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from cifarbench import backends, sysinfo
from cifarbench.backends import autoselect, bf16guard
from cifarbench.models.manifest import Manifest


def _flags(**on: bool) -> dict[str, bool]:
    """The whole flag set faked: every speed flag off except ``on`` (never the host's)."""
    return {**{f: False for f in sysinfo.SPEED_FLAGS}, **on}


def _fake_cpu(monkeypatch: pytest.MonkeyPatch, **on: bool) -> None:
    cpu = sysinfo.cpu_info()
    monkeypatch.setattr(sysinfo, "cpu_info", lambda: {**cpu, "flags": _flags(**on)})


@pytest.mark.parametrize("k,n", [(0, 1000), (3, 1000), (4, 1000), (1, 333), (1, 334), (2, 667), (0, 0), (30, 10000),
                                 (31, 10000), (0, 1), (1, 1)])
def test_guard_rule_on_counts_at_the_limit_and_one_past(k: int, n: int) -> None:
    expected = n > 0 and Fraction(100 * k, n) <= Fraction(3, 10)  # accuracy change bound in pp, exact
    assert bf16guard.within(k, n) is expected


def test_native_bf16_flags() -> None:
    assert not bf16guard.native_bf16(_flags(avx512_vnni=True, amx_int8=True, avx2=True))
    assert bf16guard.native_bf16(_flags(avx512_bf16=True))
    assert bf16guard.native_bf16(_flags(amx_bf16=True))


class Fixed:
    """A backend whose top-1 is the given labels, batch by batch."""

    def __init__(self, labels: np.ndarray) -> None:
        self.labels, self.pos = labels, 0

    def predict(self, x: np.ndarray) -> np.ndarray:
        out = np.eye(10, dtype=np.float32)[self.labels[self.pos:self.pos + len(x)]]
        self.pos += len(x)
        return out


@pytest.mark.parametrize("differ", [3, 4])
def test_check_counts_disagreements_against_the_preferred_reference(differ: int) -> None:
    ref = np.arange(1000) % 10
    bf16 = ref.copy()
    bf16[:differ] = (bf16[:differ] + 1) % 10
    loaded: list[str] = []

    def load(name: str) -> Fixed:
        loaded.append(name)
        return Fixed(bf16 if name == "openvino" else ref)

    got = bf16guard.check(load, ["onnx", "openvino-f32"], np.zeros((1000, 2, 2, 3), np.uint8))
    assert loaded == ["openvino", "openvino-f32"]  # the same runtime in f32 first, onnx only without it
    assert got["ok"] is (differ <= 3) and got["disagreements"] == differ and got["images"] == 1000
    assert ("does not keep" in got["why"]) is (differ > 3) and f"{differ} of 1000" in got["why"]
    assert bf16guard.check(load, [], np.zeros((4, 2, 2, 3), np.uint8))["ok"] is False


class Recording(Fixed):
    def __init__(self, labels: np.ndarray) -> None:
        super().__init__(labels)
        self.calls: list[int] = []

    def predict(self, x: np.ndarray) -> np.ndarray:
        self.calls.append(len(x))
        return super().predict(x)


@pytest.mark.parametrize("n, calls", [(260, [250, 10]), (250, [250]), (1, [1]), (1000, [250, 250, 250, 250])])
def test_check_classifies_every_image_once_in_batches_of_at_most_250(n: int, calls: list[int]) -> None:
    ref = np.arange(n) % 10
    bf16 = ref.copy()
    bf16[-1] = (bf16[-1] + 1) % 10  # the last image differs: it must be reached
    made: dict[str, Recording] = {}

    def load(name: str) -> Recording:
        made[name] = Recording(bf16 if name == "openvino" else ref)
        return made[name]

    got = bf16guard.check(load, ["onnx"], np.zeros((n, 2, 2, 3), np.uint8))
    assert made["openvino"].calls == calls and made["onnx"].calls == calls
    ok = 1000 <= 3 * n
    assert got == {"ok": ok, "reference": "onnx", "disagreements": 1, "images": n, "max_loss_permille": 3,
                   "why": f"bf16 openvino {'keeps' if ok else 'does not keep'} accuracy within 0.3 pp: top-1 differs "
                          f"from onnx on 1 of {n} held-out images"}


def test_check_without_a_reference_says_so() -> None:
    assert bf16guard.check(lambda name: None, ["openvino", "tflite"], np.zeros((4, 2, 2, 3), np.uint8)) == {
        "ok": False, "why": "no float32 reference (openvino-f32 or onnx) to check bf16 against"}


def test_held_out_images_are_a_fixed_sample_of_the_bundled_test_split() -> None:
    from PIL import Image

    from cifarbench.data.sources import load_dataset

    split = load_dataset("bundled", "test").images
    want = np.sort(np.random.default_rng(0).permutation(len(split))[:1000])  # the sample, drawn here again
    x = bf16guard.held_out_images((32, 32))
    assert x.shape == (1000, 32, 32, 3) and x.dtype == np.uint8 and x.flags.c_contiguous
    assert np.array_equal(x, split[want])
    few = bf16guard.held_out_images((24, 40), n=3, seed=7)
    idx = np.sort(np.random.default_rng(7).permutation(len(split))[:3])
    assert few.shape == (3, 24, 40, 3)
    for got, i in zip(few, idx):
        assert np.array_equal(got, np.asarray(Image.fromarray(split[i]).resize((40, 24), Image.BILINEAR)))




@pytest.mark.parametrize("flags,expected", [({}, False), ({"avx512_vnni": True}, False),
                                            ({"avx512_bf16": True}, True), ({"amx_bf16": True}, True)])
def test_bf16_row_is_a_candidate_only_with_native_bf16(tiny_model: Path, monkeypatch: pytest.MonkeyPatch,
                                                       flags: dict[str, bool], expected: bool) -> None:
    pytest.importorskip("openvino")
    _fake_cpu(monkeypatch, **flags)
    cands = backends.auto_candidates(Manifest.load(tiny_model))
    assert ("openvino" in cands) is expected
    assert [n for n in cands if n != "openvino"] and all(backends.BACKENDS[n].int8 for n in cands if n != "openvino")


@pytest.mark.parametrize("keeps", [True, False])
def test_choose_probes_the_bf16_row_only_when_the_guard_passes(tiny_model: Path, monkeypatch: pytest.MonkeyPatch,
                                                              tmp_path: Path, keeps: bool) -> None:
    monkeypatch.setenv("CIFARBENCH_CACHE_DIR", str(tmp_path / "cache"))
    _fake_cpu(monkeypatch, avx512_bf16=True)
    m = Manifest.load(tiny_model)
    guard = {"ok": keeps, "disagreements": 3 if keeps else 4, "images": 1000,
             "why": f"bf16 openvino {'keeps' if keeps else 'does not keep'} accuracy within 0.3 pp: top-1 differs "
                    f"from openvino-f32 on {3 if keeps else 4} of 1000 held-out images"}
    monkeypatch.setattr(autoselect, "_bf16_guard", lambda *a: guard)
    probed: list[list[str]] = []

    def fake_probe(load: Any, names: list[str], shape: Any, batch: int = 256) -> Any:
        probed.append(list(names))
        return {n: {"images_per_s": 9000.0 if n == "openvino" else 1000.0, "batch_size": batch} for n in names}, {}

    monkeypatch.setattr(autoselect, "probe", fake_probe)
    cands = {"onnx-int8": "cpu", "openvino": "cpu"}
    sel = autoselect.choose(m, cands, None)
    assert ("openvino" in probed[0]) is keeps
    assert sel.name == ("openvino" if keeps else "onnx-int8") and sel.how == "measured"
    assert guard["why"] in sel.note and (("left out" in sel.note) is not keeps)
    again = autoselect.choose(m, cands, None)  # cached: the guard is not run again and the reason stays
    assert again.how == "cached" and again.name == sel.name and guard["why"] in again.note and len(probed) == 1
