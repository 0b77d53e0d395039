"""Loading models for forward passes: transformers model + tokenizer from a model reference,
and a PEFT adapter on top.
"""

from __future__ import annotations

import json
from pathlib import Path

from peftarena_cli.artifacts.adapters import Adapter, load_adapter, peft_dir_for
from peftarena_cli.artifacts.weights import ModelRef, resolve_model
from peftarena_cli.errors import IncompatibleInputs, InvalidArtifact

DTYPES = {"float32": "float32", "fp32": "float32", "bfloat16": "bfloat16", "bf16": "bfloat16",
          "float16": "float16", "fp16": "float16"}


def torch_dtype(name: str):
    import torch

    key = DTYPES.get(str(name).lower())
    if key is None:
        from peftarena_cli.errors import UsageError

        raise UsageError(f"unknown dtype {name!r}", hint="use float32, bfloat16 or float16")
    return getattr(torch, key)


def pick_device(device: str = "auto") -> str:
    """``auto`` means CUDA when present, else CPU."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def config_dir(ref: ModelRef) -> Path:
    """Where the model's config and tokenizer are read from: the model directory, or a single
    weights file's own directory (it needs a config.json there unless the file's metadata carries
    the config). Raises InvalidArtifact for a bare weights file."""
    if ref.is_single_file:
        d = ref.path.parent
        if (d / "config.json").is_file():
            return d
        from safetensors import safe_open

        with safe_open(str(ref.path), framework="pt") as f:
            meta = f.metadata() or {}
        if "config" not in meta:
            raise InvalidArtifact(
                f"{str(ref.path)!r} is a bare weights file without a model config",
                hint="this command runs the model: pass an HF model directory (config.json + weights)",
            )
        return d
    if not (ref.path / "config.json").is_file():
        raise InvalidArtifact(f"{str(ref.path)!r} has no config.json", hint="pass a complete HF model directory")
    return ref.path


def load_tokenizer(ref: ModelRef):
    from transformers import AutoTokenizer

    d = config_dir(ref)
    try:
        tok = AutoTokenizer.from_pretrained(str(d))
    except Exception as e:
        raise InvalidArtifact(f"cannot load a tokenizer from {str(d)!r}: {type(e).__name__}: {e}",
                              hint="the model directory needs its tokenizer files") from None
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load_model(spec, dtype: str = "float32", device: str = "auto"):
    """Load ``(model, tokenizer, ModelRef)`` for forward passes, in eval mode."""
    from transformers import AutoConfig, AutoModelForCausalLM

    ref = spec if isinstance(spec, ModelRef) else resolve_model(spec)
    d = config_dir(ref)
    dev = pick_device(device)
    if ref.is_single_file and not (d / "config.json").is_file():
        from safetensors import safe_open
        from transformers import PretrainedConfig

        with safe_open(str(ref.path), framework="pt") as f:
            cfgd = json.loads(f.metadata()["config"])
        config = AutoConfig.for_model(**cfgd) if "model_type" in cfgd else PretrainedConfig(**cfgd)
        model = AutoModelForCausalLM.from_config(config, dtype=torch_dtype(dtype))
        from safetensors.torch import load_file

        model.load_state_dict(load_file(str(ref.path)), strict=False)
    else:
        kwargs = {}
        if ref.is_single_file:
            from safetensors.torch import load_file

            kwargs["state_dict"] = load_file(str(ref.path))
        try:
            model = AutoModelForCausalLM.from_pretrained(str(d), dtype=torch_dtype(dtype), **kwargs)
        except (OSError, ValueError) as e:
            raise InvalidArtifact(f"cannot load a model from {ref.spec!r}: {e}") from None
    model.to(dev)
    model.eval()
    tok = load_tokenizer(ref)
    return model, tok, ref


def attach_adapter(model, adapter: Adapter | str, adapter_name: str = "default", is_trainable: bool = False):
    """Wrap ``model`` with a PEFT adapter (PEFT's own code path, so forward passes match PEFT)."""
    from peft import PeftModel

    ad = adapter if isinstance(adapter, Adapter) else load_adapter(adapter)
    d, keep = peft_dir_for(ad)
    try:
        if hasattr(model, "peft_config"):
            model.load_adapter(str(d), adapter_name=adapter_name, is_trainable=is_trainable)
            model.set_adapter(adapter_name)
            return model
        return PeftModel.from_pretrained(model, str(d), adapter_name=adapter_name, is_trainable=is_trainable)
    except (RuntimeError, ValueError, KeyError) as e:
        raise IncompatibleInputs(f"adapter {str(ad.path)!r} does not fit the model: {str(e).splitlines()[0]}") from None
    finally:
        if keep is not None:
            keep.cleanup()
