"""`classify --engine ray`: same output as the local engine on a real local Ray and a real two-node cluster.

Ray starts once per session (conftest: ``ray_local``, ``ray_two_nodes``, both on 127.0.0.1); the
shipped baseline-cnn with onnx-int8 keeps each run short and never imports TensorFlow.
"""

from __future__ import annotations

import csv
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cifarbench.engines import EngineOptions
from cifarbench.errors import DataError, ExitStatus, UsageError
from cifarbench.events import Event
from cifarbench.runs.classify import classify, state_path_for
from cifarbench.runs.lock import lock_path_for
from conftest import make_tree, run_cli
from test_discover import _img, _tree

MODEL = ("--model", "baseline-cnn", "--backend", "onnx-int8")
KW = {"model": "baseline-cnn", "backend": "onnx-int8"}


def _procs(marker: bytes) -> set[int]:
    """PIDs whose command line starts with ``marker`` (Ray sets its workers' titles, e.g. ``ray::MapWorker``)."""
    pids = set()
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/cmdline", "rb") as fh:
                    if fh.read().startswith(marker):
                        pids.add(int(d))
            except OSError:
                pass
    return pids


def _ray_daemons() -> set[int]:
    pids = set()
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                if Path(f"/proc/{d}/comm").read_text().strip() in ("raylet", "gcs_server"):
                    pids.add(int(d))
            except OSError:
                pass
    return pids


# --------------------------------------------------------------------------- options (no Ray needed)
def test_engine_options_are_validated_once() -> None:
    with pytest.raises(UsageError, match="unknown engine"):
        EngineOptions("spark")
    with pytest.raises(UsageError, match="need --engine ray"):
        EngineOptions("local", actors=2)
    with pytest.raises(UsageError, match="at least 1"):
        EngineOptions("ray", actors=0)


def test_ray_options_without_the_ray_engine_are_a_usage_error(tmp_path: Path) -> None:
    _img(tmp_path / "a.png", 1)
    r = run_cli("classify", tmp_path, *MODEL, "--ray-address", "auto")
    assert r.exit_code == ExitStatus.USAGE and "need --engine ray" in r.stderr and r.stdout == ""


def test_ray_is_not_contacted_when_there_is_nothing_to_classify(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    r = run_cli("classify", tmp_path / "empty", *MODEL, "--engine", "ray", "--ray-address", "127.0.0.1:1")
    assert r.exit_code == 0 and r.stdout_bytes == b"path,label,class_index,confidence,error\r\n", r.stderr


def test_an_unreachable_cluster_is_one_line_and_exit_7(tmp_path: Path) -> None:
    _img(tmp_path / "a.png", 1)
    out = tmp_path / "labels.csv"
    out.write_text("previous output\n")
    r = run_cli("classify", tmp_path / "a.png", *MODEL, "--engine", "ray", "--ray-address", "127.0.0.1:1", "-o", out)
    assert r.exit_code == ExitStatus.UNAVAILABLE, r.stderr
    assert r.stderr.strip().count("\n") == 0 and "cannot reach the Ray cluster at 127.0.0.1:1" in r.stderr
    assert out.read_text() == "previous output\n" and not lock_path_for(out).exists()



def test_ray_address_is_taken_from_the_environment_like_the_option(tmp_path: Path) -> None:
    _img(tmp_path / "a.png", 1)
    r = run_cli("classify", tmp_path / "a.png", *MODEL, "--engine", "ray", env={"RAY_ADDRESS": "127.0.0.1:1"})
    assert r.exit_code == ExitStatus.UNAVAILABLE and "cannot reach the Ray cluster at 127.0.0.1:1" in r.stderr, r.stderr


# --------------------------------------------------------------------------- real Ray

@pytest.mark.slow
@pytest.mark.parametrize("cluster", ["ray_local", "ray_two_nodes"])
def test_output_is_identical_to_the_local_engine(cluster: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    address = request.getfixturevalue(cluster)
    root, expected, failing = _tree(tmp_path / "photos")  # 0-byte, truncated, non-image, non-UTF-8, nested, 3 MP
    fmt = "csv" if cluster == "ray_local" else "jsonl"
    # the two-node run also refuses the 3 MP photo by its pixel limit: the same error row on a worker
    opts = ("--top-k", "3", "--batch-size", "4") + (("--max-pixels", "2000000") if cluster == "ray_two_nodes" else ())
    local, remote = tmp_path / f"local.{fmt}", tmp_path / f"ray.{fmt}"
    r1 = run_cli("classify", root, *MODEL, *opts, "-o", local)
    r2 = run_cli("classify", root, *MODEL, *opts, "-o", remote, "--engine", "ray", "--ray-address", address)
    assert r1.exit_code == r2.exit_code == ExitStatus.PARTIAL, (r1.stderr, r2.stderr)
    assert remote.read_bytes() == local.read_bytes()
    text = remote.read_text(encoding="utf-8")
    rows = list(csv.reader(io.StringIO(text, newline="")))[1:] if fmt == "csv" else [json.loads(x) for x in text.splitlines()]
    assert len(rows) == len(expected)  # one row per file, the failed ones included
    nodes = 1 if cluster == "ray_local" else 2
    failed = 3 if cluster == "ray_local" else 4
    assert f"on {nodes} node" in r2.stderr and f"11 files, {failed} failed" in r2.stderr
    assert all(line.startswith("classify: ") for line in r2.stderr.splitlines()), r2.stderr  # none of Ray's logs
    if cluster == "ray_two_nodes":
        assert any("big.jpg" in r["path"] and "pixels" in (r["error"] or "") for r in rows)
    assert not lock_path_for(remote).exists()


@pytest.mark.slow
def test_actors_and_threads_must_fit_the_cluster(ray_two_nodes: str, tmp_path: Path) -> None:
    _img(tmp_path / "a.png", 1)
    for opts, msg in ((("--actors", "3"), "--actors 3 x 1 threads do not fit the cluster's CPUs (1+1); at most 2"),
                      (("--threads", "2"), "--threads 2: no Ray node has that many CPUs (largest: 1)")):
        r = run_cli("classify", tmp_path, *MODEL, "--engine", "ray", "--ray-address", ray_two_nodes, *opts)
        assert r.exit_code == ExitStatus.USAGE and msg in r.stderr and r.stdout == "", r.stderr


@pytest.mark.slow
def test_resume_sends_only_new_and_changed_files(ray_two_nodes: str, tmp_path: Path) -> None:
    root, expected, failing = _tree(tmp_path / "photos")
    out = tmp_path / "labels.csv"
    eng = EngineOptions("ray", ray_two_nodes)
    first = classify([root], output=out, resume=True, engine=eng, **KW)
    assert first.classified == len(expected) and first.failed == len(failing)
    _img(root / "b" / "new.png", 4, seed=9)
    old_mtime = (root / "a" / "x.jpg").stat().st_mtime_ns
    _img(root / "a" / "x.jpg", 5, seed=10, fmt="JPEG")  # changed content, size or mtime
    os.utime(root / "a" / "x.jpg", ns=(old_mtime + 10**9, old_mtime + 10**9))  # a newer mtime, not a sleep's luck
    second = classify([root], output=out, resume=True, engine=eng, **KW)
    # new + changed + the failed ones (always retried); the rest come from the previous output
    assert second.classified == 2 + len(failing) and second.reused == len(expected) - 1 - len(failing)
    fresh = tmp_path / "fresh.csv"
    classify([root], output=fresh, **KW)  # the local engine, from scratch
    assert out.read_bytes() == fresh.read_bytes()
    assert json.loads(state_path_for(out).read_text())["files"][0][0] == str(root / "a" / "x.jpg")


@pytest.mark.slow
def test_an_actor_killed_mid_run_is_replaced_and_the_output_is_unchanged(ray_two_nodes: str, tmp_path: Path) -> None:
    root = make_tree(tmp_path / "many", per_class=30, splits=("test",), seed=3)  # 300 small PNGs
    (root / "test" / "cat" / "zero.png").write_bytes(b"")
    local, remote = tmp_path / "local.csv", tmp_path / "ray.csv"
    classify([root], output=local, batch_size=8, **KW)
    killed: list[int] = []

    def kill_one_actor(event: Event) -> None:
        done = event.done or 0
        if event.kind == "progress" and not killed and done > 0:
            actors = sorted(_procs(b"ray::MapWorker"))
            assert actors, "no Ray Data actor process found"
            os.kill(actors[0], signal.SIGKILL)
            killed.append(done)

    rep = classify([root], output=remote, batch_size=8, engine=EngineOptions("ray", ray_two_nodes),
                   events=kill_one_actor, **KW)
    assert killed and killed[0] < 301 and rep.files == 301 and rep.failed == 1  # killed with rows still to come
    assert remote.read_bytes() == local.read_bytes()


@pytest.mark.slow
def test_a_path_missing_on_a_node_fails_in_one_line_and_keeps_the_previous_output(ray_two_nodes: str, tmp_path: Path) -> None:
    root, _, _ = _tree(tmp_path / "photos")
    out = tmp_path / "labels.csv"
    out.write_text("previous output\n")

    def vanish(event: Event) -> None:  # after discovery on the driver: as if the folder were not shared
        if event.kind == "start":
            root.rename(tmp_path / "elsewhere")

    with pytest.raises(DataError) as info:
        classify([root], output=out, engine=EngineOptions("ray", ray_two_nodes), events=vanish, **KW)
    msg = str(info.value)
    assert "\n" not in msg and "not readable on Ray node" in msg and "shared filesystem" in msg, msg
    assert out.read_text() == "previous output\n"
    assert not lock_path_for(out).exists() and sorted(p.name for p in tmp_path.iterdir()) == ["elsewhere", "labels.csv"]


@pytest.mark.slow
def test_ctrl_c_stops_the_cluster_work_and_keeps_the_previous_output(ray_two_nodes: str, tmp_path: Path) -> None:
    root = make_tree(tmp_path / "many", per_class=20, splits=("test",), seed=4)
    out = tmp_path / "labels.csv"
    out.write_text("previous output\n")

    def interrupt(event: Event) -> None:
        if event.kind == "progress" and (event.done or 0) > 0:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        classify([root], output=out, batch_size=8, engine=EngineOptions("ray", ray_two_nodes),
                 events=interrupt, **KW)
    assert out.read_text() == "previous output\n" and not lock_path_for(out).exists()
    deadline = time.monotonic() + 30
    while _procs(b"ray::MapWorker") and time.monotonic() < deadline:  # the run's actors end with its driver
        time.sleep(0.5)
    assert not _procs(b"ray::MapWorker")


@pytest.mark.slow
def test_a_private_local_ray_is_silent_with_quiet_and_leaves_nothing_running(tmp_path: Path) -> None:
    pytest.importorskip("ray.data")
    root = make_tree(tmp_path / "good", per_class=2, splits=("test",), seed=5)
    local = tmp_path / "local.csv"
    assert run_cli("classify", root, *MODEL, "-o", local, "-q").exit_code == 0
    before = _ray_daemons()
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    p = subprocess.run([sys.executable, "-m", "cifarbench", "classify", str(root), *MODEL, "--engine", "ray", "-q",
                        "-o", str(tmp_path / "ray.csv")], capture_output=True, env=env, timeout=300)
    assert (p.returncode, p.stdout, p.stderr) == (0, b"", b"")
    assert (tmp_path / "ray.csv").read_bytes() == local.read_bytes()
    assert _ray_daemons() <= before  # its raylet and gcs_server are gone


@pytest.mark.slow
def test_ray_address_from_the_environment_joins_that_cluster(ray_two_nodes: str, tmp_path: Path) -> None:
    """$RAY_ADDRESS alone (no --ray-address) joins the two-node cluster rather than starting a private Ray."""
    root = make_tree(tmp_path / "good", per_class=1, splits=("test",), seed=6)
    local, remote = tmp_path / "local.csv", tmp_path / "ray.csv"
    assert run_cli("classify", root, *MODEL, "-o", local).exit_code == 0
    r = run_cli("classify", root, *MODEL, "--engine", "ray", "-o", remote, env={"RAY_ADDRESS": ray_two_nodes})
    assert r.exit_code == 0 and "on 2 nodes" in r.stderr, r.stderr  # a private Ray would be one node
    assert remote.read_bytes() == local.read_bytes()


@pytest.mark.slow
def test_a_path_only_the_driver_can_see_is_exit_4_on_the_command_line(ray_two_nodes: str, tmp_path: Path) -> None:
    """/proc/self/fd/N names this process's open folder: readable here, missing in every Ray worker,
    as a folder that is not on a shared filesystem would be."""
    root = make_tree(tmp_path / "good", per_class=1, splits=("test",), seed=7)
    out = tmp_path / "labels.csv"
    out.write_text("previous output\n")
    fd = os.open(root, os.O_RDONLY)
    try:
        high = os.dup2(fd, 987, inheritable=False)
        try:
            r = run_cli("classify", f"/proc/self/fd/{high}", *MODEL, "--engine", "ray", "--ray-address", ray_two_nodes,
                        "-o", out)
        finally:
            os.close(high)
    finally:
        os.close(fd)
    assert r.exit_code == ExitStatus.DATA, r.stderr
    errors = [line for line in r.stderr.splitlines() if not line.startswith("classify: ")]  # the rest: notes
    assert len(errors) == 1 and errors[0].startswith("error: /proc/self/fd/987 is not readable on Ray node"), r.stderr
    assert "shared filesystem" in errors[0]
    assert out.read_text() == "previous output\n" and not lock_path_for(out).exists()
