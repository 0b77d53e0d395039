"""OFT rotation strength ρ and layer-wise rewinding (SafeScale, MinScale).

The rotation itself (the two Cayley variants of HF PEFT: :func:`cayley`, :func:`variant_of`,
:func:`skew`) is formed in :mod:`peftarena_cli.weights.oft`, shared with the ΔW former. PEFT stores, per OFT module, ``oft_R.weight`` of shape (blocks, n(n−1)/2): the upper triangle of
a skew-symmetric generator Q per block (n = block size). The rotation applied to the input is
``x' = x R`` block by block, so the merged weight is W1 = W0 Rᵀ (block-diagonal R). PEFT has two
ways to form R from Q, and they give **transposed** rotations for the same parameters:

* exact Cayley (``use_cayley_neumann=False``): ``R = solve(I + Q, I − Q, left=False)``,
  i.e. R = (I − Q)(I + Q)⁻¹;
* Cayley–Neumann (``use_cayley_neumann=True``, PEFT's default; ``num_cayley_neumann_terms`` = t):
  R = I + 2Q + 2Q² + … + 2Q^{t−2} + Q^{t−1}, a truncation of (I + Q)(I − Q)⁻¹ = Rᵀ_exact.
  It is orthogonal only up to the truncation error (small for small Q).

:func:`variant_of` reads which one an adapter uses from its config; :func:`cayley` reproduces
PEFT's own forward for either (checked against PEFT in tests/test_interpolate.py).

Rotation strength (used by layer-wise rewinding). For a module with rotation R (d × d, d = the
input width) ρ_m² = ‖R − I‖_F² / d. For an orthogonal R with eigen-angles θ_j,
‖R − I‖_F² = Σ_j 4 sin²(θ_j / 2), so ρ is the root-mean-square chord length by which a rotated
input coordinate moves (0 = no rotation, 2 = a half-turn everywhere); transposing R (the other
Cayley variant) leaves it unchanged. The strength of layer ℓ pools all its OFT modules:

    ρ_ℓ = sqrt( Σ_m ‖R_m − I‖_F² / Σ_m d_m )      (m over the OFT modules of layer ℓ)

Layer-wise rewinding rescales each layer's generators, Q_m → c_ℓ Q_m with c_ℓ ∈ (0, 1], so that
ρ_ℓ(c_ℓ) equals a target ρ*: SafeScale sets ρ* = the mean of ρ_ℓ over the first five adapted
layers; MinScale sets ρ* = min_ℓ ρ_ℓ. Layers already at or below ρ* keep c_ℓ = 1 (rewinding only
pulls layers back towards the base, it never amplifies). c_ℓ is found by bisection on the exact
ρ_ℓ(c) of the adapter's own Cayley variant (monotone in c for the exact Cayley map).
"""

from __future__ import annotations

import math
from collections import defaultdict

from peftarena_cli.errors import UsageError
from peftarena_cli.interpolation.native import layer_of_key
from peftarena_cli.weights.oft import applied_generator, block_size_of, cayley, variant_of

OFT_KEY_SUFFIX = ".oft_R.weight"
LAYERWISE_MODES = ("safescale", "minscale")


def _module_sq(vec, in_features: int, neumann: bool, terms: int, c: float = 1.0) -> tuple[float, int]:
    """(‖R − I‖_F², d) of one module with generator scaled by c (block_share repeats the one block)."""
    import torch

    R = cayley(vec.float() * c, neumann, terms)
    n = R.shape[-1]
    eye = torch.eye(n, dtype=R.dtype, device=R.device)
    sq = float(((R - eye) ** 2).sum())
    blocks_stored = R.shape[0]
    repeats = max(1, in_features // (blocks_stored * n))
    return sq * repeats, in_features


def oft_modules_by_layer(tensors: dict) -> dict[int, list[str]]:
    out: dict[int, list[str]] = defaultdict(list)
    for k in tensors:
        if k.endswith(OFT_KEY_SUFFIX):
            layer = layer_of_key(k)
            out[-1 if layer is None else layer].append(k)
    return dict(sorted(out.items()))


def _in_features(config: dict, vec) -> int:
    n = block_size_of(vec.shape[-1])
    if config.get("block_share"):
        return n  # unknown d; ρ² = ‖R_b − I‖² / n is the same for any number of repeats
    return vec.shape[0] * n


def layer_strength(tensors: dict, keys: list[str], config: dict, c: float = 1.0) -> float:
    """ρ_ℓ of the modules ``keys`` (saved OFT keys of one layer), generators scaled by c."""
    neumann, terms = variant_of(config)
    sq = d = 0.0
    for k in keys:
        v = applied_generator(tensors[k], config)  # COFT: the projected generator PEFT applies
        s, dd = _module_sq(v, _in_features(config, v), neumann, terms, c)
        sq += s
        d += dd
    return math.sqrt(sq / d) if d else 0.0


def rotation_strengths(tensors: dict, config: dict) -> dict[int, float]:
    """ρ_ℓ for every layer that has OFT modules (layer −1 collects modules outside ``layers.N``)."""
    return {layer: layer_strength(tensors, keys, config) for layer, keys in oft_modules_by_layer(tensors).items()}


def layerwise_scales(tensors: dict, config: dict, mode: str, iters: int = 50) -> tuple[dict[int, float], dict[int, float], float]:
    """(c_ℓ per layer, ρ_ℓ per layer, target ρ*) for SafeScale or MinScale."""
    mode = mode.lower()
    if mode not in LAYERWISE_MODES:
        raise UsageError(f"unknown --layerwise {mode!r}", hint="use safescale or minscale")
    by_layer = oft_modules_by_layer(tensors)
    if not by_layer:
        raise UsageError("layer-wise rewinding needs an OFT adapter with oft_R tensors")
    rho = {layer: layer_strength(tensors, keys, config) for layer, keys in by_layer.items()}
    numbered = [layer for layer in rho if layer >= 0] or list(rho)
    if mode == "safescale":
        first = numbered[:5]
        target = sum(rho[layer] for layer in first) / len(first)
    else:
        target = min(rho.values())
    scales: dict[int, float] = {}
    for layer, keys in by_layer.items():
        if rho[layer] <= target or rho[layer] == 0.0:
            scales[layer] = 1.0
            continue
        lo, hi = 0.0, 1.0
        for _ in range(iters):
            mid = 0.5 * (lo + hi)
            if layer_strength(tensors, keys, config, mid) > target:
                hi = mid
            else:
                lo = mid
        scales[layer] = 0.5 * (lo + hi)
    return scales, rho, target
