"""RLVR beside SFT: arithmetic difficulty levels, reward robustness, an RLVR-trained adapter through every
downstream command, and the report's regime column, SFT-vs-RLVR comparison and path diagnostics."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pandas as pd
import pytest

from peftarena_cli.errors import DataError
from peftarena_cli.tasks import arith
from peftarena_cli.training import rewards


def _err(r) -> str:
    return r.stderr if isinstance(r.stderr, str) else r.stderr.decode(errors="replace")


# ------------------------------------------------------------------ difficulty levels
def _solve(question: str) -> int:
    """An independent solver for the generator's sentences."""
    value = int(re.match(r"\w+ has (\d+) ", question).group(1))
    for sent in question.split(". ")[1:]:
        if m := re.search(r"(?:gets|gives \w+) (\d+) more", sent):
            value += int(m.group(1))
        elif m := re.search(r"(?:gives away|loses) (\d+)", sent):
            value -= int(m.group(1))
        elif m := re.search(r"multiplied by (\d+)", sent):
            value *= int(m.group(1))
    return value


def test_default_problems_are_unchanged_and_levels_are_what_docs_say():
    first = arith.generate("test", 2, 0)
    # the default mix predates the levels: its problems (and so every earlier result) must not move
    assert first[0]["question"] == ("Jack has 16 stickers. Then Jack gets 15 more. Then Jack gets 29 more. "
                                    "Then Jack gets 4 more. How many stickers does Jack have now?")
    assert first[0]["answer"] == "64" and first[0]["id"] == "arith-test-0-0"
    for level, (ops_max, start_max) in {1: (1, 20), 2: (1, 40), 3: (2, 40)}.items():
        recs = arith.generate("test", 60, 0, level=level)
        for r in recs:
            q = r["question"]
            n_ops = len(re.findall(r"more\.|gives away|loses|multiplied", q))
            assert n_ops == ops_max, q
            assert "multiplied" not in q
            if level == 1:
                assert "gives away" not in q and "loses" not in q
            assert int(re.match(r"\w+ has (\d+) ", q).group(1)) <= start_max
            assert str(_solve(q)) == r["answer"] and r["solution"].endswith(f"The answer is {r['answer']}.")
        train = {r["question"] for r in arith.generate("train", 300, 1, level=level)}
        assert not train & {r["question"] for r in recs}  # the split is by question text, whatever the level
    assert all(str(_solve(r["question"])) == r["answer"] for r in arith.generate("test", 40, 5))


def test_level_task_names():
    from peftarena_cli.tasks.target_tasks import load_target_task

    assert arith.parse_task_name("arith") is None and arith.parse_task_name("arith-3") == 3
    t = load_target_task("arith-2", limit=5)
    assert t.name == "arith-2" and len(t.items) == 5
    assert [it.reference for it in t.items] == [r["answer"] for r in arith.generate("test", 5, 0, level=2)]
    with pytest.raises(DataError, match="unknown target task 'arith-9'"):
        load_target_task("arith-9")


# ------------------------------------------------------------------ rewards
def test_a_reward_that_raises_scores_that_completion_zero_and_counts_it():
    def fragile(completions, answer, **_):
        out = []
        for c, a in zip(completions, answer):
            if "boom" in c:
                raise ValueError("cannot parse")
            out.append(rewards.score(c, a))
        return out

    r = rewards.SafeReward(fragile)
    got = r(["The answer is 3.", "boom", "The answer is 5."], answer=["3", "4", "4"], kind=["math"] * 3)
    assert got == [1.0, 0.0, 0.0]
    assert r.errors == 1 and "ValueError: cannot parse" in r.last_error and r.__name__ == "fragile"
    assert rewards.SafeReward(rewards.verifiable_reward)(["12", "#### 7"], answer=["12", "8"]) == [1.0, 0.0]


def test_rlvr_without_an_answer_column_stops_before_training(tiny_model_dir, tmp_path, cli):
    data = tmp_path / "noanswer.jsonl"
    data.write_text('{"prompt": "What is 2+2?", "response": "4"}\n')
    out = tmp_path / "out"
    r = cli("finetune", tiny_model_dir, "-o", out, "--regime", "rlvr", "--data", data, "--steps", "1",
            "--batch-size", "2", "--num-generations", "2")
    assert r.returncode == 1 and "lacks a answer column" in _err(r) and "hint:" in _err(r)
    assert not out.exists()


# ------------------------------------------------------------------ an RLVR run through everything downstream
def _run(cli, *args):
    r = cli(*map(str, args))
    assert r.returncode == 0, _err(r)
    return r


def test_rlvr_adapter_passes_every_downstream_stage_and_the_report(tiny_model_dir, tmp_path, cli):
    from peftarena_cli.artifacts.tables import read_table

    runs = tmp_path / "runs"
    task = ["--task", "arith-1"]
    for tag, extra in (("sft", ["--data", "arith-1", "--batch-size", "2"]),
                       ("rlvr", ["--regime", "rlvr", "--data", "arith-1", "--batch-size", "4", "--num-generations", "2",
                                 "--max-completion-length", "6"])):
        d = runs / f"lora-{tag}"
        _run(cli, "finetune", tiny_model_dir, "-o", d / "train", "--steps", "2", "--save-every", "1", "--lr", "1e-2", *extra)
    (runs / "base" / "path").mkdir(parents=True)
    b = runs / "base"
    _run(cli, "eval-target", tiny_model_dir, *task, "--limit", "4", "--max-new-tokens", "4", "-o", b / "eval_target.parquet")
    _run(cli, "eval-general", tiny_model_dir, "--limit", "1", "--max-new-tokens", "4", "-o", b / "eval_general.parquet")
    samp = ["--limit", "3", "-n", "4", "--temperature", "1.0", "--k", "1,2,4", "--max-new-tokens", "4"]
    _run(cli, "eval-target", tiny_model_dir, *task, *samp, "-o", b / "path" / "target.parquet")
    _run(cli, "eval-general", tiny_model_dir, "--limit", "1", "--max-new-tokens", "4", "-o", b / "path" / "general.parquet")
    for tag in ("sft", "rlvr"):
        d = runs / f"lora-{tag}"
        final = d / "train" / "final"
        ckpts = [a for c in sorted((d / "train").glob("checkpoint-*")) for a in ("--adapter", c)]
        assert len(ckpts) == 4  # checkpoint-1, checkpoint-2
        (d / "path").mkdir()
        _run(cli, "eval-target", tiny_model_dir, "--adapter", final, *task, "--limit", "4", "--max-new-tokens", "4",
             "-o", d / "eval_target.parquet")
        _run(cli, "eval-general", tiny_model_dir, "--adapter", final, "--limit", "1", "--max-new-tokens", "4",
             "-o", d / "eval_general.parquet")
        _run(cli, "eval-target", tiny_model_dir, *ckpts, *task, *samp, "-o", d / "path" / "target.parquet")
        _run(cli, "eval-general", tiny_model_dir, *ckpts, "--limit", "1", "--max-new-tokens", "4",
             "-o", d / "path" / "general.parquet")
        if tag == "sft":
            continue
        # every analysis command takes the RLVR-trained adapter as it takes an SFT one
        _run(cli, "spectrum", tiny_model_dir, final, "-o", d / "spectrum.parquet", "--summary", d / "spectrum_summary.parquet")
        _run(cli, "csd", tiny_model_dir, final, "--general", "general:2", "--target", "arith:2", "-o", d / "csd.parquet")
        _run(cli, "act-geom", tiny_model_dir, final, "-p", "general:2", "-p", "arith:2", "-o", d / "act_geom.parquet")
        _run(cli, "drift", tiny_model_dir, final, "--target-task", "arith-1", "--limit", "1", "--max-new-tokens", "2",
             "-o", d / "drift.parquet")
        _run(cli, "interpolate", tiny_model_dir, final, "--alphas", "0,0.5,1", "--eval", "target,general",
             "--target-task", "arith-1", "--limit", "1", "--max-new-tokens", "4", "-o", d / "curve.parquet")
        _run(cli, "rewind", final, "--curve", d / "curve.parquet", "--pick", "max-target", "--selection", "none", "--base", tiny_model_dir,
             "-o", d / "rewound")
        assert (d / "rewound" / "adapter_model.safetensors").is_file()

    _run(cli, "report", *(runs / n for n in ("base", "lora-sft", "lora-rlvr")), "-o", runs / "report")
    rep = runs / "report"
    lb, _ = read_table(rep / "leaderboard.parquet")
    by = lb.set_index("method")
    assert by.loc["lora-rlvr", "regime"] == "rlvr" and by.loc["lora-sft", "regime"] == "sft"
    assert by.loc["lora-rlvr", "train_method"] == "lora" and by.loc["base", "regime"] == ""
    drift = [c for c in lb.columns if c.startswith("drift_kl_") and not c.endswith("_hw")]
    assert drift and np.isfinite(by.loc["lora-rlvr", "spec_delta_fro"]) and np.isfinite(by.loc["lora-rlvr", drift[0]])
    assert np.isfinite(by.loc["lora-rlvr", [c for c in lb.columns if c.startswith("csd_")]].astype(float)).any()
    assert np.isfinite(by.loc["lora-rlvr", [c for c in lb.columns if c.startswith("ag_cka")]].astype(float)).all()

    # SFT against RLVR: forgetting (sft − rlvr) is general(rlvr) − general(sft) on the same items
    reg, _ = read_table(rep / "regimes.parquet")
    f = reg[reg["what"].str.startswith("forgetting")].iloc[0]
    assert f["diff"] == pytest.approx(by.loc["lora-sft", "forgetting"] - by.loc["lora-rlvr", "forgetting"], abs=1e-9)
    g = reg[reg["what"].str.startswith("target gain")].iloc[0]
    assert g["diff"] == pytest.approx(by.loc["lora-rlvr", "target"] - by.loc["lora-sft", "target"], abs=1e-9)

    # the path evals of every checkpoint and the base's (step 0) are read (values: test_path_table_* below)
    path, _ = read_table(rep / "path.parquet")
    assert sorted(path.loc[path["method"] == "lora-rlvr", "step"].unique()) == [0, 1, 2]
    assert set(path["metric"]) == {"pass@1", "pass@2", "pass@4", "general"}
    gen0 = path[(path["method"] == "lora-rlvr") & (path["step"] == 0) & (path["metric"] == "general")]["value"].iloc[0]
    base_gen, _ = read_table(b / "path" / "general.summary.parquet")
    assert gen0 == pytest.approx(float(base_gen.loc[base_gen["metric"] == "builtin_general_score", "value"].iloc[0]))
    for f in ("passk.png", "plane.png", "leaderboard.md"):
        assert (rep / f).stat().st_size > 0
    md = (rep / "leaderboard.md").read_text()
    assert "## SFT against RLVR, per method" in md and "| lora-rlvr | rlvr |" in md


def test_point_styles_colour_by_method_marker_by_regime():
    from peftarena_cli.report.plots import point_styles

    lb = pd.DataFrame({"method": ["base", "lora-sft", "lora-rlvr", "oft-rlvr"], "regime": ["", "sft", "rlvr", "rlvr"],
                       "train_method": ["", "lora", "lora", "oft"]})
    colors, markers = point_styles(lb, list(lb["method"]))
    assert colors["lora-sft"] == colors["lora-rlvr"] != colors["oft-rlvr"]
    assert markers == {"base": "*", "lora-sft": "o", "lora-rlvr": "^", "oft-rlvr": "^"}


def test_manifest_regime_is_read_for_runs_made_outside_make(tmp_path):
    from peftarena_cli.report.trajectory import run_info, step_of

    d = tmp_path / "anything" / "train"
    d.mkdir(parents=True)
    (d / "manifest.json").write_text(json.dumps({"config": {"regime": "rlvr", "method": "oft"},
                                                 "method": {"name": "oft"}, "last_step": 30}))
    assert run_info(tmp_path / "anything") == {"regime": "rlvr", "train_method": "oft", "steps": 30}
    assert run_info(tmp_path) == {"regime": None, "train_method": None, "steps": None}
    assert step_of("base") == 0 and step_of("runs/x/train/checkpoint-16") == 16 and step_of("final") is None


def _samples(label: str, correct: dict) -> pd.DataFrame:
    """Per-sample eval rows (eval-target's schema) of one model: {item id: [correct per sample]}."""
    rows = [{"model": label, "task": "arith-2", "id": i, "sample": s, "completion": "x", "extracted": "1",
             "reference": "1", "correct": bool(c), "meta": json.dumps({"scorer": "math"})}
            for i, cs in correct.items() for s, c in enumerate(cs)]
    return pd.DataFrame(rows)


def test_path_table_pass_at_k_against_the_unbiased_estimator(tmp_path):
    from peftarena_cli.artifacts.tables import write_table
    from peftarena_cli.report.collect import collect_results
    from peftarena_cli.report.trajectory import path_table

    rng = np.random.default_rng(3)
    runs = tmp_path / "runs"
    per_step = {}
    for name, labels in (("base", ["base"]), ("oft-rlvr", [f"runs/oft-rlvr/train/checkpoint-{s}" for s in (5, 10)])):
        d = runs / name
        (d / "path").mkdir(parents=True)
        write_table(pd.DataFrame({"task": ["arith-2"], "metric": ["target_score"], "value": [10.0], "n": [6]}),
                    d / "eval_target_summary.parquet")
        frames = []
        for lab in labels:
            corr = {f"q{i}": list(rng.random(8) < rng.uniform(0, 0.6)) for i in range(6)}
            per_step[(name, lab)] = corr
            frames.append(_samples(lab, corr))
        write_table(pd.concat(frames), d / "path" / "target.parquet")
    (runs / "oft-rlvr" / "train").mkdir()
    (runs / "oft-rlvr" / "train" / "manifest.json").write_text(json.dumps({"config": {"regime": "rlvr"},
                                                                          "method": {"name": "oft"}}))
    path = path_table(collect_results([str(runs)]))
    assert sorted(path["step"].unique()) == [0, 5, 10] and set(path["regime"]) == {"rlvr"}
    assert set(path["train_method"]) == {"oft"}
    for (name, lab), corr in per_step.items():
        step = 0 if lab == "base" else int(lab.rsplit("-", 1)[1])
        for k in (1, 2, 4, 8):
            per_item = [1 - math.comb(8 - sum(c), k) / math.comb(8, k) for c in corr.values()]
            row = path[(path["step"] == step) & (path["metric"] == f"pass@{k}")].iloc[0]
            assert row["value"] == pytest.approx(100 * np.mean(per_item))
            sd = np.std(per_item, ddof=1)
            if sd > 0:  # item-mean normal interval: mean ± z·sd/√n, clipped to [0, 100]
                assert row["high"] - row["value"] == pytest.approx(
                    min(1.959964 * 100 * sd / math.sqrt(6), 100 - row["value"]), rel=1e-3)


def test_training_path_is_anchored_at_the_base_point_and_keeps_its_changes():
    """The plane's training path starts on the base's star: every step is shifted by (base point - path's
    step 0), so the changes along training are the path eval's own; without a step 0 it stays absolute."""
    from peftarena_cli.report.trajectory import trajectories

    rows = []
    for step, p1, gen in ((0, 8.0, 45.0), (10, 20.0, 41.0), (20, 30.0, 44.0)):
        rows += [{"method": "lora-rlvr", "step": step, "metric": "pass@1", "value": p1, "low": p1 - 5, "high": p1 + 5},
                 {"method": "lora-rlvr", "step": step, "metric": "general", "value": gen, "low": gen - 4,
                  "high": gen + 4}]
    table = pd.DataFrame(rows)
    tr = trajectories(table, anchor=(15.0, 33.0))["lora-rlvr"]
    assert tr["anchored"].all()
    assert tr["target"].tolist() == [15.0, 27.0, 37.0] and tr["general"].tolist() == [33.0, 29.0, 32.0]
    assert (tr["target_high"] - tr["target"]).tolist() == [5.0] * 3
    assert (tr["general"] - tr["general_low"]).tolist() == [4.0] * 3
    plain = trajectories(table)["lora-rlvr"]
    assert not plain["anchored"].any() and plain["target"].tolist() == [8.0, 20.0, 30.0]
    no_zero = trajectories(table[table["step"] > 0], anchor=(15.0, 33.0))["lora-rlvr"]
    assert not no_zero["anchored"].any() and no_zero["general"].tolist() == [41.0, 44.0]


# ------------------------------------------------------------------ steps per generation
@pytest.mark.parametrize("spg,calls", [(None, [4, 4, 4, 4]), (2, [8, 8])])
def test_steps_per_generation_samples_several_steps_in_one_generation_batch(tiny_model_dir, tmp_path, spg, calls):
    """--steps-per-generation k reaches TRL: the reward sees one generation batch of k steps' completions
    per k optimizer steps (4 steps, 4 completions per step); unset, one batch per step (on-policy)."""
    from peftarena_cli.training.runner import FinetuneConfig, finetune

    seen = []

    def count(completions, answer, **_):
        seen.append(len(completions))
        return [0.0] * len(completions)

    cfg = FinetuneConfig(base=str(tiny_model_dir), output=str(tmp_path / "run"), regime="rlvr", data="arith-1", steps=4,
                         batch_size=4, num_generations=2, max_completion_length=4, save_every=4, lr=1e-3,
                         steps_per_generation=spg, argv=["test"])
    res = finetune(cfg, reward_fn=count)
    assert res.steps == 4 and seen == calls
    man = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert man["config"]["steps_per_generation"] == spg


@pytest.mark.parametrize("args,msg", [
    (["--steps-per-generation", "2"], "applies to --regime rlvr only"),
    (["--regime", "rlvr", "--steps-per-generation", "0", "--batch-size", "2", "--num-generations", "2"], "must be >= 1"),
])
def test_steps_per_generation_bad_values_are_usage_errors(tiny_model_dir, tmp_path, cli, args, msg):
    out = tmp_path / "out"
    r = cli("finetune", tiny_model_dir, "-o", out, "--steps", "1", *args)
    assert r.returncode == 2 and msg in _err(r) and "Traceback" not in _err(r)
    assert not out.exists()
