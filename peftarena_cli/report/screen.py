"""The drift screen of `make sweep SCREEN=1` (scripts/sweep.mk; docs/report.md, "Sweeps").

Output drift on general prompts (docs/drift.md) is cheap beside the general eval and moves with
forgetting. The screen measures every grid point's target gain (its eval-target against the base's)
and its drift, and sends to the full general eval only the configurations that could be on their
method's frontier.

**Rule.** Per configuration (method, lr, steps): the seed mean of the target gain, as the sweep report
computes it, and the seed mean of the per-prompt drift (KL at α = 1, greedy source, general prompts)
with its seed-and-item 95 % interval. A configuration ``c`` is *screened out* when another
configuration ``d`` of the same method dominates it by a margin: gain(d) ≥ gain(c) and the whole drift
interval of ``d`` lies below the whole drift interval of ``c`` (drift_high(d) < drift_low(c)). Every
other configuration is kept, with all its seeds. The gain needs no margin: it is the full measure
itself; the margin is on drift, the stand-in for forgetting. A configuration whose interval is
undefined (one prompt) is never screened out and screens nothing out.

**Agreement.** The screen's frontier is each method's Pareto set in (gain ≥, drift ≤) without the
margin. On a sweep where every screened point also has its full general eval, the agreement is the
share of methods whose screen frontier equals their full frontier (gain, forgetting) as a set of
configurations; the recall is the share of full-frontier configurations the screen kept (a screen
that drops one loses a frontier point).

Core code: plain functions, no printing. The sweep folder is read by
:func:`peftarena_cli.report.sweep.screen_frame` and :func:`~peftarena_cli.report.sweep.build_screen`;
scripts/sweep_screen.py writes ``SWEEP_RUNS/screen.json``.
"""

from __future__ import annotations

import math
import numpy as np

SCREEN_FILE = "screen.json"
DRIFT_FILE = "drift.parquet"
RULE = ("screened out: another configuration of the same method has gain >= and its drift interval wholly "
        "below (drift_high(d) < drift_low(c)); every other configuration gets the full general eval")
SCREEN_COLUMNS = ["method", "key", "lr", "steps", "seeds", "points", "gain", "drift", "drift_low", "drift_high",
                  "kept", "dominated_by", "screen_frontier"]


# ---------------------------------------------------------------- the rule, on a table
def screen_table(df):
    """``df`` (one row per configuration: method, key, gain, drift, drift_low, drift_high) with ``kept``,
    ``dominated_by`` (the key of a configuration that screens it out, "" when kept) and
    ``screen_frontier`` (on its method's Pareto set in gain ≥, drift ≤)."""
    from peftarena_cli.report.sweep_stats import _tie_tol, pareto_front

    out = df.copy().reset_index(drop=True)
    g = out["gain"].to_numpy(float)
    tol = _tie_tol(g)
    kept, by = [], []
    for i in range(len(out)):
        same = (out["method"] == out.loc[i, "method"]).to_numpy() & (np.arange(len(out)) != i)
        dom = same & (g >= g[i] - tol) & (out["drift_high"].to_numpy(float) < float(out.loc[i, "drift_low"]))
        hit = np.flatnonzero(dom)
        kept.append(not len(hit))
        by.append(str(out.loc[hit[0], "key"]) if len(hit) else "")
    out["kept"] = kept
    out["dominated_by"] = by
    out["screen_frontier"] = False
    for _, idx in out.groupby("method", sort=False).groups.items():
        out.loc[idx, "screen_frontier"] = pareto_front(out.loc[idx, "gain"], out.loc[idx, "drift"])
    return out


def screen_agreement(table, full_frontier: dict) -> dict:
    """How the screen compares with the full evaluation: ``full_frontier`` = {key: on its method's
    full frontier}, for every configuration of ``table`` (a :func:`screen_table`)."""
    missing = [k for k in table["key"] if k not in full_frontier]
    if missing:
        raise ValueError(f"no full frontier for {missing[0]!r}")
    per = []
    for m, g in table.groupby("method", sort=True):
        s = set(g.loc[g["screen_frontier"], "key"])
        f = {k for k in g["key"] if full_frontier[k]}
        per.append({"method": m, "screen_frontier": sorted(s), "full_frontier": sorted(f), "equal": s == f,
                    "full_kept": len(f & set(g.loc[g["kept"], "key"])), "full_n": len(f)})
    n_eq = sum(p["equal"] for p in per)
    fk, fn = sum(p["full_kept"] for p in per), sum(p["full_n"] for p in per)
    return {"methods": len(per), "methods_equal": n_eq, "agreement": n_eq / len(per) if per else math.nan,
            "full_frontier_configs": fn, "full_frontier_kept": fk, "recall": fk / fn if fn else math.nan,
            "per_method": per}


# ---------------------------------------------------------------- reading a sweep folder
def drift_vector(df, where: str) -> tuple[list, np.ndarray]:
    """(prompt keys, KL per prompt) of a drift table: α = 1 (else its largest α), the greedy source,
    the general prompts (all prompts when it has none), sorted by (prompt set, task, id)."""
    import pandas as pd

    if not len(df) or not {"alpha", "prompt_set", "task", "id", "source", "kl"} <= set(df.columns):
        from peftarena_cli.errors import InvalidArtifact

        raise InvalidArtifact(f"{where} is not a drift table (peftarena drift -o)", hint="re-run the point's drift stage")
    a = 1.0 if (df["alpha"] == 1.0).any() else float(df["alpha"].max())
    d = df[(df["alpha"] == a) & (df["source"] == "greedy")]
    if (d["prompt_set"] == "general").any():
        d = d[d["prompt_set"] == "general"]
    d = d.assign(id=d["id"].astype(str)).sort_values(["prompt_set", "task", "id"], kind="stable")
    keys = list(zip(d["prompt_set"], d["task"], d["id"]))
    return keys, pd.to_numeric(d["kl"]).to_numpy(float)


def _plain(v):
    """A JSON value: numpy scalars as Python ones, NaN as null."""
    if isinstance(v, np.generic):
        v = v.item()
    return None if isinstance(v, float) and not math.isfinite(v) else v


def screen_document(df) -> dict:
    """The screen as written to ``screen.json`` from the per-configuration inputs ``df`` (method, key,
    points, gain, drift, drift_low, drift_high, ...; :func:`peftarena_cli.report.sweep.screen_frame`):
    the rule, one entry per configuration and the point paths ``selected`` for the full general eval
    and ``screened_out``."""
    t = screen_table(df)
    configs = [{k: _plain(v) for k, v in r.items()} for r in t[SCREEN_COLUMNS].to_dict("records")]
    return {"format": "peftarena-sweep-screen/1", "rule": RULE, "configs": configs,
            "selected": sorted(p for r in configs if r["kept"] for p in r["points"]),
            "screened_out": sorted(p for r in configs if not r["kept"] for p in r["points"])}
