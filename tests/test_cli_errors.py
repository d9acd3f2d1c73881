"""Usage errors are one line on stderr (``error: ...``) with exit 2, like every other error: never click's three-line block."""

from __future__ import annotations

import pytest

from cifarbench.errors import ExitStatus
from conftest import run_cli


@pytest.mark.parametrize("args, says", [
    (("classify", "--bogus"), "No such option '--bogus'"),
    (("classify",), "Missing argument"),
    (("classify", ".", "--crop-pct", "1.0001"), "--crop-pct"),  # one past the limit
    (("classify", ".", "--top-k", "0"), "--top-k"),
    (("bench", "--synthetic", "--data", "x"), "--synthetic"),
    (("bench", "--batch-sizes", "1,x"), "--batch-sizes"),
    (("bench", "-q", "compare", "a.json", "b.json"), "compare"),
    (("convert",), "Missing argument"),
])
def test_usage_error_is_one_line_and_exit_2(args: tuple[str, ...], says: str) -> None:
    res = run_cli(*args)
    assert res.exit_code == ExitStatus.USAGE == 2
    lines = res.stderr.splitlines()
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith("error: ") and says in lines[0]
    assert res.stdout == ""
    assert lines[0].count("--help") <= 1  # one pointer to the help, not two


def test_traceback_flag_keeps_clicks_own_report() -> None:
    """--traceback asks for the raw story: click's usage block is left alone there."""
    res = run_cli("--traceback", "classify", "--bogus")
    assert res.exit_code == 2 and "Usage:" in res.stderr
