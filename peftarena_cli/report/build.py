"""Assemble a report directory: leaderboard, correlations, the plane and the spectrum figures.

:func:`build_report` computes everything in memory; :func:`write_report` writes it as one atomic
directory (an interrupted run leaves the previous report, or nothing, never half of one).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from peftarena_cli.errors import OutputError

# what a report directory holds (an arena report's files, then a sweep report's): anything else in an
# existing -o directory makes it not replaceable
REPORT_FILES = ("leaderboard.md", "leaderboard.parquet", "correlations.parquet", "points.parquet", "plane.png", "plane.svg",
                "spectrum.png", "path.parquet", "passk.png", "regimes.parquet", "pairwise.parquet",
                "sweep_runs.parquet", "sweep_frontiers.parquet", "sweep_matched_gain.parquet", "sweep_pairs.parquet",
                "sweep_paths.parquet", "sweep_screen.parquet")


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
    points: object = None  # DataFrame: every point of the plane (methods and curve points) with intervals
    statements: list = field(default_factory=list)  # significance and frontier sentences for the markdown
    path: object = None  # DataFrame: pass@k and general score per method and training step (trajectory.path_table)
    trajectories: dict = field(default_factory=dict)  # method -> DataFrame(step, target, general, ...) for the plane
    regimes: object = None  # DataFrame: SFT vs RLVR per training method (trajectory.regime_comparison)
    pairs: object = None  # DataFrame: every pair of fine-tuned methods, Holm-adjusted (pairwise.method_pairs)


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

    check_pattern(modules, "--modules")
    check_pattern(spectrum_module, "--spectrum-module")
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
    notes += list(lb.attrs.get("notes", []))
    raw_curves = {n: combine_curve(m.tables["curve"]) for n, m in methods.items() if "curve" in m.tables}
    notes += curve_mismatch_notes(methods, raw_curves, lb, base_name)
    curves = {n: with_endpoints(c, lb, n, base_name) for n, c in raw_curves.items()}
    points, statements = plane_points(methods, lb, curves, base_name)
    if len(points):
        on = dict(zip(points.loc[points["alpha"].isna(), "point"], points.loc[points["alpha"].isna(), "pareto"]))
        lb["pareto"] = [bool(on.get(n, False)) for n in lb["method"]]
    from peftarena_cli.report.trajectory import path_table, regime_comparison, trajectories

    infos = {r["method"]: {"regime": r["regime"], "train_method": r["train_method"]} for r in lb.to_dict("records")}
    path = path_table(methods, base_name, infos)
    regimes, rnotes = regime_comparison(methods, lb, base_name)
    notes += rnotes
    from peftarena_cli.report.pairwise import method_pairs
    from peftarena_cli.report.uncertainty import method_measures

    tuned = [n for n in lb["method"] if n != base_name]
    pairs = method_pairs({n: method_measures(methods[n]) for n in tuned}, tuned, held=lb.attrs.get("held_out"))
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
                  order=list(methods), points=points, statements=statements, path=path,
                  trajectories=trajectories(path, _base_point(lb, base_name)), regimes=regimes, pairs=pairs)


def check_pattern(pattern: str | None, option: str) -> None:
    """A regular expression option (``--modules``, ``--spectrum-module``) compiles, or it is a usage
    error naming the pattern (checked before any file is read)."""
    import re

    from peftarena_cli.errors import UsageError

    if pattern is None:
        return
    try:
        re.compile(pattern)
    except re.error as e:
        raise UsageError(f"{option} {pattern!r} is not a valid regular expression ({e})",
                         hint="escape special characters, e.g. 'layers\\.18\\.mlp' (docs/report.md)") from None


def _base_point(lb, base_name: str):
    """The base's (target, general) on the plane, or None when the leaderboard has no base row."""
    row = lb[lb["method"] == base_name] if "method" in lb else lb.iloc[0:0]
    if not len(row) or "target" not in row or "general" not in row:
        return None
    return float(row["target"].iloc[0]), float(row["general"].iloc[0])


POINT_COLUMNS = ["point", "method", "path", "alpha", "target", "general", "target_low", "target_high", "general_low",
                 "general_high", "target_gain", "target_gain_low", "target_gain_high", "target_gain_p", "target_gain_sig",
                 "forgetting", "forgetting_low", "forgetting_high", "forgetting_p", "forgetting_sig", "pareto"]


def curve_mismatch_notes(methods: dict, curves: dict, lb, base_name: str = "base") -> list[str]:
    """Notes for curves whose ends were not evaluated on the items of the base's / method's own
    evals (e.g. another --limit): their path does not start at the base or end at the method."""
    from peftarena_cli.report.uncertainty import curve_measures, method_measures, same_items

    notes = []
    lbi = lb.set_index("method")
    for name, curve in curves.items():
        cm = curve_measures(methods[name])
        for alpha, who in ((0.0, base_name), (1.0, name)):
            if who not in methods:
                continue
            own = method_measures(methods[who])
            checked = False
            for (path, a), ms in cm.items():
                if abs(a - alpha) > 1e-9:
                    continue
                for kind, meas in ms.items():
                    if kind in own:
                        checked = True
                        why = same_items(meas, own[kind])
                        if why:
                            notes.append(f"{name} curve: its α={alpha:g} {kind} evaluation is not on the items of "
                                         f"{who}'s eval ({why}); the path does not start at the base / end at the method")
            if checked or who not in lbi.index:
                continue
            rows = curve[curve["alpha"].astype(float) == alpha]
            for kind in ("target", "general"):
                if kind in rows.columns and len(rows):
                    v, ref = float(rows[kind].iloc[0]), float(lbi.loc[who, kind])
                    if np.isfinite(v) and np.isfinite(ref) and abs(v - ref) > 1e-6:
                        notes.append(f"{name} curve: its {kind} at α={alpha:g} is {v:.2f} but {who}'s eval says {ref:.2f} "
                                     "(a different --limit, seed or task?); the path does not start at the base / end at the method")
    return notes


def plane_points(methods: dict, lb, curves: dict, base_name: str = "base"):
    """Every point of the plane — each method and each interior curve point — with its intervals, its
    paired gain / forgetting against the base, and whether it is on the Pareto frontier of all points.
    Returns (DataFrame, statements) where statements are sentences for the markdown."""
    import pandas as pd

    from peftarena_cli.report.leaderboard import pareto_mask
    from peftarena_cli.report.uncertainty import compare, curve_measures, interval_of, method_measures

    from peftarena_cli.report.leaderboard import held_out_measures

    held = lb.attrs.get("held_out") or {}
    base_m = method_measures(methods[base_name]) if base_name in methods else {}
    rows, meas = [], {}
    for r in lb.to_dict("records"):
        rows.append({"point": r["method"], "method": r["method"], "path": None, "alpha": np.nan,
                     **{k: r.get(k, np.nan) for k in POINT_COLUMNS if k not in ("point", "method", "path", "alpha", "pareto")}})
        meas[r["method"]] = held_out_measures(method_measures(methods[r["method"]]), held.get(r["method"]))
    for name, curve in curves.items():
        cm = curve_measures(methods[name])
        multi = "path" in curve.columns and curve["path"].nunique() > 1
        for c in curve.to_dict("records"):
            a = float(c["alpha"])
            if not 0.0 < a < 1.0:
                continue
            path = c.get("path") if "path" in curve.columns else None
            label = f"{name} α={a:g}" + (f" ({path})" if multi else "")
            ms = cm.get((path, round(a, 6))) or cm.get((None, round(a, 6))) or {}
            meas[label] = ms
            row = {"point": label, "method": name, "path": path, "alpha": a}
            for kind in ("target", "general"):
                iv = interval_of(ms.get(kind))
                v = float(c.get(kind, np.nan))
                if not np.isfinite(v) and iv is not None:
                    v = iv.value
                row[kind] = v
                row[f"{kind}_low"], row[f"{kind}_high"] = (iv.low, iv.high) if iv is not None else (np.nan, np.nan)
            for col, x, y, sign in (("target_gain", ms.get("target"), base_m.get("target"), 1),
                                    ("forgetting", base_m.get("general"), ms.get("general"), 1)):
                res, _ = compare(x, y)
                bt = lb.loc[lb["is_base"], "target" if col == "target_gain" else "general"]
                if res is not None:
                    row.update({col: res.diff, f"{col}_low": res.low, f"{col}_high": res.high, f"{col}_p": res.p_value,
                                f"{col}_sig": res.significant})
                else:
                    base_v = float(bt.iloc[0]) if len(bt) else np.nan
                    row.update({col: (row["target"] - base_v) if col == "target_gain" else (base_v - row["general"]),
                                f"{col}_low": np.nan, f"{col}_high": np.nan, f"{col}_p": np.nan, f"{col}_sig": False})
            rows.append(row)
    pts = pd.DataFrame(rows, columns=[c for c in POINT_COLUMNS if c != "pareto"])
    pts["pareto"] = pareto_mask(pts["target"], pts["general"]) if len(pts) else []
    return pts, frontier_statements(pts, meas, base_name, held)


def frontier_statements(pts, meas: dict, base_name: str = "base", held: dict | None = None) -> list[str]:
    """Sentences: each fine-tune's gain and forgetting against the base in words, and for each pair of
    neighbours on the frontier whether they are distinguishable on either axis. ``held``: {point:
    {"salt", "half"}} of points scored on a held-out half; a neighbour pair with one is compared on
    those items on both sides."""
    from peftarena_cli.report.leaderboard import held_out_measures
    from peftarena_cli.report.uncertainty import _p, compare

    held = held or {}
    out = []
    base_row = pts[pts["alpha"].isna() & (pts["point"] == base_name)]
    for r in pts[pts["alpha"].isna() & (pts["point"] != base_name)].to_dict("records"):
        for col, what, kind in (("target_gain", "target gain", "target"), ("forgetting", "forgetting", "general")):
            if not np.isfinite(r.get(col, np.nan)):  # a score is missing: say whose, never print a NaN
                base_v = float(base_row[kind].iloc[0]) if len(base_row) else np.nan
                who = [w for w, v in ((r["point"], r.get(kind, np.nan)), (base_name, base_v)) if not np.isfinite(v)]
                out.append(f"{r['point']}'s {what} is unknown: no {kind} score for {' or '.join(who) or r['point']} "
                           "(no eval summary with one).")
                continue
            n = meas.get(r["point"], {}).get(kind)
            nn = f"n = {n.n_items} {kind} items" if n is not None else "unknown n"
            if not np.isfinite(r.get(f"{col}_low", np.nan)):
                out.append(f"{r['point']}'s {what} ({r[col]:+.2f}) has no paired interval ({nn}: per-sample rows missing, not shared with the base, or too few).")
                continue
            hw = (r[f"{col}_high"] - r[f"{col}_low"]) / 2
            if r[f"{col}_sig"]:
                out.append(f"{r['point']}'s {what} is {r[col]:+.2f} ± {hw:.2f} points, significant at 95% "
                           f"(p {_p(r[f'{col}_p'])}, {nn}).")
            else:
                out.append(f"{r['point']}'s {what} ({r[col]:+.2f} ± {hw:.2f}) is not distinguishable from zero at {nn} "
                           f"(p {_p(r[f'{col}_p'])}).")
    front = pts[pts["pareto"]].sort_values("general")
    names = list(front["point"])
    if len(names) >= 2:
        for a, b in zip(names[:-1], names[1:]):
            parts, dist = [], []
            ma, mb = meas.get(a, {}), meas.get(b, {})
            for rule in [held[p] for p in (a, b) if p in held]:
                ma, mb = held_out_measures(ma, rule), held_out_measures(mb, rule)
            for kind in ("target", "general"):
                res, note = compare(ma.get(kind), mb.get(kind), names=(a, b))
                if res is None or not np.isfinite(res.low):
                    parts.append(f"{kind}: no paired comparison")
                    continue
                parts.append(f"{kind} {res.diff:+.2f} ± {res.half_width:.2f} (p {_p(res.p_value)})")
                if res.significant:
                    dist.append(kind)
            verdict = ("distinguishable on " + " and ".join(dist)) if dist else "not distinguishable on either axis"
            out.append(f"Frontier neighbours {a} vs {b}: {verdict} ({'; '.join(parts)}).")
    elif len(names) == 1:
        out.append(f"The Pareto frontier has one point: {names[0]}.")
    return out


def _foreign_entries(d: Path) -> list[str]:
    """Names in ``d`` that a report does not write (hidden temporary entries aside)."""
    return sorted(p.name for p in d.iterdir() if not p.name.startswith(".") and p.name not in REPORT_FILES)


def _looks_like_report(d: Path) -> bool:
    """Empty, or a previous report and nothing else: replacing it loses nothing but that report."""
    entries = [p for p in d.iterdir() if not p.name.startswith(".")]
    return not entries or ((d / "leaderboard.parquet").exists() and not _foreign_entries(d))


def check_report_dir(out_dir: Path) -> None:
    """Refuse an existing ``out_dir`` that is not empty or a previous report (of either kind) and
    nothing else: the report replaces the directory as a whole."""
    if out_dir.exists() and (not out_dir.is_dir() or not _looks_like_report(out_dir)):
        extra = _foreign_entries(out_dir) if out_dir.is_dir() and (out_dir / "leaderboard.parquet").exists() else []
        what = (f"holds files a report does not write ({', '.join(map(repr, extra[:3]))}{', ...' if len(extra) > 3 else ''})"
                if extra else "is not a previous report directory")
        raise OutputError(f"{str(out_dir)!r} exists and {what}; refusing to replace it",
                          hint="choose a new directory name for the report")


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
    ``leaderboard.parquet`` and only files a report writes), so a typo can never wipe an unrelated
    directory, nor result tables kept beside a report.
    """
    from peftarena_cli.artifacts.atomic import atomic_dir, atomic_write_text
    from peftarena_cli.artifacts.tables import write_table
    from peftarena_cli.report.leaderboard import leaderboard_markdown
    from peftarena_cli.report.pairwise import pairs_markdown
    from peftarena_cli.report.plots import (REGIME_LINES, REGIME_MARKERS, close, plot_passk, plot_plane, plot_spectrum,
                                            point_styles, save_figure)
    from peftarena_cli.report.trajectory import regime_markdown

    out_dir = Path(out_dir)
    check_report_dir(out_dir)
    if provenance is not None:
        provenance.extra.setdefault("report_inputs", report.inputs)
    with atomic_dir(out_dir, overwrite=True) as tmp:
        write_table(report.leaderboard, tmp / "leaderboard.parquet", provenance)
        write_table(report.correlations, tmp / "correlations.parquet", provenance)
        if report.points is not None:
            write_table(report.points, tmp / "points.parquet", provenance)
        if report.path is not None and len(report.path):
            write_table(report.path, tmp / "path.parquet", provenance)
        if report.regimes is not None and len(report.regimes):
            write_table(report.regimes, tmp / "regimes.parquet", provenance)
        if report.pairs is not None and len(report.pairs):
            write_table(report.pairs, tmp / "pairwise.parquet", provenance)
        md = leaderboard_markdown(report.leaderboard, report.correlations, statements=report.statements,
                                  points=report.points,
                                  extra=pairs_markdown(report.pairs) + regime_markdown(report.regimes, report.path))
        if report.notes:
            md += "\n## Notes\n\n" + "\n".join(f"- {n}" for n in report.notes) + "\n"
        atomic_write_text(tmp / "leaderboard.md", md)
        colors, markers = point_styles(report.leaderboard, report.order or list(report.leaderboard["method"]), base_name)
        fig = plot_plane(report.leaderboard, report.curves, report.reference, report.reference_title,
                         base_name=base_name, colors=colors, points=report.points, markers=markers,
                         trajectories=report.trajectories)
        save_figure(fig, tmp / "plane.png")
        save_figure(fig, tmp / "plane.svg")
        close(fig)
        if report.spectrum_module:
            lines = {n: (REGIME_LINES.get("rlvr") if m == REGIME_MARKERS["rlvr"] else "-") for n, m in markers.items()}
            fig = plot_spectrum(report.spectra, report.spectrum_module, base_name=base_name, colors=colors,
                                linestyles=lines)
            save_figure(fig, tmp / "spectrum.png")
            close(fig)
        if report.path is not None and len(report.path):
            fig = plot_passk(report.path, colors=colors, markers=markers)
            save_figure(fig, tmp / "passk.png")
            close(fig)
        written = sorted(p.name for p in tmp.iterdir())
        _default_permissions(tmp)
    return [out_dir / n for n in written]
