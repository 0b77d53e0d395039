"""Converting a registry alias's GGUF into a safetensors model directory, once, under the cache.

:func:`ensure_model` is what resolving an alias (:func:`peftarena_cli.artifacts.safetensors_io.resolve_model`)
calls: the cached directory, converted on first use under a lock. The aliases themselves are
:mod:`peftarena_cli.registry`.
"""

from __future__ import annotations

from pathlib import Path

from peftarena_cli.artifacts.atomic import atomic_dir
from peftarena_cli.errors import MissingDependency
from peftarena_cli.registry import cache_dir, get_spec, gguf_path, is_cached


def convert(name: str) -> Path:
    """Dequantise the alias's GGUF into a safetensors model directory under the cache (atomic)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    spec = get_spec(name)
    gguf = gguf_path(spec)
    dest = cache_dir(name)
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        import gguf as _gguf  # noqa: F401
    except ImportError:
        raise MissingDependency("the gguf package is needed to convert the model", hint="pip install gguf") from None
    src = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    config = src.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    with torch.device("meta"):
        clean = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    clean.load_state_dict(src.state_dict(), assign=True, strict=True)
    clean.tie_weights()
    clean.generation_config = src.generation_config
    if getattr(clean.generation_config, "pad_token_id", None) is None:
        clean.generation_config.pad_token_id = config.pad_token_id
    with atomic_dir(dest, overwrite=True) as tmp:
        clean.save_pretrained(str(tmp), safe_serialization=True)
        tok.save_pretrained(str(tmp))
    return dest


def ensure_model(name: str) -> Path:
    """Return the cached directory of an alias, converting it on first use."""
    get_spec(name)
    if not is_cached(name):
        import fcntl

        lock = cache_dir(name).parent / f".{name}.lock"
        lock.parent.mkdir(parents=True, exist_ok=True)
        with open(lock, "w") as fh:  # one conversion at a time (parallel test workers, two shells)
            fcntl.flock(fh, fcntl.LOCK_EX)
            if not is_cached(name):
                convert(name)
    return cache_dir(name)
