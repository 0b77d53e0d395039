"""`peftarena rewind ADAPTER (--alpha A | --curve curve.parquet --pick CRITERION) [--layerwise ...] -o OUT`."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from peftarena_cli.cli.common import info, warn


def rewind_cmd(
    finetuned: str = typer.Argument(..., metavar="ADAPTER", help="PEFT adapter (directory or single .safetensors) or a full fine-tuned model."),
    output: Path = typer.Option(..., "--output", "-o", help="Where to write: a directory (PEFT layout / HF model) or, for adapters, one .safetensors file."),
    alpha: Optional[float] = typer.Option(None, "--alpha", help="Path position to rewind to (0 = base, 1 = the fine-tune)."),
    curve: Optional[Path] = typer.Option(None, "--curve", help="A curve from `peftarena interpolate --eval target,general`; α is picked with --pick."),
    pick: str = typer.Option("keep-target:0.9", "--pick", help="How to pick α from --curve: keep-target:X, weighted:W, max-general, max-target (docs/rewind.md)."),
    layerwise: Optional[str] = typer.Option(None, "--layerwise", help="OFT only: equalise per-layer rotation strength first: safescale or minscale."),
    generator_scale: Optional[str] = typer.Option(None, "--generator-scale", help="OFT: generator scaled by α (linear) or √α (sqrt). Default: the curve's, else linear."),
    base: Optional[str] = typer.Option(None, "--base", help="Base model (needed for DoRA's magnitude and for full fine-tunes). Default: the adapter config's base_model_name_or_path."),
    allow_extrapolate: bool = typer.Option(False, "--allow-extrapolate", help="Accept α outside [0, 1]."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace OUT if it exists (only once the new one is complete)."),
) -> None:
    """Write the point α of a fine-tune's path as a new artifact of the same kind.

    An adapter becomes an adapter of the same PEFT type (native path) that loads with
    PeftModel.from_pretrained; a full fine-tune becomes a full checkpoint W0 + α(W1 − W0). The chosen
    α, the criterion and the reason are recorded in the output's safetensors metadata
    (key peftarena_rewind).

    Example:

        peftarena rewind runs/lora --alpha 0.6 -o lora-0.6/

        peftarena rewind runs/oft --layerwise minscale -o oft-minscale/

        peftarena rewind runs/oft --curve curve.parquet --pick keep-target:0.9 --layerwise safescale -o oft-rewound.safetensors
    """
    import math

    from peftarena_cli.errors import UsageError

    if alpha is None and curve is None and layerwise:
        alpha = 1.0  # layer-wise rewinding alone: equalise ρ_ℓ at the fine-tune's own scale
    if (alpha is None) == (curve is None):
        raise UsageError("give exactly one of --alpha A or --curve FILE", hint="e.g. --alpha 0.5, or --curve curve.parquet --pick weighted:0.5")
    if output.exists() and not overwrite:
        from peftarena_cli.errors import OutputError

        raise OutputError(f"{str(output)!r} already exists", hint="choose another path or pass --overwrite")
    if not (output.parent if str(output.parent) else Path(".")).is_dir():
        from peftarena_cli.errors import OutputError

        raise OutputError(f"output directory {str(output.parent)!r} does not exist (for {str(output)!r})")
    from peftarena_cli.artifacts.guard import check_outputs
    from peftarena_cli.paths.alphas import check_alphas

    check_outputs({"-o": output}, [finetuned, base, curve])
    record: dict = {}
    curve_prov: dict = {}
    if curve is not None:
        from peftarena_cli.artifacts.identity import path_identity
        from peftarena_cli.artifacts.tables import read_table
        from peftarena_cli.paths.criteria import pick_alpha

        df, prov = read_table(curve)
        curve_prov = prov
        chosen = pick_alpha(df, pick)
        alpha = chosen.alpha
        record.update(criterion=chosen.criterion, reason=chosen.reason, curve=f"{curve}@{path_identity(curve)}",
                      curve_target=chosen.target, curve_general=chosen.general)
        curve_path = str(df["path"].iloc[0]) if "path" in df.columns and len(df) else ""
        curve_gs = str(df["generator_scale"].iloc[0]) if "generator_scale" in df.columns and len(df) else ""
        if generator_scale is None and curve_gs in ("linear", "sqrt"):
            generator_scale = curve_gs
        record["curve_path"] = curve_path
        info(f"picked α = {alpha:g} ({chosen.criterion}): {chosen.reason}")
    if not math.isfinite(alpha):
        raise UsageError(f"alpha {alpha} is not a finite number")
    check_alphas([alpha], allow_extrapolate)
    generator_scale = generator_scale or "linear"

    from peftarena_cli.artifacts.weights import WeightSource, resolve_model
    from peftarena_cli.weights.finetuned import open_finetuned

    ft = open_finetuned(finetuned)
    _check_curve_source(curve_prov, curve, finetuned, ft.identity())
    if ft.kind == "full":
        if layerwise:
            raise UsageError("--layerwise applies to OFT adapters, not full fine-tunes")
        if base is None:
            raise UsageError("rewinding a full fine-tune needs the base model", hint="pass --base BASE")
        from peftarena_cli.cli.common import Progress
        from peftarena_cli.paths.rewind import rewind_full

        bref = resolve_model(base)
        record.update(alpha=alpha, method="full", path="dense", base=f"{base}@{bref.identity()}",
                      source=f"{finetuned}@{ft.identity()}")
        with Progress("rewinding") as bar:
            rewind_full(WeightSource.from_ref(bref), ft.source, alpha, output, copy_from=ft.ref.directory,
                        extra_metadata={"peftarena_rewind": record}, overwrite=overwrite, callback=bar.callback)
        info(f"wrote the full checkpoint at α = {alpha:g} to {output}")
        return

    from peftarena_cli.artifacts.adapters import save_adapter
    from peftarena_cli.paths.native import has_native_path, method_of
    from peftarena_cli.paths.rewind import rewind_adapter

    method = method_of(ft.config)
    if not has_native_path(ft.config):
        from peftarena_cli.errors import UnsupportedMethod

        raise UnsupportedMethod(f"{method} adapters cannot be rewound in their own format (no native path)",
                                hint="use `peftarena interpolate --path dense --save-checkpoints DIR` for a full-model checkpoint")
    if record.get("curve_path") == "dense" and method in ("oft", "dora"):
        warn(f"the curve was measured on the dense path; a rewound {method} adapter follows the native path, "
             "which differs between the end points")
    base_source = None
    if method == "dora" and alpha != 1.0:
        spec = base or ft.adapter.base_model_name
        if not spec:
            raise UsageError("rewinding a DoRA adapter needs the base model (m0 = ‖W0‖ per row)", hint="pass --base BASE")
        base_source = WeightSource.from_ref(resolve_model(spec))
    new, rinfo = rewind_adapter(ft.adapter, alpha, scale_mode=generator_scale, layerwise=layerwise, base_source=base_source)
    record.update(rinfo)
    record["source"] = f"{finetuned}@{ft.identity()}"
    save_adapter(new, output, extra_metadata={"peftarena_rewind": record}, overwrite=overwrite)
    if layerwise:
        scales = rinfo["layer_scales"]
        info(f"{layerwise}: target ρ* = {rinfo['rho_target']:.4g}; generator scale per layer: "
             + ", ".join(f"{k}:{v:.3f}" for k, v in scales.items()))
    info(f"wrote the {method} adapter at α = {alpha:g} to {output}")


def _check_curve_source(prov: dict, curve, finetuned: str, identity: str) -> None:
    """The curve's provenance names the fine-tune it was measured on; it must be this one."""
    src = (prov.get("inputs") or {}).get("finetuned") if isinstance(prov, dict) else None
    if not src or "@" not in str(src):
        return
    spec, _, ident = str(src).rpartition("@")
    if ident and ident != identity:
        from peftarena_cli.errors import IncompatibleInputs

        raise IncompatibleInputs(f"the curve {str(curve)!r} was measured on another fine-tune ({spec!r}) than {finetuned!r}",
                                 hint="pass the adapter the curve was measured on, or run `peftarena interpolate` on this one")


def register(app: typer.Typer) -> None:
    app.command("rewind")(rewind_cmd)
