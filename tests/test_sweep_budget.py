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
