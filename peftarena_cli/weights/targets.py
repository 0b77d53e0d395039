"""Which linear modules a fine-tune's ``target_modules`` selects: what PEFT will wrap.

Read by the generic shape checks before training (:func:`peftarena_cli.training.methods.check_against_model`,
which hands the list to the method's ``check`` hook) and by PEFT config builders that resolve
``all-linear`` to module names (IA3).
"""

from __future__ import annotations


def linear_modules(model, target_modules) -> list[tuple[str, object]]:
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
