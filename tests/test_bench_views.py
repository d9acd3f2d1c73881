"""Issue 24 on bench's views, through fake backends (fast): one --repeat definition everywhere, latency at every
batch size, any float32 reference, the throughput plot, `bench compare`'s absent rows and formats, a bench where
nothing runs, short options and help text."""

from __future__ import annotations

import copy
import csv
import io
import json
import time
from pathlib import Path
from typing import Any

import click
import numpy as np
import pytest

from cifarbench import backends
from cifarbench.bench import compare, plots, report
from cifarbench.bench import runner as bench
from cifarbench.errors import ExitStatus
from cifarbench.models.manifest import Manifest
from conftest import make_tree, run_cli


class JitterBackend:
    """Fixed probabilities (``shift`` moves mass between two classes); each call sleeps a random few 0.1 ms, so
    repeats differ and a row's median is not any single repeat's figure."""

    def __init__(self, name: str, shift: bool, seed: int) -> None:
        self.name, self.device, self.shift = name, "cpu", shift
        self.rng = np.random.default_rng(seed)

    def predict(self, batch: np.ndarray) -> np.ndarray:
        time.sleep(float(self.rng.uniform(0, 4e-4)))
        logits = batch.reshape(len(batch), -1)[:, :10].astype(np.float32) / 64.0
        p = np.exp(logits - logits.max(1, keepdims=True))
        p = 0.5 * p / p.sum(1, keepdims=True) + 0.05
        if self.shift:
            p[:, 0] += 0.04
            p[:, 1] -= 0.04
        return p.astype(np.float32)

    def describe(self) -> dict[str, Any]:
        return {"runtime": "fake", "threads": 1, "device": "cpu"}


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A model folder with onnx, onnx-int8, tflite and tflite-int8 files, and a small labelled tree."""
    root = tmp_path_factory.mktemp("views")
    data = make_tree(root / "data", per_class=2, splits=("test",), seed=5)
    m = Manifest(name="fake", arch="fake")
    m.directory = root / "model"
    m.directory.mkdir()
    for fmt in ("onnx", "onnx-int8", "tflite", "tflite-int8"):
        (m.directory / fmt).write_bytes(b"x" * 500)
        m.add_artifact(fmt, fmt)
    m.save()
    return m.directory, data


def _patch(mp: pytest.MonkeyPatch, model: Path) -> None:
    have = Manifest.load(model).artifacts
    seeds = iter(range(10_000))
    mp.setattr(backends, "unavailable_reason", lambda name, manifest=None, device="cpu":
               None if backends.BACKENDS[name].format in have else "no artifact (fake)")
    mp.setattr(backends, "load_backend", lambda name, manifest, device="cpu", threads=None:
               JitterBackend(name, "int8" in name, next(seeds)))


@pytest.fixture
def fake(setup: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    _patch(monkeypatch, setup[0])
    return setup


FAST = ("--batch-sizes", "1,4", "--min-time", "0", "--min-iters", "9", "--warmup", "0", "--no-isolate")


def _run(model: Path, data: Path, out: Path, *args: str) -> Any:
    return run_cli("bench", "-m", model, "--data", data, *FAST, "-o", out, *args)


# --------------------------------------------------------------------------- item 5: one definition of --repeat


def test_repeat_figures_are_the_same_median_in_every_view(fake: tuple[Path, Path], tmp_path: Path) -> None:
    model, data = fake
    r = _run(model, data, tmp_path / "o", "-b", "onnx", "-b", "tflite-int8", "--repeat", "3", "--format", "table")
    assert r.exit_code == 0, r.stderr
    doc = report.load_results(tmp_path / "o" / "results.json")
    md = (tmp_path / "o" / "report.md").read_text()
    rows_csv = {row["backend"]: row for row in csv.DictReader(io.StringIO((tmp_path / "o" / "results.csv").read_text()))}
    same = compare.compare_docs(doc, doc)
    for row in doc["results"]:
        rep = row["repeat"]
        # the oracle: numpy's median of the recorded values of each repeat
        p50, p99 = np.median(rep["p50_ms"]["values"]), np.median(rep["p99_ms"]["values"])
        tp = np.median(rep["images_per_s"]["values"])
        assert len(set(rep["p50_ms"]["values"])) == 3  # the repeats really differ
        assert row["latency"]["p50_ms"] == pytest.approx(p50) and row["latency"]["p99_ms"] == pytest.approx(p99)
        assert row["throughput"][-1]["images_per_s"] == pytest.approx(tp)
        for b, t in zip((1, 4), row["throughput"]):  # every batch size: images/s and its call percentiles
            by = rep["by_batch"][str(b)]
            assert t["images_per_s"] == pytest.approx(np.median(by["images_per_s"]["values"]))
            assert t["latency"]["p99_ms"] == pytest.approx(np.median(by["p99_ms"]["values"]))
        assert f"{p50:.3f}" in r.stdout and f"{p99:.3f}" in r.stdout  # the table
        assert f"| {p50:.3f} |" in md and f"{p50:.3f} (" in md  # report.md: latency table and repeats table
        assert float(rows_csv[row["backend"]]["p50_ms"]) == pytest.approx(p50, rel=1e-5)
        changes = next(c for c in same["rows"] if c["backend"] == row["backend"])["changes"]
        assert changes["p50_ms"]["old"] == pytest.approx(p50) and changes["images_per_s"]["new"] == pytest.approx(tp)


def test_every_batch_size_has_latency_percentiles(fake: tuple[Path, Path], tmp_path: Path) -> None:
    model, data = fake
    r = _run(model, data, tmp_path / "o", "-b", "onnx", "-q")
    assert r.exit_code == 0, r.stderr
    doc = report.load_results(tmp_path / "o" / "results.json")
    (row,) = doc["results"]
    for t in row["throughput"]:
        lat = t["latency"]
        assert lat["n"] == t["calls"] and lat["min_ms"] <= lat["p50_ms"] <= lat["p90_ms"] <= lat["p99_ms"] <= lat["max_ms"]
        # calls' times sum to the timed seconds: the percentiles describe the same calls as images/s
        assert lat["mean_ms"] * lat["n"] == pytest.approx(1000 * t["seconds"], rel=1e-6)
    md = (tmp_path / "o" / "report.md").read_text()
    b4 = row["throughput"][1]["latency"]
    assert "## Latency per call at each batch size" in md and f"{b4['p50_ms']:.3f} / {b4['p90_ms']:.3f} / {b4['p99_ms']:.3f}" in md
    assert {"p50_ms_b4", "p99_ms_b4", "p50_ms_b1"} <= set(next(csv.DictReader(io.StringIO(report.to_csv(doc)))))


# --------------------------------------------------------------------------- item 6: any float32 reference


@pytest.mark.parametrize("rows,ref", [
    (("tflite", "tflite-int8"), "tflite"),
    (("onnx-int8", "openvino-f32"), "openvino-f32"),
    (("onnx", "tflite", "tflite-int8"), "onnx"),
    (("openvino", "onnx-int8"), None),  # openvino may run bf16: never a reference
])
def test_reference_is_any_float32_backend_that_ran(fake: tuple[Path, Path], tmp_path: Path, rows: tuple[str, ...],
                                                   ref: str | None) -> None:
    model, data = fake
    cfg = bench.BenchConfig(models=[str(model)], backends=list(rows), data=str(data), batch_sizes=[1, 4], min_time=0,
                            min_iters=5, warmup=0)
    doc = bench.run_bench(cfg)
    assert doc["models"]["fake"]["reference"] == ref
    for r in doc["results"]:
        assert (r["agreement"].get("reference"), r["speedup"] is not None) == (ref, ref is not None)
    int8 = [r for r in doc["results"] if "int8" in r["backend"]]
    if ref:
        assert all(r["int8_loss_pp"] is not None for r in int8)
    else:
        assert any("no reference backend measured" in w for w in doc["warnings"])
        md = report.to_markdown(doc)
        assert "–×" not in md  # item 13: a blank ratio is a bare dash


# --------------------------------------------------------------------------- item 10: the headline plot


def test_throughput_plot_labels_do_not_overlap_and_ticks_are_plain() -> None:
    pytest.importorskip("matplotlib")
    # The shipped flagship's rows (benchmarks/results/flagship): six at the same accuracy within 2x of each other.
    xs = [236, 397, 438, 579, 593, 1045, 622, 677, 892]
    ys = [89.45, 89.45, 89.45, 89.33, 89.45, 89.42, 89.45, 89.45, 89.41]
    names = ["keras", "tflite", "tflite-fp16", "tflite-int8", "onnx", "onnx-int8", "openvino", "openvino-f32",
             "openvino-int8"]
    pts = [{"l": n, "x": x, "y": y} for n, x, y in zip(names, xs, ys)]
    fig, ax, anns = plots.scatter_figure(pts, "x", "y", "l", "img/s", "accuracy", logx=True)
    renderer = fig.canvas.get_renderer()
    boxes = [plots._text_box(a, renderer) for a in anns]
    markers = [ax.transData.transform((x, y)) for x, y in zip(xs, ys)]
    for i, a in enumerate(boxes):
        for b in boxes[i + 1:]:
            assert not a.overlaps(b), (a, b)
        for (px, py) in markers:  # no label covers a point
            assert not (a.x0 < px < a.x1 and a.y0 < py < a.y1)
    fig.canvas.draw()
    ticks = [t.get_text() for t in ax.get_xticklabels() + ax.get_xticklabels(minor=True) if t.get_text()]
    assert ticks and all(t.replace(",", "").replace(".", "").isdigit() for t in ticks), ticks  # never 3×10²
    assert plots.plain_number(1000) == "1,000" and plots.plain_number(1.5) == "1.5"
    plots._pyplot().close(fig)


def test_log_ticks_cover_narrow_and_wide_ranges() -> None:
    for lo, hi in ((300, 3000), (236, 1045), (580, 700), (1, 1e6)):
        t = plots.log_ticks(lo, hi)
        assert len(t) >= 3 and all(lo <= v <= hi for v in t) and t == sorted(t), (lo, hi, t)


# --------------------------------------------------------------------------- item 11: compare


@pytest.fixture(scope="module")
def two_docs(setup: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A real (fake-backend) run and the same run without its tflite-int8 row."""
    model, data = setup
    tmp_path = tmp_path_factory.mktemp("two_docs")
    with pytest.MonkeyPatch.context() as mp:
        _patch(mp, model)
        r = _run(model, data, tmp_path / "a", "-b", "onnx", "-b", "tflite-int8", "-q")
    assert r.exit_code == 0, r.stderr
    doc = json.loads((tmp_path / "a" / "results.json").read_text())
    fewer = copy.deepcopy(doc)
    fewer["results"] = [x for x in fewer["results"] if x["backend"] != "tflite-int8"]
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "results.json").write_text(json.dumps(fewer))
    return tmp_path / "a", tmp_path / "b"


def test_a_row_absent_from_one_run_is_absent_not_a_regression(two_docs: tuple[Path, Path]) -> None:
    full, fewer = two_docs
    for old, new in ((full, fewer), (fewer, full)):
        r = run_cli("bench", "compare", old, new, "--format", "json")
        assert r.exit_code == 0, r.stdout
        res = json.loads(r.stdout)
        row = next(x for x in res["rows"] if x["backend"] == "tflite-int8")
        assert row["verdict"] == "absent" and "absent" in row["status"]
        assert res["verdict"] != "regression"
    r = run_cli("bench", "compare", full, fewer, "--strict")
    assert r.exit_code == ExitStatus.PARTIAL and "verdict: regression" in r.stdout
    assert run_cli("bench", "compare", fewer, full, "--strict").exit_code == 0  # a new row is never a regression


def test_compare_formats_one_arrow_and_the_markdown_alias(two_docs: tuple[Path, Path]) -> None:
    full, fewer = two_docs
    md = run_cli("bench", "compare", full, fewer, "--format", "md").stdout
    assert md.startswith("### cifarbench bench compare:") and run_cli("bench", "compare", full, fewer, "--markdown").stdout == md
    table = run_cli("bench", "compare", full, fewer).stdout
    for text in (md, table):
        assert "->" not in text and "→" in text  # one arrow style, rows and statuses alike
        assert "ok → absent" in text
    r = run_cli("bench", "compare", full, fewer, "--markdown", "--format", "json")
    assert r.exit_code == ExitStatus.USAGE and "exclude each other" in r.stderr


@pytest.mark.parametrize("before", [("-q",), ("--all",), ("--repeat", "3"), ("-m", "flagship")])
def test_bench_options_before_compare_are_an_error(tmp_path: Path, before: tuple[str, ...]) -> None:
    r = run_cli("bench", *before, "compare", tmp_path / "a", tmp_path / "b")  # refused before any file is read
    assert r.exit_code == ExitStatus.USAGE and "before `compare`" in r.stderr and r.stdout == ""


def test_compare_options_after_compare_still_work(two_docs: tuple[Path, Path],
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    full, fewer = two_docs
    monkeypatch.setenv("CIFARBENCH_BENCH_REPEAT", "3")  # bench's settings from the environment are not an error
    r = run_cli("bench", "compare", full, fewer, "-q")
    assert r.exit_code == 0 and r.stdout == ""


# --------------------------------------------------------------------------- item 12: nothing can run


def test_a_bench_where_nothing_runs_writes_nothing_and_says_why(fake: tuple[Path, Path], tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    model, data = fake
    monkeypatch.setattr(backends, "unavailable_reason", lambda name, manifest=None, device="cpu": f"{name} absent (test)")
    monkeypatch.setattr("os.getloadavg", lambda: (99.0, 99.0, 99.0))  # a "busy" CPU must not be blamed for nothing
    for quiet in ((), ("-q",)):
        out = tmp_path / f"o{len(quiet)}"
        r = _run(model, data, out, "-b", "onnx", "-b", "tflite-int8", *quiet)
        assert r.exit_code == ExitStatus.UNAVAILABLE
        assert not out.exists()  # no results.json of blanks
        for b in ("onnx", "tflite-int8"):  # the reasons, once each, -q included
            line = f"fake/{b} skipped: {b} absent (test)" if quiet else f"fake/{b}: skipped ({b} absent (test))"
            assert r.stderr.count(line) == 1 and r.stderr.count(f"{b} absent (test)") == 1, r.stderr
        assert "no result files written" in r.stderr and "reasons above" in r.stderr
        for bad in ("0 images", "img/s @-", "CPU was busy", "Traceback"):
            assert bad not in r.stdout + r.stderr
    cfg = bench.BenchConfig(models=[str(model)], backends=["onnx"], data=str(data), batch_sizes=[1, 4])
    doc = bench.run_bench(cfg)
    assert doc["data"]["images"] is None and not any("busy" in w for w in doc["warnings"])


# --------------------------------------------------------------------------- item 13: options and help


def test_bench_short_options_and_device_auto(fake: tuple[Path, Path], tmp_path: Path) -> None:
    model, data = fake
    r = run_cli("bench", "-m", model, "-b", "onnx", "--data", data, *FAST, "-o", tmp_path / "o", "--device", "auto",
                "--format", "json")
    assert r.exit_code == 0, r.stderr
    doc = json.loads(r.stdout)
    assert [x["backend"] for x in doc["results"]] == ["onnx"] and (tmp_path / "o" / "results.json").is_file()
    assert doc["config"]["device"] == "auto"


def _all_commands() -> list[tuple[str, click.Command]]:
    from cifarbench.cli import COMMANDS, cli

    out: list[tuple[str, click.Command]] = [("cifarbench", cli)]
    for name in COMMANDS:
        cmd = cli.get_command(click.Context(cli), name)
        assert cmd is not None
        out.append((name, cmd))
        if isinstance(cmd, click.Group):
            out += [(f"{name} {sub}", c) for sub, c in cmd.commands.items()]
    return out


def test_every_option_of_every_command_has_help() -> None:
    missing = [f"{name} {p.opts[0]}" for name, cmd in _all_commands() for p in cmd.params
               if isinstance(p, click.Option) and not (p.help or "").strip()]
    assert missing == []
    assert len(_all_commands()) >= 7  # every command and bench compare were walked


def test_convert_help_says_it_takes_onnx() -> None:
    assert "Keras or ONNX" in run_cli("--help").stdout
    assert ".onnx" in run_cli("convert", "--help").stdout
