"""Where the IA3 delta is formed: W1 = W0 ⊙ l, a learned rescaling.

``ia3_l`` of shape (out, 1) scales output rows (attention keys/values); of shape (1, in) it
scales input columns (``feedforward_modules``). ΔW = W0 ⊙ (l − 1).
"""

from __future__ import annotations

import torch

from peftarena_cli.errors import IncompatibleInputs
from peftarena_cli.weights.finetuned import unsupported
from peftarena_cli.artifacts.keys import raise_missing

FEEDFORWARD = ("down_proj", "fc2", "dense_4h_to_h", "w2", "c_proj")  # modules IA3 scales on the input side


def ia3_parts(module: str, w0: torch.Tensor, ft, device: str, svd) -> dict:
    lvec = ft.modules[module].get("ia3_l")
    if lvec is None:
        raise_missing(module, "ia3_l")
    out_f, in_f = w0.shape
    shape = tuple(lvec.shape)
    if shape == (out_f, 1):
        form = "output rows scaled"
    elif shape == (1, in_f):
        form = "input columns scaled (feedforward)"
    else:
        raise IncompatibleInputs(
            f"module {module!r}: ia3_l has shape {shape}, the base needs ({out_f}, 1) or (1, {in_f})"
        )
    lvec = lvec.to(device, torch.float32)
    if ft.config.get("fan_in_fan_out"):
        unsupported(ft, "fan_in_fan_out (Conv1D/GPT-2 style) layers are not supported")
    return {"delta_t": w0 * (lvec - 1.0), "form": form}


def ia3_config(choice, total_steps: int, model, common: dict):
    """IA3's PEFT config; ``all-linear`` is resolved to the model's module names (the feedforward list
    must be a subset of the targets when the saved config is read back)."""
    from peft import IA3Config

    from peftarena_cli.weights.targets import linear_modules

    tm = common["target_modules"]
    if tm == "all-linear" and model is not None:
        tm = sorted({n.rsplit(".", 1)[-1] for n, _ in linear_modules(model, "all-linear")})
        common = {**common, "target_modules": tm}
    ff = list(FEEDFORWARD) if tm == "all-linear" else [t for t in tm if t in FEEDFORWARD]
    return IA3Config(feedforward_modules=ff, **common)
