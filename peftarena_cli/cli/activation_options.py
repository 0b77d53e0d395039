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


def peak_rss_mib() -> float:
    """Peak resident memory of this process, MiB."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def prepare_prompts(spec: str, tokenizer, *, n, seed, text_key, chat, shard, max_length):
    """Load a prompt set, apply the chat template if asked, take the shard, tokenise."""
    from peftarena_cli.activations.capture import tokenize
    from peftarena_cli.activations.prompts import load_prompts, shard_prompts
    from peftarena_cli.cli.common import warn
    from peftarena_cli.errors import DataError

    ps = load_prompts(spec, n=n, seed=seed, text_key=text_key)
    prompts = ps.prompts
    if chat:
        from peftarena_cli.tasks.prompting import render_prompt

        prompts = [render_prompt(tokenizer, p, instruction=None) for p in prompts]
    prompts = shard_prompts(prompts, shard)
    if not prompts:
        raise DataError(f"shard {shard[0]}/{shard[1]} of {spec!r} holds no prompts ({len(ps.prompts)} in the set)",
                        hint="use fewer shards than prompts")
    tok = tokenize(tokenizer, prompts, max_length)
    if tok.n_truncated:
        warn(f"{tok.n_truncated} of {len(prompts)} prompts in {spec!r} were longer than --max-length "
             f"{max_length} tokens and were truncated")
    return ps, prompts, tok
