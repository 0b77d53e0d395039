"""Training side of the method registry: overrides resolved to hyper-parameters, PEFT configs, MiLoRA init.

The methods themselves (names, PEFT types, defaults, learning rates) live in the one registry,
:mod:`peftarena_cli.methods`; ``Method``, ``METHODS`` and ``get_method`` are importable from here too.
Every method (``full``, ``lora``, ``pissa``, ``milora``, ``dora``, ``adalora``, ``vera``, ``ia3``,
``oft``, ``boft``, ``miss``) has paper-like defaults (rank 8 for the LoRA family, OFT/BOFT block
size 32, VeRA rank 256, MiSS rank 8, all linear modules) and a default learning rate. A few
overrides are accepted per method (rank, alpha, block size, target modules); an override a
method does not take is an error, not silently ignored.

MiLoRA (minor singular components) is not a PEFT init option, so it is done here:
:func:`milora_init` sets the LoRA factors from the ``r`` smallest singular triplets and subtracts
them from the base weight, exactly as PEFT's PiSSA init does with the largest ones.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from peftarena_cli.errors import IncompatibleInputs, UnsupportedMethod
from peftarena_cli.methods import METHODS, Method, get_method, resolve

__all__ = ["METHODS", "Method", "get_method", "MethodChoice", "resolve_method", "parse_target_modules",
           "check_against_model", "peft_config", "milora_init", "method_table", "FEEDFORWARD", "lora_config",
           "adalora_config", "vera_config", "ia3_config", "oft_config", "boft_config", "miss_config"]

FEEDFORWARD = ("down_proj", "fc2", "dense_4h_to_h", "w2", "c_proj")


def parse_target_modules(spec: str | None):
    """``all-linear`` (default) or a comma-separated list of module name suffixes."""
    if spec is None or spec.strip() in ("", "all-linear"):
        return "all-linear"
    mods = [s.strip() for s in spec.split(",") if s.strip()]
    if not mods:
        return "all-linear"
    return mods


@dataclass
class MethodChoice:
    """A method plus the user's overrides, resolved to concrete hyper-parameters."""

    method: Method
    rank: int | None = None
    alpha: float | None = None
    block_size: int | None = None
    target_modules: object = "all-linear"
    lr: float = 0.0

    def to_dict(self) -> dict:
        return {"method": self.method.name, "rank": self.rank, "alpha": self.alpha, "block_size": self.block_size,
                "target_modules": self.target_modules, "lr": self.lr}


def resolve_method(name: str, rank: int | None = None, alpha: float | None = None, block_size: int | None = None,
                   target_modules: str | None = None, lr: float | None = None) -> MethodChoice:
    """Check the overrides against what the method takes; fill in the defaults."""
    m = get_method(name)
    given = {"rank": rank, "alpha": alpha, "block_size": block_size, "target_modules": target_modules}
    for k, v in given.items():
        if v is not None and k not in m.takes:
            flag = "--" + k.replace("_", "-")
            takes = ", ".join("--" + t.replace("_", "-") for t in m.takes) or "none"
            raise UnsupportedMethod(f"method {m.name!r} takes no {flag}", hint=f"{m.name} accepts: {takes}")
    for k, v in (("rank", rank), ("block_size", block_size)):
        if v is not None and v < 1:
            raise IncompatibleInputs(f"--{k.replace('_', '-')} must be >= 1 (got {v})", hint="pass a positive integer")
    if alpha is not None and not (math.isfinite(alpha) and alpha > 0):
        raise IncompatibleInputs(f"--alpha must be > 0 (got {alpha})", hint="pass a positive number")
    if lr is not None and not (math.isfinite(lr) and lr > 0):
        raise IncompatibleInputs(f"--lr must be > 0 (got {lr})", hint="pass a positive learning rate")
    rank = rank if rank is not None else m.defaults.get("rank")
    alpha = alpha if alpha is not None else (m.defaults.get("alpha") if "alpha" in m.takes else None)
    if "alpha" in m.takes and given["rank"] is not None and given["alpha"] is None:
        alpha = m.defaults["alpha"] / m.defaults["rank"] * rank  # keep alpha/r when only r changes
    block = block_size if block_size is not None else m.defaults.get("block_size")
    tm = parse_target_modules(target_modules) if m.name != "full" else None
    return MethodChoice(m, rank=rank, alpha=alpha, block_size=block, target_modules=tm,
                        lr=lr if lr is not None else m.lr)


def _linear_modules(model, target_modules) -> list[tuple[str, object]]:
    """The linear modules ``target_modules`` selects (what PEFT will wrap), excluding the output head."""
    import torch

    out_head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    found = []
    for name, mod in model.named_modules():
        if not isinstance(mod, torch.nn.Linear) or mod is out_head:
            continue
        if target_modules == "all-linear" or any(name == t or name.endswith("." + t) for t in target_modules):
            found.append((name, mod))
    return found


def check_against_model(choice: MethodChoice, model) -> None:
    """Fail early, with a clear message, on overrides the model's shapes cannot take."""
    if choice.method.name == "full":
        return
    mods = _linear_modules(model, choice.target_modules)
    if not mods:
        raise IncompatibleInputs(f"--target-modules {choice.target_modules!r} matches no linear module of the model",
                                 hint="use all-linear or suffixes such as q_proj,v_proj")
    name = choice.method.name
    if name in ("oft", "boft"):
        b = choice.block_size
        bad = sorted({m.in_features for _, m in mods if m.in_features % b})
        if bad:
            raise IncompatibleInputs(f"--block-size {b} does not divide the input width {bad[0]} of the targeted modules",
                                     hint="choose a block size that divides every targeted layer's input width")
        if name == "boft":
            f = choice.method.defaults["butterfly_factor"]
            nb = sorted({m.in_features // b for _, m in mods if (m.in_features // b) % (2 ** (f - 1))})
            if nb:
                raise IncompatibleInputs(
                    f"--block-size {b} gives {nb[0]} blocks, not divisible by 2^(butterfly factor - 1) = {2 ** (f - 1)}",
                    hint="choose a block size giving an even number of blocks per layer")
    if name == "miss":
        bad = sorted({m.out_features for _, m in mods if m.out_features % choice.rank})
        if bad:
            raise IncompatibleInputs(f"--rank {choice.rank} does not divide the output width {bad[0]} of the targeted modules",
                                     hint="MiSS needs a rank that divides every targeted layer's output width")
    if name in ("lora", "pissa", "milora", "dora", "adalora"):
        small = min(min(m.in_features, m.out_features) for _, m in mods)
        if choice.rank > small:
            raise IncompatibleInputs(f"--rank {choice.rank} exceeds the smallest targeted width {small}",
                                     hint="pass a smaller --rank")


def peft_config(choice: MethodChoice, total_steps: int, model=None):
    """The PEFT config object for ``choice`` (None for full fine-tuning), built by the function the
    registry names (``Method.peft_config``: ``(choice, total_steps, model, common) -> PeftConfig``).

    ``model`` lets IA3 resolve ``all-linear`` to the model's module names (its feedforward list
    must be a subset of the targets when the saved config is read back)."""
    if not choice.method.peft_config:
        return None
    from peft import TaskType

    common = {"task_type": TaskType.CAUSAL_LM, "target_modules": choice.target_modules}
    return resolve(choice.method.peft_config)(choice, total_steps, model, common)


def lora_config(choice: MethodChoice, total_steps: int, model, common: dict):
    """LoRA, PiSSA, MiLoRA (initialised by :func:`milora_init` after wrapping) and DoRA."""
    from peft import LoraConfig

    name = choice.method.name
    init = {"lora": True, "dora": True, "pissa": "pissa", "milora": True}[name]
    return LoraConfig(r=choice.rank, lora_alpha=choice.alpha, lora_dropout=0.0, init_lora_weights=init,
                      use_dora=(name == "dora"), **common)


def adalora_config(choice: MethodChoice, total_steps: int, model, common: dict):
    from peft import AdaLoraConfig

    t = max(int(total_steps), 1)
    tinit, tfinal = int(0.1 * t), int(0.2 * t)
    if t - tinit - tfinal <= 0:
        tinit, tfinal = 0, 0
    init_r = max(choice.rank + 1, (3 * choice.rank + 1) // 2)
    return AdaLoraConfig(target_r=choice.rank, init_r=init_r, lora_alpha=choice.alpha, lora_dropout=0.0,
                         tinit=tinit, tfinal=tfinal, deltaT=1, total_step=t, **common)


def vera_config(choice: MethodChoice, total_steps: int, model, common: dict):
    from peft import VeraConfig

    return VeraConfig(r=choice.rank, vera_dropout=0.0, save_projection=True, **common)


def ia3_config(choice: MethodChoice, total_steps: int, model, common: dict):
    from peft import IA3Config

    tm = common["target_modules"]
    if tm == "all-linear" and model is not None:
        tm = sorted({n.rsplit(".", 1)[-1] for n, _ in _linear_modules(model, "all-linear")})
        common = {**common, "target_modules": tm}
    ff = list(FEEDFORWARD) if tm == "all-linear" else [t for t in tm if t in FEEDFORWARD]
    return IA3Config(feedforward_modules=ff, **common)


def oft_config(choice: MethodChoice, total_steps: int, model, common: dict):
    from peft import OFTConfig

    return OFTConfig(r=0, oft_block_size=choice.block_size, module_dropout=0.0, **common)


def boft_config(choice: MethodChoice, total_steps: int, model, common: dict):
    from peft import BOFTConfig

    return BOFTConfig(boft_block_size=choice.block_size, boft_block_num=0,
                      boft_n_butterfly_factor=choice.method.defaults["butterfly_factor"], boft_dropout=0.0,
                      **common)


def miss_config(choice: MethodChoice, total_steps: int, model, common: dict):
    from peft import MissConfig

    return MissConfig(r=choice.rank, miss_dropout=0.0, **common)


def milora_init(peft_model, adapter_name: str = "default") -> None:
    """MiLoRA: set A, B from the r *smallest* singular triplets of each base weight, W_res = W - s B A.

    Mirrors PEFT's ``pissa_init`` (same factor split A = sqrt(S/s) Vh, B = U sqrt(S/s)).
    """
    import torch
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


def method_table() -> list[dict]:
    """One row per method (for docs and `--help`)."""
    return [{"method": m.name, "lr": m.lr, "defaults": m.defaults, "overrides": list(m.takes), "summary": m.summary}
            for m in METHODS.values()]
