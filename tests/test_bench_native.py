"""bench on an ImageNet-style tree matched to the model's classes, top-5, readable reports at many classes, --synthetic.

The models are ``native_models.nearest_model``: the test knows every answer from the pixels it painted, so the
confusion matrices and top-5 figures below are counted by hand, not recomputed by the code under test.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from cifarbench.bench import metrics
from cifarbench.bench.results_schema import load_results, validate
from cifarbench.data.sources import load_dataset, matched_classes
from cifarbench.errors import DataError
from conftest import run_cli
from native_models import centre, nearest_model, paint

FAST = ("--min-time", "0", "--min-iters", "5", "--warmup", "1", "--batch-sizes", "1,4", "--no-isolate")
SEVEN = ["Golden Retriever", "tabby cat", "sea-lion", "dd", "ee", "ff", "gg"]


# --------------------------------------------------------------------------- metrics, hand-counted


def test_top_k_accuracy_hand_counted() -> None:
    probs = np.array([[.50, .20, .10, .08, .07, .05],   # true 0: rank 1
                      [.05, .07, .08, .10, .20, .50],   # true 0: rank 6 -> miss
                      [.30, .25, .20, .15, .06, .04],   # true 4: rank 5 -> hit
                      [.30, .25, .20, .15, .06, .04]])  # true 5: rank 6 -> miss
    labels = np.array([0, 0, 4, 5])
    assert metrics.top_k_accuracy(probs, labels, 5) == 0.5
    assert metrics.top_k_accuracy(probs, labels, 1) == 0.25
    assert metrics.top_k_accuracy(probs[:, :5] / 1, np.array([0, 0, 4, 4]), 5) == 1.0  # exactly 5 classes: defined
    assert metrics.top_k_accuracy(probs[:, :4], np.array([0, 0, 3, 3]), 5) is None  # fewer than 5: not shown
    with pytest.raises(ValueError):
        metrics.top_k_accuracy(probs, labels[:3], 5)


def test_most_confused_and_sparse_round_trip() -> None:
    cm = np.array([[5, 0, 3], [1, 4, 0], [0, 3, 2]])
    pairs = metrics.most_confused(cm, ["a", "b", "c"], n=2)
    assert [(p["true"], p["predicted"], p["count"]) for p in pairs] == [("a", "c", 3), ("c", "b", 3)]
    assert pairs[0]["share"] == pytest.approx(3 / 8)
    sparse = metrics.sparse_confusion(cm)
    assert sorted(map(tuple, sparse)) == [(0, 0, 5), (0, 2, 3), (1, 0, 1), (1, 1, 4), (2, 1, 3), (2, 2, 2)]
    assert (metrics.dense_confusion(sparse, 3) == cm).all()
    assert metrics.most_confused(np.eye(3, dtype=int), ["a", "b", "c"]) == []


# --------------------------------------------------------------------------- trees matched to the model's classes


def test_folders_match_the_models_classes_by_name_and_refuse_strangers() -> None:
    assert matched_classes(["golden_retriever", "Tabby-Cat", "sea lion"], SEVEN) == {
        "golden_retriever": 0, "Tabby-Cat": 1, "sea lion": 2}
    with pytest.raises(DataError) as e:
        matched_classes(["dd", "zebra", "okapi"], SEVEN)
    msg = str(e.value)
    assert "2 of 3 class folders" in msg and "zebra, okapi" in msg and "7 classes" in msg and "\n" not in msg
    with pytest.raises(DataError, match="and 2 more"):
        matched_classes([f"x{i}" for i in range(12)], SEVEN)
    with pytest.raises(DataError, match="both match"):
        matched_classes(["sea lion", "sea_lion"], SEVEN)


def _seven_tree(root: Path) -> Path:
    """Folders for 6 of the 7 classes (a tree may hold a subset); 3 images painted as another class.

    Expected confusion (rows true, columns predicted), counted by hand:
      Golden Retriever: 2 right, 1 painted as gg (6 classes away: gg's top 5 are gg, ff, ee, dd, sea-lion)
      tabby cat: 2 right
      sea-lion: 1 right, 1 painted as tabby cat (a neighbour: still in the top 5)
      dd: 2 right; ee: 1 right, 1 painted as dd (neighbour: top-5); gg: 2 right; ff: no folder
    """
    n = len(SEVEN)
    plan = {"golden_retriever": [0, 0, 6], "Tabby Cat": [1, 1], "sea-lion": [2, 1], "dd": [3, 3], "ee": [4, 3],
            "gg": [6, 6]}
    for folder, painted in plan.items():
        for i, cls in enumerate(painted):
            paint(root, folder, f"{i}.png", centre(cls, n) + 3, shape=(20 + 7 * i, 33))
    return root


def test_bench_on_a_tree_hand_counted_confusion_and_top5(tmp_path: Path) -> None:
    model = nearest_model(tmp_path / "m", SEVEN, (24, 24))
    tree = _seven_tree(tmp_path / "tree")
    out = tmp_path / "o"
    res = run_cli("bench", "--model", model, "--backend", "onnx", "--data", tree, *FAST, "--output-dir", out,
                  "--format", "table")
    assert res.exit_code == 0, res.stderr
    doc = load_results(out / "results.json")
    q = doc["results"][0]["quality"]
    expected = np.zeros((7, 7), int)
    for t, p, c in [(0, 0, 2), (0, 6, 1), (1, 1, 2), (2, 2, 1), (2, 1, 1), (3, 3, 2), (4, 4, 1), (4, 3, 1), (6, 6, 2)]:
        expected[t, p] = c
    assert (np.array(q["confusion"]) == expected).all()
    assert q["accuracy"] == pytest.approx(10 / 13)
    assert q["top5"] == pytest.approx(12 / 13)  # only the golden retriever painted as gg misses
    assert q["per_class"]["ff"]["support"] == 0
    top = q["most_confused"][0]
    assert {(p["true"], p["predicted"]) for p in q["most_confused"]} == {
        ("Golden Retriever", "gg"), ("sea-lion", "tabby cat"), ("ee", "dd")}
    assert top["count"] == 1
    assert "top-5" in res.stdout and "0.9231" in res.stdout
    summary = next(csv.DictReader((out / "results.csv").open()))
    assert float(summary["top5_accuracy"]) == pytest.approx(12 / 13)
    report = (out / "report.md").read_text()
    assert "| top-5 |" in report and "Most-confused pairs" in report and "| Golden Retriever | gg | 1 | 33.3 % |" in report
    per_class = list(csv.DictReader((out / "per_class.csv").open()))
    assert len(per_class) == 7 and {r["class"] for r in per_class} == set(SEVEN)
    q["top5"] = "92 %"  # the schema types the new fields
    assert any("top5" in e for e in validate(doc))


def test_a_tree_with_a_stranger_folder_is_a_one_line_error_exit_4(tmp_path: Path) -> None:
    model = nearest_model(tmp_path / "m", SEVEN, (24, 24))
    tree = _seven_tree(tmp_path / "tree")
    paint(tree, "zebra", "z.png", 10)
    res = run_cli("bench", "--model", model, "--backend", "onnx", "--data", tree, *FAST, "--output-dir", tmp_path / "o")
    assert res.exit_code == 4
    err = res.stderr.strip()
    assert len(err.splitlines()) == 1 and "zebra" in err and "match none of the model's 7 classes" in err


def test_tree_decodes_at_the_models_size(tmp_path: Path) -> None:
    tree = _seven_tree(tmp_path / "tree")
    ds = load_dataset(tree, "test", classes=SEVEN, transform=(24, 24))
    assert ds.images.shape == (13, 24, 24, 3)
    assert load_dataset(tree, "test", classes=SEVEN).images.shape == (13, 32, 32, 3)  # a separate cache entry
    assert load_dataset(tree, "test", classes=SEVEN, transform=(20, 36)).images.shape == (13, 20, 36, 3)


def test_many_classes_stay_readable(tmp_path: Path) -> None:
    """120 classes: results.json keeps non-zero cells, report.md the weakest classes, the plot the top pairs."""
    n = 120
    classes = [f"c{j:03d}" for j in range(n)]
    model = nearest_model(tmp_path / "m", classes, (8, 8))
    tree = tmp_path / "tree"
    for j in range(n):
        paint(tree, classes[j], "a.png", centre(j, n), shape=(8, 8))
    for j in (10, 20, 30):  # three images painted as the next class
        paint(tree, classes[j], "b.png", centre(j + 1, n), shape=(8, 8))
    out = tmp_path / "o"
    res = run_cli("bench", "--model", model, "--backend", "onnx", "--data", tree, *FAST, "--output-dir", out, "-q")
    assert res.exit_code == 0, res.stderr
    q = load_results(out / "results.json")["results"][0]["quality"]
    assert "confusion" not in q and len(q["confusion_sparse"]) == n + 3
    assert sorted((p["true"], p["predicted"]) for p in q["most_confused"]) == [
        ("c010", "c011"), ("c020", "c021"), ("c030", "c031")]
    assert q["accuracy"] == pytest.approx(120 / 123) and q["top5"] == 1.0
    report = (out / "report.md").read_text()
    section = report.split("## Per-class F1")[1].split("\n## ")[0]
    assert "the 15 lowest" in section and section.count("\n| c0") == 15 + 3  # 15 classes, 3 confused pairs
    assert len(list(csv.DictReader((out / "per_class.csv").open()))) == n
    pytest.importorskip("matplotlib")
    from PIL import Image

    with Image.open(out / "confusion_nearest_onnx.png") as im:  # a bar chart of pairs, not a 120x120 grid
        w, h = im.size
    assert w <= 1000 and h <= 1000


def test_synthetic_measures_speed_and_memory_and_says_accuracy_not_measured(tmp_path: Path) -> None:
    model = nearest_model(tmp_path / "m", SEVEN, (20, 36))
    out = tmp_path / "o"
    res = run_cli("bench", "--model", model, "--backend", "onnx", "--synthetic", *FAST, "--output-dir", out,
                  "--format", "table")
    assert res.exit_code == 0, res.stderr
    doc = load_results(out / "results.json")
    r = doc["results"][0]
    assert r["status"] == "ok" and r["quality"] == {} and r["latency"]["p50_ms"] > 0 and r["peak_rss_mb"] > 0
    assert {t["batch_size"] for t in r["throughput"]} == {1, 4} and all(t["images_per_s"] for t in r["throughput"])
    assert doc["data"]["source"] == "synthetic" and doc["data"]["sizes"] == ["20x36"]
    assert "random images at 20x36" in doc["data"]["subset"]
    assert "not measured" in res.stdout and "nan" not in res.stdout.lower()
    summary = next(csv.DictReader((out / "results.csv").open()))
    assert summary["accuracy"] == "" and summary["p50_ms"] != ""
    report = (out / "report.md").read_text()
    assert "| not measured |" in report and "Accuracy: not measured" in report
    assert not (out / "per_class.csv").exists()
    assert json.loads((out / "results.json").read_text())["config"]["synthetic"] is True


def test_synthetic_isolated_rows_see_the_same_pixels(tmp_path: Path) -> None:
    from cifarbench.bench.data import synthetic

    a, b = synthetic((5, 7), 64, 0), synthetic((5, 7), 64, 0)
    assert a.images.shape == (64, 5, 7, 3) and (a.images == b.images).all() and a.labels is None
    assert not (synthetic((5, 7), 64, 1).images == a.images).all()
    model = nearest_model(tmp_path / "m", SEVEN, (12, 12))
    out = tmp_path / "o"
    res = run_cli("bench", "--model", model, "--backend", "onnx", "--synthetic", *FAST[:-1], "--isolate",
                  "--output-dir", out, "-q")
    assert res.exit_code == 0, res.stderr
    r = load_results(out / "results.json")["results"][0]
    assert r["isolated"] and r["throughput"] and r["quality"] == {}


@pytest.mark.parametrize("extra", [("--data", "bundled"), ("--limit", "5"), ("--tta", "flip")])
def test_synthetic_excludes_options_that_need_labels(tmp_path: Path, extra: tuple[str, ...]) -> None:
    res = run_cli("bench", "--synthetic", *extra, "--output-dir", tmp_path / "o")
    assert res.exit_code == 2 and extra[0] in res.stderr
