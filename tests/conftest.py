"""Shared fixtures: a CliRunner helper, a small synthetic CIFAR-like tree, and a tiny converted model."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import pytest
from click.testing import CliRunner, Result
from PIL import Image

from cifarbench import CIFAR10_CLASSES

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = Path(__file__).resolve().parents[1]
SHARED_ARCHIVE = REPO.parent / "shared" / "datasets" / "cifar10-jpeg.tar.xz"


# Fixtures that train or convert a model: every test that uses one, directly or through another fixture, is slow.
TRAINING_FIXTURES = frozenset({"tiny_model", "onnx_converted"})


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark ``slow`` whatever trains or converts, so ``-m "not slow"`` never builds a model by accident."""
    for item in items:
        if TRAINING_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests never read or write the user's real cache."""
    monkeypatch.setenv("CIFARBENCH_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "cache"))


def fresh_env(**extra: str) -> dict[str, str]:
    """os.environ for a child process, minus the log-level variables cifarbench sets in-process (tfquiet), so the
    child shows whether it sets them itself."""
    from cifarbench.models.tfquiet import _ENV

    return {**{k: v for k, v in os.environ.items() if k not in _ENV}, **extra}


def run_unprivileged(fn: Callable[[], Any]) -> Any:
    """``fn()`` as a user without root's powers: here when not root, else in a forked child that drops to ``nobody``.

    Root lists chmod-000 directories and reads chmod-000 files, so a branch for "permission denied" would never
    run under CI's root. A fork (not a new interpreter: it may live under root's home) keeps every import; what
    ``fn`` touches must be reachable by nobody (see the ``unprivileged_tmp`` fixture). Returns ``fn``'s result
    (picklable), re-raises its failure as an AssertionError with the child's traceback.
    """
    if os.geteuid() != 0:
        return fn()
    import pickle
    import pwd
    import traceback

    pw = pwd.getpwnam("nobody")
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: drop root for good, run, send the outcome, never return into pytest
        try:
            os.close(r)
            os.setgroups([])
            os.setgid(pw.pw_gid)
            os.setuid(pw.pw_uid)
            try:
                out = (True, fn())
            except BaseException:
                out = (False, traceback.format_exc())
            with os.fdopen(w, "wb") as fh:
                fh.write(pickle.dumps(out))
        finally:
            os._exit(0)
    os.close(w)
    import select
    import signal

    chunks, deadline = [], time.monotonic() + 120  # a fork of a threaded process could hang: never wait forever
    with os.fdopen(r, "rb") as fh:
        while True:
            ready, _, _ = select.select([fh], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                os.kill(pid, signal.SIGKILL)
                break
            chunk = os.read(fh.fileno(), 1 << 16)
            if not chunk:
                break
            chunks.append(chunk)
    os.waitpid(pid, 0)
    data = b"".join(chunks)
    assert data, "the unprivileged child died (or hung 120 s) before answering"
    ok, value = pickle.loads(data)
    if not ok:
        raise AssertionError(f"as nobody:\n{value}")
    return value


@pytest.fixture
def unprivileged_tmp(tmp_path: Path) -> Iterator[Path]:
    """A directory ``run_unprivileged`` can use: tmp_path itself when not root, else one nobody owns under /tmp."""
    if os.geteuid() != 0:
        yield tmp_path
        return
    import pwd
    import shutil
    import tempfile

    pw = pwd.getpwnam("nobody")
    d = Path(tempfile.mkdtemp(prefix="cifarbench-test-"))
    os.chown(d, pw.pw_uid, pw.pw_gid)
    try:
        yield d
    finally:
        for p in d.rglob("*"):
            if p.is_dir() and not p.is_symlink():
                p.chmod(0o755)
        shutil.rmtree(d)


def run_cli(*args: str, input: str | bytes | None = None, env: dict[str, str] | None = None) -> Result:
    """Invoke the CLI in-process; stderr is kept apart from stdout."""
    from cifarbench.cli import cli

    runner = CliRunner()
    return runner.invoke(cli, [str(a) for a in args], input=input, env=env, catch_exceptions=False)


def fake_server_script(label: int = 0, limits: str = "None", connection: str = "None", log_level: str = "warning") -> str:
    """A `serve` process around a fixed-answer backend (class ``label`` at 0.91): prints its port, serves on 127.0.0.1.

    ``limits`` and ``connection`` are Python expressions (``ServeLimits(...)``, ``ConnectionLimits(...)``).
    """
    return f"""
import sys
import numpy as np
from cifarbench.cli.serve import _bind
from cifarbench.models.manifest import Manifest
from cifarbench.serve import server
from cifarbench.serve.app import ServeLimits, create_app
from cifarbench.serve.protocol import ConnectionLimits

class Backend:
    name = "fake"
    def predict(self, x):
        p = np.full((len(x), 10), 0.01, np.float32)
        p[:, {label}] = 0.91
        return p
    def describe(self):
        return {{"runtime": "fake"}}

sock = _bind("127.0.0.1", 0)
print(sock.getsockname()[1], flush=True)
server.run(create_app(Manifest(name="m", arch="fake"), Backend(), limits={limits}), sock, {connection},
           log_level={log_level!r})
"""


def class_pattern(label: int, rng: np.random.Generator, size: int = 32) -> np.ndarray:
    """A learnable image: each class has its own colour and stripe direction, plus noise."""
    hue = np.array([(label * 37) % 256, (label * 91 + 60) % 256, (label * 53 + 120) % 256], np.float32)
    yy, xx = np.mgrid[0:size, 0:size]
    stripes = ((xx if label % 2 else yy) // (2 + label % 4)) % 2
    img = hue[None, None, :] * (0.6 + 0.4 * stripes[..., None]) + rng.normal(0, 12, (size, size, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


def make_tree(root: Path, per_class: int = 8, splits: tuple[str, ...] = ("train", "test"), seed: int = 0, ext: str = "png") -> Path:
    rng = np.random.default_rng(seed)
    for split in splits:
        for label, name in enumerate(CIFAR10_CLASSES):
            d = root / split / name
            d.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                Image.fromarray(class_pattern(label, rng)).save(d / f"{i:04d}.{ext}")
    return root


@pytest.fixture(scope="session")
def synthetic_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """train/ (30 per class) and test/ (10 per class) of learnable synthetic images."""
    root = tmp_path_factory.mktemp("synthetic")
    make_tree(root, per_class=30, splits=("train",), seed=1)
    make_tree(root, per_class=10, splits=("test",), seed=2)
    return root


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory, synthetic_tree: Path) -> Path:
    """A small trained Keras model converted to every format: a directory with manifest.json."""
    os.environ["CIFARBENCH_CACHE_DIR"] = str(tmp_path_factory.getbasetemp() / "cache")
    from cifarbench.conversion.convert import convert
    from cifarbench.testing import build_tiny_keras_model

    out = tmp_path_factory.mktemp("tiny_model")
    keras_path = build_tiny_keras_model(out / "src", synthetic_tree)
    convert(keras_path, out / "model", calibration_data=str(synthetic_tree), calibration_size=300, parity_size=300)
    return out / "model"


def _ray_cluster(nodes: int, cpus: int) -> Iterator[str]:
    """A real Ray cluster of ``nodes`` nodes with ``cpus`` CPUs each, on 127.0.0.1 only; yields its address."""
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # before Ray is imported: loopback addresses only
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_ENABLE_AUTO_CONNECT", "0")  # nothing in a test joins a cluster by accident
    pytest.importorskip("ray.data")
    from ray.cluster_utils import Cluster

    args = {"num_cpus": cpus, "node_ip_address": "127.0.0.1", "object_store_memory": 100 * 1024**2}
    cluster = Cluster(initialize_head=True, head_node_args={**args, "include_dashboard": False})
    try:
        for _ in range(nodes - 1):
            cluster.add_node(**args)
        cluster.wait_for_nodes()
        yield cluster.address
    finally:
        cluster.shutdown()  # kills and waits for every raylet, gcs_server and worker it started


@pytest.fixture(scope="session")
def ray_local() -> Iterator[str]:
    """One Ray node with two CPUs, started once per test session (tests/test_ray_engine.py)."""
    yield from _ray_cluster(1, 2)


@pytest.fixture(scope="session")
def ray_two_nodes() -> Iterator[str]:
    """Two Ray nodes with one CPU each on this machine: a real multi-node cluster, started once."""
    yield from _ray_cluster(2, 1)


class ServeProcess:
    """``cifarbench serve`` in a child process on 127.0.0.1; its stderr lines collected by a reader thread.

    Ready once uvicorn says its application started, so a test's first request never races the bind.
    """

    def __init__(self, model: Path, backend: str, *extra: str, port: int = 0) -> None:
        import re
        import subprocess
        import sys
        import threading

        self.proc = subprocess.Popen(
            [sys.executable, "-m", "cifarbench", "serve", "--model", str(model), "--backend", backend,
             "--host", "127.0.0.1", "--port", str(port), *extra],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=fresh_env(), cwd=REPO)
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        line = self.wait_for(lambda ln: "serving " in ln and " on http://" in ln, 120)
        self.url = re.search(r"(http://127\.0\.0\.1:\d+/)", line).group(1)  # type: ignore[union-attr]
        self.wait_for(lambda ln: "Application startup complete" in ln, 60)

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line.rstrip("\n"))

    def wait_for(self, cond: Callable[[str], bool], timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            hit = next((ln for ln in list(self.lines) if cond(ln)), None)
            if hit is not None:
                return hit
            if self.proc.poll() is not None and not self._reader.is_alive():
                break
            time.sleep(0.02)
        raise AssertionError(f"condition not met; stderr so far: {self.lines[-20:]}")

    def stop(self) -> None:
        import subprocess

        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._reader.join(timeout=10)


@pytest.fixture
def serve_process() -> Iterator[Callable[..., ServeProcess]]:
    """Start ``ServeProcess``es (same arguments); every one started is stopped after the test."""
    started: list[ServeProcess] = []

    def start(*args: Any, **kwargs: Any) -> ServeProcess:
        started.append(ServeProcess(*args, **kwargs))
        return started[-1]

    yield start
    for s in started:
        s.stop()
