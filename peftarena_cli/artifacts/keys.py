"""State-dict key names: where a module's name ends in an adapter key, which base key holds a module,
and whether an adapter tensor fits the base weight. One home, one meaning each.

Module names too: a module's layer and kind (:func:`module_layer`, :func:`module_kind`), the one
selection syntax of every command's ``-m/--modules`` (:func:`select_modules`: kinds, full names and
globs together, docs/design.md) and the canonical module order (:func:`canonical_order`).
"""

from __future__ import annotations

import fnmatch
import re

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

    ``base`` is a :class:`~peftarena_cli.artifacts.safetensors_io.WeightSource` (anything with ``in`` and
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


class ModelWeights:
    """The weight names of a live model, answering ``in`` and ``find`` like a
    :class:`~peftarena_cli.artifacts.safetensors_io.WeightSource` (so :func:`base_key` works on it).

    PEFT's wrapping is looked through: the ``base_model.model.`` prefix and the ``.base_layer``
    component of a tuner layer are removed, so a model that already carries an adapter answers with
    its base names."""

    def __init__(self, model):
        self.names = set()
        for n, _ in model.named_parameters(remove_duplicate=False):
            if n.startswith(PEFT_PREFIX):
                n = n[len(PEFT_PREFIX):]
            self.names.add(n.replace(".base_layer.", "."))

    def __contains__(self, name: str) -> bool:
        return name in self.names

    def find(self, suffix: str) -> str | None:
        hits = [k for k in self.names if k.endswith("." + suffix) or k == suffix]
        return hits[0] if len(hits) == 1 else None


def unmatched_keys(keys, base) -> list[str]:
    """The adapter keys (PEFT's saved names) whose module has no weight in ``base`` (a WeightSource or
    :class:`ModelWeights`), sorted. Keys that name no module (VeRA's shared projections) are not
    counted: they belong to the adapter as a whole."""
    found: dict[str, bool] = {}
    out = []
    for k in keys:
        hit = module_of_key(k)
        if hit is None:
            continue
        mod = hit[0]
        if mod not in found:
            found[mod] = base_key(base, mod) is not None
        if not found[mod]:
            out.append(k)
    return sorted(out)


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


# ------------------------------------------------------------------------------ module names
_LAYER = re.compile(r"(?:^|\.)layers\.(\d+)\.")
# canonical order inside a decoder layer (attention then MLP); other kinds follow by name
_KIND_ORDER = {k: i for i, k in enumerate(
    ["q_proj", "k_proj", "v_proj", "o_proj", "qkv_proj", "gate_proj", "up_proj", "gate_up_proj", "down_proj"])}


def module_layer(name: str) -> int:
    """``model.layers.3.mlp.down_proj`` -> 3 (-1 outside the decoder layers)."""
    m = _LAYER.search(name)
    return int(m.group(1)) if m else -1


def module_kind(name: str) -> str:
    """``model.layers.3.mlp.down_proj`` (or its ``.weight``) -> ``down_proj``."""
    parts = name.split(".")
    if parts[-1] in ("weight", "bias") and len(parts) > 1:
        parts = parts[:-1]
    return parts[-1]


def split_patterns(values) -> list[str]:
    """``-m`` values as given (repeatable, each may be comma-separated) -> the list of patterns."""
    if values is None:
        return []
    if isinstance(values, str):
        values = [values]
    return [p.strip() for v in values for p in str(v).split(",") if p.strip()]


def select_modules(names: list[str], patterns=None, layers=None) -> list[str]:
    """The modules of ``names`` that ``-m/--modules`` and ``--layers`` select, in the order of ``names``.

    Every pattern is a glob matched against the full module name *or* its kind, so kinds
    (``down_proj``), full names (``model.layers.3.mlp.down_proj``) and globs (``'*.self_attn.*'``,
    ``'model.layers.1[0-9].*'``) can be mixed; the selection is their union, then restricted to
    ``layers`` when given. A pattern that matches nothing is an error (a typo would otherwise silently
    select less), and so is an empty selection.
    """
    pats = split_patterns(patterns)
    kinds = sorted({module_kind(n) for n in names})
    if pats:
        chosen: set[str] = set()
        for pat in pats:
            hits = [n for n in names if fnmatch.fnmatchcase(n, pat) or fnmatch.fnmatchcase(module_kind(n), pat)]
            if not hits:
                raise IncompatibleInputs(
                    f"--modules {pat!r} matches no linear module of the {len(names)} in question",
                    hint=f"use a kind ({', '.join(kinds) or 'none'}), a full name such as "
                         f"{names[0] if names else 'model.layers.0.mlp.down_proj'}, or a glob on names")
            chosen.update(hits)
    else:
        chosen = set(names)
    if layers:
        want = {int(x) for x in layers}
        chosen = {n for n in chosen if module_layer(n) in want}
    if not chosen:
        have = sorted({module_layer(n) for n in names})
        span = f"{have[0]}..{have[-1]}" if have else "none"
        raise IncompatibleInputs(
            f"the selection is empty: no module matches --modules {','.join(pats) or 'all'} --layers "
            f"{','.join(map(str, layers)) if layers else 'all'}",
            hint=f"there are {len(names)} modules: kinds {', '.join(kinds) or 'none'}; layers {span}")
    return [n for n in names if n in chosen]


def canonical_order(names) -> list[str]:
    """Module names by layer, then kind (attention before MLP), then name: the order of every table."""
    return sorted(names, key=lambda n: (module_layer(n), _KIND_ORDER.get(module_kind(n), 99), n))
