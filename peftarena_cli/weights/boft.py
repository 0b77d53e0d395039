"""Where the BOFT update is formed: W1 = diag(s) W0 Mᵀ with a butterfly product of rotations.

PEFT stores per module ``boft_R`` (m+1, blocks, b, b) and ``boft_s`` (out, 1). Each factor i is a
block-diagonal exact-Cayley rotation B_i of the skew part of ``boft_R[i]``, conjugated by PEFT's
butterfly permutation P_i: M = Π_i P_i B_i P_iᵀ (factor 0 applied first). The permutations are
taken from PEFT itself (``BOFTLayer.block_butterfly_perm``) so they match by construction.
"""

from __future__ import annotations

import torch

from peftarena_cli.errors import IncompatibleInputs
from peftarena_cli.artifacts.keys import raise_missing


def _perm(in_f: int, n_factor: int, block_num: int, block_size: int, i: int) -> torch.Tensor:
    from peft.tuners.boft.layer import BOFTLayer

    return BOFTLayer.block_butterfly_perm(None, in_f, int(block_num / (2 ** i)), int(block_size / 2), n_factor)


def boft_parts(module: str, w0: torch.Tensor, ft, device: str, svd) -> dict:
    params = ft.modules[module]
    r, s = params.get("boft_R"), params.get("boft_s")
    if r is None or s is None:
        raise_missing(module, "boft_R/boft_s")
    out_f, in_f = w0.shape
    if r.ndim != 4 or r.shape[1] * r.shape[2] != in_f or r.shape[2] != r.shape[3]:
        raise IncompatibleInputs(f"module {module!r}: boft_R has shape {tuple(r.shape)}, the base has {in_f} inputs")
    if tuple(s.shape) != (out_f, 1):
        raise IncompatibleInputs(f"module {module!r}: boft_s has shape {tuple(s.shape)}, the base needs ({out_f}, 1)")
    r = r.to(device, torch.float32)
    nf, nb, b, _ = r.shape
    data = r.reshape(nf * nb, b, b)
    skew = 0.5 * (data - data.transpose(1, 2))
    eye = torch.eye(b, device=device).expand_as(skew)
    rot = torch.linalg.solve(eye + skew, eye - skew, left=False).reshape(nf, nb, b, b)
    m = None
    for i in range(nf):
        bd = torch.block_diag(*rot[i].unbind(0))
        perm = _perm(in_f, nf - 1, nb, b, i).to(device)
        # P x = x[perm]; P B Pᵀ = B[perm][:, perm]
        f = bd[perm][:, perm]
        m = f if m is None else f @ m
    return {"rotation": m.T.contiguous(), "row_scale": s.to(device, torch.float32).reshape(-1),
            "form": f"butterfly factors {nf}, block size {b}"}


def boft_config(choice, total_steps: int, model, common: dict):
    """BOFT's PEFT config: blocks of ``choice.block_size``, the entry's butterfly factor."""
    from peft import BOFTConfig

    return BOFTConfig(boft_block_size=choice.block_size, boft_block_num=0,
                      boft_n_butterfly_factor=choice.method.defaults["butterfly_factor"], boft_dropout=0.0,
                      **common)


def check_butterfly(choice, modules) -> None:
    """OFT's block-size check, then: the block count of every module divisible by 2^(factor - 1)."""
    from peftarena_cli.weights.oft import check_block_size

    check_block_size(choice, modules)
    b = choice.block_size
    f = choice.method.defaults["butterfly_factor"]
    nb = sorted({m.in_features // b for _, m in modules if (m.in_features // b) % (2 ** (f - 1))})
    if nb:
        raise IncompatibleInputs(
            f"--block-size {b} gives {nb[0]} blocks, not divisible by 2^(butterfly factor - 1) = {2 ** (f - 1)}",
            hint="choose a block size giving an even number of blocks per layer")
