"""A .keras zip whose member names point outside its folder is refused, never copied (issue 25)."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest

from cifarbench.errors import ModelError
from cifarbench.models.keras2zip import unsafe_member
from cifarbench.models.kerasio import load_keras_model


def _zip(path: Path, *names: str) -> Path:
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("config.json", json.dumps({"class_name": "Sequential", "config": {"layers": []}}))
        z.writestr("metadata.json", "{}")
        for n in names:
            z.writestr(n, b"x")
    return path


@pytest.mark.parametrize("name", ["../evil.sh", "assets/../../evil", "/etc/evil", "..\\evil", "C:/evil"])
def test_names_that_leave_the_folder_are_found(tmp_path: Path, name: str) -> None:
    assert unsafe_member(_zip(tmp_path / "m.keras", "model.weights.h5", name)) == name


@pytest.mark.parametrize("name", ["assets/..hidden", "a..b/c", "assets/x/y.txt", "model.weights.h5"])
def test_ordinary_names_pass(tmp_path: Path, name: str) -> None:
    assert unsafe_member(_zip(tmp_path / "m.keras", name)) is None


def test_loading_such_a_zip_is_one_clear_model_error(tmp_path: Path) -> None:
    p = _zip(tmp_path / "m.keras", "model.weights.h5", "../../evil.sh")
    with pytest.raises(ModelError, match=r"refused: the archive has a member named '\.\./\.\./evil\.sh'"):
        load_keras_model(p)
