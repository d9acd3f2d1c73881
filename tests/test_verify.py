"""Every backend checks its artifact's sha256 before loading it: a same-size corruption is a ModelError, not a run."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

from cifarbench import backends
from cifarbench.errors import ModelError
from cifarbench.models.manifest import Manifest, sha256_file

REPO = Path(__file__).resolve().parents[1]
FLAGSHIP = REPO / "trained" / "flagship"


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shipped flagship's manifest beside symlinks to its artifacts (each test copies the one it corrupts)."""
    d = tmp_path_factory.mktemp("flagship")
    for f in FLAGSHIP.iterdir():
        (d / f.name).symlink_to(f)
    return d


def _flip_one_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01  # same size: only the checksum can tell
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("name", list(backends.BACKENDS))
def test_a_corrupted_artifact_is_refused_by_every_backend(name: str, artifacts: Path, tmp_path: Path) -> None:
    m = Manifest.load(artifacts)
    spec = backends.get_spec(name)
    if spec.format not in m.artifacts:
        pytest.skip(f"the shipped model has no {spec.format} artifact")
    reason = backends.unavailable_reason(name, m, "cpu")
    if reason and "not installed" in reason:
        pytest.skip(reason)
    model = tmp_path / "m"
    model.mkdir()
    for f in artifacts.iterdir():
        (model / f.name).symlink_to(f.resolve())
    target = model / m.artifacts[spec.format].file
    target.unlink()
    shutil.copyfile(FLAGSHIP / m.artifacts[spec.format].file, target)
    assert sha256_file(target) == m.artifacts[spec.format].sha256  # the copy itself verifies
    _flip_one_byte(target)
    assert target.stat().st_size == m.artifacts[spec.format].size
    m = Manifest.load(model)
    heavy_before = "tensorflow" in sys.modules
    with pytest.raises(ModelError, match="checksum does not match the manifest"):
        backends.load_backend(name, m)
    assert ("tensorflow" in sys.modules) == heavy_before  # refused before any runtime was imported for it
