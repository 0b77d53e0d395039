"""Shared builders for the interpolate/rewind tests: one tiny adapter per method, logits helpers."""

from __future__ import annotations

import json
from pathlib import Path

METHODS = ("lora", "dora", "oft", "oft_exact", "vera", "miss")


def peft_config(method: str):
    from peft import IA3Config, LoraConfig, MissConfig, OFTConfig, VeraConfig

    if method == "lora":
        return LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", lora_dropout=0.0)
    if method == "dora":
        return LoraConfig(r=4, lora_alpha=8, use_dora=True, target_modules=["q_proj", "v_proj", "down_proj"])
    if method == "oft":  # PEFT's default: Cayley–Neumann
        return OFTConfig(oft_block_size=8, target_modules=["q_proj", "v_proj", "up_proj"])
    if method == "oft_exact":
        return OFTConfig(oft_block_size=8, target_modules=["q_proj", "v_proj", "up_proj"], use_cayley_neumann=False)
    if method == "vera":
        return VeraConfig(r=8, target_modules=["q_proj", "v_proj"])
    if method == "miss":
        return MissConfig(r=8, target_modules=["q_proj", "down_proj"])
    if method == "ia3":
        return IA3Config(target_modules=["q_proj", "down_proj"], feedforward_modules=["down_proj"])
    raise KeyError(method)


def build_adapter(model_dir: Path, method: str, out: Path, scale: float = 0.05) -> Path:
    from helpers import make_adapter

    # OFT generators need a larger perturbation to rotate visibly
    return make_adapter(model_dir, peft_config(method), out, scale=0.2 if method.startswith("oft") else scale)


def config_of(adapter_dir: Path) -> dict:
    return json.loads((Path(adapter_dir) / "adapter_config.json").read_text())


def tokens(seed: int = 0):
    import torch

    g = torch.Generator().manual_seed(seed)
    return torch.randint(5, 250, (2, 16), generator=g)


def load_base(model_dir: Path):
    import torch
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()


def logits(model, ids):
    import torch

    with torch.no_grad():
        return model(input_ids=ids).logits.float()


def peft_logits(model_dir: Path, adapter_dir: Path, ids):
    """Logits of PEFT's own PeftModel.from_pretrained on a fresh base: the independent reference."""
    from peft import PeftModel

    pm = PeftModel.from_pretrained(load_base(model_dir), str(adapter_dir)).eval()
    return logits(pm, ids)


def adapters_fixture(tiny_model_dir, tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("path-adapters")
    return {m: build_adapter(tiny_model_dir, m, root / m) for m in (*METHODS, "ia3")}
