"""Class lists, the checks every backend makes, lone artifact files, and convert's input warnings (no TensorFlow)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from cifarbench import CIFAR10_CLASSES
from cifarbench.backends.checks import check_batch, check_outputs
from cifarbench.conversion.input_check import near_chance, preset_scan
from cifarbench.models.classes import MAX_CLASS_FILE_BYTES, MAX_CLASSES, default_classes, read_classes
from cifarbench.errors import BatchError, ModelError, UsageError
from cifarbench.models.manifest import parse_preprocess


def write(tmp_path: Path, text: str, name: str = "classes") -> Path:
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    return p


@pytest.mark.parametrize("text", [
    "tench\ngoldfish\n\nshark\n",
    '["tench", "goldfish", "shark"]',
    '{"0": "tench", "1": "goldfish", "2": "shark"}',
    '{"2": ["n01491361", "shark"], "0": ["n01440764", "tench"], "1": ["n01443537", "goldfish"]}',  # ImageNet's index
    '{"shark": 2, "tench": 0, "goldfish": 1}',
    '\ufefftench\r\ngoldfish\r\nshark\r\n',  # a BOM and CRLF from a Windows editor
])
def test_class_files_in_every_form(tmp_path: Path, text: str) -> None:
    assert read_classes(write(tmp_path, text)) == ["tench", "goldfish", "shark"]


@pytest.mark.parametrize("n, good", [(1, False), (2, True), (1000, True), (MAX_CLASSES, True), (MAX_CLASSES + 1, False)])
def test_class_count_limits(tmp_path: Path, n: int, good: bool) -> None:
    p = write(tmp_path, "\n".join(f"c{i}" for i in range(n)))
    if good:
        assert len(read_classes(p)) == n
    else:
        with pytest.raises(UsageError, match="need 2 to"):
            read_classes(p)


@pytest.mark.parametrize("text, match", [
    ("a\nb\na\n", "appears twice"),
    ('{"0": "a", "2": "b"}', "without gaps"),
    ('{"x": "a"}', "JSON object"),
    ("[1, {}]", "JSON list"),
    ('["a", ""]', "empty"),
    ("[not json", "JSON"),
])
def test_bad_class_files_are_usage_errors(tmp_path: Path, text: str, match: str) -> None:
    with pytest.raises(UsageError, match=match):
        read_classes(write(tmp_path, text))


def test_default_classes_by_output_width() -> None:
    names, note = default_classes(10)
    assert names == list(CIFAR10_CLASSES) and note and "CIFAR-10" in note and "\n" not in note
    names, note = default_classes(5)
    assert names == ["class_0", "class_1", "class_2", "class_3", "class_4"] and note is None
    assert default_classes(1000)[0][-1] == "class_999"


@pytest.mark.parametrize("acc, n, warns", [(0.149, 10, True), (0.15, 10, False), (0.00149, 1000, True),
                                           (0.0015, 1000, False), (0.5, 2, True), (0.75, 2, False)])
def test_near_chance_is_one_and_a_half_times_chance(acc: float, n: int, warns: bool) -> None:
    line = near_chance(acc, n, "test-split")
    assert (line is not None) == warns
    if line:
        assert "near chance" in line and "\n" not in line


class _Fake:
    """A 'model' that is right only when its input was scaled to 0-1 (sees the preprocessed pixels)."""

    def __init__(self, labels: np.ndarray) -> None:
        self.labels = labels

    def scores_with(self, x: np.ndarray, steps: object) -> np.ndarray:
        from cifarbench.models.onnxio import _apply

        v = x.astype(np.float32)
        for s in steps:  # type: ignore[attr-defined]
            v = _apply(v, s)
        ok = (v.max() <= 1.0) and (v.min() >= 0.0)
        right = np.eye(3, dtype=np.float32)[self.labels]
        return right if ok else np.roll(right, 1, axis=1)


def test_preset_scan_names_a_clearly_better_preset_and_stays_quiet_otherwise() -> None:
    y = np.arange(60) % 3
    x = np.random.default_rng(0).integers(0, 256, (60, 4, 4, 3), dtype=np.uint8)
    scan = preset_scan(_Fake(y), x, y, "none")
    assert scan["better"] == "scale:1/255" and "--preprocess scale:1/255" in scan["warning"]
    assert scan["accuracy"]["none"] == 0.0 and scan["accuracy"]["scale:1/255"] == 1.0
    assert "warning" not in preset_scan(_Fake(y), x, y, "scale:1/255")
    assert "warning" not in preset_scan(_Fake(y[:4]), x[:4], y[:4], "none")  # 4 images: too few to say "clearly"


def test_check_batch_and_outputs() -> None:
    good = np.zeros((3, 20, 10, 3), np.uint8)
    assert check_batch(good, (20, 10), "m") is good
    with pytest.raises(BatchError, match="values 0-1"):
        check_batch(good.astype(np.float32), (20, 10), "m")
    with pytest.raises(BatchError, match="float64"):
        check_batch(good.astype(np.float64) + 7, (20, 10), "m")
    with pytest.raises(BatchError, match=r"\(N, 20, 10, 3\)"):
        check_batch(np.zeros((3, 10, 20, 3), np.uint8), (20, 10), "m")
    with pytest.raises(BatchError, match="shape"):
        check_batch(np.zeros((20, 10, 3), np.uint8), (20, 10), "m")
    assert isinstance(BatchError("x"), ValueError)  # API users may catch ValueError
    check_outputs(5, list("abcde"), "m")
    check_outputs("C", list("abcde"), "m")  # symbolic width: nothing to check here
    with pytest.raises(ModelError, match="5 outputs but its manifest lists 4"):
        check_outputs(5, list("abcd"), "m")


def test_bgr_step_parses_alone_and_in_chains() -> None:
    steps = parse_preprocess("bgr+scale:2")
    assert [s.kind for s in steps] == ["bgr", "scale"]
    with pytest.raises(UsageError):
        parse_preprocess("bgr:1")


def test_lone_artifact_beside_a_manifest_uses_it(tmp_path: Path) -> None:
    """A file the folder's manifest lists gets that manifest (narrowed to it); an unlisted one does not."""
    from cifarbench.models.model_ref import resolve_model
    from cifarbench.paths import trained_dir

    src = trained_dir() / "baseline-cnn"
    if not (src / "manifest.json").is_file():
        pytest.skip("shipped model missing")
    d = tmp_path / "m"
    shutil.copytree(src, d)
    raw = json.loads((d / "manifest.json").read_text())
    raw["classes"] = [f"k{i}" for i in range(10)]
    (d / "manifest.json").write_text(json.dumps(raw))
    file = next(a["file"] for f, a in raw["artifacts"].items() if f == "onnx-int8")
    m = resolve_model(d / file)
    assert list(m.artifacts) == ["onnx-int8"] and m.classes[0] == "k0" and m.notes == []
    lone = tmp_path / "lone.onnx"
    shutil.copy(d / file, lone)
    m = resolve_model(lone)
    assert m.classes == list(CIFAR10_CLASSES) and len(m.notes) == 1 and "CIFAR-10" in m.notes[0]
    assert m.input.size == (32, 32)


def test_lone_artifact_beside_an_unreadable_manifest_says_it_is_ignored(tmp_path: Path) -> None:
    """A manifest.json that is there but broken (a truncated copy) is not used, and the notes say so: otherwise the
    model's own class names silently become CIFAR-10's."""
    from cifarbench.models.model_ref import resolve_model
    from cifarbench.paths import trained_dir

    src = trained_dir() / "baseline-cnn"
    if not (src / "manifest.json").is_file():
        pytest.skip("shipped model missing")
    raw = json.loads((src / "manifest.json").read_text())
    file = raw["artifacts"]["onnx-int8"]["file"]
    d = tmp_path / "m"
    d.mkdir()
    shutil.copy(src / file, d / file)
    (d / "manifest.json").write_text(json.dumps(raw)[:100])  # cut short
    m = resolve_model(d / file)
    assert any("manifest.json beside it is not readable" in n for n in m.notes), m.notes
    assert any("CIFAR-10" in n for n in m.notes)  # and the default names are announced as before

def test_imagenets_class_index_with_its_two_cranes_and_two_maillots_loads(tmp_path: Path) -> None:
    """ImageNet's class index (the form the README names) has "crane" at 134 and 517, "maillot" at 638 and 639:
    the file must load, each repeated name made unique by its WordNet id; plain repeated names still fail."""
    index = {str(i): [f"n{i:08d}", f"thing{i}"] for i in range(1000)}
    index["134"], index["517"] = ["n02012849", "crane"], ["n03126707", "crane"]
    index["638"], index["639"] = ["n03710637", "maillot"], ["n03710721", "maillot"]
    names = read_classes(write(tmp_path, json.dumps(index)))
    assert len(names) == 1000 and len(set(names)) == 1000
    assert names[134] == "crane (n02012849)" and names[517] == "crane (n03126707)"
    assert names[638] == "maillot (n03710637)" and names[639] == "maillot (n03710721)"
    assert names[0] == "thing0" and names[999] == "thing999"  # names that do not repeat are kept as they are
    pairs = [["n1", "a"], ["n2", "b"], ["n3", "a"]]  # a JSON list of [id, name] pairs too
    assert read_classes(write(tmp_path, json.dumps(pairs), "list")) == ["a (n1)", "b", "a (n3)"]
    with pytest.raises(UsageError, match="'a' appears twice"):
        read_classes(write(tmp_path, '["a", "b", "a"]', "plain"))


def test_a_repeat_at_the_end_of_the_largest_class_file_is_found_at_once(tmp_path: Path) -> None:
    """MAX_CLASSES names whose last repeats the one before: refused, and without an O(n^2) scan (which took
    minutes on 100,000 names): the read runs in a thread that must finish within a generous deadline."""
    import threading

    lines = [f"c{i}" for i in range(MAX_CLASSES)]
    lines[-1] = lines[-2]
    p = write(tmp_path, "\n".join(lines))
    caught: list[BaseException] = []

    def read() -> None:
        try:
            read_classes(p)
        except UsageError as exc:
            caught.append(exc)

    t = threading.Thread(target=read, daemon=True)
    t.start()
    t.join(timeout=30)
    assert not t.is_alive(), "read_classes took over 30 s on a 100,000-name file"
    assert caught and f"'c{MAX_CLASSES - 2}' appears twice" in str(caught[0])


@pytest.mark.parametrize("extra, good", [(0, True), (1, False)])
def test_class_file_size_limit_is_checked_before_reading(tmp_path: Path, extra: int, good: bool,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """A file at the byte limit is read (padded with blank lines, which are skipped); one byte more is refused
    from its size alone (a --classes pointing at a dataset archive must not be read into memory). The limit is
    lowered for the test so no 64 MiB file is written; the shipped one is checked apart."""
    from cifarbench.models import classes

    assert MAX_CLASS_FILE_BYTES == 64 << 20
    limit = 4096
    monkeypatch.setattr(classes, "MAX_CLASS_FILE_BYTES", limit)
    names = "a\nb\n"
    p = write(tmp_path, names + "\n" * (limit - len(names) + extra))
    assert p.stat().st_size == limit + extra
    if good:
        assert read_classes(p) == ["a", "b"]
    else:
        with pytest.raises(UsageError, match="too large"):
            read_classes(p)


class _Counted:
    """Right on the first ``plain`` images under raw pixels, on the first ``scaled`` under any preset to 0-1 or -1-1."""

    def __init__(self, labels: np.ndarray, plain: int, scaled: int) -> None:
        self.labels, self.plain, self.scaled = labels, plain, scaled

    def scores_with(self, x: np.ndarray, steps: object) -> np.ndarray:
        from cifarbench.models.onnxio import _apply

        v = x.astype(np.float32)
        for s in steps:  # type: ignore[attr-defined]
            v = _apply(v, s)
        k = self.scaled if v.size == 0 or v.max() <= 1.0 else self.plain
        pred = self.labels.copy()
        pred[k:] = (pred[k:] + 1) % 3
        return np.eye(3, dtype=np.float32)[pred]


@pytest.mark.parametrize("n, plain, scaled, warns", [
    (100, 50, 60, True),    # exactly 10 pp and 10 images: on floats (0.6 - 0.5) * 100 = 9.999... missed it
    (100, 50, 59, False),   # 9 pp
    (50, 20, 25, True),     # 10 pp with exactly 5 images
    (40, 20, 24, False),    # 10 pp but 4 images: too few
    (51, 20, 25, False),    # 5 images but 9.8 pp
    (256, 0, 26, True),     # 10.16 pp
    (256, 0, 25, False),    # 9.77 pp
])
def test_preset_scan_threshold_on_counts_at_the_limit_and_one_past(n: int, plain: int, scaled: int, warns: bool) -> None:
    y = np.arange(n) % 3
    x = np.full((n, 2, 2, 3), 200, np.uint8)
    scan = preset_scan(_Counted(y, plain, scaled), x, y, "none")
    assert ("warning" in scan) is warns, scan
    assert scan["chosen_accuracy"] == plain / n and scan["images"] == n
    if warns:
        assert f"on {n} parity images against {100 * plain / n:.1f} % with none" in scan["warning"]


def test_preset_scan_answer_word_for_word() -> None:
    n = 100
    y = np.arange(n) % 3
    x = np.full((n, 2, 2, 3), 200, np.uint8)
    scan = preset_scan(_Counted(y, 50, 60), x, y, "")  # "" is the same preprocessing as none
    assert scan == {"chosen": "none", "images": 100, "chosen_accuracy": 0.5,
                    "accuracy": {"none": 0.5, "torch": 0.5, "tf": 0.6, "caffe": 0.5, "scale:1/255": 0.6},
                    "better": "tf",  # torch's mean-std leaves values above 1: the fake's raw answer
                    "warning": "--preprocess tf scores 60.0 % on 100 parity images against 50.0 % with none: "
                               "the model probably expects --preprocess tf"}


def test_preset_scan_one_point_short_of_ten_on_101_images() -> None:
    y = np.arange(101) % 3
    scan = preset_scan(_Counted(y, 20, 30), np.full((101, 2, 2, 3), 200, np.uint8), y, "none")
    assert "warning" not in scan  # 10 images of 101 = 9.9 pp


def test_preset_scan_can_name_none_when_the_chosen_preset_scales() -> None:
    """Raw pixels (none, and torch's and caffe's outputs above 1) score; the chosen tf scaling does not: none is named."""
    y = np.arange(60) % 3
    scan = preset_scan(_Counted(y, 60, 0), np.full((60, 2, 2, 3), 200, np.uint8), y, "tf")
    assert scan["better"] == "none" and scan["chosen_accuracy"] == 0.0
    assert scan["warning"].endswith("against 0.0 % with tf: the model probably expects --preprocess none")


def test_preset_scan_scores_a_chosen_preset_outside_the_candidates() -> None:
    y = np.arange(60) % 3
    x = np.full((60, 2, 2, 3), 200, np.uint8)
    scan = preset_scan(_Counted(y, 12, 60), x, y, "scale:1/510")  # scaled into 0-0.5: the scaled answer
    assert scan["chosen"] == "scale:1/510" and scan["chosen_accuracy"] == 1.0 and "warning" not in scan
    scan = preset_scan(_Counted(y, 12, 60), x, y, "scale:2")  # not scaled down: the raw answer, 20 %
    assert scan["chosen_accuracy"] == 0.2 and scan["better"] == "tf"


def test_preset_scan_skips_a_preset_the_model_cannot_run_and_scores_the_rest() -> None:
    y = np.arange(30) % 3

    class Breaks(_Counted):
        def scores_with(self, x: np.ndarray, steps: object) -> np.ndarray:
            if any(getattr(s, "kind", "") == "mean-std" for s in steps):  # type: ignore[attr-defined]
                raise FloatingPointError("overflow")
            return super().scores_with(x, steps)

    scan = preset_scan(Breaks(y, 0, 30), np.full((30, 2, 2, 3), 200, np.uint8), y, "none")
    assert sorted(scan["accuracy"]) == ["none", "scale:1/255"]  # torch, tf and caffe raised; scale still scored


def test_preset_scan_without_images() -> None:
    y = np.zeros(0, np.int64)
    scan = preset_scan(_Counted(y, 0, 0), np.zeros((0, 2, 2, 3), np.uint8), y, "none")
    assert scan["images"] == 0 and scan["chosen_accuracy"] == 0.0 and set(scan["accuracy"].values()) == {0.0}
    assert "warning" not in scan


@pytest.mark.parametrize("acc, n, line", [
    (0.149, 10, "test-split accuracy 14.9 % is near chance (10.0 % for 10 classes): check --preprocess, --classes and "
                "the class order"),
    (0.8, 1, "test-split accuracy 80.0 % is near chance (100.0 % for 1 classes): check --preprocess, --classes and "
             "the class order"),
    (0.7, 2, "test-split accuracy 70.0 % is near chance (50.0 % for 2 classes): check --preprocess, --classes and "
             "the class order"),
])
def test_near_chance_line_word_for_word(acc: float, n: int, line: str) -> None:
    assert near_chance(acc, n, "test-split") == line
