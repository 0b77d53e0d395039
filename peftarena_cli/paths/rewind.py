"""Rewinding: write the point α of a fine-tune's path as a new artifact.

* An adapter becomes a new adapter of the same PEFT type and config (native path, see
  :mod:`peftarena_cli.paths.native`), loadable with ``PeftModel.from_pretrained``; OFT adapters
  can additionally be rewound layer-wise (SafeScale / MinScale, :mod:`oft_rotation`).
* A full fine-tune becomes a full checkpoint W0 + α(W1 − W0) for every tensor (dense path).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from peftarena_cli.artifacts.adapters import Adapter
from peftarena_cli.errors import IncompatibleInputs, UnsupportedMethod, UsageError


def dora_row_norms_from_base(adapter: Adapter, base_source) -> dict:
    """m0 = ‖W0‖ per output row for each DoRA module, read lazily from the base's WeightSource."""
    from peftarena_cli.paths.native import base_row_norms_from_weights, magnitude_modules
    from peftarena_cli.weights.deltas import base_key

    def get(module):
        k = base_key(base_source, module)
        if k is None:
            raise IncompatibleInputs(f"module {module!r} of the adapter is missing from the base model")
        return base_source.get(k)

    return base_row_norms_from_weights(get, magnitude_modules(adapter.tensors))


def rewind_adapter(
    adapter: Adapter,
    alpha: float,
    *,
    scale_mode: str = "linear",
    layerwise: str | None = None,
    base_source=None,
) -> tuple[Adapter, dict]:
    """The adapter at native path position ``alpha`` (optionally OFT layer-wise rewound first).

    Returns ``(new_adapter, info)``; ``info`` records α, the generator scale and, for layer-wise
    rewinding, ρ_ℓ before/after, the target ρ* and c_ℓ per layer.
    """
    from peftarena_cli.paths.native import check_relative_to_base, method_of, scale_adapter_tensors

    config = dict(adapter.config)
    method = method_of(config)
    check_relative_to_base(config)
    info: dict = {"alpha": float(alpha), "method": method, "path": "native"}
    layer_scales = None
    if layerwise:
        if method != "oft":
            raise UnsupportedMethod(f"--layerwise applies to OFT adapters, this one is {method}",
                                    hint="drop --layerwise, or pass an OFT adapter")
        from peftarena_cli.paths.oft_rotation import layerwise_scales, rotation_strengths

        layer_scales, rho, target = layerwise_scales(adapter.tensors, config, layerwise)
        info.update(layerwise=layerwise, rho_target=target,
                    rho_before={str(k): v for k, v in rho.items()},
                    layer_scales={str(k): v for k, v in layer_scales.items()})
    if method == "oft":
        info["generator_scale"] = scale_mode
    norms = None
    if method == "dora" and alpha != 1.0:
        if base_source is None:
            raise UsageError("rewinding a DoRA adapter needs the base model (its magnitude m0 = ‖W0‖ per row)",
                             hint="pass --base BASE")
        norms = dora_row_norms_from_base(adapter, base_source)
    tensors = scale_adapter_tensors(config, adapter.tensors, alpha, scale_mode=scale_mode,
                                    base_row_norms=norms, layer_scales=layer_scales)
    if layerwise:
        from peftarena_cli.paths.oft_rotation import rotation_strengths

        info["rho_after"] = {str(k): v for k, v in rotation_strengths(tensors, config).items()}
    meta = {k: v for k, v in (adapter.metadata or {}).items() if k not in ("peft_config", "format")}
    return Adapter(config=config, tensors=tensors, path=None, metadata=meta), info


def rewind_full(base_source, finetuned_source, alpha: float, out_dir, copy_from: Path | None = None,
                extra_metadata: dict | None = None, overwrite: bool = False, callback=None) -> Path:
    """Write a full checkpoint W0 + α(W1 − W0) (every tensor of the fine-tune) atomically to ``out_dir``.

    Tensors the base lacks are copied from the fine-tune unchanged. Non-weight files (config.json,
    tokenizer files) are copied from ``copy_from`` (the fine-tuned model's directory).
    """
    import torch
    from safetensors.torch import save_file

    from peftarena_cli.artifacts.atomic import atomic_dir

    keys = finetuned_source.keys()
    out = {}
    for i, k in enumerate(keys):
        w1 = finetuned_source.get(k)
        if k in base_source:
            w0 = base_source.get(k)
            if tuple(w0.shape) != tuple(w1.shape):
                raise IncompatibleInputs(f"{k}: fine-tuned shape {tuple(w1.shape)} != base shape {tuple(w0.shape)}")
            if w1.is_floating_point():
                w = torch.add(w0.float(), w1.float() - w0.float(), alpha=float(alpha)).to(w1.dtype)
            else:
                w = w1
        else:
            w = w1
        out[k] = w.contiguous()
        if callback:
            callback(i + 1, len(keys), k)
    meta = {"format": "pt"}
    for k, v in (extra_metadata or {}).items():
        meta[k] = v if isinstance(v, str) else json.dumps(v)
    with atomic_dir(Path(out_dir), overwrite=overwrite) as tmp:
        save_file(out, str(tmp / "model.safetensors"), metadata=meta)
        if copy_from is not None and Path(copy_from).is_dir():
            for f in Path(copy_from).iterdir():
                if f.is_file() and not f.name.endswith((".safetensors", ".bin")) and f.name != "model.safetensors.index.json":
                    shutil.copy2(f, tmp / f.name)
    return Path(out_dir)
