"""`peftarena drift BASE FINETUNED [--alphas 1] [--sets target,general] [--limit N] -o drift.parquet`.

The measurement runs in the core (:func:`peftarena_cli.interpolation.drift_run.run_drift`); this module
parses options, checks the output, shows progress and the summary, and writes the table."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from peftarena_cli.cli.common import ChatTemplateOpt, DeviceOpt, DtypeOpt, OutputOpt, SeedOpt, info, warn
from peftarena_cli.tasks import benchmarks  # defaults from the registry (light: no pandas)

def drift_cmd(
    base: str = typer.Argument(..., metavar="BASE", help="Base model: alias (smollm2-135m), HF directory or .safetensors."),
    finetuned: str = typer.Argument(..., metavar="ADAPTER", help="PEFT adapter (directory or single .safetensors) or a full fine-tuned model."),
    alphas: str = typer.Option("1", "--alphas", help="Path positions to measure: start:stop:step or a comma list (1 = the fine-tune; 0 = the base, drift 0)."),
    sets: str = typer.Option("target,general", "--sets", help="Prompt sets: target, general or target,general."),
    target_task: str = typer.Option(benchmarks.DEFAULT_TARGET, "--target-task", help="Target task whose prompts (and references) are used."),
    general_suite: str = typer.Option(benchmarks.DEFAULT_GENERAL, "--general-suite", help="General suite whose prompts (and references) are used."),
    limit: Optional[int] = typer.Option(64, "--limit", help="Items per target task / general part (the eval's --limit semantics)."),
    max_new_tokens: int = typer.Option(32, "--max-new-tokens", help="Length of the base's greedy continuation (tokens)."),
    reference: bool = typer.Option(True, "--reference/--no-reference", help="Also teacher-force on items' text references (source = reference)."),
    path: Optional[str] = typer.Option(None, "--path", help="dense or native path for α < 1 (as interpolate). Default: native when the method has one."),
    batch_size: int = typer.Option(8, "--batch-size", help="Prompts per forward pass."),
    base_continuations: Optional[Path] = typer.Option(None, "--base-continuations", help="JSON file of the base's greedy continuations: read (checked against this base, these prompts and settings) when it exists, else written. The same file serves every fine-tune of one base (docs/drift.md)."),
    chat_template: ChatTemplateOpt = "auto",
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
    from peftarena_cli.artifacts.guard import check_outputs
    from peftarena_cli.cli.common import Progress, emit_table, provenance_for
    from peftarena_cli.interpolation.drift_run import DriftConfig, check_drift, run_drift

    cfg = DriftConfig(base=base, finetuned=finetuned, alphas=alphas, sets=sets, target_task=target_task,
                      general_suite=general_suite, limit=limit, max_new_tokens=max_new_tokens, reference=reference,
                      path=path, batch_size=batch_size, chat_template=chat_template, device=device, dtype=dtype, seed=seed,
                      base_continuations=str(base_continuations) if base_continuations is not None else None)
    _, chosen = check_drift(cfg)  # the α grid, --sets, --limit and the lengths: usage errors first
    # before any model is loaded: never onto an input (the adapter's weights, the base's config),
    # never a table under a weights/config name, never into a folder that takes no new files
    check_outputs({"-o": output}, [base, finetuned, target_task if "target" in chosen else None,
                                   general_suite if "general" in chosen else None], tables=("-o",))
    if base_continuations is not None and not base_continuations.expanduser().exists():
        # written after the measurement: never onto an input, never where no file can go
        check_outputs({"--base-continuations": base_continuations}, [base, finetuned, output])
    res = run_drift(cfg, progress=Progress, log=info, warn=warn)
    for r in res.summary.to_dict("records"):
        hw = (r["ci_high"] - r["ci_low"]) / 2
        info(f"α={r['alpha']:g} {r['prompt_set']} ({r['source']}): KL {r['kl']:.4g} ± {hw:.2g} nats/token (n = {r['n']})"
             + (f" [{r['note']}]" if r["note"] else ""))
    with provenance_for("drift", seed=seed, dtype=dtype, device=res.device) as prov:
        for role, (spec, ident) in res.inputs.items():
            prov.add_input(role, spec, ident)
        prov.extra.update(res.extra)
        emit_table(res.table, output, prov, title="output drift")
    if res.base_continuations is not None and not res.base_continuations_reused:
        import json

        from peftarena_cli.artifacts.atomic import atomic_write_text

        atomic_write_text(base_continuations.expanduser(), json.dumps(res.base_continuations) + "\n")
        info(f"the base's continuations of {res.n_prompts} prompts written to {base_continuations} "
             "(reused by the next drift runs on this base)")


def register(app: typer.Typer) -> None:
    app.command("drift")(drift_cmd)
