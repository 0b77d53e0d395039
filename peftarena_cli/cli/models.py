"""`peftarena models list | pull NAME | path NAME`."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from peftarena_cli.cli.common import emit_table, info

app = typer.Typer(
    help="The model registry: aliases that work offline (smollm2-135m).\n\nExample:\n\n    peftarena models pull smollm2-135m",
    no_args_is_help=True,
)


@app.command("list")
def list_cmd(
    parquet: bool = typer.Option(False, "--parquet", help="Write the list as Parquet to stdout (or -o) instead of a readable table."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Write the list as Parquet here."),
) -> None:
    """List known model aliases, whether their package is installed, and whether they are cached.

    A readable table goes to stdout, also through a pipe (`peftarena models list | less`);
    --parquet or -o FILE give Parquet.

    Example: peftarena models list
    """
    import sys

    import pandas as pd

    from peftarena_cli import registry
    from peftarena_cli.cli.common import print_table

    df = pd.DataFrame(registry.list_models())
    if parquet or output is not None:
        if output is not None:
            from peftarena_cli.artifacts.guard import check_outputs

            check_outputs({"-o": output}, [], tables=("-o",))
        emit_table(df, output, title="models")
        return
    print_table(df, title="models", file=sys.stdout)


@app.command("pull")
def pull_cmd(
    name: str = typer.Argument(..., metavar="NAME", help="Model alias, e.g. smollm2-135m."),
    force: bool = typer.Option(False, "--force", help="Convert again even if cached."),
) -> None:
    """Convert an alias's model once into the cache (a safetensors model directory).

    Example: peftarena models pull smollm2-135m
    """
    import time

    from peftarena_cli import registry
    from peftarena_cli.artifacts.convert import convert

    registry.get_spec(name)
    if registry.is_cached(name) and not force:
        info(f"{name} is already cached")
    else:
        info(f"converting {name} (about 40 s on 2 CPU cores)...")
        t = time.perf_counter()
        convert(name)
        info(f"converted in {time.perf_counter() - t:.1f} s")
    typer.echo(str(registry.cache_dir(name)))


@app.command("path")
def path_cmd(name: str = typer.Argument(..., metavar="NAME", help="Model alias.")) -> None:
    """Print the cached directory of an alias (converting it first if needed).

    Example: peftarena spectrum "$(peftarena models path smollm2-135m)" adapter.st
    """
    from peftarena_cli.artifacts.convert import ensure_model

    typer.echo(str(ensure_model(name)))
