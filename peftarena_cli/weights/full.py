"""Full fine-tuning: W1 is read from the fine-tuned model, one tensor at a time; ΔW = W1 − W0.

:func:`check_full_finetune` is the one completeness check of a full fine-tune against its base (every
command that reads one calls it before any work); :func:`check_full_dtypes` refuses integer weights.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from peftarena_cli.artifacts.keys import base_key
from peftarena_cli.artifacts.safetensors_io import check_float_dtypes
from peftarena_cli.errors import IncompatibleInputs, InvalidArtifact

# The output head shares the input embedding's tensor when the config ties them
# (``tie_word_embeddings``); transformers then saves the embedding only, so the head's name is
# legitimately absent from a complete checkpoint.
TIED_HEAD_SUFFIXES = ("lm_head.weight",)


def ties_embeddings(directory) -> bool:
    """Whether the model in ``directory`` ties its output head to its input embedding: the
    ``tie_word_embeddings`` of its ``config.json`` (transformers' default, True, when the key or the
    file is absent)."""
    p = Path(directory) / "config.json" if directory is not None else None
    if p is None or not p.is_file():
        return True
    try:
        cfg = json.loads(p.read_text())
    except (OSError, ValueError):
        return True
    return bool(cfg.get("tie_word_embeddings", True)) if isinstance(cfg, dict) else True


def missing_from_full(base_names, ft_source, tied: bool) -> list[str]:
    """The base's tensors that the full fine-tune ``ft_source`` lacks (a missing or extra ``model.``
    prefix tolerated), except the output head when the embeddings are ``tied``. ``base_names`` are the
    base's tensor names (a WeightSource's keys, or a live model's deduplicated parameter names)."""
    out = []
    for k in base_names:
        if k in ft_source:
            continue
        if tied and k.endswith(TIED_HEAD_SUFFIXES):
            continue  # the head is the embedding: see TIED_HEAD_SUFFIXES
        mod = k[: -len(".weight")] if k.endswith(".weight") else None
        if mod is not None and base_key(ft_source, mod) is not None:
            continue
        if mod is None and ft_source.find(k) is not None:
            continue
        out.append(k)
    return sorted(out)


def check_full_finetune(base_names, ft_source, ft_spec, ft_directory=None, tied: bool | None = None) -> None:
    """Refuse a full fine-tune that lacks tensors of its base (:class:`InvalidArtifact`, naming a few).

    Each command would otherwise use the base's tensor in their place (the dense path keeps W0, a
    rewound checkpoint would be written without them) and report numbers for a model nobody trained.
    The tied output head is the one legitimate absence (:data:`TIED_HEAD_SUFFIXES`): ``tied`` says
    whether it applies, by default read from the fine-tune's ``config.json`` in ``ft_directory``."""
    if tied is None:
        tied = ties_embeddings(ft_directory)
    missing = missing_from_full(list(base_names), ft_source, tied)
    if missing:
        raise InvalidArtifact(
            f"the full fine-tune {str(ft_spec)!r} lacks {len(missing)} tensor(s) of the base: "
            f"{', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''}",
            hint="pass the complete checkpoint (every weight of the model, as save_pretrained writes it)")


def check_full_dtypes(source, ft_spec) -> None:
    """The weights of a full fine-tune (its ``*.weight`` and ``*.bias`` tensors) must be floating point;
    other tensors (integer buffers) are left alone."""
    names = [k for k in source.keys() if k.endswith((".weight", ".bias"))]
    check_float_dtypes({k: {"dtype": source.dtype(k)} for k in names}, f"the full fine-tune {str(ft_spec)!r}")


def full_parts(module: str, w0: torch.Tensor, ft, device: str, svd) -> dict:
    key = base_key(ft.source, module)
    if key is None:
        raise IncompatibleInputs(f"module {module!r} is missing from the fine-tuned model {ft.spec!r}")
    shape = ft.source.shape(key)
    if tuple(shape) != tuple(w0.shape):
        raise IncompatibleInputs(
            f"module {module!r}: the fine-tuned weight has shape {tuple(shape)}, the base {tuple(w0.shape)}",
        )
    w1 = ft.source.get(key).to(device=device, dtype=torch.float32)
    return {"w1_t": w1}
