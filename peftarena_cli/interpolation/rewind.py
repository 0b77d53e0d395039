"""Rewinding: write the point α of a fine-tune's path as a new artifact.

:func:`rewind` is the entry point (what ``peftarena rewind`` calls, with a :class:`RewindConfig`).

* An adapter becomes a new adapter of the same PEFT type and config (native path, see
  :mod:`peftarena_cli.interpolation.native`), loadable with ``PeftModel.from_pretrained``; OFT adapters
  can additionally be rewound layer-wise (SafeScale / MinScale, :mod:`oft_rotation`).
* A full fine-tune becomes a full checkpoint W0 + α(W1 − W0) for every tensor (dense path).
"""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from peftarena_cli.artifacts.adapters import Adapter, check_adapter_fits, save_adapter
from peftarena_cli.artifacts.atomic import atomic_dir, is_stream, special_kind
from peftarena_cli.artifacts.guard import check_outputs
from peftarena_cli.artifacts.identity import path_identity
from peftarena_cli.artifacts.keys import base_key
from peftarena_cli.artifacts.tables import read_table
from peftarena_cli.artifacts.safetensors_io import WeightSource, resolve_model
from peftarena_cli.errors import IncompatibleInputs, OutputError, UnsupportedMethod, UsageError
from peftarena_cli.methods import get_method
from peftarena_cli.interpolation.alphas import check_alphas
from peftarena_cli.interpolation.safe_pick import (DEFAULT_SELECTION, check_selection, read_samples_beside, safe_pick,
                                                  samples_beside)
from peftarena_cli.interpolation.native import (base_row_norms_from_weights, check_relative_to_base, magnitude_modules,
                                        native_method, scale_adapter_tensors)
from peftarena_cli.interpolation.oft_rotation import layerwise_scales, rotation_strengths
from peftarena_cli.weights.deltas import iter_module_deltas
from peftarena_cli.weights.finetuned import FULL, open_finetuned
from peftarena_cli.weights.full import check_full_finetune


def dora_row_norms_from_base(adapter: Adapter, base_source) -> dict:
    """m0 = ‖W0‖ per output row for each DoRA module, read lazily from the base's WeightSource."""
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
    config = dict(adapter.config)
    check_relative_to_base(config)
    entry = native_method(config, adapter.metadata)
    method = entry.name
    info: dict = {"alpha": float(alpha), "method": method, "path": "native"}
    layer_scales = None
    if layerwise:
        if not entry.rotates:
            raise UnsupportedMethod(f"--layerwise applies to OFT adapters, this one is {method}",
                                    hint="drop --layerwise, or pass an OFT adapter")
        layer_scales, rho, target = layerwise_scales(adapter.tensors, config, layerwise)
        info.update(layerwise=layerwise, rho_target=target,
                    rho_before={str(k): v for k, v in rho.items()},
                    layer_scales={str(k): v for k, v in layer_scales.items()})
    if entry.rotates:
        info["generator_scale"] = scale_mode
    norms = None
    if entry.moves_magnitude and alpha != 1.0:
        if base_source is None:
            raise UsageError("rewinding a DoRA adapter needs the base model (its magnitude m0 = ‖W0‖ per row)",
                             hint="pass --base BASE")
        norms = dora_row_norms_from_base(adapter, base_source)
    tensors = scale_adapter_tensors(config, adapter.tensors, alpha, scale_mode=scale_mode,
                                    base_row_norms=norms, layer_scales=layer_scales)
    if layerwise:
        info["rho_after"] = {str(k): v for k, v in rotation_strengths(tensors, config).items()}
    meta = {k: v for k, v in (adapter.metadata or {}).items() if k not in ("peft_config", "format")}
    return Adapter(config=config, tensors=tensors, path=None, metadata=meta), info


def rewind_full(base_source, finetuned_source, alpha: float, out_dir, copy_from: Path | None = None,
                extra_metadata: dict | None = None, overwrite: bool = False, callback=None) -> Path:
    """Write a full checkpoint W0 + α(W1 − W0) (every tensor of the fine-tune) atomically to ``out_dir``.

    Tensors the base lacks are copied from the fine-tune unchanged; a fine-tune lacking one of the
    base's tensors (a tied head excepted) is refused before anything is written. Non-weight files (config.json,
    tokenizer files) are copied from ``copy_from`` (the fine-tuned model's directory).
    """
    import torch
    from safetensors.torch import save_file

    check_full_finetune(base_source.keys(), finetuned_source, "the fine-tune", copy_from)
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


@dataclass
class RewindConfig:
    """What ``peftarena rewind`` asks for (docs/rewind.md); exactly one of ``alpha`` and ``curve``."""

    finetuned: str
    output: str
    alpha: float | None = None
    curve: str | None = None
    pick: str = "keep-target:0.9"
    selection: str = DEFAULT_SELECTION  # split, crossfit or none (interpolation/safe_pick.py)
    layerwise: str | None = None
    generator_scale: str | None = None  # None: the curve's, else linear
    base: str | None = None
    allow_extrapolate: bool = False
    overwrite: bool = False


@dataclass
class RewindResult:
    output: Path
    alpha: float
    method: str
    kind: str                      # the fine-tune's kind (weights.finetuned: ADAPTER or FULL)
    record: dict = field(default_factory=dict)  # what the output's metadata records (key peftarena_rewind)

    @property
    def is_full(self) -> bool:
        """A full checkpoint was written (the fine-tune was a full model), not an adapter."""
        return self.kind == FULL


def _no_log(msg: str) -> None:
    pass


def rewind(cfg: RewindConfig, callback=None, log=_no_log, warn=_no_log) -> RewindResult:
    """Write the point α of a fine-tune's path (α given, or picked on a curve) as a new artifact of the
    same kind, atomically. ``callback(done, total, what)`` reports progress of a full checkpoint;
    ``log`` and ``warn`` receive one-line messages."""
    alpha = cfg.alpha
    if alpha is None and cfg.curve is None and cfg.layerwise:
        alpha = 1.0  # layer-wise rewinding alone: equalise ρ_ℓ at the fine-tune's own scale
    if (alpha is None) == (cfg.curve is None):
        raise UsageError("give exactly one of --alpha A or --curve FILE",
                         hint="e.g. --alpha 0.5, or --curve curve.parquet --pick weighted:0.5")
    selection = check_selection(cfg.selection)
    output = Path(cfg.output)
    kind = special_kind(output) or ("open file" if is_stream(output) else None)
    if kind is not None:  # --overwrite or not: a device node or pipe is never replaced by an artifact
        raise OutputError(f"-o {str(output)!r} is a {kind}; a rewound fine-tune is written as a new directory or file",
                          hint="give a path that does not exist yet")
    if output.exists() and not cfg.overwrite:
        raise OutputError(f"{str(output)!r} already exists", hint="choose another path or pass --overwrite")
    if not (output.parent if str(output.parent) else Path(".")).is_dir():
        raise OutputError(f"output directory {str(output.parent)!r} does not exist (for {str(output)!r})")
    beside = list(samples_beside(cfg.curve).values()) if cfg.curve is not None else []
    check_outputs({"-o": output}, [cfg.finetuned, cfg.base, cfg.curve, *beside])
    record: dict = {}
    curve_prov: dict = {}
    generator_scale = cfg.generator_scale
    chosen = None
    if cfg.curve is not None:
        df, curve_prov = read_table(cfg.curve)
        samples, why = read_samples_beside(cfg.curve, curve_prov) if selection != "none" else ({}, "")
        chosen = safe_pick(df, cfg.pick, samples, mode=selection, missing=why)
        alpha = chosen.alpha
        record.update(chosen.record())
        record["curve"] = f"{cfg.curve}@{path_identity(cfg.curve)}"
        curve_gs = str(df["generator_scale"].iloc[0]) if "generator_scale" in df.columns and len(df) else ""
        if generator_scale is None and curve_gs in ("linear", "sqrt"):
            generator_scale = curve_gs
        record["curve_path"] = str(df["path"].iloc[0]) if "path" in df.columns and len(df) else ""
    if not math.isfinite(alpha):
        raise UsageError(f"alpha {alpha} is not a finite number")
    check_alphas([alpha], cfg.allow_extrapolate)
    generator_scale = generator_scale or "linear"

    ft = open_finetuned(cfg.finetuned)
    bref = resolve_model(cfg.base) if cfg.base is not None else None
    if cfg.curve is not None:
        check_curve_source(curve_prov, cfg.curve, cfg.finetuned, ft.identity(), cfg.base,
                           bref.identity() if bref is not None else None)
        log(f"picked α = {alpha:g} ({record['criterion']}): {record['reason']}")
        log(f"selection: {chosen.selection}; {pick_scores_text(chosen)}")
        if chosen.reported_on == "in-sample":
            warn(f"the scores of α = {alpha:g} are in-sample: {chosen.note}; they overstate what the picked point "
                 "scores on other items")
        elif chosen.note:
            warn(chosen.note)
    if ft.is_full:
        if cfg.layerwise:
            raise UsageError("--layerwise applies to OFT adapters, not full fine-tunes")
        if cfg.base is None:
            raise UsageError("rewinding a full fine-tune needs the base model", hint="pass --base BASE")
        record.update(alpha=alpha, method=ft.method, path="dense", base=f"{cfg.base}@{bref.identity()}",
                      source=f"{cfg.finetuned}@{ft.identity()}")
        rewind_full(WeightSource.from_ref(bref), ft.source, alpha, output, copy_from=ft.ref.directory,
                    extra_metadata={"peftarena_rewind": record}, overwrite=cfg.overwrite, callback=callback)
        return RewindResult(output=output, alpha=alpha, method=ft.method, kind=ft.kind, record=record)

    method = ft.method
    entry = get_method(method)
    if not entry.native:
        raise UnsupportedMethod(f"{method} adapters cannot be rewound in their own format (no native path)",
                                hint="use `peftarena interpolate --path dense --save-checkpoints DIR` for a full-model checkpoint")
    if record.get("curve_path") == "dense" and (entry.rotates or entry.moves_magnitude):
        warn(f"the curve was measured on the dense path; a rewound {method} adapter follows the native path, "
             "which differs between the end points")
    base_source, spec = None, cfg.base
    if entry.moves_magnitude and alpha != 1.0:
        spec = cfg.base or ft.adapter.base_model_name
        if not spec:
            raise UsageError("rewinding a DoRA adapter needs the base model (m0 = ‖W0‖ per row)", hint="pass --base BASE")
        base_source = WeightSource.from_ref(bref if bref is not None else resolve_model(spec))
    elif bref is not None:
        base_source = WeightSource.from_ref(bref)
    if base_source is not None:
        check_fits_base(ft, base_source, spec)
    new, rinfo = rewind_adapter(ft.adapter, alpha, scale_mode=generator_scale, layerwise=cfg.layerwise,
                                base_source=base_source)
    record.update(rinfo)
    record["source"] = f"{cfg.finetuned}@{ft.identity()}"
    save_adapter(new, output, extra_metadata={"peftarena_rewind": record}, overwrite=cfg.overwrite)
    if cfg.layerwise:
        scales = rinfo["layer_scales"]
        log(f"{cfg.layerwise}: target ρ* = {rinfo['rho_target']:.4g}; generator scale per layer: "
            + ", ".join(f"{k}:{v:.3f}" for k, v in scales.items()))
    return RewindResult(output=output, alpha=alpha, method=method, kind=ft.kind, record=record)


def pick_scores_text(chosen) -> str:
    """"held-out target 41.2 [33.0, 49.4], general 55.0 [47.1, 62.9] (95 % interval)" or the in-sample
    scores, labelled."""
    parts = []
    for kind in ("target", "general"):
        v = getattr(chosen, kind)
        lo, hi = chosen.intervals.get(kind, (math.nan, math.nan))
        parts.append(f"{kind} {v:.4g}" + (f" [{lo:.4g}, {hi:.4g}]" if math.isfinite(lo) and math.isfinite(hi) else ""))
    return f"{chosen.reported_on} " + ", ".join(parts) + (" (95 % interval)" if chosen.reported_on != "in-sample" else "")


def check_fits_base(ft, base_source, base_spec) -> None:
    """An adapter rewound with ``--base`` must fit that base: no module the base lacks, every tensor of
    the shape the base's weight needs (the method's own ΔW former checks them), before anything is
    written."""
    check_adapter_fits(ft.adapter, base_source, base_spec, ft.spec)
    for _ in iter_module_deltas(base_source, ft):
        pass


def check_curve_source(prov: dict, curve, finetuned: str, identity: str, base: str | None = None,
                       base_identity: str | None = None) -> None:
    """The curve's provenance must name the fine-tune it was measured on, and it must be this one; with
    ``--base``, a base the provenance names must be that one too. A curve without provenance (a table
    re-saved by pandas drops Parquet's key-value metadata) is refused: nothing would say what it
    measured."""
    inputs = prov.get("inputs") if isinstance(prov, dict) else None
    src = inputs.get("finetuned") if isinstance(inputs, dict) else None
    if not src or "@" not in str(src):
        raise IncompatibleInputs(
            f"the curve {str(curve)!r} carries no provenance naming the fine-tune it was measured on "
            "(re-saving a table with pandas drops it)",
            hint="pass the curve `peftarena interpolate` wrote, or read α off it and pass --alpha A")
    spec, _, ident = str(src).rpartition("@")
    if ident != identity:
        raise IncompatibleInputs(f"the curve {str(curve)!r} was measured on another fine-tune ({spec!r}) than {finetuned!r}",
                                 hint="pass the adapter the curve was measured on, or run `peftarena interpolate` on this one")
    bsrc = inputs.get("base")
    if base_identity is not None and bsrc and "@" in str(bsrc):
        bspec, _, bident = str(bsrc).rpartition("@")
        if bident != base_identity:
            raise IncompatibleInputs(f"the curve {str(curve)!r} was measured on another base ({bspec!r}) than {base!r}",
                                     hint="pass the base the curve was measured on (--base), or run `peftarena interpolate` on this one")
