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


def test_the_help_pointer_names_the_command() -> None:
    res = run_cli("classify", "--bogus")
    (line,) = res.stderr.splitlines()
    assert line == "error: No such option '--bogus'. (see 'cli classify --help')"  # CliRunner names the group 'cli'


# --------------------------------------------------------------------------- every other exit path, one line each
@pytest.fixture
def boom(monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    """A command ``boom`` that raises what the test hands it, registered the way every command is."""
    import sys
    import types

    import click

    from cifarbench import cli as cli_pkg

    holder: dict[str, BaseException] = {}

    @click.command()
    def command() -> None:
        raise holder["exc"]

    mod = types.ModuleType("cifarbench_test_boom")
    mod.command = command  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, mod.__name__, mod)
    monkeypatch.setitem(cli_pkg.COMMANDS, "boom", (mod.__name__, "raises for the test"))

    def run(exc: BaseException, *pre: str):  # type: ignore[no-untyped-def]
        holder["exc"] = exc
        return run_cli(*pre, "boom")

    return run


@pytest.mark.parametrize("exc, code, line", [
    (KeyboardInterrupt(), ExitStatus.INTERRUPTED, "interrupted"),
    (OSError(28, "No space left on device", "/out.csv"), ExitStatus.ERROR, "error: No space left on device: /out.csv"),
    (OSError("plain"), ExitStatus.ERROR, "error: plain"),
    (RuntimeError("bad\nsecond line"), ExitStatus.ERROR,
     "error: unexpected RuntimeError: bad (run with --traceback for details and please report it)"),
])
def test_each_failure_is_one_line_with_its_exit_code(boom, exc: BaseException, code: int, line: str) -> None:  # type: ignore[no-untyped-def]
    res = boom(exc)
    assert (res.exit_code, res.stderr.splitlines(), res.stdout) == (code, [line], "")


@pytest.mark.parametrize("exc", [OSError("plain"), RuntimeError("bad")])
def test_traceback_flag_lets_every_failure_through(boom, exc: BaseException) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(type(exc)):
        boom(exc, "--traceback")


def test_traceback_flag_leaves_ctrl_c_to_click(boom) -> None:  # type: ignore[no-untyped-def]
    """Re-raised, Ctrl-C becomes click's own Abort ('Aborted!', exit 1), not our one-line 130."""
    res = boom(KeyboardInterrupt(), "--traceback")
    assert res.exit_code == 1 and "Aborted!" in res.stderr and "interrupted" not in res.stderr


def test_a_message_that_already_points_to_help_gets_no_second_pointer() -> None:
    (line,) = run_cli("bench", "-q", "compare", "a.json", "b.json").stderr.splitlines()
    assert line.endswith("(see bench compare --help)")


def test_group_help_lists_the_commands_under_their_heading() -> None:
    from cifarbench import cli as cli_pkg

    out = run_cli("--help").stdout
    body = out.split("\nCommands:\n", 1)[1]
    assert [ln.split()[0] for ln in body.splitlines() if ln.startswith("  ") and ln.split()] [:len(cli_pkg.COMMANDS)] \
        == list(cli_pkg.COMMANDS)
