"""The CLI group and `info`: version, help, `python -m`, env-var options, one-line errors vs --traceback."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import json
import subprocess
import sys
import types
from pathlib import Path

import click
import pytest

from cifarbench import __version__
from cifarbench.backends import BACKENDS
from cifarbench.cli import COMMANDS
from cifarbench.errors import EXIT_CODE_HELP, EXIT_CODE_MEANINGS, DataError, ExitStatus
from cifarbench.sysinfo import SPEED_FLAGS
from conftest import REPO, run_cli


def py(*code_or_args: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, *code_or_args], capture_output=True, text=True, cwd=cwd, timeout=120)


def test_version() -> None:
    res = run_cli("--version")
    assert res.exit_code == 0 and res.stdout.strip() == f"cifarbench, version {__version__}"


def test_help_lists_commands_and_a_compact_exit_code_table() -> None:
    res = run_cli("--help")
    assert res.exit_code == 0
    for name in COMMANDS:
        if importlib.util.find_spec(COMMANDS[name][0]) is not None:
            assert f"  {name} " in res.stdout
    lines = res.stdout.splitlines()
    start = lines.index("  Exit codes:")
    table = lines[start + 1 : start + 1 + len(ExitStatus)]
    assert len(table) == len(ExitStatus) and all(line.strip() for line in table)  # one line each, no blank lines
    for line, status in zip(table, ExitStatus):
        code, name, meaning = line.split(maxsplit=2)
        assert int(code) == int(status) and name == status.name.lower() and meaning == EXIT_CODE_MEANINGS[status]
    assert "-h, --help" in res.stdout and "--traceback" in res.stdout


def test_every_exit_code_has_a_meaning() -> None:
    assert set(EXIT_CODE_MEANINGS) == set(ExitStatus)
    assert all(len(line) <= 78 for line in EXIT_CODE_HELP.splitlines())


def test_help_imports_no_framework() -> None:
    code = (
        "import sys\n"
        "from cifarbench.cli import main\n"
        "sys.argv = ['cifarbench', '--help']\n"
        "try:\n    main()\nexcept SystemExit as e:\n    assert e.code == 0, e.code\n"
        "heavy = [m for m in ('tensorflow', 'keras', 'onnxruntime', 'ai_edge_litert', 'numpy', 'PIL') if m in sys.modules]\n"
        "print('HEAVY', heavy)\n"
    )
    res = py("-c", code)
    assert res.returncode == 0, res.stderr
    assert "HEAVY []" in res.stdout


def test_python_dash_m(tmp_path: Path) -> None:
    res = py("-m", "cifarbench", "--help", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("Usage: cifarbench ") and "Exit codes:" in res.stdout
    res = py("-m", "cifarbench", "--version", cwd=tmp_path)
    assert res.stdout.strip() == f"cifarbench, version {__version__}"


def test_unknown_command_is_a_usage_error() -> None:
    res = run_cli("no-such-command")
    assert res.exit_code == ExitStatus.USAGE and "No such command" in res.stderr


# ----------------------------------------------------------------------------- info


def test_info_json() -> None:
    res = run_cli("info", "--json")
    assert res.exit_code == 0, res.stderr
    info = json.loads(res.stdout)  # nothing but JSON on stdout
    v = info["versions"]
    assert v["cifarbench"] == __version__ and v["python"] == sys.version.split()[0]
    import numpy
    import PIL

    assert v["numpy"] == numpy.__version__ and v["pillow"] == PIL.__version__
    assert {"onnxruntime", "ai-edge-litert", "tensorflow"} <= set(v)
    cpu = info["cpu"]
    assert cpu["cores"] >= 1 and 1 <= cpu["usable_cores"] <= cpu["cores"] and cpu["model"]
    assert set(cpu["flags"]) == set(SPEED_FLAGS)
    assert {"avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16"} <= set(cpu["flags"])
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        flags = set()
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
        assert cpu["flags"] == {f: f in flags for f in SPEED_FLAGS}  # measured, not assumed
    assert isinstance(info["gpus"], list)
    assert "CPUExecutionProvider" in info["onnxruntime_providers"]
    assert set(info["backends"]) == set(BACKENDS)
    assert info["bundled_test_data"] and Path(info["bundled_test_data"]).is_file()
    assert "default_model" in info and "trained_dir" in info


def test_info_default_model_found_or_explained(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CIFARBENCH_TRAINED_DIR", str(tmp_path))
    info = json.loads(run_cli("info", "--json").stdout)
    assert "error" in info["default_model"] and "not found" in info["default_model"]["error"]
    assert info["shipped_models"] == []

    (tmp_path / "flagship").mkdir()
    manifest = {"name": "flagship", "arch": "resnet", "metrics": {"test": {"accuracy": 0.9}}, "artifacts": {}}
    (tmp_path / "flagship" / "manifest.json").write_text(json.dumps(manifest))
    info = json.loads(run_cli("info", "--json").stdout)
    assert info["default_model"]["name"] == "flagship" and info["default_model"]["test_accuracy"] == 0.9
    assert Path(info["default_model"]["path"]) == tmp_path / "flagship"
    assert info["shipped_models"] == ["flagship"] and info["trained_dir"] == str(tmp_path)


def test_info_table() -> None:
    res = run_cli("info")
    assert res.exit_code == 0, res.stderr
    for label in ("cifarbench", "numpy", "pillow", "cpu flags", "gpus", "onnxruntime providers", "backend onnx", "default model"):
        assert label in res.stdout
    assert "avx2" in res.stdout


def test_options_from_environment_variables() -> None:
    res = run_cli("info", env={"CIFARBENCH_INFO_JSON": "1"})
    assert res.exit_code == 0
    assert json.loads(res.stdout)["versions"]["cifarbench"] == __version__
    assert not run_cli("info", env={"CIFARBENCH_INFO_JSON": "0"}).stdout.lstrip().startswith("{")


# ----------------------------------------------------------------------------- errors


@pytest.fixture
def failing_command(monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    """Register a throwaway subcommand `boom` that raises what the test asks for."""
    box: dict[str, BaseException] = {}

    @click.command("boom")
    def command() -> None:
        raise box["exc"]

    mod = types.ModuleType("_cifarbench_test_boom")
    mod.__spec__ = importlib.machinery.ModuleSpec(mod.__name__, None)
    mod.command = command  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, mod.__name__, mod)
    monkeypatch.setitem(COMMANDS, "boom", (mod.__name__, "Fail on purpose."))
    return box


def test_library_error_is_one_line_with_its_exit_code(failing_command: dict) -> None:
    failing_command["exc"] = DataError("images.tar.xz: not a readable tar archive (bad magic)")
    res = run_cli("boom")
    assert res.exit_code == ExitStatus.DATA
    assert res.stderr == "error: images.tar.xz: not a readable tar archive (bad magic)\n"
    assert res.stdout == ""


def test_traceback_flag_lets_the_exception_through(failing_command: dict) -> None:
    failing_command["exc"] = DataError("broken")
    with pytest.raises(DataError, match="broken"):
        run_cli("--traceback", "boom")
    with pytest.raises(DataError):  # the group's own option, from the environment
        run_cli("boom", env={"CIFARBENCH_TRACEBACK": "1"})


def test_ctrl_c_exits_130(failing_command: dict) -> None:
    failing_command["exc"] = KeyboardInterrupt()
    res = run_cli("boom")
    assert res.exit_code == ExitStatus.INTERRUPTED and "interrupted" in res.stderr and "Traceback" not in res.stderr


def test_env_var_follows_the_flag_not_the_parameter_name(monkeypatch: pytest.MonkeyPatch) -> None:
    @click.command("fake")
    @click.option("--out-format", "fmt", default="csv")
    @click.option("--threads", type=int, default=1)
    def command(fmt: str, threads: int) -> None:
        click.echo(f"{fmt} {threads}")

    mod = types.ModuleType("_cifarbench_test_fake")
    mod.__spec__ = importlib.machinery.ModuleSpec(mod.__name__, None)
    mod.command = command  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, mod.__name__, mod)
    monkeypatch.setitem(COMMANDS, "fake", (mod.__name__, "Echo options."))
    res = run_cli("fake", env={"CIFARBENCH_FAKE_OUT_FORMAT": "jsonl", "CIFARBENCH_FAKE_THREADS": "4"})
    assert res.stdout == "jsonl 4\n"
    assert run_cli("fake", "--threads", "2", env={"CIFARBENCH_FAKE_THREADS": "4"}).stdout == "csv 2\n"  # flag wins


def test_info_table_shows_brackets_literally(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Rich reads "[train]" as markup: "pip install 'cifarbench[train]'" lost its extra. Values are escaped."""
    trained = tmp_path / "models[train]"
    (trained / "flagship").mkdir(parents=True)
    manifest = {"name": "flagship", "arch": "resnet", "metrics": {"test": {"accuracy": 0.9}}, "artifacts": {}}
    (trained / "flagship" / "manifest.json").write_text(json.dumps(manifest))
    monkeypatch.setenv("CIFARBENCH_TRAINED_DIR", str(trained))
    monkeypatch.setenv("COLUMNS", "400")  # one table row per line, so the path is not wrapped
    res = run_cli("info")
    assert res.exit_code == 0, res.stderr
    assert "models[train]" in res.stdout
