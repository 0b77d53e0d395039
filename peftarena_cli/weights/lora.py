"""Where the LoRA-family deltas are formed: LoRA, rsLoRA, LoRA+, PiSSA, MiLoRA, DoRA and AdaLoRA.

All from PEFT's saved tensors, matching PEFT's own ``merge_and_unload``:

* LoRA: ΔW = s · B A with s = α / r (rsLoRA: s = α / √r); r and α follow ``rank_pattern`` and
  ``alpha_pattern``. Kept as factors (B·s, A).
* PiSSA / MiLoRA, *residual form* (config ``init_lora_weights`` = ``pissa``/``pissa_niter_k``/
  ``milora``): the adapter was trained on W_res = W0 − U_r Σ_r V_rᵀ (the top-r, or for MiLoRA the
  bottom-r, singular triplets of W0). Against the original base,
  ΔW = s·B A − U_r Σ_r V_rᵀ, a rank-2r factor pair built from the base SVD (exact for ``pissa``;
  ``pissa_niter_k`` used a randomized SVD, so the exact SVD approximates it).
  *Converted form* (saved with ``path_initial_model_for_weight_conversion``): a plain rank-2r LoRA
  relative to the original base; it is detected from the factors (the second half of A spans the
  top/bottom right singular vectors of W0) and reported as ``pissa converted``.
* DoRA: W1 = diag(m / ‖W0 + s B A‖_row) (W0 + s B A), the magnitude included.
* AdaLoRA: ΔW = B (A ⊙ E) · s / (r_init + 1e-5) with s = α (or r when α ≤ 0).

The same file says how ``peftarena finetune`` trains them (the registry names each function): the
PEFT configs (:func:`lora_config`, :func:`pissa_config`, :func:`dora_config`, :func:`rslora_config`,
:func:`adalora_config`), the rank check before training (:func:`check_rank`), MiLoRA's initialisation
after PEFT wraps the model (:func:`milora_init`: MiLoRA is not a PEFT init option), LoRA+'s optimizer
(:func:`loraplus_optimizer`: B at a higher learning rate; its adapters are plain LoRA) and AdaLoRA's
rank allocation after each optimizer step (:func:`adalora_allocate`).
"""

from __future__ import annotations

import math
import re

import torch

from peftarena_cli.artifacts.keys import expect_shape, raise_missing
from peftarena_cli.errors import IncompatibleInputs
from peftarena_cli.weights.finetuned import unsupported


def _pattern_value(pattern: dict | None, module: str, default):
    """PEFT's ``get_pattern_key`` rule: a key matches the end of the module name."""
    for key, val in (pattern or {}).items():
        if re.match(rf"(.*\.)?({key})$", module):
            return val
    return default


def _init(config: dict) -> str:
    v = config.get("init_lora_weights", True)
    return v.lower() if isinstance(v, str) else ""


def lora_scaling(config: dict, module: str, r: int) -> float:
    alpha = float(_pattern_value(config.get("alpha_pattern"), module, config.get("lora_alpha", 8)))
    if config.get("use_rslora"):
        return alpha / math.sqrt(r)
    return alpha / r


def _factors(module: str, w0: torch.Tensor, params: dict, device: str):
    a = params.get("lora_A.weight")
    b = params.get("lora_B.weight")
    if a is None or b is None:
        raise_missing(module, "lora_A/lora_B")
    out_f, in_f = w0.shape
    r = a.shape[0]
    expect_shape(a, (r, in_f), module, "lora_A")
    expect_shape(b, (out_f, r), module, "lora_B")
    return b.to(device=device, dtype=torch.float32), a.to(device=device, dtype=torch.float32)


RESIDUAL_INITS = ("pissa", "olora", "corda")  # PEFT inits that train on a residual base W_res ≠ W0


def residual_init(config: dict) -> str | None:
    """The config's ``init_lora_weights`` when it trained the adapter on a residual base (PiSSA, OLoRA,
    CorDA saved unconverted), else None."""
    init = config.get("init_lora_weights")
    if isinstance(init, str) and init.lower().split("_")[0] in RESIDUAL_INITS:
        return init
    return None


def lora_parts(module: str, w0: torch.Tensor, ft, device: str, svd) -> dict:
    config = ft.config
    params = ft.modules[module]
    if config.get("fan_in_fan_out"):
        unsupported(ft, "fan_in_fan_out (Conv1D/GPT-2 style) layers are not supported")
    b, a = _factors(module, w0, params, device)
    r = int(a.shape[0])
    s = lora_scaling(config, module, r)
    forms = ["rslora"] if config.get("use_rslora") else []
    method = None
    init = _init(config)
    if init.startswith(("pissa", "milora")):
        # residual form: the base the adapter was trained on is W0 minus r singular triplets of W0
        u, sv, vh = svd(module, w0)
        if init.startswith("pissa"):
            idx = slice(0, r)
            forms.append("pissa residual" + (" (randomized-SVD init approximated by the exact SVD)" if "niter" in init else ""))
        else:
            idx = slice(sv.shape[0] - r, sv.shape[0])
            forms.append("milora residual")
        u, sv, vh = u[:, idx].to(device), sv[idx].to(device), vh[idx].to(device)
        b = torch.cat([b * s, -(u * sv)], dim=1)
        a = torch.cat([a, vh], dim=0)
        s = 1.0
    else:
        conv = _detect_converted(w0, b, a, svd, module)
        if conv:
            forms.append(conv)
            method = conv.split()[0]
    b = b * s
    if config.get("use_dora"):
        m = params.get("lora_magnitude_vector")
        if m is None:
            m = params.get("lora_magnitude_vector.weight")
        if m is None:
            raise_missing(module, "lora_magnitude_vector")
        expect_shape(m, (w0.shape[0],), module, "lora_magnitude_vector")
        merged = w0 + b @ a
        norm = torch.linalg.norm(merged, dim=1)
        w1 = (m.to(device=device, dtype=torch.float32) / norm)[:, None] * merged
        return {"w1_t": w1, "form": ", ".join(forms + ["magnitude included"])}
    out = {"factors": (b, a), "form": ", ".join(forms)}
    if method is not None and not config.get("use_dora"):
        out["method"] = method
    return out


def _detect_converted(w0, b, a, svd, module) -> str:
    """Recognise a PiSSA/MiLoRA adapter saved in PEFT's converted (rank-2r) LoRA form.

    The converted A is [A; A0] with A0 = diag(√(σ_r/s)) V_rᵀ: its second half's rows are, up to
    scale, the top (PiSSA) or bottom (MiLoRA) right singular vectors of W0. Only even ranks are
    candidates, and the check costs one (cached) base SVD.
    """
    r2 = a.shape[0]
    if r2 % 2 or r2 < 2 or getattr(_detect_converted, "disabled", False):
        return ""
    half = r2 // 2
    a0 = a[half:]
    n0 = torch.linalg.norm(a0, dim=1, keepdim=True)
    if (n0 <= 0).any():
        return ""
    rows = a0 / n0
    # cheap precheck before asking for the SVD: PEFT's A0 rows are mutually orthogonal
    g = rows @ rows.T
    if (g - torch.eye(half, device=g.device)).abs().max() > 1e-3:
        return ""
    _, _, vh = svd(module, w0)
    vh = vh.to(rows.device)
    top = (rows @ vh[:half].T).abs().diagonal()
    if bool((top > 1 - 1e-3).all()):
        return "pissa converted"
    bot = (rows @ vh[-half:].T).abs().diagonal()
    if bool((bot > 1 - 1e-3).all()):
        return "milora converted"
    return ""


def adalora_parts(module: str, w0: torch.Tensor, ft, device: str, svd) -> dict:
    config = ft.config
    params = ft.modules[module]
    a, b, e = params.get("lora_A"), params.get("lora_B"), params.get("lora_E")
    if a is None or b is None or e is None:
        raise_missing(module, "lora_A/lora_B/lora_E")
    out_f, in_f = w0.shape
    r = a.shape[0]
    expect_shape(a, (r, in_f), module, "lora_A")
    expect_shape(b, (out_f, r), module, "lora_B")
    expect_shape(e, (r, 1), module, "lora_E")
    init_r = int(config.get("init_r") or r)
    alpha = float(config.get("lora_alpha", 8) or 0)
    # PEFT: scaling = alpha if alpha > 0 else r (r after rank-pattern pruning); ranknum = init_r
    scaling = alpha if alpha > 0 else float(r)
    f = scaling / (init_r + 1e-5)
    a = a.to(device=device, dtype=torch.float32) * e.to(device=device, dtype=torch.float32)
    b = b.to(device=device, dtype=torch.float32) * f
    return {"factors": (b, a), "form": f"rank {r} of init_r {init_r}"}


# ---- training (named by the registry entries of lora, pissa, milora, dora, rslora, loraplus, adalora)

def _lora(choice, common: dict, init=True, use_dora: bool = False, use_rslora: bool = False):
    from peft import LoraConfig

    return LoraConfig(r=choice.rank, lora_alpha=choice.alpha, lora_dropout=choice.dropout, init_lora_weights=init,
                      use_dora=use_dora, use_rslora=use_rslora, **common)


def lora_config(choice, total_steps: int, model, common: dict):
    """LoRA (B initialised to zero); MiLoRA too, re-initialised by :func:`milora_init` after wrapping, and
    LoRA+, whose difference is the optimizer (:func:`loraplus_optimizer`)."""
    return _lora(choice, common)


def rslora_config(choice, total_steps: int, model, common: dict):
    """rsLoRA: LoRA with PEFT's ``use_rslora`` (scaling alpha / sqrt(r) instead of alpha / r)."""
    return _lora(choice, common, use_rslora=True)


def loraplus_optimizer(choice, model, optimizer_cls, optimizer_kwargs: dict, weight_decay: float):
    """LoRA+: the trainer's optimizer class and settings, with B's learning rate ``loraplus_lr_ratio`` times
    A's (PEFT's ``create_loraplus_optimizer``: every ``lora_B`` weight, and any 1-d trainable tensor, in
    the groups at ratio x lr; the rest at lr). Weight decay as the trainer's, none on 1-d tensors."""
    from peft.optimizers import create_loraplus_optimizer

    kw = dict(optimizer_kwargs)
    lr = kw.pop("lr")
    kw.pop("weight_decay", None)
    return create_loraplus_optimizer(model, optimizer_cls, lr=lr,
                                     loraplus_lr_ratio=float(choice.method.defaults["loraplus_lr_ratio"]),
                                     loraplus_weight_decay=weight_decay, **kw)


def pissa_config(choice, total_steps: int, model, common: dict):
    """PiSSA: PEFT's own ``pissa`` init (the r largest singular triplets, residual base)."""
    return _lora(choice, common, init="pissa")


def dora_config(choice, total_steps: int, model, common: dict):
    """DoRA: LoRA with a magnitude vector (``use_dora``)."""
    return _lora(choice, common, use_dora=True)


def adalora_config(choice, total_steps: int, model, common: dict):
    """AdaLoRA: start at rank ⌈1.5 r⌉ (at least r + 1) and prune to r between 10 % and 80 % of the steps."""
    from peft import AdaLoraConfig

    t = max(int(total_steps), 1)
    tinit, tfinal = int(0.1 * t), int(0.2 * t)
    if t - tinit - tfinal <= 0:
        tinit, tfinal = 0, 0
    init_r = max(choice.rank + 1, (3 * choice.rank + 1) // 2)
    return AdaLoraConfig(target_r=choice.rank, init_r=init_r, lora_alpha=choice.alpha, lora_dropout=choice.dropout,
                         tinit=tinit, tfinal=tfinal, deltaT=1, total_step=t, **common)


def check_rank(choice, modules) -> None:
    """The rank must not exceed the smallest width of any targeted module."""
    small = min(min(m.in_features, m.out_features) for _, m in modules)
    if choice.rank > small:
        raise IncompatibleInputs(f"--rank {choice.rank} exceeds the smallest targeted width {small}",
                                 hint="pass a smaller --rank")


def milora_init(peft_model, adapter_name: str = "default") -> None:
    """MiLoRA: set A, B from the r *smallest* singular triplets of each base weight, W_res = W - s B A.

    Mirrors PEFT's ``pissa_init`` (same factor split A = sqrt(S/s) Vh, B = U sqrt(S/s)).
    """
    from peft.tuners.lora import LoraLayer

    with torch.no_grad():
        for mod in peft_model.modules():
            if not isinstance(mod, LoraLayer) or adapter_name not in mod.lora_A:
                continue
            base = mod.get_base_layer()
            w = base.weight
            dtype = w.dtype
            r = mod.r[adapter_name]
            s = mod.scaling[adapter_name]
            U, S, Vh = torch.linalg.svd(w.data.to(torch.float32), full_matrices=False)
            Sr = S[-r:] / s
            A = torch.diag(torch.sqrt(Sr)) @ Vh[-r:]
            B = U[:, -r:] @ torch.diag(torch.sqrt(Sr))
            mod.lora_A[adapter_name].weight.data = A.contiguous()
            mod.lora_B[adapter_name].weight.data = B.contiguous()
            base.weight.data = (w.data.to(torch.float32) - s * B @ A).to(dtype)


def adalora_allocate(peft_model, step: int) -> None:
    """AdaLoRA's budgeted rank reallocation, run by the trainer after every optimizer step."""
    peft_model.base_model.update_and_allocate(step)
