"""What the user fine-tuned: a PEFT adapter (directory or single safetensors) or a full model.

:func:`open_finetuned` decides which, from the path alone. An adapter's tensors are small and are
loaded at once; a full fine-tuned model is read lazily through a
:class:`~peftarena_cli.artifacts.safetensors_io.WeightSource`, one tensor at a time.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from peftarena_cli.artifacts.adapters import Adapter, is_adapter_path, load_adapter
from peftarena_cli.artifacts.keys import module_of_key
from peftarena_cli.artifacts.safetensors_io import ModelRef, WeightSource, linear_weight_names, module_name, resolve_model
from peftarena_cli.errors import UnsupportedMethod
from peftarena_cli.methods import full_method, method_name, peft_types
from peftarena_cli.weights.full import check_full_dtypes

ADAPTER, FULL = "adapter", "full"  # the two kinds of fine-tuned artifact


@dataclass
class Finetuned:
    """A fine-tuned artifact: ``kind`` is ``ADAPTER`` (``"adapter"``) or ``FULL`` (``"full"``)."""

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
    def is_full(self) -> bool:
        """A full fine-tuned model (every weight), not a PEFT adapter."""
        return self.kind == FULL

    @property
    def peft_type(self) -> str:
        return self.adapter.peft_type if self.adapter is not None else "FULL"

    @property
    def config(self) -> dict:
        return self.adapter.config if self.adapter is not None else {}

    @property
    def method(self) -> str:
        """The canonical method name (the registry's, :mod:`peftarena_cli.methods`) used in every table."""
        if self.is_full:
            return full_method().name
        name = method_name(self.config, self.adapter.metadata)
        if name is None:
            raise UnsupportedMethod(f"unsupported PEFT type {self.peft_type!r} in {self.spec!r}")
        return name

    def identity(self) -> str:
        if self.adapter is not None:
            return self.adapter.identity()
        return self.ref.identity()

    def module_names(self) -> list[str]:
        """Module names (base naming, without ``.weight``) this fine-tune changes."""
        if not self.is_full:
            return list(self.modules)
        return [module_name(k) for k in linear_weight_names(self.source)]


def open_finetuned(spec: str | os.PathLike, device: str = "cpu") -> Finetuned:
    """Open a PEFT adapter (directory or single safetensors with an embedded config) or a full model."""
    s = str(spec)
    if is_adapter_path(os.path.expanduser(s)):
        ad = load_adapter(os.path.expanduser(s), device="cpu")
        if ad.peft_type not in peft_types():
            raise UnsupportedMethod(
                f"unsupported PEFT type {ad.peft_type!r} in {s!r}",
                hint="supported: " + ", ".join(sorted(peft_types())) + " (see docs/methods.md)",
            )
        return finetuned_from_adapter(ad, s)
    ref = resolve_model(s)
    source = WeightSource.from_ref(ref, device="cpu")
    check_full_dtypes(source, s)
    return Finetuned(spec=s, kind=FULL, ref=ref, source=source)


def finetuned_from_adapter(ad: Adapter, spec: str) -> Finetuned:
    """An adapter already in memory (e.g. one rescaled to a path position) as a :class:`Finetuned`:
    its tensors grouped per module, the ones that name no module (VeRA's projections) kept as shared."""
    modules: dict[str, dict] = {}
    shared: dict = {}
    for k, v in ad.tensors.items():
        hit = module_of_key(k)
        if hit is None:
            shared[k] = v
            continue
        mod, suffix = hit
        modules.setdefault(mod, {})[suffix] = v
    return Finetuned(spec=str(spec), kind=ADAPTER, adapter=ad, modules=modules, shared=shared)


def unsupported(ft: Finetuned, why: str):
    """Refuse a variant of the fine-tune's method that the ΔW former does not handle."""
    raise UnsupportedMethod(f"{ft.peft_type} adapter {ft.spec!r}: {why}")
