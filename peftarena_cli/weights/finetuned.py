"""What the user fine-tuned: a PEFT adapter (directory or single safetensors) or a full model.

:func:`open_finetuned` decides which, from the path alone. An adapter's tensors are small and are
loaded at once; a full fine-tuned model is read lazily through a
:class:`~peftarena_cli.artifacts.weights.WeightSource`, one tensor at a time.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

from peftarena_cli.artifacts.adapters import Adapter, is_adapter_path, load_adapter
from peftarena_cli.artifacts.weights import ModelRef, WeightSource, resolve_model
from peftarena_cli.errors import UnsupportedMethod

# PEFT type -> our method name (LoRA is refined by its config: dora, pissa, milora, rslora).
PEFT_METHODS = {
    "LORA": "lora",
    "ADALORA": "adalora",
    "VERA": "vera",
    "IA3": "ia3",
    "OFT": "oft",
    "BOFT": "boft",
    "MISS": "miss",
}

KNOWN_METHODS = ("lora", "pissa", "milora", "dora", "adalora", "vera", "ia3", "oft", "boft", "miss", "full")

# Suffix components that mark where the module name ends in a PEFT state-dict key.
_MARKER = re.compile(
    r"\.(lora_A|lora_B|lora_E|lora_magnitude_vector|vera_lambda_b|vera_lambda_d|ia3_l|oft_R|oft_s|"
    r"boft_R|boft_s|miss_block)(\.|$)"
)
_PREFIX = "base_model.model."


def module_of_key(key: str) -> tuple[str, str] | None:
    """``base_model.model.model.layers.0.mlp.up_proj.lora_A.weight`` -> (module, param suffix)."""
    m = _MARKER.search(key)
    if m is None:
        return None
    mod = key[: m.start()]
    if mod.startswith(_PREFIX):
        mod = mod[len(_PREFIX):]
    return mod, key[m.start() + 1:]


@dataclass
class Finetuned:
    """A fine-tuned artifact: ``kind`` is ``"adapter"`` or ``"full"``."""

    spec: str
    kind: str
    adapter: Adapter | None = None
    ref: ModelRef | None = None
    source: WeightSource | None = None
    # adapter only: module name -> {param suffix: tensor}; global (shared) tensors by key
    modules: dict[str, dict] = field(default_factory=dict)
    shared: dict = field(default_factory=dict)
    base_shapes: dict = field(default_factory=dict)  # set by iter_module_deltas: module -> base (out, in)
    cache: dict = field(default_factory=dict)  # per-fine-tune scratch (e.g. VeRA's shared projections)

    @property
    def peft_type(self) -> str:
        return self.adapter.peft_type if self.adapter is not None else "FULL"

    @property
    def config(self) -> dict:
        return self.adapter.config if self.adapter is not None else {}

    @property
    def method(self) -> str:
        """The method name used in tables: lora, rslora, dora, pissa, milora, adalora, vera, ia3, oft, boft, miss, full."""
        if self.kind == "full":
            return "full"
        from peftarena_cli.weights.lora import lora_method_name

        declared = str((self.adapter.metadata or {}).get("method", "")).lower()
        if declared in KNOWN_METHODS:
            return declared
        base = PEFT_METHODS.get(self.peft_type)
        if base is None:
            raise UnsupportedMethod(f"unsupported PEFT type {self.peft_type!r} in {self.spec!r}")
        return lora_method_name(self.config) if base == "lora" else base

    def identity(self) -> str:
        if self.adapter is not None:
            return self.adapter.identity()
        return self.ref.identity()

    def module_names(self) -> list[str]:
        """Module names (base naming, without ``.weight``) this fine-tune changes."""
        if self.kind == "adapter":
            return list(self.modules)
        from peftarena_cli.artifacts.weights import linear_weight_names, module_name

        return [module_name(k) for k in linear_weight_names(self.source)]


def open_finetuned(spec: str | os.PathLike, device: str = "cpu") -> Finetuned:
    """Open a PEFT adapter (directory or single safetensors with an embedded config) or a full model."""
    s = str(spec)
    if is_adapter_path(os.path.expanduser(s)):
        ad = load_adapter(os.path.expanduser(s), device="cpu")
        if ad.peft_type not in PEFT_METHODS:
            raise UnsupportedMethod(
                f"unsupported PEFT type {ad.peft_type!r} in {s!r}",
                hint="supported: " + ", ".join(sorted(PEFT_METHODS)) + " (see docs/methods.md)",
            )
        modules: dict[str, dict] = {}
        shared: dict = {}
        for k, v in ad.tensors.items():
            hit = module_of_key(k)
            if hit is None:
                shared[k] = v
                continue
            mod, suffix = hit
            modules.setdefault(mod, {})[suffix] = v
        return Finetuned(spec=s, kind="adapter", adapter=ad, modules=modules, shared=shared)
    ref = resolve_model(s)
    return Finetuned(spec=s, kind="full", ref=ref, source=WeightSource.from_ref(ref, device="cpu"))
