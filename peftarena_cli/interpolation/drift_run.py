"""Core entry point of ``peftarena drift``: :func:`run_drift` (docs/drift.md).

It takes a :class:`DriftConfig` and returns the drift rows, their summary and what the provenance
records; nothing here prints or writes a table. The CLI (``peftarena_cli/cli/drift.py``) parses
its options into a config, calls :func:`check_drift`, checks its output, calls :func:`run_drift`,
shows progress and the summary and writes the table. ``progress(description)`` returns a context
manager whose value has a ``callback(done, total, label)`` (one per phase: forming ΔW, drift);
``log``/``warn`` receive one-line messages. The measurement itself is
:func:`peftarena_cli.evaluation.drift.measure_drift` on a path model of this package.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field

from peftarena_cli.errors import UsageError

DRIFT_SETS = ("target", "general")


def _no_log(msg: str) -> None:
    return None


def _no_progress(description: str):
    return nullcontext(type("NoBar", (), {"callback": staticmethod(lambda *a, **k: None)})())


def _spec(given: str | None, part: str) -> str:
    """A task or suite spec as given, else the default of its part (target or general)."""
    from peftarena_cli.tasks.benchmarks import DEFAULT_SPECS

    return DEFAULT_SPECS[part] if given is None else given


@dataclass
class DriftConfig:
    """What ``peftarena drift`` asks for (docs/drift.md). ``sets``: "target", "general" or both
    (a comma list or a sequence); ``target_task`` / ``general_suite``: None takes the default."""

    base: str
    finetuned: str
    alphas: str = "1"                          # start:stop:step or a comma list
    sets: str | Sequence[str] = "target,general"
    target_task: str | None = None
    general_suite: str | None = None
    limit: int | None = 64
    max_new_tokens: int = 32
    reference: bool = True
    path: str | None = None                    # dense or native for α < 1; None: native when the method has one
    batch_size: int = 8
    chat_template: str = "auto"                # auto (by the protocol), on, off (docs/eval.md, "Chat template")
    device: str = "auto"
    dtype: str = "float32"
    seed: int = 0
    base_continuations: str | None = None      # a JSON file: read and checked when it exists, else written

    def chosen_sets(self) -> list[str]:
        """The prompt sets asked for, in the order given (lower case)."""
        parts = self.sets.split(",") if isinstance(self.sets, str) else list(self.sets)
        return [s.strip().lower() for s in parts if s.strip()]

    def specs(self) -> dict:
        """{prompt set: task or suite spec} of the chosen sets (the defaults where none was given)."""
        given = {"target": self.target_task, "general": self.general_suite}
        return {s: _spec(given[s], s) for s in self.chosen_sets() if s in given}


@dataclass
class DriftResult:
    """Drift rows (one per prompt × α × source), their summary (per α, prompt set and source) and
    what the provenance records (``inputs`` {role: (spec, identity)}, ``extra``)."""

    table: object
    summary: object
    grid: list
    sets: list
    method: str
    path: str
    device: str
    inputs: dict = field(default_factory=dict)
    extra: dict = field(default_factory=dict)
    n_prompts: int = 0
    load_seconds: float = 0.0
    measure_seconds: float = 0.0
    base_continuations: dict | None = None     # the artifact (docs/drift.md, "The base's continuations, once")
    base_continuations_reused: bool = False    # True: read from cfg.base_continuations; False: to be written


BASE_FORMAT = "peftarena-drift-base/1"


def base_settings(cfg: DriftConfig, chosen: list[str], chat_mode: str, device: str) -> dict:
    """What the base's greedy continuations depend on besides the base and the prompts: the
    continuation length, the batching (padding), the precision and the device type."""
    return {"max_new_tokens": cfg.max_new_tokens, "reference": cfg.reference, "batch_size": cfg.batch_size,
            "dtype": cfg.dtype, "device": device.split(":")[0], "chat_template": chat_mode, "sets": chosen,
            "target_task": _spec(cfg.target_task, "target") if "target" in chosen else None,
            "general_suite": _spec(cfg.general_suite, "general") if "general" in chosen else None,
            "limit": cfg.limit, "seed": cfg.seed}


def read_base_continuations(path, identity: str, settings: dict, prompts: str, n_prompts: int) -> list:
    """The continuations of a base-continuations artifact after checking that it was made by this
    base, with these settings, on these prompts (IncompatibleInputs otherwise)."""
    import json
    from pathlib import Path

    from peftarena_cli.errors import IncompatibleInputs, InvalidArtifact

    p = Path(path)
    try:
        art = json.loads(p.read_text())
    except (OSError, ValueError) as e:
        raise InvalidArtifact(f"--base-continuations {str(p)!r} is not readable JSON ({e})",
                              hint="remove it: the next drift run writes it again") from None
    if not isinstance(art, dict) or art.get("format") != BASE_FORMAT or not isinstance(art.get("continuations"), list):
        raise InvalidArtifact(f"--base-continuations {str(p)!r} is not a drift base-continuations file ({BASE_FORMAT})",
                              hint="point --base-continuations at a file written by `peftarena drift`, or at a new path")
    hint = ("the base's continuations are reused only for the same base, prompts and settings: use another "
            "--base-continuations path (one per base and prompt set), or the settings it was made with")
    made = (art.get("base") or {}).get("identity")
    if made != identity:
        raise IncompatibleInputs(f"--base-continuations {str(p)!r} was made with another base model "
                                 f"(identity {made} vs {identity})", hint=hint)
    old = art.get("settings") or {}
    diff = [k for k in sorted(set(old) | set(settings)) if old.get(k) != settings.get(k)]
    if diff:
        k = diff[0]
        raise IncompatibleInputs(f"--base-continuations {str(p)!r} was made with other settings: {k} "
                                 f"{old.get(k)!r} there, {settings.get(k)!r} here"
                                 + (f" (and {', '.join(diff[1:])})" if len(diff) > 1 else ""), hint=hint)
    if art.get("prompts") != prompts or len(art["continuations"]) != n_prompts:
        raise IncompatibleInputs(f"--base-continuations {str(p)!r} was made on other prompts "
                                 f"({art.get('n_prompts')} prompts, fingerprint {art.get('prompts')}; "
                                 f"here {n_prompts}, {prompts})", hint=hint)
    return art["continuations"]


def check_drift(cfg: DriftConfig) -> tuple[list[float], list[str]]:
    """The option checks that read no file (usage errors): returns the α grid and the chosen sets."""
    from peftarena_cli.evaluation.protocols import check_generation_options
    from peftarena_cli.interpolation.alphas import parse_alphas

    grid = parse_alphas(cfg.alphas, False)
    chosen = cfg.chosen_sets()
    bad = [s for s in chosen if s not in DRIFT_SETS]
    if bad or not chosen:
        raise UsageError(f"unknown --sets entry {bad[0] if bad else cfg.sets!r}", hint="use target, general or target,general")
    if cfg.limit is not None and cfg.limit < 1:
        raise UsageError("--limit must be at least 1")
    if cfg.max_new_tokens < 1 or cfg.batch_size < 1:
        raise UsageError("--max-new-tokens and --batch-size must be at least 1")
    check_generation_options(cfg.max_new_tokens)  # the continuation length, bounded like the evals'
    from peftarena_cli.tasks.prompting import check_chat_template_mode

    check_chat_template_mode(cfg.chat_template)
    return grid, chosen


def run_drift(cfg: DriftConfig, *, progress: Callable | None = None, log: Callable[[str], None] | None = None,
              warn: Callable[[str], None] | None = None) -> DriftResult:
    """Output drift of ``cfg.finetuned`` against ``cfg.base`` at each α (docs/drift.md): one path
    model, the base's greedy continuations teacher-forced at α = 0 and at each α."""
    progress, log, warn = progress or _no_progress, log or _no_log, warn or _no_log
    grid, chosen = check_drift(cfg)
    from peftarena_cli.evaluation.api import chat_rules, load_general_tasks, load_target_tasks, tasks_for_model
    from peftarena_cli.tasks.prompting import check_chat_template_mode, require_chat_template
    from peftarena_cli.evaluation.drift import drift_summary, measure_drift
    from peftarena_cli.interpolation import sweep

    specs = cfg.specs()
    prompt_sets = {}
    if "target" in chosen:
        prompt_sets["target"] = load_target_tasks(specs["target"], cfg.limit, cfg.seed)
    if "general" in chosen:
        prompt_sets["general"] = load_general_tasks(specs["general"], cfg.limit, cfg.seed)
    mode = check_chat_template_mode(cfg.chat_template)
    if mode == "on":  # a tokenizer without a template: refused before any model work
        from peftarena_cli.artifacts.loading import load_tokenizer
        from peftarena_cli.artifacts.safetensors_io import resolve_model

        require_chat_template(load_tokenizer(resolve_model(cfg.base)), mode, cfg.base)
    import torch

    torch.manual_seed(cfg.seed)
    t0 = time.perf_counter()
    with progress("forming ΔW") as bar:
        # merge=True: each α is merged into the weights (PEFT's merge), so forwards cost the base model's
        # (unmerged, DoRA re-forms its norms and OFT its rotations at every forward)
        setup = sweep.open_path_model(cfg.base, cfg.finetuned, path=cfg.path, dtype=cfg.dtype, device=cfg.device,
                                      callback=bar.callback, merge=True)
    for note in setup.notes:
        warn(note)
    load_s = time.perf_counter() - t0
    log(f"loaded {cfg.base} + {cfg.finetuned} ({setup.method}, {setup.path} path) in {load_s:.1f} s")
    prompt_sets = {k: tasks_for_model(v, setup.tokenizer, mode, cfg.base) for k, v in prompt_sets.items()}
    device = str(next(setup.path_model.model.parameters()).device)
    base_art, conts, record, reused = None, None, None, False
    if cfg.base_continuations is not None:
        from pathlib import Path

        from peftarena_cli.evaluation.drift import drift_items, prompts_fingerprint

        items = drift_items(setup.tokenizer, prompt_sets, cfg.reference)
        fp, settings = prompts_fingerprint(items), base_settings(cfg, chosen, mode, device)
        if Path(cfg.base_continuations).expanduser().exists():
            conts = read_base_continuations(Path(cfg.base_continuations).expanduser(), setup.ref.identity(),
                                            settings, fp, len(items))
            reused = True
            log(f"the base's continuations of {len(items)} prompts from {cfg.base_continuations}")
        else:
            record = []
            base_art = {"format": BASE_FORMAT, "base": {"spec": cfg.base, "identity": setup.ref.identity()},
                        "settings": settings, "prompts": fp, "n_prompts": len(items),
                        "items": [[s, t, str(i)] for s, t, i, *_ in items]}
    t1 = time.perf_counter()
    with progress("drift") as bar:
        df = measure_drift(setup.path_model, setup.tokenizer, prompt_sets, grid, max_new_tokens=cfg.max_new_tokens,
                           batch_size=cfg.batch_size, reference=cfg.reference, callback=bar.callback,
                           continuations=conts, record=record)
    measure_s = time.perf_counter() - t1
    if base_art is not None:
        base_art["continuations"] = record
    n_prompts = df.groupby(["prompt_set", "task", "id"]).ngroups if len(df) else 0
    log(f"{n_prompts} prompts × {len(grid)} α in {measure_s:.1f} s")
    extra = dict(path=setup.path, method=setup.method, alphas=grid, sets=chosen,
                 target_task=_spec(cfg.target_task, "target"), general_suite=_spec(cfg.general_suite, "general"),
                 limit=cfg.limit, max_new_tokens=cfg.max_new_tokens, reference=cfg.reference,
                 chat_template=mode, chat_template_rules={f"{k}/{n}": r for k, v in prompt_sets.items()
                                                          for n, r in chat_rules(v).items()},
                 base_continuations=(None if cfg.base_continuations is None
                                     else {"path": str(cfg.base_continuations), "reused": reused}))
    return DriftResult(
        table=df, summary=drift_summary(df), grid=grid, sets=chosen, method=setup.method, path=setup.path,
        device=device,
        inputs={"base": (cfg.base, setup.ref.identity()), "finetuned": (cfg.finetuned, setup.finetuned.identity())},
        extra=extra, n_prompts=n_prompts, load_seconds=load_s, measure_seconds=measure_s,
        base_continuations=base_art, base_continuations_reused=reused)
