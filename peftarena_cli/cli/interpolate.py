"""`peftarena interpolate BASE FINETUNED --alphas 0:1:0.1 [--path dense|native] [--eval target,general]`."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from peftarena_cli.cli.common import ChatTemplateOpt, DeviceOpt, DtypeOpt, OutputOpt, SeedOpt, info, warn
from peftarena_cli.tasks import benchmarks  # defaults and help from the registry (light: no pandas)


def interpolate_cmd(
    base: str = typer.Argument(..., metavar="BASE", help="Base model: alias (smollm2-135m), HF directory or .safetensors."),
    finetuned: str = typer.Argument(..., metavar="ADAPTER", help="PEFT adapter (directory or single .safetensors) or a full fine-tuned model."),
    alphas: str = typer.Option("0:1:0.1", "--alphas", help="Path positions: start:stop:step (stop included) or a comma list."),
    path: Optional[str] = typer.Option(None, "--path", help="dense (W0 + αΔW, any method) or native (the method's own structure). Default: native when the method has one, else dense with a warning."),
    generator_scale: str = typer.Option("linear", "--generator-scale", help="OFT native path: the generator is scaled by α (linear) or √α (sqrt)."),
    layerwise: Optional[str] = typer.Option(None, "--layerwise", help="OFT native path: sweep the layer-wise rewound adapter (safescale or minscale), see docs/rewind.md."),
    evals: Optional[str] = typer.Option(None, "--eval", help="Evaluate at each α: target, general or target,general."),
    target_task: str = typer.Option(benchmarks.DEFAULT_TARGET, "--target-task", help="Target task for --eval target."),
    general_suite: str = typer.Option(benchmarks.DEFAULT_GENERAL, "--general-suite", help="General suite for --eval general."),
    limit: Optional[str] = typer.Option(None, "--limit", help=f"At most this many examples per evaluation task ({benchmarks.per_subtask_label()}: per subtask); per general part: {benchmarks.limit_example(bare=True)} (the bare N: the rest and the target)."),
    max_new_tokens: Optional[int] = typer.Option(None, "--max-new-tokens", min=1, help="Override the protocol's generation length (recorded)."),
    protocol: Optional[str] = typer.Option(None, "--protocol", help="Evaluation protocol of real benchmarks for --eval: study (default) or lm-eval (docs/eval.md)."),
    chat_template: ChatTemplateOpt = "auto",
    stats: Optional[List[Path]] = typer.Option(None, "--stats", help="Second-moment stats from `peftarena csd --save-stats` (repeatable: shards are merged): adds CSD columns at each α."),
    save_checkpoints: Optional[Path] = typer.Option(None, "--save-checkpoints", help="Write each α's point here: alpha-A/ (a rewound adapter on the native path, a full model on the dense path)."),
    allow_extrapolate: bool = typer.Option(False, "--allow-extrapolate", help="Accept α outside [0, 1]."),
    backend: str = typer.Option("hf", "--backend", help="Who generates the --eval completions: hf (the local path model) or openai (each α's point served behind an OpenAI-compatible server: --base-url, --served-model with {alpha})."),
    base_url: Optional[str] = typer.Option(None, "--base-url", help="--backend openai: the server's address, e.g. http://localhost:8000 (nothing is sent anywhere else)."),
    served_model: Optional[str] = typer.Option(None, "--served-model", help="--backend openai: the served name of each α's point, with {alpha} (e.g. 'lora-a{alpha}'; {alpha:.4f} as --save-checkpoints names them)."),
    concurrency: int = typer.Option(8, "--concurrency", min=1, help="--backend openai: requests in flight at once."),
    request_timeout: float = typer.Option(600.0, "--request-timeout", min=0.001, help="--backend openai: seconds one request may take before it is retried."),
    retries: int = typer.Option(3, "--retries", min=0, help="--backend openai: retries of a transient failure (refused, reset, timeout, 429, 5xx), with exponential backoff."),
    output: OutputOpt = None,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "float32",
    seed: SeedOpt = 0,
) -> None:
    """Move a fine-tune along its path from the base (α=0) to the fine-tune (α=1) and measure each point.

    One base model is loaded for the whole sweep; each α rescales the adapter in place (native path)
    or writes W0 + αΔW into the weights (dense path). The curve has one row per α (alpha, path,
    target, general, every summary metric, timings); with -o, per-sample rows are written beside it
    as <stem>.target-samples.parquet / <stem>.general-samples.parquet.

    Example:

        peftarena interpolate smollm2-135m runs/lora --alphas 0:1:0.2 --eval target,general --limit 50 -o curve.parquet

        peftarena interpolate smollm2-135m runs/oft --path native --generator-scale sqrt --alphas 0,0.5,1 -o oft.parquet
    """
    from peftarena_cli.artifacts.atomic import check_output_parent, is_stream
    from peftarena_cli.artifacts.guard import check_outputs
    from peftarena_cli.artifacts.tables import curve_samples_path
    from peftarena_cli.cli.common import Progress, emit_table, provenance_for
    from peftarena_cli.interpolation.interpolate import InterpolateConfig, check_interpolate, interpolate

    from peftarena_cli.evaluation.protocols import check_generation_options

    check_generation_options(max_new_tokens)  # bounded before anything is loaded
    kinds = [k.strip().lower() for k in (evals or "").split(",") if k.strip()]
    cfg = InterpolateConfig(
        base=base, finetuned=finetuned, alphas=alphas, path=path, generator_scale=generator_scale, layerwise=layerwise,
        evals=kinds, target_task=target_task, general_suite=general_suite, limit=limit, max_new_tokens=max_new_tokens,
        protocol=protocol, chat_template=chat_template, stats=[str(p) for p in stats or []],
        save_checkpoints=None if save_checkpoints is None else str(save_checkpoints),
        allow_extrapolate=allow_extrapolate, device=device, dtype=dtype, seed=seed, backend=backend,
        base_url=base_url, served_model=served_model, concurrency=concurrency, request_timeout=request_timeout,
        retries=retries)
    check_interpolate(cfg)
    to_file = output is not None and str(output) != "-"
    if to_file:
        check_output_parent(output)
    # the per-sample and CSD rows go beside -o: not beside /dev/null or a pipe, which is written into
    beside = to_file and not is_stream(output)
    outs: dict = {"-o": output, "--save-checkpoints": save_checkpoints}
    if beside:
        op = Path(output)
        for kind in kinds:
            outs[f"-o ({kind} samples)"] = curve_samples_path(op, kind)
        if stats:
            outs["-o (csd rows)"] = op.with_name(f"{op.stem}.csd.parquet")
    check_outputs(outs, [base, finetuned, *(stats or []), target_task if "target" in kinds else None,
                         general_suite if "general" in kinds else None],
                  tables=[k for k in outs if k.startswith("-o")])

    from peftarena_cli.evaluation.distributed import mark_writer

    mark_writer()  # under torchrun only rank 0 writes (--save-checkpoints included), from the start
    res = interpolate(cfg, progress=Progress, log=info, warn=warn)
    curve = res.curve
    info(f"{len(res.grid)} points in {res.sweep_seconds:.1f} s; setting α took {curve['set_seconds'].mean() * 1000:.1f} ms "
         f"per point (evaluation {curve['eval_seconds'].sum():.1f} s in all)")
    with provenance_for("interpolate", seed=seed, dtype=dtype, device=res.device) as prov:
        prov.add_input("base", base, res.base_identity)
        prov.add_input("finetuned", finetuned, res.finetuned_identity)
        prov.extra.update(path=res.path, method=res.method, generator_scale=res.scale_mode,
                          layerwise=layerwise or "", alphas=res.grid, evals=kinds, target_task=target_task,
                          general_suite=general_suite, limit=limit, protocol=protocol or "study",
                          chat_template=cfg.chat_template,
                          max_new_tokens=max_new_tokens)
        if res.served:  # host, name template, server version; the command line without URL credentials
            from peftarena_cli.evaluation.openai_backend import strip_credentials

            prov.extra.update(backend="openai", served=res.served)
            prov.argv = [strip_credentials(a) for a in prov.argv]
        if beside:
            from peftarena_cli.artifacts.tables import write_table

            for kind, df in res.samples.items():
                q = write_table(df, curve_samples_path(output, kind), prov)
                info(f"wrote {len(df)} per-sample rows to {q}")
            if res.csd_rows:
                import pandas as pd

                cp = Path(output).with_name(f"{Path(output).stem}.csd.parquet")
                write_table(pd.DataFrame(res.csd_rows), cp, prov)
                info(f"wrote {len(res.csd_rows)} per-module CSD rows to {cp}")
        elif res.samples or stats:
            warn("per-sample and per-module rows are written only with -o FILE (beside it)")
        emit_table(curve, output, prov, title="interpolation curve")


def register(app: typer.Typer) -> None:
    app.command("interpolate")(interpolate_cmd)
