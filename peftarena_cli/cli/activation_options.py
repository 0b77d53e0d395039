"""Options and helpers shared by the activation commands (`csd`, `act-geom`)."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

BatchOpt = Annotated[int, typer.Option("--batch-size", "-b", min=1, help="Prompts per forward pass.")]
MaxLenOpt = Annotated[int, typer.Option("--max-length", min=1, help="Tokens per prompt; longer prompts are truncated and counted.")]
NOpt = Annotated[Optional[int], typer.Option("--n", min=1, help="Prompts per set: the size of a built-in suite (default 256) or the first N of a file.")]
TextKeyOpt = Annotated[Optional[str], typer.Option("--text-key", help="Record key holding the prompt in .jsonl/.json/.parquet files (default: auto-detect).")]
ChatOpt = Annotated[bool, typer.Option("--chat/--raw", help="Wrap each prompt in the tokenizer's chat template (as a user turn) or use the text as is.")]
ShardOpt = Annotated[Optional[str], typer.Option("--shard", help="K/N: process only prompts i with i mod N = K-1 and write partial sums (merge them later).")]

MaxMemoryOpt = Annotated[Optional[str], typer.Option(
    "--max-memory", help="Memory budget for the statistics, on top of the loaded model(s): 12G, 800M, 1.5T (binary "
                         "units). The modules are split into groups that fit, one pass over the prompts each; the "
                         "results are the same. Default: 70% of the available RAM (80% of the free GPU memory on "
                         "CUDA), measured once the model is loaded.")]


def parse_max_memory(text: str | None) -> int | None:
    """``--max-memory`` as bytes (a unit typo is a usage error, exit 2)."""
    if text is None:
        return None
    from peftarena_cli.activations.budget import parse_size

    return parse_size(text)
