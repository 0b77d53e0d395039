"""`peftarena drift BASE FINETUNED [--alphas 1] [--sets target,general] [--limit N] -o drift.parquet`."""

from __future__ import annotations

from typing import Optional

import typer

from peftarena_cli.cli.common import DeviceOpt, DtypeOpt, OutputOpt, SeedOpt, info, warn

SETS = ("target", "general")


def drift_cmd(
    base: str = typer.Argument(..., metavar="BASE", help="Base model: alias (smollm2-135m), HF directory or .safetensors."),
    finetuned: str = typer.Argument(..., metavar="ADAPTER", help="PEFT adapter (directory or single .safetensors) or a full fine-tuned model."),
    alphas: str = typer.Option("1", "--alphas", help="Path positions to measure: start:stop:step or a comma list (1 = the fine-tune; 0 = the base, drift 0)."),
    sets: str = typer.Option("target,general", "--sets", help="Prompt sets: target, general or target,general."),
    target_task: str = typer.Option("arith", "--target-task", help="Target task whose prompts (and references) are used."),
    general_suite: str = typer.Option("builtin", "--general-suite", help="General suite whose prompts (and references) are used."),
    limit: Optional[int] = typer.Option(64, "--limit", help="Items per target task / general part (the eval's --limit semantics)."),
    max_new_tokens: int = typer.Option(32, "--max-new-tokens", help="Length of the base's greedy continuation (tokens)."),
    reference: bool = typer.Option(True, "--reference/--no-reference", help="Also teacher-force on items' text references (source = reference)."),
    path: Optional[str] = typer.Option(None, "--path", help="dense or native path for α < 1 (as interpolate). Default: native when the method has one."),
    batch_size: int = typer.Option(8, "--batch-size", help="Prompts per forward pass."),
    output: OutputOpt = None,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "float32",
    seed: SeedOpt = 0,
) -> None:
    """Output drift: mean per-token KL(base ‖ fine-tune), teacher-forced on the base's own greedy continuations.

    Forward passes only (no sampling, no scoring), so hundreds of prompts cost seconds to minutes on a
    CPU. One row per prompt × α × source (greedy continuation, or the item's reference text): alpha,
    prompt_set, task, id, source, n_tokens, kl. Prompts are the eval's items (same ids), so drift can be
    paired with accuracy. `peftarena report` puts the mean per prompt set beside CSD and act-geom.

    Example:

        peftarena drift smollm2-135m runs/lora/train/final --limit 64 -o runs/lora/drift.parquet

        peftarena drift smollm2-135m runs/lora/train/final --alphas 0,0.5,1 --sets general -o drift_path.parquet
    """
    import time

    from peftarena_cli.artifacts.guard import check_outputs
    from peftarena_cli.cli.common import Progress, emit_table, provenance_for
    from peftarena_cli.errors import UsageError
    from peftarena_cli.interpolation.alphas import parse_alphas

    grid = parse_alphas(alphas, False)
    chosen = [s.strip().lower() for s in sets.split(",") if s.strip()]
    bad = [s for s in chosen if s not in SETS]
    if bad or not chosen:
        raise UsageError(f"unknown --sets entry {bad[0] if bad else sets!r}", hint="use target, general or target,general")
    if limit is not None and limit < 1:
        raise UsageError("--limit must be at least 1")
    if max_new_tokens < 1 or batch_size < 1:
        raise UsageError("--max-new-tokens and --batch-size must be at least 1")
    from peftarena_cli.evaluation.protocols import check_generation_options

    check_generation_options(max_new_tokens)  # the continuation length, bounded like the evals'
    # before any model is loaded: never onto an input (the adapter's weights, the base's config),
    # never a table under a weights/config name, never into a folder that takes no new files
    check_outputs({"-o": output}, [base, finetuned, target_task if "target" in chosen else None,
                                   general_suite if "general" in chosen else None], tables=("-o",))
    from peftarena_cli.evaluation.api import load_general_tasks, load_target_tasks
    from peftarena_cli.evaluation.drift import drift_summary, measure_drift
    from peftarena_cli.interpolation.sweep import open_path_model

    prompt_sets = {}
    if "target" in chosen:
        prompt_sets["target"] = load_target_tasks(target_task, limit, seed)
    if "general" in chosen:
        prompt_sets["general"] = load_general_tasks(general_suite, limit, seed)
    import torch

    torch.manual_seed(seed)
    t0 = time.perf_counter()
    with Progress("forming ΔW") as bar:
        # merge=True: each α is merged into the weights (PEFT's merge), so forwards cost the base model's
        # (unmerged, DoRA re-forms its norms and OFT its rotations at every forward)
        setup = open_path_model(base, finetuned, path=path, dtype=dtype, device=device, callback=bar.callback, merge=True)
    for note in setup.notes:
        warn(note)
    info(f"loaded {base} + {finetuned} ({setup.method}, {setup.path} path) in {time.perf_counter() - t0:.1f} s")
    t1 = time.perf_counter()
    with Progress("drift") as bar:
        df = measure_drift(setup.path_model, setup.tokenizer, prompt_sets, grid, max_new_tokens=max_new_tokens,
                           batch_size=batch_size, reference=reference, callback=bar.callback)
    n_prompts = df.groupby(["prompt_set", "task", "id"]).ngroups if len(df) else 0
    info(f"{n_prompts} prompts × {len(grid)} α in {time.perf_counter() - t1:.1f} s")
    for r in drift_summary(df).to_dict("records"):
        hw = (r["ci_high"] - r["ci_low"]) / 2
        info(f"α={r['alpha']:g} {r['prompt_set']} ({r['source']}): KL {r['kl']:.4g} ± {hw:.2g} nats/token (n = {r['n']})"
             + (f" [{r['note']}]" if r["note"] else ""))
    with provenance_for("drift", seed=seed, dtype=dtype, device=str(next(setup.path_model.model.parameters()).device)) as prov:
        prov.add_input("base", base, setup.ref.identity())
        prov.add_input("finetuned", finetuned, setup.finetuned.identity())
        prov.extra.update(path=setup.path, method=setup.method, alphas=grid, sets=chosen, target_task=target_task,
                          general_suite=general_suite, limit=limit, max_new_tokens=max_new_tokens, reference=reference)
        emit_table(df, output, prov, title="output drift")


def register(app: typer.Typer) -> None:
    app.command("drift")(drift_cmd)
