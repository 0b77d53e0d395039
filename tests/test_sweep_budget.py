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
