"""Guards on report's and the evals' inputs and on option values: results of different bases, duplicate
labels, corrupt scores, per-sample files of the other kind, non-string responses, and option values
that are typos or would fill memory. Each is refused up front (usage error exit 2, or a handled
error exit 1) instead of producing numbers."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest

from peftarena_cli.artifacts.tables import Provenance, read_table, write_table
from report_synth import eval_summaries, make_runs


def _snapshot(root: Path) -> dict:
    return {str(f.relative_to(root)): f.read_bytes() for f in sorted(root.rglob("*")) if f.is_file()}


def _write_evals(d: Path, target: float, general: float, inputs: dict) -> None:
    """Eval summaries as eval-target / eval-general write them, with ``inputs`` as their provenance."""
    d.mkdir(parents=True, exist_ok=True)
    t, g = eval_summaries(target, general)
    write_table(t, d / "eval_target_summary.parquet", Provenance(command="eval-target", inputs=dict(inputs)))
    write_table(g, d / "eval_general_summary.parquet", Provenance(command="eval-general", inputs=dict(inputs)))


# ---- report: results measured on different base models ------------------------------------------

def test_report_refuses_results_measured_on_different_bases(tmp_path, cli):
    runs = tmp_path / "runs"
    _write_evals(runs / "base", 20, 50, {"base": "model-a@aaaa1111"})
    _write_evals(runs / "lora", 45, 44, {"base": "model-b@bbbb2222", "adapter0": "lora@cccc"})
    snap = _snapshot(runs)
    r = cli("report", runs, "-o", tmp_path / "rep")
    assert r.returncode == 1, r.stderr
    assert "different base models" in r.stderr and "aaaa1111" in r.stderr and "bbbb2222" in r.stderr
    assert not (tmp_path / "rep").exists()
    assert _snapshot(runs) == snap


def test_report_accepts_one_base_and_a_full_finetune_evaluated_on_its_own(tmp_path, cli):
    """The same base identity everywhere is accepted; a full fine-tune evaluated as a model of its own
    (no adapter) names itself as its eval's ``base`` input, which is not a second base."""
    runs = tmp_path / "runs"
    _write_evals(runs / "base", 20, 50, {"base": "model-a@aaaa1111"})
    _write_evals(runs / "lora", 45, 44, {"base": "model-a@aaaa1111", "adapter0": "lora@cccc"})
    _write_evals(runs / "full", 52, 35, {"base": "runs/full/final@ffff9999"})
    r = cli("report", runs, "-o", tmp_path / "rep")
    assert r.returncode == 0, r.stderr
    lb = read_table(tmp_path / "rep" / "leaderboard.parquet")[0].set_index("method")
    assert lb.loc["full", "target"] == 52 and lb.loc["lora", "target"] == 45


def test_report_tells_two_checkpoints_of_one_architecture_apart(tiny_model_dir, tiny_lora_dir, tmp_path, cli):
    """Two bases of one architecture share their safetensors headers (the path identity); the evals
    also record a fingerprint of the weights, which differs, so report refuses to join them."""
    from helpers import save_tiny_llama

    other = save_tiny_llama(tmp_path / "other-base", seed=1)
    for d in ("runs/base", "runs/lora", "same/lora"):
        (tmp_path / d).mkdir(parents=True)
    ev = ["--limit", "2", "--max-new-tokens", "1", "--device", "cpu", "-q"]
    assert cli("eval-target", tiny_model_dir, *ev, "-o", tmp_path / "runs/base/t.parquet").returncode == 0
    assert cli("eval-target", other, "-a", tiny_lora_dir, *ev, "-o", tmp_path / "runs/lora/t.parquet").returncode == 0
    pa = read_table(tmp_path / "runs/base/t.summary.parquet")[1]["inputs"]
    pb = read_table(tmp_path / "runs/lora/t.summary.parquet")[1]["inputs"]
    assert pa["base"].rpartition("@")[2] == pb["base"].rpartition("@")[2]  # the path identity cannot tell
    r = cli("report", tmp_path / "runs", "-o", tmp_path / "rep")
    assert r.returncode == 1 and "different base models" in r.stderr, r.stderr
    # the same base with the adapter is accepted
    assert cli("eval-target", tiny_model_dir, "-a", tiny_lora_dir, *ev, "-o", tmp_path / "same/lora/t.parquet").returncode == 0
    r = cli("report", f"base={tmp_path / 'runs/base'}", f"lora={tmp_path / 'same/lora'}", "-o", tmp_path / "rep2")
    assert r.returncode == 0, r.stderr


# ---- report: one label, one source ------------------------------------------------------------

def test_report_refuses_a_label_given_twice(tmp_path, cli):
    runs = make_runs(tmp_path / "runs", methods=["base", "lora"], with_geometry=False, with_curve=False)
    r = cli("report", f"base={runs / 'base'}", f"base={runs / 'lora'}", "-o", tmp_path / "rep")
    assert r.returncode == 2, r.stderr
    assert "'base' is given twice" in r.stderr
    assert not (tmp_path / "rep").exists()


def test_report_refuses_two_runs_directories_with_the_same_method(tmp_path, cli):
    a = make_runs(tmp_path / "a", methods=["base", "lora"], with_geometry=False, with_curve=False)
    b = make_runs(tmp_path / "b", methods=["base", "oft"], with_geometry=False, with_curve=False)
    r = cli("report", a, b, "-o", tmp_path / "rep")
    assert r.returncode == 2 and "'base' is given twice" in r.stderr, r.stderr


def test_report_still_takes_several_files_of_one_method(tmp_path, cli):
    runs = make_runs(tmp_path / "runs", methods=["base", "lora"], with_geometry=False, with_curve=False)
    r = cli("report", runs / "base", runs / "lora" / "eval_target_summary.parquet",
            runs / "lora" / "eval_general_summary.parquet", "-o", tmp_path / "rep")
    assert r.returncode == 0, r.stderr
    lb = read_table(tmp_path / "rep" / "leaderboard.parquet")[0].set_index("method")
    assert lb.loc["lora", "target"] == 45.0 and lb.loc["lora", "general"] == 44.0


# ---- report: scores that are no percentages ----------------------------------------------------

@pytest.mark.parametrize("bad", [math.inf, -250.0, 250.0, math.nan])
def test_report_refuses_a_score_outside_its_scale(tmp_path, cli, bad):
    runs = make_runs(tmp_path / "runs", methods=["base", "lora"], with_geometry=False, with_curve=False)
    f = runs / "lora" / "eval_target_summary.parquet"
    df, _ = read_table(f)
    df.loc[df["metric"] == "target_score", "value"] = bad
    write_table(df, f, Provenance(command="eval-target"))
    r = cli("report", runs, "-o", tmp_path / "rep")
    assert r.returncode == 1, r.stderr
    assert str(f) in r.stderr and "column 'value'" in r.stderr and "target_score" in r.stderr
    assert not (tmp_path / "rep").exists()


def test_report_refuses_an_empty_summary(tmp_path, cli):
    runs = make_runs(tmp_path / "runs", methods=["base", "lora"], with_geometry=False, with_curve=False)
    f = runs / "lora" / "eval_target_summary.parquet"
    df, _ = read_table(f)
    write_table(df.iloc[0:0], f, Provenance(command="eval-target"))
    r = cli("report", runs, "-o", tmp_path / "rep")
    assert r.returncode == 1 and "has no rows" in r.stderr and str(f) in r.stderr, r.stderr


def test_report_says_which_score_is_missing_instead_of_nan(tmp_path, cli):
    """A method without a target summary: its gain is unknown, said in words, never "+nan"."""
    runs = make_runs(tmp_path / "runs", methods=["base", "lora"], with_geometry=False, with_curve=False)
    (runs / "lora" / "eval_target_summary.parquet").unlink()
    r = cli("report", runs, "-o", tmp_path / "rep")
    assert r.returncode == 0, r.stderr
    md = (tmp_path / "rep" / "leaderboard.md").read_text()
    assert "nan" not in (md + r.stderr).lower()
    assert "lora's target gain is unknown: no target score for lora" in md
    # forgetting is known (both general scores exist): 50 - 44
    lb = read_table(tmp_path / "rep" / "leaderboard.parquet")[0].set_index("method")
    assert lb.loc["lora", "forgetting"] == pytest.approx(6.0, abs=1e-9)


def test_report_modules_regex_is_checked(tmp_path, cli):
    runs = make_runs(tmp_path / "runs", methods=["base", "lora"], with_curve=False)
    for opt in ("--modules", "--spectrum-module"):
        r = cli("report", runs, "-o", tmp_path / "rep", opt, "(")
        assert r.returncode == 2, r.stderr
        assert f"{opt} '('" in r.stderr and "regular expression" in r.stderr
        assert len([ln for ln in r.stderr.splitlines() if ln.startswith("error:")]) == 1


# ---- --responses: the other kind's per-sample file, non-string responses ----------------------

def _per_sample(kind: str, path: Path) -> Path:
    """A per-sample table of ``kind`` (target: built-in arith, general: built-in facts), scored from
    made-up responses exactly as eval writes it."""
    from peftarena_cli.evaluation.api import load_general_tasks, load_target_tasks, score_responses

    task = (load_target_tasks("arith", limit=3) if kind == "target" else load_general_tasks("builtin.facts", limit=3))[0]
    per, _ = score_responses(task, [{"id": it.id, "response": "The answer is 7."} for it in task.items], kind=kind)
    write_table(per, path, Provenance(command=f"eval-{kind}"))
    return path


@pytest.mark.parametrize("kind,other", [("target", "general"), ("general", "target")])
def test_responses_of_the_other_kind_are_refused(tmp_path, cli, kind, other):
    f = _per_sample(kind, tmp_path / f"{kind}.parquet")
    before = f.read_bytes()
    r = cli(f"eval-{other}", "--responses", f, "-o", tmp_path / "out.parquet")
    assert r.returncode == 1, r.stderr
    assert f"are {kind} rows" in r.stderr and f"eval-{kind} --responses" in r.stderr
    assert not (tmp_path / "out.parquet").exists() and f.read_bytes() == before
    r = cli(f"eval-{kind}", "--responses", f, "-o", tmp_path / "out.parquet")  # its own kind is scored
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize("value,words", [(42, "a number"), (["7"], "a list"), (None, "null")])
def test_non_string_response_is_refused_with_its_line(tmp_path, cli, value, words):
    from peftarena_cli.tasks.target_tasks import load_target_task

    items = load_target_task("arith", limit=100, seed=0).items
    lines = [json.dumps({"id": items[0].id, "response": "The answer is 3."}), "",
             json.dumps({"id": items[1].id, "response": value})]
    p = tmp_path / "r.jsonl"
    p.write_text("\n".join(lines) + "\n")
    r = cli("eval-target", "--task", "arith", "--responses", p, "-o", tmp_path / "out.parquet")
    assert r.returncode == 1, r.stderr
    assert "line 3" in r.stderr and words in r.stderr  # the blank line 2 counts
    assert not (tmp_path / "out.parquet").exists()


def test_score_responses_refuses_non_string_response():
    from peftarena_cli.errors import DataError
    from peftarena_cli.evaluation.api import load_target_tasks, score_responses

    task = load_target_tasks("arith", limit=2)[0]
    with pytest.raises(DataError, match="record 1: 'response' is a number"):
        score_responses(task, [{"id": task.items[0].id, "response": "1"}, {"id": task.items[1].id, "response": 3.5}])


# ---- option values: bounds and typos, each a one-line usage error (exit 2) ----------------------

def _one_usage_error(r, *needles):
    assert r.returncode == 2, (r.returncode, r.stderr)
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1, r.stderr
    for n in needles:
        assert n in errors[0], errors[0]


EVAL = ["--limit", "1", "--device", "cpu"]


@pytest.mark.parametrize("cmd", ["eval-target", "eval-general"])
def test_eval_max_new_tokens_is_bounded(tiny_model_dir, tmp_path, cli, cmd):
    r = cli(cmd, tiny_model_dir, *EVAL, "--max-new-tokens", "1000000000", "-o", tmp_path / "o.parquet")
    _one_usage_error(r, "--max-new-tokens 1000000000", "131072")


def test_interpolate_and_drift_max_new_tokens_are_bounded(tiny_model_dir, tiny_lora_dir, tmp_path, cli):
    r = cli("interpolate", tiny_model_dir, tiny_lora_dir, "--alphas", "0,1", "--eval", "target", "--limit", "1",
            "--max-new-tokens", "1000000000", "--device", "cpu", "-o", tmp_path / "c.parquet")
    _one_usage_error(r, "--max-new-tokens 1000000000")
    r = cli("drift", tiny_model_dir, tiny_lora_dir, "--limit", "1", "--max-new-tokens", "1000000000",
            "--device", "cpu", "-o", tmp_path / "d.parquet")
    _one_usage_error(r, "--max-new-tokens 1000000000")


def test_eval_target_samples_per_item_are_bounded(tiny_model_dir, tmp_path, cli):
    """-n beyond 1024 samples per item is refused before the model is loaded (the bound is above any
    protocol's n: the study's pass@k goes to 64)."""
    r = cli("eval-target", tiny_model_dir, *EVAL, "-n", "5000", "--temperature", "1", "--max-new-tokens", "1",
            "-o", tmp_path / "o.parquet")
    _one_usage_error(r, "-n 5000", "1024")
    assert not (tmp_path / "o.parquet").exists()


@pytest.mark.parametrize("args,needle", [
    (["--protocol", ""], "empty protocol name"),
    (["--k", "1,,2", "-n", "2", "--temperature", "1"], "--k '1,,2'"),
    (["--temperature", "inf"], "--temperature inf"),
])
def test_eval_target_option_typos(tiny_model_dir, tmp_path, cli, args, needle):
    r = cli("eval-target", tiny_model_dir, *EVAL, "--max-new-tokens", "1", *args, "-o", tmp_path / "o.parquet")
    _one_usage_error(r, needle)


def test_empty_protocol_in_eval_general_and_interpolate(tiny_model_dir, tiny_lora_dir, tmp_path, cli):
    r = cli("eval-general", tiny_model_dir, *EVAL, "--max-new-tokens", "1", "--protocol", "", "-o", tmp_path / "o.parquet")
    _one_usage_error(r, "empty protocol name")
    r = cli("interpolate", tiny_model_dir, tiny_lora_dir, "--alphas", "0,1", "--eval", "target", "--limit", "1",
            "--max-new-tokens", "1", "--protocol", "", "--device", "cpu", "-o", tmp_path / "c.parquet")
    _one_usage_error(r, "empty protocol name")


def test_alphas_with_an_empty_entry(tiny_model_dir, tiny_lora_dir, tmp_path, cli):
    r = cli("interpolate", tiny_model_dir, tiny_lora_dir, "--alphas", "0,,1", "--device", "cpu", "-o", tmp_path / "c.parquet")
    _one_usage_error(r, "--alphas '0,,1'")
    r = cli("drift", tiny_model_dir, tiny_lora_dir, "--alphas", "0,,1", "--limit", "1", "--max-new-tokens", "1",
            "--device", "cpu", "-o", tmp_path / "d.parquet")
    _one_usage_error(r, "--alphas '0,,1'")


@pytest.mark.parametrize("cmd", ["csd", "act-geom"])
def test_activation_prompt_counts_and_memory_are_bounded(tiny_model_dir, tiny_lora_dir, tmp_path, cli, cmd):
    sets = ["--general", "arith:4", "--target", "arith:4"] if cmd == "csd" else ["-p", "arith:4"]
    out = ["--device", "cpu", "-o", tmp_path / "o.parquet"]
    _one_usage_error(cli(cmd, tiny_model_dir, tiny_lora_dir, *sets, "--n", "200000", *out), "--n 200000")
    big = ["--general", "arith:200000", "--target", "arith:4"] if cmd == "csd" else ["-p", "arith:200000"]
    _one_usage_error(cli(cmd, tiny_model_dir, tiny_lora_dir, *big, *out), "'arith:200000'", "100000")
    for size in ("99999999999T", "1" + "0" * 400 + "T"):
        _one_usage_error(cli(cmd, tiny_model_dir, tiny_lora_dir, *sets, "--max-memory", size, *out), "--max-memory")
    assert not (tmp_path / "o.parquet").exists()


def test_parsers_refuse_empty_entries_and_huge_values():
    from peftarena_cli.activations.budget import parse_size
    from peftarena_cli.errors import UsageError
    from peftarena_cli.evaluation.metrics import parse_ks
    from peftarena_cli.evaluation.protocols import check_generation_options, get_protocol
    from peftarena_cli.interpolation.alphas import parse_alphas

    for call in (lambda: parse_ks("1,,2", 4), lambda: parse_alphas("0,,1"), lambda: parse_alphas("0,1,"),
                 lambda: parse_size("1" + "0" * 400 + "T"), lambda: parse_size("1025T"), lambda: get_protocol(""),
                 lambda: check_generation_options(max_new_tokens=131073), lambda: check_generation_options(n=1025),
                 lambda: check_generation_options(temperature=math.inf)):
        with pytest.raises(UsageError):
            call()
    # the bounds themselves are accepted, and well-formed lists parse as before
    assert parse_ks("1,2", 4) == [1, 2] and parse_alphas("0, 0.5,1") == [0.0, 0.5, 1.0]
    assert parse_size("1024T") == 1024 ** 5
    check_generation_options(max_new_tokens=131072, n=1024, temperature=0.0)
    assert get_protocol(None).name == "study"
