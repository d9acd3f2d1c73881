"""The manifest: round trip, checksums, and clear errors for broken or foreign files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from cifarbench import CIFAR10_CLASSES, __version__
from cifarbench.errors import ModelError
from cifarbench.models.manifest import ARTIFACT_FORMATS, FORMAT_FILES, MANIFEST_NAME, Manifest, sha256_file


def make(tmp_path: Path) -> Manifest:
    (tmp_path / "model.onnx").write_bytes(b"onnx-bytes")
    (tmp_path / "model_int8.tflite").write_bytes(b"tflite-int8-bytes")
    m = Manifest(name="m1", arch="tiny-cnn", params=np.int64(1234), metrics={"test": {"accuracy": np.float32(0.5)}})
    m.directory = tmp_path
    m.add_artifact("onnx", "model.onnx", details={"opset": 17, "dir": tmp_path})
    m.add_artifact("tflite-int8", "model_int8.tflite", input_dtype="uint8", input_quantization={"scale": 1.0, "zero_point": 0})
    m.save()
    return m


def test_round_trip(tmp_path: Path) -> None:
    m = make(tmp_path)
    raw = json.loads((tmp_path / MANIFEST_NAME).read_text())
    assert raw["params"] == 1234 and raw["metrics"]["test"]["accuracy"] == 0.5  # numpy scalars serialised
    assert raw["artifacts"]["onnx"]["details"]["dir"] == str(tmp_path)
    assert raw["cifarbench_version"] == __version__ and "directory" not in raw
    back = Manifest.load(tmp_path)
    assert back.directory == tmp_path and back.classes == list(CIFAR10_CLASSES)
    assert back.artifacts["tflite-int8"].input_quantization == {"scale": 1.0, "zero_point": 0}
    assert back.artifacts["onnx"].sha256 == sha256_file(tmp_path / "model.onnx")
    assert back.artifacts["onnx"].size == len(b"onnx-bytes")
    assert Manifest.load(tmp_path / MANIFEST_NAME).name == "m1"  # the file itself works too
    assert back.input["shape"] == [32, 32, 3] and back.input["dtype"] == "uint8"


def test_verify_and_path_of(tmp_path: Path) -> None:
    m = make(tmp_path)
    assert m.verify("onnx") == tmp_path / "model.onnx"
    with pytest.raises(ModelError, match="has no keras artifact .has: onnx, tflite-int8."):
        m.path_of("keras")
    (tmp_path / "model.onnx").write_bytes(b"onnx-bytez")  # same size, different content
    with pytest.raises(ModelError, match="checksum"):
        m.verify("onnx")
    (tmp_path / "model_int8.tflite").unlink()
    with pytest.raises(ModelError, match="missing"):
        m.verify("tflite-int8")


def test_unknown_keys_are_ignored_for_forward_compatibility(tmp_path: Path) -> None:
    make(tmp_path)
    raw = json.loads((tmp_path / MANIFEST_NAME).read_text())
    raw["future_field"] = {"x": 1}
    raw["artifacts"]["onnx"]["future_artifact_field"] = 3
    (tmp_path / MANIFEST_NAME).write_text(json.dumps(raw))
    m = Manifest.load(tmp_path)
    assert m.name == "m1" and m.artifacts["onnx"].file == "model.onnx"


@pytest.mark.parametrize(
    "content, match",
    [
        (None, "no manifest.json"),
        ("{not json", "unreadable manifest"),
        ("[1, 2]", "not a cifarbench manifest"),
        ('{"name": "x"}', "not a cifarbench manifest"),
        ('{"arch": "x"}', "manifest"),  # no name
        ('{"arch": "x", "name": "n", "artifacts": {"onnx": {"file": "a"}}}', "manifest"),  # artifact lacks fields
        ('{"arch": "x", "name": "n", "artifacts": ["onnx"]}', "manifest"),
    ],
)
def test_broken_manifests_are_model_errors(tmp_path: Path, content: str | None, match: str) -> None:
    if content is not None:
        (tmp_path / MANIFEST_NAME).write_text(content)
    with pytest.raises(ModelError, match=match):
        Manifest.load(tmp_path)


def test_save_needs_a_directory_and_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError):
        Manifest(name="x", arch="y").save()
    m = make(tmp_path)
    before = (tmp_path / MANIFEST_NAME).read_bytes()
    m.metrics["bad"] = object()  # not serialisable: the save fails half way
    with pytest.raises(TypeError):
        m.save()
    assert (tmp_path / MANIFEST_NAME).read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([MANIFEST_NAME, "model.onnx", "model_int8.tflite"])


def test_format_table_is_complete() -> None:
    assert set(ARTIFACT_FORMATS) == set(FORMAT_FILES)
    assert len(set(FORMAT_FILES.values())) == len(ARTIFACT_FORMATS)


# --------------------------------------------------------------------------- input contract

FIRST_RELEASE_INPUT = {  # the `input` block `cifarbench train`/`convert` wrote in the first release
    "shape": [32, 32, 3], "layout": "NHWC", "dtype": "uint8", "color": "RGB", "range": [0, 255],
    "preprocess": "inside the model", "preprocess_baked": "scale:1/255", "softmax_added": True,
    "model_input_size": [64, 64],
}


def test_first_release_manifests_still_load(tmp_path: Path) -> None:
    from cifarbench.models.manifest import InputContract, Step
    from cifarbench.models.model_ref import shipped_models, resolve_model

    names = shipped_models()
    assert names, "the package ships trained models"
    for name in names:
        m = resolve_model(name)
        assert isinstance(m.input, InputContract)
        assert m.input.shape == (32, 32, 3) and m.input.dtype == "uint8" and m.input.layout == "NHWC"
        assert m.input.steps == () and m.input.softmax_added is False
        assert m.input["shape"] == [32, 32, 3] and m.input.get("preprocess_baked") == "none"  # dict-style readers
    make(tmp_path)
    raw = json.loads((tmp_path / MANIFEST_NAME).read_text())
    raw["input"] = FIRST_RELEASE_INPUT
    (tmp_path / MANIFEST_NAME).write_text(json.dumps(raw))
    c = Manifest.load(tmp_path).input
    assert c.steps == (Step("scale", scale=1 / 255),) and c.softmax_added and c.model_input_size == (64, 64)
    del raw["input"]  # older still: no input block at all
    (tmp_path / MANIFEST_NAME).write_text(json.dumps(raw))
    assert Manifest.load(tmp_path).input == InputContract()


def test_contract_round_trips_with_the_first_release_keys(tmp_path: Path) -> None:
    from cifarbench.models.manifest import InputContract

    m = make(tmp_path)
    m.input = InputContract(preprocess="scale:1/255+mean-std:0.5,0.5,0.5/0.25,0.25,0.25", softmax_added=True,
                            model_layout="NCHW")
    m.save()
    raw = json.loads((tmp_path / MANIFEST_NAME).read_text())["input"]
    assert {k: raw[k] for k in FIRST_RELEASE_INPUT if k in raw and k != "model_input_size"} == {
        "shape": [32, 32, 3], "layout": "NHWC", "dtype": "uint8", "color": "RGB", "range": [0, 255],
        "preprocess": "inside the model", "preprocess_baked": "scale:1/255+mean-std:0.5,0.5,0.5/0.25,0.25,0.25",
        "softmax_added": True}
    back = Manifest.load(tmp_path).input
    assert back == m.input and [s.kind for s in back.steps] == ["scale", "mean-std"]
    assert Manifest(name="x", arch="y", input={"shape": [28, 28, 3]}).input.size == (28, 28)  # dicts are read too


@pytest.mark.parametrize("bad", [{"shape": [32, 32]}, {"shape": "big"}, {"preprocess_baked": "divide:3"}, ["NHWC"]])
def test_broken_contracts_are_model_errors(tmp_path: Path, bad: object) -> None:
    make(tmp_path)
    raw = json.loads((tmp_path / MANIFEST_NAME).read_text())
    raw["input"] = bad
    (tmp_path / MANIFEST_NAME).write_text(json.dumps(raw))
    with pytest.raises(ModelError, match="input contract"):
        Manifest.load(tmp_path)


@pytest.mark.parametrize("spec", ["scale:1/0", "scale:0", "mean-std:0.5/0", "scale:inf", "mean-std:1,2/3,4", "divide:3", "scale:"])
def test_bad_preprocess_specs_are_usage_errors(spec: str) -> None:
    from cifarbench.errors import UsageError
    from cifarbench.models.manifest import parse_preprocess

    with pytest.raises(UsageError, match="--preprocess"):
        parse_preprocess(spec)


def test_preprocess_steps_parse_once() -> None:
    from cifarbench.models.manifest import Step, parse_preprocess

    assert parse_preprocess(None) == parse_preprocess("none") == ()
    assert parse_preprocess("scale:1/255 + mean-std:0.485,0.456,0.406/0.229,0.224,0.225") == (
        Step("scale", scale=1 / 255), Step("mean-std", mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)))


# ----------------------------------------------------------------------------- presets and the transform

_IMAGENET_MEAN, _IMAGENET_STD = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
_PRESET_ORACLES = {  # Keras applications' preprocess_input modes, written out in numpy (float64)
    "torch": lambda x: (x / 255.0 - _IMAGENET_MEAN) / _IMAGENET_STD,
    "tf": lambda x: x / 127.5 - 1.0,
    "caffe": lambda x: x[..., ::-1] - np.array([103.939, 116.779, 123.68]),
    "none": lambda x: x,
}


@pytest.mark.parametrize("preset", sorted(_PRESET_ORACLES))
def test_presets_match_numpy_computed_independently(preset: str) -> None:
    from cifarbench.models.kerasio import apply_preprocess
    from cifarbench.models.manifest import parse_preprocess
    from cifarbench.models.onnxio import _apply

    x = np.random.default_rng(0).integers(0, 256, (2, 3, 4, 3)).astype(np.float32)
    x[0, 0, 0] = (255, 0, 17)  # a pixel whose channels differ, so a BGR flip shows
    want = _PRESET_ORACLES[preset](x.astype(np.float64))
    steps = parse_preprocess(preset)
    np.testing.assert_allclose(apply_preprocess(x, steps), want, rtol=1e-5, atol=1e-4)
    got = x
    for s in steps:
        got = _apply(got, s)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)
    assert parse_preprocess(preset.upper()) == steps


def test_caffe_preset_reverses_channels_inside_an_onnx_graph() -> None:
    """The wrapped ONNX graph (Gather on the channel axis) computes the caffe preset too."""
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    from onnx import TensorProto, helper

    from cifarbench.models.manifest import InputContract
    from cifarbench.models.onnxio import wrap

    g = helper.make_graph([helper.make_node("Flatten", ["x"], ["y"], axis=1)], "flat",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2, 2, 3])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 12])])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    contract = InputContract(size=(2, 2), preprocess="caffe")
    wrapped = wrap(model, model.graph.input[0], model.graph.output[0], contract, np.float32)
    sess = ort.InferenceSession(wrapped.SerializeToString(), providers=["CPUExecutionProvider"])
    px = np.random.default_rng(1).integers(0, 256, (2, 2, 2, 3), dtype=np.uint8)
    got = sess.run(None, {"pixels": px})[0]
    want = _PRESET_ORACLES["caffe"](px.astype(np.float64)).reshape(2, 12)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)
    assert onnx is not None


def test_transform_round_trips_and_first_release_manifests_keep_their_transform(tmp_path: Path) -> None:
    from cifarbench.data.transform import Transform
    from cifarbench.models.manifest import InputContract

    c = InputContract(size=(64, 48), resize="pad", crop_pct=0.875, interpolation="bicubic", preprocess="torch")
    back = InputContract.from_dict(json.loads(json.dumps(c.to_dict())))
    assert back == c and back.transform == Transform((64, 48), "pad", 0.875, "bicubic")
    assert back.transform_with(resize="squash", crop_pct=1.0) == Transform((64, 48), "squash", 1.0, "bicubic")
    old = InputContract.from_dict({"shape": [32, 32, 3], "layout": "NHWC", "dtype": "uint8"})
    assert old.transform == Transform((32, 32), "center-crop", None, "lanczos")
    with pytest.raises(ModelError):
        InputContract.from_dict({"shape": [32, 32, 3], "crop_pct": 2})

def test_input_contract_defaults_are_the_first_releases() -> None:
    from cifarbench.models.manifest import InputContract

    c = InputContract.from_dict({})
    assert (c.size, c.channels, c.dtype, c.layout, c.color, c.value_range, c.preprocess, c.softmax_added,
            c.model_input_size, c.model_layout) == ((32, 32), 3, "uint8", "NHWC", "RGB", (0, 255), "none", False,
                                                    None, "NHWC")
    assert c == InputContract() and InputContract.from_dict(None) == c and InputContract.from_dict(c) is c
    assert c.to_dict() == {"shape": [32, 32, 3], "layout": "NHWC", "dtype": "uint8", "color": "RGB", "range": [0, 255],
                           "preprocess": "inside the model", "preprocess_baked": "none", "softmax_added": False,
                           "resize": "center-crop", "crop_pct": None, "interpolation": "lanczos"}
    assert c.get("nope") is None and c.get("nope", 7) == 7 and c["layout"] == "NHWC"


def test_input_contract_reads_every_key() -> None:
    from cifarbench.models.manifest import InputContract

    raw = {"shape": [40, 48, 1], "layout": "nchw", "dtype": "float32", "color": "BGR", "range": [-1, 1],
           "preprocess_baked": "scale:2", "softmax_added": True, "model_input_size": [224, 200], "model_layout": "nchw"}
    c = InputContract.from_dict(raw)
    assert (c.size, c.channels, c.dtype, c.layout, c.color, c.value_range, c.preprocess, c.softmax_added,
            c.model_input_size, c.model_layout) == ((40, 48), 1, "float32", "NCHW", "BGR", (-1, 1), "scale:2", True,
                                                    (224, 200), "NCHW")
    d = c.to_dict()
    assert d["model_input_size"] == [224, 200] and d["model_layout"] == "NCHW" and d["preprocess_baked"] == "scale:2"
    assert InputContract.from_dict(d) == c  # round trip
    assert "model_layout" not in InputContract(model_layout="NHWC").to_dict()
    assert InputContract(preprocess="").to_dict()["preprocess_baked"] == "none"


@pytest.mark.parametrize("raw, message", [({"shape": [32, 32]}, "shape [32, 32] is not H,W,C"),
                                          ({"shape": [0, 32, 3]}, "shape [0, 32, 3] is not H,W,C"),
                                          ([1, 2], "input contract must be an object, not list"),
                                          ({"preprocess_baked": "scale:0"}, "scale must not be 0")])
def test_input_contract_errors(raw: object, message: str) -> None:
    from cifarbench.models.manifest import InputContract

    with pytest.raises(ModelError, match=message.replace("[", r"\[").replace("]", r"\]")):
        InputContract.from_dict(raw)
    assert InputContract.from_dict({"shape": [1, 1, 1]}).shape == (1, 1, 1)  # the smallest image is one pixel


def test_preprocess_numbers_and_counts() -> None:
    from cifarbench.errors import UsageError
    from cifarbench.models.manifest import Step, parse_preprocess

    assert parse_preprocess("scale:1e-3/2") == parse_preprocess("scale:1E-3/2") == (Step("scale", scale=0.0005),)
    assert parse_preprocess("mean-std:0.5/0.25,0.5,1") == (Step("mean-std", mean=(0.5,), std=(0.25, 0.5, 1.0)),)
    assert parse_preprocess("mean-std:1,2,3/4") == (Step("mean-std", mean=(1.0, 2.0, 3.0), std=(4.0,)),)
    # the first "/" splits means from stds, so stds may be fractions themselves
    assert parse_preprocess("mean-std:0.5,0.5,0.5/1/4,1/4,1/4") == (
        Step("mean-std", mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25)),)
    for bad, why in (("mean-std:1,2/3", "need 1 or 3 means and non-zero stds"),
                     ("mean-std:1/2,3", "need 1 or 3 means and non-zero stds"),
                     ("scale:0", "scale must not be 0"), ("scale:1/0", "division by zero in '1/0'"),
                     ("scale:nan", "'nan' is not a finite number"), ("divide:3", "unknown step 'divide'")):
        with pytest.raises(UsageError) as e:
            parse_preprocess(bad)
        assert str(e.value) == (f"bad --preprocess {bad!r} ({why}); use a preset (torch, tf, caffe, none), or "
                                "scale:1/255, mean-std:R,G,B/R,G,B, bgr, or steps joined by +")


def test_manifest_file_layout_and_errors(tmp_path: Path) -> None:
    m = Manifest(name="m", arch="x")
    with pytest.raises(ValueError, match="^manifest has no directory$"):
        m.save()
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "w.onnx").write_bytes(b"abc")
    m.save(tmp_path / "a")
    assert m.directory == tmp_path / "a"
    art = m.add_artifact("onnx", "w.onnx", details={"opset": 17})
    assert (art.format, art.file, art.size, art.details) == ("onnx", "w.onnx", 3, {"opset": 17})
    m.save()  # to its own directory
    text = (tmp_path / "a" / MANIFEST_NAME).read_text()
    assert text.startswith('{\n  "name": "m",\n  "arch": "x",\n') and text.endswith("}\n")  # indent 2, field order
    with pytest.raises(ModelError) as e:
        Manifest(name="m", arch="x").path_of("onnx")
    assert str(e.value) == "model 'm' has no onnx artifact (has: none); run `cifarbench convert`"
    from cifarbench.models.manifest import _json_default

    with pytest.raises(TypeError, match="^not JSON serialisable: object$"):
        _json_default(object())


def test_input_contract_size_is_normalised_to_a_tuple_of_ints() -> None:
    from cifarbench.models.manifest import InputContract

    c = InputContract(size=[40, 30.0])  # type: ignore[arg-type]  # e.g. straight from JSON
    assert c.size == (40, 30) and isinstance(c.size, tuple) and all(type(v) is int for v in c.size)
