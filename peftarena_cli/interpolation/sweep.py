"""An interpolation sweep: open one path model, then for each α set it in place and evaluate.

:func:`open_path_model` loads the base model once and returns a path model (native or dense, see
:mod:`peftarena_cli.interpolation.inplace`); :func:`run_sweep` walks the α grid and returns the curve
(one row per α) plus the per-sample rows of every evaluation (with an ``alpha`` column).

Curve columns (docs/interpolate.md): ``alpha``, ``path``, ``method``, ``generator_scale``,
``target``, ``general``, ``set_seconds``, ``eval_seconds``, ``orth_err``, then one column
``<task>.<metric>`` per summary row of each evaluation, and ``csd.*`` columns when CSD is given.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from peftarena_cli.artifacts.adapters import Adapter, check_adapter_fits, save_adapter
from peftarena_cli.artifacts.atomic import atomic_dir
from peftarena_cli.artifacts.loading import attach_adapter, load_model, pick_device
from peftarena_cli.artifacts.safetensors_io import WeightSource, resolve_model
from peftarena_cli.errors import IncompatibleInputs, UnsupportedMethod, UsageError
from peftarena_cli.methods import get_method, native_methods
from peftarena_cli.interpolation.inplace import DensePathModel, NativePathModel, dense_deltas_from_full
from peftarena_cli.interpolation.native import check_relative_to_base
from peftarena_cli.interpolation.oft_rotation import layerwise_scales
from peftarena_cli.weights import iter_module_deltas, open_finetuned
from peftarena_cli.weights.full import check_full_finetune

Evaluator = Callable[[object, object], tuple]  # (model, tokenizer) -> (per_sample_df, summary_df)


@dataclass
class PathSetup:
    path_model: object
    tokenizer: object
    ref: object
    method: str
    path: str
    scale_mode: str
    notes: list[str] = field(default_factory=list)
    finetuned: object = None


def choose_path(method: str, requested: str | None, is_full: bool) -> tuple[str, str | None]:
    """(path, warning or None). ``requested`` None means "native when the method has one"."""
    if requested not in (None, "native", "dense"):
        raise UsageError(f"unknown --path {requested!r}", hint="use native or dense")
    has_native = (not is_full) and method in native_methods()
    if requested == "native" and not has_native:
        raise UnsupportedMethod(f"{method} has no native path",
                                hint="use --path dense (W0 + αΔW works for every method)")
    if requested is None:
        if has_native:
            return "native", None
        if is_full:  # for a full fine-tune W0 + αΔW is the path: nothing to warn about
            return "dense", None
        return "dense", f"{method} has no native path: using the dense path W0 + αΔW"
    return requested, None


def dense_deltas_from_adapter(model, ref, finetuned, device: str, callback=None):
    """(w0, delta) per adapted linear weight of ``model``, ΔW formed by the method's former
    (:func:`peftarena_cli.weights.iter_module_deltas`)."""
    params = dict(model.named_parameters())
    w0, delta = {}, {}
    mods = list(iter_module_deltas(WeightSource.from_ref(ref), finetuned, device=device))
    for i, md in enumerate(mods):
        name = md.name + ".weight"
        if name not in params:
            raise IncompatibleInputs(f"the model has no parameter {name!r}")
        p = params[name]
        w0[name] = p.detach().clone()
        delta[name] = md.dense().to(device=p.device, dtype=p.dtype)
        if callback:
            callback(i + 1, len(mods), md.name)
    return w0, delta


def open_path_model(base: str, finetuned_spec: str, path: str | None = None, scale_mode: str = "linear",
                    dtype: str = "float32", device: str = "auto", layerwise: str | None = None,
                    callback=None, merge: bool = False) -> PathSetup:
    """Load the base once and build the path model for ``finetuned_spec`` (adapter or full model)."""
    ft = open_finetuned(finetuned_spec)
    is_full = ft.is_full
    method = ft.method  # the canonical name (a converted PiSSA adapter is pissa, not lora)
    rotation = get_method(method).rotates
    if not is_full:
        check_relative_to_base(ft.config)
    if scale_mode != "linear" and not rotation:
        raise UsageError(f"--generator-scale {scale_mode} applies to OFT adapters only, not {method}")
    chosen, note = choose_path(method, path, is_full)
    notes = [note] if note else []
    if chosen == "dense" and rotation and scale_mode != "linear":
        notes.append("--generator-scale applies to the native OFT path only; ignored on the dense path")
    dev = pick_device(device)
    bref = resolve_model(base)
    # the fine-tune must fit the base before the model is loaded (headers only: no tensor is read)
    if is_full:
        check_full_finetune(WeightSource.from_ref(bref).keys(), ft.source, finetuned_spec, ft.ref.directory)
    else:
        check_adapter_fits(ft.adapter, WeightSource.from_ref(bref), base, finetuned_spec)
    model, tok, ref = load_model(bref, dtype=dtype, device=dev)
    layer_scales = None
    if layerwise:
        if not rotation or chosen != "native":
            raise UnsupportedMethod("--layerwise applies to the native path of OFT adapters")
        layer_scales, _, _ = layerwise_scales(ft.adapter.tensors, ft.config, layerwise)
    if chosen == "native":
        pm = attach_adapter(model, ft.adapter, base_spec=base)
        pm.eval()
        path_model = NativePathModel(pm, ft.config, scale_mode=scale_mode, layer_scales=layer_scales, merge=merge)
    elif is_full:
        w0, delta = dense_deltas_from_full(model, WeightSource.from_ref(ft.ref), callback=callback)
        path_model = DensePathModel(model, w0, delta)
    else:
        w0, delta = dense_deltas_from_adapter(model, ref, ft, dev, callback=callback)
        path_model = DensePathModel(model, w0, delta)
    path_model.model.eval()
    return PathSetup(path_model=path_model, tokenizer=tok, ref=ref, method=method, path=chosen,
                     scale_mode=scale_mode if (rotation and chosen == "native") else "", notes=notes,
                     finetuned=ft)


def _summary_columns(summary) -> dict:
    cols = {}
    for row in summary.itertuples(index=False):
        task = getattr(row, "task", "")
        metric = getattr(row, "metric", "value")
        cols[f"{task}.{metric}" if task else str(metric)] = float(row.value)
    return cols


def _headline(summary, kind: str) -> float:
    """The headline value of an eval summary: target_score, or the general aggregate (whichever of
    general_score / builtin_general_score / general_mean it has)."""
    # imported here: the evaluation API brings pandas and pyarrow (about 1 s and 60 MiB), which a
    # sweep that does not evaluate never needs
    from peftarena_cli.evaluation.api import GENERAL_AGGREGATES

    metrics = ("target_score",) if kind == "target" else GENERAL_AGGREGATES
    sel = summary[summary["metric"].isin(metrics)] if "metric" in summary.columns else summary.iloc[0:0]
    return float(sel["value"].mean()) if len(sel) else math.nan


def run_sweep(setup: PathSetup, alphas: list[float], evaluators: dict[str, Evaluator] | None = None,
              csd: Callable[[object, float], dict] | None = None, on_alpha: Callable[[float, object], None] | None = None,
              callback=None):
    """Set each α in place, evaluate, and collect the curve.

    ``evaluators`` maps ``"target"``/``"general"`` to ``(model, tokenizer) -> (per_sample, summary)``;
    the summary's ``target_score`` row and its general aggregate give the headline columns.
    ``csd(path_model, alpha) -> {column: value}`` adds CSD columns; ``on_alpha(alpha, path_model)``
    is called after each α is set (e.g. to save a checkpoint).
    Returns ``(curve_df, {kind: per_sample_df})``.
    """
    import pandas as pd

    evaluators = evaluators or {}
    pm = setup.path_model
    rows, samples = [], {k: [] for k in evaluators}
    for i, a in enumerate(alphas):
        t0 = time.perf_counter()
        pm.set_alpha(a)
        set_s = time.perf_counter() - t0
        oe = pm.orthogonality_error()
        row = {"alpha": float(a), "path": setup.path, "method": setup.method,
               "generator_scale": setup.scale_mode, "target": math.nan, "general": math.nan,
               "set_seconds": set_s, "eval_seconds": 0.0, "orth_err": math.nan if oe is None else oe}
        t1 = time.perf_counter()
        for kind, fn in evaluators.items():
            per_sample, summary = fn(pm.model, setup.tokenizer)
            row[kind] = _headline(summary, kind)
            row.update(_summary_columns(summary))
            if per_sample is not None and len(per_sample):
                samples[kind].append(per_sample.assign(alpha=float(a)))
        row["eval_seconds"] = time.perf_counter() - t1
        if csd is not None:
            row.update(csd(pm, a))
        if on_alpha is not None:
            on_alpha(a, pm)
        rows.append(row)
        if callback:
            callback(i + 1, len(alphas), f"α={a:g}")
    curve = pd.DataFrame(rows)
    return curve, {k: pd.concat(v, ignore_index=True) for k, v in samples.items() if v}


def save_checkpoint(setup: PathSetup, alpha: float, directory, overwrite: bool = False):
    """Write the current point of the path: a rewound adapter (native) or a full model (dense)."""
    from pathlib import Path

    d = Path(directory) / f"alpha-{alpha:.4f}"
    meta = {"peftarena_rewind": {"alpha": float(alpha), "path": setup.path, "method": setup.method,
                                 "generator_scale": setup.scale_mode, "source": setup.finetuned.spec}}
    pm = setup.path_model
    if setup.path == "native":
        ad = Adapter(config=dict(setup.finetuned.config), tensors=pm.current)
        return save_adapter(ad, d, extra_metadata={"method": setup.method, **meta}, overwrite=overwrite)  # the canonical name
    with atomic_dir(d, overwrite=overwrite) as tmp:
        # the path's parameters are views into flat buffers: save independent copies
        state = {k: v.detach().clone().contiguous() for k, v in pm.model.state_dict().items()}
        pm.model.save_pretrained(str(tmp), state_dict=state, safe_serialization=True)
        setup.tokenizer.save_pretrained(str(tmp))
    return d
