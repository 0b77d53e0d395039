"""The method registry: everything the package knows about each fine-tuning method, in one entry.

Every layer reads it: ``weights/`` (which module forms ΔW / W1, which state-dict key components end
a module name), ``interpolation/`` (the native interpolation path, the tensors it scales by α, whether it
is linear in α), ``training/`` (PEFT type, defaults, overrides, learning rates, the PEFT config builder,
shape checks, work after PEFT wraps the model and after each optimizer step), ``report/`` (the frozen
shared tensors a trainable-parameter count leaves out), ``evaluation/`` (which generation backends serve
the method) and ``scripts/arena.mk`` (the arena's learning rates, via ``python -m peftarena_cli.methods
lr NAME``). The entry's ``name`` is the one canonical method name written in every table's ``method``
column; no other module branches on a method name (``tests/test_method_registry_homes.py``).

This module imports nothing heavy (no torch, no peft): ``--help`` and ``make`` read it. Code is named by
lazy references (``"module.path:function"``) resolved by :func:`resolve` only when it is needed; a
built-in method's code lives in its own file under ``weights/``. How to add a method: docs/methods.md,
"Adding a method".
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field

from peftarena_cli.errors import UnsupportedMethod

# Kinds of native interpolation path (docs/interpolate.md):
#   "scale"    one update factor × α (the update, and so the merged weight, is linear in α)
#   "dora"     the direction's factor × α and the magnitude m(α) = m0 + α (m1 − m0)
#   "rotation" the skew-symmetric generator × s(α) (α or √α), re-formed into a rotation
NATIVE_KINDS = ("scale", "dora", "rotation")

# Generation backends (``peftarena evaluate --backend``); every method is served by the HF engine.
BACKENDS = ("hf", "vllm")

# The method ``peftarena finetune`` trains when none is named.
DEFAULT_METHOD = "lora"


def _lora_init(config: dict) -> str:
    v = config.get("init_lora_weights", True)
    return v.lower() if isinstance(v, str) else ""


@dataclass(frozen=True)
class Method:
    """One fine-tuning method."""

    name: str                       # the canonical name, used in every table's `method` column
    summary: str
    lr: float                       # `peftarena finetune`'s default learning rate
    arena_lr: float                 # the learning rate of `make demo` / `make arena` (few steps, so higher)
    takes: tuple[str, ...] = ()     # training overrides accepted: rank, alpha, block_size, target_modules
    defaults: dict = field(default_factory=dict)
    mutates_base: bool = False      # PiSSA/MiLoRA: the adapter is saved converted to a LoRA on the original base
    peft_type: str | None = None    # PEFT's peft_type (None: full fine-tuning, no adapter)
    # how an adapter's config says it is this method rather than the PEFT type's plain method
    # (several methods share a PEFT type: LoRA, PiSSA, MiLoRA, DoRA are all LORA); None = the plain one
    detect: Callable[[dict], bool] | None = None
    markers: tuple[str, ...] = ()   # state-dict key components that end the module name (lora_A, oft_R, ...)
    former: str = ""                # "module:function" forming one module's ΔW / W1 (docs/methods.md)
    peft_config: str = ""           # "module:function" building the PEFT config for training ("" = full)
    check: str = ""                 # "module:function" (choice, modules) -> None: shape checks before training
    post_wrap: str = ""             # "module:function" (peft_model) -> None: run once after PEFT wraps the model
    on_optimizer_step: str = ""     # "module:function" (peft_model, step) -> None: run after every optimizer step
    # "module:function" (choice, model, optimizer_cls, optimizer_kwargs, weight_decay) -> Optimizer: the optimizer
    # the trainer uses instead of its own (LoRA+'s per-factor learning rates); "" = the trainer's AdamW
    optimizer: str = ""
    # "module:function" (peft_model, batch) -> int: run once before training on the first training batch (a
    # collated SFT batch with labels; KeepLoRA's gradient-based initialisation); such a method trains by SFT only
    init_from_batch: str = ""
    frozen: tuple[str, ...] = ()    # saved shared tensors that are not trained (left out of trainable counts)
    backends: tuple[str, ...] = ("hf",)  # the generation backends (BACKENDS) that can serve the fine-tune
    native: str | None = None       # native path kind (NATIVE_KINDS), None: only the dense path W0 + αΔW
    scaled: tuple[str, ...] = ()    # saved-key suffixes the native path multiplies by α (or s(α))
    linear: bool = False            # the native path's merged weight is W0 + α ΔW(1)
    multiplicative: bool = False    # W1 = W0 M for a rotation M: spectrum's singular-vector alignment by default
    # the PEFT-Arena study trains this method (its train/train_sft.sh --adapter list): `make arena PRESET=study`
    study: bool = False
    # the study's shape setting (peftarena_cli/presets.SHAPE) that gives an option of this method where it is
    # not the family's own (VeRA's rank is the study's vera_rank)
    study_shape: dict = field(default_factory=dict)

    @property
    def is_full(self) -> bool:
        """Full fine-tuning: no adapter, every weight trained, checkpoints are full models."""
        return self.peft_type is None

    @property
    def rotates(self) -> bool:
        """The native path scales a rotation's generator (``native == "rotation"``: OFT)."""
        return self.native == "rotation"

    @property
    def moves_magnitude(self) -> bool:
        """The native path also interpolates a magnitude vector, m(α) = m0 + α (m1 − m0), which needs
        the base weight's row norms m0 (``native == "dora"``)."""
        return self.native == "dora"

    @property
    def label(self) -> str:
        """The method's display name, as its summary spells it (``DoRA``, ``OFT``); the name otherwise."""
        head, sep, _ = self.summary.partition(":")
        return head if sep else self.name

    def serves(self, backend: str) -> bool:
        """Whether the generation ``backend`` (``hf``, ``vllm``) can serve this method's fine-tunes."""
        return backend in self.backends


_L = "peftarena_cli.weights.lora:"  # the LoRA family's own file: formers, PEFT configs, checks, hooks
_LORA_FAMILY = dict(peft_type="LORA", markers=("lora_A", "lora_B", "lora_magnitude_vector"),
                    former=_L + "lora_parts", check=_L + "check_rank",
                    scaled=(".lora_B.weight", ".lora_embedding_B"), takes=("rank", "alpha", "target_modules"))

METHODS: dict[str, Method] = {m.name: m for m in [
    Method("full", "full fine-tuning of every weight (no adapter; checkpoints are full models)", 5e-5, 5e-5,
           former="peftarena_cli.weights.full:full_parts", backends=BACKENDS, study=True),
    Method("lora", "LoRA: W0 + (alpha/r) B A, B initialised to zero", 2e-4, 1e-3,
           defaults={"rank": 8, "alpha": 16, "dropout": 0.05}, native="scale", linear=True, peft_config=_L + "lora_config",
           backends=BACKENDS, **_LORA_FAMILY, study=True),
    Method("pissa", "PiSSA: LoRA initialised from the r largest singular triplets of W0 (residual base)", 2e-4, 5e-4,
           defaults={"rank": 8, "alpha": 16, "dropout": 0.05}, mutates_base=True, native="scale", linear=True,
           detect=lambda c: not c.get("use_dora") and _lora_init(c).startswith("pissa"), peft_config=_L + "pissa_config",
           backends=BACKENDS, **_LORA_FAMILY, study=True),
    Method("milora", "MiLoRA: LoRA initialised from the r smallest singular triplets of W0 (residual base)", 2e-4, 1e-3,
           defaults={"rank": 8, "alpha": 16, "dropout": 0.05}, mutates_base=True, native="scale", linear=True,
           detect=lambda c: not c.get("use_dora") and _lora_init(c).startswith("milora"), peft_config=_L + "lora_config",
           post_wrap=_L + "milora_init", backends=BACKENDS, **_LORA_FAMILY, study=True),
    Method("dora", "DoRA: weight-decomposed LoRA (magnitude vector + LoRA direction update)", 2e-4, 1e-3,
           defaults={"rank": 8, "alpha": 16, "dropout": 0.05}, native="dora", detect=lambda c: bool(c.get("use_dora")),
           peft_config=_L + "dora_config", **_LORA_FAMILY, study=True),
    Method("rslora", "rsLoRA: LoRA scaled by alpha/sqrt(r) instead of alpha/r (rank-stabilised)", 2e-4, 5e-4,
           defaults={"rank": 8, "alpha": 16, "dropout": 0.05, "use_rslora": True}, native="scale", linear=True,
           detect=lambda c: bool(c.get("use_rslora")) and not c.get("use_dora")
           and not _lora_init(c).startswith(("pissa", "milora")),
           peft_config=_L + "rslora_config", backends=BACKENDS, **_LORA_FAMILY, study=True),
    Method("loraplus", "LoRA+: LoRA with B's learning rate = ratio x A's (a plain LoRA adapter)", 2e-4, 5e-4,
           defaults={"rank": 8, "alpha": 16, "dropout": 0.05, "loraplus_lr_ratio": 16}, native="scale", linear=True,
           detect=lambda c: False, peft_config=_L + "lora_config", optimizer=_L + "loraplus_optimizer",
           backends=BACKENDS, **_LORA_FAMILY, study=True),
    Method("adalora", "AdaLoRA: SVD-form LoRA with budgeted rank reallocation (init rank 1.5 r -> target r)", 2e-4, 1e-3,
           ("rank", "alpha", "target_modules"), {"rank": 8, "alpha": 16, "dropout": 0.05}, peft_type="ADALORA",
           markers=("lora_A", "lora_B", "lora_E"), former=_L + "adalora_parts", peft_config=_L + "adalora_config",
           check=_L + "check_rank", on_optimizer_step=_L + "adalora_allocate", study=True),
    Method("vera", "VeRA: frozen shared random projections, trained scaling vectors d and b", 2e-4, 1e-2,
           ("rank", "target_modules"), {"rank": 256, "dropout": 0.05}, peft_type="VERA", markers=("vera_lambda_b", "vera_lambda_d"),
           former="peftarena_cli.weights.vera:vera_parts", native="scale", scaled=(".vera_lambda_b",), linear=True,
           peft_config="peftarena_cli.weights.vera:vera_config", frozen=("vera_A", "vera_B"), study=True,
           study_shape={"rank": "vera_rank"}),
    Method("ia3", "IA3: learned rescaling of activations (outputs; inputs of down_proj)", 2e-4, 5e-3,
           ("target_modules",), {}, peft_type="IA3", markers=("ia3_l",), former="peftarena_cli.weights.ia3:ia3_parts",
           peft_config="peftarena_cli.weights.ia3:ia3_config", study=True),
    Method("oft", "OFT: block-diagonal orthogonal rotation of the input space (Cayley parametrisation)", 2e-4, 5e-4,
           ("block_size", "target_modules"), {"block_size": 16}, peft_type="OFT", markers=("oft_R", "oft_s"),
           former="peftarena_cli.weights.oft:oft_parts", native="rotation", scaled=(".oft_R.weight",),
           multiplicative=True, peft_config="peftarena_cli.weights.oft:oft_config",
           check="peftarena_cli.weights.oft:check_block_size", study=True),
    Method("boft", "BOFT: butterfly-factorised orthogonal rotation (2 butterfly factors)", 2e-4, 2e-3,
           ("block_size", "target_modules"), {"block_size": 32, "butterfly_factor": 2}, peft_type="BOFT",
           markers=("boft_R", "boft_s"), former="peftarena_cli.weights.boft:boft_parts", multiplicative=True,
           peft_config="peftarena_cli.weights.boft:boft_config", check="peftarena_cli.weights.boft:check_butterfly"),
    Method("miss", "MiSS: a shared r x out shard matrix expanded over the weight (PEFT's MiSS, ex-Bone)", 2e-4, 5e-4,
           ("rank", "target_modules"), {"rank": 8, "dropout": 0.05}, peft_type="MISS", markers=("miss_block",),
           former="peftarena_cli.weights.miss:miss_parts", native="scale", scaled=(".miss_block",), linear=True,
           peft_config="peftarena_cli.weights.miss:miss_config", check="peftarena_cli.weights.miss:check_rank", study=True),
    Method("keeplora", "KeepLoRA: LoRA started from the first batch's gradient outside W0's principal subspace, A frozen",
           2e-4, 1e-3, defaults={"rank": 8, "alpha": 16, "dropout": 0.05}, native="scale", linear=True,
           detect=lambda c: False, peft_config=_L + "lora_config",
           post_wrap="peftarena_cli.weights.keeplora:freeze_down_projection",
           init_from_batch="peftarena_cli.weights.keeplora:keeplora_init", backends=BACKENDS, **_LORA_FAMILY, study=True),
    Method("coft", "COFT: OFT with its generator held in a Frobenius ball of radius eps (PEFT's coft)", 2e-4, 5e-4,
           ("block_size", "target_modules"), {"block_size": 16, "eps": 6e-5}, peft_type="OFT",
           detect=lambda c: bool(c.get("coft")), markers=("oft_R", "oft_s"),
           former="peftarena_cli.weights.oft:oft_parts", native="rotation", scaled=(".oft_R.weight",),
           multiplicative=True, peft_config="peftarena_cli.weights.oft:coft_config",
           check="peftarena_cli.weights.oft:check_block_size"),
]}


def get_method(name: str) -> Method:
    """The entry for ``name`` (case-insensitive); an unknown name is an UnsupportedMethod error."""
    m = METHODS.get(str(name).lower())
    if m is None:
        raise UnsupportedMethod(f"unknown method {name!r}",
                                hint=f"choose one of: {', '.join(METHODS)} (docs/finetune.md)")
    return m


def peft_types() -> tuple[str, ...]:
    """The PEFT types the package can read, in registry order."""
    return tuple(dict.fromkeys(m.peft_type for m in METHODS.values() if m.peft_type))


def method_name(config: dict, metadata: dict | None = None) -> str | None:
    """The canonical method name of an adapter: the name peftarena recorded in its metadata when it is
    known one of the config's PEFT type, else what its PEFT config says (None for a PEFT type the
    registry does not know)."""
    ptype = str(config.get("peft_type", "")).upper()
    declared = METHODS.get(str((metadata or {}).get("method", "")).lower())
    if declared is not None and declared.peft_type == ptype:
        return declared.name
    plain = None
    for m in METHODS.values():
        if m.peft_type != ptype:
            continue
        if m.detect is None:
            plain = plain or m.name
        elif m.detect(config):
            return m.name
    return plain


def all_markers() -> tuple[str, ...]:
    """Every key component that ends a module name in a PEFT state dict, over all methods."""
    return tuple(dict.fromkeys(k for m in METHODS.values() for k in m.markers))


_marker_re: tuple[tuple[str, ...], re.Pattern] | None = None  # (the markers it was built from, the regex)


def marker_match(key: str):
    """The regex match of the first method marker in ``key`` (None when it has none)."""
    global _marker_re
    markers = all_markers()
    if _marker_re is None or _marker_re[0] != markers:  # built once, again only after register()
        _marker_re = (markers, re.compile(r"\.(" + "|".join(map(re.escape, markers)) + r")(\.|$)"))
    return _marker_re[1].search(key)


def register(method: Method, replace: bool = False) -> Method:
    """Add ``method`` to the registry at run time (a plugin, or a test's toy method); the built-in
    methods are the entries of ``METHODS`` above. A name already taken is refused unless ``replace``."""
    if method.name != method.name.lower():
        raise ValueError(f"method names are lower case: {method.name!r}")
    if method.name in METHODS and not replace:
        raise ValueError(f"method {method.name!r} is already registered")
    if method.native is not None and method.native not in NATIVE_KINDS:
        raise ValueError(f"unknown native path kind {method.native!r}; one of {NATIVE_KINDS}")
    if not set(method.backends) <= set(BACKENDS):
        raise ValueError(f"unknown backend in {method.backends!r}; one of {BACKENDS}")
    METHODS[method.name] = method
    return method


def resolve(ref: str):
    """The function a lazy reference ``"module.path:function"`` names (imported now)."""
    import importlib

    mod, _, fn = ref.partition(":")
    return getattr(importlib.import_module(mod), fn)


def load_former(method: Method):
    """Import and return the method's ΔW former ``(module, w0, ft, device, svd) -> dict``."""
    if not method.former:
        raise UnsupportedMethod(f"method {method.name!r} has no ΔW former")
    return resolve(method.former)


def frozen_keys() -> tuple[str, ...]:
    """Every saved shared tensor that is not trained (VeRA's projections), over all methods."""
    return tuple(dict.fromkeys(k for m in METHODS.values() for k in m.frozen))


def full_method() -> Method:
    """The entry of full fine-tuning (the one method without a PEFT type)."""
    return next(m for m in METHODS.values() if m.is_full)


def native_methods() -> tuple[str, ...]:
    """The methods with a native interpolation path."""
    return tuple(m.name for m in METHODS.values() if m.native)


# A sweep's default learning-rate grid (`make sweep`, scripts/sweep.mk): these multiples of a method's
# arena_lr, about half a decade either side of it in equal log steps.
SWEEP_LR_MULTS = (0.33, 1.0, 3.0)


def sweep_lrs(name: str, mults=None) -> list[float]:
    """A method's sweep learning rates: ``mults`` (default :data:`SWEEP_LR_MULTS`) times its arena_lr,
    rounded to 6 significant digits (the digits ``%g`` prints, so a run directory's ``lr`` name reads
    back as the rate it trained with)."""
    m = get_method(name)
    return [float(f"{m.arena_lr * float(x):.6g}") for x in (SWEEP_LR_MULTS if mults is None else mults)]


def main(argv: list[str] | None = None) -> int:
    """``python -m peftarena_cli.methods lr NAME`` prints the arena learning rate (scripts/arena.mk);
    ``names`` prints the method names; ``table`` one tab-separated row per method; ``grid NAME [MULT ...]``
    the sweep's learning rates (:func:`sweep_lrs`, scripts/sweep.mk)."""
    import sys

    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) == 2 and args[0] == "lr":
        m = METHODS.get(args[1].lower())
        if m is None:
            print(f"error: unknown method {args[1]!r}; choose one of: {', '.join(METHODS)}", file=sys.stderr)
            return 1
        print(f"{m.arena_lr:g}")
        return 0
    if args == ["names"]:
        print(" ".join(METHODS))
        return 0
    if args == ["table"]:
        for m in METHODS.values():
            print("\t".join([m.name, m.peft_type or "-", m.native or "-", f"{m.lr:g}", f"{m.arena_lr:g}"]))
        return 0
    if len(args) >= 2 and args[0] == "grid":  # grid NAME [MULT ...]: the sweep's learning rates
        try:
            lrs = sweep_lrs(args[1], args[2:] or None)
        except (UnsupportedMethod, ValueError) as e:
            print(f"error: {e}; usage: python -m peftarena_cli.methods grid NAME [MULT ...]", file=sys.stderr)
            return 1
        print(" ".join(f"{x:g}" for x in lrs))
        return 0
    print("usage: python -m peftarena_cli.methods lr NAME | grid NAME [MULT ...] | names | table", file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
