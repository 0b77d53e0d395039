"""Estimators of peftarena_cli.stats against direct computations (docs/eval.md, "Intervals")."""

import math

import numpy as np
import pandas as pd
import pytest

from peftarena_cli import stats
from peftarena_cli.errors import IncompatibleInputs

Z = 1.959963984540054


def test_wilson_matches_the_formula():
    k, n = 7, 20
    p = k / n
    centre = (p + Z * Z / (2 * n)) / (1 + Z * Z / n)
    half = Z * math.sqrt(p * (1 - p) / n + Z * Z / (4 * n * n)) / (1 + Z * Z / n)
    iv = stats.wilson(k, n)
    assert iv.low == pytest.approx(centre - half, abs=1e-12)
    assert iv.high == pytest.approx(centre + half, abs=1e-12)
    assert iv.se == pytest.approx(half / Z, abs=1e-12)
    # at 0 % the interval is not ± 0: [0, z²/(n + z²)]
    iv0 = stats.wilson(0, 32)
    assert iv0.low == 0.0 and iv0.high == pytest.approx(Z * Z / (32 + Z * Z), rel=1e-9) and iv0.se > 0


def test_bootstrap_matches_the_analytic_binomial_interval_on_a_large_sample():
    rng = np.random.default_rng(5)
    x = (rng.random(4000) < 0.3).astype(float)
    p = x.mean()
    se = math.sqrt(p * (1 - p) / len(x))
    boot = stats.bootstrap_mean(x, B=4000, seed=1)
    assert boot.low == pytest.approx(p - Z * se, abs=0.004)
    assert boot.high == pytest.approx(p + Z * se, abs=0.004)
    assert boot.se == pytest.approx(se, rel=0.08)
    w = stats.wilson(x.sum(), len(x))
    assert w.low == pytest.approx(p - Z * se, abs=0.001) and w.high == pytest.approx(p + Z * se, abs=0.001)


def test_cluster_ratio_se_matches_the_cluster_bootstrap_and_a_direct_sum():
    rng = np.random.default_rng(2)
    m = rng.integers(1, 4, size=3000).astype(float)
    # instructions of a prompt are correlated: a prompt-level effect
    pr = np.clip(rng.normal(0.55, 0.25, size=3000), 0, 1)
    y = np.array([rng.binomial(int(k), q) for k, q in zip(m, pr)], dtype=float)
    iv = stats.ratio_cluster(y, m)
    r = y.sum() / m.sum()
    n = len(y)
    direct = math.sqrt(n / (n - 1) * sum((yi - r * mi) ** 2 for yi, mi in zip(y, m))) / m.sum()
    assert iv.value == pytest.approx(r) and iv.se == pytest.approx(direct, rel=1e-12)
    boot = stats.cluster_bootstrap_ratio(y, m, B=3000, seed=3)
    assert boot.se == pytest.approx(iv.se, rel=0.08)
    # instructions treated as independent would understate the error
    naive = math.sqrt(r * (1 - r) / m.sum())
    assert iv.se > 1.1 * naive


def test_mcnemar_by_hand():
    # b = 2, c = 8: X ~ Bin(10, 1/2); P(X <= 2) = (1 + 10 + 45) / 1024
    p, mid = stats.mcnemar(2, 8)
    assert p == pytest.approx(2 * 56 / 1024)
    assert mid == pytest.approx(2 * (11 + 0.5 * 45) / 1024)
    assert stats.mcnemar(0, 0) == (1.0, 1.0)
    assert stats.mcnemar(5, 5)[0] == 1.0
    assert stats.mcnemar(0, 6)[0] == pytest.approx(2 / 64)


def test_mean_normal_and_undefined_intervals():
    x = np.array([0.0, 0.5, 1.0, 0.25])
    iv = stats.mean_normal(x)
    se = x.std(ddof=1) / 2
    assert iv.se == pytest.approx(se) and iv.low == pytest.approx(max(0, x.mean() - Z * se))
    for iv in (stats.wilson(1, 1), stats.mean_normal([0.3]), stats.ratio_cluster([1], [2]), stats.bootstrap_mean([1.0])):
        assert math.isnan(iv.low) and math.isnan(iv.high) and math.isnan(iv.se) and "n < 2" in iv.note
    c = stats.combine_mean([stats.wilson(1, 1), stats.wilson(3, 10)])
    assert math.isnan(c.se) and c.note


def test_combine_mean_of_parts():
    a, b = stats.wilson(3, 10), stats.ratio_cluster([1, 2, 0, 3], [2, 2, 1, 3])
    c = stats.combine_mean([a, b])
    assert c.value == pytest.approx((a.value + b.value) / 2)
    assert c.se == pytest.approx(math.sqrt(a.se ** 2 + b.se ** 2) / 2)


def _per_sample(task, scorer, ids, correct, subtasks=None, inst=None):
    import json

    rows = []
    for j, (i, c) in enumerate(zip(ids, correct)):
        rows.append({"task": task, "subtask": subtasks[j] if subtasks else None, "id": i, "sample": 0, "correct": bool(c),
                     "inst_strict": inst[j] if inst else None, "extracted": "", "meta": json.dumps({"scorer": scorer})})
    return pd.DataFrame(rows)


def test_paired_binary_uses_mcnemar_and_agrees_with_the_sign_flip_test():
    rng = np.random.default_rng(0)
    n = 300
    a = rng.random(n) < 0.6
    b = a.copy()
    flip = rng.random(n) < 0.2
    b[flip] = rng.random(flip.sum()) < 0.4
    ids = [f"i{k}" for k in range(n)]
    ma = stats.measure_of(_per_sample("arith", "math", ids, a))
    mb = stats.measure_of(_per_sample("arith", "math", ids, b))
    res = stats.paired_difference(ma, mb, B=3000)
    bb, cc = int((a & ~b).sum()), int((~a & b).sum())
    assert res.test == "mcnemar exact"
    assert res.p_value == pytest.approx(stats.mcnemar(bb, cc)[0])
    assert res.diff == pytest.approx((bb - cc) / n)
    # paired bootstrap SE against the analytic paired SE of a difference of proportions
    d = a.astype(float) - b.astype(float)
    assert res.se == pytest.approx(d.std(ddof=1) / math.sqrt(n), rel=0.1)
    # the permutation test reduces to McNemar's conditional test on binary items
    pairs = [(ma.strata[0], mb.strata[0].y)]
    p_perm = stats.sign_flip_p(pairs, res.diff, R=20000, seed=4)
    assert p_perm == pytest.approx(res.p_value, abs=0.02)


def test_paired_composite_general_measure():
    rng = np.random.default_rng(1)
    n = 40
    ids = [f"p{k}" for k in range(n)]
    inst_a = [list(rng.random(rng.integers(1, 4)) < 0.7) for _ in ids]
    inst_b = [[bool(x and rng.random() < 0.8) for x in row] for row in inst_a]
    subs = ["s1" if k % 2 else "s2" for k in range(n)]
    fa, fb = rng.random(n) < 0.5, rng.random(n) < 0.4
    ga, gb = rng.random(n) < 0.5, rng.random(n) < 0.5
    A = pd.concat([_per_sample("ifeval_builtin", "ifeval", ids, [all(x) for x in inst_a], inst=inst_a),
                   _per_sample("facts", "facts", ids, fa), _per_sample("bbh_builtin", "bbh", ids, ga, subtasks=subs)])
    B_ = pd.concat([_per_sample("ifeval_builtin", "ifeval", ids, [all(x) for x in inst_b], inst=inst_b),
                    _per_sample("facts", "facts", ids, fb), _per_sample("bbh_builtin", "bbh", ids, gb, subtasks=subs)])
    ma, mb = stats.measure_of(A), stats.measure_of(B_)
    assert ma.kind == "general"
    # the composite: mean of (inst ratio, facts EM, mean of BBH subtask accuracies)
    ratio = sum(map(sum, inst_a)) / sum(map(len, inst_a))
    bbh = np.mean([ga[[s == "s1" for s in subs]].mean(), ga[[s == "s2" for s in subs]].mean()])
    assert ma.value() == pytest.approx((ratio + fa.mean() + bbh) / 3)
    res = stats.paired_difference(ma, mb)
    assert res.test == "sign-flip permutation" and 0 < res.p_value <= 1
    assert res.low <= res.diff <= res.high
    same = stats.paired_difference(ma, ma)
    assert same.diff == 0.0 and same.low == 0.0 and same.high == 0.0 and same.p_value == 1.0 and not same.significant


def test_general_parts_scored_under_a_protocol_keep_their_strata():
    """Rows scored under a protocol carry ``bbh:study`` / ``nq:lm-eval`` as their scorer: they are
    general parts with their kinds' strata, as the built-in ``bbh`` / ``nq`` rows are. By hand: BBH
    subtask a has 2 items (both right, 1.0), subtask b 4 (one right, 0.25): the subtask average is
    0.625, the item mean 0.5; NQ counts each item's first sample (2 of 4 right, 0.5)."""
    bbh = _per_sample("bbh", "bbh:study", ["a1", "a2", "b1", "b2", "b3", "b4"], [1, 1, 0, 0, 0, 1],
                      subtasks=["a", "a", "b", "b", "b", "b"])
    m = stats.measure_of(bbh)
    assert m.kind == "general"
    assert m.value() == pytest.approx(0.625)
    assert sorted(s.name for s in m.strata) == ["bbh/a", "bbh/b"]
    nq = _per_sample("nq_open", "nq:lm-eval", ["q1", "q2", "q3", "q4"], [1, 0, 1, 0])
    both = stats.measure_of(pd.concat([bbh, nq]))
    assert both.kind == "general" and both.value() == pytest.approx((0.625 + 0.5) / 2)
    assert stats.measure_of(_per_sample("gsm8k", "math:study", ["x", "y"], [1, 0])).kind == "target"


def test_paired_refuses_different_items():
    ids = [f"arith-test-0-{k}" for k in range(10)]
    ma = stats.measure_of(_per_sample("arith", "math", ids, [1] * 10))
    mb = stats.measure_of(_per_sample("arith", "math", ids[:8], [1] * 8))
    with pytest.raises(IncompatibleInputs, match="do not share items in 'arith'.*10 items in A, 8 in B"):
        stats.paired_difference(ma, mb)
    mc = stats.measure_of(_per_sample("gsm8k", "math", ids, [1] * 10))
    with pytest.raises(IncompatibleInputs, match="same tasks"):
        stats.paired_difference(ma, mc)


def test_paired_on_one_item_is_undefined():
    ma = stats.measure_of(_per_sample("arith", "math", ["a"], [1]))
    res = stats.paired_difference(ma, ma)
    assert math.isnan(res.low) and math.isnan(res.p_value) and "n < 2" in res.note
