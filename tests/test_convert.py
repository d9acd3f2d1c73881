"""Convert: every format round-trips with parity; foreign Keras 2/3 files convert or fail clearly."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from cifarbench.errors import ExitStatus
from cifarbench.models.manifest import Manifest, sha256_file
from conftest import class_pattern, run_cli

pytestmark = pytest.mark.slow
tf = pytest.importorskip("tensorflow")


@pytest.fixture(autouse=True)
def _small_test_split(monkeypatch: pytest.MonkeyPatch, synthetic_tree: Path) -> None:
    """Foreign models are scored on a test split: the synthetic one here (100 images), not the bundled 10,000."""
    monkeypatch.setenv("CIFARBENCH_CONVERT_TEST_DATA", str(synthetic_tree))


def test_round_trip_every_format(tiny_model: Path) -> None:
    m = Manifest.load(tiny_model)
    assert set(m.artifacts) == {"keras", "tflite", "tflite-fp16", "tflite-int8", "onnx", "onnx-int8"}
    for fmt, art in m.artifacts.items():
        assert sha256_file(tiny_model / art.file) == art.sha256
        assert art.parity["images"] > 0
        if fmt in ("tflite", "onnx"):
            assert art.parity["top1_agreement"] >= 0.999 and art.parity["max_abs_dprob"] <= 1e-3
    i8 = m.artifacts["tflite-int8"]
    assert i8.input_quantization == {"scale": 1.0, "zero_point": 0}  # pixels map exactly
    assert i8.details["calibration"]["split"].startswith("train")

    from cifarbench.backends import load_backend

    rng = np.random.default_rng(3)
    x = np.stack([class_pattern(i % 10, rng) for i in range(20)])
    ref = load_backend("keras", m).predict(x)
    assert ref.shape == (20, 10)
    np.testing.assert_allclose(ref.sum(1), 1.0, atol=1e-5)
    for fmt in ("tflite", "onnx"):
        np.testing.assert_allclose(load_backend(fmt, m).predict(x), ref, atol=1e-4)
    for fmt in ("tflite-int8", "onnx-int8", "tflite-fp16"):
        got = load_backend(fmt, m).predict(x)
        assert (got.argmax(1) == ref.argmax(1)).mean() >= 0.9
        assert np.abs(got - ref).max() < 0.15


def _tiny_tf_keras_model(tf_keras, with_softmax: bool = True, rescaling: bool = True):  # type: ignore[no-untyped-def]
    """``rescaling=False``: a model that expects [0, 1] pixels, as most Keras 2 tutorials trained them."""
    model = tf_keras.Sequential([
        tf_keras.layers.InputLayer(input_shape=(32, 32, 3)),
        *([tf_keras.layers.Rescaling(1 / 255.0)] if rescaling else []),
        tf_keras.layers.Conv2D(4, 3, activation="relu"),
        tf_keras.layers.GlobalAveragePooling2D(),
        tf_keras.layers.Dense(10, activation="softmax" if with_softmax else None),
    ])
    return model


@pytest.mark.parametrize("suffix", [".h5", ".keras"])
def test_keras2_files_convert(tmp_path: Path, synthetic_tree: Path, suffix: str) -> None:
    tf_keras = pytest.importorskip("tf_keras")
    path = tmp_path / f"legacy{suffix}"
    _tiny_tf_keras_model(tf_keras).save(path)
    r = run_cli("convert", path, "--out", tmp_path / "out", "--formats", "onnx,tflite", "--calibration-data",
                synthetic_tree, "--calibration-size", "50", "--parity-size", "50", "-q")
    assert r.exit_code == 0, r.output
    m = Manifest.load(tmp_path / "out")
    assert m.artifacts["onnx"].parity["status"] == "ok"
    assert m.artifacts["tflite"].parity["status"] == "ok"


def test_h5_expecting_unit_pixels_converts_every_format_with_scale(tmp_path: Path, synthetic_tree: Path) -> None:
    """A legacy full-model .h5 trained on x/255: --preprocess scale:1/255 bakes the division into every artifact."""
    tf_keras = pytest.importorskip("tf_keras")
    from cifarbench.backends import load_backend

    tf_keras.utils.set_random_seed(0)
    model = _tiny_tf_keras_model(tf_keras, rescaling=False)
    model.save(tmp_path / "legacy.h5")
    r = run_cli("convert", tmp_path / "legacy.h5", "--preprocess", "scale:1/255", "--out", tmp_path / "out",
                "--calibration-data", synthetic_tree, "--calibration-size", "50", "--parity-size", "60")
    assert r.exit_code == 0, r.output
    m = Manifest.load(tmp_path / "out")
    assert set(m.artifacts) == {"keras", "tflite", "tflite-fp16", "tflite-int8", "onnx", "onnx-int8"}
    assert m.input.preprocess == "scale:1/255" and m.artifacts["keras"].file == "legacy.h5"
    assert all(m.artifacts[f].parity["status"] == "ok" for f in ("tflite", "onnx"))
    pixels = np.stack([class_pattern(i % 10, np.random.default_rng(4)) for i in range(10)])
    want = model.predict(pixels.astype(np.float32) / 255, verbose=0)  # the user's own pipeline
    for fmt in ("keras", "tflite", "onnx"):
        np.testing.assert_allclose(load_backend(fmt, m).predict(pixels), want, atol=1e-4)
    assert "legacy.h5" in r.stdout and "Traceback" not in r.output


def test_layout_option_is_for_onnx_models(tmp_path: Path, synthetic_tree: Path) -> None:
    """Keras models take NHWC: --layout nchw is a usage error before the model is read; nhwc is accepted."""
    src = _foreign(tmp_path)
    common = ("--out", tmp_path / "o", "--formats", "onnx", "--calibration-data", synthetic_tree,
              "--calibration-size", "10", "--parity-size", "10")
    r = run_cli("convert", src, "--layout", "nchw", *common)
    assert r.exit_code == ExitStatus.USAGE and r.stderr.strip().splitlines()[-1] == (
        "error: --layout nchw applies to ONNX models; Keras models take NHWC")
    assert not (tmp_path / "o").exists()
    r = run_cli("convert", src, "--layout", "nhwc", *common, "-q")
    assert r.exit_code == 0, r.output


def test_missing_tensorflow_is_exit_7(tmp_path: Path) -> None:
    """Without TensorFlow (its import made to fail in a fresh interpreter) a Keras model exits 7 and says what to install."""
    import subprocess
    import sys

    src = _foreign(tmp_path)
    code = ("import sys; sys.modules['tensorflow'] = None; from cifarbench.cli import main; "
            f"sys.argv = ['cifarbench', 'convert', {str(src)!r}, '--out', {str(tmp_path / 'o')!r}, "
            f"'--calibration-data', {str(tmp_path)!r}]; main()")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert p.returncode == ExitStatus.UNAVAILABLE, p.stderr
    assert p.stderr.strip().splitlines()[-1] == (
        "error: converting their_model.keras needs tensorflow: pip install 'cifarbench[train]'")
    assert "Traceback" not in p.stderr and not (tmp_path / "o").exists()


def test_weights_only_h5_is_a_clear_error(tmp_path: Path) -> None:
    tf_keras = pytest.importorskip("tf_keras")
    path = tmp_path / "w.weights.h5"
    _tiny_tf_keras_model(tf_keras).save_weights(path)
    r = run_cli("convert", path, "--calibration-data", tmp_path)
    assert r.exit_code == ExitStatus.DATA
    assert "weights-only" in r.stderr and "architecture is missing" in r.stderr
    assert "Traceback" not in r.output


def test_truncated_keras_file(tmp_path: Path, tiny_model: Path) -> None:
    data = (tiny_model / "model.keras").read_bytes()
    bad = tmp_path / "cut.keras"
    bad.write_bytes(data[: len(data) // 3])
    r = run_cli("convert", bad, "--calibration-data", tmp_path)
    assert r.exit_code == ExitStatus.DATA and "truncated" in r.stderr


def test_native_input_size_and_class_count(tmp_path: Path, synthetic_tree: Path) -> None:
    """A 64x64 model converts at 64x64 without options; --input-size is for dynamic sizes only (exit 2 otherwise)."""
    import keras

    inp = keras.Input((64, 64, 3))
    out = keras.layers.Dense(10, activation="softmax")(keras.layers.GlobalAveragePooling2D()(inp))
    keras.Model(inp, out).save(tmp_path / "big.keras")
    small = ("--parity-size", "20", "--calibration-size", "20", "-q")
    r = run_cli("convert", tmp_path / "big.keras", "--out", tmp_path / "o", "--calibration-data", synthetic_tree,
                "--formats", "onnx", *small)
    assert r.exit_code == 0, r.output
    m = Manifest.load(tmp_path / "o")
    assert m.input.size == (64, 64) and m.input.model_input_size is None and m.input.to_dict()["shape"] == [64, 64, 3]
    r = run_cli("convert", tmp_path / "big.keras", "--out", tmp_path / "o2", "--calibration-data", synthetic_tree,
                "--formats", "onnx", "--input-size", "64,48", *small)
    assert r.exit_code == ExitStatus.USAGE and "contradicts" in r.stderr and len(r.stderr.strip().splitlines()) == 1

    inp = keras.Input((None, None, 3))  # dynamic: --input-size needed, and then used
    out = keras.layers.Dense(10, activation="softmax")(keras.layers.GlobalAveragePooling2D()(inp))
    keras.Model(inp, out).save(tmp_path / "dyn.keras")
    r = run_cli("convert", tmp_path / "dyn.keras", "--out", tmp_path / "d", "--calibration-data", synthetic_tree,
                "--formats", "onnx", *small)
    assert r.exit_code == ExitStatus.USAGE and "dynamic" in r.stderr and "--input-size" in r.stderr
    r = run_cli("convert", tmp_path / "dyn.keras", "--out", tmp_path / "d", "--calibration-data", synthetic_tree,
                "--formats", "onnx", "--input-size", "40,24", *small)
    assert r.exit_code == 0, r.output
    assert Manifest.load(tmp_path / "d").input.size == (40, 24)
    r = run_cli("classify", synthetic_tree / "test", "-m", tmp_path / "d", "--backend", "onnx")  # non-square end to end
    assert r.exit_code == 0, r.output
    assert len(r.stdout.strip().splitlines()) == 1 + 100

    inp = keras.Input((32, 32, 3))
    out = keras.layers.Dense(7, activation="softmax")(keras.layers.GlobalAveragePooling2D()(inp))
    keras.Model(inp, out).save(tmp_path / "seven.keras")
    names = tmp_path / "ten.txt"
    names.write_text("\n".join(f"c{i}" for i in range(10)))
    r = run_cli("convert", tmp_path / "seven.keras", "--calibration-data", synthetic_tree, "--formats", "onnx",
                "--classes", names)
    assert r.exit_code == ExitStatus.DATA and "7 outputs but 10 class names" in r.stderr


def test_lambda_layer_needs_unsafe(tmp_path: Path, synthetic_tree: Path) -> None:
    import keras

    inp = keras.Input((32, 32, 3))
    x = keras.layers.Lambda(lambda t: t / 255.0)(inp)
    out = keras.layers.Dense(10, activation="softmax")(keras.layers.GlobalAveragePooling2D()(x))
    keras.Model(inp, out).save(tmp_path / "lam.keras")
    r = run_cli("convert", tmp_path / "lam.keras", "--calibration-data", synthetic_tree, "--formats", "onnx")
    assert r.exit_code == ExitStatus.DATA and "--unsafe" in r.stderr
    r = run_cli("convert", tmp_path / "lam.keras", "--out", tmp_path / "o", "--calibration-data", synthetic_tree,
                "--formats", "onnx", "--unsafe", "--parity-size", "20", "--calibration-size", "20", "-q")
    assert r.exit_code == 0, r.output


def test_preprocess_is_baked_into_the_graph(tmp_path: Path, synthetic_tree: Path) -> None:
    """A foreign model that expects [0,1] inputs: scale:1/255 must make the ONNX graph match model(x/255)."""
    import keras

    inp = keras.Input((32, 32, 3))
    x = keras.layers.Conv2D(4, 3, activation="relu")(inp)
    out = keras.layers.Dense(10)(keras.layers.GlobalAveragePooling2D()(x))  # logits: convert adds the softmax
    model = keras.Model(inp, out)
    model.save(tmp_path / "foreign.keras")
    from cifarbench.backends import load_backend

    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (8, 32, 32, 3)).astype(np.uint8)
    expect = tf.nn.softmax(model(pixels.astype(np.float32) / 255.0)).numpy()
    results = {}
    for spec in ("scale:1/255", "none"):
        out_dir = tmp_path / spec.replace(":", "_").replace("/", "_")
        r = run_cli("convert", tmp_path / "foreign.keras", "--out", out_dir, "--calibration-data", synthetic_tree,
                    "--formats", "onnx", "--preprocess", spec, "--parity-size", "20", "--calibration-size", "20", "-q")
        assert r.exit_code == 0, r.output
        m = Manifest.load(out_dir)
        assert m.artifacts["onnx"].details["preprocess"] == spec
        results[spec] = load_backend("onnx", m).predict(pixels)
    np.testing.assert_allclose(results["scale:1/255"], expect, atol=1e-5)
    assert np.abs(results["none"] - expect).max() > 1e-3


def test_bad_preprocess_spec_is_usage_error(tmp_path: Path, tiny_model: Path) -> None:
    r = run_cli("convert", tiny_model / "model.keras", "--out", tmp_path, "--preprocess", "divide:3")
    assert r.exit_code == ExitStatus.USAGE and "--preprocess" in r.stderr


def test_manifest_records_versions_and_calibration(tiny_model: Path) -> None:
    raw = json.loads((tiny_model / "manifest.json").read_text())
    onnx_int8 = raw["artifacts"]["onnx-int8"]
    assert onnx_int8["details"]["opset"] == 17
    assert onnx_int8["details"]["versions"]["onnxruntime"]
    assert onnx_int8["details"]["convert_seconds"] >= 0
    assert raw["metrics"]["parity"]["split"].startswith("train")


def test_savedmodel_and_keras_backend_uses_baked_preprocess(tmp_path: Path, synthetic_tree: Path) -> None:
    """A SavedModel directory converts; a foreign .keras with --preprocess runs identically on keras and onnx."""
    import keras

    inp = keras.Input((32, 32, 3))
    out = keras.layers.Dense(10)(keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(4, 3)(inp)))
    model = keras.Model(inp, out)
    model.export(tmp_path / "sm", verbose=False)
    r = run_cli("convert", tmp_path / "sm", "--out", tmp_path / "o1", "--calibration-data", synthetic_tree,
                "--formats", "onnx", "--parity-size", "20", "--calibration-size", "20", "-q")
    assert r.exit_code == 0, r.output

    model.save(tmp_path / "f.keras")
    r = run_cli("convert", tmp_path / "f.keras", "--out", tmp_path / "o2", "--calibration-data", synthetic_tree,
                "--formats", "onnx", "--preprocess", "scale:1/255+mean-std:0.5,0.5,0.5/0.25,0.25,0.25",
                "--parity-size", "20", "--calibration-size", "20", "-q")
    assert r.exit_code == 0, r.output
    from cifarbench.backends import load_backend

    m = Manifest.load(tmp_path / "o2")
    x = np.random.default_rng(1).integers(0, 256, (4, 32, 32, 3)).astype(np.uint8)
    np.testing.assert_allclose(load_backend("keras", m).predict(x), load_backend("onnx", m).predict(x), atol=1e-5)


# --------------------------------------------------------------------------- judgement and reporting


def _par(agree: float, dp: float, acc: float, images: int = 2000) -> dict:
    return {"images": images, "top1_agreement": agree, "max_abs_dprob": dp, "mean_abs_dprob": dp / 100, "accuracy": acc}


def test_float16_is_judged_by_agreement_and_accuracy() -> None:
    from cifarbench.conversion.parity import judge

    ref = {"accuracy": 0.7000}
    rounding = _par(0.9995, 1.19e-2, 0.7004)  # the reported case: a rounding difference, not a broken model
    assert judge("tflite-fp16", rounding, ref) is None
    assert rounding["status"] == "warn" and "float16 rounding" in rounding["warning"]
    clean = _par(0.9990, 2.2e-3, 0.6995)
    assert judge("tflite-fp16", clean, ref) is None and clean["status"] == "ok" and "warning" not in clean
    broken = _par(0.95, 0.4, 0.69)
    assert "tflite-fp16" in judge("tflite-fp16", broken, ref) and broken["status"] == "FAIL"
    worse = _par(0.995, 5e-3, 0.690)  # agreement fine, accuracy 1 pp lower: fails
    assert judge("tflite-fp16", worse, ref) and worse["status"] == "FAIL"
    assert judge("onnx", _par(0.9995, 1.19e-2, 0.7), ref)  # float32 keeps the strict bound


@pytest.mark.parametrize("n", [40, 80, 99, 150])
def test_float16_one_flip_in_a_small_sample_is_not_a_failure(n: int) -> None:
    """One near-tie flip among < 200 images is > 0.5 pp and (under 100) < 99 %: a warning, never exit 6."""
    from cifarbench.conversion.parity import judge

    ref = {"accuracy": 30 / n}
    one = _par(1 - 1 / n, 4e-3, 29 / n, images=n)  # the flipped image was right before
    assert judge("tflite-fp16", one, ref) is None
    assert one["status"] == "warn" and "float16 rounding" in one["warning"]


@pytest.mark.parametrize("n, flips", [(40, 2), (40, 12), (99, 2), (150, 2), (2000, 21)])
def test_float16_breakage_still_fails_at_any_sample_size(n: int, flips: int) -> None:
    from cifarbench.conversion.parity import judge

    ref = {"accuracy": 0.5}
    # agreement alone: the flips cancel out in accuracy
    par = _par(1 - flips / n, 0.3, 0.5, images=n)
    failure = judge("tflite-fp16", par, ref)
    assert failure and par["status"] == "FAIL" and f"{flips} of {n} images flipped" in failure


@pytest.mark.parametrize("lost, fails", [(10, False), (11, True)])
def test_float16_accuracy_bound_is_counted_in_images(lost: int, fails: bool) -> None:
    """At 2,000 images 0.5 pp is 10 images: 11 fewer right fails though agreement (99.45 %) is within 99 %."""
    from cifarbench.conversion.parity import judge

    par = _par(1 - lost / 2000, 5e-3, 0.5 - lost / 2000)
    assert bool(judge("tflite-fp16", par, {"accuracy": 0.5})) == fails
    assert (par["status"] == "FAIL") == fails


@pytest.mark.parametrize("acc, status", [(0.699, "ok"), (0.695, "flagged"), (0.685, "warn")])
def test_int8_losses(acc: float, status: str) -> None:
    from cifarbench.conversion.parity import judge

    par = _par(0.97, 0.2, acc)
    assert judge("onnx-int8", par, {"accuracy": 0.7}) is None  # never a failure
    assert par["status"] == status and ("warning" in par) == (status == "warn")
    if status == "warn":
        assert "1.50 pp" in par["warning"]


def test_int8_loss_above_1pp_is_a_warning_line_and_flagged(tiny_model: Path, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    import shutil

    from cifarbench.cli.convert import _report
    from cifarbench.conversion.parity import judge

    shutil.copytree(tiny_model, tmp_path / "m")
    m = Manifest.load(tmp_path / "m")
    par = m.artifacts["tflite-int8"].parity
    ref = {"accuracy": par["accuracy"] + 0.023}  # as if the reference were 2.3 pp better
    judge("tflite-int8", par, ref)
    _report(m, quiet=False)
    out, err = capsys.readouterr()
    assert "warning: tflite-int8: int8 loses 2.30 pp accuracy" in err
    row = next(line for line in out.splitlines() if "tflite-int8" in line)
    assert "WARN" in row and "+2.30" in row


def test_parity_table_is_printed_when_a_check_fails(tmp_path: Path, synthetic_tree: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    import cifarbench.conversion.parity as parity

    monkeypatch.setattr(parity, "FLOAT32_BOUNDS", (1.01, 0.0))  # no real artifact can pass: the failure path runs
    r = run_cli("convert", _foreign(tmp_path), "--out", tmp_path / "o", "--formats", "onnx", "--calibration-data",
                synthetic_tree, "--calibration-size", "20", "--parity-size", "20")
    assert r.exit_code == ExitStatus.CHECK_FAILED
    assert "FAIL" in r.stdout and "model.onnx" in r.stdout and "disagree" in r.stderr
    assert Manifest.load(tmp_path / "o").artifacts["onnx"].parity["status"] == "FAIL"  # the numbers are kept


def _foreign(tmp_path: Path) -> Path:
    import keras

    keras.utils.set_random_seed(0)
    inp = keras.Input((32, 32, 3))
    x = keras.layers.Conv2D(4, 3, activation="relu")(keras.layers.Rescaling(1 / 255)(inp))
    out = keras.layers.Dense(10)(keras.layers.GlobalAveragePooling2D()(x))
    keras.Model(inp, out).save(tmp_path / "their_model.keras")
    return tmp_path / "their_model.keras"


def test_foreign_model_gets_test_split_accuracy_and_reconverts_from_its_folder(
        tmp_path: Path, synthetic_tree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CIFARBENCH_CONVERT_TEST_DATA")  # the default: the bundled CIFAR-10 test split
    r = run_cli("convert", _foreign(tmp_path), "--out", tmp_path / "o", "--formats", "onnx", "--preprocess", "none",
                "--calibration-data", synthetic_tree, "--calibration-size", "20", "--parity-size", "30")
    assert r.exit_code == 0, r.output
    assert "accuracy (test split)" in r.stdout and "30 test-split images" in r.stdout
    assert "30 train-split images (possibly seen in training)" in r.stdout and "held-out" not in r.stdout
    m = Manifest.load(tmp_path / "o")
    assert m.metrics["parity"]["test_split"]["images"] == 30 and "test split of bundled" in m.metrics["parity"]["test_split"]["note"]
    assert 0 <= m.artifacts["onnx"].parity["test_accuracy"] <= 1 and "test_accuracy" in m.artifacts["keras"].parity
    assert m.metrics["parity"]["source"] == str(synthetic_tree.resolve())
    # The folder names its Keras artifact (their_model.keras, not model.keras); converting it again works.
    r = run_cli("convert", tmp_path / "o", "--formats", "tflite", "--calibration-size", "20", "--parity-size", "30", "-q")
    assert r.exit_code == 0, r.output
    m2 = Manifest.load(tmp_path / "o")
    assert set(m2.artifacts) == {"keras", "onnx", "tflite"} and m2.input == m.input
    assert m2.artifacts["tflite"].parity["status"] == "ok"


def test_own_model_keeps_the_validation_slice(tiny_model: Path) -> None:
    from cifarbench.cli.convert import parity_table
    from cifarbench.cli.ui import stdout_console

    par = Manifest.load(tiny_model).metrics["parity"]
    assert "images" not in par["test_split"] and "metrics.test" in par["test_split"]["note"]
    assert par["split"].startswith("train") and par["held_out"] is True
    con = stdout_console()
    with con.capture() as cap:
        con.print(parity_table(Manifest.load(tiny_model)))
    assert f"parity on {par['images']} held-out train images" in cap.get()  # cifarbench's own: known unseen


def test_parity_title_says_why_a_foreign_model_has_no_test_accuracy() -> None:
    from cifarbench.cli.convert import parity_table
    from cifarbench.cli.ui import stdout_console

    m = Manifest(name="mynet", arch="foreign")
    m.metrics = {"parity": {"images": 105, "held_out": False, "split": "train (validation slice)",
                            "test_split": {"note": "not measured: the model's classes are not CIFAR-10's"}}}
    con = stdout_console()
    with con.capture() as cap:
        con.print(parity_table(m))
    title = " ".join(cap.get().split())  # rich may wrap the title
    assert "test-split accuracy not measured: the model's classes are not CIFAR-10's (--test-data DIR)" in title
    m.metrics["parity"]["test_split"] = {"images": 70}
    with con.capture() as cap:
        con.print(parity_table(m))
    assert "not measured" not in cap.get() and "accuracy also on 70 test-split images" in " ".join(cap.get().split())


def test_folder_without_a_keras_artifact_is_a_clear_error(tmp_path: Path) -> None:
    from cifarbench.models.model_ref import resolve_model

    shipped = resolve_model("baseline-cnn").directory
    r = run_cli("convert", shipped, "--out", tmp_path / "o")
    assert r.exit_code == ExitStatus.DATA and "lists no Keras artifact" in r.stderr
    assert not (tmp_path / "o").exists()


def test_scratch_files_are_removed_when_an_exporter_raises(tmp_path: Path, synthetic_tree: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    import tempfile

    from cifarbench.conversion import exporters
    from cifarbench.conversion.convert import convert

    def broken(ctx: exporters.ExportContext, path: Path) -> dict:
        assert ctx.fp32_onnx().is_file()  # the scratch float graph exists while quantization runs
        raise RuntimeError("quantization blew up")

    monkeypatch.setitem(exporters.EXPORTERS, "onnx-int8", exporters.Exporter("onnx-int8", broken, quantized=True))
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    with pytest.raises(RuntimeError, match="blew up"):
        convert(_foreign(tmp_path), tmp_path / "o", formats=["onnx-int8"], calibration_data=str(synthetic_tree),
                calibration_size=20, parity_size=20, test_data=str(synthetic_tree))
    assert list(scratch.iterdir()) == []


@pytest.mark.parametrize("spec", ["scale:1/0", "mean-std:0.5/0"])
def test_zero_division_in_preprocess_is_a_usage_error(tmp_path: Path, spec: str) -> None:
    r = run_cli("convert", tmp_path, "--preprocess", spec)
    assert r.exit_code == ExitStatus.USAGE and "--preprocess" in r.stderr and "Traceback" not in r.output


def test_framework_logging_is_hidden_unless_verbose(tmp_path: Path, synthetic_tree: Path) -> None:
    import os
    import subprocess
    import sys

    src = _foreign(tmp_path)
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", "GLOG_minloglevel")}
    runs = {}
    for flag in ("--quiet", "--verbose"):
        cmd = [sys.executable, "-m", "cifarbench", "convert", str(src), "--out", str(tmp_path / flag[2:]), "--formats",
               "tflite,onnx", "--calibration-data", str(synthetic_tree), "--calibration-size", "10", "--parity-size", "10", flag]
        p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
        assert p.returncode == 0, p.stderr
        runs[flag] = p.stderr.splitlines()
    # Only convert's own warnings (an untrained model: its 10 outputs named as CIFAR-10's, near-chance accuracy).
    own = [f"warning: {w}" for w in Manifest.load(tmp_path / "quiet").metrics["input_check"]["warnings"]]
    assert runs["--quiet"] == own and len(own) == 2, runs["--quiet"]
    noise = [ln for ln in runs["--verbose"] if not ln.startswith(("convert:", "warning:"))]
    assert any("absl" in ln or "tensorflow" in ln.lower() for ln in noise), runs["--verbose"]
