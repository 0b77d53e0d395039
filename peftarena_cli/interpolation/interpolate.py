"""The interpolation sweep as one call: :func:`interpolate` is what ``peftarena interpolate`` runs.

It loads the base once, builds the path model (:func:`peftarena_cli.interpolation.sweep.open_path_model`),
evaluates each α with the evaluation API, adds CSD columns from saved second moments, writes
``--save-checkpoints`` points, and returns the curve and the per-sample and per-module rows. The
caller writes the tables (docs/interpolate.md lists their columns).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

from peftarena_cli.activations.moments import check_stats_base, merge_stats_files, weights_fingerprint
from peftarena_cli.artifacts.atomic import atomic_write_text, clean_stale_tmp
from peftarena_cli.errors import OutputError, UsageError
from peftarena_cli.interpolation.alphas import parse_alphas
from peftarena_cli.interpolation.csd_path import path_csd
from peftarena_cli.interpolation.native import check_generator_scale
from peftarena_cli.interpolation.sweep import open_path_model, run_sweep, save_checkpoint
from peftarena_cli.tasks import benchmarks

EVAL_KINDS = ("target", "general")
SWEEP_MANIFEST = "sweep.json"


@dataclass
class InterpolateConfig:
    """What ``peftarena interpolate`` asks for (docs/interpolate.md)."""

    base: str
    finetuned: str
    alphas: str = "0:1:0.1"            # start:stop:step or a comma list
    path: str | None = None            # native, dense, or None: native when the method has one
    generator_scale: str = "linear"    # OFT native path: linear or sqrt
    layerwise: str | None = None       # OFT native path: safescale or minscale
    evals: Sequence[str] = ()          # target and/or general
    target_task: str = benchmarks.DEFAULT_TARGET
    general_suite: str = benchmarks.DEFAULT_GENERAL
    limit: int | dict | str | None = None  # N, or per general part (tasks.limits.parse_limit)
    max_new_tokens: int | None = None
    protocol: str | None = None
    chat_template: str = "auto"        # auto (by the protocol), on, off (docs/eval.md, "Chat template")
    stats: Sequence[str] = ()          # second-moment files of `peftarena csd --save-stats`
    save_checkpoints: str | None = None
    allow_extrapolate: bool = False
    backend: str = "hf"                # hf (the local path model generates) or openai (each α's point is served)
    base_url: str | None = None        # --backend openai: the server's address
    served_model: str | None = None    # --backend openai: the served name of each α's point, with {alpha} in it
    concurrency: int = 8
    request_timeout: float = 600.0
    retries: int = 3
    device: str = "auto"
    dtype: str = "float32"
    seed: int = 0


@dataclass
class InterpolateResult:
    curve: object                                  # DataFrame, one row per α
    samples: dict = field(default_factory=dict)    # kind -> per-sample DataFrame (with an alpha column)
    csd_rows: list = field(default_factory=list)   # per-module CSD rows (one per module × α), with --stats
    served: dict = field(default_factory=dict)     # --backend openai: host, name template, server version
    grid: list = field(default_factory=list)
    method: str = ""
    path: str = ""
    scale_mode: str = ""
    base_identity: str = ""
    finetuned_identity: str = ""
    device: str = ""
    load_seconds: float = 0.0
    sweep_seconds: float = 0.0


def check_interpolate(cfg: InterpolateConfig) -> list[float]:
    """The cheap checks, before any file is touched: the α grid (returned), the generator scale,
    the evaluation kinds and the limit. Usage errors."""
    grid = parse_alphas(cfg.alphas, cfg.allow_extrapolate)
    check_generator_scale(cfg.generator_scale, grid)
    bad = [k for k in cfg.evals if k not in EVAL_KINDS]
    if bad:
        raise UsageError(f"unknown --eval kind {bad[0]!r}", hint="use target, general or target,general")
    check_served_sweep(cfg, grid)
    from peftarena_cli.tasks.limits import parse_limit
    from peftarena_cli.tasks.prompting import check_chat_template_mode

    cfg.chat_template = check_chat_template_mode(cfg.chat_template)
    cfg.limit = parse_limit(cfg.limit)
    if isinstance(cfg.limit, int) and cfg.limit < 1:
        raise UsageError("--limit must be at least 1")
    if isinstance(cfg.limit, dict) and "target" in cfg.evals and "*" not in cfg.limit:
        raise UsageError("--limit per general part leaves the target task without a limit",
                         hint=f"add a bare N for it, e.g. --limit {benchmarks.limit_example(2, bare=True)}")
    return grid


def served_name(template: str, alpha: float) -> str:
    """The served model name of the point at ``alpha``: ``template`` with ``{alpha}`` replaced
    (``{alpha}`` prints α rounded to 6 decimals, e.g. 0.3; ``{alpha:.4f}`` as --save-checkpoints
    names its directories, alpha-0.3000)."""
    return template.format(alpha=round(float(alpha), 6))


def check_served_sweep(cfg: InterpolateConfig, grid: list[float]) -> None:
    """``--backend openai`` on a sweep (usage errors): a served model stays at one point of the path,
    so each α's point is served under its own name, ``--served-model`` with ``{alpha}`` in it, and
    there is an --eval to generate for; ``--base-url`` / ``--served-model`` only with it."""
    if cfg.backend not in ("hf", "openai"):
        raise UsageError(f"unknown backend {cfg.backend!r}", hint="use hf or openai")
    if cfg.backend != "openai":
        if cfg.base_url is not None or cfg.served_model is not None:
            raise UsageError("--base-url and --served-model go with --backend openai",
                             hint="add --backend openai to evaluate served points")
        return
    if not cfg.evals:
        raise UsageError("--backend openai generates the --eval completions, and no --eval was given",
                         hint="add --eval target and/or general, or leave --backend out")
    if not cfg.base_url:
        raise UsageError("--backend openai needs --base-url", hint="e.g. --base-url http://localhost:8000")
    from peftarena_cli.evaluation.openai_backend import parse_base_url

    parse_base_url(cfg.base_url)
    t = cfg.served_model or ""
    try:
        names = {served_name(t, a) for a in grid}
    except (KeyError, IndexError, ValueError) as e:
        raise UsageError(f"--served-model {t!r} is not a name template ({e})",
                         hint="use {alpha} (or {alpha:.4f}) for the point's α, e.g. --served-model 'lora-a{alpha}'") from None
    if "{alpha" not in t or (len(grid) > 1 and len(names) < 2):
        raise UsageError("a served model stays at one point of the path: --served-model must name each α's point "
                         "with {alpha} in it",
                         hint="serve the points (--save-checkpoints, or peftarena rewind) under names such as "
                              "lora-a0.5 and pass --served-model 'lora-a{alpha}'")


def served_points(cfg: InterpolateConfig, grid: list[float], log) -> tuple[dict, dict]:
    """({served name: backend} of every α's point, what the provenance records). Each name is
    checked against the server's list here, before anything is loaded."""
    from peftarena_cli.evaluation.openai_backend import OpenAIBackend

    kw = dict(concurrency=cfg.concurrency, request_timeout=cfg.request_timeout, retries=cfg.retries, log=log)
    backends: dict = {}
    for a in grid:
        name = served_name(cfg.served_model, a)
        if name not in backends:
            backends[name] = OpenAIBackend(cfg.base_url, model=name, **kw)  # refuses a name the server lacks
    first = next(iter(backends.values()))
    return backends, dict(first.describe(), served_model=cfg.served_model, served_models=sorted(backends))


def _served_evaluators(cfg: InterpolateConfig, setup, backends: dict) -> dict:
    """The evaluators of a served sweep: each evaluates the served point of the path model's current α."""
    from peftarena_cli.errors import ServerError

    pm = setup.path_model

    def backend_now():
        name = served_name(cfg.served_model, pm.alpha)
        if name not in backends:  # pragma: no cover - every α of the grid was checked
            raise ServerError(f"no served point for alpha {pm.alpha}")
        return backends[name]

    return {k: (lambda m, t, fn=fn: fn(backend_now(), t)) for k, fn in _evaluators(cfg).items()}


def _evaluators(cfg: InterpolateConfig) -> dict:
    # imported here: the evaluation API brings pandas and pyarrow, which a sweep without --eval never needs
    from peftarena_cli.evaluation import evaluate_general, evaluate_target

    out = {}
    from peftarena_cli.tasks.limits import part_limit

    kw = {"seed": cfg.seed, "max_new_tokens": cfg.max_new_tokens, "protocol": cfg.protocol,
          "chat_template": cfg.chat_template, "model_name": cfg.base}
    if "target" in cfg.evals:  # a per-part limit's bare N (``"*"``) is the target task's
        out["target"] = lambda m, t: evaluate_target(m, t, task=cfg.target_task, limit=part_limit(cfg.limit, "*"), **kw)
    if "general" in cfg.evals:
        out["general"] = lambda m, t: evaluate_general(m, t, suite=cfg.general_suite, limit=cfg.limit, **kw)
    return out


def _no_log(msg: str) -> None:
    pass


def _no_progress(description: str):
    return nullcontext(type("NoBar", (), {"callback": staticmethod(lambda *a, **k: None)})())


def interpolate(cfg: InterpolateConfig, progress: Callable = _no_progress, log: Callable[[str], None] = _no_log,
                warn: Callable[[str], None] = _no_log) -> InterpolateResult:
    """Run the sweep of ``cfg``. ``progress(description)`` gives a context manager whose value has a
    ``callback(done, total, label)`` (one per phase: forming ΔW, interpolating); ``log`` and ``warn``
    receive one-line messages."""
    grid = check_interpolate(cfg)
    checkpoints = Path(cfg.save_checkpoints) if cfg.save_checkpoints is not None else None
    if checkpoints is not None:
        check_checkpoint_dir(checkpoints)

    from peftarena_cli.evaluation.protocols import get_protocol

    get_protocol(cfg.protocol)  # an unknown name is a usage error listing the known ones, before any work
    served = cfg.backend == "openai"
    evaluators = _evaluators(cfg) if cfg.evals else {}
    if evaluators and cfg.chat_template == "on":  # a tokenizer without a template: refused before any model work
        from peftarena_cli.artifacts.loading import load_tokenizer
        from peftarena_cli.artifacts.safetensors_io import resolve_model
        from peftarena_cli.tasks.prompting import require_chat_template

        require_chat_template(load_tokenizer(resolve_model(cfg.base)), cfg.chat_template, cfg.base)
    served_info: dict = {}
    if served:  # the server and every α's served name, before anything is loaded
        backends, served_info = served_points(cfg, grid, warn)
    sets = None
    if cfg.stats:
        sets, stats_base = merge_stats_files(cfg.stats)

    import torch

    torch.manual_seed(cfg.seed)
    t_load = time.perf_counter()
    with progress("forming ΔW") as bar:
        setup = open_path_model(cfg.base, cfg.finetuned, path=cfg.path, scale_mode=cfg.generator_scale,
                                dtype=cfg.dtype, device=cfg.device, layerwise=cfg.layerwise, callback=bar.callback,
                                merge=bool(evaluators) and not served)
    for note in setup.notes:
        warn(note)
    csd = None
    if sets is not None:
        check_stats_base(stats_base, weights_fingerprint(setup.ref), cfg.base)
        csd = path_csd(sets)
    load_s = time.perf_counter() - t_load
    log(f"loaded {cfg.base} + {cfg.finetuned} ({setup.method}, {setup.path} path) in {load_s:.1f} s")
    if served:  # each α's completions come from that point as served; the local path model keeps the rest
        evaluators = _served_evaluators(cfg, setup, backends)
    on_alpha = None
    if checkpoints is not None:
        claim_checkpoint_dir(checkpoints, {
            "format": "peftarena-sweep/1", "base": f"{cfg.base}@{setup.ref.identity()}",
            "finetuned": f"{cfg.finetuned}@{setup.finetuned.identity()}", "path": setup.path,
            "generator_scale": setup.scale_mode, "layerwise": cfg.layerwise or ""})

        def on_alpha(a, pm):
            save_checkpoint(setup, a, checkpoints, overwrite=True)
    t0 = time.perf_counter()
    with progress("interpolating") as bar:
        curve, samples = run_sweep(setup, grid, evaluators, csd=csd, on_alpha=on_alpha, callback=bar.callback)
    return InterpolateResult(
        curve=curve, samples=samples, csd_rows=list(csd.rows) if csd is not None else [], grid=grid, served=served_info,
        method=setup.method, path=setup.path, scale_mode=setup.scale_mode, base_identity=setup.ref.identity(),
        finetuned_identity=setup.finetuned.identity(),
        device=str(next(setup.path_model.model.parameters()).device), load_seconds=load_s,
        sweep_seconds=time.perf_counter() - t0)


def check_checkpoint_dir(d: Path) -> None:
    """--save-checkpoints DIR: new, empty, or holding checkpoints of a peftarena sweep (cheap check
    before any work; the sweep's identity is compared once the models are open)."""
    if d.exists() and not d.is_dir():
        raise OutputError(f"--save-checkpoints {str(d)!r} is not a directory")
    if not d.parent.is_dir():
        raise OutputError(f"the parent of --save-checkpoints {str(d)!r} does not exist")
    if not d.is_dir():
        return
    entries = [e for e in d.iterdir() if not e.name.startswith(".tmp-")]
    if entries and not (d / SWEEP_MANIFEST).is_file():
        raise OutputError(f"--save-checkpoints {str(d)!r} already holds files that are not a peftarena sweep",
                          hint="choose a new or empty directory")


def claim_checkpoint_dir(d: Path, manifest: dict) -> None:
    """Create DIR (or reuse it for the same sweep: same base, fine-tune, path and scaling) and record
    which sweep its alpha-*/ checkpoints belong to. A different sweep's checkpoints are refused,
    never mixed; leftovers of an interrupted write (.tmp-*) are removed."""
    import json

    d.mkdir(exist_ok=True)
    m = d / SWEEP_MANIFEST
    if m.is_file():
        try:
            old = json.loads(m.read_text())
        except ValueError:
            old = {}
        diff = [k for k in manifest if old.get(k) != manifest[k]]
        if diff:
            raise OutputError(f"--save-checkpoints {str(d)!r} holds the checkpoints of another sweep "
                              f"(differs in: {', '.join(diff)})",
                              hint="choose a new directory, or remove the old checkpoints first")
    clean_stale_tmp(d)
    atomic_write_text(m, json.dumps(manifest, indent=2) + "\n")
