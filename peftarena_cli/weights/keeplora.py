"""KeepLoRA: a LoRA whose factors start from the task gradient's part outside W0's principal subspace.

The PEFT-Arena study's recipe (``train/peft_arena_verl/utils/keeplora.py`` and the SFT trainer that
calls it), for each LoRA-wrapped linear module with base weight W0 (out × in):

1. G = ∂L/∂W0, the gradient of the SFT loss (mean cross-entropy over the completion tokens) of the
   first training batch, taken at the base model (the adapter contributes nothing).
2. V_k = the k leading right singular vectors of W0 (k = ``PRINCIPAL_MULT`` · r, capped at the
   smaller width); the residual gradient is G_res = G − G V_k V_kᵀ (the part of G acting on input
   directions W0 uses least).
3. With G_res = U Σ Vᵀ: A = V_rᵀ (r × in, orthonormal rows), B = U_r Σ_r (out × r), so the adapter
   starts at B A = the best rank-r approximation of G_res (the update starts non-zero, along +G_res,
   as the study's code does).
4. A is frozen; only B trains.

The saved adapter is a plain LoRA (PEFT config ``init_lora_weights=True``), and its update against
the original base is the LoRA formula ΔW = (α/r) B A, with B, A the saved (trained) factors: it is
formed by :func:`peftarena_cli.weights.lora.lora_parts`, which the registry entry names. peftarena
records the method name in the adapter's metadata; a KeepLoRA adapter without it reads as LoRA.

Exact SVDs are used where the study calls ``torch.svd_lowrank`` (a randomized approximation of the
same subspaces), and the gradient is taken in the model's dtype, without the study's bf16 autocast.
"""

from __future__ import annotations

import torch

from peftarena_cli.errors import DataError, NumericalError

# the principal subspace's rank is this multiple of the LoRA rank (the study's default,
# ``keeplora_principal_rank: 0`` meaning 4 · lora_rank)
PRINCIPAL_MULT = 4


def principal_rank(rank: int, w_shape) -> int:
    """k: ``PRINCIPAL_MULT`` · r, at most the smaller width of the weight."""
    return max(0, min(PRINCIPAL_MULT * int(rank), min(int(w_shape[0]), int(w_shape[1]))))


def residual_gradient(w0: torch.Tensor, grad: torch.Tensor, k: int) -> torch.Tensor:
    """G − G V_k V_kᵀ, V_k the k leading right singular vectors of ``w0`` (float32; G itself for k = 0)."""
    g = grad.to(torch.float32)
    if k <= 0:
        return g
    _, _, vh = torch.linalg.svd(w0.to(torch.float32), full_matrices=False)
    v = vh[:k].T  # (in, k)
    return g - (g @ v) @ v.T


def keeplora_factors(w0: torch.Tensor, grad: torch.Tensor, rank: int, k: int | None = None):
    """(A, B) with A = V_rᵀ (r × in) and B = U_r Σ_r (out × r) from the SVD of the residual gradient,
    so B A is its best rank-r approximation; ``k`` defaults to :func:`principal_rank`."""
    k = principal_rank(rank, w0.shape) if k is None else k
    res = residual_gradient(w0, grad, k)
    u, sv, vh = torch.linalg.svd(res, full_matrices=False)
    r = int(rank)
    return vh[:r].contiguous(), (u[:, :r] * sv[:r]).contiguous()


def _lora_layers(peft_model, adapter_name: str = "default"):
    from peft.tuners.lora import LoraLayer

    return [(name, mod) for name, mod in peft_model.named_modules()
            if isinstance(mod, LoraLayer) and adapter_name in mod.lora_A]


def freeze_down_projection(peft_model, adapter_name: str = "default") -> None:
    """KeepLoRA trains B only: every LoRA A (the down-projection) stops requiring a gradient."""
    for _, mod in _lora_layers(peft_model, adapter_name):
        mod.lora_A[adapter_name].weight.requires_grad_(False)


def base_gradients(peft_model, batch: dict, adapter_name: str = "default") -> dict:
    """module name -> ∂L/∂W0 of every LoRA layer's base weight, for the SFT loss of ``batch`` (a collated
    batch with ``labels``, −100 on tokens outside the completion) at the base model (adapters disabled).

    The global random state is left as it was, and no ``.grad`` is written."""
    layers = _lora_layers(peft_model, adapter_name)
    weights = [mod.get_base_layer().weight for _, mod in layers]
    labels = batch.get("labels")
    if labels is None or not bool((labels[:, 1:] != -100).any()):
        raise DataError("KeepLoRA's initialisation needs completion tokens in the first training batch; it has none",
                        hint="raise --max-length (the completions were truncated away) or check the data's responses")
    before = [w.requires_grad for w in weights]
    was_training = peft_model.training
    device = weights[0].device
    try:
        for w in weights:
            w.requires_grad_(True)
        peft_model.train()
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), peft_model.disable_adapter():
            batch = {k: v.to(device) if hasattr(v, "to") else v for k, v in batch.items()}
            loss = peft_model(**batch, use_cache=False).loss
            if not bool(torch.isfinite(loss)):
                raise NumericalError(f"KeepLoRA's initial loss is {float(loss)}",
                                     hint="check the data and --dtype; the gradient it needs is not finite")
            grads = torch.autograd.grad(loss, weights)
    finally:
        for w, rg in zip(weights, before):
            w.requires_grad_(rg)
        peft_model.train(was_training)
    return {name: g.detach() for (name, _), g in zip(layers, grads)}


def keeplora_init(peft_model, batch: dict, adapter_name: str = "default") -> int:
    """Set every LoRA layer's A, B from :func:`keeplora_factors` of its base weight and the first batch's
    gradient; A stays frozen (:func:`freeze_down_projection`). Returns the number of layers set."""
    grads = base_gradients(peft_model, batch, adapter_name)
    n = 0
    with torch.no_grad():
        for name, mod in _lora_layers(peft_model, adapter_name):
            w0 = mod.get_base_layer().weight
            a_param, b_param = mod.lora_A[adapter_name].weight, mod.lora_B[adapter_name].weight
            a, b = keeplora_factors(w0, grads[name], a_param.shape[0])
            a_param.copy_(a.to(a_param.dtype))
            b_param.copy_(b.to(b_param.dtype))
            n += 1
    freeze_down_projection(peft_model, adapter_name)
    return n
