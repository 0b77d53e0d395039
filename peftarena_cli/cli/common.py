"""Shared CLI pieces: option types, stderr console, progress bars, the stdout rules for tables."""

from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Optional

import typer

STATE = {"quiet": False}

OutputOpt = Annotated[
    Optional[Path],
    typer.Option("--output", "-o", help="Write the Parquet table here (default: stdout when piped, a readable table on a terminal)."),
]
DeviceOpt = Annotated[str, typer.Option("--device", help="cpu, cuda, cuda:N or auto (CUDA when present).")]
DtypeOpt = Annotated[str, typer.Option("--dtype", help="Model dtype for forward passes: float32, bfloat16, float16.")]
SeedOpt = Annotated[int, typer.Option("--seed", help="Random seed.")]
ChatTemplateOpt = Annotated[str, typer.Option(
    "--chat-template", metavar="auto|on|off",
    help="Chat template around the prompts: auto follows the protocol (study: the study's own choice per benchmark, "
         "by the model's name where the study decides so; lm-eval: off; built-in suites: when the tokenizer has one); "
         "on / off force it. The summary's chat_template column records the choice (docs/eval.md).")]
# -m/--modules: one syntax in every command (artifacts.keys.select_modules; docs/design.md)
ModulesOpt = Annotated[Optional[list[str]], typer.Option(
    "--modules", "-m", help="Modules to analyse (repeatable or comma-separated): kinds (down_proj), full names "
                            "(model.layers.3.mlp.down_proj) or globs on names ('*.self_attn.*', "
                            "'model.layers.1[0-9].*'), together. Default: all.")]


def err_console():
    from rich.console import Console

    return Console(stderr=True, highlight=False, soft_wrap=True)


def info(msg: str) -> None:
    """A progress/log line on stderr (suppressed by --quiet)."""
    if not STATE["quiet"]:
        err_console().print(msg)


def warn(msg: str) -> None:
    """A warning on stderr (suppressed by --quiet, which leaves only errors)."""
    if not STATE["quiet"]:
        err_console().print(f"[yellow]warning:[/yellow] {msg}")


def deprecated_short(old_value, old: str, new: str, value, default, becomes: str):
    """A short flag that changed meaning: ``old`` (hidden, kept for one release) gives ``old_value``;
    it still works, with a deprecation warning naming ``new``. Both spellings at once: usage error."""
    if old_value is None:
        return value
    if value != default:
        from peftarena_cli.errors import UsageError

        raise UsageError(f"{old} and {new} both given", hint=f"use {new} only")
    warn(f"{old} is deprecated here: use {new} (from the next release {old} means {becomes}, as in every other command)")
    return old_value


def progress_enabled() -> bool:
    return not STATE["quiet"] and sys.stderr.isatty()


class Progress:
    """A rich progress bar on stderr, or nothing when stderr is not a terminal or with --quiet.

    Core functions take a plain ``callback(done, total, label)``; :meth:`callback` provides one.
    """

    def __init__(self, description: str):
        self.description = description
        self._bar = None
        self._task = None

    def __enter__(self):
        if progress_enabled():
            from rich.progress import BarColumn, MofNCompleteColumn, Progress as RP, TextColumn, TimeElapsedColumn, TimeRemainingColumn

            self._bar = RP(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                           TextColumn("{task.fields[label]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                           console=err_console(), transient=True)
            self._bar.__enter__()
            self._task = self._bar.add_task(self.description, total=None, label="")
        return self

    def callback(self, done: int, total: int | None = None, label: str = "") -> None:
        if self._bar is not None:
            self._bar.update(self._task, completed=done, total=total, label=label)

    def __exit__(self, *exc):
        if self._bar is not None:
            self._bar.__exit__(*exc)
        return False


def stdout_is_terminal() -> bool:
    return sys.stdout.isatty()


def emit_table(df, output: Optional[Path], provenance=None, title: str | None = None, max_rows: int = 30) -> None:
    """The stdout rules (docs/artifacts.md, "Where output goes"): ``-o`` writes a file; a pipe gets Parquet bytes; a terminal gets a table.

    ``df`` is a pandas DataFrame or a pyarrow Table."""
    from peftarena_cli.artifacts.atomic import writes_discarded
    from peftarena_cli.artifacts.tables import table_bytes, write_table

    if writes_discarded():  # a data-parallel rank other than 0: rank 0 emits the one copy
        return
    if output is not None and str(output) != "-":
        write_table(df, output, provenance)
        info(f"wrote {len(df)} rows to {output}")
        return
    if stdout_is_terminal() and str(output) != "-":
        print_table(df.to_pandas() if hasattr(df, "to_pandas") else df, title=title, max_rows=max_rows)
        info("[dim](stdout is a terminal: showing a table; pipe or pass -o FILE for Parquet)[/dim]")
        return
    data = table_bytes(df, provenance)
    try:
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())


def print_table(df, title: str | None = None, max_rows: int = 30, file=None) -> None:
    from rich.console import Console
    from rich.table import Table

    if file is sys.stderr and STATE["quiet"]:  # a table on stderr is a log line: --quiet drops it
        return
    t = Table(title=title, show_lines=False)
    for c in df.columns:
        t.add_column(str(c), overflow="fold", max_width=40)
    view = df.head(max_rows)
    for row in view.itertuples(index=False):
        t.add_row(*[_fmt(v) for v in row])
    Console(file=file or sys.stdout).print(t)
    if len(df) > max_rows:
        Console(file=file or sys.stdout).print(f"... {len(df) - max_rows} more rows ({len(df)} in all)")


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.6g}"
    s = str(v)
    return s if len(s) < 200 else s[:197] + "..."


def refuse_binary_to_terminal(what: str) -> None:
    """Commands whose only output is binary call this when no ``-o`` was given."""
    from peftarena_cli.errors import UsageError

    if stdout_is_terminal():
        raise UsageError(f"refusing to write {what} to a terminal", hint="pass -o FILE or redirect stdout")


@contextmanager
def provenance_for(command: str, seed=None, dtype=None, device=None):
    from peftarena_cli.artifacts.tables import Provenance

    world = os.environ.get("WORLD_SIZE", "1")  # a torchrun data-parallel run says so (evaluation/distributed.py)
    extra = {"world_size": int(world)} if world.isdigit() and int(world) > 1 else {}
    yield Provenance(command=command, seed=seed, dtype=dtype, device=device, extra=extra)
