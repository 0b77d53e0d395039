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


def fisher_interval(r: float, n: int, conf: float = 0.95) -> tuple[float, float]:
    """The Fisher-z interval tanh(atanh r ± z/√(n−3)) of Pearson's r; NaN for n < 4 or undefined r."""
    from statistics import NormalDist

    if not math.isfinite(r) or n < 4:
        return math.nan, math.nan
    r = max(min(r, 1 - 1e-12), -1 + 1e-12)
    z = NormalDist().inv_cdf(0.5 + conf / 2) / math.sqrt(n - 3)
    return math.tanh(math.atanh(r) - z), math.tanh(math.atanh(r) + z)


def spearman_p(x, y, exact_max: int = 8, R: int = 20000, seed: int = 0) -> float:
    """Two-sided permutation p-value of Spearman's ρ: exact over all n! orders for n ≤ ``exact_max``,
    else R random permutations (p = (1 + #|ρ*| ≥ |ρ|) / (R + 1)). NaN when ρ is undefined."""
    import itertools

    rho = spearman(x, y)
    if not math.isfinite(rho):
        return math.nan
    rx, ry = average_ranks(x), average_ranks(y)
    n = len(rx)
    tol = 1e-12
    if n <= exact_max:
        hits = total = 0
        for perm in itertools.permutations(range(n)):
            total += 1
            v = pearson(rx, ry[list(perm)])
            hits += bool(math.isfinite(v) and abs(v) >= abs(rho) - tol)
        return hits / total
    rng = np.random.default_rng(seed)
    hits = sum(abs(pearson(rx, ry[rng.permutation(n)])) >= abs(rho) - tol for _ in range(R))
    return (1 + hits) / (R + 1)


def correlation_table(leaderboard, metrics: list[str] | None = None):
    """Rows ``metric, against, pearson, spearman, n, pearson_low, pearson_high, spearman_p`` for each
    metric × (forgetting, target_gain)."""
    import pandas as pd

    from peftarena_cli.report.leaderboard import geometry_metric_columns

    df = leaderboard[~leaderboard["is_base"]]
    metrics = metrics if metrics is not None else geometry_metric_columns(leaderboard)
    rows = []
    for m in metrics:
        for against in TARGETS:
            sub = df[[m, against]].astype(float).replace([np.inf, -np.inf], np.nan).dropna()
            r = pearson(sub[m], sub[against])
            lo, hi = fisher_interval(r, len(sub))
            rows.append({"metric": m, "against": against, "pearson": r, "pearson_low": lo, "pearson_high": hi,
                         "spearman": spearman(sub[m], sub[against]),
                         "spearman_p": spearman_p(sub[m].to_numpy(), sub[against].to_numpy()) if len(sub) >= 3 else math.nan,
                         "n": int(len(sub))})
    return pd.DataFrame(rows, columns=["metric", "against", "pearson", "spearman", "n", "pearson_low", "pearson_high",
                                       "spearman_p"])
