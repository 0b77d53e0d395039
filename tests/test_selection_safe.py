"""Selection-safe picks of α: `rewind --curve --pick` chooses α on one half of the items and reports
the chosen point's scores on the other half (split), or the cross-fitted score (crossfit); a curve
without per-item rows gives labelled in-sample scores (docs/rewind.md, "Selection-safe picks")."""

from __future__ import annotations

import json
import math
from statistics import NormalDist

import numpy as np
import pandas as pd
import pytest

from peftarena_cli.report.selection import split_items

N_T, N_G = 48, 40
T_KEYS = [("arith", f"t{i}") for i in range(N_T)]
G_KEYS = [("facts", f"g{i}") for i in range(N_G)]
TH0, TH1 = split_items(T_KEYS)   # target items: half 0 picks, half 1 reports (split)
GH0, GH1 = split_items(G_KEYS)
FACTS_META = json.dumps({"scorer": "facts"})


def _target_rows(alpha: float, correct) -> pd.DataFrame:
    return pd.DataFrame({"model": "m", "task": "arith", "id": [k[1] for k in T_KEYS], "sample": 0,
                         "completion": "", "correct": np.asarray(correct, dtype=bool), "alpha": alpha, "path": "native"})


def _general_rows(alpha: float, correct) -> pd.DataFrame:
    return pd.DataFrame({"model": "m", "task": "facts", "id": [k[1] for k in G_KEYS], "sample": 0,
                         "completion": "", "correct": np.asarray(correct, dtype=bool), "meta": FACTS_META,
                         "alpha": alpha, "path": "native"})


def _spiky_world():
    """Per-item correctness at α = 0, 0.5, 1. α = 0.5 is right on every half-0 target item and on
    only 3 half-1 ones: over all items it beats α = 1 (which is right on the even items), but only
    through the picking half's luck. The general items are the same at every α (a pattern)."""
    idx = np.arange(N_T)
    t = {0.0: idx % 4 == 0, 1.0: idx % 2 == 0}
    spiky = np.zeros(N_T, dtype=bool)
    spiky[TH0] = True
    spiky[TH1[:3]] = True
    t[0.5] = spiky
    g = {a: (np.arange(N_G) % 3 != 0) for a in (0.0, 0.5, 1.0)}
    return t, g


def _tables(t: dict, g: dict):
    alphas = sorted(t)
    curve = pd.DataFrame({"alpha": alphas, "path": "native",
                          "target": [100.0 * t[a].mean() for a in alphas],
                          "general": [100.0 * g[a].mean() for a in alphas]})
    samples = {"target": pd.concat([_target_rows(a, t[a]) for a in alphas], ignore_index=True),
               "general": pd.concat([_general_rows(a, g[a]) for a in alphas], ignore_index=True)}
    return curve, samples


def _item_interval(x):
    """mean ± z·sd/√n (sd with n − 1): the item interval of the held-out values, by hand."""
    x = np.asarray(x, dtype=float)
    z = NormalDist().inv_cdf(0.975)
    h = z * x.std(ddof=1) / math.sqrt(len(x))
    return x.mean() - h, x.mean() + h


def test_the_halves_are_big_enough_for_the_hand_built_world():
    # the world above needs at least 4 reporting target items and 2 of each general half
    assert len(TH0) >= 4 and len(TH1) >= 4 and len(GH0) >= 2 and len(GH1) >= 2


def test_split_reports_the_picked_alpha_on_the_held_out_items_only():
    from peftarena_cli.interpolation.safe_pick import safe_pick

    t, g = _spiky_world()
    curve, samples = _tables(t, g)
    naive = safe_pick(curve, "max-target", samples, mode="none")
    assert naive.alpha == 0.5 and naive.reported_on == "in-sample"  # in-sample, α = 0.5 wins
    assert naive.target == pytest.approx(100.0 * (len(TH0) + 3) / N_T, abs=1e-9)

    p = safe_pick(curve, "max-target", samples, mode="split")
    assert p.alpha == 0.5 and p.reported_on == "held-out"
    # the reported scores are the means over the half-1 items, by hand: 3 of the reporting items right
    assert p.target == pytest.approx(100.0 * 3 / len(TH1), abs=1e-9)
    assert p.general == pytest.approx(100.0 * g[0.5][GH1].mean(), abs=1e-9)
    assert p.target < naive.target - 20  # the in-sample score overstated the pick
    # the intervals are the item intervals of the held-out values alone (one row: no seed part)
    lo, hi = p.intervals["target"]
    hand = _item_interval(100.0 * t[0.5][TH1])
    assert (lo, hi) == pytest.approx(hand, abs=1e-9)
    assert p.intervals["general"] == pytest.approx(_item_interval(100.0 * g[0.5][GH1]), abs=1e-9)
    assert p.n_items == {"target": len(TH1), "general": len(GH1)}
    assert p.selection.startswith(f"split on {N_T} target + {N_G} general items")
    (f,) = p.folds
    assert f["pick_half"] == 0 and f["alpha"] == 0.5
    assert f["pick_items"] == {"target": len(TH0), "general": len(GH0)}
    assert f["report_items"] == {"target": len(TH1), "general": len(GH1)}


def test_the_pick_never_sees_the_held_out_items():
    from peftarena_cli.interpolation.safe_pick import safe_pick

    t, g = _spiky_world()
    base = safe_pick(*_tables(t, g)[:1], "max-target", _tables(t, g)[1], mode="split")
    # held-out items changed (α = 1 now right on every half-1 item): the pick stays, the report moves
    t2 = {a: v.copy() for a, v in t.items()}
    t2[1.0][TH1] = True
    t2[0.5][TH1] = False
    p2 = safe_pick(*_tables(t2, g)[:1], "max-target", _tables(t2, g)[1], mode="split")
    assert p2.alpha == base.alpha == 0.5
    assert p2.target == pytest.approx(0.0, abs=1e-12) and base.target > 0
    # the picking items changed (α = 1 right on every half-0 item too: a tie, which goes to the
    # larger α): the pick can change
    t3 = {a: v.copy() for a, v in t.items()}
    t3[1.0][TH0] = True
    p3 = safe_pick(*_tables(t3, g)[:1], "max-target", _tables(t3, g)[1], mode="split")
    assert p3.alpha == 1.0
    assert p3.target == pytest.approx(100.0 * t3[1.0][TH1].mean(), abs=1e-9)


def test_crossfit_averages_the_two_held_out_reports():
    from peftarena_cli.interpolation.safe_pick import safe_pick

    t, g = _spiky_world()
    curve, samples = _tables(t, g)
    p = safe_pick(curve, "max-target", samples, mode="crossfit")
    assert p.alpha == 0.5  # the written α: picked on all items
    f0, f1 = p.folds
    assert (f0["pick_half"], f0["alpha"]) == (0, 0.5)
    # on half 1, α = 0.5 has 3 right and α = 1 about half: α = 1 wins there (or ties upwards)
    on_h1 = {a: t[a][TH1].mean() for a in t}
    a1 = max(on_h1, key=lambda a: (on_h1[a], a))
    assert f1["pick_half"] == 1 and f1["alpha"] == a1
    hand_t = 50.0 * (t[0.5][TH1].mean() + t[a1][TH0].mean())
    hand_g = 50.0 * (g[0.5][GH1].mean() + g[a1][GH0].mean())
    assert p.target == pytest.approx(hand_t, abs=1e-9) and p.general == pytest.approx(hand_g, abs=1e-9)
    assert p.selection == f"crossfit-2 on {N_T} target + {N_G} general items"
    assert p.reported_on == "held-out (cross-fitted)"
    assert "picking rule" in p.note  # the folds disagreed: said, with both picks
    lo, hi = p.intervals["target"]
    assert lo < p.target < hi


def test_keep_target_criterion_is_applied_to_the_picking_half():
    """keep-target compares every α with α = 0 and 1: the chooser gets the whole half-curve."""
    from peftarena_cli.interpolation.criteria import pick_alpha
    from peftarena_cli.interpolation.safe_pick import safe_pick

    t, g = _spiky_world()
    g = {0.0: np.ones(N_G, bool), 0.5: np.arange(N_G) % 2 == 0, 1.0: np.arange(N_G) % 4 == 0}
    curve, samples = _tables(t, g)
    p = safe_pick(curve, "keep-target:0.5", samples, mode="split")
    half = pd.DataFrame({"alpha": [0.0, 0.5, 1.0], "target": [100 * t[a][TH0].mean() for a in (0.0, 0.5, 1.0)],
                         "general": [100 * g[a][GH0].mean() for a in (0.0, 0.5, 1.0)]})
    want = pick_alpha(half, "keep-target:0.5").alpha
    assert p.alpha == want
    assert p.target == pytest.approx(100 * t[want][TH1].mean(), abs=1e-9)


def test_without_per_item_rows_the_scores_are_labelled_in_sample():
    from peftarena_cli.interpolation.safe_pick import safe_pick

    t, g = _spiky_world()
    curve, _ = _tables(t, g)
    for samples in (None, {}, {"target": _tables(t, g)[1]["target"]}):
        p = safe_pick(curve, "max-target", samples, mode="split")
        assert p.alpha == 0.5 and p.reported_on == "in-sample"
        assert p.selection.startswith("in-sample (") and "picked it" in p.note
        assert p.target == pytest.approx(float(curve.loc[curve["alpha"] == 0.5, "target"].iloc[0]))
        rec = p.record()
        assert rec["reported_on"] == "in-sample" and rec["target_low"] is None


def test_items_must_be_the_same_at_every_alpha():
    from peftarena_cli.errors import InvalidArtifact
    from peftarena_cli.interpolation.safe_pick import safe_pick

    t, g = _spiky_world()
    curve, samples = _tables(t, g)
    s = dict(samples)
    tg = s["target"]
    s["target"] = tg[~((tg["alpha"] == 1.0) & (tg["id"] == "t0"))]
    with pytest.raises(InvalidArtifact, match="not those at"):
        safe_pick(curve, "max-target", s, mode="split")


def test_bad_selection_is_a_usage_error():
    from peftarena_cli.errors import UsageError
    from peftarena_cli.interpolation.safe_pick import check_selection

    with pytest.raises(UsageError):
        check_selection("best")


# ---------------------------------------------------------------- the command
def _meta(path):
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        return json.loads(f.metadata()["peftarena_rewind"])


def _write_curve(tmp_path, adapter, with_samples: bool):
    from peftarena_cli.artifacts.identity import path_identity
    from peftarena_cli.artifacts.tables import Provenance, write_table

    t, g = _spiky_world()
    curve, samples = _tables(t, g)
    prov = Provenance(command="interpolate")
    prov.add_input("finetuned", str(adapter), path_identity(adapter))
    path = tmp_path / "curve.parquet"
    write_table(curve, path, prov)
    if with_samples:
        for kind, df in samples.items():
            write_table(df, tmp_path / f"curve.{kind}-samples.parquet", prov)
    return path, t, g


def test_rewind_records_the_held_out_scores(cli, tiny_lora_dir, tmp_path):
    curve, t, g = _write_curve(tmp_path, tiny_lora_dir, with_samples=True)
    inputs = {p: p.read_bytes() for p in tmp_path.glob("curve*.parquet")}
    out = tmp_path / "picked.safetensors"
    r = cli("rewind", tiny_lora_dir, "--curve", curve, "--pick", "max-target", "-o", out)
    assert r.returncode == 0, r.stderr
    m = _meta(out)
    assert m["alpha"] == 0.5 and m["selection_mode"] == "split" and m["reported_on"] == "held-out"
    assert m["selection"].startswith(f"split on {N_T} target + {N_G} general items")
    assert m["target"] == pytest.approx(100.0 * 3 / len(TH1), abs=1e-9)
    assert m["general"] == pytest.approx(100.0 * g[0.5][GH1].mean(), abs=1e-9)
    assert [m["target_low"], m["target_high"]] == pytest.approx(_item_interval(100.0 * t[0.5][TH1]), abs=1e-9)
    assert "selection: split on" in r.stderr and "held-out target" in r.stderr
    assert "in-sample" not in r.stderr
    assert {p: p.read_bytes() for p in inputs} == inputs  # the curve and its samples are untouched

    out2 = tmp_path / "cf.safetensors"
    r = cli("rewind", tiny_lora_dir, "--curve", curve, "--pick", "max-target", "--selection", "crossfit", "-o", out2)
    assert r.returncode == 0, r.stderr
    m2 = _meta(out2)
    assert m2["selection"] == f"crossfit-2 on {N_T} target + {N_G} general items" and len(m2["folds"]) == 2


def test_rewind_without_per_item_rows_warns_in_sample(cli, tiny_lora_dir, tmp_path):
    curve, t, _ = _write_curve(tmp_path, tiny_lora_dir, with_samples=False)
    out = tmp_path / "picked.safetensors"
    r = cli("rewind", tiny_lora_dir, "--curve", curve, "--pick", "max-target", "-o", out)
    assert r.returncode == 0, r.stderr
    m = _meta(out)
    assert m["reported_on"] == "in-sample" and m["selection"].startswith("in-sample (no per-item rows")
    assert m["target"] == pytest.approx(100.0 * t[0.5].mean(), abs=1e-9)
    assert "warning" in r.stderr.lower() and "in-sample" in r.stderr


def test_rewind_bad_selection_exits_2(cli, tiny_lora_dir, tmp_path):
    curve, _, _ = _write_curve(tmp_path, tiny_lora_dir, with_samples=True)
    r = cli("rewind", tiny_lora_dir, "--curve", curve, "--selection", "best", "-o", tmp_path / "x.safetensors")
    assert r.returncode == 2 and "--selection" in r.stderr
    assert not (tmp_path / "x.safetensors").exists()


def test_report_rows_of_a_rewound_point_say_how_it_was_picked(cli, tiny_lora_dir, tmp_path):
    import shutil

    from report_synth import make_runs

    from peftarena_cli.report.collect import collect_results
    from peftarena_cli.report.leaderboard import build_leaderboard

    curve, _, _ = _write_curve(tmp_path, tiny_lora_dir, with_samples=True)
    out = tmp_path / "picked.safetensors"
    assert cli("rewind", tiny_lora_dir, "--curve", curve, "--pick", "max-target", "-o", out).returncode == 0
    runs = make_runs(tmp_path / "runs", methods=["base", "lora", "oft"], with_geometry=False, with_curve=False)
    lb = build_leaderboard(collect_results([str(runs)]))
    assert "selection" not in lb.columns  # no rewound point: the leaderboard is as before
    shutil.copy(out, runs / "lora" / "adapter.safetensors")
    lb = build_leaderboard(collect_results([str(runs)]))
    pick = dict(zip(lb["method"], lb["pick"]))
    assert pick["lora"] == _meta(out)["selection"] and pick["lora"].startswith("split on 48 target")
    assert pick["base"] == "" and pick["oft"] == ""
    # these synthetic runs have no per-item general rows, so the row cannot be cut to the held-out half
    sel = dict(zip(lb["method"], lb["selection"]))
    assert sel["lora"] == "in-sample for the pick (split; no per-item rows to restrict to the held-out half)"
    assert sel["base"] == "" and sel["oft"] == ""
    assert any(n.startswith("lora: rewound at α = 0.5 picked by max-target") and "held-out" in n
               for n in lb.attrs["notes"])
