"""The typer application: global options, command registration, and the one error table.

Each command lives in its own module under ``peftarena_cli/cli/`` and exposes ``register(app)``.
Modules import only typer and the standard library at top level so ``--help`` stays fast.
"""

from __future__ import annotations

import importlib
import os
import sys
from typing import Optional

import typer

from peftarena_cli import __version__
from peftarena_cli.cli.common import STATE

app = typer.Typer(
    name="peftarena",
    help=(
        "Stability–plasticity analysis of parameter-efficient fine-tuning.\n\n"
        "Tables go to stdout (Parquet when piped, a readable table on a terminal) or -o FILE;\n"
        "progress and logs go to stderr.\n\n"
        "Example:\n\n"
        "    peftarena spectrum smollm2-135m adapter.st > spectrum.parquet"
    ),
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)

# Command modules, in the order `--help` lists them. Each defines `register(app)`.
COMMAND_MODULES: list[str] = []


def _version(value: bool) -> None:
    if value:
        typer.echo(f"peftarena {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars or log lines on stderr."),
    version: Optional[bool] = typer.Option(None, "--version", callback=_version, is_eager=True, help="Show the version and exit."),
) -> None:
    STATE["quiet"] = quiet


def _register() -> None:
    from peftarena_cli.cli import models

    for name in COMMAND_MODULES:
        importlib.import_module(f"peftarena_cli.cli.{name}").register(app)
    app.add_typer(models.app, name="models")


_register()


def _debug() -> bool:
    return os.environ.get("PEFTARENA_DEBUG", "") not in ("", "0")


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the app and turn every expected error into one line + exit code.

    Usage errors are click's (exit 2); Ctrl-C is click's "Aborted!" (exit 1); core errors are
    ``PeftArenaError`` (exit 1, or 2 for :class:`~peftarena_cli.errors.UsageError`).
    """
    from peftarena_cli.errors import PeftArenaError

    command = typer.main.get_command(app)
    try:
        command.main(args=argv, prog_name="peftarena", standalone_mode=True)
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except PeftArenaError as e:
        if _debug():
            raise
        sys.stderr.write(f"error: {e.message}\n")
        if e.hint:
            sys.stderr.write(f"hint: {e.hint}\n")
        code = e.exit_code
    except BrokenPipeError:
        code = 0
    except Exception as e:  # unexpected: one line unless debugging
        if _debug():
            raise
        first = str(e).splitlines()[0] if str(e) else ""
        sys.stderr.write(f"error: internal error: {type(e).__name__}: {first}\n")
        sys.stderr.write("hint: rerun with PEFTARENA_DEBUG=1 for the traceback and report it\n")
        code = 1
    sys.exit(code)


if __name__ == "__main__":
    main()
