"""The Python API: cifarbench.load / Model.predict / Model.classify / cifarbench.bench, and the README's examples."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import cifarbench
from cifarbench.errors import ModelError, UsageError
from conftest import REPO, class_pattern, fresh_env
from native_models import centre, nearest_model, paint

CLASSES = ["a", "b", "c", "d", "e", "f"]


def test_import_is_cheap_and_onnx_never_imports_tensorflow(tmp_path: Path) -> None:
    """In a fresh interpreter: `import cifarbench` loads nothing heavy; loading and running an onnx model no TF."""
    model = nearest_model(tmp_path / "m", CLASSES, (10, 14))
    code = f"""
import sys
import cifarbench
heavy = ("numpy", "PIL", "tensorflow", "keras", "onnxruntime", "openvino", "ai_edge_litert", "click", "rich")
print(sorted(m for m in sys.modules if m.split(".")[0] in heavy))
m = cifarbench.load({str(model)!r}, backend="onnx")
import numpy as np
print(m.predict(np.zeros((10, 14, 3), np.uint8)).shape, "tensorflow" in sys.modules, "keras" in sys.modules)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=tmp_path,
                         env=fresh_env(PYTHONPATH=str(REPO)))
    assert out.returncode == 0, out.stderr
    first, second = out.stdout.strip().splitlines()
    assert first == "[]"
    assert second == "(1, 6) False False"


def test_predict_checks_dtype_and_shape(tmp_path: Path) -> None:
    m = cifarbench.load(nearest_model(tmp_path / "m", CLASSES, (10, 14)), backend="onnx")
    assert m.input_size == (10, 14) and m.classes == CLASSES and m.backend == "onnx"
    x = np.zeros((3, 10, 14, 3), np.uint8)
    x[..., 0] = np.array([round(centre(k, 6)) for k in (0, 2, 5)])[:, None, None]
    p = m.predict(x)
    assert p.shape == (3, 6) and p.dtype == np.float32 and list(p.argmax(1)) == [0, 2, 5]
    with pytest.raises(UsageError, match="uint8.*float32"):
        m.predict(x.astype(np.float32) / 255)
    with pytest.raises(UsageError, match=r"\(N, 10, 14, 3\)"):
        m.predict(np.zeros((3, 14, 10, 3), np.uint8))
    for bad in (x.astype(np.float32) / 255, np.zeros((3, 14, 10, 3), np.uint8), x.tolist()):  # as every backend's
        with pytest.raises(ValueError):  # predict: a BatchError, so `except ValueError` catches it (README)
            m.predict(bad)
    with pytest.raises(UsageError, match=r"\(N, 10, 14, 3\)"):
        m.predict(np.zeros((3, 10, 14), np.uint8))  # grey: 3-D, read as one (10, 14) image without channels
    with pytest.raises(ModelError):
        cifarbench.load(tmp_path / "nothing")


def test_classify_yields_rows_in_order_with_errors_across_batch_boundaries(tmp_path: Path) -> None:
    m = cifarbench.load(nearest_model(tmp_path / "m", CLASSES, (10, 14)), backend="onnx")
    photos = tmp_path / "photos"
    painted = {"p0.png": 4, "p1.png": 1, "p3.png": 5, "p4.png": 0, "p5.png": 3}
    for name, k in painted.items():
        paint(tmp_path, "photos", name, centre(k, 6), shape=(17 + k, 23))
    (photos / "p2.png").write_bytes(b"not a png")
    rows = list(m.classify([photos], top_k=2, batch_size=2, workers=0))
    assert [Path(r.path).name for r in rows] == ["p0.png", "p1.png", "p2.png", "p3.png", "p4.png", "p5.png"]
    by = {Path(r.path).name: r for r in rows}
    assert by["p2.png"].error and by["p2.png"].label is None
    for name, k in painted.items():
        r = by[name]
        assert r.error is None and r.label == CLASSES[k] and r.class_index == k and len(r.alternatives) == 1
        assert r.alternatives[0][0] in (CLASSES[max(k - 1, 0)], CLASSES[min(k + 1, 5)])
    assert [r.label for r in m.classify(photos / "p3.png")] == ["f"]  # one path, not a list
    with pytest.raises(UsageError):
        list(m.classify(photos, top_k=7))


def test_bench_returns_the_results_document_and_is_callable_whatever_was_imported(tmp_path: Path) -> None:
    import cifarbench.bench.runner  # noqa: F401  the subpackage attribute must not shadow the function

    model = nearest_model(tmp_path / "m", CLASSES, (10, 14))
    res = cifarbench.bench(model, "onnx", synthetic=True, batch_sizes=(1, 4), min_time=0, min_iters=5, warmup=1)
    row = res.row("nearest", "onnx")
    assert row["status"] == "ok" and row["accuracy"] is None and row["p50_ms"] > 0 and row["img_per_s_b4"] > 0
    with pytest.raises(KeyError, match=r"not its path: \('nearest', 'onnx'\)"):  # a path is not a row's name
        res.row(str(model), "onnx")
    assert res["schema"] == "cifarbench.bench" and res["data"]["source"] == "synthetic"
    files = res.save(tmp_path / "out")
    assert {"results.json", "results.csv", "report.md"} <= {f.name for f in files}
    with pytest.raises(UsageError, match="unknown bench option"):
        cifarbench.bench(model, "onnx", synthetic=True, limt=5)
    with pytest.raises(AttributeError):
        cifarbench.no_such_thing  # noqa: B018


def _python_blocks(readme: str) -> list[str]:
    section = readme.split("### Python API", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, re.S)


def test_readme_python_examples_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    blocks = _python_blocks((REPO / "README.md").read_text(encoding="utf-8"))
    assert len(blocks) == 2
    photos = tmp_path / "photos"
    photos.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(class_pattern(3, rng, 64)).save(photos / "cat.jpg")
    Image.fromarray(class_pattern(1, rng, 48)).save(photos / "car.png")
    (photos / "broken.jpg").write_bytes(b"\xff\xd8 truncated")
    monkeypatch.chdir(tmp_path)
    scope: dict[str, object] = {}
    for code in blocks:
        exec(compile(code, "README.md", "exec"), scope)  # noqa: S102 - the documented examples, verbatim
    out = capsys.readouterr().out
    assert "<cifarbench.Model 'flagship': 10 classes, 32x32," in out and "(1, 10)" in out
    assert "photos/broken.jpg None None [] " in out and "photos/cat.jpg " in out
    assert (tmp_path / "bench-out" / "results.json").is_file()
