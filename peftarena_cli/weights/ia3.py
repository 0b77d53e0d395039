"""Where the IA3 delta is formed: W1 = W0 ⊙ l, a learned rescaling.

``ia3_l`` of shape (out, 1) scales output rows (attention keys/values); of shape (1, in) it
scales input columns (``feedforward_modules``). ΔW = W0 ⊙ (l − 1).
"""

from __future__ import annotations

import torch

from peftarena_cli.errors import IncompatibleInputs
from peftarena_cli.weights.finetuned import unsupported
from peftarena_cli.artifacts.keys import raise_missing


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
