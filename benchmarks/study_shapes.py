"""Synthetic models with the study's layer widths, built locally (random weights, no hub).

The study fine-tunes Llama-3.2-3B-Instruct and Qwen2.5-7B. What sets the memory and time of the
activation diagnostics and of spectrum is the width of each linear module, so these models copy
the widths (hidden, MLP, attention heads and key/value heads, Qwen's q/k/v biases) and keep few
layers and a byte-level vocabulary (the tests' tokenizer):

    .venv/bin/python benchmarks/study_shapes.py llama3b OUT_DIR [--layers 2] [--lora-rank 16]

writes OUT_DIR/model (an HF directory) and OUT_DIR/lora (a LoRA adapter on every linear module,
B perturbed so that ΔW ≠ 0).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# the published configurations' widths (config.json of each model)
SHAPES = {
    "llama3b": dict(arch="llama", hidden_size=3072, intermediate_size=8192, num_attention_heads=24,
                    num_key_value_heads=8, head_dim=128, full_layers=28, params="3.2B"),
    "qwen7b": dict(arch="qwen2", hidden_size=3584, intermediate_size=18944, num_attention_heads=28,
                   num_key_value_heads=4, head_dim=128, full_layers=28, params="7.6B"),
}


def module_widths(shape: str) -> dict:
    """(d_out, d_in) of each linear module kind of one decoder layer."""
    s = SHAPES[shape]
    h, m, hd = s["hidden_size"], s["intermediate_size"], s["head_dim"]
    q, kv = s["num_attention_heads"] * hd, s["num_key_value_heads"] * hd
    return {"q_proj": (q, h), "k_proj": (kv, h), "v_proj": (kv, h), "o_proj": (h, q),
            "gate_proj": (m, h), "up_proj": (m, h), "down_proj": (h, m)}


def build(shape: str, out: Path, layers: int = 2, lora_rank: int = 16, seed: int = 0) -> tuple[Path, Path]:
    """Write ``out/model`` and ``out/lora``; reuse them when they exist."""
    import torch

    sys.path.insert(0, str(ROOT / "tests"))
    from helpers import make_tokenizer

    model_dir, lora_dir = out / "model", out / "lora"
    if (model_dir / "config.json").is_file() and (lora_dir / "adapter_config.json").is_file():
        return model_dir, lora_dir
    s = SHAPES[shape]
    tok = make_tokenizer()
    common = dict(vocab_size=len(tok), hidden_size=s["hidden_size"], intermediate_size=s["intermediate_size"],
                  num_hidden_layers=layers, num_attention_heads=s["num_attention_heads"],
                  num_key_value_heads=s["num_key_value_heads"], max_position_embeddings=4096,
                  tie_word_embeddings=True, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                  pad_token_id=tok.pad_token_id)
    if s["arch"] == "llama":
        from transformers import LlamaConfig as Config, LlamaForCausalLM as Model

        common["head_dim"] = s["head_dim"]
    else:
        from transformers import Qwen2Config as Config, Qwen2ForCausalLM as Model  # q/k/v have biases
    torch.manual_seed(seed)
    model = Model(Config(**common)).eval()
    for name, (d_out, d_in) in module_widths(shape).items():
        got = tuple(model.model.layers[0].get_submodule(("self_attn." if "proj" in name and name[0] in "qkvo" else "mlp.") + name).weight.shape)
        assert got == (d_out, d_in), (name, got)
    model_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(model_dir), safe_serialization=True)
    tok.save_pretrained(str(model_dir))
    from peft import LoraConfig, get_peft_model

    pm = get_peft_model(model, LoraConfig(r=lora_rank, lora_alpha=2 * lora_rank, target_modules="all-linear",
                                          lora_dropout=0.0))
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for n, p in pm.named_parameters():
            if p.requires_grad:
                p.add_(0.02 * torch.randn(p.shape, generator=g))
    pm.save_pretrained(str(lora_dir))
    return model_dir, lora_dir


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("shape", choices=sorted(SHAPES))
    ap.add_argument("out", type=Path)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--lora-rank", type=int, default=16)
    a = ap.parse_args()
    m, lo = build(a.shape, a.out, a.layers, a.lora_rank)
    print(f"{m}\n{lo}")


if __name__ == "__main__":
    main()
