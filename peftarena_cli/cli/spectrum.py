"""`peftarena spectrum BASE FINETUNED`: weight-space retention/energy profiles per linear module."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from peftarena_cli.cli.common import DeviceOpt, ModulesOpt, OutputOpt, deprecated_short


MAX_LAYERS = 100_000  # a range is expanded into a set: bound it before it fills memory


def parse_layers(values: list[str] | None) -> list[int] | None:
    """``18``, ``0-5``, ``3,7`` (repeatable) -> sorted layer numbers."""
    from peftarena_cli.errors import UsageError

    out: set[int] = set()
    for v in values or []:
        for part in v.split(","):
            part = part.strip()
            if not part:
                continue
            try:
                if "-" in part[1:]:
                    a, b = part.split("-", 1)
                    lo, hi = int(a), int(b)
                    if hi < lo:
                        raise ValueError
                    if hi - lo >= MAX_LAYERS:
                        raise UsageError(f"--layers {v!r} spans more than {MAX_LAYERS} layers",
                                         hint="give the layer numbers of the model, e.g. 0-29")
                    out.update(range(lo, hi + 1))
                else:
                    out.add(int(part))
            except ValueError:
                raise UsageError(f"--layers {v!r}: expected layer numbers or ranges like 18, 0-5, 3,7") from None
    return sorted(out) or None


def spectrum_cmd(
    base: str = typer.Argument(..., metavar="BASE", help="Base model: HF directory, .safetensors/.st file, or alias (smollm2-135m)."),
    finetuned: str = typer.Argument(..., metavar="FINETUNED", help="PEFT adapter (directory or single .safetensors with embedded config) "
                                              "or a full fine-tuned model (directory or .safetensors)."),
    output: OutputOpt = None,
    summary: Optional[Path] = typer.Option(None, "--summary", help="Also write the per-module summary table here (Parquet)."),
    summary_short: Optional[Path] = typer.Option(None, "-s", hidden=True, help="Deprecated spelling of --summary."),
    table: str = typer.Option("index", "--table", help="Which table goes to -o/stdout: index (one row per module and singular index) or summary (one row per module)."),
    modules: ModulesOpt = None,
    layers: Optional[List[str]] = typer.Option(None, "--layers", "-l", help="Layers to analyse: 18, 0-5, 3,7 (repeatable). Default: all."),
    sva: Optional[bool] = typer.Option(None, "--sva/--no-sva", help="Singular-vector alignment |cos(v_i(W0), v_i(W1))|: default only for multiplicative methods (OFT, BOFT); --sva computes it for any method (one SVD of W1 per module)."),
    cache: bool = typer.Option(True, "--cache/--no-cache", help="Reuse/store the base SVD under $PEFTARENA_HOME/cache/svd (keyed by tensor identity)."),
    cache_dir: Optional[Path] = typer.Option(None, "--cache-dir", help="Keep the base-SVD cache here instead of $PEFTARENA_HOME/cache/svd (it holds about as many bytes as the base's analysed weights, docs/large-models.md)."),
    device: DeviceOpt = "auto",
) -> None:
    """Retention profile P_diag, update energy E_Δ, effective rank, fluctuation and alignment per module.

    W0 = U Σ Vᵀ per linear module (computed in float64, cached across adapters of the same base);
    P_diag(i) = u_iᵀ W1 v_i, ΔP(i) = |P_diag(i) − σ_i|, E_Δ(i) = ‖ΔW v_i‖, effective rank
    ‖ΔW‖_F²/‖ΔW‖₂². Low-rank adapters are never expanded to ΔW for the profiles. Columns and
    methods: docs/spectrum.md, docs/methods.md.

    Example:

        peftarena spectrum smollm2-135m adapter.st -o spectrum.parquet --summary summary.parquet

        peftarena spectrum base.st adapter.st --modules down_proj --layers 18 --table summary
    """
    import sys

    from peftarena_cli.artifacts.loading import pick_device
    from peftarena_cli.cli.common import Progress, emit_table, info, provenance_for
    from peftarena_cli.errors import UsageError
    from peftarena_cli.memory import peak_rss_mib
    from peftarena_cli.spectral.base_svd import BaseSvdCache
    from peftarena_cli.spectral.spectrum import compute_spectrum

    summary = deprecated_short(summary_short, "-s", "--summary", summary, None, "--suite")
    if table not in ("index", "summary"):
        raise UsageError(f"--table {table!r}: expected index or summary")
    if cache_dir is not None and not cache:
        raise UsageError("--cache-dir with --no-cache: pick one")
    if cache_dir is not None and cache_dir.exists() and not cache_dir.is_dir():
        from peftarena_cli.errors import OutputError

        raise OutputError(f"--cache-dir {str(cache_dir)!r} is not a directory")
    if summary is not None and output is not None and Path(summary).resolve() == Path(output).resolve():
        raise UsageError("--summary and -o name the same file", hint="give the summary its own path")
    if summary is not None:
        from peftarena_cli.artifacts.atomic import check_output_parent

        check_output_parent(summary)
    if output is not None and str(output) != "-":
        from peftarena_cli.artifacts.atomic import check_output_parent

        check_output_parent(output)
    from peftarena_cli.artifacts.guard import check_outputs

    check_outputs({"-o": output, "--summary": summary}, [base, finetuned], tables=("-o", "--summary"))
    dev = pick_device(device)
    with Progress("spectrum") as bar:
        res = compute_spectrum(base, finetuned, modules=modules, layers=parse_layers(layers),
                               device=dev, cache=BaseSvdCache(root=cache_dir, enabled=cache), sva=sva, callback=bar.callback)
    st = res.stats
    peak_mb = peak_rss_mib()
    forms = f"; form: {', '.join(st['forms'])}" if st["forms"] else ""
    info(f"{st['modules']} modules ({st['method']}{forms}) in {st['seconds']:.1f} s, "
         f"{st['modules_per_s']:.1f} modules/s on {dev}; base SVD cache {st['svd_cache_hits']} hits, "
         f"{st['svd_cache_misses']} misses; peak RSS {peak_mb:.0f} MiB")
    with provenance_for("spectrum", dtype="float32", device=dev) as prov:
        prov.add_input("base", base, st["base_identity"])
        prov.add_input("finetuned", finetuned, st["finetuned_identity"])
        prov.extra.update({"method": st["method"], "forms": st["forms"], "modules": st["modules"],
                           "svd_cache_hits": st["svd_cache_hits"], "seconds": round(st["seconds"], 3)})
        if summary is not None:
            from peftarena_cli.artifacts.tables import write_table

            prov.extra["table"] = "summary"
            write_table(res.summary_table, summary, prov)
            info(f"wrote {len(res.summary_table)} rows to {summary}")
        prov.extra["table"] = table
        df = res.index_table if table == "index" else res.summary_table
        emit_table(df, output, prov, title=f"spectrum ({table})")
    sys.stderr.flush()


def register(app: typer.Typer) -> None:
    app.command("spectrum")(spectrum_cmd)
