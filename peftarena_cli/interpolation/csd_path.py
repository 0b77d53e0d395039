"""CSD along an interpolation path, from saved input second moments (``peftarena csd --save-stats``).

At each α the update of module m is ΔW_m(α) = W_m(α) − W0_m: α ΔW on the dense path, and the
effective weight of the live adapter minus W0 on the native path (read off the adapted layer by
one forward pass on the identity, so DoRA's renormalisation and OFT's rotation are included).
The CSD formulas themselves are the activation code's (:mod:`peftarena_cli.activations.csd`).
"""

from __future__ import annotations

from peftarena_cli.activations.csd import csd_rows
from peftarena_cli.artifacts.keys import module_kind, module_layer
from peftarena_cli.errors import IncompatibleInputs


def _module_updates(path_model, alpha: float, covered: set[str]):
    """Yield (module name, W0, ΔW(α)) for every changed module in ``covered``."""
    import torch

    if path_model.path == "dense":
        for pname, d in path_model.delta.items():
            mod = pname[: -len(".weight")] if pname.endswith(".weight") else pname
            if mod in covered:
                yield mod, path_model.w0[pname].float(), d.float() * float(alpha)
        return
    from peft.tuners.tuners_utils import BaseTunerLayer

    inner = path_model.model.get_base_model()
    for name, layer in inner.named_modules():
        if not isinstance(layer, BaseTunerLayer) or name not in covered:
            continue
        base = layer.get_base_layer()
        w0 = base.weight.detach().float()
        eye = torch.eye(w0.shape[1], dtype=base.weight.dtype, device=base.weight.device)
        with torch.no_grad():
            out = layer(eye).float()
        if getattr(base, "bias", None) is not None:
            out = out - base.bias.detach().float()
        yield name, w0, out.T - w0


def path_csd(sets: dict):
    """A ``csd(path_model, alpha) -> {column: mean over modules}`` callable for :func:`run_sweep`.

    Per-module rows accumulate in the callable's ``rows`` list (one per module × α).
    """
    import pandas as pd

    covered = set.intersection(*(set(m.module_group) for m in sets.values())) if sets else set()
    rows: list[dict] = []

    def csd(path_model, alpha: float) -> dict:
        new = []
        for name, w0, dw in _module_updates(path_model, alpha, covered):
            r = csd_rows(name, module_layer(name), module_kind(name), w0, dw, sets, alphas=(1.0,))
            for row in r:
                row["alpha"] = float(alpha)
            new.extend(r)
        if not new:
            raise IncompatibleInputs("the CSD statistics cover none of the modules this fine-tune changes",
                                     hint="collect them with `peftarena csd BASE --save-stats` over all linear modules")
        rows.extend(new)
        df = pd.DataFrame(new)
        cols = [c for c in df.columns if c.startswith("csd_")]
        return {c: float(df[c].mean()) for c in cols}

    csd.rows = rows
    return csd
