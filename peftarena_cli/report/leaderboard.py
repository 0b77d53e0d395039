"""The leaderboard: one row per method with its scores, trade-off and geometry summaries.

Columns (docs/report.md):

* ``method``, ``is_base``, ``trainable_params``;
* ``target``, ``general`` (percent, from the eval summaries' ``target_score`` / ``general_score``);
* ``target_gain`` = target − target(base), ``forgetting`` = general(base) − general (points);
* ``pareto``: on the Pareto frontier of (target, general), both maximised;
* geometry columns, each a per-method aggregate over the selected modules:
  ``spec_*`` from the spectrum summary, ``csd_*`` from csd, ``ag_*`` from act-geom.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np

from peftarena_cli.activations.metrics import leaderboard_columns
from peftarena_cli.artifacts.safetensors_io import check_safetensors
from peftarena_cli.errors import InvalidArtifact, PeftArenaError
from peftarena_cli.methods import frozen_keys

TARGET_METRIC = "target_score"
GENERAL_METRIC = "general_score"

SPECTRUM_MEAN = ("effective_rank", "fluct_retention", "fluct_energy", "sva_mean")
SET_COLUMNS = ("prompt_set", "prompts", "distribution", "dist", "set", "split", "dataset", "suite")


def _frozen_adapter_keys() -> tuple[str, ...]:
    """Saved tensors that are not trained: the registry's frozen shared tensors (VeRA's projections)
    and base layers."""
    return (*frozen_keys(), "base_layer")


def pareto_mask(target, general) -> np.ndarray:
    """True for points no other point dominates (≥ on both axes and > on one); NaN points are False."""
    t = np.asarray(target, dtype=float)
    g = np.asarray(general, dtype=float)
    ok = np.isfinite(t) & np.isfinite(g)
    mask = np.zeros(len(t), dtype=bool)
    for i in range(len(t)):
        if not ok[i]:
            continue
        dominated = ok & (t >= t[i]) & (g >= g[i]) & ((t > t[i]) | (g > g[i]))
        mask[i] = not dominated.any()
    return mask


def general_metric(df) -> str:
    """The metric name of the general aggregate in an eval summary: whichever of
    ``evaluation.api.GENERAL_AGGREGATES`` (general_score, builtin_general_score, general_mean) it has."""
    from peftarena_cli.evaluation.api import GENERAL_AGGREGATES

    if df is None or "metric" not in df.columns:
        return GENERAL_METRIC
    metrics = {str(m) for m in df["metric"].unique()}
    return next((m for m in GENERAL_AGGREGATES if m in metrics), GENERAL_METRIC)


def summary_interval(df, metric: str) -> tuple[float, float]:
    """(ci_low, ci_high) of ``metric``'s row in an eval summary; NaN when the summary has none."""
    if df is None or "ci_low" not in df.columns:
        return math.nan, math.nan
    rows = df[df["metric"] == metric]
    if rows.empty:
        return math.nan, math.nan
    return float(rows["ci_low"].iloc[0]), float(rows["ci_high"].iloc[0])


def summary_score(df, metric: str) -> float:
    """The value of ``metric`` in an eval summary (``task, metric, value, n``), NaN when absent."""
    rows = df[df["metric"] == metric]
    if rows.empty:
        return math.nan
    if len(rows) > 1 and rows["value"].nunique() > 1:
        raise InvalidArtifact(
            f"the eval summaries of one method hold {len(rows)} different {metric!r} rows",
            hint="give each method its own directory (RUNS/<method>/) or NAME=PATH",
        )
    return float(rows["value"].iloc[0])


def count_trainable_params(path: Path | None) -> float:
    """Parameters of an adapter (numel of its saved tensors, shared frozen VeRA projections excluded)
    or of a full checkpoint (every tensor), read from safetensors headers only; NaN when unknown."""
    if path is None:
        return math.nan
    p = Path(path)
    files = [p] if p.is_file() else sorted(p.glob("*.safetensors"))
    if not files:
        return math.nan
    total = 0
    frozen = _frozen_adapter_keys()
    for f in files:
        try:
            header = check_safetensors(f)
        except (PeftArenaError, OSError):
            return math.nan
        for k, v in header.items():
            if k == "__metadata__" or any(s in k for s in frozen):
                continue
            total += int(np.prod(v.get("shape", [0]))) if v.get("shape") else 1
    return float(total)


def trainable_from_manifest(directory: Path | None, adapter: Path | None) -> float:
    """``trainable_params`` from a finetune run's ``manifest.json`` (beside the adapter's ``final/``,
    in the method directory, or in its ``train/``); NaN when there is none."""
    from peftarena_cli.report.collect import read_manifest

    v = (read_manifest(directory, adapter) or {}).get("trainable_params")
    return float(v) if isinstance(v, (int, float)) else math.nan


def _select_modules(df, modules: str | None):
    if modules and "module" in df.columns:
        sel = df[df["module"].astype(str).str.contains(modules, regex=True)]
        return sel
    return df


def _set_column(df) -> str | None:
    for c in SET_COLUMNS:
        if c in df.columns and not pd_api().is_numeric_dtype(df[c]):
            return c
    return None


def pd_api():
    import pandas.api.types as t

    return t


def _clean(name) -> str:
    s = Path(str(name)).stem if ("/" in str(name) or "." in str(name)) else str(name)
    return re.sub(r"[^0-9A-Za-z]+", "_", s).strip("_").lower() or "set"


def _per_set_means(df, metrics, prefix: str) -> dict[str, float]:
    """Mean of each metric over modules, one column per prompt set when the table has several."""
    out: dict[str, float] = {}
    metrics = [m for m in metrics if m in df.columns]
    sc = _set_column(df)
    groups = [(None, df)] if sc is None else list(df.groupby(sc, sort=True))
    for key, g in groups:
        suffix = "" if key is None else f"_{_clean(key)}"
        for m in metrics:
            vals = g[m].astype(float).replace([np.inf, -np.inf], np.nan)
            out[f"{prefix}{m}{suffix}"] = float(vals.mean()) if vals.notna().any() else math.nan
    return out


def fluctuation(x) -> float:
    """mean |x − MA₅(x)|, MA₅ centred, reflect padding (as ``peftarena_cli.spectral.spectrum.fluctuation``)."""
    x = np.asarray(x, dtype=float)
    if len(x) == 0:
        return math.nan
    xp = np.pad(x, 2, mode="reflect" if len(x) >= 3 else "edge")
    return float(np.abs(x - np.convolve(xp, np.ones(5) / 5, mode="valid")).mean())


def spectrum_summary(tables: dict):
    """The spectrum summary with ``fluct_retention`` in its current (the study's) definition, the
    fluctuation of the raw |ΔP_diag(i)|. A summary written before ``fluct_base_retention`` existed
    holds the fluctuation of P_diag/σ₁ under that name: it is recomputed from the per-index table
    when there is one, and dropped otherwise (never averaged under the wrong name)."""
    spec = tables.get("spectrum_summary")
    if spec is None or "fluct_retention" not in spec.columns or "fluct_base_retention" in spec.columns:
        return spec
    spec = spec.rename(columns={"fluct_retention": "fluct_base_retention"})
    index = tables.get("spectrum_index")
    if index is not None and "delta_p" in index.columns:
        per = {str(m): fluctuation(g.sort_values("index")["delta_p"]) for m, g in index.groupby("module", sort=False)}
        spec["fluct_retention"] = spec["module"].astype(str).map(per).astype(float)
    return spec


def geometry_columns(tables: dict, modules: str | None = None) -> dict[str, float]:
    """Per-method geometry aggregates over the modules matching ``modules`` (a regex; all by default)."""
    out: dict[str, float] = {}
    spec = spectrum_summary(tables)
    if spec is not None:
        s = _select_modules(spec, modules)
        for m in SPECTRUM_MEAN:
            if m in s.columns and s[m].notna().any():
                out[f"spec_{m}"] = float(s[m].astype(float).mean()) if len(s) else math.nan
        if "delta_fro" in s.columns:  # the whole selection's ‖ΔW‖_F
            out["spec_delta_fro"] = float(np.sqrt((s["delta_fro"].astype(float) ** 2).sum())) if len(s) else math.nan
    csd = tables.get("csd")
    if csd is not None:
        c = _select_modules(csd, modules)
        if "alpha" in c.columns and len(c):  # csd --alpha ...: the fine-tune itself is α = 1 (else the largest α)
            a = c["alpha"].astype(float)
            c = c[a == (1.0 if (a == 1.0).any() else a.max())]
        metrics = [col for col in c.columns if col.startswith("csd_") and pd_api().is_numeric_dtype(c[col])]
        out.update(_per_set_means(c, metrics, ""))
    ag = tables.get("act_geom")
    if ag is not None:
        a = _select_modules(ag, modules)
        out.update(_per_set_means(a, leaderboard_columns(), "ag_"))
    drift = tables.get("drift")
    if drift is not None and len(drift):
        out.update(drift_columns(drift))
    return out


def drift_columns(drift) -> dict[str, float]:
    """``drift_kl_<set>`` (greedy continuations) and ``drift_kl_<set>_ref`` (reference text): the mean
    per-token KL(base ‖ method) over prompts at α = 1 (else the largest α), with ``<col>_hw``, the 95 %
    half-width over prompts (docs/drift.md)."""
    from peftarena_cli import stats

    out: dict[str, float] = {}
    a = drift["alpha"].astype(float) if "alpha" in drift.columns else None
    d = drift if a is None else drift[a == (1.0 if (a == 1.0).any() else a.max())]
    for (s, src), g in d.groupby(["prompt_set", "source"], sort=True):
        col = f"drift_kl_{_clean(s)}" + ("" if src == "greedy" else "_ref")
        iv = stats.mean_normal(g["kl"].astype(float).dropna().to_numpy(), bounds=(0.0, math.inf))
        out[col] = iv.value
        out[f"{col}_hw"] = iv.half_width
    return out


def build_leaderboard(methods: dict, base_name: str = "base", modules: str | None = None):
    """The leaderboard DataFrame from :func:`collect_results`'s output.

    Rows: the base first, then the methods in descending target score.
    """
    import pandas as pd

    from peftarena_cli.report.collect import adapter_from_provenance

    from peftarena_cli.report.uncertainty import method_measures

    meas = {name: method_measures(m) for name, m in methods.items()}
    scopes = pick_scopes(methods, meas)
    held = {n: sc.held_out for n, sc in scopes.items() if sc.held_out}
    rows = []
    for name, m in methods.items():
        summ = m.tables.get("eval_summary")
        target = summary_score(summ, TARGET_METRIC) if summ is not None else math.nan
        general = summary_score(summ, general_metric(summ)) if summ is not None else math.nan
        if name in held:  # a split pick's row: its own evals' held-out half only
            own = held_out_measures(meas[name], held[name])
            target, general = 100.0 * own["target"].value(), 100.0 * own["general"].value()
        is_base = name == base_name
        adapter = m.adapter or adapter_from_provenance(m)
        params = 0.0 if is_base else trainable_from_manifest(m.directory, adapter)
        if not is_base and not math.isfinite(params):
            params = count_trainable_params(adapter)
        row = {"method": name, "is_base": is_base, "trainable_params": params, "target": target, "general": general}
        row.update(geometry_columns(m.tables, modules))
        rows.append(row)
    df = pd.DataFrame(rows)
    base = df[df["is_base"]]
    bt = float(base["target"].iloc[0]) if len(base) else math.nan
    bg = float(base["general"].iloc[0]) if len(base) else math.nan
    df.insert(5, "target_gain", df["target"] - bt)
    df.insert(6, "forgetting", bg - df["general"])
    if base_name in meas and held:  # against the base on the same held-out items (paired)
        for i, name in enumerate(df["method"]):
            if name in held:
                b = held_out_measures(meas[base_name], held[name])
                if "target" in b:
                    df.loc[i, "target_gain"] = df.loc[i, "target"] - 100.0 * b["target"].value()
                if "general" in b:
                    df.loc[i, "forgetting"] = 100.0 * b["general"].value() - df.loc[i, "general"]
    df.insert(7, "pareto", pareto_mask(df["target"], df["general"]))
    notes = _add_uncertainty(df, methods, base_name, meas, held)
    from peftarena_cli.report.trajectory import run_info

    infos = {name: run_info(m.directory, m.adapter or adapter_from_provenance(m)) for name, m in methods.items()}
    # the regime and the training method of each run, from its finetune manifest (None: no manifest; the base: "")
    df.insert(1, "regime", [("" if b else infos[n]["regime"]) for n, b in zip(df["method"], df["is_base"])])
    df.insert(2, "train_method", [("" if b else (infos[n]["train_method"] or n)) for n, b in zip(df["method"], df["is_base"])])
    notes += selection_column(df, scopes)
    df["_order"] = np.where(df["is_base"], np.inf, df["target"].fillna(-np.inf))
    df = df.sort_values("_order", ascending=False, kind="stable").drop(columns="_order").reset_index(drop=True)
    df.attrs["notes"] = notes + protocol_notes(methods)  # pairing problems, mixed protocols, for the report's notes
    df.attrs["measures"] = axis_measures(methods)
    df.attrs["held_out"] = held  # {method: {"salt", "half"}}: rows scored on a held-out half (plane, pairs)
    return df


def pick_scopes(methods: dict, meas: dict) -> dict:
    """{method: PickScope} of the methods that are points rewound from a curve with ``rewind --pick``
    (:func:`~peftarena_cli.report.selection.rewind_selection`, :func:`~peftarena_cli.report.selection.pick_scope`);
    the pick record rides along as ``scope.pick``."""
    from peftarena_cli.report.collect import adapter_from_provenance
    from peftarena_cli.report.selection import pick_scope, rewind_selection

    out = {}
    for name, m in methods.items():
        p = rewind_selection(m.adapter or adapter_from_provenance(m))
        if p:
            out[name] = pick_scope(p, meas.get(name, {}))
    return out


def held_out_measures(measures: dict, held: dict | None) -> dict:
    """``measures`` ({kind: Measure}) restricted to a held-out half ({"salt", "half"}); as given when
    ``held`` is None."""
    from peftarena_cli.report.selection import restrict_measure

    if not held:
        return measures
    return {k: restrict_measure(v, held["salt"], held["half"]) for k, v in measures.items()}


def selection_column(df, scopes: dict) -> list[str]:
    """A ``selection`` column (which items the row is scored on, for the pick), a ``pick`` column (how
    its α was picked, the rewound artifact's own ``selection`` text) and one note per rewound row
    (report/selection.py, :func:`~peftarena_cli.report.selection.pick_scope`)."""
    if not scopes:
        return []
    df["selection"] = [scopes[n].label if n in scopes else "" for n in df["method"]]
    df["pick"] = [scopes[n].pick.get("selection", "") if n in scopes else "" for n in df["method"]]
    notes = []
    for name, sc in scopes.items():
        p = sc.pick
        a = p.get("alpha")
        where = ("the pick's own curve scores were in-sample" if p["reported_on"] == "in-sample"
                 else "the pick was scored on held-out items")
        notes.append(f"{name}: rewound at α = {a if a is not None else '?'} picked by {p['criterion']} "
                     f"({p['selection']}); {where}; this row: {sc.label}" + (f" ({sc.note})" if sc.note else ""))
    return notes


def _axis_rows(summ, kind: str):
    metric = TARGET_METRIC if kind == "target" else general_metric(summ)
    return summ[summ["metric"] == metric], metric


def axis_measures(methods: dict) -> dict:
    """{"target"|"general": (metric names, protocols)} over the methods' eval summaries: what each
    axis of the plane measures (the plane's axis labels say it)."""
    out = {}
    for kind in ("target", "general"):
        metrics, protos = set(), set()
        for m in methods.values():
            summ = m.tables.get("eval_summary")
            if summ is None or "metric" not in summ.columns:
                continue
            rows, metric = _axis_rows(summ, kind)
            if len(rows):
                metrics.add(metric)
                if "protocol" in rows.columns:
                    protos |= {str(p) for p in rows["protocol"].dropna() if str(p)}
        out[kind] = (sorted(metrics), sorted(protos))
    return out


def protocol_notes(methods: dict) -> list[str]:
    """A loud note for each axis whose scores were measured under different protocols or measures
    (docs/eval.md, "Protocols"): such differences are not comparable."""
    notes = []
    for kind, (metrics, protos) in axis_measures(methods).items():
        if len(metrics) > 1 or len(protos) > 1:
            notes.append(f"WARNING: the {kind} axis mixes scores measured differently ({', '.join(metrics + protos)}); "
                         "differences between those points reflect the protocol, not the fine-tune: re-evaluate under one --protocol")
    return notes


UNCERTAINTY_COLUMNS = [
    "target_low", "target_high", "general_low", "general_high", "n_target", "n_general",
    "target_gain_low", "target_gain_high", "target_gain_p", "target_gain_test", "target_gain_sig",
    "forgetting_low", "forgetting_high", "forgetting_p", "forgetting_test", "forgetting_sig",
]


def _add_uncertainty(df, methods: dict, base_name: str, meas: dict | None = None, held: dict | None = None) -> None:
    """Intervals of target / general and paired gain / forgetting against the base (in place, after
    ``pareto``). Intervals come from the summaries' ci columns, else from the per-sample rows;
    gain and forgetting are paired on the items both evaluated (docs/report.md, "Uncertainty"). A row
    in ``held`` ({method: {"salt", "half"}}) is scored on that held-out half: its intervals from those
    items, its base comparison on the base's same items."""
    from peftarena_cli.report.uncertainty import compare, interval_of, method_measures

    meas = meas if meas is not None else {name: method_measures(m) for name, m in methods.items()}
    held = held or {}
    cols = {c: [] for c in UNCERTAINTY_COLUMNS}
    notes = []
    for name in df["method"]:
        m = methods[name]
        summ = m.tables.get("eval_summary")
        me = held_out_measures(meas.get(name, {}), held.get(name))
        base = held_out_measures(meas.get(base_name, {}), held.get(name))
        for kind, metric in (("target", TARGET_METRIC), ("general", general_metric(summ))):
            lo, hi = summary_interval(summ, metric) if name not in held else (math.nan, math.nan)
            iv = interval_of(me.get(kind))
            if not (math.isfinite(lo) and math.isfinite(hi)) and iv is not None:
                lo, hi = iv.low, iv.high
            cols[f"{kind}_low"].append(lo)
            cols[f"{kind}_high"].append(hi)
            cols[f"n_{kind}"].append(me[kind].n_items if kind in me else math.nan)
        for col, a, b in (("target_gain", me.get("target"), base.get("target")),
                          ("forgetting", base.get("general"), me.get("general"))):
            if name == base_name:
                r, note = None, ""
            else:
                r, note = compare(a, b, names=(name, base_name) if col == "target_gain" else (base_name, name))
            if note:
                notes.append(f"{name}: {col.replace('_', ' ')} not paired: {note}")
            cols[f"{col}_low"].append(r.low if r else math.nan)
            cols[f"{col}_high"].append(r.high if r else math.nan)
            cols[f"{col}_p"].append(r.p_value if r else math.nan)
            cols[f"{col}_test"].append(r.test if r else "")
            cols[f"{col}_sig"].append(bool(r.significant) if r else False)
    at = list(df.columns).index("pareto") + 1
    for k, c in enumerate(UNCERTAINTY_COLUMNS):
        df.insert(at + k, c, cols[c])
    return notes


def geometry_metric_columns(df) -> list[str]:
    return [c for c in df.columns if c.startswith(("spec_", "csd_", "ag_", "drift_")) and not c.endswith("_hw")]


def _fmt_params(v) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    v = float(v)
    for unit, div in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(v) >= div:
            return f"{v / div:.3g}{unit}"
    return f"{v:.0f}"


def _fmt(v, signed=False) -> str:
    if isinstance(v, (bool, np.bool_)):
        return "✓" if v else ""
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    if isinstance(v, (int, float, np.floating, np.integer)):
        return f"{float(v):+.2f}" if signed else f"{float(v):.4g}" if abs(float(v)) < 1 else f"{float(v):.2f}"
    return str(v)


SUMMARY_COLUMNS = ["method", "trainable_params", "target", "general", "target_gain", "forgetting", "pareto"]


def summary_frame(df):
    """The leaderboard's main columns as short strings, for a terminal summary."""
    import pandas as pd

    rows = []
    for r in df.to_dict("records"):
        rows.append({"method": r["method"] + (" (base)" if r["is_base"] and r["method"] != "base" else ""),
                     "params": "–" if r["is_base"] else _fmt_params(r["trainable_params"]),
                     "target": _fmt(r["target"]), "general": _fmt(r["general"]),
                     "gain": _fmt(r["target_gain"], True), "forgetting": _fmt(r["forgetting"], True),
                     "pareto": _fmt(bool(r["pareto"]))})
    return pd.DataFrame(rows)


def _pm(r, col, signed=False) -> str:
    """"value ± half-width" (and "*" when the paired difference is significant at 95 %)."""
    v = r.get(col)
    lo, hi = r.get(f"{col}_low", math.nan), r.get(f"{col}_high", math.nan)
    base = _fmt(v, signed)
    if base == "–":
        return base
    if lo is None or hi is None or not (math.isfinite(float(lo)) and math.isfinite(float(hi))):
        return base
    out = f"{base} ± {(float(hi) - float(lo)) / 2:.1f}"
    if r.get(f"{col}_sig"):
        out += " *"
    return out


def _pval(p) -> str:
    if p is None or not math.isfinite(float(p)):
        return "–"
    return f"{float(p):.3f}" if float(p) >= 0.001 else "<0.001"


def leaderboard_markdown(df, correlations=None, title: str = "Stability–plasticity leaderboard", statements=None,
                         points=None, extra=None) -> str:
    """The leaderboard (intervals, paired tests, frontier, geometry, correlations) as a Markdown document."""
    regimes = "regime" in df.columns and any(str(r) not in ("", "None", "nan", "sft") for r in df["regime"])
    main = ["method", *(["regime"] if regimes else []), "trainable_params", "target", "general", "target_gain", "forgetting",
            "p (gain)", "p (forg.)", "pareto"]
    lines = [f"# {title}", "",
             "Scores in percent ± the 95% half-width; target gain and forgetting in points against the base, "
             "paired on the same items (stratified paired bootstrap interval; p from McNemar's exact test for one "
             "binary task, else a sign-flip permutation test). `*` = significant at 95% (p < 0.05 and the interval "
             "excludes 0). pareto = on the frontier of (target, general) over every method and interpolation point.",
             ""]
    lines.append("| " + " | ".join(main) + " |")
    lines.append("|" + "---|" * len(main))
    for r in df.to_dict("records"):
        base = bool(r["is_base"])
        cells = [f"**{r['method']}**" if base else str(r["method"]),
                 *([("–" if base else str(r.get("regime") or "?"))] if regimes else []),
                 _fmt_params(r["trainable_params"]) if not base else "–",
                 _pm(r, "target"), _pm(r, "general"),
                 _fmt(r["target_gain"], signed=True) if base else _pm(r, "target_gain", True),
                 _fmt(r["forgetting"], signed=True) if base else _pm(r, "forgetting", True),
                 "" if base else _pval(r.get("target_gain_p")), "" if base else _pval(r.get("forgetting_p")),
                 _fmt(bool(r["pareto"]))]
        lines.append("| " + " | ".join(cells) + " |")
    ns = [(r.get("n_target"), r.get("n_general")) for r in df.to_dict("records")]
    nt = sorted({int(a) for a, _ in ns if a is not None and math.isfinite(float(a))})
    ng = sorted({int(b) for _, b in ns if b is not None and math.isfinite(float(b))})
    if nt or ng:
        lines += ["", f"Items: target {', '.join(map(str, nt)) or '?'}, general {', '.join(map(str, ng)) or '?'}."]
    if points is not None and len(points) and points["alpha"].notna().any():
        lines += ["", "## Interpolation points", "",
                  "| point | target | general | target gain | forgetting | pareto |", "|---|---|---|---|---|---|"]
        for r in points[points["alpha"].notna()].to_dict("records"):
            lines.append(f"| {r['point']} | {_pm(r, 'target')} | {_pm(r, 'general')} | {_pm(r, 'target_gain', True)} | "
                         f"{_pm(r, 'forgetting', True)} | {_fmt(bool(r['pareto']))} |")
    if statements:
        lines += ["", "## What is distinguishable", ""] + [f"- {s}" for s in statements]
    if extra:
        lines += list(extra)
    geo = geometry_metric_columns(df)
    tuned = [r for r in df.to_dict("records") if not r["is_base"]]
    if geo and tuned:
        lines += ["", "## Geometry and drift (per-method aggregates over the selected modules; see docs/report.md)", ""]
        lines.append("| metric | " + " | ".join(str(r["method"]) for r in tuned) + " |")
        lines.append("|---|" + "---|" * len(tuned))
        for c in geo:
            cells = []
            for r in tuned:
                hw = r.get(f"{c}_hw")
                cells.append(_fmt(r[c]) + (f" ± {float(hw):.3g}" if hw is not None and math.isfinite(float(hw)) else ""))
            lines.append(f"| {c} | " + " | ".join(cells) + " |")
    if correlations is not None and len(correlations):
        n_max = int(correlations["n"].max()) if len(correlations) else 0
        lines += ["", "## Correlations across methods (base excluded)", ""]
        if n_max < 3:
            lines.append(f"Correlations need at least 3 fine-tuned methods with both values; this report has {n_max}, "
                         "so none is computed.")
        else:
            lines.append("Pearson's r with its 95% Fisher-z interval (n ≥ 4), Spearman's ρ with its exact permutation "
                         "p-value. With a handful of methods these are descriptive.")
            lines.append("")
            lines.append("| metric | against | pearson | 95% CI | spearman | p (spearman) | n |")
            lines.append("|---|---|---|---|---|---|---|")
            for r in correlations.to_dict("records"):
                if r["n"] < 3:
                    continue
                ci = (f"[{r['pearson_low']:+.2f}, {r['pearson_high']:+.2f}]"
                      if math.isfinite(r.get("pearson_low", math.nan)) else "–")
                lines.append(f"| {r['metric']} | {r['against']} | {_fmt(r['pearson'], True)} | {ci} | "
                             f"{_fmt(r['spearman'], True)} | {_pval(r.get('spearman_p'))} | {r['n']} |")
    return "\n".join(lines) + "\n"
