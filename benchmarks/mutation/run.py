"""Mutation testing, one core module at a time, with only the tests that cover it.

Why per module: mutmut re-runs the tests that cover each mutated function; a module's own test files keep one
module's run at minutes instead of the whole suite's hours. Each run happens in a scratch copy of the repository
(mutmut writes ``mutants/`` beside the code) whose setup.cfg is the repository's ``[mutmut]`` section plus this
module's ``only_mutate`` and test selection. The result lands in ``results/<module>.json``: killed, survived, and
each survivor's diff with the note from ``notes.json`` (the test that now kills it, or why it is equivalent).

    python benchmarks/mutation/run.py cifarbench/atomic.py        # one module
    python benchmarks/mutation/run.py --all                        # every module below, in order
    python benchmarks/mutation/run.py --summary                    # rewrite RESULTS.md from results/*.json

CPU is scarce on shared boxes: mutmut runs under ``nice`` with ``--max-children`` (default 1).
"""

from __future__ import annotations

import argparse
import configparser
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
NOTES = HERE / "notes.json"

# module -> the test files that exercise it (fast ones: nothing here trains or converts a model).
MODULES: dict[str, list[str]] = {
    "cifarbench/atomic.py": ["tests/test_atomic.py"],
    "cifarbench/cli/__init__.py": ["tests/test_cli_errors.py", "tests/test_cli_info.py"],
    "cifarbench/bench/metrics.py": ["tests/test_metrics.py"],
    "cifarbench/bench/derive.py": ["tests/test_derive.py"],
    "cifarbench/bench/compare.py": ["tests/test_compare.py"],
    "cifarbench/models/manifest.py": ["tests/test_manifest.py"],
    "cifarbench/runs/lock.py": ["tests/test_lock.py"],
    # resume: the fast unit tests only (test_resume.py runs classify on real images, ~10 s a mutant)
    "cifarbench/runs/resume.py": ["tests/test_resume_units.py"],
    "cifarbench/runs/writers.py": ["tests/test_writers.py"],
    "cifarbench/runs/options.py": ["tests/test_classify_options.py"],
    "cifarbench/conversion/parity.py": ["tests/test_parity.py"],
    "cifarbench/backends/autoselect.py": ["tests/test_autoselect.py", "tests/test_autoselect_cache.py",
                                          "tests/test_autoselect_units.py"],
    "cifarbench/data/images.py": ["tests/test_images.py", "tests/test_images_units.py"],
    "cifarbench/bench/worker.py": ["tests/test_worker.py"],
    "cifarbench/serve/admission.py": ["tests/test_serve.py::test_admission_queue_at_its_size_and_one_past"],
    "cifarbench/serve/uploads.py": ["tests/test_serve.py", "tests/test_serve_uploads.py"],
    "cifarbench/serve/protocol.py": ["tests/test_serve_protocol.py"],
    "cifarbench/backends/__init__.py": ["tests/test_backends_registry.py"],
    "cifarbench/backends/bf16guard.py": ["tests/test_bf16_auto.py"],
    "cifarbench/runs/pair_commit.py": ["tests/test_pair_commit.py"],
    "cifarbench/conversion/input_check.py": ["tests/test_classes.py"],
    "cifarbench/data/batching.py": ["tests/test_batching.py", "tests/test_classify_batch.py"],
    "cifarbench/runs/rows.py": ["tests/test_rows.py"],
    "cifarbench/serve/batching.py": ["tests/test_serve_batcher.py",
                                     "tests/test_serve.py::test_batcher_splits_large_requests_and_keeps_order",
                                     "tests/test_serve.py::test_batcher_merges_concurrent_requests_without_concurrent_predict",
                                     "tests/test_serve.py::test_batcher_error_reaches_every_waiter_and_close_refuses_new_work",
                                     "tests/test_serve.py::test_batcher_close_finishes_queued_work"],
}

# Modules not run, or stopped before the end, and why (summary() shows this line instead of "not run").
NOT_COMPLETED: dict[str, str] = {}

STATUS = {1: "killed", 3: "killed", 0: "survived", 5: "no tests", 33: "no tests", 34: "skipped", 35: "suspicious",
          36: "timeout", 37: "caught by type check", -24: "timeout", 24: "timeout", 152: "timeout", 255: "timeout",
          -11: "segfault", -9: "segfault", None: "not checked"}


def slug(module: str) -> str:
    return module.removeprefix("cifarbench/").removesuffix(".py").replace("/", ".")


def cpu_model() -> str:
    """The CPU's model name and the speed flags it has (results are compared only on one machine)."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    wanted = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile")
    return f"{model} ({', '.join(f for f in wanted if f in flags) or 'no AVX2'})"


def scratch_copy(module: str, tests: list[str], work: Path) -> None:
    """The repository's code, tests and config in ``work``, with this module's [mutmut] selection."""
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(REPO / "cifarbench", work / "cifarbench", ignore=ignore)
    shutil.copytree(REPO / "tests", work / "tests", ignore=ignore)
    shutil.copy2(REPO / "pyproject.toml", work / "pyproject.toml")
    if (REPO / "trained").is_dir():
        (work / "trained").symlink_to(REPO / "trained", target_is_directory=True)
    # committed bench results some tests read (mutmut runs the tests from mutants/, so it copies them there too)
    (work / "benchmarks").mkdir()
    (work / "benchmarks" / "results").symlink_to(REPO / "benchmarks" / "results", target_is_directory=True)
    cfg = configparser.ConfigParser()
    cfg.read(REPO / "setup.cfg")
    if not cfg.has_section("mutmut"):
        cfg.add_section("mutmut")
    cfg.set("mutmut", "only_mutate", module)
    cfg.set("mutmut", "also_copy", "\nbenchmarks/results")
    cfg.set("mutmut", "pytest_add_cli_args_test_selection", "\n" + "\n".join(tests))
    with open(work / "setup.cfg", "w") as fh:
        cfg.write(fh)


def collect(work: Path, module: str) -> dict[str, str]:
    meta = json.loads((work / "mutants" / (module + ".meta")).read_text())
    return {k: STATUS.get(v, "suspicious") for k, v in meta["exit_code_by_key"].items()}


def run_module(module: str, max_children: int, keep: bool) -> dict:
    tests = MODULES.get(module)
    if tests is None:
        raise SystemExit(f"unknown module {module}; known: {', '.join(MODULES)}")
    work = Path(tempfile.gettempdir()) / "cifarbench-mutation" / slug(module)
    commit = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=REPO, capture_output=True,
                            text=True).stdout.strip()  # the code (and tests) this run measured
    scratch_copy(module, tests, work)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # the mutated copy, never the checkout
    mutmut = [sys.executable, "-m", "mutmut"]
    t0 = time.monotonic()
    p = subprocess.run(["nice", "-n", "10", *mutmut, "run", "--max-children", str(max_children)], cwd=work, env=env,
                       capture_output=True, text=True)
    seconds = round(time.monotonic() - t0, 1)
    if p.returncode != 0 or not (work / "mutants" / (module + ".meta")).exists():
        sys.stderr.write(p.stdout[-4000:] + p.stderr[-4000:])
        raise SystemExit(f"mutmut failed on {module} (exit {p.returncode}); scratch copy kept in {work}")
    status = collect(work, module)
    notes = json.loads(NOTES.read_text()) if NOTES.exists() else {}
    alive = [name for name, st in sorted(status.items()) if st not in ("killed", "timeout", "caught by type check")]
    diffs = _diffs(work, env, module, alive)
    survivors = {name: {"status": status[name], "diff": diffs.get(name, ""), "note": notes.get(name, "")}
                 for name in alive}
    counts = {s: sum(1 for v in status.values() if v == s) for s in sorted(set(status.values()))}
    killed = counts.get("killed", 0) + counts.get("timeout", 0)
    result = {
        "module": module, "tests": tests, "mutants": len(status), "counts": counts,
        "killed_pct": round(100 * killed / len(status), 1) if status else None,
        "survivors": survivors, "seconds": seconds, "max_children": max_children,
        "cpu": cpu_model(), "cpus": os.cpu_count(), "mutmut": _mutmut_version(), "commit": commit,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{slug(module)}.json").write_text(json.dumps(result, indent=1, ensure_ascii=False) + "\n")
    if not keep:
        shutil.rmtree(work, ignore_errors=True)
    print(f"{module}: {len(status)} mutants, {counts}, killed {result['killed_pct']} % in {seconds} s")
    return result


def _diffs(work: Path, env: dict[str, str], module: str, names: list[str]) -> dict[str, str]:
    """Each mutant's diff, in one process (``mutmut show`` per mutant costs a second each)."""
    if not names:
        return {}
    code = ("import json, sys\n"
            "from mutmut.mutation.diff_apply import get_diff_for_mutant\n"
            "names = json.loads(sys.stdin.read())\n"
            f"print(json.dumps({{n: get_diff_for_mutant(n, path={module!r}) for n in names}}))\n")
    p = subprocess.run([sys.executable, "-c", code], cwd=work, env=env, input=json.dumps(names), capture_output=True,
                       text=True)
    if p.returncode != 0:
        sys.stderr.write(p.stderr[-2000:])
        return {}
    return json.loads(p.stdout)


def _mutmut_version() -> str:
    from importlib.metadata import version

    return version("mutmut")


def summary() -> None:
    """RESULTS.md: one line per module run, then every survivor with its note."""
    rows, details = [], []
    notes = json.loads(NOTES.read_text()) if NOTES.exists() else {}
    for module in MODULES:
        f = RESULTS / f"{slug(module)}.json"
        if not f.exists():
            rows.append(f"| {module} | {NOT_COMPLETED.get(module, 'not run')} | | | | | |")
            continue
        r = json.loads(f.read_text())
        for name, s in r["survivors"].items():  # notes written after the run count too
            s["note"] = notes.get(name) or s["note"]
        explained = sum(1 for s in r["survivors"].values() if s["note"])
        rows.append(f"| {module} | {r['mutants']} | {r['counts'].get('killed', 0) + r['counts'].get('timeout', 0)} "
                    f"| {len(r['survivors'])} ({explained} explained) | {r['killed_pct']} % | {r['seconds']} s "
                    f"| {r.get('commit', '')} |")
        for name, s in r["survivors"].items():
            details.append(f"### `{name}` ({s['status']})\n\n{s['note'] or '(no note yet)'}\n\n```diff\n{s['diff']}\n```\n")
    runs = [json.loads(p.read_text()) for p in sorted(RESULTS.glob("*.json"))]
    any_r = max(runs, key=lambda r: r.get("date", "")) if runs else None  # the newest run describes the machine
    machine = f"{any_r['cpu']}, {any_r['cpus']} CPUs, mutmut {any_r['mutmut']}" if any_r else "no run yet"
    text = ("# Mutation testing results\n\n"
            f"Machine: {machine}; run with `python benchmarks/mutation/run.py <module>` (nice 10, --max-children 1),\n"
            "each module against only its own test files (run.py's MODULES). killed % counts timeouts as killed; "
            "'code' is the commit each run measured (-dirty: notes or tests were being edited meanwhile; a branch "
            "rebased since keeps the code under new hashes).\n"
            "Notes (notes.json) are keyed by mutmut's names, numbered within each function: after a function changes, "
            "its notes need checking again. 'killed since by' names a test added after the run; the next run "
            "confirms it.\n\n"
            "| module | mutants | killed | survivors | killed % | time | code |\n|---|---|---|---|---|---|---|\n"
            + "\n".join(rows) + "\n\n## Survivors\n\nEach survivor's note says which test now kills it "
            "(after the run that produced these numbers) or why it is equivalent.\n\n" + "\n".join(details))
    (HERE / "RESULTS.md").write_text(text)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("modules", nargs="*")
    ap.add_argument("--all", action="store_true", help="every module in MODULES, in order")
    ap.add_argument("--summary", action="store_true", help="only rewrite RESULTS.md")
    ap.add_argument("--max-children", type=int, default=1)
    ap.add_argument("--keep", action="store_true", help="keep the scratch copy (to run `mutmut show` by hand)")
    a = ap.parse_args()
    for m in (list(MODULES) if a.all else a.modules) if not a.summary else []:
        run_module(m, a.max_children, a.keep)
    summary()


if __name__ == "__main__":
    main()
