"""backends.select: the one place a backend is chosen; a registered fake backend reaches classify, bench and serve."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from cifarbench import backends
from cifarbench.errors import BackendUnavailable, ExitStatus, UsageError
from cifarbench.models.manifest import Manifest
from conftest import class_pattern, run_cli

FAKE_MODULE = "cifarbench_test_plugins.fake_backend"


class _Fake:
    """Scores each class by closeness of the image's mean colour to a fixed palette: cheap and deterministic."""

    name, device = "fake", "cpu"

    def __init__(self, classes: int) -> None:
        self.palette = np.linspace(0, 255, classes * 3, dtype=np.float32).reshape(classes, 3)

    def predict(self, batch: np.ndarray) -> np.ndarray:
        mean = batch.reshape(len(batch), -1, 3).mean(1).astype(np.float32)
        logits = -np.abs(mean[:, None, :] - self.palette[None]).sum(-1) / 50
        e = np.exp(logits - logits.max(1, keepdims=True))
        return (e / e.sum(1, keepdims=True)).astype(np.float32)

    def describe(self) -> dict[str, Any]:
        return {"runtime": "fake", "threads": 1, "device": "cpu"}


@pytest.fixture
def fake_backend(monkeypatch: pytest.MonkeyPatch) -> str:
    """A backend module registered the way a plug-in would: one module, one registry entry, nothing else."""
    mod = types.ModuleType(FAKE_MODULE)
    mod.load = lambda spec, manifest, device, threads: _Fake(len(manifest.classes))  # type: ignore[attr-defined]
    mod.unavailable = lambda spec, manifest, device: None  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, FAKE_MODULE, mod)
    monkeypatch.setitem(backends.BACKENDS, "fake", backends.BackendSpec(
        "fake", FAKE_MODULE, "onnx", "numpy", False, "test double reading no file", probe=False))
    return "fake"


def _images(root: Path, n: int = 4) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(class_pattern(i, rng)).save(root / f"{i}.png")
    return root


def test_fake_backend_is_accepted_by_classify_bench_and_serve(fake_backend: str, tiny_model: Path, tmp_path: Path,
                                                              synthetic_tree: Path) -> None:
    r = run_cli("classify", _images(tmp_path / "imgs"), "-m", tiny_model, "-b", "fake")
    assert r.exit_code == 0, r.stderr
    assert len(r.stdout.splitlines()) == 5 and "backend fake" in r.stderr

    r = run_cli("bench", "--model", tiny_model, "--backend", "fake", "--data", synthetic_tree, "--limit", "20",
                "--min-time", "0", "--min-iters", "3", "--warmup", "0", "--batch-sizes", "1,4", "--no-isolate",
                "--output-dir", tmp_path / "b", "--format", "json")
    assert r.exit_code == 0, r.stderr
    row = json.loads(r.stdout)["results"][0]
    assert row["backend"] == "fake" and row["status"] == "ok" and row["quality"]["support"] == 20

    pytest.importorskip("starlette")
    from starlette.testclient import TestClient

    from cifarbench.serve.app import load_app

    app = load_app(str(tiny_model), backend="fake")
    with TestClient(app) as c:
        assert c.get("/v1/model").json()["backend"]["name"] == "fake"
        buf = (tmp_path / "imgs" / "0.png").read_bytes()
        res = c.post("/v1/classify", content=buf, headers={"Content-Type": "image/png"})
        assert res.status_code == 200 and res.json()["results"][0]["ok"]
    # The serve CLI accepts the name too: it gets as far as resolving the (missing) model.
    r = run_cli("serve", "--backend", "fake", "--model", tmp_path / "missing")
    assert r.exit_code == ExitStatus.DATA, r.stderr
    r = run_cli("info", "--json")
    assert json.loads(r.stdout)["backends"]["fake"] == "available"


def test_unknown_backend_is_refused_by_every_cli() -> None:
    for args in (("classify", "."), ("bench",), ("serve",)):
        r = run_cli(*args, "--backend", "nope")
        assert r.exit_code == ExitStatus.USAGE and "nope" in r.stderr


def test_named_selection_checks_availability_once(tiny_model: Path) -> None:
    m = Manifest.load(tiny_model)
    sel = backends.select(m, "onnx", "auto")
    assert (sel.name, sel.device, sel.how) == ("onnx", "cpu", "named")  # no GPU here: auto resolves to the CPU
    with pytest.raises(BackendUnavailable, match="CPU only"):
        backends.select(m, "tflite", "gpu")
    with pytest.raises(UsageError, match="unknown backend"):
        backends.select(m, "nope")
    with pytest.raises(UsageError, match="unknown device"):
        backends.select(m, None, "tpu")


def test_auto_prefers_int8_and_never_probes_keras(tiny_model: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from cifarbench import sysinfo

    cpu = sysinfo.cpu_info()  # a CPU without native bf16, whatever this host has (bf16: tests/test_bf16_auto.py)
    monkeypatch.setattr(sysinfo, "cpu_info", lambda: {**cpu, "flags": {f: False for f in cpu["flags"]}})
    m = Manifest.load(tiny_model)
    cands = backends.auto_candidates(m)
    assert cands and all(backends.BACKENDS[n].int8 for n in cands) and "keras" not in cands
    only_int8 = next(iter(cands))
    m.artifacts = {k: v for k, v in m.artifacts.items() if k in (backends.BACKENDS[only_int8].format, "keras", "onnx")}
    sel = backends.select(m)
    assert sel.name in cands and sel.how in ("only", "measured", "cached")


def test_no_runnable_backend_is_exit_7_with_the_artifacts(tiny_model: Path) -> None:
    m = Manifest.load(tiny_model)
    m.artifacts = {}
    with pytest.raises(BackendUnavailable, match="no backend can run"):
        backends.select(m)
