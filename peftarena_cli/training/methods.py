"""Training side of the method registry: overrides resolved to hyper-parameters, the PEFT config, shape checks.

The methods themselves (names, PEFT types, defaults, learning rates) live in the one registry,
:mod:`peftarena_cli.methods`; ``Method``, ``METHODS`` and ``get_method`` are importable from here too.
Every method has paper-like defaults and a default learning rate. A few overrides are accepted per
method (rank, alpha, block size, target modules); an override a method does not take is an error,
not silently ignored.

Only generic code is here: what is particular to a method (its PEFT config, its shape checks, the
work after PEFT wraps the model, such as MiLoRA's initialisation) is in the method's own file
under ``weights/`` and named by its registry entry (``peft_config``, ``check``, ``post_wrap``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from peftarena_cli.errors import IncompatibleInputs, UnsupportedMethod
from peftarena_cli.methods import METHODS, Method, get_method, resolve

__all__ = ["METHODS", "Method", "get_method", "MethodChoice", "resolve_method", "parse_target_modules",
           "check_against_model", "peft_config", "post_wrap", "method_table"]


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
    dropout: float = 0.0  # dropout on the adapter's input (the entry's default ``dropout``; no override)

    def to_dict(self) -> dict:
        return {"method": self.method.name, "rank": self.rank, "alpha": self.alpha, "block_size": self.block_size,
                "target_modules": self.target_modules, "lr": self.lr, "dropout": self.dropout}


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
    if "alpha" in m.takes and given["rank"] is not None and given["alpha"] is None and not m.defaults.get("use_rslora"):
        # keep alpha/r when only r changes; rsLoRA keeps alpha, its alpha/sqrt(r) being the rank-stabilised scaling
        alpha = m.defaults["alpha"] / m.defaults["rank"] * rank
    block = block_size if block_size is not None else m.defaults.get("block_size")
    tm = parse_target_modules(target_modules) if not m.is_full else None
    return MethodChoice(m, rank=rank, alpha=alpha, block_size=block, target_modules=tm,
                        lr=lr if lr is not None else m.lr, dropout=float(m.defaults.get("dropout", 0.0)))


# what a run's manifest records of its resolved method (``MethodChoice.to_dict``) that the command line
# may leave to the defaults; manifests written before ``dropout`` was recorded trained without dropout
RESUMED_FROM_MANIFEST = ("rank", "alpha", "block_size", "lr", "dropout")


def as_started(choice: MethodChoice, recorded: dict | None, given: dict) -> tuple[MethodChoice, list[str]]:
    """The choice a resumed run continues with, and the names of what differs from today's defaults.

    ``recorded`` is the run manifest's ``method`` entry, ``given`` the values the command line set (None:
    left to the default). What the command line leaves to the defaults is taken from the manifest: the
    run goes on with the hyper-parameters it was started with even when a method's defaults changed in
    between (an adapter's block size or alpha cannot change mid-run)."""
    if not recorded or recorded.get("method") != choice.method.name:
        return choice, []
    changed = []
    for key in RESUMED_FROM_MANIFEST:
        if given.get(key) is not None:
            continue
        was = recorded.get(key, 0.0 if key == "dropout" else None)
        if was is not None and was != getattr(choice, key):
            setattr(choice, key, was)
            changed.append(key)
    return choice, changed


def _linear_modules(model, target_modules) -> list[tuple[str, object]]:
    """The linear modules ``target_modules`` selects (what PEFT will wrap), excluding the output head."""
    from peftarena_cli.weights.targets import linear_modules

    return linear_modules(model, target_modules)


def check_against_model(choice: MethodChoice, model) -> None:
    """Fail early, with a clear message, on overrides the model's shapes cannot take: the targets must
    match a linear module, then the method's own ``check`` hook sees the targeted modules."""
    if choice.method.is_full:
        return
    mods = _linear_modules(model, choice.target_modules)
    if not mods:
        raise IncompatibleInputs(f"--target-modules {choice.target_modules!r} matches no linear module of the model",
                                 hint="use all-linear or suffixes such as q_proj,v_proj")
    if choice.method.check:
        resolve(choice.method.check)(choice, mods)


def peft_config(choice: MethodChoice, total_steps: int, model=None):
    """The PEFT config object for ``choice`` (None for full fine-tuning), built by the function the
    registry names (``Method.peft_config``: ``(choice, total_steps, model, common) -> PeftConfig``).

    ``model`` lets a builder resolve ``all-linear`` to the model's module names (IA3 does)."""
    if not choice.method.peft_config:
        return None
    from peft import TaskType

    common = {"task_type": TaskType.CAUSAL_LM, "target_modules": choice.target_modules}
    return resolve(choice.method.peft_config)(choice, total_steps, model, common)


def post_wrap(choice: MethodChoice, peft_model) -> None:
    """Run the method's ``post_wrap`` hook (MiLoRA's initialisation) on the freshly wrapped model."""
    if choice.method.post_wrap:
        resolve(choice.method.post_wrap)(peft_model)


def method_table() -> list[dict]:
    """One row per method (for docs and `--help`)."""
    return [{"method": m.name, "lr": m.lr, "defaults": m.defaults, "overrides": list(m.takes), "summary": m.summary}
            for m in METHODS.values()]
