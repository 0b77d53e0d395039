"""Forming fine-tuned weights per linear module: ΔW = W1 − W0 for every supported PEFT method.

* :mod:`.finetuned` — open a PEFT adapter (dir or single safetensors) or a full fine-tuned model;
* :mod:`.deltas` — :class:`ModuleDelta` and :func:`iter_module_deltas` (one module at a time);
* one file per method family says how its ΔW is formed: :mod:`.lora` (LoRA, rsLoRA, PiSSA,
  MiLoRA, DoRA, AdaLoRA), :mod:`.vera`, :mod:`.ia3`, :mod:`.oft`, :mod:`.boft`, :mod:`.miss`,
  :mod:`.full`; the method registry (:mod:`peftarena_cli.methods`) names the function for each
  method. See ``docs/methods.md``.
"""

from peftarena_cli.weights.deltas import ModuleDelta, iter_module_deltas
from peftarena_cli.weights.finetuned import Finetuned, open_finetuned

__all__ = ["ModuleDelta", "iter_module_deltas", "Finetuned", "open_finetuned"]
