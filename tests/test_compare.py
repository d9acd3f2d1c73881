"""`bench compare`: a plain rerun passes, an injected 20 % slowdown is a regression (exit 3)."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from cifarbench.bench import compare
from cifarbench.errors import DataError, ExitStatus
from conftest import run_cli

RUN = ("--backend", "onnx", "--backend", "tflite-int8", "--limit", "40", "--min-time", "0.2", "--min-iters", "100",
       "--warmup", "3", "--batch-sizes", "1,8", "--repeat", "3", "--no-isolate", "-q")


@pytest.fixture(scope="module")
def two_runs(tiny_model: Path, synthetic_tree: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    out = tmp_path_factory.mktemp("compare")
    for name in ("old", "new"):
        r = run_cli("bench", "--model", tiny_model, "--data", synthetic_tree, *RUN, "--output-dir", out / name)
        assert r.exit_code == 0 and r.stdout == "" and r.stderr == "", r.stderr  # -q: silent on success
    return out / "old", out / "new"


def _slower(doc: dict[str, Any], factor: float) -> dict[str, Any]:
    """Every speed figure of every row ``factor`` times worse: the injected regression."""
    d = copy.deepcopy(doc)
    for r in d["results"]:
        for t in r["throughput"]:
            t["images_per_s"] = t["images_per_s"] / factor if t["images_per_s"] else None
        for k in ("p50_ms", "p99_ms"):
            if k in r["latency"]:
                r["latency"][k] *= factor
        for k, s in r["repeat"].items():
            if isinstance(s, dict) and "median" in s:  # by_batch holds per-size spreads
                f = 1 / factor if k == "images_per_s" else factor
                r["repeat"][k] = {kk: ([x * f for x in v] if kk == "values" else v * f) for kk, v in s.items()}
    return d


def test_real_rerun_compares_every_row_with_equal_accuracy(two_runs: tuple[Path, Path]) -> None:
    # Two real runs on a shared machine: their speed verdict depends on the machine's load (a CI run once saw a
    # 0.05 ms p50 double), so only what is deterministic is asserted here; the pass rule is tested below.
    old, new = two_runs
    r = run_cli("bench", "compare", old, new)
    res = compare.compare_files(old, new)
    # exactly the exit code the verdict calls for (the verdict itself is the machine's: see above)
    assert r.exit_code == (ExitStatus.PARTIAL if res["verdict"] == "regression" else 0), r.stdout
    assert r.stdout.endswith(f"verdict: {res['verdict']}\n"), r.stdout
    # and with no slowdown judged (img/s cannot fall by more than 100 %; p50 under a 100 s floor), the same runs
    # pass: exit 0, exactly
    r = run_cli("bench", "compare", old, new, "--tolerance", "100", "--latency-floor-ms", "100000")
    assert r.exit_code == 0 and "regression" not in r.stdout, r.stdout
    assert {row["backend"] for row in res["rows"]} == {"onnx", "tflite-int8"}
    assert all(row["changes"]["accuracy"]["delta_pp"] == 0 for row in res["rows"])  # same images, same answers


def _shifted(doc: dict[str, Any], frac: float) -> dict[str, Any]:
    """The run as a rerun within its own noise: every speed figure moved by ``frac`` of its repeat spread."""
    d = copy.deepcopy(doc)
    for r in d["results"]:
        for k, s in r["repeat"].items():
            if isinstance(s, dict) and s.get("median"):
                shift = frac * (s["max"] - s["min"])
                r["repeat"][k] = {kk: ([x + shift for x in v] if kk == "values" else v + shift)
                                  for kk, v in s.items()}
                if k == "images_per_s":  # the row's own figure moves with its repeats (bench.repeats)
                    r["throughput"][-1]["images_per_s"] += shift
                else:
                    r["latency"][k] += shift
    return d


@pytest.mark.parametrize("frac", [0.9, -0.9])
def test_rerun_within_its_noise_passes(two_runs: tuple[Path, Path], tmp_path: Path, frac: float) -> None:
    # A known spread first (+-10 %): a loaded machine's own min-max can exceed the median, and shifting by 0.9 of
    # it would make images/s negative (seen: 17,838 -> -2,065 img/s on a host at load 10).
    doc = _spread(json.loads((two_runs[0] / "results.json").read_text()), 0.2)
    for name, d in (("old", doc), ("new", _shifted(doc, frac))):
        (tmp_path / name).mkdir()
        (tmp_path / name / "results.json").write_text(json.dumps(d))
    r = run_cli("bench", "compare", tmp_path / "old", tmp_path / "new")
    assert r.exit_code == 0, r.stdout
    assert "verdict: " in r.stdout and "regression" not in r.stdout


def _doc(p50: float, p50_spread: float = 0.0) -> dict[str, Any]:
    return {"data": {}, "environment": {}, "results": [{
        "model": "m", "backend": "onnx", "threads": None, "status": "ok", "throughput": [], "latency": {"p50_ms": p50},
        "repeat": {"p50_ms": {"median": p50, "min": p50, "max": p50 * (1 + p50_spread), "values": [p50]}}}]}


def test_sub_floor_p50_change_is_shown_not_judged(two_runs: tuple[Path, Path], tmp_path: Path) -> None:
    small = compare.compare_docs(_doc(0.047), _doc(0.099))  # the CI run's jitter: +111 %, 0.05 ms
    assert small["rows"][0]["changes"]["p50_ms"]["delta_pct"] == pytest.approx(110.6, abs=0.1)
    assert small["verdict"] == "same"
    assert compare.compare_docs(_doc(0.047), _doc(0.099), latency_floor_ms=0)["verdict"] == "regression"
    assert compare.compare_docs(_doc(1.0), _doc(2.0))["verdict"] == "regression"  # 1 ms more is judged
    real = json.loads((two_runs[0] / "results.json").read_text())
    for name, p50 in (("old.json", 0.047), ("new.json", 0.099)):
        doc = copy.deepcopy(real)
        for r in doc["results"]:
            r["repeat"]["p50_ms"] = _doc(p50)["results"][0]["repeat"]["p50_ms"]
            r["latency"]["p50_ms"] = p50
        (tmp_path / name).write_text(json.dumps(doc))
    assert run_cli("bench", "compare", tmp_path / "old.json", tmp_path / "new.json").exit_code == 0
    r = run_cli("bench", "compare", tmp_path / "old.json", tmp_path / "new.json", "--latency-floor-ms", "0")
    assert r.exit_code == ExitStatus.PARTIAL, r.stdout


def _spread(doc: dict[str, Any], rel: float) -> dict[str, Any]:
    """The run as if its repeats had spread +-rel/2 around their medians (a quiet machine)."""
    d = copy.deepcopy(doc)
    for r in d["results"]:
        for s in r["repeat"].values():
            if isinstance(s, dict) and "median" in s:
                s["min"], s["max"] = s["median"] * (1 - rel / 2), s["median"] * (1 + rel / 2)
    return d


def test_injected_slowdown_is_a_regression_with_exit_3(two_runs: tuple[Path, Path], tmp_path: Path) -> None:
    old, _ = two_runs
    doc = _spread(json.loads((old / "results.json").read_text()), 0.05)
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "results.json").write_text(json.dumps(doc))
    old = tmp_path / "old"
    (tmp_path / "slow").mkdir()
    (tmp_path / "slow" / "results.json").write_text(json.dumps(_slower(doc, 1.25)))  # 20 % fewer images/s
    r = run_cli("bench", "compare", old / "results.json", tmp_path / "slow", "--markdown")
    assert r.exit_code == ExitStatus.PARTIAL, r.stdout
    assert r.stdout.startswith("### cifarbench bench compare: **regression**") and "**regression**" in r.stdout
    res = compare.compare_files(old, tmp_path / "slow")
    tp = res["rows"][0]["changes"]["images_per_s"]
    assert tp["delta_pct"] == pytest.approx(-20) and tp["verdict"] == "regression"
    # The other way round it is an improvement, which passes.
    assert run_cli("bench", "compare", tmp_path / "slow", old).exit_code == 0


def test_spread_wider_than_the_change_is_not_a_regression(two_runs: tuple[Path, Path]) -> None:
    old, _ = two_runs
    doc = json.loads((old / "results.json").read_text())
    noisy = copy.deepcopy(doc)
    for r in noisy["results"]:
        s = r["repeat"]["images_per_s"]
        s["min"], s["max"] = s["median"] * 0.7, s["median"] * 1.3  # +-30 % run-to-run
    res = compare.compare_docs(noisy, _slower(noisy, 1.25))
    assert res["rows"][0]["changes"]["images_per_s"]["verdict"] == "same"


def test_a_row_that_stopped_working_is_a_regression(two_runs: tuple[Path, Path]) -> None:
    old, _ = two_runs
    doc = json.loads((old / "results.json").read_text())
    broken = copy.deepcopy(doc)
    broken["results"][0].update(status="failed", reason="boom")
    res = compare.compare_docs(doc, broken)
    assert res["verdict"] == "regression" and res["rows"][0]["status"] == "ok → failed"


def test_unreadable_input_is_a_one_line_error(tmp_path: Path) -> None:
    (tmp_path / "x.json").write_text("{}")
    r = run_cli("bench", "compare", tmp_path / "x.json", tmp_path / "x.json")
    assert r.exit_code == ExitStatus.DATA and r.stderr.count("\n") == 1


def _acc_doc(correct: int, n: int) -> dict[str, Any]:
    return {"data": {}, "environment": {}, "results": [{
        "model": "m", "backend": "onnx", "threads": None, "status": "ok", "throughput": [], "latency": {},
        "repeat": {}, "quality": {"accuracy": correct / n, "support": n}}]}


@pytest.mark.parametrize("n", [1000, 2000, 10_000])
def test_accuracy_delta_in_pp_judged_on_images_at_0_1pp_and_one_past(n: int) -> None:
    at = n // 1000  # 0.1 pp of n images, exactly
    base = 699 * n // 1000 + at  # accuracies whose float difference is not a clean multiple of 0.001
    for sign, verdict in ((-1, "regression"), (1, "improved")):
        same = compare.compare_docs(_acc_doc(base, n), _acc_doc(base + sign * at, n))["rows"][0]["changes"]["accuracy"]
        assert same["verdict"] == "same" and same["delta_pp"] == pytest.approx(sign * 0.1)
        past = compare.compare_docs(_acc_doc(base, n), _acc_doc(base + sign * (at + 1), n))
        assert past["rows"][0]["changes"]["accuracy"]["verdict"] == verdict and past["verdict"] == verdict


def test_accuracy_delta_unit_is_percentage_points() -> None:
    c = compare.compare_docs(_acc_doc(700, 1000), _acc_doc(712, 1000))["rows"][0]["changes"]["accuracy"]
    assert c == {"old": 0.7, "new": 0.712, "delta_pp": pytest.approx(1.2), "verdict": "improved"}  # not 0.012, not 1.71 %
    assert "0.7000 → 0.7120 (+1.20 pp)" in compare.to_text(compare.compare_docs(_acc_doc(700, 1000), _acc_doc(712, 1000)))
    diff_n = compare.compare_docs(_acc_doc(50, 100), _acc_doc(99, 200))["rows"][0]["changes"]["accuracy"]
    assert diff_n["delta_pp"] == pytest.approx(-0.5) and diff_n["verdict"] == "regression"  # other images: pp
    trap = compare.compare_docs(_acc_doc(700, 1000), {**_acc_doc(0, 1), "results": [
        {**_acc_doc(0, 1)["results"][0], "quality": {"accuracy": 0.699}}]})["rows"][0]["changes"]["accuracy"]
    assert trap["verdict"] == "same"  # no image count: -0.10000000000000009 pp is still 0.1 pp, not more


def _row(backend: str = "onnx", status: str = "ok", ips: float | None = 1000.0, spread: float = 0.0,
         p50: float | None = 2.0, p99: float | None = 5.0, repeat: bool = True, acc: float | None = None,
         threads: int | None = None) -> dict[str, Any]:
    r: dict[str, Any] = {"model": "m", "backend": backend, "threads": threads, "status": status,
                         "throughput": [{"batch_size": 1, "images_per_s": 1.0}, {"batch_size": 8, "images_per_s": ips}],
                         "latency": {"p50_ms": p50, "p99_ms": p99}, "repeat": {}, "quality": {}}
    if repeat and ips:
        r["repeat"]["images_per_s"] = {"median": ips, "min": ips * (1 - spread / 2), "max": ips * (1 + spread / 2)}
    if acc is not None:
        r["quality"] = {"accuracy": acc}
    return r


def _d(*rows: dict[str, Any], fingerprint: str = "f", subset: Any = None, cpu: str = "EPYC") -> dict[str, Any]:
    return {"data": {"fingerprint": fingerprint, "subset": subset}, "environment": {"cpu": {"model": cpu}},
            "results": list(rows), "created": "today", "command": "bench"}


def test_status_changes_are_judged_by_what_was_ok() -> None:
    old = _d(_row("a"), _row("b", status="failed"), _row("c"), _row("d", status="skipped"))
    new = _d(_row("a", status="failed"), _row("b"), _row("d", status="failed"), _row("e"))
    res = compare.compare_docs(old, new)
    rows = {r["backend"]: r for r in res["rows"]}
    assert [r["backend"] for r in res["rows"]] == ["a", "b", "c", "d", "e"]  # old order, then the new rows
    assert (rows["a"]["status"], rows["a"]["verdict"]) == ("ok → failed", "regression")
    assert (rows["b"]["status"], rows["b"]["verdict"]) == ("failed → ok", "improved")
    assert (rows["c"]["status"], rows["c"]["verdict"]) == ("ok → absent", "absent")  # not judged unless strict
    assert (rows["d"]["status"], rows["d"]["verdict"]) == ("skipped → failed", "same")
    assert (rows["e"]["status"], rows["e"]["verdict"]) == ("absent → ok", "absent")
    assert res["verdict"] == "regression"
    strict = {r["backend"]: r for r in compare.compare_docs(old, new, strict=True)["rows"]}
    assert strict["c"]["verdict"] == "regression" and strict["e"]["verdict"] == "absent"
    assert compare.compare_docs(_d(_row("b", status="failed")), _d(_row("b")))["verdict"] == "improved"
    assert compare.compare_docs(_d(_row("b")), _d(_row("b")))["verdict"] == "same"


def test_threads_are_part_of_the_row_key() -> None:
    res = compare.compare_docs(_d(_row(threads=1)), _d(_row(threads=2)))
    assert [(r["threads"], r["status"]) for r in res["rows"]] == [(1, "ok → absent"), (2, "absent → ok")]
    assert res["notes"][-1].startswith("2 row(s) present in one run only: not judged")


def test_notes_for_other_data_and_other_cpus() -> None:
    assert compare.compare_docs(_d(_row()), _d(_row()))["notes"] == []
    other = compare.compare_docs(_d(_row()), _d(_row(), fingerprint="g", cpu="Xeon"))["notes"]
    assert other == ["the runs used different data, so accuracy deltas compare different images",
                     "different CPUs: EPYC vs Xeon"]
    assert compare.compare_docs(_d(_row()), _d(_row(), subset=[0, 10]))["notes"] == [
        "the runs used different data, so accuracy deltas compare different images"]


@pytest.mark.parametrize("new_ips, verdict", [(1000 * 0.95, "same"), (1000 * 0.9499, "regression"),
                                              (1000 * 1.05, "same"), (1000 * 1.0501, "improved")])
def test_speed_at_the_tolerance_and_one_step_past(new_ips: float, verdict: str) -> None:
    res = compare.compare_docs(_d(_row(p50=None, p99=None)), _d(_row(ips=new_ips, p50=None, p99=None)))
    c = res["rows"][0]["changes"]["images_per_s"]
    assert c["verdict"] == verdict and res["verdict"] == verdict
    assert c["delta_pct"] == pytest.approx(100 * (new_ips - 1000) / 1000) and c["noise_pct"] == pytest.approx(5.0)
    assert (c["old"], c["new"]) == (1000.0, pytest.approx(new_ips))


def test_noise_is_the_sum_of_both_spreads_when_wider_than_the_tolerance() -> None:
    old, new = _d(_row(spread=0.06, p50=None)), _d(_row(ips=850.0, spread=0.1, p50=None))
    c = compare.compare_docs(old, new)["rows"][0]["changes"]["images_per_s"]
    assert c["noise_pct"] == pytest.approx(16.0) and c["verdict"] == "same"  # -15 % inside +-16 %
    c = compare.compare_docs(old, new, tolerance=0.2)["rows"][0]["changes"]["images_per_s"]
    assert c["noise_pct"] == pytest.approx(20.0)


def test_without_repeats_the_last_throughput_and_the_latency_are_compared() -> None:
    old = _d(_row(repeat=False, ips=100.0, p50=1.0, p99=2.0))
    new = _d(_row(repeat=False, ips=50.0, p50=3.0, p99=9.0))
    ch = compare.compare_docs(old, new)["rows"][0]["changes"]
    assert (ch["images_per_s"]["old"], ch["images_per_s"]["new"], ch["images_per_s"]["verdict"]) == (100.0, 50.0,
                                                                                                       "regression")
    assert ch["p50_ms"]["verdict"] == "regression" and ch["p50_ms"]["delta_pct"] == pytest.approx(200.0)
    assert ch["p99_ms"]["verdict"] == "same" and ch["p99_ms"]["delta_pct"] == pytest.approx(350.0)  # shown only
    faster = compare.compare_docs(new, old)["rows"][0]["changes"]
    assert faster["p50_ms"]["verdict"] == "improved" and faster["images_per_s"]["verdict"] == "improved"
    gone = compare.compare_docs(_d(_row(repeat=False, ips=None, p50=None, p99=None)), _d(_row(repeat=False)))
    assert gone["rows"][0]["changes"] == {} and gone["verdict"] == "same"
    zero = compare.compare_docs(_d(_row(repeat=False, p50=0.0)), _d(_row(repeat=False, p50=1.0)))
    assert "p50_ms" not in zero["rows"][0]["changes"]  # no relative change from 0


def test_p50_judged_only_beyond_the_floor() -> None:
    # binary-exact milliseconds, so "exactly the floor" is exact
    at = compare.compare_docs(_d(_row(p50=1.0, repeat=False)), _d(_row(p50=1.125, repeat=False)),
                              latency_floor_ms=0.125)
    assert at["rows"][0]["changes"]["p50_ms"]["verdict"] == "same"  # exactly the floor: not judged
    past = compare.compare_docs(_d(_row(p50=1.0, repeat=False)), _d(_row(p50=1.1251, repeat=False)),
                                latency_floor_ms=0.125)
    assert past["rows"][0]["changes"]["p50_ms"]["verdict"] == "regression"
    assert past["latency_floor_ms"] == 0.125 and past["tolerance_pct"] == pytest.approx(5.0)
    # decimal milliseconds: 1.0 -> 1.1 is the 0.1 ms default floor exactly (floats say 0.10000000000000009)
    dec = compare.compare_docs(_d(_row(p50=1.0, repeat=False)), _d(_row(p50=1.1, repeat=False)))
    assert dec["rows"][0]["changes"]["p50_ms"]["verdict"] == "same"
    dec = compare.compare_docs(_d(_row(p50=1.0, repeat=False)), _d(_row(p50=1.101, repeat=False)))
    assert dec["rows"][0]["changes"]["p50_ms"]["verdict"] == "regression"


def test_text_and_markdown_reports() -> None:
    res = compare.compare_docs(_d(_row(acc=0.7), _row("x", status="failed")),
                               _d(_row(ips=500.0, acc=0.712), _row("x"), cpu="Xeon"))
    text = compare.to_text(res)
    lines = text.splitlines()
    assert lines[0].split() == ["model", "backend", "img/s", "p50", "ms", "p99", "ms", "accuracy", "verdict"]
    assert "1,000 → 500 (-50.0 %, noise ±5 %) regression" in lines[1]
    assert "2.000 → 2.000 (+0.0 %, noise ±5 %)" in lines[1] and "0.7000 → 0.7120 (+1.20 pp)" in lines[1]
    assert lines[2].split() == ["m", "x", "failed", "→", "ok", "improved"]
    assert lines[-2:] == ["note: different CPUs: EPYC vs Xeon", "verdict: regression"]
    md = compare.to_markdown(res)
    assert md.startswith("### cifarbench bench compare: **regression**\n\nOld: today; new: today. A speed change "
                         "counts beyond the larger of 5 % and the sum of the runs' min–max spreads, and a p50 change "
                         "only beyond 0.1 ms (p99 shown, not judged); accuracy beyond 0.1 pp.\n")
    assert "| m | onnx | 1,000 → 500 (-50.0 %, noise ±5 %) **regression** |" in md
    assert "| m | x | failed → ok |  |  |  | improved |" in md and md.endswith("> different CPUs: EPYC vs Xeon\n")
    threaded = compare.to_text(compare.compare_docs(_d(_row(threads=4)), _d(_row(threads=4))))
    assert "onnx (4t)" in threaded


def test_compare_files_reads_a_directory_or_its_results_json(tmp_path: Path) -> None:
    """On a committed results.json (no model needed): a directory means its results.json; defaults pass through."""
    committed = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "flagship"
    doc = json.loads((committed / "results.json").read_text())
    res = compare.compare_files(committed, committed / "results.json")
    assert res["verdict"] == "same" and len(res["rows"]) == len(doc["results"]) and res["notes"] == []
    assert (res["tolerance_pct"], res["latency_floor_ms"], res["strict"]) == (5.0, 0.1, False)
    slower = _slower(doc, 1.25)
    slower["results"] = slower["results"][1:]  # and one row gone
    (tmp_path / "new").mkdir()
    (tmp_path / "new" / "results.json").write_text(json.dumps(slower))
    res = compare.compare_files(committed, tmp_path / "new", 0.5, 0.2)
    assert (res["tolerance_pct"], res["latency_floor_ms"]) == (50.0, 0.2) and res["rows"][0]["verdict"] == "absent"
    fewer = {**doc, "results": doc["results"][1:]}  # only a row gone, nothing slower: strict alone decides
    (tmp_path / "fewer.json").write_text(json.dumps(fewer))
    assert compare.compare_files(committed, tmp_path / "fewer.json")["verdict"] == "same"
    assert compare.compare_files(committed, tmp_path / "fewer.json", strict=True)["verdict"] == "regression"
    assert res["old"]["command"] == doc.get("command") and res["new"]["created"] == slower.get("created")
    with pytest.raises(DataError, match=r"results\.json: unreadable results"):  # a directory means its results.json
        compare.compare_files(tmp_path, committed)


def test_documents_without_data_or_environment_blocks() -> None:
    bare = {"results": [_row()]}
    res = compare.compare_docs(bare, bare)
    assert res["verdict"] == "same" and res["notes"] == []
    assert res["rows"][0]["verdict"] == "same" and res["old"] == {"created": None, "command": None}
    assert compare.compare_docs(bare, {**bare, "data": {"subset": [0, 5]}})["notes"] == [
        "the runs used different data, so accuracy deltas compare different images"]
    assert compare.compare_docs({**bare, "environment": {"cpu": {"model": "A"}}}, bare)["notes"] == [
        "different CPUs: A vs None"]


def test_accuracy_only_when_both_runs_have_it_and_cells_for_unjudged_figures() -> None:
    one = compare.compare_docs(_d(_row(acc=0.5)), _d(_row()))
    assert "accuracy" not in one["rows"][0]["changes"]
    res = compare.compare_docs(_d(_row(ips=1234.5, p50=1.23456, p99=9.87654)), _d(_row(ips=1234.5, p50=1.23456,
                                                                                       p99=9.87654)))
    cells = compare._cells(res["rows"][0])
    assert cells[2].startswith("1,234 → 1,234 (+0.0 %") and "**" not in cells[2]  # "same" is not marked
    assert cells[3].startswith("1.235 → 1.235") and cells[4].startswith("9.877 → 9.877") and cells[5] == "–"
    assert res["rows"][0]["verdict"] == "same"


def test_a_missing_figure_does_not_hide_the_next_one() -> None:
    old, new = _d(_row(repeat=False, ips=None, p50=1.0)), _d(_row(repeat=False, ips=None, p50=2.0))
    ch = compare.compare_docs(old, new)["rows"][0]["changes"]
    assert "images_per_s" not in ch and ch["p50_ms"]["verdict"] == "regression"


def test_markdown_json_and_the_absent_note_in_full() -> None:
    res = compare.compare_docs(_d(_row(p50=None, p99=None, repeat=False), _row("gone")),
                               {**_d(_row(p50=None, p99=None, repeat=False)), "command": "bench --again"})
    assert res["notes"] == ["1 row(s) present in one run only: not judged (--strict makes a row that was ok and is "
                            "gone a regression)"]
    assert res["new"] == {"created": "today", "command": "bench --again"}
    md = compare.to_markdown(res).splitlines()
    assert md[1] == "" and md[3] == "" and md[-1] == "> " + res["notes"][0]
    assert md[4] == "| " + " | ".join(compare.HEADER) + " |" and md[5] == "|" + "---|" * len(compare.HEADER)
    assert md[6].startswith("| m | onnx | 1,000 → 1,000 (+0.0 %, noise ±5 %) | – | – | – | same |")
    assert md[-2] == ""
    text = compare.to_text(res).splitlines()
    assert text[0].startswith("model  backend") and not text[0].endswith(" ")  # left-justified, no trailing blanks
    assert compare.render(res, "json") == compare.to_json(res) and json.loads(compare.to_json(res)) == res
    assert compare.to_json(res).endswith("}\n") and compare.to_json(res).startswith('{\n  "verdict"')
    assert compare.render(res, "md") == compare.to_markdown(res) and compare.render(res, "table") == compare.to_text(res)
