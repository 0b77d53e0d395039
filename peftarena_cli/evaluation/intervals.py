"""Standard errors and 95 % intervals of the summary rows, recomputed from the per-sample rows
(so re-scoring keeps them). Estimators per metric, chosen by the ``summary`` of the scorer's kind
(docs/eval.md, "Intervals"; :mod:`peftarena_cli.scorer_kinds`):

* one binary value per item (accuracy with one sample, exact match, prompt-level instruction
  following, one subtask, maj@k): Wilson;
* avg@n and pass@k over n > 1 samples, strict/flexible accuracy: the per-item value's mean ± z·SE
  (items, not samples, are resampled);
* instruction-level accuracy: the cluster-robust ratio estimator (instructions within prompts);
* a subtask average, target_score, the general score: the mean of independent parts,
  se = √(Σ se²) / P.

Columns added to each row: ``se``, ``ci_low``, ``ci_high`` (percent, like ``value``),
``estimator``, ``note`` (why an interval is undefined: fewer than 2 items gives NaN).
"""

from __future__ import annotations

import math

import numpy as np

from peftarena_cli import scorer_kinds, stats
from peftarena_cli.evaluation import metrics

INTERVAL_COLUMNS = ["se", "ci_low", "ci_high", "estimator", "note"]


def _put(row: dict, iv: stats.Interval) -> dict:
    row.update(iv.scaled(100.0).as_dict())
    return row


def _interval_from_row(row: dict) -> stats.Interval:
    """The Interval of a summary row (percent -> proportion units)."""
    se = row.get("se", math.nan)
    se = math.nan if se is None else float(se)
    return stats.Interval(float(row["value"]) / 100.0, se / 100.0, float(row.get("ci_low", math.nan)) / 100.0,
                          float(row.get("ci_high", math.nan)) / 100.0, str(row.get("estimator") or ""),
                          int(row.get("n") or 0), str(row.get("note") or ""))


def add_intervals(rows: list[dict], df, scorer: str, task_name: str) -> list[dict]:
    """Add interval columns to the summary rows of one task (in place; returns ``rows``). The
    estimators follow the ``summary`` of the scorer's kind (:mod:`peftarena_cli.scorer_kinds`)."""
    try:
        summary = scorer_kinds.kind_of(scorer).summary
    except ValueError:
        return rows
    if summary == "samples":
        for r in rows:
            if r["task"] != task_name:
                continue
            m = r["metric"]
            if m.startswith(("avg@", "pass@", "maj@")) or m == "accuracy":
                vals = metrics.per_item_values(df, "avg@n" if m == "accuracy" else m)
            elif m in ("accuracy_strict", "accuracy_flexible"):
                col = "correct_strict" if m == "accuracy_strict" else "correct_flexible"
                vals = [float(np.mean(g[col].fillna(False).astype(bool))) for _, g in df.groupby("id", sort=False)]
            else:
                continue
            _put(r, stats.binary_or_mean(vals))
    elif summary == "instructions":
        d = df[df["sample"] == 0]
        for r in rows:
            m = r["metric"]
            if m in ("prompt_strict", "prompt_loose"):
                x = d[m].fillna(False).astype(bool)
                _put(r, stats.wilson(float(x.sum()), len(x)))
            elif m in ("inst_strict", "inst_loose"):
                y = [float(sum(bool(b) for b in x)) for x in d[m]]
                n = [float(len(x)) for x in d[m]]
                _put(r, stats.ratio_cluster(y, n))
    elif summary == "subtasks":
        d = df[df["sample"] == 0]
        parts = []
        for sub, g in d.groupby("subtask", sort=True):
            iv = stats.wilson(float(g["correct"].astype(bool).sum()), len(g))
            parts.append(iv)
            for r in rows:
                if r["task"] == f"{task_name}/{sub}":
                    _put(r, iv)
        for r in rows:
            if r["task"] == task_name:
                _put(r, stats.combine_mean(parts, estimator="mean of subtasks", n=len(d)))
    elif summary == "exact_match":
        d = df[df["sample"] == 0]
        for r in rows:
            if r["task"] == task_name:
                x = d["correct"].astype(bool)
                _put(r, stats.wilson(float(x.sum()), len(x)))
    return rows


def aggregate_row(task: str, metric: str, value: float, n: int, part_rows: list[dict], estimator: str) -> dict:
    """An aggregate summary row (target_score, the general score) whose interval comes from its parts."""
    row = {"task": task, "metric": metric, "value": value, "n": n}
    parts = [_interval_from_row(r) for r in part_rows if r is not None]
    if len(parts) != len(part_rows) or not parts:
        row.update({"se": math.nan, "ci_low": math.nan, "ci_high": math.nan, "estimator": estimator,
                    "note": "a part has no interval"})
        return row
    iv = parts[0] if len(parts) == 1 else stats.combine_mean(parts, estimator=estimator)
    if len(parts) == 1:
        iv = stats.Interval(iv.value, iv.se, iv.low, iv.high, iv.estimator, iv.n, iv.note)
    row.update(iv.scaled(100.0).as_dict())
    row["value"] = value
    return row
