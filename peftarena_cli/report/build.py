"""Assemble a report directory: leaderboard, correlations, the plane and the spectrum figures.

:func:`build_report` computes everything in memory; :func:`write_report` writes it as one atomic
directory (an interrupted run leaves the previous report, or nothing, never half of one).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from peftarena_cli.errors import OutputError

REPORT_FILES = ("leaderboard.md", "leaderboard.parquet", "correlations.parquet", "plane.png", "plane.svg", "spectrum.png")


@dataclass
class Report:
    leaderboard: object  # DataFrame
    correlations: object  # DataFrame
    curves: dict = field(default_factory=dict)  # method -> curve DataFrame
    spectra: dict = field(default_factory=dict)  # method -> per-index spectrum DataFrame
    spectrum_module: str | None = None
    reference: object = None  # DataFrame or None
    reference_title: str | None = None
    notes: list = field(default_factory=list)  # human-readable remarks (what was missing)
    inputs: dict = field(default_factory=dict)  # method -> [files]
    order: list = field(default_factory=list)  # methods in the order found (fixes their colours)


def combine_curve(curve):
    """One row per (path, α): curve files of one method that evaluated different things at the same
    points (e.g. `interpolate --eval target` and `--eval general` with different --limit) are joined,
    taking each column's first non-missing value."""
    keys = [k for k in ("path", "alpha") if k in curve.columns]
    if curve.duplicated(keys).any():
        curve = curve.groupby(keys, sort=True, dropna=False).first().reset_index()
    return curve


def with_endpoints(curve, leaderboard, method: str, base_name: str = "base"):
    """A curve with its ends: the base's scores at α = 0 and the method's at α = 1 when the curve
    has no such row (so a sweep over interior α only still starts at the base and ends at the method)."""
    import pandas as pd

    rows = []
    lb = leaderboard.set_index("method")
    paths = curve["path"].unique() if "path" in curve.columns else [None]
    for path in paths:
        c = curve if path is None else curve[curve["path"] == path]
        for a, who in ((0.0, base_name), (1.0, method)):
            if who in lb.index and not (c["alpha"].astype(float) == a).any():
                row = {"alpha": a, "target": float(lb.loc[who, "target"]), "general": float(lb.loc[who, "general"])}
                if path is not None:
                    row["path"] = path
                rows.append(row)
    if not rows:
        return curve
    return pd.concat([curve, pd.DataFrame(rows)], ignore_index=True).sort_values("alpha", kind="stable").reset_index(drop=True)


def build_report(specs: list[str], base_name: str = "base", modules: str | None = None,
                 spectrum_module: str | None = None, reference: str | None = None,
                 reference_select: dict | None = None) -> Report:
    from peftarena_cli.report.collect import collect_results
    from peftarena_cli.report.correlations import correlation_table
    from peftarena_cli.report.leaderboard import build_leaderboard
    from peftarena_cli.report.plots import pick_module
    from peftarena_cli.report.reference import load_reference

    ref_df, ref_title = (load_reference(reference, reference_select) if reference else (None, None))
    methods = collect_results(specs, base_name=base_name)
    lb = build_leaderboard(methods, base_name=base_name, modules=modules)
    notes = []
    if base_name not in methods:
        notes.append(f"no '{base_name}' results: target gain and forgetting are unknown (NaN)")
    for name, m in methods.items():
        if "eval_summary" not in m.tables:
            notes.append(f"{name}: no eval summary (no target/general score)")
    corr = correlation_table(lb)
    curves = {n: with_endpoints(combine_curve(m.tables["curve"]), lb, n, base_name) for n, m in methods.items() if "curve" in m.tables}
    spectra = {n: m.tables["spectrum_index"] for n, m in methods.items() if "spectrum_index" in m.tables}
    mod = None
    if spectra:
        mod = pick_module(spectra, spectrum_module)
        if mod is None:
            notes.append(f"spectrum: no module matching {spectrum_module!r} in every method's table; no spectrum plot"
                         if spectrum_module else "spectrum: the methods share no module; no spectrum plot")
    else:
        notes.append("no per-index spectrum tables: no spectrum plot")
    return Report(leaderboard=lb, correlations=corr, curves=curves, spectra=spectra, spectrum_module=mod,
                  reference=ref_df, reference_title=ref_title, notes=notes,
                  inputs={n: [str(f) for fs in m.files.values() for f in fs] for n, m in methods.items()},
                  order=list(methods))


def _looks_like_report(d: Path) -> bool:
    entries = [p for p in d.iterdir() if not p.name.startswith(".")]
    return not entries or (d / "leaderboard.parquet").exists()


def _default_permissions(d: Path) -> None:
    """Temp files are created 0600; give the report the usual umask-based permissions."""
    import os

    umask = os.umask(0)
    os.umask(umask)
    os.chmod(d, 0o777 & ~umask)
    for p in d.iterdir():
        os.chmod(p, 0o666 & ~umask)


def write_report(report: Report, out_dir: Path, provenance=None, base_name: str = "base") -> list[Path]:
    """Write the report files into ``out_dir`` (replaced as a whole). Returns the written paths.

    An existing ``out_dir`` is replaced only when it is empty or a previous report (it holds
    ``leaderboard.parquet``), so a typo can never wipe an unrelated directory.
    """
    from peftarena_cli.artifacts.atomic import atomic_dir, atomic_write_text
    from peftarena_cli.artifacts.tables import write_table
    from peftarena_cli.report.leaderboard import leaderboard_markdown
    from peftarena_cli.report.plots import close, method_colors, plot_plane, plot_spectrum, save_figure

    out_dir = Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or not _looks_like_report(out_dir)):
        raise OutputError(f"{str(out_dir)!r} exists and is not a previous report directory",
                          hint="choose a new directory name for the report")
    if provenance is not None:
        provenance.extra.setdefault("report_inputs", report.inputs)
    with atomic_dir(out_dir, overwrite=True) as tmp:
        write_table(report.leaderboard, tmp / "leaderboard.parquet", provenance)
        write_table(report.correlations, tmp / "correlations.parquet", provenance)
        md = leaderboard_markdown(report.leaderboard, report.correlations)
        if report.notes:
            md += "\n## Notes\n\n" + "\n".join(f"- {n}" for n in report.notes) + "\n"
        atomic_write_text(tmp / "leaderboard.md", md)
        colors = method_colors(report.order or list(report.leaderboard["method"]), base_name)
        fig = plot_plane(report.leaderboard, report.curves, report.reference, report.reference_title,
                         base_name=base_name, colors=colors)
        save_figure(fig, tmp / "plane.png")
        save_figure(fig, tmp / "plane.svg")
        close(fig)
        if report.spectrum_module:
            fig = plot_spectrum(report.spectra, report.spectrum_module, base_name=base_name, colors=colors)
            save_figure(fig, tmp / "spectrum.png")
            close(fig)
        written = sorted(p.name for p in tmp.iterdir())
        _default_permissions(tmp)
    return [out_dir / n for n in written]
