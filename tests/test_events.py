"""The event channel: train, convert and classify report through one ``events`` receiver, in order."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from cifarbench.events import Event, Recorder, null_emit
from conftest import make_tree


def test_recorder_keeps_events_in_order_and_events_are_frozen() -> None:
    rec = Recorder()
    rec(Event("note", "hello"))
    rec(Event("progress", done=1, total=2))
    null_emit(Event("note", "nobody listens"))
    assert rec.kinds == ["note", "progress"] and rec.of("progress")[0].done == 1
    with pytest.raises(dataclasses.FrozenInstanceError):
        rec.events[0].kind = "step"  # type: ignore[misc]


def test_classify_emits_start_then_progress_up_to_every_file(tmp_path: Path) -> None:
    from cifarbench.runs.classify import classify

    root = make_tree(tmp_path / "photos", per_class=2, splits=("test",), seed=1)
    rec = Recorder()
    report = classify([root], model="baseline-cnn", backend="onnx-int8", output=tmp_path / "labels.csv",
                      batch_size=8, events=rec)
    assert report.files == 20
    assert rec.kinds[0] == "start" and rec.events[0].total == 20
    assert set(rec.kinds[1:]) == {"progress"}
    done = [e.done for e in rec.of("progress")]
    assert done == sorted(done) and len(done) > 2 and done[-1] == 20 and rec.events[-1].total == 20


def test_classify_sends_its_resume_note_between_start_and_progress(tmp_path: Path) -> None:
    from cifarbench.runs.classify import classify

    root = make_tree(tmp_path / "photos", per_class=1, splits=("test",), seed=2)
    out = tmp_path / "labels.csv"
    out.write_text("an output without its state file\n")
    rec = Recorder()
    classify([root], model="baseline-cnn", backend="onnx-int8", output=out, resume=True, events=rec)
    assert rec.kinds[:2] == ["start", "note"] and set(rec.kinds[2:]) == {"progress"}
    assert "classifying every file" in rec.events[1].message


@pytest.mark.slow
def test_convert_emits_one_step_per_stage_in_order(tmp_path: Path, synthetic_tree: Path) -> None:
    pytest.importorskip("onnxruntime")
    from cifarbench.conversion.convert import convert
    from test_onnxio import SPEC, build_onnx

    src = build_onnx(tmp_path / "m.onnx")
    rec = Recorder()
    convert(src, tmp_path / "o", preprocess=SPEC, calibration_data=str(synthetic_tree), test_data=str(synthetic_tree),
            calibration_size=10, parity_size=10, events=rec)
    assert set(rec.kinds) == {"step"}
    assert [e.message.split(" ")[0] for e in rec.events] == ["loading", "loading", "loading", "exporting", "exporting",
                                                             "parity", "checking"]
    assert rec.events[0].message == f"loading {src}"
    assert rec.events[1].message.startswith("loading calibration/parity data from")
    assert rec.events[2].message.startswith("loading test split from")
    assert [e.message for e in rec.events[3:5]] == ["exporting onnx", "exporting onnx-int8"]
    assert rec.events[5].message == "parity check on 10 images"
    assert rec.events[6].message == "checking the preprocessing presets on the parity images"  # a foreign model


@pytest.mark.slow
def test_train_emits_one_epoch_event_per_epoch_fractional_last(tmp_path: Path) -> None:
    pytest.importorskip("tensorflow")
    from cifarbench.training.train import train

    tree = make_tree(tmp_path / "tree", per_class=8, splits=("train", "test"), seed=3)
    rec = Recorder()
    train("tiny-cnn", tmp_path / "run", data=str(tree), epochs=1.5, batch_size=32, val_size=10, precision="float32",
          threads=1, events=rec)
    assert rec.kinds == ["epoch", "epoch"]  # 1.5 epochs: the second stops part-way
    assert [(e.done, e.total) for e in rec.events] == [(1, 2), (2, 2)]
    first = rec.events[0]
    assert first.data["epoch"] == 1 and "val_acc" in first.data and first.data["eta_s"] >= 0
    assert first.message.startswith("epoch 1/2  loss ") and " img/s  ETA " in first.message
