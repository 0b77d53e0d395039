"""Dispatch: which file forms ΔW for which PEFT type."""

from __future__ import annotations

from peftarena_cli.errors import UnsupportedMethod
from peftarena_cli.weights.finetuned import Finetuned


def former_for(ft: Finetuned):
    """The function ``(module, w0, ft, device, svd) -> ModuleDelta fields`` for this fine-tune."""
    t = ft.peft_type
    if ft.kind == "full":
        from peftarena_cli.weights.full import full_parts

        return full_parts
    if t == "LORA":
        from peftarena_cli.weights.lora import lora_parts

        return lora_parts
    if t == "ADALORA":
        from peftarena_cli.weights.lora import adalora_parts

        return adalora_parts
    if t == "VERA":
        from peftarena_cli.weights.vera import vera_parts

        return vera_parts
    if t == "IA3":
        from peftarena_cli.weights.ia3 import ia3_parts

        return ia3_parts
    if t == "OFT":
        from peftarena_cli.weights.oft import oft_parts

        return oft_parts
    if t == "BOFT":
        from peftarena_cli.weights.boft import boft_parts

        return boft_parts
    if t == "MISS":
        from peftarena_cli.weights.miss import miss_parts

        return miss_parts
    raise UnsupportedMethod(f"unsupported PEFT type {t!r} in {ft.spec!r}")
