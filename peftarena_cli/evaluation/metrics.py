"""Aggregate metrics over per-sample correctness: avg@n, unbiased pass@k, maj@k.

All of them are recomputable offline from a per-sample table (one row per (id, sample) with a
boolean ``correct`` and the ``extracted`` answer).
"""

from __future__ import annotations

from collections import Counter
from math import comb


def pass_at_k(n: int, c: int, k: int) -> float:
    """The unbiased estimator 1 - C(n-c, k) / C(n, k) (Chen et al., 2021)."""
    if k > n:
        raise ValueError(f"k={k} is larger than n={n}")
    if n - c < k:
        return 1.0
    return 1.0 - comb(n - c, k) / comb(n, k)


def avg_at_n(correct: list[bool]) -> float:
    return sum(bool(c) for c in correct) / len(correct) if correct else 0.0


def maj_at_k(extracted: list, correct: list[bool], k: int) -> float:
    """1 if the most frequent extracted answer among the first ``k`` samples is correct.

    Ties go to the answer seen first; unparsable answers (empty/None) do not vote (all empty: 0).
    """
    votes = [(e, c) for e, c in zip(extracted[:k], correct[:k]) if e not in (None, "")]
    if not votes:
        return 0.0
    counts = Counter(e for e, _ in votes)
    best = max(counts.values())
    for e, c in votes:
        if counts[e] == best:
            return float(bool(c))
    return 0.0  # pragma: no cover


def parse_ks(ks, n: int) -> list[int]:
    from peftarena_cli.errors import UsageError

    if ks is None:
        out = [1]
        while out[-1] * 2 <= n:
            out.append(out[-1] * 2)
        if out[-1] != n:
            out.append(n)
        return out
    if isinstance(ks, str):
        try:
            ks = [int(x) for x in ks.split(",")]  # an empty entry (1,,2) is a typo, not a skipped value
        except ValueError:
            raise UsageError(f"--k must be a comma-separated list of integers, got {ks!r}") from None
    ks = sorted(set(int(k) for k in ks))
    bad = [k for k in ks if k < 1 or k > n]
    if bad:
        raise UsageError(f"k={bad[0]} is not between 1 and the number of samples n={n}",
                         hint="pass -n at least as large as the largest k")
    return ks


def sample_metrics(per_sample, ks: list[int], value_col: str = "correct"):
    """Per-task rows {metric, value (percent), n (problems)} of avg@n, pass@k and maj@k."""
    rows = []
    groups = per_sample.sort_values("sample").groupby("id", sort=False)
    n_samples = int(per_sample["sample"].max()) + 1
    corr = [list(g[value_col].astype(bool)) for _, g in groups]
    extr = [list(g["extracted"]) for _, g in groups]
    n_items = len(corr)
    rows.append({"metric": f"avg@{n_samples}", "value": 100.0 * sum(avg_at_n(c) for c in corr) / max(n_items, 1), "n": n_items})
    for k in ks:
        v = sum(pass_at_k(len(c), sum(c), k) for c in corr) / max(n_items, 1)
        rows.append({"metric": f"pass@{k}", "value": 100.0 * v, "n": n_items})
    for k in ks:
        if k > 1:
            v = sum(maj_at_k(e, c, k) for e, c in zip(extr, corr)) / max(n_items, 1)
            rows.append({"metric": f"maj@{k}", "value": 100.0 * v, "n": n_items})
    return rows


def per_item_values(per_sample, metric: str, value_col: str = "correct") -> list[float]:
    """Per-problem values (0..1) of ``avg@n``, ``pass@k`` or ``maj@k``, in ``id`` order of first
    appearance: the unit the summary's interval resamples (docs/eval.md, "Intervals")."""
    groups = per_sample.sort_values("sample").groupby("id", sort=False)
    out = []
    for _, g in groups:
        c = list(g[value_col].fillna(False).astype(bool)) if hasattr(g[value_col], "fillna") else list(g[value_col])
        if metric.startswith("pass@"):
            out.append(pass_at_k(len(c), sum(c), int(metric[5:])))
        elif metric.startswith("maj@"):
            out.append(maj_at_k(list(g["extracted"]), c, int(metric[4:])))
        else:
            out.append(avg_at_n(c))
    return out
