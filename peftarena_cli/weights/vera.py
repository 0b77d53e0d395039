"""Where the VeRA delta is formed: ΔW = (λ_b ⊙ B[:out, :r]) (λ_d ⊙ A[:r, :in]).

A and B are the frozen random projections shared by all modules (``base_model.vera_A`` /
``base_model.vera_B`` when the adapter was saved with ``save_projection=True``). Without them they
are regenerated exactly as PEFT does, from ``projection_prng_key`` and the largest targeted shape.
Kept as low-rank factors.
"""

from __future__ import annotations

import torch

from peftarena_cli.artifacts.keys import expect_shape, raise_missing
from peftarena_cli.errors import IncompatibleInputs


def _projections(ft) -> tuple[torch.Tensor, torch.Tensor]:
    cache = ft.cache
    if "vera" in cache:
        return cache["vera"]
    a = b = None
    for k, v in ft.shared.items():
        if k.endswith("vera_A") or ".vera_A." in k:
            a = v
        elif k.endswith("vera_B") or ".vera_B." in k:
            b = v
    if a is None or b is None:
        # save_projection=False: PEFT regenerates them from the PRNG key and the largest shape
        from peft.tuners.vera.model import _kaiming_init

        shapes = list(ft.base_shapes.values())
        out_max = max(s[0] for s in shapes)
        in_max = max(s[1] for s in shapes)
        r = int(ft.config.get("r", 256))
        g = torch.Generator(device="cpu").manual_seed(int(ft.config.get("projection_prng_key", 0)))
        a = _kaiming_init((r, in_max), generator=g)
        b = _kaiming_init((out_max, r), generator=g)
    cache["vera"] = (a.float(), b.float())
    return cache["vera"]


def vera_parts(module: str, w0: torch.Tensor, ft, device: str, svd) -> dict:
    params = ft.modules[module]
    lb, ld = params.get("vera_lambda_b"), params.get("vera_lambda_d")
    if lb is None or ld is None:
        raise_missing(module, "vera_lambda_b/vera_lambda_d")
    a, b = _projections(ft)
    out_f, in_f = w0.shape
    r = a.shape[0]
    expect_shape(lb, (out_f,), module, "vera_lambda_b")
    expect_shape(ld, (r,), module, "vera_lambda_d")
    if a.shape[1] < in_f or b.shape[0] < out_f:
        raise IncompatibleInputs(f"module {module!r}: the VeRA projections are smaller than the base weight")
    bf = lb.to(device, torch.float32)[:, None] * b[:out_f, :].to(device)
    af = ld.to(device, torch.float32)[:, None] * a[:, :in_f].to(device)
    saved = any(k.endswith("vera_A") for k in ft.shared)
    return {"factors": (bf, af), "form": "saved projections" if saved else "projections regenerated from projection_prng_key"}


def vera_config(choice, total_steps: int, model, common: dict):
    """The PEFT config ``peftarena finetune`` trains VeRA with (projections saved with the adapter)."""
    from peft import VeraConfig

    return VeraConfig(r=choice.rank, vera_dropout=choice.dropout, save_projection=True, **common)
