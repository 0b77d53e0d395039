"""`make sweep` and the sweep report (scripts/sweep.mk, peftarena_cli/report/sweep.py; docs/report.md,
"Sweeps"): a synthetic sweep folder with per-sample tables of known values, checked against hand-worked
seed means, frontiers and matched-gain readings, and against the statistics core called directly; the
bad inputs; the Make stages of a small grid."""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from peftarena_cli.artifacts.tables import Provenance, read_table, write_table
from peftarena_cli.report import sweep_stats as ss

ROOT = Path(__file__).resolve().parents[1]
BASE_ID = "smollm2-135m@ef71253ab967b902"

# 8 target items (one task, avg@1) and 8 general items (two parts of 4, first sample): with equal part
# sizes every item carries the same weight, so a score is the plain mean of the 0/1 items.
TARGET_IDS = [f"t{i}" for i in range(8)]
GENERAL = [("facts", f"f{i}") for i in range(4)] + [("nq_open", f"q{i}") for i in range(4)]
SCORER = {"arith": "math", "facts": "facts", "nq_open": "nq"}

# The base gets every target item wrong and every general item right: gain = run's target score,
# forgetting = 100 − run's general score. Per seed: (target items right, general items wrong).
BASE_T = [0] * 8
BASE_G = [1] * 8
GRID = {  # (method, lr) -> {seed: (target 0/1 vector, general 0/1 vector)}
    ("lora", 1e-3): {1: ([1, 1, 1, 1, 0, 0, 0, 0], [1, 1, 1, 0, 1, 1, 1, 0]),
                     2: ([1, 1, 1, 1, 1, 1, 0, 0], [1, 1, 0, 1, 1, 0, 1, 1])},
    ("lora", 3e-3): {1: ([1] * 8, [0, 1, 1, 0, 1, 0, 1, 0]),
                     2: ([1, 1, 1, 1, 1, 0, 1, 0], [1, 0, 0, 1, 0, 1, 0, 1])},
    ("oft", 5e-4): {1: ([1, 1, 0, 0, 0, 0, 0, 0], [1] * 8),
                    2: ([1, 1, 1, 0, 1, 0, 0, 0], [1] * 8)},
    ("oft", 1.5e-3): {1: ([1, 1, 1, 1, 1, 1, 0, 0], [1, 1, 1, 0, 1, 1, 0, 1]),
                      2: ([0, 1, 1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 1, 1, 1, 0])},
}


def _target_rows(y, model="base"):
    return pd.DataFrame({"model": model, "task": "arith", "subtask": None, "id": TARGET_IDS, "sample": 0,
                         "prompt": "p", "completion": "c", "extracted": "1", "reference": "1",
                         "correct": [bool(v) for v in y], "meta": json.dumps({"scorer": SCORER["arith"]})})


def _general_rows(y, model="base", scorers=SCORER, protocol="builtin@1"):
    return pd.DataFrame({"model": model, "task": [t for t, _ in GENERAL], "subtask": None,
                         "id": [i for _, i in GENERAL], "sample": 0, "prompt": "p", "completion": "c",
                         "extracted": "x", "reference": "x", "correct": [bool(v) for v in y],
                         "meta": [json.dumps({"scorer": scorers[t], "protocol": protocol}) for t, _ in GENERAL]})


def _prov(command, adapter=None, base=BASE_ID):
    inputs = {"base": base}
    if adapter:
        inputs["adapter"] = f"{adapter}@x"
    return Provenance(command=command, inputs=inputs)


def write_point(root: Path, method, lr, seed, t, g, steps=30, manifest_extra=None, base=BASE_ID):
    d = root / method / f"lr{lr:g}" / f"s{seed}"
    (d / "train").mkdir(parents=True, exist_ok=True)
    man = {"format": "peftarena-run/1", "status": "complete",
           "config": {"method": method, "lr": lr, "steps": steps, "seed": seed},
           "base": {"spec": "smollm2-135m", "identity": base.split("@")[1]}, "trainable_params": 1000 * len(method),
           "seed": seed, "last_step": steps, "train_seconds": 2.0 * steps + seed, "peak_rss_mb": 900.0 + 10 * seed,
           "peak_gpu_mb": None}
    man.update(manifest_extra or {})
    (d / "train" / "manifest.json").write_text(json.dumps(man))
    write_table(_target_rows(t, "adapter"), d / "eval_target.parquet", _prov("eval-target", d / "train/final", base))
    write_table(_general_rows(g, "adapter"), d / "eval_general.parquet", _prov("eval-general", d / "train/final", base))
    return d


def make_sweep(root: Path, grid=GRID) -> Path:
    (root / "base").mkdir(parents=True, exist_ok=True)
    write_table(_target_rows(BASE_T), root / "base" / "eval_target.parquet", _prov("eval-target"))
    write_table(_general_rows(BASE_G), root / "base" / "eval_general.parquet", _prov("eval-general"))
    for (m, lr), seeds in grid.items():
        for s, (t, g) in seeds.items():
            write_point(root, m, lr, s, t, g)
    return root


def _tree_digest(root: Path) -> dict:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _hand_matrix(m, lr, kind):
    """Per-(seed, item) values in points, straight from GRID (independent of the report's code)."""
    seeds = sorted(GRID[(m, lr)])
    if kind == "gain":
        return np.array([[100.0 * (a - b) for a, b in zip(GRID[(m, lr)][s][0], BASE_T)] for s in seeds])
    return np.array([[100.0 * (b - a) for a, b in zip(GRID[(m, lr)][s][1], BASE_G)] for s in seeds])


@pytest.fixture
def sweep(tmp_path):
    return make_sweep(tmp_path / "sweep")


def _report(cli, root, out):
    r = cli("report", str(root), "-o", str(out))
    return r


# ---------------------------------------------------------------- the report on a good sweep
def test_sweep_report_seed_means_intervals_frontiers_and_matched_gain(cli, sweep, tmp_path):
    before = _tree_digest(sweep)
    out = tmp_path / "rep"
    r = _report(cli, sweep, out)
    assert r.returncode == 0, r.stderr
    assert _tree_digest(sweep) == before  # the inputs are untouched
    cfg, prov = read_table(out / "leaderboard.parquet")
    assert prov["command"] == "report"
    cfg = cfg.set_index("key")
    assert list(cfg.index) == ["lora lr=0.001", "lora lr=0.003", "oft lr=0.0005", "oft lr=0.0015"]
    # seed means by hand: gain = 12.5 x (items right), averaged over the two seeds
    hand = {"lora lr=0.001": (62.5, 25.0), "lora lr=0.003": (87.5, 50.0), "oft lr=0.0005": (37.5, 0.0),
            "oft lr=0.0015": (75.0, 18.75)}
    # |error| of a mean of 16 exactly representable multiples of 100/8 stays below 1e-12 of 100
    for k, (g, f) in hand.items():
        assert cfg.loc[k, "gain"] == pytest.approx(g, abs=1e-12)
        assert cfg.loc[k, "forgetting"] == pytest.approx(f, abs=1e-12)
        assert cfg.loc[k, "target"] == pytest.approx(g, abs=1e-12)          # the base's target is 0
        assert cfg.loc[k, "general"] == pytest.approx(100 - f, abs=1e-12)   # the base's general is 100
        assert cfg.loc[k, "n_seeds"] == 2 and cfg.loc[k, "seeds"] == "1,2" and cfg.loc[k, "missing_seeds"] == ""
    assert cfg.loc["lora lr=0.001", "lr"] == 1e-3 and cfg.loc["lora lr=0.001", "steps"] == 30
    # intervals: the statistics core on the hand-built (seed x item) matrices. The report's per-item
    # values are the same numbers (item weight N·w = 8 · 1/8 = 1 exactly in binary), so the two agree to
    # the last bit; 1e-9 points leaves room for a different summation order only.
    for (m, lr) in GRID:
        k = f"{m} lr={lr:g}"
        for kind in ("gain", "forgetting"):
            ref = ss.seed_item_interval(_hand_matrix(m, lr, kind))
            row = cfg.loc[k]
            assert (row[f"{kind}_low"], row[f"{kind}_high"]) == pytest.approx(
                (ref.interval.low, ref.interval.high), abs=1e-9)
            assert (row[f"{kind}_item_low"], row[f"{kind}_item_high"]) == pytest.approx(
                (ref.item_only.low, ref.item_only.high), abs=1e-9)
            # between-seed SD of the per-seed values, by hand
            per_seed = _hand_matrix(m, lr, kind).mean(axis=1)
            if np.ptp(per_seed) > 0:
                assert row[f"{kind}_seed_sd"] == pytest.approx(np.std(per_seed, ddof=1), rel=1e-12)
    # frontier: every configuration here is on its own method's frontier (gain and forgetting both rise)
    assert cfg["frontier"].all()
    # cost columns from the manifests: s/step = train_seconds / steps, mean over seeds; peak RSS: max
    assert cfg.loc["lora lr=0.001", "s_per_step"] == pytest.approx(((60 + 1) / 30 + (60 + 2) / 30) / 2, rel=1e-12)
    assert cfg.loc["lora lr=0.001", "peak_rss_mb"] == 920.0
    assert cfg.loc["oft lr=0.0005", "trainable_params"] == 3000
    # matched gain: 5 levels from max(62.5, 37.5) to min(87.5, 75)
    mg, _ = read_table(out / "sweep_matched_gain.parquet")
    assert sorted(mg["target_gain"].unique()) == pytest.approx([62.5, 65.625, 68.75, 71.875, 75.0], abs=1e-12)
    at = mg[np.isclose(mg["target_gain"], 68.75)].set_index("method")
    # lora: t = (68.75 − 62.5) / 25 = 0.25 -> 25 + 0.25 x 25; oft: t = (68.75 − 37.5) / 37.5 -> 18.75 t
    assert at.loc["lora", "forgetting"] == pytest.approx(31.25, abs=1e-9)
    assert at.loc["oft", "forgetting"] == pytest.approx(18.75 * (31.25 / 37.5), abs=1e-9)
    ref = ss.seed_item_interval(0.75 * _hand_matrix("lora", 1e-3, "forgetting")
                                + 0.25 * _hand_matrix("lora", 3e-3, "forgetting"))
    assert (at.loc["lora", "ci_low"], at.loc["lora", "ci_high"]) == pytest.approx(
        (ref.interval.low, ref.interval.high), abs=1e-9)
    # pairs: gain and forgetting of the representatives (the registry's arena lr: lora 1e-3, oft 5e-4),
    # and forgetting at each matched level, Holm-adjusted within each measure
    pairs, _ = read_table(out / "sweep_pairs.parquet")
    g = pairs[pairs["measure"] == "target gain"].iloc[0]
    assert (g["a"], g["b"], g["a_point"], g["b_point"]) == ("lora", "oft", "lora lr=0.001", "oft lr=0.0005")
    assert g["diff"] == pytest.approx(62.5 - 37.5, abs=1e-9)
    dref = ss.seed_item_interval(_hand_matrix("lora", 1e-3, "gain") - _hand_matrix("oft", 5e-4, "gain"))
    assert (g["ci_low"], g["ci_high"], g["p_value"]) == pytest.approx(
        (dref.interval.low, dref.interval.high, dref.p_value), abs=1e-9)
    mpairs = pairs[pairs["measure"] == "forgetting at matched gain"]
    assert len(mpairs) == 5
    p = mpairs["p_value"].to_numpy(float)
    order = np.argsort(p)
    holm = np.maximum.accumulate(np.minimum(1.0, (5 - np.arange(5)) * p[order]))
    assert mpairs["p_holm"].to_numpy(float)[order] == pytest.approx(holm, abs=1e-12)
    # the markdown carries the tables; the plane is drawn
    md = (out / "leaderboard.md").read_text()
    for head in ("## Configurations", "## Cost", "## Per-method frontiers", "## Forgetting at matched gain",
                 "## Method pairs", "## Points"):
        assert head in md
    assert "**lora**: lr=0.001 (gain +62.50, forgetting +25.00) → lr=0.003 (gain +87.50, forgetting +50.00)" in md
    assert (out / "plane.png").stat().st_size > 10_000


def test_dominated_configuration_is_off_the_frontier_and_one_seed_is_labelled(cli, tmp_path):
    grid = dict(GRID)
    # a lora configuration worse than lora lr=1e-3 on both axes (gain 25, forgetting 37.5), one seed only
    grid[("lora", 2e-4)] = {1: ([1, 1, 0, 0, 0, 0, 0, 0], [1, 0, 1, 0, 1, 0, 1, 1])}
    root = make_sweep(tmp_path / "sw", grid)
    r = _report(cli, root, tmp_path / "rep")
    assert r.returncode == 0, r.stderr
    cfg = read_table(tmp_path / "rep" / "leaderboard.parquet")[0].set_index("key")
    row = cfg.loc["lora lr=0.0002"]
    assert not row["frontier"] and row["n_seeds"] == 1 and row["missing_seeds"] == "2"
    assert "seed 2 not run" in row["note"] and "one seed" in row["note"]
    assert math.isnan(row["gain_seed_sd"])
    # one seed: the interval is the item interval
    assert (row["gain_low"], row["gain_high"]) == pytest.approx((row["gain_item_low"], row["gain_item_high"]), abs=1e-12)


# ---------------------------------------------------------------- bad input
def test_mixed_base_models_are_refused(cli, sweep, tmp_path):
    write_point(sweep, "oft", 5e-4, 3, *GRID[("oft", 5e-4)][1], base="smollm2-135m@0000000000000000")
    before = _tree_digest(sweep)
    r = _report(cli, sweep, tmp_path / "rep")
    assert r.returncode == 1 and "mixes base models" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "rep").exists() and _tree_digest(sweep) == before


@pytest.mark.parametrize("scorers, protocol", [(dict(SCORER, nq_open="nq:lm-eval"), "builtin@1"),
                                               (SCORER, "lm-eval@1")])
def test_mixed_protocols_are_refused(cli, sweep, tmp_path, scorers, protocol):
    d = sweep / "lora" / "lr0.001" / "s2"
    write_table(_general_rows(GRID[("lora", 1e-3)][2][1], "adapter", scorers, protocol), d / "eval_general.parquet",
                _prov("eval-general", d / "train/final"))
    before = _tree_digest(sweep)
    r = _report(cli, sweep, tmp_path / "rep")
    assert r.returncode == 1 and "mixes protocols" in r.stderr and "lora lr=0.001 seed 2" in r.stderr
    assert not (tmp_path / "rep").exists() and _tree_digest(sweep) == before


def test_mixed_item_sets_are_refused(cli, sweep, tmp_path):
    d = sweep / "oft" / "lr0.0015" / "s1"
    df = _target_rows(GRID[("oft", 1.5e-3)][1][0], "adapter").iloc[:7]  # one item fewer (another --limit)
    write_table(df, d / "eval_target.parquet", _prov("eval-target", d / "train/final"))
    r = _report(cli, sweep, tmp_path / "rep")
    assert r.returncode == 1 and "mixes item sets" in r.stderr and "oft lr=0.0015 seed 1" in r.stderr


def test_diverged_point_is_excluded_and_labelled(cli, sweep, tmp_path):
    # seed 2 of lora lr=3e-3 diverged before its first checkpoint: no train/ left, only the marker
    d = sweep / "lora" / "lr0.003" / "s2"
    shutil.rmtree(d)
    d.mkdir()
    (d / "diverged.json").write_text(json.dumps({"status": "diverged", "stopped_at_step": 7,
                                                 "stop_reason": "loss is nan", "command": []}))
    # seed 1 of oft lr=1.5e-3 diverged after a checkpoint: the manifest says so (its old evals are ignored)
    m = sweep / "oft" / "lr0.0015" / "s1" / "train" / "manifest.json"
    man = json.loads(m.read_text())
    man.update(status="diverged", stopped_at_step=20, stop_reason="weights hold NaN")
    m.write_text(json.dumps(man))
    r = _report(cli, sweep, tmp_path / "rep")
    assert r.returncode == 0, r.stderr
    cfg = read_table(tmp_path / "rep" / "leaderboard.parquet")[0].set_index("key")
    row = cfg.loc["lora lr=0.003"]
    assert row["n_seeds"] == 1 and row["missing_seeds"] == "2"
    assert "seed 2 excluded (training diverged at step 7: loss is nan)" in row["note"]
    # what is left is seed 1 alone: gain 100 (all 8 right), forgetting 50, not an average with the lost seed
    assert row["gain"] == pytest.approx(100.0, abs=1e-12) and row["forgetting"] == pytest.approx(50.0, abs=1e-12)
    assert cfg.loc["oft lr=0.0015", "seeds"] == "2" and "step 20" in cfg.loc["oft lr=0.0015", "note"]
    runs = read_table(tmp_path / "rep" / "sweep_runs.parquet")[0]
    ex = runs[~runs["used"]]
    assert sorted(zip(ex["method"], ex["seed"], ex["status"])) == [("lora", 2, "diverged"), ("oft", 1, "diverged")]
    md = (tmp_path / "rep" / "leaderboard.md").read_text()
    assert "**excluded**" in md and "training diverged at step 7: loss is nan" in md


def test_points_without_results_are_listed_not_used(cli, sweep, tmp_path):
    # a changed grid: a new lr for oft whose run was interrupted (no evals yet) and a new seed for lora
    d = sweep / "oft" / "lr0.0001" / "s1" / "train"
    d.mkdir(parents=True)
    (d / "manifest.json").write_text(json.dumps({"status": "running", "config": {"method": "oft", "lr": 1e-4,
                                                                                 "steps": 30, "seed": 1}}))
    write_point(sweep, "lora", 1e-3, 3, [1] * 8, [1] * 8)
    r = _report(cli, sweep, tmp_path / "rep")
    assert r.returncode == 0, r.stderr
    cfg = read_table(tmp_path / "rep" / "leaderboard.parquet")[0].set_index("key")
    assert "oft lr=0.0001" not in cfg.index
    assert cfg.loc["lora lr=0.001", "seeds"] == "1,2,3"
    # seed 3 exists for one configuration only: every other one is labelled as missing it
    assert cfg.loc["oft lr=0.0005", "missing_seeds"] == "3" and "seed 3 not run" in cfg.loc["oft lr=0.0005", "note"]
    runs = read_table(tmp_path / "rep" / "sweep_runs.parquet")[0]
    row = runs[(runs["method"] == "oft") & (runs["lr"] == 1e-4)].iloc[0]
    assert not row["used"] and row["status"] == "no results" and "training running" in row["reason"]
    assert "excluded oft lr=0.0001 seed 1" in r.stderr


def test_sweep_without_base_evals_is_refused(cli, sweep, tmp_path):
    (sweep / "base" / "eval_general.parquet").unlink()
    r = _report(cli, sweep, tmp_path / "rep")
    assert r.returncode == 1 and "no base general eval" in r.stderr


def test_sweep_folder_is_reported_alone_and_rerun_replaces_its_report(cli, sweep, tmp_path):
    r = cli("report", str(sweep), f"lora={sweep / 'lora'}", "-o", str(tmp_path / "rep"))
    assert r.returncode == 2 and "reported on its own" in r.stderr
    r = cli("report", str(sweep), "-o", str(tmp_path / "rep"), "--modules", "x")
    assert r.returncode == 2 and "--modules" in r.stderr
    # a report inside the sweep folder (make sweep's SWEEP_RUNS/report) is not read back, and replaced
    assert _report(cli, sweep, sweep / "report").returncode == 0
    r = _report(cli, sweep, sweep / "report")
    assert r.returncode == 0, r.stderr
    assert len(read_table(sweep / "report" / "leaderboard.parquet")[0]) == 4


# ---------------------------------------------------------------- make sweep
def _make_n(*extra):
    if shutil.which("make") is None:
        pytest.skip("no make")
    cmd = ["make", "-n", "--no-print-directory", "sweep-stages", "SWEEP_RUNS=/nonexistent-sweep", *extra]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=True).stdout


def _grid_lr(arena_lr, mult) -> str:
    """A grid rate as its directory names it: arena_lr x mult to 6 significant digits, printed by %g."""
    v = float("%.6g" % (arena_lr * mult))
    return "%g" % v


def test_make_sweep_lists_every_stage_of_a_2x2x2_grid():
    out = _make_n("SWEEP_METHODS=lora full", "LR_MULTS=1 3", "SEEDS=1 2")
    from peftarena_cli.methods import METHODS

    lines = out.splitlines()
    want = set()
    for m in ("lora", "full"):
        for mult in (1, 3):
            lr = _grid_lr(METHODS[m].arena_lr, mult)
            for s in (1, 2):
                d = f"/nonexistent-sweep/{m}/lr{lr}/s{s}"
                want.add(d)
                train = [x for x in lines if "finetune" in x and f"-o {d}/train" in x]
                assert len(train) == 1, (d, out)
                # the finetune command continues on the next lines (make -n prints the recipe as written)
                i = lines.index(train[0])
                cmd = " ".join(lines[i:i + 3])
                assert f"--method {m}" in cmd and f"--lr {lr}" in cmd and f"--seed {s}" in cmd and "--steps 30" in cmd
                for k in ("target", "general"):
                    ev = [x for x in lines if f"eval-{k}" in x and f"-o {d}/eval_{k}.parquet" in x]
                    assert len(ev) == 1
                    model = f"{d}/train/final" if m == "full" else f"smollm2-135m --adapter {d}/train/final"
                    assert f"eval-{k} {model} " in ev[0]
    # the base is evaluated once, the report reads the whole folder
    assert sum("eval-target smollm2-135m --limit" in x for x in lines) == 1
    assert sum("eval-general smollm2-135m --limit" in x for x in lines) == 1
    assert sum(x.endswith("report /nonexistent-sweep -o /nonexistent-sweep/report") for x in lines) == 1
    assert sum("sweep_train.py" in x for x in lines) == 8


def test_make_sweep_default_grid_comes_from_the_registry():
    out = _make_n("SWEEP_METHODS=vera", "SEEDS=1")
    from peftarena_cli.methods import METHODS, SWEEP_LR_MULTS

    lrs = {_grid_lr(METHODS["vera"].arena_lr, x) for x in SWEEP_LR_MULTS}
    got = {x.split("--lr ")[1].split()[0] for x in out.splitlines() if "--lr " in x}
    assert got == lrs and len(lrs) == 3
    r = subprocess.run([str(ROOT / ".venv/bin/python"), "-m", "peftarena_cli.methods", "grid", "vera"],
                       capture_output=True, text=True, check=True)
    assert set(r.stdout.split()) == lrs


def test_make_sweep_skips_finished_points(tmp_path):
    """A rerun with a changed grid adds the new points and keeps the finished ones: a point whose
    artifacts exist gets no stage."""
    if shutil.which("make") is None:
        pytest.skip("no make")
    root = tmp_path / "sw"
    for p in ("base/eval_target.parquet", "base/eval_general.parquet", "lora/lr0.001/s1/train/.done",
              "lora/lr0.001/s1/eval_target.parquet", "lora/lr0.001/s1/eval_general.parquet"):
        (root / p).parent.mkdir(parents=True, exist_ok=True)
        (root / p).write_text("x")
    cmd = ["make", "-n", "--no-print-directory", "sweep-stages", f"SWEEP_RUNS={root}", "SWEEP_METHODS=lora",
           "SWEEP_LRS_lora=0.001", "SEEDS=1 2"]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert f"{root}/lora/lr0.001/s2/train" in out and f"{root}/lora/lr0.001/s1/train" not in out
    assert "eval-target smollm2-135m --limit" not in out  # the base's evals are done


def test_sweep_train_records_a_divergence_and_keeps_other_failures(tmp_path):
    py = str(ROOT / ".venv/bin/python")
    script = str(ROOT / "scripts/sweep_train.py")
    fake = tmp_path / "fake.py"
    point = tmp_path / "lora" / "lr0.001" / "s1"
    # a finetune that diverged: exit 1 and the run's manifest says so (what finetune leaves)
    fake.write_text("import json, pathlib, sys\n"
                    f"d = pathlib.Path({str(point / 'train')!r}); d.mkdir(parents=True)\n"
                    "(d / 'manifest.json').write_text(json.dumps({'status': 'diverged', 'stopped_at_step': 4, "
                    "'stop_reason': 'loss is nan', 'last_finite_checkpoint': None}))\n"
                    "sys.exit(1)\n")
    r = subprocess.run([py, script, str(point), "--", py, str(fake)], capture_output=True, text=True)
    assert r.returncode == 0 and "diverged at step 4" in r.stderr
    marker = json.loads((point / "diverged.json").read_text())
    assert marker["stopped_at_step"] == 4 and marker["stop_reason"] == "loss is nan"
    # a second try does not train again
    r = subprocess.run([py, script, str(point), "--", py, "-c", "raise SystemExit(9)"], capture_output=True, text=True)
    assert r.returncode == 0 and "not trained again" in r.stderr
    # any other failure keeps its status and writes nothing
    other = tmp_path / "oft" / "lr0.001" / "s1"
    r = subprocess.run([py, script, str(other), "--", py, "-c", "import sys; print('error: boom', file=sys.stderr); "
                        "sys.exit(1)"], capture_output=True, text=True)
    assert r.returncode == 1 and not (other / "diverged.json").exists()
