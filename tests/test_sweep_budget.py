"""Sweeps that fit the budget (scripts/sweep.mk; docs/report.md, "Sweeps"; docs/drift.md): a divergence
is read from finetune's manifest, even one before the first checkpoint; the base's drift continuations
are computed once and reused with the same numbers; the drift screen's rule and its agreement figure on
hand-built tables; the Make stages of a screened sweep."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PY = str(ROOT / ".venv/bin/python")
TINY = ["--max-length", "512", "--batch-size", "2"]


# ---------------------------------------------------------------- 1. divergence, from the manifest
def test_divergence_at_step_1_leaves_the_manifest_and_the_sweep_marks_the_point(tiny_model_dir, tmp_path):
    # lr 1e39: Adam's first update moves every LoRA B entry by ~1e39, past float32's largest value
    # (3.4e38), so the weights hold Inf after step 1; they are checked before step 1's save, so the run
    # diverges at step 1, before any checkpoint exists
    point = tmp_path / "sweep" / "lora" / "lr1e+39" / "s1"
    finetune = [PY, "-m", "peftarena_cli", "finetune", str(tiny_model_dir), "-o", str(point / "train"),
                "--steps", "3", "--save-every", "1", "--lr", "1e39", *TINY]
    r = subprocess.run([PY, str(ROOT / "scripts/sweep_train.py"), str(point), "--", *finetune],
                       capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    man = json.loads((point / "train" / "manifest.json").read_text())
    assert man["status"] == "diverged" and man["stopped_at_step"] == 1
    assert man["last_finite_checkpoint"] is None and man["checkpoints"] == []
    assert not list((point / "train").glob("checkpoint-*"))
    marker = json.loads((point / "diverged.json").read_text())
    assert marker["status"] == "diverged" and marker["stopped_at_step"] == 1
    assert marker["last_finite_checkpoint"] is None and marker["stop_reason"] == man["stop_reason"]
    assert marker["command"] == finetune


def test_sweep_train_ignores_divergence_text_without_the_manifest(tmp_path):
    # the message alone (no manifest saying "diverged") is any other failure: its status is kept
    point = tmp_path / "lora" / "lr0.001" / "s1"
    fake = ("import sys; print('error: training diverged at step 4: loss is nan', file=sys.stderr); "
            "sys.exit(1)")
    r = subprocess.run([PY, str(ROOT / "scripts/sweep_train.py"), str(point), "--", PY, "-c", fake],
                       capture_output=True, text=True)
    assert r.returncode == 1 and not (point / "diverged.json").exists()
    # a manifest that is still "running" (a crash, not a divergence) is not a divergence either
    (point / "train").mkdir(parents=True)
    (point / "train" / "manifest.json").write_text(json.dumps({"status": "running"}))
    r = subprocess.run([PY, str(ROOT / "scripts/sweep_train.py"), str(point), "--", PY, "-c", fake],
                       capture_output=True, text=True)
    assert r.returncode == 1 and not (point / "diverged.json").exists()


# ---------------------------------------------------------------- 2. the base's continuations, once
DRIFT = ["--sets", "target,general", "--target-task", "arith", "--general-suite", "builtin.facts",
         "--limit", "3", "--max-new-tokens", "6", "--batch-size", "2"]


def _table(path):
    from peftarena_cli.artifacts.tables import read_table

    return read_table(path)[0]


def test_drift_with_the_reused_base_continuations_equals_drift_from_scratch(tiny_model_dir, tiny_lora_dir, tmp_path, cli):
    import pandas as pd

    base_file = tmp_path / "sweep" / "base" / "drift_base.json"
    base_file.parent.mkdir(parents=True)
    r = cli("drift", tiny_model_dir, tiny_lora_dir, *DRIFT, "-o", tmp_path / "scratch.parquet")
    assert r.returncode == 0, r.stderr
    # the first run with the option generates the continuations (the same numbers) and writes them
    r = cli("drift", tiny_model_dir, tiny_lora_dir, *DRIFT, "--base-continuations", base_file,
            "-o", tmp_path / "first.parquet")
    assert r.returncode == 0, r.stderr
    art = json.loads(base_file.read_text())
    assert art["format"] == "peftarena-drift-base/1" and art["n_prompts"] == 6 == len(art["continuations"])
    before = base_file.read_bytes()
    # the next one reads them: not regenerated, the file untouched, every row equal to the scratch run
    r = cli("drift", tiny_model_dir, tiny_lora_dir, *DRIFT, "--base-continuations", base_file,
            "-o", tmp_path / "reused.parquet")
    assert r.returncode == 0, r.stderr
    assert "continuations of 6 prompts from" in r.stderr
    assert base_file.read_bytes() == before
    scratch = _table(tmp_path / "scratch.parquet")
    for name in ("first.parquet", "reused.parquet"):
        pd.testing.assert_frame_equal(_table(tmp_path / name), scratch, check_exact=True)
    # the greedy rows' lengths are the stored continuations' (the prompt order is the artifact's items)
    g = scratch[scratch["source"] == "greedy"]
    n = {(s, t, str(i)): k for s, t, i, k in zip(g["prompt_set"], g["task"], g["id"], g["n_tokens"])}
    assert [n[tuple(it)] for it in art["items"]] == [len(c) for c in art["continuations"]]

    # the stored continuations are what a reusing run measures on: shortened ones give shorter rows
    cut = tmp_path / "cut.json"
    cut.write_text(json.dumps({**art, "continuations": [c[:2] for c in art["continuations"]]}))
    r = cli("drift", tiny_model_dir, tiny_lora_dir, *DRIFT, "--base-continuations", cut, "-o", tmp_path / "cut.parquet")
    assert r.returncode == 0, r.stderr
    cg = _table(tmp_path / "cut.parquet")
    assert (cg[cg["source"] == "greedy"]["n_tokens"] <= 2).all()


def test_mismatched_base_continuations_are_refused(tiny_model_dir, tiny_lora_dir, tmp_path, cli):
    base_file = tmp_path / "drift_base.json"
    r = cli("drift", tiny_model_dir, tiny_lora_dir, *DRIFT, "--base-continuations", base_file,
            "-o", tmp_path / "a.parquet")
    assert r.returncode == 0, r.stderr
    art = json.loads(base_file.read_text())
    before = base_file.read_bytes()

    def refused(path, *extra, what):
        out = tmp_path / "refused.parquet"
        r = cli("drift", tiny_model_dir, tiny_lora_dir, *DRIFT, *extra, "--base-continuations", path, "-o", out)
        assert r.returncode == 1, r.stderr
        assert what in r.stderr and "Traceback" not in r.stderr
        assert not out.exists()

    # another prompt set (a different --limit), and another continuation length
    refused(base_file, "--limit", "2", what="other settings: limit 3 there, 2 here")
    refused(base_file, "--max-new-tokens", "5", what="other settings: max_new_tokens 6 there, 5 here")
    assert base_file.read_bytes() == before  # never rewritten by a refused run
    # another base model
    other = tmp_path / "other_base.json"
    other.write_text(json.dumps({**art, "base": {"spec": "x", "identity": "another@0123456789abcdef"}}))
    refused(other, what="made with another base model")
    # the same settings on other prompts (a task file that changed since)
    moved = tmp_path / "moved.json"
    moved.write_text(json.dumps({**art, "prompts": "0" * 16}))
    refused(moved, what="made on other prompts")
    # not such a file at all
    junk = tmp_path / "junk.json"
    junk.write_text("{\"a\": 1}")
    refused(junk, what="is not a drift base-continuations file")


# ---------------------------------------------------------------- 3. the drift screen
def _cfgs(rows):
    import pandas as pd

    return pd.DataFrame(rows, columns=["method", "key", "gain", "drift", "drift_low", "drift_high"])


NAN = float("nan")
HAND = _cfgs([  # (method, key, gain, drift, drift_low, drift_high)
    ("lora", "A", 10.0, 0.10, 0.08, 0.12),
    ("lora", "B", 12.0, 0.30, 0.25, 0.35),
    ("lora", "C", 8.0, 0.20, 0.17, 0.23),   # A: gain 10 >= 8 and 0.12 < 0.17: screened out
    ("lora", "D", 9.0, 0.13, 0.11, 0.15),   # A dominates it, but 0.12 < 0.11 fails: within the margin, kept
    ("lora", "I", 1.0, 0.90, NAN, NAN),     # undefined interval: never screened out
    ("oft", "E", 5.0, 0.05, 0.00, 0.10),
    ("oft", "F", 4.0, 0.50, 0.40, 0.60),    # E: gain 5 >= 4 and 0.10 < 0.40: screened out
    ("oft", "H", 6.0, 0.30, 0.28, 0.32),    # lora's A would dominate it: other methods never screen
])


def test_screen_rule_on_a_hand_built_table():
    from peftarena_cli.report.screen import screen_table

    t = screen_table(HAND).set_index("key")
    assert {k for k in t.index if not t.loc[k, "kept"]} == {"C", "F"}
    assert t.loc["C", "dominated_by"] == "A" and t.loc["F", "dominated_by"] == "E"
    assert (t.loc[["A", "B", "D", "E", "H", "I"], "dominated_by"] == "").all()
    # the screen frontier: Pareto in (gain >=, drift <=), no margin: D is below A's, I below everyone's
    assert {k for k in t.index if t.loc[k, "screen_frontier"]} == {"A", "B", "E", "H"}


def test_screen_agreement_on_a_hand_built_table():
    from peftarena_cli.report.screen import screen_agreement, screen_table

    t = screen_table(HAND)
    # lora's full frontier is its screen frontier {A, B}; oft's full frontier {E, F} holds F, which
    # the screen dropped, and not H
    full = {"A": True, "B": True, "C": False, "D": False, "I": False, "E": True, "F": True, "H": False}
    a = screen_agreement(t, full)
    assert (a["methods"], a["methods_equal"], a["agreement"]) == (2, 1, 0.5)
    assert (a["full_frontier_configs"], a["full_frontier_kept"], a["recall"]) == (4, 3, 0.75)
    per = {p["method"]: p for p in a["per_method"]}
    assert per["lora"]["equal"] and not per["oft"]["equal"]
    assert per["oft"]["screen_frontier"] == ["E", "H"] and per["oft"]["full_frontier"] == ["E", "F"]
    # every configuration agreeing: 100 % both ways
    same = {k: bool(v) for k, v in zip(t["key"], t["screen_frontier"])}
    b = screen_agreement(t, same)
    assert b["agreement"] == 1.0 and b["recall"] == 1.0


# drift per point, general prompts: the seed means are equal within a configuration, so the values are
# the hand-worked means below; lora's rise with its gain (no config dominated), oft's small-lr point has
# less gain and far more drift than its large-lr point (screened out)
DRIFT_KL = {("lora", 1e-3): 0.10, ("lora", 3e-3): 0.30, ("oft", 5e-4): 0.50, ("oft", 1.5e-3): 0.05}
WOBBLE = {1: [-0.01, 0.01, 0.0, 0.0], 2: [0.01, -0.01, 0.0, 0.0]}


def _write_drift(root, m, lr, seed, level, reference=True):
    import pandas as pd

    from peftarena_cli.artifacts.tables import write_table
    from peftarena_cli.evaluation.drift import DRIFT_COLUMNS

    rows = []
    for i, w in enumerate(WOBBLE[seed]):
        rows.append({"alpha": 1.0, "prompt_set": "general", "task": "facts", "id": f"f{i}", "source": "greedy",
                     "n_tokens": 6, "kl": level + w})
        if reference:  # another source: not the screen's (drift --no-reference, as the sweep runs it, has none)
            rows.append({"alpha": 1.0, "prompt_set": "general", "task": "facts", "id": f"f{i}", "source": "reference",
                         "n_tokens": 3, "kl": 9.0})
        rows.append({"alpha": 1.0, "prompt_set": "target", "task": "arith", "id": f"t{i}", "source": "greedy",
                     "n_tokens": 6, "kl": 7.0})  # target prompts: not the screen's
    write_table(pd.DataFrame(rows, columns=DRIFT_COLUMNS), root / m / f"lr{lr:g}" / f"s{seed}" / "drift.parquet")


def _screened_sweep(tmp_path, reference=True, name="sweep"):
    from test_sweep_pipeline import GRID, make_sweep

    root = make_sweep(tmp_path / name)
    for (m, lr), seeds in GRID.items():
        for s in seeds:
            _write_drift(root, m, lr, s, DRIFT_KL[(m, lr)], reference=reference)
    return root


def _digest(root):
    import hashlib

    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_screen_of_a_sweep_folder_and_the_reports_agreement(tmp_path, cli):
    from peftarena_cli.artifacts.tables import read_table

    root = _screened_sweep(tmp_path)
    r = subprocess.run([PY, str(ROOT / "scripts/sweep_screen.py"), str(root)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    screen = json.loads((root / "screen.json").read_text())
    assert screen["screened_out"] == ["oft/lr0.0005/s1", "oft/lr0.0005/s2"]
    assert screen["selected"] == sorted(f"{m}/lr{lr:g}/s{s}" for m, lr in DRIFT_KL if (m, lr) != ("oft", 5e-4)
                                        for s in (1, 2))
    c = {x["key"]: x for x in screen["configs"]}
    # gains: the hand-worked seed means of tests/test_sweep_pipeline.py; drift: the levels above (the
    # wobble cancels); both are means of a few exactly given numbers, good to 1e-12
    for key, gain, (m, lr) in [("lora lr=0.001", 62.5, ("lora", 1e-3)), ("lora lr=0.003", 87.5, ("lora", 3e-3)),
                               ("oft lr=0.0005", 37.5, ("oft", 5e-4)), ("oft lr=0.0015", 75.0, ("oft", 1.5e-3))]:
        assert abs(c[key]["gain"] - gain) < 1e-12 and abs(c[key]["drift"] - DRIFT_KL[(m, lr)]) < 1e-12
    assert c["oft lr=0.0005"]["dominated_by"] == "oft lr=0.0015" and not c["oft lr=0.0005"]["kept"]

    # every point has its full general eval too: the report computes the agreement. Full frontiers
    # (tests/test_sweep_pipeline.py): both lora and both oft configurations; screen frontiers: both
    # lora, oft lr=0.0015 only -> 1 of 2 methods equal, 3 of 4 full-frontier configurations kept
    before = _digest(root)
    r = cli("report", str(root), "-o", str(tmp_path / "rep"))
    assert r.returncode == 0, r.stderr
    assert _digest(root) == before
    t, _ = read_table(tmp_path / "rep" / "sweep_screen.parquet")
    assert set(t["agreement"]) == {0.5} and set(t["recall"]) == {0.75}
    md = (tmp_path / "rep" / "leaderboard.md").read_text()
    assert "## Drift screen" in md
    assert "full frontier for 1 of 2 methods (50 %)" in md and "kept 3 of the 4 full-frontier" in md

    # a screened sweep: the screened-out points have no general eval; they are listed as such and the
    # agreement is not computed (the full frontier is not known for them)
    for s in (1, 2):
        (root / "oft" / "lr0.0005" / f"s{s}" / "eval_general.parquet").unlink()
    r = cli("report", str(root), "-o", str(tmp_path / "rep2"))
    assert r.returncode == 0, r.stderr
    runs, _ = read_table(tmp_path / "rep2" / "sweep_runs.parquet")
    out = runs[runs["status"] == "screened out"]
    assert sorted(zip(out["lr"], out["seed"])) == [(5e-4, 1), (5e-4, 2)]
    assert all("dominated by oft lr=0.0015" in x for x in out["reason"])
    md = (tmp_path / "rep2" / "leaderboard.md").read_text()
    assert "agreement not computed: the full general eval covers 6 of the screen's 8 points" in md


def test_drift_vector_reads_the_greedy_rows_with_or_without_reference_rows():
    import pandas as pd

    from peftarena_cli.evaluation.drift import DRIFT_COLUMNS
    from peftarena_cli.report.screen import drift_vector

    def row(alpha, pset, task, i, source, kl):
        return {"alpha": alpha, "prompt_set": pset, "task": task, "id": i, "source": source, "n_tokens": 4, "kl": kl}

    greedy = [row(1.0, "general", "facts", "f1", "greedy", 0.3), row(1.0, "general", "bbh", "b0", "greedy", 0.2),
              row(1.0, "general", "facts", "f0", "greedy", 0.1), row(0.5, "general", "facts", "f0", "greedy", 0.05),
              row(1.0, "target", "arith", "t0", "greedy", 5.0)]
    refs = [row(1.0, "general", "facts", "f0", "reference", 7.0), row(1.0, "general", "bbh", "b0", "reference", 8.0),
            row(0.5, "general", "facts", "f0", "reference", 6.0)]
    with_refs = pd.DataFrame(greedy[:2] + refs + greedy[2:], columns=DRIFT_COLUMNS)
    without = pd.DataFrame(greedy, columns=DRIFT_COLUMNS)
    # α = 1, greedy, general prompts, sorted by (set, task, id): b0 0.2, f0 0.1, f1 0.3 in both tables
    want = [("general", "bbh", "b0"), ("general", "facts", "f0"), ("general", "facts", "f1")]
    for t in (with_refs, without):
        keys, kl = drift_vector(t, "t")
        assert keys == want and kl.tolist() == [0.2, 0.1, 0.3]


def test_screen_is_the_same_with_and_without_reference_rows(tmp_path):
    # the sweep's drift runs with --no-reference: its tables have greedy rows only; the screen gives
    # what it gives on tables that also hold the (unread) reference rows
    docs = []
    for ref in (True, False):
        root = _screened_sweep(tmp_path, reference=ref, name=f"sweep-{ref}")
        r = subprocess.run([PY, str(ROOT / "scripts/sweep_screen.py"), str(root)], capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        docs.append(json.loads((root / "screen.json").read_text()))
    assert docs[0] == docs[1]
    assert docs[1]["screened_out"] == ["oft/lr0.0005/s1", "oft/lr0.0005/s2"]
    assert {c["key"]: c["drift"] for c in docs[1]["configs"]} == pytest.approx(
        {"lora lr=0.001": 0.10, "lora lr=0.003": 0.30, "oft lr=0.0005": 0.50, "oft lr=0.0015": 0.05}, abs=1e-12)


def _make(*args, dry=True):
    import shutil

    if shutil.which("make") is None:
        pytest.skip("no make")
    cmd = ["make", *(["-n"] if dry else []), "--no-print-directory", *args]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)


def test_make_sweep_screen_plans_drift_the_screen_and_gated_general_evals():
    grid = ["SWEEP_RUNS=/nonexistent-sweep", "SWEEP_METHODS=lora oft", "SWEEP_LRS_lora=0.001 0.003",
            "SWEEP_LRS_oft=0.0005", "SEEDS=1 2"]
    r = _make("sweep-stages", *grid, "SCREEN=1")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.replace("\\\n", " ").splitlines()
    points = [f"{m}/lr{lr}/s{s}" for m, lr in (("lora", "0.001"), ("lora", "0.003"), ("oft", "0.0005")) for s in (1, 2)]
    drift = [x for x in lines if " drift smollm2-135m " in x]
    assert len(drift) == 6
    for p in points:
        d = [x for x in drift if f"/nonexistent-sweep/{p}/train/final " in x]
        assert len(d) == 1 and f"-o /nonexistent-sweep/{p}/drift.parquet" in d[0]
        assert "--sets general" in d[0] and "--base-continuations /nonexistent-sweep/base/drift_base.json" in d[0]
        # the screen reads only the greedy rows: the references are not teacher-forced
        assert "--no-reference" in d[0].split() and "--reference" not in d[0].split()
        g = [x for x in lines if f"eval-general smollm2-135m --adapter /nonexistent-sweep/{p}/train/final" in x]
        assert len(g) == 1 and f"sweep_screen.py --selected /nonexistent-sweep {p}; then" in g[0]
    screen = [i for i, x in enumerate(lines) if x.endswith("scripts/sweep_screen.py /nonexistent-sweep")]
    assert len(screen) == 1
    # the order: every drift and eval-target before the screen, every point's eval-general after it
    idx = lambda pred: [i for i, x in enumerate(lines) if pred(x)]  # noqa: E731
    assert max(idx(lambda x: " drift smollm2-135m " in x or "eval-target" in x)) < screen[0]
    assert min(idx(lambda x: "eval-general smollm2-135m --adapter" in x)) > screen[0]
    # without SCREEN: no drift, no screen, every general eval ungated
    r = _make("sweep-stages", *grid)
    assert r.returncode == 0 and " drift smollm2-135m " not in r.stdout and "sweep_screen" not in r.stdout
    assert r.stdout.count("eval-general smollm2-135m --adapter") == 6


def test_make_screen_gate_runs_only_the_selected_general_evals(tmp_path):
    # the gate itself (no -n): with a screen on disk, the selected point runs its general eval (here
    # PA=echo), the screened-out one says so and runs nothing
    root = tmp_path / "sw"
    pts = ["lora/lr0.001/s1", "lora/lr0.003/s1"]
    for p in pts:
        for f in ("train/.done", "eval_target.parquet", "drift.parquet"):
            (root / p / f).parent.mkdir(parents=True, exist_ok=True)
            (root / p / f).write_text("x")
    (root / "base").mkdir()
    (root / "base" / "eval_target.parquet").write_text("x")
    (root / "screen.json").write_text(json.dumps({"selected": [pts[0]], "screened_out": [pts[1]]}))
    r = _make(f"SWEEP_RUNS={root}", "SWEEP_METHODS=lora", "SWEEP_LRS_lora=0.001 0.003", "SEEDS=1", "SCREEN=1",
              "PA=echo PA", *[f"{root}/{p}/eval_general.parquet" for p in pts], dry=False)
    assert r.returncode == 0, r.stderr
    ran = [x for x in r.stdout.splitlines() if x.startswith("PA eval-general")]
    assert len(ran) == 1 and f"{root}/{pts[0]}/train/final" in ran[0]
    assert f"{root}/{pts[1]}: screened out by the drift screen" in r.stdout
    # a missing screen is an error, not "screened out"
    (root / "screen.json").unlink()
    (root / "screen.json").mkdir()
    r = _make(f"SWEEP_RUNS={root}", "SWEEP_METHODS=lora", "SWEEP_LRS_lora=0.001 0.003", "SEEDS=1", "SCREEN=1",
              "PA=echo PA", f"{root}/{pts[0]}/eval_general.parquet", dry=False)
    assert r.returncode != 0 and "no readable screen" in r.stderr


def test_make_screen_keeps_general_evals_that_a_full_sweep_already_wrote(tmp_path):
    # a sweep run with SCREEN=0 has every general eval; `make sweep SCREEN=1` on it then adds the drift
    # and the screen for the agreement figure, and must not redo an eval because screen.json is newer
    import os
    import time

    root = tmp_path / "sw"
    pts = ["lora/lr0.001/s1", "lora/lr0.003/s1"]
    for p in pts:
        for f in ("train/.done", "eval_target.parquet", "drift.parquet", "eval_general.parquet"):
            (root / p / f).parent.mkdir(parents=True, exist_ok=True)
            (root / p / f).write_text("x")
    (root / "base").mkdir()
    (root / "base" / "eval_target.parquet").write_text("x")
    (root / "screen.json").write_text(json.dumps({"selected": pts, "screened_out": []}))
    later = time.time() + 60
    os.utime(root / "screen.json", (later, later))
    args = [f"SWEEP_RUNS={root}", "SWEEP_METHODS=lora", "SWEEP_LRS_lora=0.001 0.003", "SEEDS=1", "SCREEN=1",
            "PA=echo PA", *[f"{root}/{p}/eval_general.parquet" for p in pts]]
    r = _make(*args)
    assert r.returncode == 0, r.stderr
    assert "eval-general" not in r.stdout
    # a point without its general eval still gets one, after the screen
    (root / pts[1] / "eval_general.parquet").unlink()
    r = _make(*args)
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("eval-general") == 1 and f"{root}/{pts[1]}/train/final" in r.stdout
