"""`peftarena csd BASE ADAPTER --general G --target T`: Capability-Conditioned Drift per module."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from peftarena_cli.cli.activation_options import (BatchOpt, ChatOpt, MaxLenOpt, MaxMemoryOpt, NOpt,
                                                  ShardOpt, TextKeyOpt, check_prompt_counts, parse_max_memory)
from peftarena_cli.cli.common import DeviceOpt, DtypeOpt, ModulesOpt, OutputOpt, SeedOpt
from peftarena_cli.tasks import benchmarks  # the help lists the built-in prompt sets (light: no pandas)


def csd_cmd(
    base: str = typer.Argument(..., metavar="BASE", help="Base model: HF directory, .safetensors file or alias (smollm2-135m)."),
    adapter: Optional[str] = typer.Argument(None, metavar="ADAPTER", help="PEFT adapter (directory or .safetensors) or full fine-tuned model. "
                                                      "Omit it to only collect statistics (--save-stats)."),
    general: Optional[str] = typer.Option(None, "--general", "-g", help="General prompt set: a file (.txt/.jsonl/.json/.parquet) "
                                       f"or a built-in name ({', '.join(benchmarks.prompt_sets())}; NAME:N)."),
    target: Optional[str] = typer.Option(None, "--target", "-t", help="Target prompt set (same forms as --general)."),
    stats: Optional[List[Path]] = typer.Option(None, "--stats", help="Reuse saved statistics instead of running the base model (repeatable: shards are merged)."),
    save_stats: Optional[Path] = typer.Option(None, "--save-stats", help="Write the collected (or merged) statistics here (safetensors)."),
    alpha: Optional[List[float]] = typer.Option(None, "--alpha", help="Interpolation points W0 + α ΔW (repeatable; default 1; within [0, 1])."),
    allow_extrapolate: bool = typer.Option(False, "--allow-extrapolate", help="Accept --alpha outside [0, 1]."),
    modules: ModulesOpt = None,
    n: NOpt = None,
    text_key: TextKeyOpt = None,
    chat: ChatOpt = False,
    max_length: MaxLenOpt = 512,
    batch_size: BatchOpt = 16,
    shard: ShardOpt = None,
    max_memory: MaxMemoryOpt = None,
    form: str = typer.Option("auto", "--form", help="Statistics behind CSD: stats (S = E[hhᵀ] per module input, reusable for any adapter and α), projected (r×r second moments of A·h for this low-rank adapter only: one pass, no S), or auto (stats when S fits one pass, else projected when every module is low-rank)."),
    output: OutputOpt = None,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "float32",
    seed: SeedOpt = 0,
) -> None:
    """CSD per linear module on a general and a target prompt set: csd_abs, csd_rel, csd_un and the ratio.

    Module inputs h come from the BASE model; S = E[h hᵀ] per module is collected once per (base,
    prompt set), can be saved with --save-stats and reused with --stats for any adapter or α
    without a forward pass. CSD_abs = tr(ΔW S ΔWᵀ) is exact over every token.

    Example:

        peftarena csd smollm2-135m adapter/ --general general --target arith -o csd.parquet

        peftarena csd smollm2-135m --general ifeval.jsonl --target arith --save-stats stats.st

        peftarena csd smollm2-135m other-adapter/ --stats stats.st --alpha 0.5 --alpha 1 -o csd.parquet

        peftarena csd smollm2-135m --target arith --shard 1/2 --save-stats s1.st

        peftarena csd smollm2-135m adapter/ --stats s1.st --stats s2.st   # after 2/2 as well
    """
    from peftarena_cli.activations.run import CsdConfig, run_csd
    from peftarena_cli.artifacts.guard import check_outputs, check_weights_output
    from peftarena_cli.cli.common import Progress, emit_table, info, provenance_for, warn
    from peftarena_cli.interpolation.alphas import check_alphas

    alphas = tuple(alpha) if alpha else (1.0,)
    cfg = CsdConfig(base=base, adapter=adapter, general=general, target=target, stats=list(stats or []),
                    keep_stats=save_stats is not None, alphas=alphas, modules=modules, n=n, text_key=text_key,
                    chat=chat, max_length=max_length, batch_size=batch_size, shard=shard, device=device,
                    dtype=dtype, seed=seed, max_memory=parse_max_memory(max_memory), form=form)
    cfg.validate()
    check_prompt_counts(n, [general, target])  # before the model is loaded or a prompt generated
    check_alphas(list(alphas), allow_extrapolate, option="--alpha")
    check_weights_output(save_stats, "--save-stats")
    check_outputs({"-o": output, "--save-stats": save_stats}, [base, adapter, general, target, *(stats or [])],
                  tables=("-o",))
    res = run_csd(cfg, progress=Progress, log=info, warn=warn)
    if save_stats is not None:
        from peftarena_cli.activations.moments import save_stats as write_stats

        write_stats(save_stats, res.stats, res.base_identity, extra={"base": base, "shard": shard})
        info(f"wrote statistics for {', '.join(res.stats)} to {save_stats}")
    if res.table is None:
        return
    with provenance_for("csd", seed=seed, dtype=dtype, device=res.device) as prov:
        prov.add_input("base", base, res.base_identity)
        prov.add_input("adapter", adapter, res.adapter_identity)
        prov.extra.update(res.extra)
        _summary(res.table, alphas)
        emit_table(res.table, output, prov, title="csd")


def _summary(df, alphas) -> None:
    from peftarena_cli.cli.common import info

    one = df[df["alpha"] == alphas[0]]
    parts = [f"{len(one)} modules"]
    for role in ("general", "target"):
        c = f"csd_abs_{role}"
        if c in one:
            parts.append(f"Σ csd_abs {role} = {one[c].sum():.4g}, mean csd_rel {role} = {one[f'csd_rel_{role}'].mean():.4g}")
    if "csd_abs_general" in one and "csd_abs_target" in one:
        parts.append(f"ratio G/T of Σ csd_abs = {one['csd_abs_general'].sum() / max(one['csd_abs_target'].sum(), 1e-300):.4g}")
    info("; ".join(parts))


def register(app: typer.Typer) -> None:
    app.command("csd")(csd_cmd)
