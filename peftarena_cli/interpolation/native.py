"""Native interpolation paths: scale an adapter's own tensors so that α moves it along its structure.

Every function here works on adapter tensors in PEFT's saved key naming (what
``get_peft_model_state_dict`` returns and ``adapter_model.safetensors`` holds), so the same
scaled tensors serve both the in-place sweep (copied into the live PeftModel) and a rewound
adapter written to disk.

Which methods have a native path, of which kind, and which saved tensors it scales is the method
registry's (:mod:`peftarena_cli.methods`: ``native``, ``scaled``, ``linear``). Per kind, with s(α)
the generator scale:

* ``scale``: one factor × α, so ΔW(α) = α ΔW, the dense path exactly. LoRA / PiSSA / MiLoRA
  (``lora_B`` × α: ΔW(α) = α·s·B·A); VeRA (``vera_lambda_b`` × α: ΔW = Λ_b B Λ_d A is linear in
  λ_b); MiSS (``miss_block`` × α: ΔW is linear in the block in every MiSS variant, ``W@D + D``
  for ``bat``).
* ``dora`` (DoRA): the direction update and the magnitude separately:
  W(α) = m(α) · (W0 + α s B A) / ‖W0 + α s B A‖_row,  m(α) = m0 + α (m1 − m0), m0 = ‖W0‖_row.
* ``rotation`` (OFT): the skew-symmetric generator Q (``oft_R.weight``) × s(α), so R(α) = Cayley(s(α)·Q) with
  s(α) = α (``linear``) or √α (``sqrt``, as the study reports). PEFT then forms the rotation with
  the adapter's own variant (exact Cayley or Cayley–Neumann), see :mod:`oft_rotation`. COFT scales
  the generator PEFT applies, its projection onto the ε-ball, so R(α) = Cayley(s(α)·proj(Q)) stays
  inside the ball for |s(α)| ≤ 1 (scaling the saved Q, often outside the ball by the last optimizer
  step, would leave the rotation pinned to the ball's surface for most α).
"""

from __future__ import annotations

import math
import re

from peftarena_cli.artifacts.keys import module_of_key
from peftarena_cli.errors import UnsupportedMethod, UsageError
from peftarena_cli.methods import METHODS, Method, method_name

GENERATOR_SCALES = ("linear", "sqrt")
MAGNITUDE_SUFFIX = ".lora_magnitude_vector"
_LAYER_RE = re.compile(r"\.layers\.(\d+)\.")


def native_method(config: dict, metadata: dict | None = None) -> Method:
    """The registry entry of an adapter whose method has a native path; UnsupportedMethod otherwise."""
    name = method_name(config, metadata)
    m = METHODS.get(name or "")
    if m is None or not m.native:
        shown = name or str(config.get("peft_type", "")).lower() or "(unknown)"
        raise UnsupportedMethod(f"{shown} adapters have no native path",
                                hint="use --path dense (W0 + αΔW works for every method)")
    return m


def check_relative_to_base(config: dict) -> None:
    """Refuse adapters whose update is relative to a modified base (PiSSA/OLoRA/CorDA saved unconverted).

    Such an adapter sits on a residual base W_res ≠ W0, so neither path would start at the base.
    """
    from peftarena_cli.weights.lora import residual_init

    init = residual_init(config)
    if init is not None:
        raise UnsupportedMethod(
            f"this LoRA adapter was saved unconverted from init {init!r}: it needs its residual base, not W0",
            hint="re-save it with save_pretrained(path_initial_model_for_weight_conversion=...) to get a plain LoRA",
        )


def check_generator_scale(mode: str, alphas=()) -> None:
    """A usage error unless ``mode`` is a known generator scale that every α of ``alphas`` admits."""
    if mode not in GENERATOR_SCALES:
        raise UsageError(f"unknown --generator-scale {mode!r}", hint="use linear or sqrt")
    if mode == "sqrt":
        for alpha in alphas:
            if alpha < 0:
                raise UsageError(f"--generator-scale sqrt needs alpha >= 0, got {alpha}",
                                 hint="use --generator-scale linear to extrapolate below 0")


def generator_scale(alpha: float, mode: str = "linear") -> float:
    """s(α): the factor applied to the update factor (or OFT generator) for path position α."""
    check_generator_scale(mode, (alpha,))
    return math.sqrt(alpha) if mode == "sqrt" else float(alpha)


def layer_of_key(key: str) -> int | None:
    m = _LAYER_RE.search(key)
    return int(m.group(1)) if m else None


def scale_adapter_tensors(
    config: dict,
    tensors: dict,
    alpha: float,
    *,
    scale_mode: str = "linear",
    base_row_norms: dict | None = None,
    layer_scales: dict[int, float] | None = None,
) -> dict:
    """The adapter tensors at path position ``alpha`` on the method's native path.

    ``base_row_norms`` maps module name -> ‖W0‖ per output row (DoRA only: m0).
    ``layer_scales`` maps layer index -> extra generator factor c_ℓ (OFT layer-wise rewinding).
    Returns a new dict; the input tensors are not modified. α = 1 returns the tensors unchanged
    (bit for bit) when no layer scales are given.
    """
    import torch

    from peftarena_cli.weights.oft import applied_generator  # imports torch

    entry = native_method(config)
    method, rotation = entry.name, entry.rotates
    if not rotation and scale_mode != "linear":
        raise UsageError(f"--generator-scale {scale_mode} applies to OFT only, not {method}")
    if layer_scales and not rotation:
        raise UsageError(f"layer-wise rewinding applies to OFT only, not {method}")
    s = generator_scale(alpha, scale_mode) if rotation else float(alpha)
    suffixes = entry.scaled
    out = {}
    found = False
    for k, v in tensors.items():
        if any(k.endswith(suf) or (suf.startswith(".lora_embedding") and suf in k) for suf in suffixes):
            found = True
            f = s
            if layer_scales:
                f = s * float(layer_scales.get(layer_of_key(k), 1.0))
            if f != 1.0 and rotation:
                v = applied_generator(v, config)  # COFT: scale the projected generator PEFT applies
            out[k] = v if f == 1.0 else (v.float() * f).to(v.dtype)
        elif entry.moves_magnitude and k.endswith(MAGNITUDE_SUFFIX):
            if alpha == 1.0:
                out[k] = v
                continue
            mod = module_of_key(k)[0]
            if base_row_norms is None or mod not in base_row_norms:
                raise UsageError(f"DoRA's native path needs the base weight of {mod} (its magnitude m0)",
                                 hint="pass the base model (--base) so m0 = ‖W0‖ per row can be read")
            m0 = base_row_norms[mod].to(device=v.device, dtype=torch.float32)
            out[k] = (m0 + alpha * (v.float() - m0)).to(v.dtype)
        else:
            out[k] = v
    if not found:
        raise UnsupportedMethod(f"the {method} adapter has none of the tensors its native path scales ({', '.join(suffixes)})",
                                hint="use --path dense")
    return out


def magnitude_modules(tensors: dict) -> list[str]:
    """Module names whose DoRA magnitude is in ``tensors``."""
    return [module_of_key(k)[0] for k in tensors if k.endswith(MAGNITUDE_SUFFIX)]


def base_row_norms_from_weights(get_weight, modules: list[str]) -> dict:
    """m0 = ‖W0‖ per output row for each module; ``get_weight(module) -> tensor (out, in)``."""
    import torch

    return {m: torch.linalg.norm(get_weight(m).float(), dim=1) for m in modules}
