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
    selection: str = typer.Option("split", "--selection", help="How the picked α is scored: split (pick on half the items, score on the other half), crossfit (2-fold cross-fitted score of the picking rule) or none (in-sample, labelled). Needs the per-sample tables interpolate writes beside the curve; without them the scores are in-sample, with a warning."),
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
    (key peftarena_rewind). With --curve, α is picked on one half of the items and its scores are
    reported on the other half (--selection), never on the items that picked it.

    Example:

        peftarena rewind runs/lora --alpha 0.6 -o lora-0.6/

        peftarena rewind runs/oft --layerwise minscale -o oft-minscale/

        peftarena rewind runs/oft --curve curve.parquet --pick keep-target:0.9 --layerwise safescale -o oft-rewound.safetensors
    """
    from peftarena_cli.cli.common import Progress
    from peftarena_cli.interpolation.rewind import RewindConfig, rewind

    cfg = RewindConfig(finetuned=finetuned, output=str(output), alpha=alpha, curve=None if curve is None else str(curve),
                       pick=pick, selection=selection, layerwise=layerwise, generator_scale=generator_scale, base=base,
                       allow_extrapolate=allow_extrapolate, overwrite=overwrite)
    with Progress("rewinding") as bar:
        res = rewind(cfg, callback=bar.callback, log=info, warn=warn)
    if res.is_full:
        info(f"wrote the full checkpoint at α = {res.alpha:g} to {res.output}")
    else:
        info(f"wrote the {res.method} adapter at α = {res.alpha:g} to {res.output}")


def register(app: typer.Typer) -> None:
    app.command("rewind")(rewind_cmd)
