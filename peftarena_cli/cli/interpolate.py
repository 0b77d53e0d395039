"""`peftarena interpolate BASE FINETUNED --alphas 0:1:0.1 [--path dense|native] [--eval target,general]`."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from peftarena_cli.cli.common import DeviceOpt, DtypeOpt, OutputOpt, SeedOpt, info, warn

EVAL_KINDS = ("target", "general")


def _evaluators(kinds: list[str], target_task: str, general_suite: str, limit: Optional[int], seed: int,
                max_new_tokens: Optional[int] = None, protocol: Optional[str] = None):
    try:
        from peftarena_cli.evaluation import evaluate_general, evaluate_target
    except ImportError:
        from peftarena_cli.errors import MissingDependency

        raise MissingDependency("the evaluation engine (peftarena_cli.evaluation) is not available in this build",
                                hint="run interpolate without --eval, or update peftarena") from None
    out = {}
    kw = {"max_new_tokens": max_new_tokens, "protocol": protocol}
    if "target" in kinds:
        out["target"] = lambda m, t: evaluate_target(m, t, task=target_task, limit=limit, seed=seed, **kw)
    if "general" in kinds:
        out["general"] = lambda m, t: evaluate_general(m, t, suite=general_suite, limit=limit, seed=seed, **kw)
    return out


def interpolate_cmd(
    base: str = typer.Argument(..., metavar="BASE", help="Base model: alias (smollm2-135m), HF directory or .safetensors."),
    finetuned: str = typer.Argument(..., metavar="ADAPTER", help="PEFT adapter (directory or single .safetensors) or a full fine-tuned model."),
    alphas: str = typer.Option("0:1:0.1", "--alphas", help="Path positions: start:stop:step (stop included) or a comma list."),
    path: Optional[str] = typer.Option(None, "--path", help="dense (W0 + αΔW, any method) or native (the method's own structure). Default: native when the method has one, else dense with a warning."),
    generator_scale: str = typer.Option("linear", "--generator-scale", help="OFT native path: the generator is scaled by α (linear) or √α (sqrt)."),
    layerwise: Optional[str] = typer.Option(None, "--layerwise", help="OFT native path: sweep the layer-wise rewound adapter (safescale or minscale), see docs/rewind.md."),
    evals: Optional[str] = typer.Option(None, "--eval", help="Evaluate at each α: target, general or target,general."),
    target_task: str = typer.Option("arith", "--target-task", help="Target task for --eval target."),
    general_suite: str = typer.Option("builtin", "--general-suite", help="General suite for --eval general."),
    limit: Optional[int] = typer.Option(None, "--limit", min=1, help="At most this many examples per evaluation task (BBH: per subtask)."),
    max_new_tokens: Optional[int] = typer.Option(None, "--max-new-tokens", min=1, help="Override the protocol's generation length (recorded)."),
    protocol: Optional[str] = typer.Option(None, "--protocol", help="Evaluation protocol of real benchmarks for --eval: study (default) or lm-eval (docs/eval.md)."),
    stats: Optional[List[Path]] = typer.Option(None, "--stats", help="Second-moment stats from `peftarena csd --save-stats` (repeatable: shards are merged): adds CSD columns at each α."),
    save_checkpoints: Optional[Path] = typer.Option(None, "--save-checkpoints", help="Write each α's point here: alpha-A/ (a rewound adapter on the native path, a full model on the dense path)."),
    allow_extrapolate: bool = typer.Option(False, "--allow-extrapolate", help="Accept α outside [0, 1]."),
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
    import time

    from peftarena_cli.artifacts.atomic import check_output_parent
    from peftarena_cli.cli.common import Progress, emit_table, provenance_for
    from peftarena_cli.errors import UsageError
    from peftarena_cli.paths.alphas import parse_alphas
    from peftarena_cli.paths.native import generator_scale as _gs
    from peftarena_cli.paths.sweep import open_path_model, run_sweep, save_checkpoint

    grid = parse_alphas(alphas, allow_extrapolate)
    if generator_scale == "sqrt":
        for a in grid:
            _gs(a, "sqrt")
    _gs(0.0, generator_scale)
    kinds = [k.strip().lower() for k in (evals or "").split(",") if k.strip()]
    bad = [k for k in kinds if k not in EVAL_KINDS]
    if bad:
        raise UsageError(f"unknown --eval kind {bad[0]!r}", hint="use target, general or target,general")
    if limit is not None and limit < 1:
        raise UsageError("--limit must be at least 1")
    if output is not None and str(output) != "-":
        check_output_parent(output)
    from peftarena_cli.artifacts.guard import check_outputs

    outs: dict = {"-o": output, "--save-checkpoints": save_checkpoints}
    if output is not None and str(output) != "-":
        op = Path(output)
        for kind in kinds:
            outs[f"-o ({kind} samples)"] = op.with_name(f"{op.stem}.{kind}-samples.parquet")
        if stats:
            outs["-o (csd rows)"] = op.with_name(f"{op.stem}.csd.parquet")
    check_outputs(outs, [base, finetuned, *(stats or []), target_task if "target" in kinds else None,
                         general_suite if "general" in kinds else None],
                  tables=[k for k in outs if k.startswith("-o")])
    if save_checkpoints is not None:
        sp = Path(save_checkpoints)
        if sp.exists() and not sp.is_dir():
            from peftarena_cli.errors import OutputError

            raise OutputError(f"--save-checkpoints {str(sp)!r} is not a directory")
        if not sp.parent.is_dir():
            from peftarena_cli.errors import OutputError

            raise OutputError(f"the parent of --save-checkpoints {str(sp)!r} does not exist")
    if save_checkpoints is not None:
        _check_checkpoint_dir(Path(save_checkpoints))
    from peftarena_cli.evaluation.protocols import get_protocol

    get_protocol(protocol)  # an unknown name is a usage error listing the known ones, before any work
    evaluators = _evaluators(kinds, target_task, general_suite, limit, seed, max_new_tokens, protocol) if kinds else {}
    sets = None
    if stats:
        from peftarena_cli.activations.moments import merge_stats_files

        sets, stats_base = merge_stats_files(stats)

    import torch

    torch.manual_seed(seed)
    t_load = time.perf_counter()
    with Progress("forming ΔW") as bar:
        setup = open_path_model(base, finetuned, path=path, scale_mode=generator_scale, dtype=dtype,
                                device=device, layerwise=layerwise, callback=bar.callback, merge=bool(evaluators))
    for note in setup.notes:
        warn(note)
    csd = None
    if sets is not None:
        from peftarena_cli.activations.moments import weights_fingerprint
        from peftarena_cli.errors import IncompatibleInputs
        from peftarena_cli.paths.csd_path import path_csd

        if stats_base and stats_base != weights_fingerprint(setup.ref):
            raise IncompatibleInputs(f"the statistics were collected on another base model than {base!r}",
                                     hint="collect them again with this base: peftarena csd BASE ... --save-stats FILE")
        csd = path_csd(sets)
    info(f"loaded {base} + {finetuned} ({setup.method}, {setup.path} path) in {time.perf_counter() - t_load:.1f} s")
    on_alpha = None
    if save_checkpoints is not None:
        _claim_checkpoint_dir(Path(save_checkpoints), {
            "format": "peftarena-sweep/1", "base": f"{base}@{setup.ref.identity()}",
            "finetuned": f"{finetuned}@{setup.finetuned.identity()}", "path": setup.path,
            "generator_scale": setup.scale_mode, "layerwise": layerwise or ""})
        on_alpha = lambda a, pm: save_checkpoint(setup, a, save_checkpoints, overwrite=True)  # noqa: E731
    t0 = time.perf_counter()
    with Progress("interpolating") as bar:
        curve, samples = run_sweep(setup, grid, evaluators, csd=csd, on_alpha=on_alpha, callback=bar.callback)
    total = time.perf_counter() - t0
    info(f"{len(grid)} points in {total:.1f} s; setting α took {curve['set_seconds'].mean() * 1000:.1f} ms per point "
         f"(evaluation {curve['eval_seconds'].sum():.1f} s in all)")
    with provenance_for("interpolate", seed=seed, dtype=dtype, device=str(next(setup.path_model.model.parameters()).device)) as prov:
        prov.add_input("base", base, setup.ref.identity())
        prov.add_input("finetuned", finetuned, setup.finetuned.identity())
        prov.extra.update(path=setup.path, method=setup.method, generator_scale=setup.scale_mode,
                          layerwise=layerwise or "", alphas=grid, evals=kinds, target_task=target_task,
                          general_suite=general_suite, limit=limit, protocol=protocol or "study",
                          max_new_tokens=max_new_tokens)
        if output is not None and str(output) != "-":
            from peftarena_cli.artifacts.tables import write_table

            for kind, df in samples.items():
                p = Path(output)
                write_table(df, p.with_name(f"{p.stem}.{kind}-samples.parquet"), prov)
                info(f"wrote {len(df)} per-sample rows to {p.with_name(f'{p.stem}.{kind}-samples.parquet')}")
            if csd is not None and csd.rows:
                import pandas as pd

                cp = Path(output).with_name(f"{Path(output).stem}.csd.parquet")
                write_table(pd.DataFrame(csd.rows), cp, prov)
                info(f"wrote {len(csd.rows)} per-module CSD rows to {cp}")
        elif samples or csd is not None:
            warn("per-sample and per-module rows are written only with -o FILE (beside it)")
        emit_table(curve, output, prov, title="interpolation curve")


SWEEP_MANIFEST = "sweep.json"


def _check_checkpoint_dir(d: Path) -> None:
    """--save-checkpoints DIR: new, empty, or holding checkpoints of a peftarena sweep (cheap check
    before any work; the sweep's identity is compared once the models are open)."""
    if not d.is_dir():
        return
    entries = [e for e in d.iterdir() if not e.name.startswith(".tmp-")]
    if entries and not (d / SWEEP_MANIFEST).is_file():
        from peftarena_cli.errors import OutputError

        raise OutputError(f"--save-checkpoints {str(d)!r} already holds files that are not a peftarena sweep",
                          hint="choose a new or empty directory")


def _claim_checkpoint_dir(d: Path, manifest: dict) -> None:
    """Create DIR (or reuse it for the same sweep: same base, fine-tune, path and scaling) and record
    which sweep its alpha-*/ checkpoints belong to. A different sweep's checkpoints are refused,
    never mixed; leftovers of an interrupted write (.tmp-*) are removed."""
    import json

    from peftarena_cli.artifacts.atomic import atomic_write_text, clean_stale_tmp
    from peftarena_cli.errors import OutputError

    d.mkdir(exist_ok=True)
    m = d / SWEEP_MANIFEST
    if m.is_file():
        try:
            old = json.loads(m.read_text())
        except ValueError:
            old = {}
        diff = [k for k in manifest if old.get(k) != manifest[k]]
        if diff:
            raise OutputError(f"--save-checkpoints {str(d)!r} holds the checkpoints of another sweep "
                              f"(differs in: {', '.join(diff)})",
                              hint="choose a new directory, or remove the old checkpoints first")
    clean_stale_tmp(d)
    atomic_write_text(m, json.dumps(manifest, indent=2) + "\n")


def register(app: typer.Typer) -> None:
    app.command("interpolate")(interpolate_cmd)
