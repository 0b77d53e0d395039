"""Builders for tiny random models and adapters used across the test suite (no network)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SPECIALS = ["<unk>", "<s>", "</s>", "<|im_start|>", "<|im_end|>"]


def make_tokenizer():
    """A byte-level tokenizer with no merges (one token per byte) and a ChatML template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    byte_chars = list(pre_tokenizers.ByteLevel.alphabet())
    vocab = {t: i for i, t in enumerate(SPECIALS)}
    for ch in sorted(byte_chars):
        vocab[ch] = len(vocab)
    tk = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tk.decoder = decoders.ByteLevel()
    tk.add_special_tokens(SPECIALS)
    tok = PreTrainedTokenizerFast(
        tokenizer_object=tk, unk_token="<unk>", bos_token="<s>", eos_token="<|im_end|>", pad_token="</s>"
    )
    tok.chat_template = CHAT_TEMPLATE
    return tok


def make_tiny_llama(seed: int = 0, hidden: int = 64, layers: int = 2, vocab: int | None = None):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = make_tokenizer()
    cfg = LlamaConfig(
        vocab_size=vocab or len(tok), hidden_size=hidden, intermediate_size=2 * hidden,
        num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
        max_position_embeddings=512, tie_word_embeddings=True,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg)
    model.eval()
    return model, tok


def save_tiny_llama(path: Path, seed: int = 0, **kw) -> Path:
    model, tok = make_tiny_llama(seed=seed, **kw)
    model.save_pretrained(str(path), safe_serialization=True)
    tok.save_pretrained(str(path))
    return path


def make_adapter(model_dir: Path, peft_config, out_dir: Path, seed: int = 1, scale: float = 0.05) -> Path:
    """Wrap the model with ``peft_config``, perturb every trainable tensor so ΔW != 0, save."""
    import torch
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    # PEFT's initialisation draws from the global generator: seed it, so an adapter does not depend on
    # which tests ran before it in the same process
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        pm = get_peft_model(base, peft_config)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in pm.named_parameters():
            if p.requires_grad:
                p.add_(scale * torch.randn(p.shape, generator=g))
    pm.save_pretrained(str(out_dir))
    return out_dir


def read_json(p: Path) -> dict:
    return json.loads(Path(p).read_text())


def run_cli(*args, input_bytes=None, env=None, cwd=None):
    """Run the CLI in a subprocess, for process-level checks only (start-up, exit codes of the real
    process, environment, stdin, signals, torchrun); everything else uses conftest's in-process ``cli``.
    stdout is a pipe, so tables come out as Parquet bytes."""
    e = dict(os.environ)
    e.pop("PEFTARENA_DEBUG", None)
    e.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "peftarena_cli", *map(str, args)],
        capture_output=True, input=input_bytes, env=e, cwd=cwd, timeout=900,
    )
