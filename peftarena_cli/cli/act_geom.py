"""`peftarena act-geom BASE ADAPTER --prompts P`: activation geometry of base vs fine-tuned outputs."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from peftarena_cli.cli.activation_options import (BatchOpt, ChatOpt, MaxLenOpt, ModulesOpt, NOpt, ShardOpt,
                                                  TextKeyOpt)
from peftarena_cli.cli.common import DeviceOpt, DtypeOpt, OutputOpt, SeedOpt


def act_geom_cmd(
    base: Optional[str] = typer.Argument(None, metavar="BASE", help="Base model: HF directory or alias (smollm2-135m). Optional with --sums."),
    adapter: Optional[str] = typer.Argument(None, metavar="ADAPTER", help="PEFT adapter (directory or .safetensors) or full fine-tuned model. Optional with --sums."),
    prompts: Optional[List[str]] = typer.Option(None, "--prompts", "-p", help="Prompt set (repeatable): a file (.txt/.jsonl/.json/.parquet) or a built-in name (arith, general, ifeval, bbh, facts; NAME:N)."),
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
    import time

    from peftarena_cli.cli.common import Progress, emit_table, info, provenance_for
    from peftarena_cli.errors import IncompatibleInputs, UsageError

    from peftarena_cli.activations.prompts import parse_shard

    parsed_shard = parse_shard(shard)
    if accum_dtype not in ("float64", "float32"):
        raise UsageError(f"unknown --accum-dtype {accum_dtype!r}", hint="use float64 or float32")
    if sums and prompts:
        raise UsageError("pass --prompts or --sums, not both")
    if not sums and not prompts:
        raise UsageError("no prompt set given", hint="pass --prompts P (repeatable), or --sums FILE to merge shards")
    if not sums and (base is None or adapter is None):
        raise UsageError("BASE and ADAPTER are needed to run the models", hint="peftarena act-geom BASE ADAPTER --prompts P")
    if parsed_shard and not save_sums:
        raise UsageError("--shard writes partial sums and needs --save-sums FILE",
                         hint="merge the shards later with --sums s1.st --sums s2.st ...")
    if parsed_shard and gram_sample:
        raise UsageError("--gram-sample cannot be combined with --shard (the sample is not additive)")
    if sums and gram_sample:
        raise UsageError("--gram-sample needs the activations: run with --prompts")
    from peftarena_cli.artifacts.guard import check_outputs, check_weights_output

    check_weights_output(save_sums, "--save-sums")
    check_outputs({"-o": output, "--save-sums": save_sums}, [base, adapter, *(prompts or []), *(sums or [])],
                  tables=("-o",))

    from peftarena_cli.activations.pair_sums import merge_sums_files, save_sums as write_sums

    extra: dict = {"shard": shard, "accum_dtype": accum_dtype, "gram_sample": gram_sample}
    samples: dict = {}
    done_rows: list = []  # metric rows of prompt sets whose sums were already released
    inputs: dict = {}
    dev = None
    if sums:
        sets, metas = merge_sums_files(sums)
        meta = metas[0]
        for role, spec in (("base", base), ("adapter", adapter)):
            if spec is not None and meta.get(f"{role}_identity"):
                from peftarena_cli.artifacts.adapters import is_adapter_path, load_adapter
                from peftarena_cli.artifacts.weights import resolve_model

                from peftarena_cli.activations.moments import weights_fingerprint

                full = role == "base" or not is_adapter_path(spec)
                ident = weights_fingerprint(resolve_model(spec)) if full else load_adapter(spec).identity()
                if ident != meta[f"{role}_identity"]:
                    raise IncompatibleInputs(f"the sums were collected with another {role} than {spec!r}")
        for role in ("base", "adapter"):
            if meta.get(role):
                inputs[role] = (meta[role], meta.get(f"{role}_identity", ""))
        if modules:
            from peftarena_cli.activations.capture import select_modules

            keep = set(select_modules(list(next(iter(sets.values()))), modules))
            sets = {s: {m: v for m, v in mods.items() if m in keep} for s, mods in sets.items()}
        extra["sums"] = [str(s) for s in sums]
        info(f"merged {len(sums)} sums file(s): {', '.join(f'{s} ({next(iter(m.values())).n_tokens} tokens)' for s, m in sets.items())}")
    else:
        import torch

        from peftarena_cli.activations.capture import linear_module_names, select_modules
        from peftarena_cli.activations.collect import collect_pair_sums
        from peftarena_cli.artifacts.adapters import load_adapter
        from peftarena_cli.artifacts.loading import attach_adapter, load_model, pick_device
        from peftarena_cli.cli.activation_options import peak_rss_mib, prepare_prompts

        from peftarena_cli.activations.moments import weights_fingerprint
        from peftarena_cli.artifacts.adapters import is_adapter_path

        dev = pick_device(device)
        # ADAPTER is a PEFT adapter, or a full fine-tuned model (a second model run on the same batches)
        ad = load_adapter(adapter) if is_adapter_path(adapter) else None
        model, tok, ref = load_model(base, dtype=dtype, device=dev)
        model1 = None
        if ad is None:
            model1, _, ref1 = load_model(adapter, dtype=dtype, device=dev)
            _check_same_architecture(model, model1, base, adapter)
        names = select_modules(linear_module_names(model), modules)
        loaded = []
        for spec in prompts:  # load every prompt set before the long part
            loaded.append((spec, *prepare_prompts(spec, tok, n=n, seed=seed, text_key=text_key, chat=chat,
                                                  shard=parsed_shard, max_length=max_length)))
        pm = attach_adapter(model, ad) if ad is not None else model
        inputs = {"base": (base, weights_fingerprint(ref)),
                  "adapter": (adapter, ad.identity() if ad is not None else weights_fingerprint(ref1))}
        from peftarena_cli.activations.geometry import module_rows

        acc = torch.float64 if accum_dtype == "float64" else torch.float32
        sets = {}
        t0 = time.perf_counter()
        total = 0
        for spec, ps, plist, tokd in loaded:
            label = ps.name if ps.name not in sets else spec
            with Progress(f"act-geom {label}") as bar:
                s, sample = collect_pair_sums(pm, tok, plist, names, batch_size=batch_size, max_length=max_length,
                                              accum_dtype=acc, gram_sample=gram_sample, seed=seed,
                                              callback=bar.callback, tokenized=tokd, model1=model1)
            if save_sums is None and not parsed_shard:
                # metrics now, then the sums go: peak memory is one prompt set's sums, not all of them
                done_rows.extend(module_rows(label, s, sample))
                sets[label] = None
                del s, sample
            else:
                sets[label] = s
                if sample is not None:
                    samples[label] = sample
            total += tokd.n_tokens
            extra[f"set:{label}"] = {"source": ps.source, "n_prompts": len(plist), "n_tokens": tokd.n_tokens,
                                     "n_truncated": tokd.n_truncated}
        dt = time.perf_counter() - t0
        info(f"act-geom: {len(names)} modules × {len(sets)} prompt set(s), {total} tokens in {dt:.1f} s "
             f"({total / max(dt, 1e-9):.0f} tokens/s through both models, peak RSS {peak_rss_mib():.0f} MiB)")
        if save_sums is not None:
            write_sums(save_sums, sets, {"base": base, "adapter": adapter, "base_identity": inputs["base"][1],
                                         "adapter_identity": inputs["adapter"][1], "shard": shard})
            info(f"wrote sums to {save_sums}")
    if parsed_shard:
        return
    if save_sums is not None and sums:
        write_sums(save_sums, sets, {"merged_from": [str(s) for s in sums]})
        info(f"wrote merged sums to {save_sums}")
    df = metrics_table({k: v for k, v in sets.items() if v is not None}, samples, done_rows)
    with provenance_for("act-geom", seed=seed, dtype=dtype, device=dev) as prov:
        for role, (spec, ident) in inputs.items():
            prov.add_input(role, spec, ident)
        prov.extra.update(extra)
        _summary(df)
        emit_table(df, output, prov, title="act-geom")


def _check_same_architecture(m0, m1, base: str, finetuned: str) -> None:
    """A full fine-tune must have the base's linear modules with the same shapes."""
    import torch

    from peftarena_cli.errors import IncompatibleInputs

    lin1 = {n: tuple(m.weight.shape) for n, m in m1.named_modules() if isinstance(m, torch.nn.Linear)}
    for n, m in m0.named_modules():
        if isinstance(m, torch.nn.Linear):
            if n not in lin1:
                raise IncompatibleInputs(f"module {n!r} of the base {base!r} is missing from {finetuned!r}",
                                         hint="pass the fine-tune of this base (an adapter or a full model)")
            if lin1[n] != tuple(m.weight.shape):
                raise IncompatibleInputs(f"module {n!r}: shape {lin1[n]} in {finetuned!r}, {tuple(m.weight.shape)} in the base",
                                         hint="pass the fine-tune of this base (an adapter or a full model)")


def metrics_table(sets: dict, samples: dict | None = None, rows: list | None = None):
    """The act-geom table: one row per (prompt set, module); ``rows`` = rows already computed."""
    import pandas as pd

    from peftarena_cli.activations.geometry import module_rows

    rows = list(rows or [])
    for sname, mods in sets.items():
        rows.extend(module_rows(sname, mods, (samples or {}).get(sname)))
    return pd.DataFrame(rows)


def _summary(df) -> None:
    from peftarena_cli.cli.common import info

    for sname, g in df.groupby("prompt_set", sort=False):
        info(f"{sname}: {len(g)} modules, {int(g['n_tokens'].iloc[0])} tokens; mean cka {g['cka'].mean():.4f}, "
             f"raw residual {g['raw_residual'].mean():.4f}, Procrustes {g['procrustes_residual'].mean():.4f}, "
             f"Gram distortion {g['gram_distortion'].mean():.4f}")


def register(app: typer.Typer) -> None:
    app.command("act-geom")(act_geom_cmd)
