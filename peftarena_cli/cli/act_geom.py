"""`peftarena act-geom BASE ADAPTER --prompts P`: activation geometry of base vs fine-tuned outputs."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from peftarena_cli.cli.activation_options import (BatchOpt, ChatOpt, MaxLenOpt, MaxMemoryOpt, NOpt,
                                                  ShardOpt, TextKeyOpt, check_prompt_counts, parse_max_memory)
from peftarena_cli.cli.common import DeviceOpt, DtypeOpt, ModulesOpt, OutputOpt, SeedOpt
from peftarena_cli.tasks import benchmarks  # the help lists the built-in prompt sets (light: no pandas)


def act_geom_cmd(
    base: Optional[str] = typer.Argument(None, metavar="BASE", help="Base model: HF directory or alias (smollm2-135m). Optional with --sums."),
    adapter: Optional[str] = typer.Argument(None, metavar="ADAPTER", help="PEFT adapter (directory or .safetensors) or full fine-tuned model. Optional with --sums."),
    prompts: Optional[List[str]] = typer.Option(None, "--prompts", "-p", help="Prompt set (repeatable): a file (.txt/.jsonl/.json/.parquet) "
                                       f"or a built-in name ({', '.join(benchmarks.prompt_sets())}; NAME:N)."),
    sums: Optional[List[Path]] = typer.Option(None, "--sums", help="Merge saved sums files (shards) and compute the metrics; no forward pass."),
    save_sums: Optional[Path] = typer.Option(None, "--save-sums", help="Write the streamed sums here (safetensors; needed with --shard)."),
    gram_sample: int = typer.Option(0, "--gram-sample", min=0, help="Also compute the study-style Gram distortion on N sampled tokens (column gram_distortion_sampled)."),
    accum_dtype: str = typer.Option("float64", "--accum-dtype", help="Dtype of the streamed sums: float64 (exact) or float32 (half the memory)."),
    modules: ModulesOpt = None,
    n: NOpt = None,
    text_key: TextKeyOpt = None,
    chat: ChatOpt = False,
    max_length: MaxLenOpt = 512,
    batch_size: BatchOpt = 8,
    shard: ShardOpt = None,
    max_memory: MaxMemoryOpt = None,
    output: OutputOpt = None,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "float32",
    seed: SeedOpt = 0,
) -> None:
    """Per module and prompt set: residuals, Procrustes, Gram distortion, CKA, cos drift, log-norm ratio, PCA distance.

    Both models (BASE, and BASE with ADAPTER through PEFT's forward) see the same tokens; every
    selected module is captured in one forward pass per model and batch, padding excluded. The
    metrics come from streamed feature-space sums (O(d²) memory per module, exact over every
    token); the sums add across --shard runs (merge with --sums).

    Example:

        peftarena act-geom smollm2-135m adapter/ --prompts arith --prompts general -o geom.parquet

        peftarena act-geom smollm2-135m adapter/ -p prompts.jsonl -m down_proj --gram-sample 1024

        peftarena act-geom smollm2-135m adapter/ -p arith --shard 1/2 --save-sums s1.st

        peftarena act-geom --sums s1.st --sums s2.st -o geom.parquet   # after 2/2 as well
    """
    from peftarena_cli.activations.run import ActGeomConfig, run_act_geom
    from peftarena_cli.artifacts.guard import check_outputs, check_weights_output
    from peftarena_cli.cli.common import Progress, emit_table, info, provenance_for, warn

    cfg = ActGeomConfig(base=base, adapter=adapter, prompts=list(prompts or []), sums=list(sums or []),
                        keep_sums=save_sums is not None, gram_sample=gram_sample, accum_dtype=accum_dtype,
                        modules=modules, n=n, text_key=text_key, chat=chat, max_length=max_length,
                        batch_size=batch_size, shard=shard, device=device, dtype=dtype, seed=seed,
                        max_memory=parse_max_memory(max_memory))
    cfg.validate()
    check_prompt_counts(n, prompts)  # before the models are loaded or a prompt generated
    check_weights_output(save_sums, "--save-sums")
    check_outputs({"-o": output, "--save-sums": save_sums}, [base, adapter, *(prompts or []), *(sums or [])],
                  tables=("-o",))
    res = run_act_geom(cfg, progress=Progress, log=info, warn=warn)
    if save_sums is not None:
        from peftarena_cli.activations.pair_sums import save_sums as write_sums

        write_sums(save_sums, res.sums, res.sums_meta)
        info(f"wrote {'merged ' if sums else ''}sums to {save_sums}")
    if res.table is None:  # a --shard run: partial sums only
        return
    with provenance_for("act-geom", seed=seed, dtype=dtype, device=res.device) as prov:
        for role, (spec, ident) in res.inputs.items():
            prov.add_input(role, spec, ident)
        prov.extra.update(res.extra)
        _summary(res.table)
        emit_table(res.table, output, prov, title="act-geom")


def _summary(df) -> None:
    from peftarena_cli.cli.common import info

    for sname, g in df.groupby("prompt_set", sort=False):
        info(f"{sname}: {len(g)} modules, {int(g['n_tokens'].iloc[0])} tokens; mean cka {g['cka'].mean():.4f}, "
             f"raw residual {g['raw_residual'].mean():.4f}, Procrustes {g['procrustes_residual'].mean():.4f}, "
             f"Gram distortion {g['gram_distortion'].mean():.4f}")


def register(app: typer.Typer) -> None:
    app.command("act-geom")(act_geom_cmd)
