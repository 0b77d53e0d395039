"""Method against method in the arena report (docs/report.md, "Method against method").

For every pair of fine-tuned methods (the base is compared with each method in the leaderboard
already) and each measure, the target score and the general score: the paired difference a − b on
the same items (:func:`peftarena_cli.report.uncertainty.compare`, i.e.
:func:`peftarena_cli.stats.paired_difference` in points: stratified paired bootstrap interval,
McNemar's exact test for one binary stratum, else a stratified sign-flip permutation test), with
Holm-adjusted p-values over the family of all pairs of that measure. The adjustment and the
``significant`` rule are the sweep report's (:func:`peftarena_cli.report.sweep_stats.adjust_pairs`),
and the columns are named as in its ``sweep_pairs.parquet``.

The sweep's :func:`~peftarena_cli.report.sweep_stats.pairwise_comparisons` is not called for this
one-seed case: it needs every method on the same items (a pair on other items must be labelled, not
refuse the whole table), and with one seed its interval is the normal item interval, while the
arena's every other paired number (gain, forgetting, frontier neighbours) comes from
``stats.paired_difference``; one report, one estimator.

A pair is oriented so that ``a`` is the method ahead on the measure's point estimate (``diff`` ≥ 0).
A pair that cannot be compared (a method without per-sample rows for the measure, or the two on
different items: another ``--limit`` or seed) is a row with NaN numbers and the reason in ``note``,
never dropped; it is not counted in the Holm family. Core code: no printing.
"""

from __future__ import annotations

import math
from itertools import combinations

from peftarena_cli.report.sweep_stats import adjust_pairs

MEASURES = ("target", "general")
PAIR_COLUMNS = ["measure", "a", "b", "diff", "se", "ci_low", "ci_high", "p_value", "test", "n_items", "family",
                "p_holm", "significant", "comparable", "note"]


def _orient(measures: dict, kind: str, a: str, b: str) -> tuple[str, str]:
    """(a, b) with a the one whose point estimate on ``kind`` is higher; ties and unknown values keep
    the given order (the leaderboard's)."""
    ma, mb = measures.get(a, {}).get(kind), measures.get(b, {}).get(kind)
    if ma is None or mb is None:
        return a, b
    va, vb = ma.value(), mb.value()
    return (b, a) if math.isfinite(va) and math.isfinite(vb) and vb > va else (a, b)


def _row(kind: str, a: str, b: str, res=None, note: str = "", comparable: bool = True) -> dict:
    nan = math.nan
    if res is None:
        return {"measure": kind, "a": a, "b": b, "diff": nan, "se": nan, "ci_low": nan, "ci_high": nan,
                "p_value": nan, "test": "", "n_items": None, "comparable": comparable, "note": note}
    return {"measure": kind, "a": a, "b": b, "diff": res.diff, "se": res.se, "ci_low": res.low, "ci_high": res.high,
            "p_value": res.p_value, "test": res.test, "n_items": int(res.n), "comparable": comparable,
            "note": res.note}


def method_pairs(measures: dict, order: list, seed: int = 0, held: dict | None = None):
    """Every pair of ``order``'s methods on each measure, Holm-adjusted within each measure.

    ``measures``: {method: {"target": Measure, "general": Measure}} (either may be missing, e.g.
    :func:`peftarena_cli.report.uncertainty.method_measures`); ``order``: the methods to pair, in
    leaderboard order (without the base). Differences in points (a − b). Returns a DataFrame with
    :data:`PAIR_COLUMNS`, sorted: target then general; within each, comparable pairs first, the
    significant ones first, then by decreasing difference. ``held``: {method: {"salt", "half"}} of the
    methods scored on a held-out half (a rewound point picked by a split): a pair involving one is
    compared on the items in the held-out half of each such method, on both sides (still paired).
    """
    import pandas as pd

    from peftarena_cli.report.leaderboard import held_out_measures

    held = held or {}
    rows = []
    for kind in MEASURES:
        for x, y in combinations(order, 2):
            rules = [held[m] for m in (x, y) if m in held]
            if rules:
                pair = {}
                for m in (x, y):
                    me = measures.get(m, {})
                    for rule in rules:
                        me = held_out_measures(me, rule)
                    pair[m] = me
                a, b = _orient(pair, kind, x, y)
                row = _pair_row(kind, a, b, pair, seed)
                row["note"] = "; ".join(v for v in (row["note"], "on the held-out half of "
                                                    + " and ".join(m for m in (x, y) if m in held)) if v)
                rows.append(row)
                continue
            a, b = _orient(measures, kind, x, y)
            rows.append(_pair_row(kind, a, b, measures, seed))
    df = pd.DataFrame(rows, columns=[c for c in PAIR_COLUMNS if c not in ("family", "p_holm", "significant")])
    df["n_items"] = df["n_items"].astype("Int64")
    df = adjust_pairs(df, "measure")[PAIR_COLUMNS]
    if not len(df):
        return df.reset_index(drop=True)
    key = pd.DataFrame({"m": df["measure"].map(MEASURES.index), "c": ~df["comparable"], "s": ~df["significant"],
                        "d": -df["diff"].fillna(-math.inf)})
    order_idx = key.sort_values(["m", "c", "s", "d"], kind="stable").index
    return df.loc[order_idx].reset_index(drop=True)


def _pair_row(kind: str, a: str, b: str, measures: dict, seed: int) -> dict:
    from peftarena_cli.report.uncertainty import compare

    missing = [m for m in (a, b) if measures.get(m, {}).get(kind) is None]
    if missing:
        return _row(kind, a, b, note=f"not comparable: no per-sample {kind} rows for {' or '.join(missing)}",
                    comparable=False)
    res, why = compare(measures[a][kind], measures[b][kind], names=(a, b), seed=seed)
    if res is None:
        return _row(kind, a, b, note=f"not comparable: {why}", comparable=False)
    return _row(kind, a, b, res)


def pairs_summary(df) -> list[str]:
    """One sentence per measure: how many pairs are distinguishable after Holm, how many not comparable."""
    out = []
    if df is None or not len(df):
        return out
    for kind in MEASURES:
        g = df[df["measure"] == kind]
        if not len(g):
            continue
        n_cmp = int(g["comparable"].sum())
        sig = g[g["significant"]]
        s = (f"{kind}: {len(sig)} of {n_cmp} comparable pairs distinguishable after Holm's adjustment over those "
             f"{n_cmp}")
        if len(sig):
            s += " (" + ", ".join(f"{r['a']} > {r['b']}" for r in sig.to_dict("records")) + ")"
        if n_cmp < len(g):
            s += f"; {len(g) - n_cmp} not comparable"
        out.append(s)
    return out


def _num(v, signed: bool = False) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    return f"{float(v):+.2f}" if signed else f"{float(v):.2f}"


def pairs_markdown(df) -> list[str]:
    """Markdown lines of the "Method against method" section (none when the report has < 2 methods)."""
    import pandas as pd

    from peftarena_cli.report.leaderboard import _pval

    if df is None or not len(df):
        return []
    lines = ["", "## Method against method", "",
             "Every pair of fine-tuned methods, paired on the same items: a − b in points, `a` the method ahead on "
             "the point estimate; 95% stratified paired bootstrap interval; p from McNemar's exact test (one binary "
             "task) or a stratified sign-flip permutation test; p (Holm) adjusted over all comparable pairs of the "
             "same measure. ✓ = p (Holm) < 0.05 and the interval excludes 0. Table: `pairwise.parquet`.", ""]
    lines += [f"- {s}." for s in pairs_summary(df)]
    lines += ["", "| measure | a − b | difference [95% CI] | p | p (Holm) | test | n | significant |",
              "|---|---|---|---|---|---|---|---|"]
    for r in df.to_dict("records"):
        if not r["comparable"]:
            why = str(r["note"]).replace("|", "/")
            lines.append(f"| {r['measure']} | {r['a']} − {r['b']} | {why} | – | – | – | – | |")
            continue
        ci = (f" [{_num(r['ci_low'], True)}, {_num(r['ci_high'], True)}]"
              if math.isfinite(r["ci_low"]) else (f" ({r['note']})" if r["note"] else ""))
        n = r["n_items"]
        lines.append(f"| {r['measure']} | {r['a']} − {r['b']} | {_num(r['diff'], True)}{ci} | {_pval(r['p_value'])} | "
                     f"{_pval(r['p_holm'])} | {r['test'] or '–'} | {'–' if pd.isna(n) else int(n)} | "
                     f"{'✓' if r['significant'] else ''} |")
    return lines
