"""Sharded training (FSDP2) for `peftarena finetune`: the configs, the refusal when FSDP is asked for and
not set up, and 2-process FSDP runs on CPU (gloo) against one process, data parallel and an
uninterrupted run.

accelerate 1.16 does not set up FSDP on CPU by itself, so the runs go through
tests/fsdp_cpu_launch.py, which changes only that decision (docs/large-models.md, "Sharded training").

Tolerances. The 2-process runs see the same global batch in the same order as the one-process run
(the logged token counts are checked equal); they differ only in the order of float32 sums (the
forward over 2 rows instead of 4, gloo's reduce-scatter). Each gradient element is a sum of at most
n ~ 1.5e5 products (about 1,100 tokens x width 128), so its relative rounding error is about
sqrt(n) * 2^-24 ~ 2.3e-5 (random rounding); Adam's m / sqrt(v) at most doubles a relative error, and
3 steps add up: ~1.4e-4 relative in the weight update. The checks use 1e-3 on the update norm: above
rounding, far below a systematic difference (other dropout masks per process, as one process
against two draws them, moved the LoRA B update of the same 3 steps by 0.29 relative; a lost shard
moves it by O(1)).
The logged losses are forward values of the same weights on the same tokens: 1e-4 relative.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from peftarena_cli.artifacts.tables import read_table
from peftarena_cli.training import sharding
from peftarena_cli.training.runner import FinetuneConfig, finetune

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
LAUNCH = ROOT / "tests" / "fsdp_cpu_launch.py"
RUN = ["--max-length", "512", "--lr", "1e-3"]
UPDATE_RTOL = 1e-3
LOSS_RTOL = 1e-4


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(**extra) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT), **extra)
    return env


def _fsdp(tiny_model_dir, out, *args, launcher=LAUNCH, env=None, timeout=300, launch_args=()):
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(CONFIGS / "fsdp-cpu-test.yaml"),
           "--main_process_port", str(_port()), *launch_args]
    cmd += [str(launcher)] if launcher is not None else ["-m", "peftarena_cli"]
    cmd += ["finetune", str(tiny_model_dir), "-o", str(out), *map(str, args)]
    return subprocess.run(cmd, capture_output=True, env=env or _env(), timeout=timeout, cwd=ROOT)


def _ok(r):
    assert r.returncode == 0, r.stderr.decode()[-4000:]


def _update_gap(a: dict, b: dict, init: dict) -> float:
    """||(a - init) - (b - init)|| / ||a - init|| over all tensors."""
    num = sum(float(((a[k] - b[k]).double() ** 2).sum()) for k in a)
    den = sum(float(((a[k] - init[k]).double() ** 2).sum()) for k in a)
    return (num / den) ** 0.5


# --- the configs and the pieces that need no processes -------------------------------------------

@pytest.mark.parametrize("name,cpu,ckpt", [("fsdp-full", False, False), ("fsdp-lora", False, True),
                                           ("fsdp-cpu-test", True, False)])
def test_configs_select_fsdp2_with_full_state_dict(name, cpu, ckpt):
    from accelerate.commands.config.config_args import load_config_from_file
    from accelerate.utils import DistributedType

    c = load_config_from_file(str(CONFIGS / f"{name}.yaml"))
    assert c.distributed_type == DistributedType.FSDP
    assert c.fsdp_config["fsdp_version"] == 2
    assert c.fsdp_config["fsdp_state_dict_type"] == "FULL_STATE_DICT"
    assert c.fsdp_config["fsdp_activation_checkpointing"] is ckpt
    assert c.use_cpu is cpu
    # precision is peftarena's --mixed-precision: the launcher's value would override `--mixed-precision no`
    assert str(c.mixed_precision) in ("no", "MixedPrecision.NO", "PrecisionType.NO")
    assert c.num_processes == (2 if cpu else 8)


class _Stub:
    def __init__(self, fsdp):
        self.is_fsdp_enabled = fsdp
        self.accelerator = type("A", (), {"distributed_type": "MULTI_CPU"})()


def test_fsdp_asked_but_not_set_up_is_refused(monkeypatch):
    from peftarena_cli.errors import IncompatibleInputs
    from peftarena_cli.training import methods

    lora = methods.resolve_method("lora", None, None, None, None, None)
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    with pytest.raises(IncompatibleInputs, match="asked for FSDP"):
        sharding.check_fsdp(_Stub(False), lora)
    sharding.check_fsdp(_Stub(True), lora)
    ada = methods.resolve_method("adalora", None, None, None, None, None)
    with pytest.raises(IncompatibleInputs, match="under FSDP each process holds a shard"):
        sharding.check_fsdp(_Stub(True), ada)
    monkeypatch.delenv("ACCELERATE_USE_FSDP")
    sharding.check_fsdp(_Stub(False), ada)  # no FSDP asked: nothing to refuse
    assert sharding.parallelism(_Stub(False), 1) == {"kind": "single", "world_size": 1}
    assert sharding.parallelism(_Stub(False), 2) == {"kind": "ddp", "world_size": 2}


def test_fsdp_activation_checkpointing_replaces_the_trainers(monkeypatch):
    from peftarena_cli.training.runner import trainer_gradient_checkpointing

    cfg = FinetuneConfig(gradient_checkpointing=True)
    assert trainer_gradient_checkpointing(cfg)
    monkeypatch.setenv("FSDP_ACTIVATION_CHECKPOINTING", "true")
    assert trainer_gradient_checkpointing(cfg)  # without FSDP the variable means nothing
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    assert not trainer_gradient_checkpointing(cfg) and sharding.fsdp_activation_checkpointing()


def test_resume_must_keep_fsdp_on_or_off():
    from peftarena_cli.errors import OutputError

    fsdp = {"kind": "fsdp", "world_size": 2}
    sharding.check_resume_parallelism({"parallelism": fsdp}, fsdp)
    sharding.check_resume_parallelism({}, {"kind": "ddp", "world_size": 2})  # a run from before the field
    with pytest.raises(OutputError, match="trained under FSDP"):
        sharding.check_resume_parallelism({"parallelism": fsdp}, {"kind": "single", "world_size": 1})
    with pytest.raises(OutputError, match="trained without FSDP"):
        sharding.check_resume_parallelism({"parallelism": {"kind": "ddp"}}, fsdp)


def test_untied_drops_the_second_name_of_a_tied_weight(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    from peftarena_cli.training.checkpoints import untied

    m = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir))
    assert m.lm_head.weight is m.model.embed_tokens.weight
    gathered = {k: v.clone() for k, v in m.state_dict().items()}  # separate copies, as a gather returns
    gathered["lm_head.weight"] = gathered["model.embed_tokens.weight"].clone()
    kept = untied(m, gathered)
    assert set(gathered) - set(kept) == {"lm_head.weight"}


# --- 2-process FSDP2 runs on CPU ------------------------------------------------------------------

@pytest.mark.slow
def test_fsdp_on_cpu_without_the_test_launcher_is_refused(tiny_model_dir, tmp_path):
    """Under plain `accelerate launch` on CPU accelerate sets up data parallel; the run stops, writes nothing."""
    out = tmp_path / "refused"
    r = _fsdp(tiny_model_dir, out, "--steps", "1", "--batch-size", "2", *RUN, launcher=None)
    err = r.stderr.decode()
    assert r.returncode == 1, err[-3000:]
    assert "error: the launcher asked for FSDP" in err and "set up MULTI_CPU instead" in err and "hint:" in err
    assert "peftarena_cli/" not in err  # no traceback from the command (the launcher prints its own)
    assert not out.exists()


@pytest.mark.slow
@pytest.mark.parametrize("ckpt", [False, True], ids=["plain", "activation-checkpointing"])
def test_fsdp_full_finetune_matches_one_process(tiny_model_dir, tmp_path, ckpt):
    """Recomputing the layers in backward (FSDP's activation checkpointing) gives the same values."""
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    one = tmp_path / "one"
    finetune(FinetuneConfig(base=str(tiny_model_dir), output=str(one), method="full", steps=3, save_every=2,
                            batch_size=4, max_length=512, lr=1e-3, argv=["t"]))
    two = tmp_path / "fsdp"
    r = _fsdp(tiny_model_dir, two, "--method", "full", "--steps", "3", "--save-every", "2", "--batch-size", "2", *RUN,
              launch_args=("--fsdp_activation_checkpointing", "true") if ckpt else ())
    _ok(r)
    assert r.stderr.decode().count("trained 3 steps") == 1  # rank 0 alone speaks

    man = json.loads((two / "manifest.json").read_text())
    assert man["status"] == "complete" and man["world_size"] == 2
    par = man["parallelism"]
    assert (par["kind"], par["world_size"], par["fsdp_version"], par["sharding_strategy"], par["state_dict_type"]) == \
        ("fsdp", 2, 2, "FULL_SHARD", "FULL_STATE_DICT")
    assert par["activation_checkpointing"] is ckpt and man["gradient_checkpointing"] is ckpt
    assert [c["step"] for c in man["checkpoints"]] == [2, 3]
    assert json.loads((one / "manifest.json").read_text())["parallelism"] == {"kind": "single", "world_size": 1}

    la, _ = read_table(one / "train_log.parquet")
    lb, _ = read_table(two / "train_log.parquet")
    assert lb["tokens"].tolist() == la["tokens"].tolist()  # the same global batches
    assert lb["loss"].tolist() == pytest.approx(la["loss"].tolist(), rel=LOSS_RTOL)

    init = load_file(str(tiny_model_dir / "model.safetensors"))
    for step in ("checkpoint-2", "final"):
        a = load_file(str(one / step / "model.safetensors"))
        b = load_file(str(two / step / "model.safetensors"))
        assert a.keys() == b.keys() == init.keys()  # one HF model, tied weights saved once
        assert _update_gap(a, b, init) <= UPDATE_RTOL, step
    assert (two / "final" / "model.safetensors").read_bytes() == (two / "checkpoint-3" / "model.safetensors").read_bytes()
    assert not any(p.name.startswith(".") and p.name != ".peftarena.lock" for p in two.iterdir())  # no temp dirs left
    AutoModelForCausalLM.from_pretrained(str(two / "final"))


@pytest.fixture(scope="module")
def fsdp_lora_run(tiny_model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("fsdp_lora") / "straight"
    _ok(_fsdp(tiny_model_dir, out, "--steps", "4", "--save-every", "2", "--batch-size", "2", *RUN))
    return out


@pytest.mark.slow
def test_fsdp_lora_matches_data_parallel(fsdp_lora_run, tiny_model_dir, tmp_path):
    """The adapter gathered from the shards equals the data-parallel run's (same 2 processes, so the
    same per-process dropout masks; one process would draw other masks)."""
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    ddp = tmp_path / "ddp"
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                        str(_port()), "-m", "peftarena_cli", "finetune", str(tiny_model_dir), "-o", str(ddp),
                        "--steps", "4", "--save-every", "2", "--batch-size", "2", *RUN],
                       capture_output=True, env=_env(), timeout=300, cwd=ROOT)
    _ok(r)
    assert json.loads((ddp / "manifest.json").read_text())["parallelism"] == {"kind": "ddp", "world_size": 2}
    man = json.loads((fsdp_lora_run / "manifest.json").read_text())
    assert man["parallelism"]["kind"] == "fsdp" and man["method"]["method"] == "lora"

    a = load_file(str(ddp / "final" / "adapter_model.safetensors"))
    b = load_file(str(fsdp_lora_run / "final" / "adapter_model.safetensors"))
    assert a.keys() == b.keys() and len(a) > 0
    # B starts at 0, so B is the update itself; A starts from the same seeded draw in both runs
    zeros = {k: torch.zeros_like(v) for k, v in a.items() if "lora_B" in k}
    assert _update_gap({k: a[k] for k in zeros}, {k: b[k] for k in zeros}, zeros) <= UPDATE_RTOL
    assert _update_gap(a, b, {k: torch.zeros_like(v) for k, v in a.items()}) <= UPDATE_RTOL
    la, _ = read_table(ddp / "train_log.parquet")
    lb, _ = read_table(fsdp_lora_run / "train_log.parquet")
    assert lb["loss"].tolist() == pytest.approx(la["loss"].tolist(), rel=LOSS_RTOL)
    base = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir))
    PeftModel.from_pretrained(base, str(fsdp_lora_run / "final"))


@pytest.mark.slow
def test_fsdp_resume_gives_the_same_adapter(fsdp_lora_run, tiny_model_dir, tmp_path):
    from safetensors.torch import load_file

    cut = tmp_path / "cut"
    args = ("--steps", "4", "--save-every", "2", "--batch-size", "2", *RUN)
    r = _fsdp(tiny_model_dir, cut, *args, env=_env(PEFTARENA_TEST_INTERRUPT_AFTER="2"))
    assert r.returncode != 0
    man = json.loads((cut / "manifest.json").read_text())
    assert man["status"] == "running" and man["last_step"] == 2 and not (cut / "final").exists()
    assert (cut / "resume" / "checkpoint-2" / "pytorch_model_fsdp.bin").is_file()  # FSDP's own resume state
    _ok(_fsdp(tiny_model_dir, cut, *args, "--resume"))
    man = json.loads((cut / "manifest.json").read_text())
    assert man["status"] == "complete" and man["resumed"] == [2]
    a = load_file(str(fsdp_lora_run / "final" / "adapter_model.safetensors"))
    b = load_file(str(cut / "final" / "adapter_model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:  # the same sums in the same order: bit for bit
        assert torch.equal(a[k], b[k]), k
    la, _ = read_table(fsdp_lora_run / "train_log.parquet")
    lb, _ = read_table(cut / "train_log.parquet")
    assert lb["step"].tolist() == [1, 2, 3, 4] and lb["loss"].tolist() == la["loss"].tolist()

    # a data-parallel --resume of this FSDP run is refused before anything is touched
    def files():  # the lock file only ever names its latest holder
        return {p: p.read_bytes() for p in cut.rglob("*") if p.is_file() and p.name != ".peftarena.lock"}

    before = files()
    r = subprocess.run([sys.executable, "-m", "peftarena_cli", "finetune", str(tiny_model_dir), "-o", str(cut),
                        *args, "--resume"], capture_output=True, env=_env(), timeout=300, cwd=ROOT)
    assert r.returncode == 1 and "trained under FSDP" in r.stderr.decode(), r.stderr.decode()[-2000:]
    assert files() == before


@pytest.mark.slow
def test_fsdp_rlvr_writes_a_loadable_adapter(tiny_model_dir, tmp_path):
    """GRPO generates with the sharded policy (the trainer gathers it for generate) and saves as usual."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    out = tmp_path / "grpo"
    _ok(_fsdp(tiny_model_dir, out, "--regime", "rlvr", "--steps", "2", "--batch-size", "2", "--num-generations", "2",
              "--max-completion-length", "8", "--save-every", "1", "--lr", "1e-3"))
    man = json.loads((out / "manifest.json").read_text())
    assert man["parallelism"]["kind"] == "fsdp" and [c["step"] for c in man["checkpoints"]] == [1, 2]
    df, _ = read_table(out / "train_log.parquet")
    assert df["step"].tolist() == [1, 2] and df["reward_mean"].between(0, 1).all()
    base = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir))
    PeftModel.from_pretrained(base, str(out / "final"))
