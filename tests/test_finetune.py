"""`peftarena finetune` end to end on the tiny model: SFT and RLVR runs, the run directory contract,
resume = uninterrupted, data-parallel under torchrun, and every bad input (exit 1, nothing written)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from peftarena_cli.artifacts.tables import read_table
from peftarena_cli.training.checkpoints import LOG_COLUMNS
from peftarena_cli.training.runner import FinetuneConfig, finetune

TINY = ["--max-length", "512", "--batch-size", "2"]


def _err(r) -> str:
    return r.stderr


def test_sft_cli_run_directory(tiny_model_dir, tmp_path, cli):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    out = tmp_path / "run"
    r = cli("finetune", tiny_model_dir, "-o", out, "--steps", "3", "--save-every", "2", *TINY)
    assert r.returncode == 0, _err(r)
    assert r.stdout == b""  # stdout carries data only; this command writes files
    assert "tokens/s" in _err(r) and "peak RSS" in _err(r)
    assert {p.name for p in out.iterdir()} >= {"checkpoint-2", "checkpoint-3", "final", "train_log.parquet",
                                               "manifest.json", "resume"}
    df, prov = read_table(out / "train_log.parquet")
    assert list(df.columns) == LOG_COLUMNS
    assert df["step"].tolist() == [1, 2, 3]
    assert df["loss"].notna().all() and (df["tokens_per_s"] > 0).all() and df["elapsed_s"].is_monotonic_increasing
    assert df["lr"].iloc[0] > df["lr"].iloc[-1]  # linear decay from 2e-4
    assert df["reward_mean"].isna().all()
    assert prov["command"] == "finetune"
    man = json.loads((out / "manifest.json").read_text())
    assert man["status"] == "complete" and man["last_step"] == 3
    assert man["method"]["method"] == "lora" and man["method"]["rank"] == 8 and man["method"]["lr"] == 2e-4
    assert man["data"]["name"] == "arith" and man["data"]["split"] == "train"
    assert man["base"]["identity"] and man["versions"]["peft"] and man["command"][0] == "peftarena"
    assert [c["step"] for c in man["checkpoints"]] == [2, 3]
    # checkpoint-3 and final are the same adapter; checkpoint-2 differs (a trajectory)
    a2 = (out / "checkpoint-2" / "adapter_model.safetensors").read_bytes()
    a3 = (out / "checkpoint-3" / "adapter_model.safetensors").read_bytes()
    assert a3 == (out / "final" / "adapter_model.safetensors").read_bytes() and a2 != a3
    base = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir))
    PeftModel.from_pretrained(base, str(out / "checkpoint-2"))  # loads


def test_refuses_other_runs_and_resume_mismatch(tiny_model_dir, tmp_path, cli):
    out = tmp_path / "run"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    r = cli("finetune", tiny_model_dir, "-o", out, "--steps", "1", *TINY)
    assert r.returncode == 1 and "already holds other files" in _err(r) and "--overwrite" in _err(r)
    assert [p.name for p in out.iterdir()] == ["notes.txt"]

    run = tmp_path / "run2"
    cfg = FinetuneConfig(base=str(tiny_model_dir), output=str(run), steps=1, batch_size=2, max_length=512, argv=["t"])
    finetune(cfg)
    before = {p.name: p.stat().st_mtime_ns for p in run.rglob("*")}
    r = cli("finetune", tiny_model_dir, "-o", run, "--steps", "1", *TINY)
    assert r.returncode == 1 and "already holds a peftarena run" in _err(r)
    r = cli("finetune", tiny_model_dir, "-o", run, "--steps", "1", "--lr", "1e-3", "--resume", *TINY)
    assert r.returncode == 1 and "holds a different run (differs in: lr)" in _err(r)
    assert {p.name: p.stat().st_mtime_ns for p in run.rglob("*")} == before
    r = cli("finetune", tiny_model_dir, "-o", out, "--steps", "1", "--overwrite", *TINY)
    assert r.returncode == 0, _err(r)
    assert not (out / "notes.txt").exists() and (out / "final").is_dir()


def test_resume_gives_the_same_weights(tiny_model_dir, tmp_path):
    from safetensors.torch import load_file

    def cfg(out, **kw):
        return FinetuneConfig(base=str(tiny_model_dir), output=str(out), steps=4, save_every=2, batch_size=2,
                              max_length=512, seed=3, argv=["t"], **kw)

    finetune(cfg(tmp_path / "straight"))
    with pytest.raises(KeyboardInterrupt):
        finetune(cfg(tmp_path / "cut"), _interrupt_after=2)
    man = json.loads((tmp_path / "cut" / "manifest.json").read_text())
    assert man["status"] == "running" and man["last_step"] == 2 and not (tmp_path / "cut" / "final").exists()
    res = finetune(cfg(tmp_path / "cut", resume=True))
    assert res.resumed_from == 2 and res.steps == 4
    a = load_file(str(tmp_path / "straight" / "final" / "adapter_model.safetensors"))
    b = load_file(str(tmp_path / "cut" / "final" / "adapter_model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    la, _ = read_table(tmp_path / "straight" / "train_log.parquet")
    lb, _ = read_table(tmp_path / "cut" / "train_log.parquet")
    assert lb["step"].tolist() == [1, 2, 3, 4]
    assert lb["loss"].tolist() == pytest.approx(la["loss"].tolist(), rel=1e-6)


def test_rlvr_end_to_end(tiny_model_dir, tmp_path, cli):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    out = tmp_path / "grpo"
    r = cli("finetune", tiny_model_dir, "-o", out, "--regime", "rlvr", "--steps", "2", "--batch-size", "4",
                "--num-generations", "2", "--max-completion-length", "8", "--save-every", "1", "--lr", "1e-3")
    assert r.returncode == 0, _err(r)
    df, _ = read_table(out / "train_log.parquet")
    assert df["step"].tolist() == [1, 2]
    assert df["reward_mean"].between(0, 1).all() and df["reward_std"].notna().all()
    assert df["frac_reward_zero_std"].between(0, 1).all()
    man = json.loads((out / "manifest.json").read_text())
    assert man["config"]["regime"] == "rlvr" and man["config"]["num_generations"] == 2
    base = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir))
    PeftModel.from_pretrained(base, str(out / "final"))


@pytest.mark.parametrize("args,msg", [
    (["--method", "qlora9"], "unknown method 'qlora9'"),
    (["--method", "oft", "--block-size", "24"], "does not divide the input width"),
    (["--method", "ia3", "--rank", "4"], "takes no --rank"),
    (["--regime", "rlvr", "--batch-size", "4", "--num-generations", "3"], "does not divide the generation batch"),
    (["--regime", "rlvr", "--num-generations", "1"], "at least 2 completions"),
    (["--data", "EMPTY"], "is empty"),
    (["--data", "MALFORMED"], "cannot read dataset"),
    (["--data", "NOCOLS"], "lacks a response column"),
])
def test_bad_input_exit_1_nothing_written(tiny_model_dir, tmp_path, cli, args, msg):
    files = {"EMPTY": ("e.jsonl", ""), "MALFORMED": ("m.jsonl", '{"prompt": "a", \n]]]\n'),
             "NOCOLS": ("n.jsonl", '{"prompt": "a", "other": "b"}\n')}
    args = list(args)
    for i, a in enumerate(args):
        if a in files:
            name, text = files[a]
            (tmp_path / name).write_text(text)
            args[i] = str(tmp_path / name)
    out = tmp_path / "out"
    r = cli("finetune", tiny_model_dir, "-o", out, "--steps", "1", *args)
    assert r.returncode == 1, _err(r)
    assert msg in _err(r) and "hint:" in _err(r) and "Traceback" not in _err(r)
    assert not out.exists()


def test_data_parallel_torchrun_two_processes(tiny_model_dir, tmp_path):
    out = tmp_path / "ddp"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29561",
                        "-m", "peftarena_cli", "finetune", str(tiny_model_dir), "-o", str(out), "--steps", "2",
                        "--save-every", "2", *TINY], capture_output=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr.decode()[-3000:]
    man = json.loads((out / "manifest.json").read_text())
    assert man["world_size"] == 2 and man["status"] == "complete"
    df, _ = read_table(out / "train_log.parquet")
    assert df["step"].tolist() == [1, 2]
    # two processes x batch 2: step 1 counts the tokens of 4 records (TRL gathers the count over processes)
    from peftarena_cli.artifacts.loading import load_tokenizer
    from peftarena_cli.artifacts.safetensors_io import resolve_model
    from peftarena_cli.training.data import load_train_data

    tok = load_tokenizer(resolve_model(str(tiny_model_dir)))
    recs = load_train_data("arith", tok, "sft", n=8, seed=0).records
    lens = sorted(len(tok(r["prompt"] + r["completion"] + tok.eos_token, add_special_tokens=False)["input_ids"])
                  for r in recs)
    assert sum(lens[:4]) <= df["tokens"].iloc[0] <= sum(lens[-4:])
    assert sum(lens[-2:]) < sum(lens[:4])  # so 2 records (one process) could not account for it
    assert r.stderr.decode().count("trained 2 steps") == 1  # one voice
