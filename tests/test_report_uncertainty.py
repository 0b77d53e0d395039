"""The report's intervals, paired tests, frontier over curve points and curve/eval mismatch notes."""

import json
import math

import numpy as np
import pandas as pd
import pytest

from peftarena_cli import stats
from peftarena_cli.artifacts.tables import Provenance, write_table
from peftarena_cli.report.build import build_report, write_report


def _samples(task, scorer, correct, alpha=None, model=None):
    df = pd.DataFrame({"task": task, "subtask": None, "id": [f"{task}-{i}" for i in range(len(correct))], "sample": 0,
                       "prompt": "p", "completion": "c", "extracted": "", "reference": "1",
                       "correct": [bool(c) for c in correct], "meta": json.dumps({"scorer": scorer})})
    if alpha is not None:
        df["alpha"] = alpha
    if model is not None:
        df["model"] = model
    return df


def _summary(kind, value):
    metric = "target_score" if kind == "target" else "general_score"
    return pd.DataFrame({"task": [kind], "metric": [metric], "value": [value], "n": [1]})


def _write_method(d, t, g, curve=None):
    d.mkdir(parents=True, exist_ok=True)
    write_table(_samples("arith", "math", t), d / "eval_target.parquet", Provenance(command="eval-target"))
    write_table(_summary("target", 100 * np.mean(t)), d / "eval_target_summary.parquet", Provenance(command="eval-target"))
    write_table(_samples("facts", "facts", g), d / "eval_general.parquet", Provenance(command="eval-general"))
    write_table(_summary("general", 100 * np.mean(g)), d / "eval_general_summary.parquet", Provenance(command="eval-general"))


@pytest.fixture
def runs(tmp_path):
    rng = np.random.default_rng(0)
    n = 120
    bt, bg = rng.random(n) < 0.1, rng.random(n) < 0.5
    lt = bt | (rng.random(n) < 0.5)        # a large real gain
    lg = bg & (rng.random(n) < 0.97)       # a small loss: not distinguishable
    _write_method(tmp_path / "runs" / "base", bt, bg)
    _write_method(tmp_path / "runs" / "lora", lt, lg)
    # a curve point at α = 0.5 that beats the base on both axes (same items)
    ht, hg = bt | (rng.random(n) < 0.3), bg | (rng.random(n) < 0.1)
    interp = tmp_path / "runs" / "lora" / "interp"
    interp.mkdir()
    tt = pd.concat([_samples("arith", "math", bt, 0.0), _samples("arith", "math", ht, 0.5), _samples("arith", "math", lt, 1.0)])
    gg = pd.concat([_samples("facts", "facts", bg, 0.0), _samples("facts", "facts", hg, 0.5), _samples("facts", "facts", lg, 1.0)])
    write_table(tt, interp / "target.target-samples.parquet", Provenance(command="interpolate"))
    write_table(gg, interp / "general.general-samples.parquet", Provenance(command="interpolate"))
    curve = pd.DataFrame({"alpha": [0.0, 0.5, 1.0], "path": "native", "target": [100 * bt.mean(), 100 * ht.mean(), 100 * lt.mean()],
                          "general": [100 * bg.mean(), 100 * hg.mean(), 100 * lg.mean()]})
    write_table(curve, tmp_path / "runs" / "lora" / "curve.parquet", Provenance(command="interpolate"))
    return tmp_path / "runs", (bt, bg, lt, lg, ht, hg)


def test_paired_columns_match_a_direct_computation(runs):
    root, (bt, bg, lt, lg, ht, hg) = runs
    rep = build_report([str(root)])
    lb = rep.leaderboard.set_index("method")
    b, c = int((lt & ~bt).sum()), int((~lt & bt).sum())
    assert lb.loc["lora", "target_gain_test"] == "mcnemar exact"
    assert lb.loc["lora", "target_gain_p"] == pytest.approx(stats.mcnemar(b, c)[0])
    assert lb.loc["lora", "target_gain_sig"]
    assert lb.loc["lora", "target_gain_low"] > 0
    b2, c2 = int((bg & ~lg).sum()), int((~bg & lg).sum())
    assert lb.loc["lora", "forgetting_p"] == pytest.approx(stats.mcnemar(b2, c2)[0])
    assert lb.loc["lora", "forgetting_low"] <= lb.loc["lora", "forgetting"] <= lb.loc["lora", "forgetting_high"]
    w = stats.wilson(int(lt.sum()), len(lt))
    assert lb.loc["lora", "target_low"] == pytest.approx(100 * w.low)
    md_lines = [s for s in rep.statements if s.startswith("lora's target gain")]
    assert md_lines and "significant" in md_lines[0]


def test_frontier_includes_curve_points(runs):
    root, _ = runs
    rep = build_report([str(root)])
    pts = rep.points.set_index("point")
    assert "lora α=0.5" in pts.index and pts.loc["lora α=0.5", "pareto"]
    # α = 0.5 beats the base on both axes: the base is off the frontier, in the leaderboard too
    assert not pts.loc["base", "pareto"]
    assert not bool(rep.leaderboard.set_index("method").loc["base", "pareto"])
    assert np.isfinite(pts.loc["lora α=0.5", "general_low"])
    assert any(s.startswith("Frontier neighbours") for s in rep.statements)


def test_curve_on_other_items_is_noted(runs, tmp_path):
    root, (bt, bg, lt, lg, ht, hg) = runs
    interp = root / "lora" / "interp"
    tt = pd.concat([_samples("arith", "math", bt[:60], 0.0), _samples("arith", "math", ht[:60], 0.5),
                    _samples("arith", "math", lt[:60], 1.0)])
    write_table(tt, interp / "target.target-samples.parquet", Provenance(command="interpolate"))
    rep = build_report([str(root)])
    assert any("lora curve" in n and "α=0 target" in n and "60 items" in n for n in rep.notes)


def test_single_method_says_correlations_need_three(runs, tmp_path):
    root, _ = runs
    write_table(pd.DataFrame({"module": ["m"], "effective_rank": [2.0], "delta_fro": [1.0]}),
                root / "lora" / "spectrum_summary.parquet", Provenance(command="spectrum"))
    rep = build_report([str(root)])
    write_report(rep, tmp_path / "rep")
    md = (tmp_path / "rep" / "leaderboard.md").read_text()
    assert "Correlations need at least 3 fine-tuned methods" in md and "| – |" not in md.split("## Correlations")[1]
    assert " * |" in md  # the significant gain is marked
    assert (tmp_path / "rep" / "points.parquet").is_file()


def test_fisher_and_spearman_permutation():
    from peftarena_cli.report.correlations import fisher_interval, spearman_p

    lo, hi = fisher_interval(0.5, 28)
    z = 1.959963984540054 / 5
    assert lo == pytest.approx(math.tanh(math.atanh(0.5) - z)) and hi == pytest.approx(math.tanh(math.atanh(0.5) + z))
    assert math.isnan(fisher_interval(0.9, 3)[0])
    # n = 4, perfectly monotone: only the identity and the reversal reach |ρ| = 1 -> 2/24
    assert spearman_p([1, 2, 3, 4], [2, 4, 6, 9]) == pytest.approx(2 / 24)


def test_drift_table_becomes_a_leaderboard_column(runs):
    root, _ = runs
    kl = [0.1, 0.3, 0.2, 0.4]
    df = pd.DataFrame({"alpha": 1.0, "prompt_set": ["general"] * 4, "task": "facts", "id": list("abcd"),
                       "source": "greedy", "n_tokens": 5, "kl": kl})
    write_table(df, root / "lora" / "drift.parquet", Provenance(command="drift"))
    rep = build_report([str(root)])
    lb = rep.leaderboard.set_index("method")
    assert lb.loc["lora", "drift_kl_general"] == pytest.approx(np.mean(kl))
    assert lb.loc["lora", "drift_kl_general_hw"] == pytest.approx(1.959963984540054 * np.std(kl, ddof=1) / 2)
    assert "drift_kl_general" in set(rep.correlations["metric"]) and "drift_kl_general_hw" not in set(rep.correlations["metric"])


def test_moving_average_direct():
    from peftarena_cli.report.plots import moving_average

    y = np.array([1.0, 2.0, 4.0, 8.0, 16.0])
    m = moving_average(y, 3)
    assert m == pytest.approx([1.5, 7 / 3, 14 / 3, 28 / 3, 12.0])
    g = moving_average(y, 3, log=True)
    assert g[2] == pytest.approx((2 * 4 * 8) ** (1 / 3))
