"""Where the OFT update is formed: W1 = W0 Rᵀ for a block-diagonal rotation R.

PEFT stores per module ``oft_R.weight`` (blocks, n(n−1)/2): the upper triangle of each block's
skew-symmetric generator Q. PEFT's forward rotates the input, x' = x R, so the merged weight is
W1 = W0 Rᵀ. The two Cayley variants PEFT uses give transposed rotations for the same Q:

* ``use_cayley_neumann=False``: exact Cayley, R = (I − Q)(I + Q)⁻¹ (``torch.linalg.solve``);
* ``use_cayley_neumann=True`` (PEFT's default): the truncated series
  R = I + 2Q + 2Q² + … + Q^{t−1} ≈ (I + Q)(I − Q)⁻¹, with t = ``num_cayley_neumann_terms``.

The variant is read from the config (PEFT's default when absent) and reported in ``form``. The
rotation construction is shared with the interpolation paths (:mod:`peftarena_cli.paths.oft_rotation`).
``coft`` adapters are projected onto the ε-ball first, as PEFT's merge does; ``block_share``
repeats the single stored block.
"""

from __future__ import annotations

import math

import torch

from peftarena_cli.errors import IncompatibleInputs
from peftarena_cli.weights.lora import raise_missing


def _project(vec: torch.Tensor, n: int, eps: float) -> torch.Tensor:
    """PEFT's COFT projection of each block's generator onto ‖Q‖_F ≤ eps / √blocks."""
    from peftarena_cli.paths.oft_rotation import skew

    q = skew(vec, n)
    eps = eps / math.sqrt(q.shape[0])
    norm = torch.linalg.matrix_norm(q, keepdim=True)
    q = torch.where(norm <= eps, q, eps * q / norm)
    rows, cols = torch.triu_indices(n, n, 1, device=vec.device)
    return q[:, rows, cols]


def oft_parts(module: str, w0: torch.Tensor, ft, device: str, svd) -> dict:
    from peftarena_cli.paths.oft_rotation import block_size_of, cayley, variant_of

    params = ft.modules[module]
    vec = params.get("oft_R.weight")
    if vec is None:
        raise_missing(module, "oft_R")
    vec = vec.to(device, torch.float32)
    if vec.ndim != 2:
        raise IncompatibleInputs(f"module {module!r}: oft_R has shape {tuple(vec.shape)}")
    n = block_size_of(vec.shape[1])
    in_f = w0.shape[1]
    cfg = ft.config
    if cfg.get("coft"):
        vec = _project(vec, n, float(cfg.get("eps", 6e-5)))
    neumann, terms = variant_of(cfg)
    blocks = cayley(vec, neumann, terms)  # (b, n, n), PEFT's x' = x R
    if cfg.get("block_share") and blocks.shape[0] == 1:
        if in_f % n:
            raise IncompatibleInputs(f"module {module!r}: OFT block size {n} does not divide in_features {in_f}")
        blocks = blocks.expand(in_f // n, n, n).contiguous()
    if blocks.shape[0] * n != in_f:
        raise IncompatibleInputs(
            f"module {module!r}: OFT rotation covers {blocks.shape[0] * n} inputs, the base has {in_f}"
        )
    rot = blocks.transpose(1, 2).contiguous()  # W1 = W0 @ Rᵀ, Rᵀ block-diagonal with the transposed blocks
    form = f"cayley-neumann({terms} terms)" if neumann else "cayley-exact (solve)"
    if cfg.get("coft"):
        form += ", coft"
    return {"rot_blocks": rot, "form": form}
