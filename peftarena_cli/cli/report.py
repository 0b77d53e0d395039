"""`peftarena report RESULTS... -o DIR`: the stability–plasticity plane, leaderboard and correlations."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from peftarena_cli.cli.common import info, warn


def report_cmd(
    results: List[str] = typer.Argument(
        ..., metavar="RESULTS...",
        help="Result directories or Parquet files: RUNS/ (one sub-directory per method, base in RUNS/base/), "
             "a method directory, a file (method = its directory's name), or NAME=PATH; or one `make sweep` "
             "folder (<method>/lr<LR>/s<SEED>/: the sweep report)."),
    output: Path = typer.Option(..., "--output", "-o", help="Report directory to write (replaced if it holds a previous report)."),
    base: str = typer.Option("base", "--base", help="Name of the method that is the base model."),
    modules: Optional[str] = typer.Option(None, "--modules", help="Regex on module names: aggregate geometry over these only (default: all), e.g. 'layers\\.18\\.mlp\\.down_proj'."),
    spectrum_module: Optional[str] = typer.Option(None, "--spectrum-module", help="Module for the spectrum plot (name or regex; default layer 18 down_proj, else the middle layer's)."),
    reference: Optional[Path] = typer.Option(None, "--reference", help="CSV of published points to draw beside the plane (regime,method,model,domain,target,general)."),
    reference_select: Optional[str] = typer.Option(None, "--reference-select", help="Which published points: KEY=VALUE[,...], default regime=sft,domain=math and the file's first model."),
) -> None:
    """Collect eval, spectrum, csd, act-geom and interpolation results into a report directory.

    Writes plane.png/.svg (target vs general score, base, Pareto frontier, interpolation paths),
    spectrum.png (when per-index spectrum tables are given), leaderboard.md/.parquet,
    correlations.parquet and pairwise.parquet (every pair of fine-tuned methods, paired on the same
    items, Holm-adjusted within each measure). A short summary goes to stderr. On a `make sweep`
    folder it writes the sweep report instead: seed means with seed-and-item intervals per (method,
    lr, steps), per-method frontiers, forgetting at matched gain and Holm-adjusted method pairs
    (docs/report.md, "Sweeps").

    Example:

        peftarena report runs/ -o report/

        peftarena report base=runs/base lora=runs/lora oft=runs/oft -o report/ --reference published.csv

        peftarena report runs/sweep -o runs/sweep/report
    """
    from peftarena_cli.cli.common import print_table, provenance_for
    from peftarena_cli.report.build import build_report, write_report
    from peftarena_cli.report.reference import parse_select

    select = parse_select(reference_select)
    from peftarena_cli.artifacts.guard import check_outputs_vs_inputs, check_writable

    # the report directory is replaced as a whole: it must be no input and hold none
    check_outputs_vs_inputs({"-o": output}, [*results, reference], inside_ok=True)
    check_writable(output)
    from peftarena_cli.report.sweep import sweep_root

    root = sweep_root(list(results))
    if root is not None:  # a `make sweep` folder: seed means, per-method frontiers, pairs (docs/report.md, "Sweeps")
        _sweep_report(root, output, base, modules=modules, spectrum_module=spectrum_module, reference=reference)
        return
    rep = build_report(list(results), base_name=base, modules=modules, spectrum_module=spectrum_module,
                       reference=str(reference) if reference else None, reference_select=select)
    with provenance_for("report") as prov:
        written = write_report(rep, output, prov, base_name=base)
    for note in rep.notes:
        warn(note)
    import sys

    from peftarena_cli.report.leaderboard import summary_frame

    print_table(summary_frame(rep.leaderboard), title="stability–plasticity leaderboard", file=sys.stderr)
    from peftarena_cli.report.pairwise import pairs_summary

    for line in pairs_summary(rep.pairs):
        info(f"method against method, {line}")
    info(f"report written to {output}/ ({', '.join(p.name for p in written)})")


def _sweep_report(root: Path, output: Path, base: str, **unused) -> None:
    from peftarena_cli.cli.common import print_table, provenance_for
    from peftarena_cli.errors import UsageError
    from peftarena_cli.report.sweep import build_sweep_report, write_sweep_report

    given = [f"--{k.replace('_', '-')}" for k, v in unused.items() if v is not None]
    if given:
        raise UsageError(f"{', '.join(given)} do(es) not apply to a sweep folder's report",
                         hint="a sweep report reads only the sweep's evals and manifests (docs/report.md, \"Sweeps\")")
    rep = build_sweep_report(root, base_name=base)
    with provenance_for("report") as prov:
        written = write_sweep_report(rep, output, prov)
    for note in rep.notes:
        warn(note)
    import sys

    from peftarena_cli.report.sweep import summary_frame

    print_table(summary_frame(rep.configs), title="sweep: seed means [95 % seed-and-item interval]", file=sys.stderr)
    info(f"sweep report written to {output}/ ({', '.join(p.name for p in written)})")


def register(app: typer.Typer) -> None:
    app.command("report")(report_cmd)
