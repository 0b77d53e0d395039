"""Interpolation paths in the sweep report (docs/report.md, "Sweeps: `make sweep` and its report").

A grid point ``SWEEP_RUNS/<method>/lr<LR>/s<SEED>/`` may hold an interpolation curve in ``interp/``
(``make sweep SWEEP_INTERP_POINTS=...``: ``interpolate --eval target`` and ``--eval general`` with the
sweep's eval limits, so on the base's items). :func:`read_paths` turns its per-item rows
(``interp/*.target-samples.parquet``, ``interp/*.general-samples.parquet``) into one
:class:`~peftarena_cli.report.sweep_stats.SweepPoint` per α (``source="path"``, one seed: the run's),
with the same per-item gain and forgetting rows as a grid point; α = 0 is the base (zero rows) and
α = 1 the run's own evals when the curve did not evaluate them. :func:`path_matched` reads
forgetting at the grid's matched gains off each path (its Pareto set over α, piecewise-linear
between the bracketing α, never extrapolated), labelled ``path``.

A path is one run's, so its intervals are item intervals (one seed). Core code: no printing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from peftarena_cli import stats
from peftarena_cli.artifacts.tables import CURVE_SAMPLE_KINDS, CURVE_SAMPLES_SUFFIX
from peftarena_cli.errors import IncompatibleInputs, PeftArenaError

INTERP_DIR = "interp"
KINDS = CURVE_SAMPLE_KINDS


@dataclass
class SweepPath:
    """The interpolation path of one grid run: ``points`` (one SweepPoint per α, α ascending) and
    ``scores`` {α: (target, general)} in points (percent)."""

    method: str
    lr: float
    seed: int
    run_key: str  # the run's configuration key (its grid point on the plane)
    label: str  # "lora path (lr=0.001, seed 1)"
    points: list = field(default_factory=list)
    scores: dict = field(default_factory=dict)
    evaluated: list = field(default_factory=list)  # the α the curve evaluated (the others are its ends)


def _alpha_measures(df) -> dict:
    """{α: {kind: Measure}} of interpolate's per-sample rows (one file, either kind)."""
    from peftarena_cli.report.uncertainty import split_measures

    out = {}
    for a, g in df.groupby(df["alpha"].astype(float).round(6), sort=True):
        out[float(a)] = split_measures(g)
    return out


def read_paths(runs, base_m: dict, order: dict, row, zero, config_key, dtype: str | None = None) -> tuple[list, list]:
    """(paths, notes) of the used grid runs that hold an interpolation curve in ``interp/``.

    ``base_m``: the base's {kind: Measure}; ``order``: {kind: item keys} of the base (the rows'
    order); ``row(a, b, order, names)``: per-item a − b in points on ``order`` (sweep._row);
    ``zero(m)``: ``m`` with zero numerators; ``config_key(run)``: the run's configuration key. A
    curve not on the base's items, or with one kind only, is left out with a note; so is one whose
    provenance records another model dtype than ``dtype`` (the sweep evals' one, None: unchecked).
    """
    from peftarena_cli.artifacts.tables import read_table
    from peftarena_cli.report.sweep_stats import SweepPoint

    paths, notes = [], []
    for r in runs:
        d = Path(r.path) / INTERP_DIR
        if not d.is_dir():
            continue
        files = {k: sorted(d.glob(f"*.{k}{CURVE_SAMPLES_SUFFIX}")) for k in KINDS}
        if not any(files.values()):
            continue
        where = f"{r.label} ({str(d)!r})"
        if not all(files.values()):
            missing = [k for k in KINDS if not files[k]]
            notes.append(f"interpolation path of {where} left out: no {' / '.join(missing)} per-item rows "
                         f"(interp/*.{missing[0]}-samples.parquet)")
            continue
        per_alpha: dict = {}
        odd_dtype = None
        try:
            for k in KINDS:
                for f in files[k]:
                    df, prov = read_table(f)
                    d = (prov or {}).get("dtype")
                    if dtype is not None and d and str(d) != dtype:
                        odd_dtype = str(d)
                    if "alpha" not in df.columns:
                        continue
                    for a, ms in _alpha_measures(df).items():
                        if k in ms:
                            per_alpha.setdefault(a, {})[k] = ms[k]
        except (PeftArenaError, OSError, ValueError) as e:
            notes.append(f"interpolation path of {where} left out: unreadable ({e})")
            continue
        if odd_dtype is not None:
            notes.append(f"interpolation path of {where} left out: interpolated in {odd_dtype}, the sweep's evals "
                         f"in {dtype} (interpolate with --dtype {dtype})")
            continue
        alphas = sorted(a for a, ms in per_alpha.items() if all(k in ms for k in KINDS))
        if not alphas:
            notes.append(f"interpolation path of {where} left out: no α evaluated on both target and general")
            continue
        label = f"{r.method} path (lr={r.lr:g}, seed {r.seed})"
        p = SweepPath(r.method, r.lr, r.seed, config_key(r), label, evaluated=list(alphas))
        rows = {}
        try:
            for a in alphas:
                ms = per_alpha[a]
                for k in KINDS:
                    stats.check_same_items(ms[k], base_m[k], (f"{label} α={a:g}", "base"))
                rows[a] = (row(ms["target"], base_m["target"], order["target"], (label, "base")),
                           row(base_m["general"], ms["general"], order["general"], ("base", label)),
                           100.0 * ms["target"].value(), 100.0 * ms["general"].value())
        except IncompatibleInputs as e:
            notes.append(f"interpolation path of {where} left out: not on the base's items ({e.message}); "
                         "interpolate with the sweep's SWEEP_TARGET_LIMIT / SWEEP_GENERAL_LIMIT")
            continue
        base_t, base_g = 100.0 * base_m["target"].value(), 100.0 * base_m["general"].value()
        if 0.0 not in rows:  # α = 0 is the base itself
            rows[0.0] = (np.zeros(len(order["target"])), np.zeros(len(order["general"])), base_t, base_g)
        if 1.0 not in rows:  # α = 1 is the run itself: its own evals
            rm = {k: _run_measure(r, k) for k in KINDS}
            rows[1.0] = (row(rm["target"], base_m["target"], order["target"], (r.label, "base")),
                         row(base_m["general"], rm["general"], order["general"], ("base", r.label)),
                         100.0 * rm["target"].value(), 100.0 * rm["general"].value())
        for a in sorted(rows):
            g, f, t, gen = rows[a]
            p.points.append(SweepPoint(f"α={a:g}", label, g, f, lr=r.lr, alpha=a, source="path",
                                       seeds=(r.seed,)))
            p.scores[a] = (t, gen)
        paths.append(p)
    return paths, notes


def _run_measure(run, kind: str):
    from peftarena_cli.report.uncertainty import split_measures

    df = run.tables[kind][0]
    return split_measures(df)[kind]


def path_matched(paths: list, levels) -> object:
    """Forgetting read off each path at the target gains ``levels`` (the grid's matched gains), in
    the columns of :func:`~peftarena_cli.report.sweep_stats.matched_gain_table` plus ``source`` =
    "path"; its ``method`` is the path's label."""
    import pandas as pd

    from peftarena_cli.report.sweep_stats import matched_gain_table

    frames = []
    for p in paths:
        t = matched_gain_table(p.points, levels=levels)
        t["source"] = "path"
        frames.append(t)
    return pd.concat(frames, ignore_index=True) if frames else None


def paths_frame(paths: list):
    """One row per path point: label, method, lr, seed, alpha, evaluated (False: an end taken from the
    base's or the run's evals), target, general, gain, forgetting (points), frontier (on the path's
    own Pareto set)."""
    import pandas as pd

    from peftarena_cli.report.sweep_stats import pareto_front

    rows = []
    for p in paths:
        fr = pareto_front([q.mean_gain for q in p.points], [q.mean_forgetting for q in p.points])
        for q, on in zip(p.points, fr):
            t, g = p.scores[q.alpha]
            rows.append({"path": p.label, "method": p.method, "lr": p.lr, "seed": p.seed, "alpha": q.alpha,
                         "evaluated": q.alpha in p.evaluated, "target": t, "general": g, "gain": q.mean_gain,
                         "forgetting": q.mean_forgetting, "frontier": bool(on)})
    return pd.DataFrame(rows, columns=["path", "method", "lr", "seed", "alpha", "evaluated", "target", "general",
                                       "gain", "forgetting", "frontier"])


def paths_markdown(paths: list) -> list[str]:
    """The "Interpolation paths" section of the sweep's leaderboard.md (none without paths)."""
    if not paths:
        return []
    out = ["", "## Interpolation paths", "",
           "Per grid run with a curve (`interp/`, one seed): each α's target gain and forgetting against the base, "
           "paired on the base's items; α = 0 is the base and α = 1 the run's own evals where the curve did not "
           "evaluate them (*). Forgetting at matched gain is read off the path too (rows labelled `path`).", "",
           "| path | α | gain | forgetting | on the path's frontier |", "|---|---|---|---|---|"]
    df = paths_frame(paths)
    for r in df.to_dict("records"):
        star = "" if r["evaluated"] else " *"
        out.append(f"| {r['path']} | {r['alpha']:g}{star} | {r['gain']:+.2f} | {r['forgetting']:+.2f} | "
                   f"{'✓' if r['frontier'] else ''} |")
    return out


def draw_paths(ax, paths: list, colors: dict) -> None:
    """Each path on the plane: a dashed line through its α in order, small markers, its α beside."""
    for p in paths:
        col = colors.get(p.method, "grey")
        al = sorted(p.scores)
        xs = [p.scores[a][1] for a in al]
        ys = [p.scores[a][0] for a in al]
        ax.plot(xs, ys, "--", color=col, lw=1.2, alpha=0.85, marker="s", ms=3.5, zorder=2,
                label=f"{p.label}")
        for a, x, y in zip(al, xs, ys):
            if 0.0 < a < 1.0:
                ax.annotate(f"α={a:g}", (x, y), xytext=(4, -9), textcoords="offset points", fontsize=6.5, color=col)
