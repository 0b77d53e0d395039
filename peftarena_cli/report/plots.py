"""The report's figures, drawn with matplotlib's Agg backend (no display needed).

* :func:`plot_plane`: the stability–plasticity plane (general score on x, target score on y), one
  point per method, the base marked, the Pareto frontier, interpolation curves as paths with α
  labels, and optionally a second panel with published PEFT-Arena points.
* :func:`plot_spectrum`: retention drift and update-energy profiles per method for one module.

Both take data (DataFrames) and return a matplotlib Figure; :func:`save_figure` writes it atomically.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

BASE_COLOR = "black"


def _mpl():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def method_colors(names: list[str], base_name: str = "base") -> dict[str, tuple]:
    plt = _mpl()
    cmap = plt.get_cmap("tab10" if len(names) <= 11 else "tab20")
    out, k = {}, 0
    for n in names:
        if n == base_name:
            out[n] = BASE_COLOR
        else:
            out[n] = cmap(k % cmap.N)
            k += 1
    return out


REGIME_MARKERS = {"sft": "o", "rlvr": "^"}
REGIME_LINES = {"sft": "-", "rlvr": "--"}


def point_styles(leaderboard, order: list[str], base_name: str = "base") -> tuple[dict, dict]:
    """({point: colour}, {point: marker}): the colour follows the training method (``lora-sft`` and
    ``lora-rlvr`` share one), the marker the regime (circle SFT, triangle RLVR, star the base)."""
    lb = leaderboard.set_index("method") if "method" in leaderboard.columns else None
    fam = {}
    for n in order:
        tm = None
        if lb is not None and n in lb.index and "train_method" in lb.columns:
            tm = lb.loc[n, "train_method"]
        fam[n] = base_name if n == base_name else (str(tm) if tm else n)
    fams = list(dict.fromkeys(fam[n] for n in order))
    fcol = method_colors(fams, base_name)
    colors = {n: fcol[fam[n]] for n in order}
    markers = {}
    for n in order:
        reg = lb.loc[n, "regime"] if lb is not None and n in lb.index and "regime" in lb.columns else None
        markers[n] = "*" if n == base_name else REGIME_MARKERS.get(str(reg), "o")
    return colors, markers


# ---------------------------------------------------------------- label placement
def _offsets():
    """Candidate label offsets (points): close to the point first, then rings further out."""
    out = [(7, 6, "left", "bottom"), (7, -6, "left", "top"), (-7, 6, "right", "bottom"),
           (-7, -6, "right", "top"), (0, 10, "center", "bottom"), (0, -10, "center", "top")]
    for r in (22, 36, 52):
        for k in range(12):
            a = 2 * math.pi * k / 12 + (0.26 if r == 36 else 0.0)
            dx, dy = r * math.cos(a), r * math.sin(a)
            ha = "left" if dx > 3 else "right" if dx < -3 else "center"
            va = "bottom" if dy > 3 else "top" if dy < -3 else "center"
            out.append((dx, dy, ha, va))
    return out


_OFFSETS = _offsets()


def _overlap(a, b) -> float:
    w = min(a.x1, b.x1) - max(a.x0, b.x0)
    h = min(a.y1, b.y1) - max(a.y0, b.y0)
    return w * h if w > 0 and h > 0 else 0.0


def place_labels(ax, items, obstacles_xy=(), fontsize=9):
    """Put each (x, y, text, kwargs) label next to its point where it overlaps least with labels
    already placed, the markers in ``obstacles_xy`` and the axes border. Returns the Text objects."""
    from matplotlib.transforms import Bbox

    fig = ax.figure
    renderer = fig.canvas.get_renderer()
    placed: list = []
    ax_box = ax.get_window_extent(renderer)
    pts = ax.transData.transform(np.asarray(list(obstacles_xy), dtype=float).reshape(-1, 2)) if len(obstacles_xy) else np.zeros((0, 2))
    marker_boxes = [Bbox.from_extents(x - 5, y - 5, x + 5, y + 5) for x, y in pts]
    leg = ax.get_legend()
    if leg is not None:
        placed.append(leg.get_window_extent(renderer))
    texts = []
    for x, y, text, kw in items:
        best, best_cost = None, math.inf
        for k, (dx, dy, ha, va) in enumerate(_OFFSETS):
            arrow = dict(arrowstyle="-", lw=0.5, color="0.55", shrinkA=0, shrinkB=4) if k >= 6 else None
            t = ax.annotate(text, (x, y), xytext=(dx, dy), textcoords="offset points", ha=ha, va=va,
                            fontsize=kw.get("fontsize", fontsize), color=kw.get("color", "black"),
                            fontweight=kw.get("fontweight", "normal"), zorder=6, arrowprops=arrow)
            bb = t.get_window_extent(renderer).expanded(1.05, 1.1)
            cost = 0.5 * math.hypot(dx, dy) + sum(_overlap(bb, o) for o in placed) + sum(_overlap(bb, o) for o in marker_boxes)
            outside = bb.width * bb.height - _overlap(bb, ax_box)
            cost += 3 * outside
            if cost < best_cost:
                if best is not None:
                    best[0].remove()
                best, best_cost = (t, bb), cost
            else:
                t.remove()
            if cost <= 0.5 * 10:  # a free spot next to the point
                break
        placed.append(best[1])
        texts.append(best[0])
    return texts


# ---------------------------------------------------------------- the plane
def _frontier_line(t, g):
    """Points of the Pareto frontier sorted by general score (for a staircase-free polyline)."""
    from peftarena_cli.report.leaderboard import pareto_mask

    m = pareto_mask(t, g)
    xs, ys = np.asarray(g, float)[m], np.asarray(t, float)[m]
    order = np.argsort(xs)
    return xs[order], ys[order]


def _errorbars(ax, df, colors, curve: bool = False) -> None:
    """95 % interval bars on both axes for the rows of ``df`` that have them (NaN: no bar)."""
    need = ("target_low", "target_high", "general_low", "general_high")
    if df is None or not len(df) or not all(c in df.columns for c in need):
        return
    for r in df.to_dict("records"):
        x, y = float(r["general"]), float(r["target"])
        if not (np.isfinite(x) and np.isfinite(y)):
            continue
        xe = [[max(x - float(r["general_low"]), 0.0)], [max(float(r["general_high"]) - x, 0.0)]]
        ye = [[max(y - float(r["target_low"]), 0.0)], [max(float(r["target_high"]) - y, 0.0)]]
        xe = None if not np.all(np.isfinite(xe)) else xe
        ye = None if not np.all(np.isfinite(ye)) else ye
        if xe is None and ye is None:
            continue
        ax.errorbar([x], [y], xerr=xe, yerr=ye, fmt="none", ecolor=colors.get(r["method"], "gray"),
                    elinewidth=0.7 if curve else 1.0, capsize=1.5 if curve else 2.5, alpha=0.45 if curve else 0.7,
                    zorder=1.5 if curve else 4)


def _draw_plane(ax, points, colors, base_name, curves=None, title=None, label_points=True, all_points=None,
                measures=None, markers=None, trajectories=None):
    """points: DataFrame with method, target, general (base included); ``all_points`` (optional): every
    point of the plane with intervals (``build.plane_points``): error bars and the frontier over all of them."""
    ok = points[np.isfinite(points["target"].astype(float)) & np.isfinite(points["general"].astype(float))]
    obstacles = []
    labels = []
    # interpolation paths first (under the points)
    styles = ["--", ":", "-.", (0, (5, 2, 1, 2))]
    if curves:
        for name, curve in curves.items():
            color = colors.get(name, "gray")
            path_col = "path" if "path" in curve.columns else None
            groups = [(None, curve)] if path_col is None else list(curve.groupby(path_col, sort=True))
            for k, (path, c) in enumerate(groups):
                c = c.sort_values("alpha")
                c = c[np.isfinite(c["target"].astype(float)) & np.isfinite(c["general"].astype(float))]
                if c.empty:
                    continue
                lab = f"{name} path" + (f" ({path})" if path is not None else "")
                ax.plot(c["general"], c["target"], linestyle=styles[k % len(styles)], color=color, lw=1.3,
                        marker="o", ms=3.5, alpha=0.8, label=lab, zorder=2)
                alphas = c["alpha"].to_numpy(float)
                inner = [i for i, a in enumerate(alphas) if 0 < a < 1]
                if len(inner) > 4:  # label at most 4 interior points, evenly spread
                    inner = [inner[int(round(j))] for j in np.linspace(0, len(inner) - 1, 4)]
                for i in inner:
                    r = c.iloc[i]
                    obstacles.append((r["general"], r["target"]))
                    labels.append((r["general"], r["target"], f"α={alphas[i]:g}", {"fontsize": 7, "color": color}))
    for name, tr in (trajectories or {}).items():  # the path training took: checkpoints in step order
        color = colors.get(name, "gray")
        tr = tr.sort_values("step")
        tr = tr[np.isfinite(tr["target"].astype(float)) & np.isfinite(tr["general"].astype(float))]
        if len(tr) < 2:
            continue
        ax.plot(tr["general"], tr["target"], linestyle=(0, (1, 1.5)), color=color, lw=1.6, marker="s", ms=3.2,
                alpha=0.85, zorder=2, label=f"{name} training path (pass@1 sampled"
                + (", change from the base)" if "anchored" in tr and bool(tr["anchored"].iloc[0]) else ")"))
        last = tr.iloc[-1]
        labels.append((last["general"], last["target"], f"step {int(last['step'])}", {"fontsize": 7, "color": color}))
        obstacles += list(zip(tr["general"], tr["target"]))
    markers = markers or {}
    for r in ok.to_dict("records"):
        name = r["method"]
        is_base = name == base_name
        ax.scatter([r["general"]], [r["target"]], s=160 if is_base else 60,
                   marker="*" if is_base else markers.get(name, "o"),
                   color=colors.get(name, "gray"), edgecolor="black" if not is_base else "white",
                   linewidth=0.6, zorder=5, label=name)
        obstacles.append((r["general"], r["target"]))
    if all_points is not None and len(all_points):
        _errorbars(ax, all_points[all_points["alpha"].isna()], colors)
        _errorbars(ax, all_points[all_points["alpha"].notna()], colors, curve=True)
        fin = all_points[np.isfinite(all_points["target"].astype(float)) & np.isfinite(all_points["general"].astype(float))]
        for c in ("general_low", "general_high"):
            obstacles += [(float(v), float(t)) for v, t in zip(fin[c], fin["target"]) if np.isfinite(v)]
        for c in ("target_low", "target_high"):
            obstacles += [(float(g), float(v)) for g, v in zip(fin["general"], fin[c]) if np.isfinite(v)]
        front_src = fin
    else:
        front_src = ok
    if len(front_src) >= 1:
        fx, fy = _frontier_line(front_src["target"], front_src["general"])
        if len(fx):
            ax.plot(fx, fy, color="0.35", lw=1.0, ls="-", alpha=0.6, zorder=3, label="Pareto frontier")
            ax.scatter(fx, fy, s=170, facecolor="none", edgecolor="0.35", lw=1.0, zorder=4)
    if len(ok):
        bt = ok[ok["method"] == base_name]
        if len(bt):
            ax.axhline(float(bt["target"].iloc[0]), color="0.7", lw=0.8, ls=":", zorder=1)
            ax.axvline(float(bt["general"].iloc[0]), color="0.7", lw=0.8, ls=":", zorder=1)
    measures = measures or {}  # what each axis measures: (metric names, protocols), from the leaderboard

    def _what(kind: str) -> str:
        metrics, protos = measures.get(kind, ([], []))
        bits = ", ".join(list(metrics) + list(protos))
        return f" [{bits}]" if bits else ""

    ax.set_xlabel(f"General score (%){_what('general')}  →  more stable")
    ax.set_ylabel(f"Target score (%){_what('target')}  →  more plastic")
    if title:
        ax.set_title(title, fontsize=11)
    ax.grid(True, alpha=0.25)
    # a little margin so labels fit inside
    xs = [p[0] for p in obstacles] or [0, 1]
    ys = [p[1] for p in obstacles] or [0, 1]
    xr = max(max(xs) - min(xs), 5.0)  # scores are percent: show at least a 5-point window
    yr = max(max(ys) - min(ys), 5.0)
    xlo = min(xs) - 0.15 * xr
    ylo = min(ys) - 0.12 * yr
    if min(xs) >= 0:
        xlo = max(xlo, -0.04 * xr)
    if min(ys) >= 0:
        ylo = max(ylo, -0.04 * yr)
    ax.set_xlim(xlo, max(xs) + 0.2 * xr)
    ax.set_ylim(ylo, max(ys) + 0.15 * yr)
    if label_points:
        for r in ok.to_dict("records"):
            is_base = r["method"] == base_name
            # a label in its marker's colour stays readable when a neighbour's label sits closer
            labels.insert(0, (r["general"], r["target"], r["method"],
                              {"fontsize": 9, "fontweight": "bold" if is_base else "normal",
                               "color": "black" if is_base else colors.get(r["method"], "black")}))
    return labels, obstacles


def plot_plane(leaderboard, curves: dict | None = None, reference=None, reference_title: str | None = None,
               base_name: str = "base", title: str = "Stability–plasticity plane", colors: dict | None = None,
               points=None, markers: dict | None = None, trajectories: dict | None = None):
    """The plane figure. ``curves``: {method: curve DataFrame (alpha, target, general[, path])};
    ``reference``: published points (method, target, general) drawn in a second panel; ``points``: every
    point with its 95 % intervals (error bars on both axes; the frontier is drawn over all of them)."""
    plt = _mpl()
    colors = colors or method_colors(list(leaderboard["method"]), base_name)
    ncols = 2 if reference is not None and len(reference) else 1
    fig, axes = plt.subplots(1, ncols, figsize=(7.2 * ncols, 6.0), squeeze=False)
    ax = axes[0, 0]
    labels, obstacles = _draw_plane(ax, leaderboard[["method", "target", "general"]], colors, base_name, curves,
                                    title=title, all_points=points, measures=leaderboard.attrs.get("measures"),
                                    markers=markers, trajectories=trajectories)
    if points is not None and len(points) and "target_low" in points.columns and points["target_low"].notna().any():
        ax.text(0.99, 0.01, "bars: 95% intervals", transform=ax.transAxes, ha="right", va="bottom", fontsize=7,
                color="0.4")
    handles, labs = ax.get_legend_handles_labels()
    keep = [(h, l) for h, l in zip(handles, labs) if l.endswith(")") or " path" in l or l == "Pareto frontier"]
    used = {m for n, m in (markers or {}).items() if n != base_name}
    if used - {"o"}:  # several regimes: a legend entry per marker
        from matplotlib.lines import Line2D

        for reg, mk in REGIME_MARKERS.items():
            if mk in used:
                keep.append((Line2D([], [], marker=mk, color="0.4", ls="none", ms=7), reg.upper()))
    if keep:
        ax.legend([h for h, _ in keep], [l for _, l in keep], fontsize=8, loc="best", framealpha=0.8)
    panels = [(ax, labels, obstacles, 9)]
    if ncols == 2:
        rax = axes[0, 1]
        rcolors = method_colors(list(reference["method"]), "base")
        rlabels, robst = _draw_plane(rax, reference[["method", "target", "general"]], rcolors, "base",
                                     title=reference_title or "Published (PEFT-Arena)")
        rax.legend([h for h, l in zip(*rax.get_legend_handles_labels()) if l == "Pareto frontier"],
                   ["Pareto frontier"], fontsize=8, loc="best")
        panels.append((rax, rlabels, robst, 8))
    # labels are placed last, on the final layout (offsets are in points, so a later re-layout
    # would move points relative to their labels)
    fig.tight_layout()
    fig.canvas.draw()
    for a, labs_, obst, fs in panels:
        place_labels(a, labs_, obst, fontsize=fs)
    return fig


# ---------------------------------------------------------------- pass@k along training
def plot_passk(path, colors: dict | None = None, markers: dict | None = None):
    """One panel per pass@k (and one for the general score) against the training step: a line per run,
    coloured by training method, solid for SFT and dashed for RLVR, with 95 % interval bands."""
    plt = _mpl()
    ks = sorted({int(m[5:]) for m in path["metric"].unique() if str(m).startswith("pass@")})
    shown = [k for k in ks if k in (1, 4, 16, 64)] or ks[:1]
    if ks and ks[-1] not in shown:
        shown.append(ks[-1])  # the largest k measured
    metrics = [f"pass@{k}" for k in shown]
    if (path["metric"] == "general").any():
        metrics.append("general")
    names = list(dict.fromkeys(path["method"]))
    colors = colors or method_colors(names, "base")
    markers = markers or {}
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 4.0), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        for name in names:
            g = path[(path["method"] == name) & (path["metric"] == metric)].sort_values("step")
            if g.empty:
                continue
            reg = str(g["regime"].iloc[0])
            col = colors.get(name, "gray")
            ax.plot(g["step"], g["value"], color=col, ls=REGIME_LINES.get(reg, "-"), marker=markers.get(name, "o"),
                    ms=4.5, lw=1.4, label=name)
            ax.fill_between(g["step"].to_numpy(float), g["low"].to_numpy(float), g["high"].to_numpy(float), color=col,
                            alpha=0.12, lw=0)
        n = path.loc[path["metric"] == metric, "n"]
        ns = path.loc[path["metric"] == metric, "samples"]
        what = "general score (greedy)" if metric == "general" else f"target {metric}"
        sub = f"n = {int(n.max())} items" + ("" if metric == "general" else f", {int(ns.max())} samples each")
        ax.set_title(f"{what}\n({sub})", fontsize=10)
        ax.set_xlabel("training step (0 = base)")
        ax.set_ylabel("%")
        ax.grid(True, alpha=0.25)
    axes[0, 0].legend(fontsize=7, loc="best")
    fig.suptitle("Along training: pass@k of sampled completions and the general score (bands: 95% intervals)",
                 fontsize=11)
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------- the spectrum
def pick_module(spectra: dict, module: str | None = None) -> str | None:
    """The module to draw: the first module matching ``module`` (a substring or regex) present in
    every method's table; by default layer 18's down_proj (the study's choice) when present, else
    the down_proj of the middle layer, else the first module common to all."""
    import re

    common = None
    for df in spectra.values():
        mods = set(df["module"].astype(str))
        common = mods if common is None else common & mods
    if not common:
        return None
    mods = sorted(common)
    if module:
        hits = [m for m in mods if module == m] or [m for m in mods if re.search(module, m)]
        return hits[0] if hits else None
    down = [m for m in mods if m.endswith("down_proj")]
    for m in down:
        if re.search(r"\.18\.", m):
            return m
    if down:
        def layer(m):
            g = re.search(r"\.(\d+)\.", m)
            return int(g.group(1)) if g else 0

        layers = sorted({layer(m) for m in down})
        mid = layers[len(layers) // 2]
        return next(m for m in down if layer(m) == mid)
    return mods[0]


def spectrum_profiles(df, module: str):
    """(index, raw retention drift |ΔP_diag(i)| (as the study plots it, and as ``fluct_retention``
    scores it), energy E_Δ/ΣE_Δ) for one module of a per-index table."""
    d = df[df["module"].astype(str) == module].sort_values("index")
    delta = d["delta_p"].to_numpy(float) if "delta_p" in d.columns else np.abs(d["p_diag"].to_numpy(float) - d["sigma"].to_numpy(float))
    energy = d["energy"].to_numpy(float)
    esum = energy.sum()
    return d["index"].to_numpy(int), delta, energy / (esum if esum > 0 else 1.0)


def moving_average(y, w: int, log: bool = False):
    """Centered moving average over ``w`` points (shrinking windows at the ends); ``log``: of log y."""
    y = np.asarray(y, dtype=float)
    v = np.log(y) if log else y
    c = np.concatenate([[0.0], np.cumsum(v)])
    n = len(v)
    lo = np.clip(np.arange(n) - w // 2, 0, n)
    hi = np.clip(np.arange(n) + w // 2 + 1, 0, n)
    m = (c[hi] - c[lo]) / (hi - lo)
    return np.exp(m) if log else m


def plot_spectrum(spectra: dict, module: str, base_name: str = "base", colors: dict | None = None,
                  linestyles: dict | None = None):
    """Retention drift and update energy per singular index of W0 for one module, one line per method;
    the retention panel's legend gives each method's ``fluct_retention`` on this module."""
    from peftarena_cli.report.leaderboard import fluctuation

    plt = _mpl()
    colors = colors or method_colors([base_name, *spectra.keys()], base_name)
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(12, 4.6))
    n_idx = 0
    for name, df in spectra.items():
        idx, ret, en = spectrum_profiles(df, module)
        if len(idx) == 0:
            continue
        col = colors.get(name, "gray")
        ls = (linestyles or {}).get(name, "-")
        labels = (f"{name}  {fluctuation(ret):.2e}", name)
        if len(idx) <= 64:
            a1.plot(idx, np.maximum(ret, 1e-12), color=col, ls=ls, lw=1.1, alpha=0.85, label=labels[0])
            a2.plot(idx, np.maximum(en, 1e-12), color=col, ls=ls, lw=1.1, alpha=0.85, label=labels[1])
        else:  # the raw trace faint, its moving average (geometric, so it reads on the log scale) bold
            w = max(5, len(idx) // 48)
            for ax, y, lab in ((a1, ret, labels[0]), (a2, en, labels[1])):
                y = np.maximum(y, 1e-12)
                ax.plot(idx, y, color=col, lw=0.5, alpha=0.25)
                ax.plot(idx, moving_average(y, w, log=True), color=col, ls=ls, lw=1.6, alpha=0.95, label=lab)
        n_idx = max(n_idx, len(idx))
    if n_idx:
        a2.axhline(1.0 / n_idx, color="0.4", lw=0.9, ls="--", label="flat profile (1/n)")
    if n_idx > 64:
        a1.text(0.01, 0.01, f"bold: moving average over {max(5, n_idx // 48)} indices", transform=a1.transAxes,
                fontsize=7, color="0.4")
    a1.set_title("Retention drift  |ΔP_diag(i)|", fontsize=11)
    a2.set_title("Update energy  E_Δ(i) / Σ E_Δ", fontsize=11)
    for a in (a1, a2):
        a.set_yscale("log")
        a.set_xlabel("singular index i of W0 (descending σ)")
        a.grid(True, alpha=0.25, which="both")
    a1.set_ylabel("|u_iᵀ ΔW v_i| (log)")
    a2.set_ylabel("share of total energy (log)")
    a1.legend(fontsize=8, loc="best", ncol=2 if len(spectra) > 5 else 1, title="fluct_retention", title_fontsize=8)
    a2.legend(fontsize=8, loc="best", ncol=2 if len(spectra) > 5 else 1)
    fig.suptitle(f"Spectrum of {module}", fontsize=12)
    fig.tight_layout()
    return fig


def save_figure(fig, path: Path, dpi: int = 130) -> Path:
    """Write a figure atomically (format from the suffix: .png, .svg, .pdf)."""
    from peftarena_cli.artifacts.atomic import atomic_path

    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=path.suffix.lstrip("."), dpi=dpi, bbox_inches="tight")
    return path


def close(fig) -> None:
    _mpl().close(fig)
