"""--resize/--crop-pct/--interpolation on bench and serve, and the lone-artifact class note, on a hand-built model.

The oracle is geometry, not the loader: the model answers "red" or "blue" by which channel's mean
is larger, and a 3:1 image with red sides and a blue middle is blue once centre-cropped but red once
squashed (two thirds of it is red); the mirrored image flips the other way. So a folder labelled by
what the centre crop shows scores 1.0 with the stored center-crop and 0.0 with ``--resize squash``.
"""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import pytest
from PIL import Image

from cifarbench.bench.results_schema import load_results
from cifarbench.errors import ExitStatus
from cifarbench.models.manifest import InputContract, Manifest
from conftest import ServeProcess, run_cli

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

SIZE = 8
FAST = ("--min-time", "0", "--min-iters", "5", "--warmup", "1", "--batch-sizes", "1,4", "--backend", "onnx")
RED, BLUE = (230, 10, 10), (10, 10, 230)


def write_channel_model(path: Path, n_out: int = 2) -> None:
    """uint8 NHWC pixels -> softmax over (mean R, mean B, 0, ...): class 0 when red dominates, 1 when blue does."""
    from onnx import TensorProto, helper, numpy_helper, save

    w = np.zeros((3, n_out), np.float32)
    w[0, 0], w[2, 1] = 0.1, 0.1
    nodes = [helper.make_node("Cast", ["pixels"], ["f"], to=TensorProto.FLOAT),
             helper.make_node("ReduceMean", ["f"], ["m"], axes=[1, 2], keepdims=0),
             helper.make_node("MatMul", ["m", "W"], ["logits"]),
             helper.make_node("Softmax", ["logits"], ["probs"], axis=-1)]
    graph = helper.make_graph(nodes, "channels", [helper.make_tensor_value_info("pixels", TensorProto.UINT8, ["N", SIZE, SIZE, 3])],
                              [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["N", n_out])],
                              [numpy_helper.from_array(w, "W")])
    save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))


def banded(sides: tuple[int, int, int], middle: tuple[int, int, int], h: int = 16) -> Image.Image:
    """A 3h x h image: ``sides`` in the left and right thirds, ``middle`` in the centre square."""
    a = np.empty((h, 3 * h, 3), np.uint8)
    a[:] = sides
    a[:, h:2 * h] = middle
    return Image.fromarray(a)


def png(im: Image.Image) -> bytes:
    import io

    buf = io.BytesIO()
    im.save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def flip(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(model dir with manifest.json storing center-crop, data tree labelled by what the centre crop shows)."""
    root = tmp_path_factory.mktemp("flip")
    model = root / "model"
    model.mkdir()
    write_channel_model(model / "model.onnx")
    m = Manifest(name="flip", arch="hand-built", classes=["red", "blue"], input=InputContract(size=(SIZE, SIZE)))
    m.directory = model
    m.add_artifact("onnx", "model.onnx")
    m.save()
    for label, (sides, middle) in {"blue": (RED, BLUE), "red": (BLUE, RED)}.items():
        d = root / "data" / "test" / label
        d.mkdir(parents=True)
        for i in range(3):
            banded(sides, middle, h=16 + 4 * i).save(d / f"{i}.png")
    return model, root / "data"


def test_the_oracle_holds_on_pillow_pixels() -> None:
    """The premise, computed with Pillow directly: centre square blue, squashed image mostly red."""
    im = banded(RED, BLUE)
    centre = np.asarray(im.crop((16, 0, 32, 16)).resize((SIZE, SIZE)), np.float64).mean((0, 1))
    squashed = np.asarray(im.resize((SIZE, SIZE)), np.float64).mean((0, 1))
    assert centre[2] > centre[0] and squashed[0] > squashed[2]


# ---------------------------------------------------------------------------------------------- one definition


def test_classify_bench_and_serve_share_one_definition_of_the_options() -> None:
    import click

    from cifarbench.cli import cli

    def opts(name: str) -> dict[str, tuple[object, ...]]:
        cmd = cli.get_command(click.Context(cli), name)
        assert cmd is not None
        return {p.name: (tuple(p.opts), repr(p.type), p.help, p.callback) for p in cmd.params
                if p.name in ("resize", "crop_pct", "interpolation")}

    first = opts("classify")
    assert set(first) == {"resize", "crop_pct", "interpolation"}
    assert opts("bench") == first and opts("serve") == first


@pytest.mark.parametrize("command", ["bench", "serve", "classify"])
@pytest.mark.parametrize("args, needle", [
    (("--crop-pct", "0"), "--crop-pct"), (("--crop-pct", "1.0001"), "--crop-pct"), (("--crop-pct", "-0.5"), "--crop-pct"),
    (("--crop-pct", "nan"), "--crop-pct"), (("--resize", "stretch"), "--resize"), (("--interpolation", "nearest"), "--interpolation"),
])
def test_bad_values_exit_2_before_anything_loads(command: str, args: tuple[str, ...], needle: str) -> None:
    extra = ("x.png",) if command == "classify" else ()
    res = run_cli(command, "--model", "/nonexistent/model", *args, *extra)
    assert res.exit_code == ExitStatus.USAGE, res.output
    assert needle in res.stderr and "Traceback" not in res.stderr


# ---------------------------------------------------------------------------------------------- bench


def _bench(model: Path, data: Path, out: Path, *extra: str, stderr: list[str] | None = None) -> dict:
    res = run_cli("bench", "--model", model, "--data", data, *FAST, "--output-dir", out, *extra)
    assert res.exit_code == 0, res.output
    if stderr is not None:
        stderr.append(res.stderr)
    return load_results(out / "results.json")


def test_bench_uses_the_stored_transform_unless_overridden(flip: tuple[Path, Path], tmp_path: Path) -> None:
    model, data = flip
    said: list[str] = []
    stored = _bench(model / "model.onnx", data, tmp_path / "stored", "--no-isolate", stderr=said)  # listed beside it
    assert "CIFAR-10" not in said[0]  # its classes come from the manifest beside it: no note
    (row,) = stored["results"]
    assert row["quality"]["accuracy"] == 1.0
    assert stored["environment"]["transform"] == {"flip": "8x8 center-crop, lanczos"}
    assert stored["models"]["flip"]["transform"] == {"size": [8, 8], "resize": "center-crop", "crop_pct": None,
                                                     "interpolation": "lanczos", "text": "8x8 center-crop, lanczos"}
    squashed = _bench(model, data, tmp_path / "squash", "-q", "--no-isolate", "--resize", "squash", "--interpolation", "bilinear")
    (row,) = squashed["results"]
    assert row["quality"]["accuracy"] == 0.0  # every image flips class
    assert squashed["environment"]["transform"] == {"flip": "8x8 squash, bilinear"}
    assert "- Images to flip's input: 8x8 squash, bilinear" in (tmp_path / "squash" / "report.md").read_text()
    assert squashed["models"]["flip"]["transform"]["resize"] == "squash"
    assert squashed["config"]["resize"] == "squash" and squashed["config"]["interpolation"] == "bilinear"
    assert json.loads((model / "manifest.json").read_text())["input"]["resize"] == "center-crop"  # not rewritten


def test_bench_override_reaches_isolated_rows_and_crop_pct_1_is_allowed(flip: tuple[Path, Path], tmp_path: Path) -> None:
    """The row measured in its own process decodes the override's way too (the parent's data cache is not used)."""
    model, data = flip
    doc = _bench(model, data, tmp_path / "iso", "-q", "--isolate", "--resize", "squash", "--crop-pct", "1")
    (row,) = doc["results"]
    assert row["isolated"] and row["quality"]["accuracy"] == 0.0
    assert doc["environment"]["transform"] == {"flip": "8x8 squash, crop 1, lanczos"} and doc["config"]["crop_pct"] == 1.0


# ---------------------------------------------------------------------------------------------- serve


class Server(ServeProcess):
    """The serve child on the flip model's onnx artifact, with the two requests these tests make."""

    def __init__(self, model: Path, *extra: str, port: int = 0) -> None:
        super().__init__(model, "onnx", *extra, port=port)

    def classify(self, blob: bytes) -> str:
        req = urllib.request.Request(self.url + "v1/classify?top_k=1", data=blob, headers={"Content-Type": "image/png"})
        with urllib.request.urlopen(req, timeout=30) as r:
            return json.loads(r.read())["results"][0]["label"]

    def model_info(self) -> dict:
        with urllib.request.urlopen(self.url + "v1/model", timeout=30) as r:
            return json.loads(r.read())


@pytest.fixture
def serve() -> Iterator[Callable[..., Server]]:
    started: list[Server] = []

    def start(model: Path, *extra: str, port: int = 0) -> Server:
        started.append(Server(model, *extra, port=port))
        return started[-1]

    yield start
    for s in started:
        s.stop()


def test_serve_uses_the_stored_transform_unless_overridden(flip: tuple[Path, Path], serve: Callable[..., Server]) -> None:
    pytest.importorskip("uvicorn")
    model, _ = flip
    blue_middle, red_middle = png(banded(RED, BLUE)), png(banded(BLUE, RED))
    stored = serve(model)
    assert (stored.classify(blue_middle), stored.classify(red_middle)) == ("blue", "red")
    assert stored.model_info()["serving"]["transform"] == "8x8 center-crop, lanczos"
    squashed = serve(model, "--resize", "squash", "--crop-pct", "1", "--interpolation", "bicubic")
    assert (squashed.classify(blue_middle), squashed.classify(red_middle)) == ("red", "blue")
    assert squashed.model_info()["serving"]["transform"] == "8x8 squash, crop 1, bicubic"


def test_serve_workers_get_the_override_too(flip: tuple[Path, Path], serve: Callable[..., Server]) -> None:
    """--workers 2: each worker process builds its app from the JSON config, override included."""
    pytest.importorskip("uvicorn")
    import socket

    with socket.socket() as s:  # --workers needs a named port
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    model, _ = flip
    server = serve(model, "--workers", "2", "--resize", "squash", port=port)
    for _ in range(4):  # new connections: whichever worker answers decodes the override's way
        assert server.classify(png(banded(RED, BLUE))) == "red"
    assert server.model_info()["serving"]["transform"] == "8x8 squash, lanczos"


# ---------------------------------------------------------------------------------------------- the class note

NOTE = "named as CIFAR-10's classes"


@pytest.fixture(scope="module")
def lone(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 10-output .onnx file with no manifest.json beside it."""
    path = tmp_path_factory.mktemp("lone") / "ten.onnx"
    write_channel_model(path, n_out=10)
    return path


def test_bench_says_once_that_a_lone_artifacts_classes_are_cifar10s(lone: Path, synthetic_tree: Path,
                                                                      tmp_path: Path) -> None:
    args = ("bench", "--model", lone, "--data", synthetic_tree, "--limit", "8", *FAST, "--no-isolate")
    res = run_cli(*args, "--output-dir", tmp_path / "a")
    assert res.exit_code == 0, res.output
    lines = [ln for ln in res.stderr.splitlines() if NOTE in ln]
    assert len(lines) == 1 and lines[0].startswith("bench: ten.onnx: "), res.stderr
    quiet = run_cli(*args, "--output-dir", tmp_path / "b", "-q")
    assert quiet.exit_code == 0 and NOTE not in quiet.stderr


def test_bench_measures_a_lone_artifact_in_its_own_process(lone: Path, synthetic_tree: Path, tmp_path: Path) -> None:
    """An isolated row resolves the file itself: its folder has no manifest.json (it used to fail: 'no manifest.json')."""
    out = tmp_path / "o"
    res = run_cli("bench", "--model", lone, "--data", synthetic_tree, "--limit", "8", *FAST, "--isolate",
                  "--resize", "pad", "--output-dir", out, "-q")
    assert res.exit_code == 0, res.output
    doc = load_results(out / "results.json")
    (row,) = doc["results"]
    assert row["status"] == "ok" and row["isolated"] and doc["environment"]["transform"] == {"ten": "8x8 pad, lanczos"}


def test_serve_says_that_a_lone_artifacts_classes_are_cifar10s(lone: Path, serve: Callable[..., Server]) -> None:
    pytest.importorskip("uvicorn")
    server = serve(lone)
    note = server.wait_for(lambda ln: NOTE in ln, 5)
    assert note.startswith("serve: ten.onnx: ")
    assert server.lines.index(note) < next(i for i, ln in enumerate(server.lines) if "serving " in ln)
    assert server.model_info()["classes"][:2] == ["airplane", "automobile"]


def test_classify_says_the_same_note_once_and_takes_the_same_override(lone: Path, flip: tuple[Path, Path],
                                                                       tmp_path: Path) -> None:
    img = tmp_path / "wide.png"
    banded(RED, BLUE).save(img)
    res = run_cli("classify", img, "--model", lone, "--backend", "onnx")
    assert res.exit_code == 0, res.output
    assert [ln for ln in res.stderr.splitlines() if NOTE in ln] == [
        "classify: ten.onnx: no class list: the model's 10 outputs are named as CIFAR-10's classes "
        "(pass --classes FILE if they are not)"]
    labels = [run_cli("classify", img, "--model", flip[0], "--backend", "onnx", *args).stdout.splitlines()[1].split(",")[1]
              for args in ((), ("--resize", "squash"))]
    assert labels == ["blue", "red"]
