"""Where the OFT update is formed: W1 = W0 Rᵀ for a block-diagonal rotation R.

PEFT stores per module ``oft_R.weight`` (blocks, n(n−1)/2): the upper triangle of each block's
skew-symmetric generator Q. PEFT's forward rotates the input, x' = x R, so the merged weight is
W1 = W0 Rᵀ. The two Cayley variants PEFT uses give transposed rotations for the same Q:

* ``use_cayley_neumann=False``: exact Cayley, R = (I − Q)(I + Q)⁻¹ (``torch.linalg.solve``);
* ``use_cayley_neumann=True`` (PEFT's default): the truncated series
  R = I + 2Q + 2Q² + … + Q^{t−1} ≈ (I + Q)(I − Q)⁻¹, with t = ``num_cayley_neumann_terms``.

The variant is read from the config (PEFT's default when absent, :func:`variant_of`) and reported
in ``form``. The rotation construction here (:func:`cayley`) is also what the interpolation paths
use (:mod:`peftarena_cli.interpolation.inplace`, ρ and layer-wise rewinding in
:mod:`peftarena_cli.interpolation.oft_rotation`).
``coft`` adapters are projected onto the ε-ball first, as PEFT's merge does; ``block_share``
repeats the single stored block.
"""

from __future__ import annotations

import math

import torch

from peftarena_cli.artifacts.keys import raise_missing
from peftarena_cli.errors import IncompatibleInputs, UsageError


def variant_of(config: dict) -> tuple[bool, int]:
    """(use_cayley_neumann, num_terms) of an OFT config, with PEFT's defaults when absent."""
    neumann = config.get("use_cayley_neumann")
    if neumann is None:
        from peft import OFTConfig

        neumann = OFTConfig.__dataclass_fields__["use_cayley_neumann"].default
    terms = int(config.get("num_cayley_neumann_terms") or 5)
    return bool(neumann), terms


def block_size_of(vec_len: int) -> int:
    """n such that n(n−1)/2 = vec_len."""
    n = int(round((1 + math.sqrt(1 + 8 * vec_len)) / 2))
    if n * (n - 1) // 2 != vec_len:
        raise UsageError(f"an OFT generator of length {vec_len} is not the upper triangle of a square block")
    return n


def skew(vec, n: int | None = None):
    """The skew-symmetric blocks (b, n, n) whose upper triangle (row-major, like PEFT) is ``vec`` (b, n(n−1)/2)."""
    n = n or block_size_of(vec.shape[-1])
    rows, cols = torch.triu_indices(n, n, 1, device=vec.device)
    Q = torch.zeros(vec.shape[0], n, n, dtype=vec.dtype, device=vec.device)
    Q[:, rows, cols] = vec
    return Q - Q.transpose(-2, -1)


def cayley(vec, neumann: bool, terms: int = 5):
    """The rotation blocks R (b, n, n) PEFT applies as ``x' = x R`` for generator upper triangles ``vec``."""
    Q = skew(vec.float())
    b, n, _ = Q.shape
    eye = torch.eye(n, dtype=Q.dtype, device=Q.device).expand(b, n, n)
    if not neumann:
        return torch.linalg.solve(eye + Q, eye - Q, left=False)
    R = eye.clone()
    if terms > 1:
        R = R + 2.0 * Q
        if terms > 2:
            Qp = Q @ Q
            R = R + 2.0 * Qp
            for _ in range(3, terms - 1):
                Qp = Qp @ Q
                R = R + 2.0 * Qp
            Qp = Qp @ Q
            R = R + Qp
    return R


def orthogonality_error(R) -> float:
    """max over blocks of ‖RᵀR − I‖_F (0 for an exact rotation)."""
    eye = torch.eye(R.shape[-1], dtype=R.dtype, device=R.device)
    return float(torch.linalg.matrix_norm(R.transpose(-2, -1) @ R - eye).max())


def _project(vec: torch.Tensor, n: int, eps: float) -> torch.Tensor:
    """PEFT's COFT projection of each block's generator onto ‖Q‖_F ≤ eps / √blocks."""
    q = skew(vec, n)
    eps = eps / math.sqrt(q.shape[0])
    norm = torch.linalg.matrix_norm(q, keepdim=True)
    q = torch.where(norm <= eps, q, eps * q / norm)
    rows, cols = torch.triu_indices(n, n, 1, device=vec.device)
    return q[:, rows, cols]


def applied_generator(vec: torch.Tensor, config: dict, n: int | None = None) -> torch.Tensor:
    """The generator upper triangles PEFT's forward and merge apply for the saved ``vec`` (blocks,
    n(n−1)/2): ``vec`` itself, or for a ``coft`` adapter its projection onto the ε-ball (PEFT projects
    before every forward and in its merge, and the optimizer's last step may leave the saved tensor
    outside the ball)."""
    if not config.get("coft"):
        return vec
    n = n or block_size_of(vec.shape[-1])
    return _project(vec.float(), n, float(config.get("eps", 6e-5))).to(vec.dtype)


def oft_parts(module: str, w0: torch.Tensor, ft, device: str, svd) -> dict:
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
    vec = applied_generator(vec, cfg, n)
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


def oft_config(choice, total_steps: int, model, common: dict):
    """OFT's PEFT config: blocks of ``choice.block_size`` (PEFT's ``r`` then follows from the width)."""
    from peft import OFTConfig

    return OFTConfig(r=0, oft_block_size=choice.block_size, module_dropout=0.0, **common)


def coft_config(choice, total_steps: int, model, common: dict):
    """COFT's PEFT config: OFT's (:func:`oft_config`) with ``coft`` on and the registry's ``eps``; PEFT
    then projects each block's generator onto ‖Q_b‖_F ≤ eps/√blocks before every forward."""
    cfg = oft_config(choice, total_steps, model, common)
    cfg.coft = True
    cfg.eps = float(choice.method.defaults["eps"])
    return cfg


def check_block_size(choice, modules) -> None:
    """The block size must divide the input width of every targeted module (OFT and BOFT)."""
    b = choice.block_size
    bad = sorted({m.in_features for _, m in modules if m.in_features % b})
    if bad:
        raise IncompatibleInputs(f"--block-size {b} does not divide the input width {bad[0]} of the targeted modules",
                                 hint="choose a block size that divides every targeted layer's input width")
