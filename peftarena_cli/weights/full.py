"""Full fine-tuning: W1 is read from the fine-tuned model, one tensor at a time; ΔW = W1 − W0."""

from __future__ import annotations

import torch

from peftarena_cli.artifacts.keys import base_key
from peftarena_cli.errors import IncompatibleInputs


def full_parts(module: str, w0: torch.Tensor, ft, device: str, svd) -> dict:
    key = base_key(ft.source, module)
    if key is None:
        raise IncompatibleInputs(f"module {module!r} is missing from the fine-tuned model {ft.spec!r}")
    shape = ft.source.shape(key)
    if tuple(shape) != tuple(w0.shape):
        raise IncompatibleInputs(
            f"module {module!r}: the fine-tuned weight has shape {tuple(shape)}, the base {tuple(w0.shape)}",
        )
    w1 = ft.source.get(key).to(device=device, dtype=torch.float32)
    return {"w1_t": w1}
