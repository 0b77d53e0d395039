"""Where the MiSS delta is formed (PEFT ``MissConfig``).

* default / ``mini`` (``miss_block`` of shape (r, out), or (r, mini_r) repeated along out): every
  input group of r columns receives the same update, ΔW[:, g·r + j] = miss[j, :]ᵀ, with the last
  ``in mod r`` columns receiving the first rows. ΔW = Mᵀ S with S (r × in) the tiled identity:
  kept as low-rank factors (rank ≤ r).
* ``bat``: ``miss_block`` (out/r, r, r); the (i, k) block of ΔW is W0[i, k] @ M_i + M_i (dense).
"""

from __future__ import annotations

import torch

from peftarena_cli.errors import IncompatibleInputs
from peftarena_cli.artifacts.keys import raise_missing


def miss_parts(module: str, w0: torch.Tensor, ft, device: str, svd) -> dict:
    m = ft.modules[module].get("miss_block")
    if m is None:
        raise_missing(module, "miss_block")
    m = m.to(device, torch.float32)
    out_f, in_f = w0.shape
    init = ft.config.get("init_weights", True)
    if init == "bat":
        if m.ndim != 3 or m.shape[0] * m.shape[1] != out_f or m.shape[1] != m.shape[2] or in_f % m.shape[1]:
            raise IncompatibleInputs(f"module {module!r}: miss_block of shape {tuple(m.shape)} does not fit a {out_f}x{in_f} base")
        r = m.shape[1]
        blocks = w0.reshape(out_f // r, r, in_f // r, r).permute(2, 0, 1, 3)  # (in/r, out/r, r, r)
        delta = (blocks @ m + m).permute(1, 2, 0, 3).reshape(out_f, in_f)
        return {"delta_t": delta, "form": "bat"}
    if m.ndim != 2:
        raise IncompatibleInputs(f"module {module!r}: miss_block has shape {tuple(m.shape)}")
    r = m.shape[0]
    if init == "mini":
        if out_f % m.shape[1]:
            raise IncompatibleInputs(f"module {module!r}: mini miss_block {tuple(m.shape)} does not divide out={out_f}")
        m = m.repeat(1, out_f // m.shape[1])
        form = "mini"
    else:
        form = "standard"
    if m.shape[1] != out_f:
        raise IncompatibleInputs(f"module {module!r}: miss_block has shape {tuple(m.shape)}, the base needs (r, {out_f})")
    cols = torch.arange(in_f, device=device)
    s = torch.zeros(r, in_f, device=device)
    s[cols % r, cols] = 1.0
    return {"factors": (m.T.contiguous(), s), "form": form}


def miss_config(choice, total_steps: int, model, common: dict):
    """MiSS's PEFT config (the default shard form, rank ``choice.rank``)."""
    from peft import MissConfig

    return MissConfig(r=choice.rank, miss_dropout=choice.dropout, **common)


def check_rank(choice, modules) -> None:
    """The rank must divide the output width of every targeted module."""
    bad = sorted({m.out_features for _, m in modules if m.out_features % choice.rank})
    if bad:
        raise IncompatibleInputs(f"--rank {choice.rank} does not divide the output width {bad[0]} of the targeted modules",
                                 hint="MiSS needs a rank that divides every targeted layer's output width")
