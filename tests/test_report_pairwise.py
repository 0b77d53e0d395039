"""Method against method in the arena report (report/pairwise.py): paired differences of every pair of
fine-tuned methods, Holm-adjusted within each measure, against direct calls of stats.paired_difference
and hand-worked values; pairs on other items are labelled not comparable, never dropped."""

import json
import math

import numpy as np
import pandas as pd
import pytest

from peftarena_cli import stats
from peftarena_cli.artifacts.tables import Provenance, read_table, write_table
from peftarena_cli.report.build import build_report, write_report

N_TARGET = 40
N_PART = 50
# target: nested sets of correct items (lora ⊇ oft ⊇ vera), so every discordant item of a pair favours
# the method with more correct items and McNemar's exact p is 2·(1/2)^b with b = the count difference
TARGET_CORRECT = {"base": 4, "lora": 30, "oft": 24, "vera": 20}


def _samples(task, scorer, correct, ids=None):
    ids = ids if ids is not None else [f"{task}-{i}" for i in range(len(correct))]
    return pd.DataFrame({"task": task, "subtask": None, "id": ids, "sample": 0, "prompt": "p", "completion": "c",
                         "extracted": "", "reference": "1", "correct": [bool(c) for c in correct],
                         "meta": json.dumps({"scorer": scorer})})


def _summary(kind, value):
    metric = "target_score" if kind == "target" else "general_score"
    return pd.DataFrame({"task": [kind], "metric": [metric], "value": [value], "n": [1]})


def _general_parts(rng):
    """Two general parts (facts, nq): the general measure is their mean, so its test is the sign-flip one."""
    base = {"facts": rng.random(N_PART) < 0.5, "nq": rng.random(N_PART) < 0.4}
    out = {"base": base}
    for name, keep, add in (("lora", 0.9, 0.05), ("oft", 0.75, 0.02), ("vera", 0.98, 0.1)):
        out[name] = {p: (v & (rng.random(N_PART) < keep)) | (rng.random(N_PART) < add) for p, v in base.items()}
    return out


def _write_method(d, target, general, target_ids=None):
    d.mkdir(parents=True, exist_ok=True)
    tdf = _samples("arith", "math", target, target_ids)
    gdf = pd.concat([_samples("facts", "facts", general["facts"]), _samples("nq", "nq", general["nq"])],
                    ignore_index=True)
    write_table(tdf, d / "eval_target.parquet", Provenance(command="eval-target"))
    write_table(_summary("target", 100 * np.mean(target)), d / "eval_target_summary.parquet",
                Provenance(command="eval-target"))
    write_table(gdf, d / "eval_general.parquet", Provenance(command="eval-general"))
    write_table(_summary("general", 100 * np.mean([general["facts"].mean(), general["nq"].mean()])),
                d / "eval_general_summary.parquet", Provenance(command="eval-general"))
    return tdf, gdf


@pytest.fixture
def arena(tmp_path):
    """runs/{base,lora,oft,vera} with per-sample rows; returns (root, {method: (target df, general df)}, general)."""
    rng = np.random.default_rng(7)
    general = _general_parts(rng)
    frames = {}
    for name, k in TARGET_CORRECT.items():
        frames[name] = _write_method(tmp_path / "runs" / name, np.arange(N_TARGET) < k, general[name])
    return tmp_path / "runs", frames, general


def _direct(frames, a, b, kind):
    """stats.paired_difference on measures built here from the same rows, in points."""
    col = 0 if kind == "target" else 1
    ma, mb = stats.measure_of(frames[a][col], kind), stats.measure_of(frames[b][col], kind)
    return stats.paired_difference(ma, mb, names=(a, b)).scaled(100.0)


def _pairs(rep):
    return rep.pairs.set_index(["measure", "a", "b"])


def test_pairs_match_direct_paired_difference_and_hand_values(arena):
    root, frames, general = arena
    rep = build_report([str(root)])
    pairs = _pairs(rep)
    # the base is not paired here (its comparisons are the leaderboard's gain / forgetting): 3 methods, 3 pairs each
    assert len(rep.pairs) == 6 and "base" not in set(rep.pairs["a"]) | set(rep.pairs["b"])
    assert rep.pairs["comparable"].all()
    # every pair oriented with a ahead: a − b ≥ 0
    assert (rep.pairs["diff"] >= 0).all()
    for (kind, a, b), r in pairs.iterrows():
        d = _direct(frames, a, b, kind)
        # same estimator on the same rows, same seed: the only freedom is the order of the per-stratum sums,
        # a few ulp of values ≤ 100 points, far below 1e-9
        assert r["diff"] == pytest.approx(d.diff, abs=1e-9)
        assert r["ci_low"] == pytest.approx(d.low, abs=1e-9) and r["ci_high"] == pytest.approx(d.high, abs=1e-9)
        assert r["se"] == pytest.approx(d.se, abs=1e-9)
        assert r["p_value"] == pytest.approx(d.p_value, abs=1e-12) and r["test"] == d.test
    # target, by hand: nested correct sets, so diff = 100·(k_a − k_b)/40 and McNemar's b = k_a − k_b, c = 0:
    # p = 2·(1/2)^b
    hand = {("lora", "oft"): (15.0, 2 * 0.5 ** 6), ("lora", "vera"): (25.0, 2 * 0.5 ** 10),
            ("oft", "vera"): (10.0, 2 * 0.5 ** 4)}
    for (a, b), (diff, p) in hand.items():
        r = pairs.loc[("target", a, b)]
        assert r["diff"] == pytest.approx(diff, abs=1e-12) and r["test"] == "mcnemar exact"
        assert r["p_value"] == pytest.approx(p, rel=1e-15) and r["n_items"] == N_TARGET
    # general, by hand: the mean over the two parts of each part's accuracy, a − b, in points
    for (kind, a, b), r in pairs.iterrows():
        if kind == "general":
            want = 100 * np.mean([general[a][p].mean() - general[b][p].mean() for p in ("facts", "nq")])
            assert r["diff"] == pytest.approx(want, abs=1e-9)
            assert r["test"] == "sign-flip permutation" and r["n_items"] == 2 * N_PART


def test_holm_over_the_pairs_of_each_measure_by_hand(arena):
    root, _, _ = arena
    rep = build_report([str(root)])
    t = _pairs(rep).loc["target"]
    # raw p: lora−vera 2^-9 = 0.001953125, lora−oft 2^-5 = 0.03125, oft−vera 2^-3 = 0.125.
    # Holm over m = 3: sorted ascending, times 3, 2, 1, then the running maximum:
    #   lora−vera 3 · 0.001953125 = 0.005859375
    #   lora−oft  max(0.005859375, 2 · 0.03125 = 0.0625) = 0.0625
    #   oft−vera  max(0.0625, 1 · 0.125 = 0.125) = 0.125
    assert t.loc[("lora", "vera"), "p_holm"] == pytest.approx(0.005859375, rel=1e-15)
    assert t.loc[("lora", "oft"), "p_holm"] == pytest.approx(0.0625, rel=1e-15)
    assert t.loc[("oft", "vera"), "p_holm"] == pytest.approx(0.125, rel=1e-15)
    # lora−oft is significant alone (p = 0.031) but not after the adjustment; lora−vera is
    assert t.loc[("lora", "oft"), "p_value"] < 0.05 and not t.loc[("lora", "oft"), "significant"]
    assert t.loc[("lora", "vera"), "significant"] and t.loc[("lora", "vera"), "ci_low"] > 0
    # the general family is its own: Holm over its three p-values, never mixed with the target's
    g = rep.pairs[rep.pairs["measure"] == "general"]
    p = g["p_value"].to_numpy(float)
    order = np.argsort(p, kind="stable")
    hand = np.maximum.accumulate(np.minimum(1.0, (3 - np.arange(3)) * p[order]))
    assert g["p_holm"].to_numpy(float)[order] == pytest.approx(hand, rel=1e-15)
    assert set(rep.pairs["family"]) == {"target", "general"}
    # sorted readably: target first, the significant pair on top
    assert list(rep.pairs["measure"]) == ["target"] * 3 + ["general"] * 3
    assert tuple(rep.pairs.iloc[0][["a", "b"]]) == ("lora", "vera")


def test_pair_on_other_items_is_labelled_not_comparable(arena):
    root, frames, general = arena
    # a fourth method evaluated with another --limit: 30 of the 40 target items; general on the same items
    _write_method(root / "short", np.arange(30) < 28, general["lora"])
    # and an old run with summaries only: no per-sample rows at all
    old = root / "old"
    old.mkdir()
    write_table(_summary("target", 50.0), old / "eval_target_summary.parquet", Provenance(command="eval-target"))
    write_table(_summary("general", 30.0), old / "eval_general_summary.parquet", Provenance(command="eval-general"))
    rep = build_report([str(root)])
    df = rep.pairs
    # C(5, 2) = 10 pairs per measure, none dropped
    assert (df["measure"] == "target").sum() == 10 and (df["measure"] == "general").sum() == 10
    short_t = df[(df["measure"] == "target") & ((df["a"] == "short") | (df["b"] == "short")) & (df["a"] != "old")
                 & (df["b"] != "old")]
    assert len(short_t) == 3
    for r in short_t.to_dict("records"):
        assert not r["comparable"] and math.isnan(r["diff"]) and math.isnan(r["p_value"]) and math.isnan(r["p_holm"])
        assert not r["significant"] and pd.isna(r["n_items"])
        assert r["note"].startswith("not comparable:") and "30 items" in r["note"] and "40" in r["note"]
    olds = df[(df["a"] == "old") | (df["b"] == "old")]
    assert len(olds) == 8 and not olds["comparable"].any()
    assert all("no per-sample" in n and "old" in n for n in olds["note"])
    # short's general items are the others' items: those pairs are compared
    short_g = df[(df["measure"] == "general") & ((df["a"] == "short") | (df["b"] == "short")) & (df["a"] != "old")
                 & (df["b"] != "old")]
    assert len(short_g) == 3 and short_g["comparable"].all()
    # the target family holds only the comparable pairs (the same three as without short and old), so their
    # Holm values are the hand-worked ones of the three-method report
    t = df[(df["measure"] == "target") & df["comparable"]].set_index(["a", "b"])
    assert len(t) == 3
    assert t.loc[("lora", "vera"), "p_holm"] == pytest.approx(0.005859375, rel=1e-15)
    assert t.loc[("lora", "oft"), "p_holm"] == pytest.approx(0.0625, rel=1e-15)
    # not comparable rows come after the comparable ones of their measure
    tt = df[df["measure"] == "target"]
    assert list(tt["comparable"]) == [True] * 3 + [False] * 7
    assert "not comparable" in " ".join(rep.pairs["note"])


def test_report_writes_the_table_and_the_section(arena, tmp_path, cli):
    root, frames, _ = arena
    before = {p: p.read_bytes() for p in root.rglob("*.parquet")}
    out = tmp_path / "rep"
    r = cli("report", str(root), "-o", str(out))
    assert r.returncode == 0, r.stderr
    df, _ = read_table(out / "pairwise.parquet")
    rep = build_report([str(root)])
    assert list(df.columns) == list(rep.pairs.columns)
    assert list(df.columns)[:8] == ["measure", "a", "b", "diff", "se", "ci_low", "ci_high", "p_value"]
    for c in ("test", "n_items", "family", "p_holm", "significant", "note"):
        assert c in df.columns
    pd.testing.assert_frame_equal(df.reset_index(drop=True), rep.pairs.reset_index(drop=True))
    md = (out / "leaderboard.md").read_text()
    sec = md.split("## Method against method")[1]
    assert "| target | lora − vera | +25.00 [" in sec and "| ✓ |" in sec
    assert "target: 1 of 3 comparable pairs distinguishable" in sec
    assert "method against method, target: 1 of 3 comparable pairs distinguishable" in r.stderr
    # a rerun replaces the previous report, pairwise.parquet included (it is a report file, not a foreign one)
    r2 = cli("report", str(root), "-o", str(out))
    assert r2.returncode == 0, r2.stderr
    assert {p: p.read_bytes() for p in root.rglob("*.parquet")} == before


def test_one_method_has_no_pairs(arena, tmp_path):
    root, _, _ = arena
    rep = build_report([str(root / "base"), str(root / "lora")])
    assert len(rep.pairs) == 0
    write_report(rep, tmp_path / "rep")
    assert not (tmp_path / "rep" / "pairwise.parquet").exists()
    assert "## Method against method" not in (tmp_path / "rep" / "leaderboard.md").read_text()
