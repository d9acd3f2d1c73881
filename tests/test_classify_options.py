"""classify's options: validated once, each bad value a usage error that names its option."""

from __future__ import annotations

import io

import pytest

from cifarbench.errors import ExitStatus, UsageError
from cifarbench.runs.classify import classify
from cifarbench.runs.options import ClassifyOptions


@pytest.mark.parametrize("field, value, flag", [
    ("batch_size", 0, "--batch-size"), ("top_k", 0, "--top-k"), ("threads", 0, "--threads"), ("workers", -1, "--workers"),
    ("max_pixels", 0, "--max-pixels"), ("batch_size", 2.5, "--batch-size"), ("top_k", True, "--top-k"),
    ("pool", "fork", "--pool"), ("fmt", "xml", "--format"), ("resize", "stretch", "--resize"), ("device", "tpu", "--device"),
])
def test_each_bad_value_names_its_option(field: str, value: object, flag: str) -> None:
    with pytest.raises(UsageError) as exc:
        ClassifyOptions(**{field: value}).validated(has_stream=True)
    assert str(exc.value).startswith(flag) and exc.value.exit_status == ExitStatus.USAGE


def test_output_stream_and_resume_rules() -> None:
    assert ClassifyOptions().validated(has_stream=True) == ClassifyOptions()
    with pytest.raises(UsageError, match="exactly one"):
        ClassifyOptions(output="o.csv").validated(has_stream=True)
    with pytest.raises(UsageError, match="exactly one"):
        ClassifyOptions().validated(has_stream=False)
    with pytest.raises(UsageError, match="--resume needs --output"):
        ClassifyOptions(resume=True).validated(has_stream=True)
    assert ClassifyOptions(include="*.jpg").validated(True).include == ("*.jpg",)  # not letter by letter


def test_classify_validates_before_loading_anything(tmp_path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(UsageError, match="--top-k"):  # a model that does not exist is never looked at
        classify([tmp_path], model=tmp_path / "no-such-model", top_k=0, stream=io.StringIO())
    with pytest.raises(TypeError):
        classify([tmp_path], ClassifyOptions(), top_k=2, stream=io.StringIO())
    with pytest.raises(TypeError):
        classify([tmp_path], no_such_option=1, stream=io.StringIO())


@pytest.mark.parametrize("field, least, flag", [("batch_size", 1, "--batch-size"), ("top_k", 1, "--top-k"),
                                                ("threads", 1, "--threads"), ("workers", 0, "--workers"),
                                                ("max_pixels", 1, "--max-pixels")])
def test_each_minimum_at_the_limit_and_one_past(field: str, least: int, flag: str) -> None:
    assert ClassifyOptions(**{field: least}).validated(has_stream=True)  # type: ignore[arg-type]
    with pytest.raises(UsageError) as exc:
        ClassifyOptions(**{field: least - 1}).validated(has_stream=True)  # type: ignore[arg-type]
    assert str(exc.value) == f"{flag} must be an integer >= {least}, got {least - 1}"


def test_exact_messages() -> None:
    with pytest.raises(UsageError) as exc:
        ClassifyOptions(tta="rotate").validated(has_stream=True)
    assert str(exc.value) == "--tta: unknown value 'rotate'; choose from none, flip, flip-translate"
    with pytest.raises(UsageError) as exc:
        ClassifyOptions(output="o.csv").validated(has_stream=True)
    assert str(exc.value) == "give exactly one of an output file or a stream"
    with pytest.raises(UsageError) as exc:
        ClassifyOptions(resume=True).validated(has_stream=True)
    assert str(exc.value) == "--resume needs --output FILE (it reuses that file's rows)"


def test_transform_options_are_checked_before_anything_runs() -> None:
    with pytest.raises(UsageError, match=r"--crop-pct must be in \(0, 1\], got 1.5"):
        ClassifyOptions(crop_pct=1.5).validated(has_stream=True)  # type: ignore[call-arg]
    with pytest.raises(UsageError, match="unknown interpolation 'cubic'"):
        ClassifyOptions(interpolation="cubic").validated(has_stream=True)  # type: ignore[call-arg]
    assert ClassifyOptions(crop_pct=1.0, interpolation="bicubic").validated(has_stream=True)  # type: ignore[call-arg]
