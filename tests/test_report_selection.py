"""The report and selection-safe picks: a rewound point's leaderboard row is scored on the items that
did not pick its α (docs/report.md, "Where a "best" point is named"), and the sweep report draws a
point's interpolation path beside its method's grid frontier (docs/report.md, "Sweeps: `make sweep`
and its report"). Every table is built by hand; the expected numbers are means and counts over the
hand-chosen items."""

from __future__ import annotations

import json
import math
from statistics import NormalDist

import numpy as np
import pandas as pd
import pytest

from peftarena_cli.artifacts.tables import Provenance, write_table
from peftarena_cli.report.selection import split_items

N_T, N_G = 48, 40
T_IDS = [f"t{i}" for i in range(N_T)]
G_IDS = [f"g{i}" for i in range(N_G)]
SALT = "pick-salt"  # not the default "": a report that ignored the recorded salt would pick other items
TH0, TH1 = split_items([("arith", i) for i in T_IDS], SALT)   # half 1 reports (the pick was made on half 0)
GH0, GH1 = split_items([("facts", i) for i in G_IDS], SALT)
FACTS_META = json.dumps({"scorer": "facts"})

# per-item correctness, fixed by hand: the rewound point (lora) is much better on its picking half
# than on its held-out half, which is what a score on every item would hide
IDX_T, IDX_G = np.arange(N_T), np.arange(N_G)
BASE_T = IDX_T % 4 == 0
BASE_G = IDX_G % 3 != 0
LORA_T = np.zeros(N_T, dtype=bool)
LORA_T[TH0] = True
LORA_T[TH1[::3]] = True
LORA_G = IDX_G % 2 == 0
OFT_T = IDX_T % 3 == 0
OFT_G = IDX_G % 5 != 0


def _write_method(d, t, g, ids_t=T_IDS, ids_g=G_IDS):
    d.mkdir(parents=True, exist_ok=True)
    tr = pd.DataFrame({"model": d.name, "task": "arith", "id": ids_t, "sample": 0, "completion": "",
                       "correct": np.asarray(t, dtype=bool)})
    gr = pd.DataFrame({"model": d.name, "task": "facts", "id": ids_g, "sample": 0, "completion": "",
                       "correct": np.asarray(g, dtype=bool), "meta": FACTS_META})
    write_table(tr, d / "eval_target.parquet", Provenance(command="eval-target"))
    write_table(gr, d / "eval_general.parquet", Provenance(command="eval-general"))
    # the summaries hold the scores over every item, as eval writes them
    write_table(pd.DataFrame({"task": ["arith", "target"], "metric": ["accuracy", "target_score"],
                              "value": [100.0 * np.mean(t)] * 2, "n": [len(t)] * 2}),
                d / "eval_target_summary.parquet", Provenance(command="eval-target"))
    write_table(pd.DataFrame({"task": ["facts", "general"], "metric": ["exact_match", "general_score"],
                              "value": [100.0 * np.mean(g)] * 2, "n": [len(g)] * 2}),
                d / "eval_general_summary.parquet", Provenance(command="eval-general"))


def _write_rewound_adapter(path, mode: str, curve=None):
    """An adapter file carrying the pick record rewind writes (key peftarena_rewind)."""
    from safetensors.numpy import save_file

    rec = {"criterion": "max-target", "alpha": 0.5, "selection_mode": mode,
           "reported_on": {"split": "held-out", "crossfit": "held-out (cross-fitted)"}.get(mode, "in-sample"),
           "selection": {"split": f"split on {N_T} target + {N_G} general items: picked on half 0",
                         "crossfit": f"crossfit-2 on {N_T} target + {N_G} general items"}.get(mode, "in-sample (none)")}
    if mode == "split":
        rec.update(folds=[{"pick_half": 0, "alpha": 0.5}], salt=SALT)
    if mode == "crossfit":
        rec.update(folds=[{"pick_half": 0, "alpha": 0.5}, {"pick_half": 1, "alpha": 0.5}], salt=SALT)
    if curve is not None:
        rec["curve"] = f"{curve}@sha256:0"
    save_file({"base_model.model.layers.0.q_proj.lora_A.weight": np.zeros((2, 4), dtype=np.float32)}, str(path),
              metadata={"peftarena_rewind": json.dumps(rec)})


def _runs(tmp_path, mode="split", curve=None):
    root = tmp_path / "runs"
    _write_method(root / "base", BASE_T, BASE_G)
    _write_method(root / "lora", LORA_T, LORA_G)
    _write_method(root / "oft", OFT_T, OFT_G)
    _write_rewound_adapter(root / "lora" / "adapter.safetensors", mode, curve)
    return root


def _wilson(k: int, n: int):
    """The Wilson score interval in percent, written out."""
    z = NormalDist().inv_cdf(0.975)
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return 100.0 * max(0.0, centre - half), 100.0 * min(1.0, centre + half)


def _mcnemar_p(a, b) -> float:
    """Two-sided exact McNemar p of paired binary outcomes a, b (binomial on the discordant pairs)."""
    n10, n01 = int(np.sum(a & ~b)), int(np.sum(~a & b))
    n, k = n10 + n01, min(n10, n01)
    return 1.0 if n == 0 else min(1.0, 2.0 * sum(math.comb(n, i) for i in range(k + 1)) / 2.0 ** n)


def _leaderboard(root):
    from peftarena_cli.report.collect import collect_results
    from peftarena_cli.report.leaderboard import build_leaderboard

    methods = collect_results([str(root)])
    return build_leaderboard(methods), methods


# ---------------------------------------------------------------- split: the held-out half only
def test_the_hand_built_halves_are_big_enough():
    assert len(TH1) >= 8 and len(GH1) >= 8 and len(TH0) >= 8
    # the row's score on every item is far from its held-out score: the test can tell them apart
    assert abs(LORA_T.mean() - LORA_T[TH1].mean()) > 0.2


def test_split_row_is_scored_on_the_held_out_half(tmp_path):
    lb, _ = _leaderboard(_runs(tmp_path))
    r = lb.set_index("method").loc["lora"]
    assert r["target"] == pytest.approx(100.0 * LORA_T[TH1].mean(), abs=1e-9)
    assert r["general"] == pytest.approx(100.0 * LORA_G[GH1].mean(), abs=1e-9)
    assert (r["n_target"], r["n_general"]) == (len(TH1), len(GH1))
    assert (r["target_low"], r["target_high"]) == pytest.approx(_wilson(int(LORA_T[TH1].sum()), len(TH1)), abs=1e-9)
    assert (r["general_low"], r["general_high"]) == pytest.approx(_wilson(int(LORA_G[GH1].sum()), len(GH1)), abs=1e-9)
    sel = dict(zip(lb["method"], lb["selection"]))
    assert sel == {"lora": f"held-out half ({len(TH1) + len(GH1)} items)", "base": "", "oft": ""}
    assert dict(zip(lb["method"], lb["pick"]))["lora"].startswith(f"split on {N_T} target")
    # the other rows keep their whole evals
    o = lb.set_index("method").loc["oft"]
    assert o["target"] == pytest.approx(100.0 * OFT_T.mean(), abs=1e-9) and o["n_target"] == N_T


def test_split_row_base_comparison_is_paired_on_the_same_held_out_items(tmp_path):
    lb, _ = _leaderboard(_runs(tmp_path))
    r = lb.set_index("method").loc["lora"]
    assert r["target_gain"] == pytest.approx(100.0 * (LORA_T[TH1].mean() - BASE_T[TH1].mean()), abs=1e-9)
    assert r["forgetting"] == pytest.approx(100.0 * (BASE_G[GH1].mean() - LORA_G[GH1].mean()), abs=1e-9)
    # McNemar's exact p counts discordant pairs: only the held-out items of both sides give this value
    assert r["target_gain_test"] == "mcnemar exact"
    assert r["target_gain_p"] == pytest.approx(_mcnemar_p(LORA_T[TH1], BASE_T[TH1]), abs=1e-12)
    assert r["forgetting_p"] == pytest.approx(_mcnemar_p(BASE_G[GH1], LORA_G[GH1]), abs=1e-12)
    assert _mcnemar_p(LORA_T[TH1], BASE_T[TH1]) != pytest.approx(_mcnemar_p(LORA_T, BASE_T))


def test_split_row_pairs_against_other_methods_use_the_held_out_items_on_both_sides(tmp_path):
    from peftarena_cli.report.build import build_report

    rep = build_report([str(_runs(tmp_path))])
    p = rep.pairs
    t = p[p["measure"] == "target"].iloc[0]  # one pair: lora and oft
    assert {t["a"], t["b"]} == {"lora", "oft"} and int(t["n_items"]) == len(TH1)
    sign = 1.0 if t["a"] == "lora" else -1.0
    assert t["diff"] == pytest.approx(sign * 100.0 * (LORA_T[TH1].mean() - OFT_T[TH1].mean()), abs=1e-9)
    assert t["p_value"] == pytest.approx(_mcnemar_p(LORA_T[TH1], OFT_T[TH1]), abs=1e-12)
    assert "held-out half of lora" in t["note"]
    g = p[p["measure"] == "general"].iloc[0]
    assert int(g["n_items"]) == len(GH1)
    # the plane's point for the rewound row is the held-out score too
    pt = rep.points.set_index("point").loc["lora"]
    assert pt["target"] == pytest.approx(100.0 * LORA_T[TH1].mean(), abs=1e-9)
    assert any(n.startswith("lora: rewound at α = 0.5") and "held-out half" in n for n in rep.notes)


def test_report_writes_the_restricted_row(cli, tmp_path):
    from peftarena_cli.artifacts.tables import read_table

    root = _runs(tmp_path)
    before = {p: p.read_bytes() for p in root.rglob("*") if p.is_file()}
    r = cli("report", root, "-o", tmp_path / "rep")
    assert r.returncode == 0, r.stderr
    lb, _ = read_table(tmp_path / "rep" / "leaderboard.parquet")
    row = lb.set_index("method").loc["lora"]
    assert row["selection"] == f"held-out half ({len(TH1) + len(GH1)} items)"
    assert row["target"] == pytest.approx(100.0 * LORA_T[TH1].mean(), abs=1e-9)
    pw, _ = read_table(tmp_path / "rep" / "pairwise.parquet")
    assert set(pw["n_items"].astype(int)) == {len(TH1), len(GH1)}
    assert {p: p.read_bytes() for p in before} == before  # the inputs are untouched


# ---------------------------------------------------------------- crossfit and none: labels
def _write_curve_samples(tmp_path, ids_t, ids_g):
    d = tmp_path / "curve_dir"
    d.mkdir()
    curve = d / "curve.parquet"
    write_table(pd.DataFrame({"alpha": [0.0, 1.0], "target": [0.0, 1.0], "general": [1.0, 0.0]}), curve,
                Provenance(command="interpolate"))
    rows_t, rows_g = [], []
    for a in (0.0, 0.5, 1.0):
        rows_t.append(pd.DataFrame({"model": "m", "task": "arith", "id": ids_t, "sample": 0, "completion": "",
                                    "correct": True, "alpha": a, "path": "native"}))
        rows_g.append(pd.DataFrame({"model": "m", "task": "facts", "id": ids_g, "sample": 0, "completion": "",
                                    "correct": True, "meta": FACTS_META, "alpha": a, "path": "native"}))
    write_table(pd.concat(rows_t, ignore_index=True), d / "curve.target-samples.parquet", Provenance(command="interpolate"))
    write_table(pd.concat(rows_g, ignore_index=True), d / "curve.general-samples.parquet", Provenance(command="interpolate"))
    return curve


def test_crossfit_row_is_in_sample_when_it_shares_the_curves_items(tmp_path):
    curve = _write_curve_samples(tmp_path, T_IDS[:10], [f"other{i}" for i in range(8)])
    lb, _ = _leaderboard(_runs(tmp_path, "crossfit", curve))
    r = lb.set_index("method").loc["lora"]
    assert r["selection"] == "in-sample for the pick (crossfit)"
    assert r["target"] == pytest.approx(100.0 * LORA_T.mean(), abs=1e-9) and r["n_target"] == N_T
    assert any("10 target and 0 general items" in n for n in lb.attrs["notes"])


def test_crossfit_row_is_clean_when_its_items_are_disjoint_from_the_curves(tmp_path):
    curve = _write_curve_samples(tmp_path, [f"c{i}" for i in range(10)], [f"d{i}" for i in range(8)])
    lb, _ = _leaderboard(_runs(tmp_path, "crossfit", curve))
    r = lb.set_index("method").loc["lora"]
    assert r["selection"] == "held-out: its eval items are disjoint from the curve's (crossfit)"
    assert r["target"] == pytest.approx(100.0 * LORA_T.mean(), abs=1e-9)


def test_crossfit_without_the_curves_items_is_labelled_in_sample(tmp_path):
    lb, _ = _leaderboard(_runs(tmp_path, "crossfit", tmp_path / "gone.parquet"))
    assert lb.set_index("method").loc["lora", "selection"] == "in-sample for the pick (crossfit)"
    assert any("not checked" in n for n in lb.attrs["notes"])


def test_none_row_is_labelled_in_sample(tmp_path):
    lb, _ = _leaderboard(_runs(tmp_path, "none"))
    r = lb.set_index("method").loc["lora"]
    assert r["selection"] == "in-sample for the pick (none)"
    assert r["target"] == pytest.approx(100.0 * LORA_T.mean(), abs=1e-9)
    assert r["target_gain"] == pytest.approx(100.0 * (LORA_T.mean() - BASE_T.mean()), abs=1e-9)


def test_no_rewound_point_no_selection_column(tmp_path):
    root = _runs(tmp_path)
    (root / "lora" / "adapter.safetensors").unlink()
    lb, _ = _leaderboard(root)
    assert "selection" not in lb.columns
    assert lb.set_index("method").loc["lora", "target"] == pytest.approx(100.0 * LORA_T.mean(), abs=1e-9)


# ---------------------------------------------------------------- interpolation paths in the sweep report
# Path of lora lr=1e-3 seed 1 (test_sweep_pipeline's grid: the base gets every target item wrong and every
# general item right, so gain = the target score and forgetting = 100 − the general score; all items
# weigh the same). α = 1 is the run's own evals (gain 50, forgetting 25).
PATH_T = {0.25: [1, 1, 0, 0, 0, 0, 0, 0], 0.5: [1, 1, 1, 0, 0, 0, 0, 0], 0.75: [1, 1, 1, 1, 1, 1, 1, 0]}
PATH_G = {0.25: [1] * 8, 0.5: [1, 1, 1, 1, 1, 1, 1, 0], 0.75: [1, 1, 1, 0, 1, 1, 1, 0]}


def _write_path(point_dir, target_ids=None):
    from test_sweep_pipeline import TARGET_IDS, _general_rows, _prov, _target_rows

    d = point_dir / "interp"
    d.mkdir()
    t = pd.concat([_target_rows(y, "adapter").assign(alpha=a, path="native") for a, y in PATH_T.items()],
                  ignore_index=True)
    if target_ids is not None:
        t["id"] = list(target_ids) * len(PATH_T)
    g = pd.concat([_general_rows(y, "adapter").assign(alpha=a, path="native") for a, y in PATH_G.items()],
                  ignore_index=True)
    write_table(t, d / "target.target-samples.parquet", _prov("interpolate", point_dir / "train/final"))
    write_table(g, d / "general.general-samples.parquet", _prov("interpolate", point_dir / "train/final"))
    assert TARGET_IDS  # the grid's target items


def _hand_path_forgetting(gain):
    """Forgetting read off the path's Pareto set by hand: α = 0.25 (25, 0), 0.5 (37.5, 12.5), 0.75
    (87.5, 25); α = 0 (0, 0) and α = 1 (50, 25) are dominated."""
    if not 25.0 <= gain <= 87.5:
        return math.nan
    if gain <= 37.5:
        return 12.5 * (gain - 25.0) / 12.5
    return 12.5 + 12.5 * (gain - 37.5) / 50.0


def test_sweep_report_draws_and_reads_the_interpolation_path(cli, tmp_path):
    from test_sweep_pipeline import make_sweep

    from peftarena_cli.artifacts.tables import read_table

    root = make_sweep(tmp_path / "sweep")
    _write_path(root / "lora" / "lr0.001" / "s1")
    before = {p: p.read_bytes() for p in root.rglob("*") if p.is_file()}
    out = tmp_path / "rep"
    r = cli("report", root, "-o", out)
    assert r.returncode == 0, r.stderr
    paths, _ = read_table(out / "sweep_paths.parquet")
    assert list(paths["alpha"]) == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert list(paths["evaluated"]) == [False, True, True, True, False]
    assert paths["gain"].tolist() == pytest.approx([0.0, 25.0, 37.5, 87.5, 50.0], abs=1e-9)
    assert paths["forgetting"].tolist() == pytest.approx([0.0, 0.0, 12.5, 25.0, 25.0], abs=1e-9)
    assert paths["frontier"].tolist() == [False, True, True, True, False]

    m, _ = read_table(out / "sweep_matched_gain.parquet")
    grid, path = m[m["source"] == "grid"], m[m["source"] == "path"]
    # the grid's readings are as before: lora lr 1e-3 .. 3e-3 and oft 5e-4 .. 1.5e-3 share gains 62.5 .. 75
    assert sorted(set(grid["target_gain"])) == pytest.approx(np.linspace(62.5, 75.0, 5).tolist())
    assert sorted(set(path["target_gain"])) == sorted(set(grid["target_gain"]))
    assert set(path["method"]) == {"lora path (lr=0.001, seed 1)"}
    z = NormalDist().inv_cdf(0.975)
    f50 = 100.0 * (1 - np.array(PATH_G[0.5]))
    f75 = 100.0 * (1 - np.array(PATH_G[0.75]))
    for row in path.to_dict("records"):
        g = row["target_gain"]
        assert row["forgetting"] == pytest.approx(_hand_path_forgetting(g), abs=1e-9)
        assert (row["left"], row["right"]) == ("α=0.5", "α=0.75")
        # one seed: the item interval of the per-item reading (1 − t)·f(0.5) + t·f(0.75)
        t = (g - 37.5) / 50.0
        x = (1 - t) * f50 + t * f75
        h = z * x.std(ddof=1) / math.sqrt(len(x))
        assert (row["ci_low"], row["ci_high"]) == pytest.approx((x.mean() - h, x.mean() + h), abs=1e-9)
    md = (out / "leaderboard.md").read_text()
    assert "## Interpolation paths" in md and "| lora path (lr=0.001, seed 1) | 0.75 | +87.50 | +25.00 | ✓ |" in md
    assert sum("lora path (lr=0.001, seed 1)" in line and line.startswith("| +") for line in md.splitlines()) == 5
    assert (out / "plane.png").stat().st_size > 0
    assert {p: p.read_bytes() for p in before} == before  # the inputs are untouched


def test_sweep_path_on_other_items_is_left_out_with_a_note(cli, tmp_path):
    from test_sweep_pipeline import make_sweep

    root = make_sweep(tmp_path / "sweep")
    _write_path(root / "lora" / "lr0.001" / "s1", target_ids=[f"x{i}" for i in range(8)])
    r = cli("report", root, "-o", tmp_path / "rep")
    assert r.returncode == 0, r.stderr
    assert not (tmp_path / "rep" / "sweep_paths.parquet").exists()
    md = (tmp_path / "rep" / "leaderboard.md").read_text()
    assert "interpolation path of lora lr=0.001 seed 1" in md and "not on the base's items" in md


def test_make_sweep_plans_interpolation_for_the_named_points():
    import shutil
    import subprocess
    from pathlib import Path

    if shutil.which("make") is None:
        pytest.skip("no make")
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run(["make", "-n", "--no-print-directory", "sweep-stages", "SWEEP_RUNS=/nonexistent-sweep",
                          "SWEEP_METHODS=lora", "SEEDS=1 2", "LR_MULTS=1", "SWEEP_INTERP_POINTS=lora/lr0.001/s2",
                          "SWEEP_ALPHAS=0.3,0.6"], cwd=root, capture_output=True, text=True, check=True).stdout
    lines = [x for x in out.splitlines() if " interpolate " in x]
    assert len(lines) == 2  # target and general, for the one named point only
    d = "/nonexistent-sweep/lora/lr0.001/s2"
    for kind, limit in (("target", "160"), ("general", "ifeval=40,bbh=40,facts=80")):
        cmd = next(x for x in lines if f"--eval {kind}" in x)
        i = out.splitlines().index(cmd)
        full = " ".join(out.splitlines()[i:i + 2])
        assert f"interpolate smollm2-135m {d}/train/final --alphas 0.3,0.6 --eval {kind}" in full
        assert f"--limit {limit} -o {d}/interp/{kind}.parquet" in full
    # without the knob nothing is interpolated
    plain = subprocess.run(["make", "-n", "--no-print-directory", "sweep-stages", "SWEEP_RUNS=/nonexistent-sweep",
                            "SWEEP_METHODS=lora", "SEEDS=1", "LR_MULTS=1"], cwd=root, capture_output=True, text=True,
                           check=True).stdout
    assert " interpolate " not in plain
