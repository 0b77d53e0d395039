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


MAX_PROMPTS = 100_000
"""The most prompts per set (``--n``, a built-in ``NAME:N``), checked before anything is loaded or
generated: the study measures geometry on 256-1,000 prompts per set, and 100,000 prompts of 512
tokens are 51 M tokens, hours of forward passes and 400 MB of token ids for a small model."""


def check_prompt_counts(n: int | None, specs) -> None:
    """``--n`` and the ``NAME:N`` counts of built-in prompt sets within 1..:data:`MAX_PROMPTS`
    (a usage error naming the option or the spec)."""
    from pathlib import Path

    from peftarena_cli.errors import UsageError

    if n is not None and not 1 <= n <= MAX_PROMPTS:
        raise UsageError(f"--n {n} is outside 1..{MAX_PROMPTS}", hint=f"at most {MAX_PROMPTS} prompts per set")
    for spec in specs or []:
        if spec is None or Path(str(spec)).expanduser().exists():
            continue  # a file: --n takes its first N, nothing is generated
        _, _, count = str(spec).partition(":")
        if count.strip().isdigit() and int(count) > MAX_PROMPTS:
            raise UsageError(f"prompt set {spec!r}: {int(count)} prompts is more than {MAX_PROMPTS}",
                             hint=f"at most {MAX_PROMPTS} prompts per set, e.g. {str(spec).partition(':')[0]}:256")
