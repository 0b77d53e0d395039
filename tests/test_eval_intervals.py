"""Interval columns of the eval summaries, recomputed from per-sample rows (docs/eval.md, "Intervals")."""

import json
import math

import numpy as np
import pandas as pd
import pytest

from peftarena_cli import stats
from peftarena_cli.evaluation.api import general_summary, rescore_table  # noqa: F401
from peftarena_cli.evaluation.scoring import summarize

Z = 1.959963984540054


def _rows(task, scorer, n, correct, samples=1, subtasks=None, inst=None):
    rows = []
    for i in range(n):
        for s in range(samples):
            c = correct[i][s] if samples > 1 else correct[i]
            rows.append({"task": task, "subtask": subtasks[i] if subtasks else None, "id": f"{task}-{i}", "sample": s,
                         "correct": bool(c), "correct_strict": bool(c), "correct_flexible": bool(c),
                         "prompt_strict": all(inst[i]) if inst else None, "prompt_loose": all(inst[i]) if inst else None,
                         "inst_strict": inst[i] if inst else None, "inst_loose": inst[i] if inst else None,
                         "extracted": "1" if c else "2", "meta": json.dumps({"scorer": scorer})})
    df = pd.DataFrame(rows)
    for c in ("correct_strict", "correct_flexible", "prompt_strict", "prompt_loose"):
        df[c] = df[c].astype("boolean")
    return df


def test_binary_target_rows_are_wilson():
    correct = [i % 4 == 0 for i in range(40)]
    rows, primary = summarize(_rows("arith", "math", 40, correct), "math", "arith")
    r = next(r for r in rows if r["metric"] == "avg@1")
    w = stats.wilson(10, 40)
    assert r["estimator"] == "wilson" and r["ci_low"] == pytest.approx(100 * w.low) and r["ci_high"] == pytest.approx(100 * w.high)
    assert all("se" in r and "ci_low" in r for r in rows)


def test_avg_at_n_resamples_items_not_samples():
    rng = np.random.default_rng(0)
    corr = [list(rng.random(4) < q) for q in rng.random(30)]
    rows, _ = summarize(_rows("arith", "math", 30, corr, samples=4), "math", "arith", ks=[1, 4])
    item_means = np.array([np.mean(c) for c in corr])
    r = next(r for r in rows if r["metric"] == "avg@4")
    assert r["estimator"] == "item-mean normal"
    assert r["se"] == pytest.approx(100 * item_means.std(ddof=1) / math.sqrt(30))
    p4 = next(r for r in rows if r["metric"] == "pass@4")
    vals = np.array([float(any(c)) for c in corr])
    assert p4["value"] == pytest.approx(100 * vals.mean()) and p4["ci_high"] > p4["ci_low"]


def test_general_score_interval_comes_from_its_parts():
    rng = np.random.default_rng(3)
    inst = [list(rng.random(rng.integers(1, 4)) < 0.6) for _ in range(20)]
    subs = ["a" if i % 2 else "b" for i in range(20)]
    parts = {
        "ifeval_builtin": ("ifeval", _rows("ifeval_builtin", "ifeval", 20, [all(x) for x in inst], inst=inst)),
        "bbh_builtin": ("bbh", _rows("bbh_builtin", "bbh", 20, list(rng.random(20) < 0.3), subtasks=subs)),
        "facts": ("facts", _rows("facts", "facts", 20, list(rng.random(20) < 0.5))),
    }
    summ = general_summary(parts)
    assert {"se", "ci_low", "ci_high", "estimator", "note"} <= set(summ.columns)
    assert {"task", "metric", "value", "n"} <= set(summ.columns)
    inst_row = summ[(summ["task"] == "ifeval_builtin") & (summ["metric"] == "inst_strict")].iloc[0]
    y = [sum(x) for x in inst]
    m = [len(x) for x in inst]
    assert inst_row["estimator"] == "cluster ratio"
    assert inst_row["se"] == pytest.approx(100 * stats.ratio_cluster(y, m).se)
    prim = [summ[(summ["task"] == "ifeval_builtin") & (summ["metric"] == "inst_strict")].iloc[0],
            summ[(summ["task"] == "bbh_builtin") & (summ["metric"] == "accuracy")].iloc[0],
            summ[(summ["task"] == "facts") & (summ["metric"] == "exact_match")].iloc[0]]
    g = summ.iloc[-1]
    assert g["se"] == pytest.approx(math.sqrt(sum(p["se"] ** 2 for p in prim)) / 3)
    assert g["ci_low"] == pytest.approx(g["value"] - Z * g["se"])
    # and the paired machinery sees the same composite
    per_sample = pd.concat([p[1] for p in parts.values()], ignore_index=True)
    assert 100 * stats.measure_of(per_sample).value() == pytest.approx(g["value"])


def test_one_item_gives_nan_with_a_note():
    rows, _ = summarize(_rows("facts", "facts", 1, [True]), "facts", "facts")
    r = rows[0]
    assert math.isnan(r["ci_low"]) and math.isnan(r["se"]) and "n < 2" in r["note"]
