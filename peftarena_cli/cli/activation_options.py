"""Options and helpers shared by the activation commands (`csd`, `act-geom`)."""

from __future__ import annotations

from typing import Annotated, List, Optional

import typer

ModulesOpt = Annotated[Optional[List[str]], typer.Option(
    "--modules", "-m", help="Glob on module names or kinds (repeatable): down_proj, '*.self_attn.*', "
                            "'model.layers.1[0-9].*'. Default: every linear module of the decoder layers.")]
BatchOpt = Annotated[int, typer.Option("--batch-size", "-b", min=1, help="Prompts per forward pass.")]
MaxLenOpt = Annotated[int, typer.Option("--max-length", min=1, help="Tokens per prompt; longer prompts are truncated and counted.")]
NOpt = Annotated[Optional[int], typer.Option("--n", min=1, help="Prompts per set: the size of a built-in suite (default 256) or the first N of a file.")]
TextKeyOpt = Annotated[Optional[str], typer.Option("--text-key", help="Record key holding the prompt in .jsonl/.json/.parquet files (default: auto-detect).")]
ChatOpt = Annotated[bool, typer.Option("--chat/--raw", help="Wrap each prompt in the tokenizer's chat template (as a user turn) or use the text as is.")]
ShardOpt = Annotated[Optional[str], typer.Option("--shard", help="K/N: process only prompts i with i mod N = K-1 and write partial sums (merge them later).")]

