"""The same commands on CUDA and on the CPU give the same tables (skipped where no GPU is present).

CI has no GPU, so these run only on a machine with one (`pytest tests/test_cuda.py`). Each test runs
a command twice through the real CLI, with ``--device cpu`` and ``--device cuda``, and compares the
Parquet outputs: numeric columns to float32 rounding, the rest exactly. Greedy generation on a tiny
random model can flip a near-tied token between devices, so completions are compared by share.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from helpers import run_cli
from helpers import make_adapter
from peftarena_cli.artifacts.tables import read_table

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

PROMPTS = [
    "Explain why the sky is blue in one sentence.",
    "List three prime numbers.",
    "What is 12 + 30?",
    "Write a haiku about rivers.",
    "Name the capital of France.",
    "Translate 'good morning' into Spanish.",
]


def _both(tmp_path, name, *args, extra_out=()):
    """Run the command on cpu and on cuda; return the two output paths."""
    outs = {}
    for dev in ("cpu", "cuda"):
        out = tmp_path / f"{name}-{dev}.parquet"
        more = [a.format(dev=dev) for a in extra_out]
        r = run_cli(*args, *more, "-o", out, "--device", dev, env={"OMP_NUM_THREADS": "4"})
        assert r.returncode == 0, f"{name} on {dev}: {r.stderr.decode()[-2000:]}"
        outs[dev] = out
    return outs["cpu"], outs["cuda"]


def _same_table(a, b, rtol=1e-4, keys=None, skip=()):
    da, _ = read_table(a)
    db, _ = read_table(b)
    assert list(da.columns) == list(db.columns) and len(da) == len(db) > 0
    if keys:
        da, db = da.sort_values(keys).reset_index(drop=True), db.sort_values(keys).reset_index(drop=True)
    for c in da.columns:
        if c in skip:
            continue
        x, y = da[c], db[c]
        if x.dtype.kind == "f":
            xs, ys = x.to_numpy(float), y.to_numpy(float)
            assert np.array_equal(np.isnan(xs), np.isnan(ys)), c
            ok = ~np.isnan(xs)
            scale = np.abs(xs[ok]).max() if ok.any() else 0.0
            np.testing.assert_allclose(ys[ok], xs[ok], rtol=rtol, atol=rtol * scale + 1e-12, err_msg=c)
        elif x.dtype.kind in "iub":
            assert (x.to_numpy() == y.to_numpy()).all(), c
        else:
            assert list(x.astype(str)) == list(y.astype(str)), c
    return da, db


@pytest.fixture(scope="module")
def oft_dir(tiny_model_dir, tmp_path_factory):
    from peft import OFTConfig

    return make_adapter(tiny_model_dir, OFTConfig(oft_block_size=16, target_modules="all-linear"),
                        tmp_path_factory.mktemp("oft") / "adapter", scale=0.02)


@pytest.fixture(scope="module")
def prompt_file(tmp_path_factory):
    p = tmp_path_factory.mktemp("prompts") / "general.jsonl"
    p.write_text("\n".join(json.dumps({"question": q}) for q in PROMPTS) + "\n")
    return p


@pytest.mark.parametrize("which", ["lora", "oft"])
def test_spectrum_cuda_equals_cpu(which, tiny_model_dir, tiny_lora_dir, oft_dir, tmp_path):
    ad = tiny_lora_dir if which == "lora" else oft_dir
    a, b = _both(tmp_path, f"spec-{which}", "spectrum", tiny_model_dir, ad, "--no-cache",
                 extra_out=("--summary", str(tmp_path / f"spec-{which}-{{dev}}.summary.parquet")))
    _same_table(a, b, rtol=1e-4)
    _same_table(a.with_suffix(".summary.parquet"), b.with_suffix(".summary.parquet"), rtol=1e-4)


def test_act_geom_and_csd_cuda_equal_cpu(tiny_model_dir, tiny_lora_dir, prompt_file, tmp_path):
    a, b = _both(tmp_path, "ag", "act-geom", tiny_model_dir, tiny_lora_dir, "-p", prompt_file, "-b", "3")
    _same_table(a, b, rtol=2e-3, keys=["prompt_set", "module"])
    a, b = _both(tmp_path, "csd", "csd", tiny_model_dir, tiny_lora_dir, "--general", prompt_file,
                 "--target", "arith:5", "-b", "4")
    _same_table(a, b, rtol=2e-3)


def test_interpolate_cuda_equals_cpu(tiny_model_dir, oft_dir, tmp_path):
    a, b = _both(tmp_path, "interp", "interpolate", tiny_model_dir, oft_dir, "--alphas", "0,0.5,1",
                 "--eval", "target", "--limit", "4", "--max-new-tokens", "8")
    da, db = _same_table(a, b, rtol=2e-3, skip=("target", "set_seconds", "seconds", "eval_seconds"))
    assert list(db["alpha"]) == [0.0, 0.5, 1.0]


def test_eval_target_cuda_matches_cpu(tiny_model_dir, tiny_lora_dir, tmp_path):
    a, b = _both(tmp_path, "evt", "eval-target", tiny_model_dir, "--adapter", tiny_lora_dir, "--include-base",
                 "--limit", "6", "--max-new-tokens", "12", "--batch-size", "3")
    da, _ = read_table(a)
    db, _ = read_table(b)
    assert len(da) == len(db) == 12
    same = (da["completion"].to_numpy() == db["completion"].to_numpy()).mean()
    assert same >= 0.75, same  # greedy decoding; float32 on both devices


def test_finetune_on_cuda_trains_and_saves(tiny_model_dir, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    out = tmp_path / "run"
    r = run_cli("finetune", tiny_model_dir, "-o", out, "--steps", "4", "--max-length", "512", "--batch-size", "2",
                "--lr", "1e-3", "--device", "cuda")
    assert r.returncode == 0, r.stderr.decode()[-2000:]
    log, _ = read_table(out / "train_log.parquet")
    loss = log["loss"].dropna().to_numpy()
    assert len(loss) >= 1 and np.isfinite(loss).all()
    manifest = json.loads((out / "manifest.json").read_text())
    assert "cuda" in json.dumps(manifest).lower()
    base = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir))
    pm = PeftModel.from_pretrained(base, str(out / "final"))
    assert any(("lora_B" in n) and p.abs().sum() > 0 for n, p in pm.named_parameters())
