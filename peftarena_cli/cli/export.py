"""`peftarena export BASE FINETUNED -o OUTDIR [--alpha A] [--dtype D] [--max-shard-size S]`."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

from peftarena_cli.cli.common import info, warn


def export_cmd(
    base: str = typer.Argument(..., metavar="BASE", help="Base model: registry alias, HF directory (single or sharded) or hub id."),
    finetuned: str = typer.Argument(..., metavar="ADAPTER", help="PEFT adapter (directory or single .safetensors, rewound ones included) or a full fine-tuned model directory."),
    output: Path = typer.Option(..., "--output", "-o", help="The model directory to write (must not exist, or be empty)."),
    alpha: float = typer.Option(1.0, "--alpha", help="Path position to export (1 = the fine-tune, 0 = the base)."),
    path: Optional[str] = typer.Option(None, "--path", help="Path for α != 1: native (the method's own, default where it has one) or dense (W0 + αΔW)."),
    generator_scale: str = typer.Option("linear", "--generator-scale", help="OFT's native path: generator scaled by α (linear) or √α (sqrt)."),
    dtype: str = typer.Option("auto", "--dtype", help="Weights dtype: auto (each tensor keeps the base's), float32, bfloat16, float16."),
    max_shard_size: str = typer.Option("5G", "--max-shard-size", help="Largest weights file (5G, 500M; binary units); more than one gives model.safetensors.index.json."),
    device: str = typer.Option("cpu", "--device", help="Where the merged weights are formed: cpu, cuda, cuda:N or auto."),
    allow_extrapolate: bool = typer.Option(False, "--allow-extrapolate", help="Accept α outside [0, 1]."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace OUTDIR when it holds a previous export (and nothing else), once the new one is complete."),
) -> None:
    """Write a fine-tune merged into a plain Hugging Face model directory.

    Safetensors weights (sharded with an index past --max-shard-size), config.json,
    generation_config.json and the tokenizer files: AutoModelForCausalLM.from_pretrained(OUTDIR) and
    `vllm serve OUTDIR` load it without PEFT. With --alpha, the point α of the fine-tune's
    interpolation path is merged instead. OUTDIR/peftarena_export.json records the inputs,
    α, the path, the dtype and the library versions.

    Example:

        peftarena export smollm2-135m runs/lora/final -o lora-merged/

        peftarena export smollm2-135m runs/oft/final --alpha 0.6 --dtype bfloat16 -o oft-0.6/
    """
    from peftarena_cli.cli.common import Progress
    from peftarena_cli.interpolation.export import ExportConfig, export

    cfg = ExportConfig(base=base, finetuned=finetuned, output=str(output), alpha=alpha, path=path,
                       generator_scale=generator_scale, dtype=dtype, max_shard_size=max_shard_size, device=device,
                       allow_extrapolate=allow_extrapolate, overwrite=overwrite, argv=["peftarena", *sys.argv[1:]])
    with Progress("exporting") as bar:
        res = export(cfg, callback=bar.callback, log=info, warn=warn)
    what = f"the {res.method} fine-tune" + (f" at α = {res.alpha:g} ({res.path} path)" if res.path else "")
    info(f"wrote {what} as a {res.dtype} model to {res.output}: {res.tensors} tensors "
         f"({res.merged_modules} merged) in {len(res.shards)} file(s), {res.total_bytes / 2 ** 20:.1f} MiB, "
         f"{res.seconds:.1f} s")


def register(app: typer.Typer) -> None:
    app.command("export")(export_cmd)
