"""State-dict key names: where a module's name ends in an adapter key, which base key holds a module,
and whether an adapter tensor fits the base weight. One home, one meaning each.

(Module *selection* by kind and layer is :func:`peftarena_cli.weights.deltas.select_modules`;
layer and kind of a module name are :func:`peftarena_cli.artifacts.weights.module_layer` /
:func:`~peftarena_cli.artifacts.weights.module_kind`.)
"""

from __future__ import annotations

from peftarena_cli.errors import AdapterError, IncompatibleInputs
from peftarena_cli.methods import marker_match

PEFT_PREFIX = "base_model.model."


def module_of_key(key: str) -> tuple[str, str] | None:
    """``(module, param suffix)`` of a PEFT state-dict key, None when no method marker is in it.

    ``base_model.model.model.layers.0.mlp.up_proj.lora_A.weight`` -> (``model.layers.0.mlp.up_proj``,
    ``lora_A.weight``). The markers are the registry's (:func:`peftarena_cli.methods.all_markers`).
    """
    m = marker_match(key)
    if m is None:
        return None
    mod = key[: m.start()]
    if mod.startswith(PEFT_PREFIX):
        mod = mod[len(PEFT_PREFIX):]
    return mod, key[m.start() + 1:]


def base_key(base, module: str) -> str | None:
    """The base's weight key for ``module`` (tolerates a missing/extra ``model.`` prefix).

    ``base`` is a :class:`~peftarena_cli.artifacts.weights.WeightSource` (anything with ``in`` and
    ``find``)."""
    cands = [module + ".weight"]
    if module.startswith("model."):
        cands.append(module[len("model."):] + ".weight")
    else:
        cands.append("model." + module + ".weight")
    for c in cands:
        if c in base:
            return c
    return base.find(module + ".weight")


def expect_shape(t, shape: tuple, module: str, what: str) -> None:
    """Raise IncompatibleInputs when an adapter tensor does not fit the base weight (None = any size)."""
    got = tuple(t.shape)
    if len(got) != len(shape) or any(s is not None and g != s for g, s in zip(got, shape)):
        want = tuple("*" if s is None else s for s in shape)
        raise IncompatibleInputs(
            f"module {module!r}: adapter tensor {what} has shape {got}, the base needs {want}",
        )


def raise_missing(module: str, what: str):
    """An adapter module lacks the tensors its method needs."""
    raise AdapterError(f"module {module!r}: the adapter lacks its {what} tensors")
