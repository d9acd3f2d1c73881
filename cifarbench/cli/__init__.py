"""The thin CLI: parse options, wire library objects, render tables and progress.

Library errors become one-line messages and exit codes here, and only here.
Subcommands are imported lazily so ``cifarbench --help`` never imports a framework.
"""

from __future__ import annotations

import importlib
import sys
from typing import Any

import click

from cifarbench import __version__
from cifarbench.errors import EXIT_CODE_HELP, CifarbenchError, ExitStatus, first_line

COMMANDS = {
    "info": ("cifarbench.cli.info", "Versions, CPU flags, GPUs, backends and the default model."),
    "train": ("cifarbench.cli.train", "Train a zoo architecture on CIFAR-10."),
    "convert": ("cifarbench.cli.convert", "Convert a Keras or ONNX model to TFLite and ONNX artifacts."),
    "classify": ("cifarbench.cli.classify", "Classify image files and folders; CSV/JSONL out."),
    "bench": ("cifarbench.cli.bench", "Accuracy, F1, latency and throughput per backend."),
    "serve": ("cifarbench.cli.serve", "HTTP API and upload page for a model."),
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return [n for n, (mod, _) in COMMANDS.items() if importlib.util.find_spec(mod) is not None]

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in COMMANDS:
            return None
        module = importlib.import_module(COMMANDS[name][0])
        command: click.Command = getattr(module, "command")
        _envvars_from_flags(command, name)
        return command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(n, COMMANDS[n][1]) for n in self.list_commands(ctx)]
        with formatter.section("Commands"):
            formatter.write_dl(rows)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except CifarbenchError as exc:
            if ctx.find_root().params.get("traceback"):
                raise
            click.echo(f"error: {exc}", err=True)
            ctx.exit(int(exc.exit_status))
        except KeyboardInterrupt:
            if ctx.find_root().params.get("traceback"):
                raise
            click.echo("interrupted", err=True)
            ctx.exit(int(ExitStatus.INTERRUPTED))
        except _NO_ARGS_IS_HELP:  # shows the help, as asked for
            raise
        except click.exceptions.UsageError as exc:  # one line like every other error, not click's three
            if ctx.find_root().params.get("traceback"):
                raise
            msg = first_line(exc.format_message())
            where = f" (see '{exc.ctx.command_path} --help')" if exc.ctx is not None and "--help" not in msg else ""
            click.echo(f"error: {msg}{where}", err=True)
            ctx.exit(exc.exit_code)
        except (click.exceptions.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise
        except OSError as exc:  # disk full, permission denied on an output path, ...
            if ctx.find_root().params.get("traceback"):
                raise
            click.echo(f"error: {exc.strerror or exc}{f': {exc.filename}' if exc.filename else ''}", err=True)
            ctx.exit(int(ExitStatus.ERROR))
        except Exception as exc:  # a bug: one line by default, the traceback on request
            if ctx.find_root().params.get("traceback"):
                raise
            click.echo(f"error: unexpected {type(exc).__name__}: {first_line(str(exc))} "
                       "(run with --traceback for details and please report it)", err=True)
            ctx.exit(int(ExitStatus.ERROR))


import importlib.util  # noqa: E402  (used by LazyGroup.list_commands)


# click >= 8.2 raises this (a UsageError) for a command with no_args_is_help; older clicks print the help themselves.
_NO_ARGS_IS_HELP: type[Exception] | tuple[()] = getattr(click.exceptions, "NoArgsIsHelpError", ())


def _envvars_from_flags(command: click.Command, name: str) -> None:
    """CIFARBENCH_<COMMAND>_<LONG FLAG>, even where the Python parameter is named differently.

    Click's ``auto_envvar_prefix`` would use the parameter name (``--format`` stored as ``fmt``
    gives CIFARBENCH_CLASSIFY_FMT); the documented name follows the flag the user types.
    """
    for param in command.params:
        if isinstance(param, click.Option) and param.envvar is None:
            longs = [o for o in param.opts if o.startswith("--")]
            if longs:
                param.envvar = f"CIFARBENCH_{name}_{longs[0][2:]}".upper().replace("-", "_")


@click.group(
    cls=LazyGroup,
    context_settings={"auto_envvar_prefix": "CIFARBENCH", "help_option_names": ["-h", "--help"]},
    epilog="\b\nExit codes:\n" + EXIT_CODE_HELP,  # \b: Click keeps the table's lines as written
)
@click.version_option(__version__, "--version", prog_name="cifarbench")
@click.option("--traceback", is_flag=True, help="Show the full Python traceback on errors.")
def cli(traceback: bool) -> None:
    """Train, convert, classify and benchmark CIFAR-10 CNNs on Keras, TFLite and ONNX.

    Every option can also be set as CIFARBENCH_<COMMAND>_<OPTION>, e.g. CIFARBENCH_CLASSIFY_BACKEND=onnx.
    """


def main() -> None:
    cli(prog_name="cifarbench")


if __name__ == "__main__":  # pragma: no cover
    main()
