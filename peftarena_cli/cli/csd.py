"""`peftarena csd BASE ADAPTER --general G --target T`: Capability-Conditioned Drift per module."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from peftarena_cli.cli.activation_options import (BatchOpt, ChatOpt, MaxLenOpt, ModulesOpt, NOpt, ShardOpt,
                                                  TextKeyOpt)
from peftarena_cli.cli.common import DeviceOpt, DtypeOpt, OutputOpt, SeedOpt


def csd_cmd(
    base: str = typer.Argument(..., metavar="BASE", help="Base model: HF directory, .safetensors file or alias (smollm2-135m)."),
    adapter: Optional[str] = typer.Argument(None, metavar="ADAPTER", help="PEFT adapter (directory or .safetensors) or full fine-tuned model. "
                                                      "Omit it to only collect statistics (--save-stats)."),
    general: Optional[str] = typer.Option(None, "--general", "-g", help="General prompt set: a file (.txt/.jsonl/.json/.parquet) or a built-in name (arith, general, ifeval, bbh, facts; NAME:N)."),
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
    import time

    from peftarena_cli.cli.common import Progress, emit_table, info, provenance_for
    from peftarena_cli.errors import IncompatibleInputs, UsageError

    parsed_shard = _parse_shard(shard)
    if stats and (general or target):
        raise UsageError("pass prompt sets (--general/--target) or --stats, not both")
    if not stats and not (general or target):
        raise UsageError("no prompt set given", hint="pass --general and/or --target (or --stats FILE)")
    if parsed_shard and not save_stats:
        raise UsageError("--shard writes partial statistics and needs --save-stats FILE",
                         hint="merge the shards later with --stats s1.st --stats s2.st ...")
    if parsed_shard and adapter:
        raise UsageError("a --shard run only collects statistics; drop ADAPTER",
                         hint="compute CSD after merging: peftarena csd BASE ADAPTER --stats s1.st --stats s2.st")
    if adapter is None and save_stats is None:
        raise UsageError("nothing to do without ADAPTER", hint="pass ADAPTER, or --save-stats FILE to only collect statistics")
    alphas = tuple(alpha) if alpha else (1.0,)
    from peftarena_cli.paths.alphas import check_alphas

    check_alphas(list(alphas), allow_extrapolate, option="--alpha")
    from peftarena_cli.artifacts.guard import check_outputs, check_weights_output

    check_weights_output(save_stats, "--save-stats")
    check_outputs({"-o": output, "--save-stats": save_stats}, [base, adapter, general, target, *(stats or [])],
                  tables=("-o",))

    from peftarena_cli.activations.capture import linear_module_names, select_modules
    from peftarena_cli.activations.csd import csd_table
    from peftarena_cli.activations.moments import merge_stats_files, save_stats as write_stats
    from peftarena_cli.artifacts.loading import pick_device
    from peftarena_cli.artifacts.weights import WeightSource, resolve_model

    dev = pick_device(device)
    ref = resolve_model(base)
    from peftarena_cli.activations.moments import weights_fingerprint

    base_id = weights_fingerprint(ref)
    ft = None
    if adapter is not None:
        from peftarena_cli.weights.deltas import iter_module_deltas
        from peftarena_cli.weights.finetuned import open_finetuned

        ft = open_finetuned(adapter)
        # fail on a mismatched base/adapter before any forward pass
        for _ in iter_module_deltas(WeightSource.from_ref(ref), ft):
            pass
    t0 = time.perf_counter()
    n_tokens = 0
    extra: dict = {"shard": shard, "alphas": list(alphas)}
    if stats:
        sets, stats_base = merge_stats_files(stats)
        if stats_base and stats_base != base_id:
            raise IncompatibleInputs(f"the statistics were collected on another base model than {base!r}",
                                     hint="collect them again with this base (--save-stats)")
        for role, m in sets.items():
            info(f"{role}: statistics for {len(m.module_group)} modules over {m.n(next(iter(m.module_group)))} tokens "
                 f"({m.n_prompts} prompts) from {len(stats)} file(s)")
        if modules:
            select_modules(list(next(iter(sets.values())).module_group), modules)
        extra["stats"] = [str(s) for s in stats]
    else:
        from peftarena_cli.activations.collect import collect_input_moments
        from peftarena_cli.artifacts.loading import load_model
        from peftarena_cli.cli.activation_options import prepare_prompts

        model, tok, _ = load_model(ref, dtype=dtype, device=dev)
        names = select_modules(linear_module_names(model), modules)
        sets = {}
        for role, spec in (("general", general), ("target", target)):
            if spec is None:
                continue
            ps, prompts, tokd = prepare_prompts(spec, tok, n=n, seed=seed, text_key=text_key, chat=chat,
                                                shard=parsed_shard, max_length=max_length)
            with Progress(f"csd {role}") as bar:
                m = collect_input_moments(model, tok, prompts, names, batch_size=batch_size, max_length=max_length,
                                          callback=bar.callback, tokenized=tokd)
            m.source = ps.source
            sets[role] = m
            n_tokens += tokd.n_tokens
            extra[role] = {"source": ps.source, "n_prompts": len(prompts), "n_tokens": tokd.n_tokens,
                           "n_truncated": tokd.n_truncated}
        del model
        dt = time.perf_counter() - t0
        info(f"collected input statistics of {len(names)} modules over {n_tokens} tokens in {dt:.1f} s "
             f"({n_tokens / max(dt, 1e-9):.0f} tokens/s, peak RSS {_peak():.0f} MiB)")
    if save_stats is not None:
        write_stats(save_stats, sets, base_id, extra={"base": base, "shard": shard})
        info(f"wrote statistics for {', '.join(sets)} to {save_stats}")
    if ft is None:
        return
    with Progress("csd modules") as bar:
        df = csd_table(WeightSource.from_ref(ref, device=dev), ft, sets, modules=_selected(sets, modules),
                       alphas=alphas, device=dev, callback=bar.callback)
    with provenance_for("csd", seed=seed, dtype=dtype, device=dev) as prov:
        prov.add_input("base", base, base_id)
        prov.add_input("adapter", adapter, ft.identity())
        prov.extra.update(extra)
        _summary(df, alphas)
        emit_table(df, output, prov, title="csd")


def _selected(sets, patterns):
    if not patterns:
        return None
    from peftarena_cli.activations.capture import select_modules

    return select_modules(list(next(iter(sets.values())).module_group), patterns)


def _parse_shard(shard):
    from peftarena_cli.activations.prompts import parse_shard

    return parse_shard(shard)


def _peak() -> float:
    from peftarena_cli.cli.activation_options import peak_rss_mib

    return peak_rss_mib()


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
