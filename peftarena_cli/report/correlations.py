"""Pearson and Spearman correlations of each geometry metric against forgetting and target gain.

As in the study: one point per fine-tuned method (the base is excluded), methods where either value
is missing are dropped. Spearman is Pearson on average ranks (ties share their mean rank).
Fewer than 3 points, or a constant column, give NaN.
"""

from __future__ import annotations

import math

import numpy as np

TARGETS = ("forgetting", "target_gain")


def pearson(x, y) -> float:
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    if len(x) < 3:
        return math.nan
    xc = x - x.mean()
    yc = y - y.mean()
    den = math.sqrt(float((xc * xc).sum()) * float((yc * yc).sum()))
    if den == 0.0:
        return math.nan
    return float((xc * yc).sum() / den)


def average_ranks(x) -> np.ndarray:
    """Ranks 1..n, ties given the mean of the ranks they span."""
    x = np.asarray(x, dtype=float)
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(len(x), dtype=float)
    sx = x[order]
    i = 0
    while i < len(x):
        j = i
        while j + 1 < len(x) and sx[j + 1] == sx[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2.0 + 1.0
        i = j + 1
    return ranks


def spearman(x, y) -> float:
    return pearson(average_ranks(x), average_ranks(y))


def correlation_table(leaderboard, metrics: list[str] | None = None):
    """Rows ``metric, against, pearson, spearman, n`` for each metric × (forgetting, target_gain)."""
    import pandas as pd

    from peftarena_cli.report.leaderboard import geometry_metric_columns

    df = leaderboard[~leaderboard["is_base"]]
    metrics = metrics if metrics is not None else geometry_metric_columns(leaderboard)
    rows = []
    for m in metrics:
        for against in TARGETS:
            sub = df[[m, against]].astype(float).replace([np.inf, -np.inf], np.nan).dropna()
            rows.append({"metric": m, "against": against, "pearson": pearson(sub[m], sub[against]),
                         "spearman": spearman(sub[m], sub[against]), "n": int(len(sub))})
    return pd.DataFrame(rows, columns=["metric", "against", "pearson", "spearman", "n"])
