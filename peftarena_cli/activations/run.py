"""Core entry points of the activation diagnostics: :func:`run_csd` and :func:`run_act_geom`.

Each takes a small config dataclass and returns its tables and statistics as data; nothing here
prints or writes a table. The CLI (``peftarena_cli/cli/csd.py``, ``cli/act_geom.py``) parses its
options into a config, calls one of these, shows progress and writes the results; benchmarks and
Python users call the same functions. Three optional callables report what happens:

* ``progress(description)`` returns a context manager with a ``callback(done, total, label)``
  (the CLI passes its progress-bar class);
* ``log(msg)`` for notes (the memory plan, timings), ``warn(msg)`` for warnings (truncated prompts).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from peftarena_cli.errors import IncompatibleInputs, UsageError
from peftarena_cli.memory import peak_rss_mib


class _NoProgress:
    def __init__(self, description: str = ""):
        self.description = description

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def callback(self, done, total=None, label=""):
        return None


def _quiet(msg: str) -> None:
    return None


def prepare_prompts(spec: str, tokenizer, *, n, seed, text_key, chat, shard, max_length, warn=_quiet):
    """Load a prompt set, apply the chat template if asked, take the shard, tokenise:
    ``(PromptSet, prompts, Tokenized)``. Truncated prompts are counted and reported through ``warn``."""
    from peftarena_cli.activations.capture import tokenize
    from peftarena_cli.activations.prompts import load_prompts, shard_prompts
    from peftarena_cli.errors import DataError

    ps = load_prompts(spec, n=n, seed=seed, text_key=text_key)
    prompts = ps.prompts
    if chat:
        from peftarena_cli.tasks.prompting import render_prompt

        prompts = [render_prompt(tokenizer, p, instruction=None) for p in prompts]
    prompts = shard_prompts(prompts, shard)
    if not prompts:
        raise DataError(f"shard {shard[0]}/{shard[1]} of {spec!r} holds no prompts ({len(ps.prompts)} in the set)",
                        hint="use fewer shards than prompts")
    tok = tokenize(tokenizer, prompts, max_length)
    if tok.n_truncated:
        warn(f"{tok.n_truncated} of {len(prompts)} prompts in {spec!r} were longer than --max-length "
             f"{max_length} tokens and were truncated")
    return ps, prompts, tok


def check_same_architecture(m0, m1, base: str, finetuned: str) -> None:
    """A full fine-tune must have the base's linear modules with the same shapes."""
    import torch

    lin1 = {n: tuple(m.weight.shape) for n, m in m1.named_modules() if isinstance(m, torch.nn.Linear)}
    for n, m in m0.named_modules():
        if isinstance(m, torch.nn.Linear):
            if n not in lin1:
                raise IncompatibleInputs(f"module {n!r} of the base {base!r} is missing from {finetuned!r}",
                                         hint="pass the fine-tune of this base (an adapter or a full model)")
            if lin1[n] != tuple(m.weight.shape):
                raise IncompatibleInputs(f"module {n!r}: shape {lin1[n]} in {finetuned!r}, {tuple(m.weight.shape)} in the base",
                                         hint="pass the fine-tune of this base (an adapter or a full model)")


def _release() -> None:
    """Return freed CUDA blocks to the driver (CPU memory goes back when the last reference does)."""
    import torch

    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()


# ----------------------------------------------------------------------------------------------- csd


CSD_FORMS = ("auto", "stats", "projected")


@dataclass
class CsdConfig:
    """What `peftarena csd` does, as data. ``general``/``target`` are prompt-set specs; ``stats``
    saved statistics files to merge instead (no forward pass). ``keep_stats`` returns the collected
    statistics (to be saved); ``adapter=None`` only collects them."""

    base: str
    adapter: str | None = None
    general: str | None = None
    target: str | None = None
    stats: list = field(default_factory=list)
    keep_stats: bool = False
    alphas: tuple = (1.0,)
    modules: list | None = None
    n: int | None = None
    text_key: str | None = None
    chat: bool = False
    max_length: int = 512
    batch_size: int = 16
    shard: str | None = None
    device: str = "auto"
    dtype: str = "float32"
    seed: int = 0
    max_memory: int | str | None = None  # bytes (or "12G"); None: derived from the machine (budget.py)
    form: str = "auto"  # "stats" (S = E[hhᵀ], reusable), "projected" (r × r of A h, this adapter only), "auto"

    def validate(self) -> None:
        """Option combinations that cannot work (a :class:`UsageError`, exit 2)."""
        from peftarena_cli.activations.prompts import parse_shard

        sh = parse_shard(self.shard)
        if self.form not in CSD_FORMS:
            raise UsageError(f"unknown --form {self.form!r}", hint=f"use one of {', '.join(CSD_FORMS)}")
        if self.form == "projected" and (self.keep_stats or self.stats or self.adapter is None):
            raise UsageError("--form projected needs ADAPTER and prompt sets, and keeps no statistics",
                             hint="it never forms S, so there is nothing to save or reuse: drop --save-stats/--stats")
        if self.stats and (self.general or self.target):
            raise UsageError("pass prompt sets (--general/--target) or --stats, not both")
        if not self.stats and not (self.general or self.target):
            raise UsageError("no prompt set given", hint="pass --general and/or --target (or --stats FILE)")
        if sh and not self.keep_stats:
            raise UsageError("--shard writes partial statistics and needs --save-stats FILE",
                             hint="merge the shards later with --stats s1.st --stats s2.st ...")
        if sh and self.adapter:
            raise UsageError("a --shard run only collects statistics; drop ADAPTER",
                             hint="compute CSD after merging: peftarena csd BASE ADAPTER --stats s1.st --stats s2.st")
        if self.adapter is None and not self.keep_stats:
            raise UsageError("nothing to do without ADAPTER",
                             hint="pass ADAPTER, or --save-stats FILE to only collect statistics")


@dataclass
class CsdResult:
    table: object | None  # DataFrame, one row per module × α; None when only statistics were collected
    stats: dict  # {role: InputMoments} (all of them only with keep_stats)
    base_identity: str
    adapter_identity: str | None
    extra: dict
    device: str
    plan: object = None  # the budget.Plan the statistics were collected under (None with --stats)


def run_csd(cfg: CsdConfig, progress=_NoProgress, log=_quiet, warn=_quiet) -> CsdResult:
    """CSD per changed module on the configured prompt sets (or merged statistics files)."""
    from peftarena_cli.activations.capture import linear_module_names
    from peftarena_cli.artifacts.keys import module_layer, select_modules
    from peftarena_cli.activations.collect import collect_input_moments
    from peftarena_cli.activations.csd import csd_table
    from peftarena_cli.activations.moments import (InputMoments, check_stats_base, merge_stats_files,
                                                   weights_fingerprint)
    from peftarena_cli.activations.prompts import parse_shard
    from peftarena_cli.artifacts.loading import pick_device
    from peftarena_cli.artifacts.safetensors_io import WeightSource, resolve_model

    cfg.validate()
    shard = parse_shard(cfg.shard)
    alphas = tuple(cfg.alphas) if cfg.alphas else (1.0,)
    dev = pick_device(cfg.device)
    ref = resolve_model(cfg.base)
    base_id = weights_fingerprint(ref)
    ft = None
    if cfg.adapter is not None:
        from peftarena_cli.weights.deltas import iter_module_deltas
        from peftarena_cli.weights.finetuned import open_finetuned

        ft = open_finetuned(cfg.adapter)
        # fail on a mismatched base/adapter before any forward pass
        for _ in iter_module_deltas(WeightSource.from_ref(ref), ft):
            pass
    t0 = time.perf_counter()
    n_tokens = 0
    extra: dict = {"shard": cfg.shard, "alphas": list(alphas)}
    if cfg.stats:
        sets, stats_base = merge_stats_files(cfg.stats)
        check_stats_base(stats_base, base_id, cfg.base)
        for role, m in sets.items():
            log(f"{role}: statistics for {len(m.module_group)} modules over {m.n(next(iter(m.module_group)))} tokens "
                f"({m.n_prompts} prompts) from {len(cfg.stats)} file(s)")
        if cfg.modules:
            select_modules(list(next(iter(sets.values())).module_group), cfg.modules)
        extra["stats"] = [str(s) for s in cfg.stats]
    else:
        from peftarena_cli.artifacts.loading import load_model

        model, tok, _ = load_model(ref, dtype=cfg.dtype, device=dev)
        names = select_modules(linear_module_names(model), cfg.modules)
        loaded = []
        for role, spec in (("general", cfg.general), ("target", cfg.target)):
            if spec is not None:
                loaded.append((role, *prepare_prompts(spec, tok, n=cfg.n, seed=cfg.seed, text_key=cfg.text_key,
                                                      chat=cfg.chat, shard=shard, max_length=cfg.max_length,
                                                      warn=warn)))
        wanted = _csd_wanted(ft, names) if ft is not None else None
        if ft is not None and not wanted:
            raise IncompatibleInputs(
                f"no module changed by {ft.spec!r} is covered by the statistics/selection "
                f"({len(ft.module_names())} changed, {len(names)} covered)",
                hint="check that the adapter belongs to this base model and the --modules selection")
        from peftarena_cli.activations.budget import BudgetTooSmall

        try:
            plan, too_small = csd_plan(model, names, [t for *_, t in loaded], cfg, dev, with_adapter=ft is not None), None
        except BudgetTooSmall as e:
            plan, too_small = None, e
        if (ft is not None and not cfg.keep_stats and cfg.form != "stats"
                and (cfg.form == "projected" or plan is None or plan.passes > 1)):
            factors = _low_rank_factors(ref, ft, wanted, dev)
            if factors is None and cfg.form == "projected":
                from peftarena_cli.errors import UnsupportedMethod

                raise UnsupportedMethod(f"--form projected needs a low-rank update (ΔW = B A) in every module; "
                                        f"{ft.spec!r} ({ft.method}) has other modules",
                                        hint="use --form stats (the S statistics work for every method)")
            if factors is not None:
                _check_projected_budget(cfg, factors, [t for *_, t in loaded], dev)
                log(f"csd: projected form (r × r statistics of A·h per module, this adapter only): "
                    f"{len(wanted)} modules in one pass over each prompt set"
                    + (f", instead of the S plan's {plan.passes} passes" if plan is not None else
                       f" (S would not fit: {too_small})"))
                return _csd_projected(cfg, model, tok, loaded, factors, wanted, alphas, progress, log, extra,
                                      base_id, ft, dev, t0)
        if too_small is not None:
            raise too_small
        log(plan.describe())
        sets, rows = {}, []
        for gi, group in enumerate(plan.groups):
            gsets = {}
            for role, ps, prompts, tokd in loaded:
                what = f"csd {role}" + (f" (group {gi + 1}/{plan.passes})" if plan.passes > 1 else "")
                with progress(what) as bar:
                    m = collect_input_moments(model, tok, prompts, group, batch_size=cfg.batch_size,
                                              max_length=cfg.max_length, callback=bar.callback, tokenized=tokd,
                                              stop_after=plan.stop_after[gi])
                m.source = ps.source
                gsets[role] = m
            if plan.passes == 1:
                sets = gsets
            else:  # CSD of this group's modules now, then its statistics go
                gw = [n for n in wanted if n in set(group)]
                if gw:
                    with progress(f"csd modules (group {gi + 1}/{plan.passes})") as bar:
                        rows.append(csd_table(WeightSource.from_ref(ref, device=dev), ft, gsets, modules=gw,
                                              alphas=alphas, device=dev, callback=bar.callback,
                                              layers=sorted({module_layer(n) for n in gw})))
                sets = {role: InputMoments(n_prompts=m.n_prompts, n_truncated=m.n_truncated, source=m.source)
                        for role, m in gsets.items()}
                del gsets, m
                _release()
        for role, ps, prompts, tokd in loaded:
            n_tokens += tokd.n_tokens
            extra[role] = {"source": ps.source, "n_prompts": len(prompts), "n_tokens": tokd.n_tokens,
                           "n_truncated": tokd.n_truncated}
        extra["memory_plan"] = {"groups": plan.passes, "budget_bytes": plan.budget, "estimated_peak_bytes": plan.peak}
        del model
        dt = time.perf_counter() - t0
        log(f"collected input statistics of {len(names)} modules over {n_tokens} tokens in {dt:.1f} s "
            f"({n_tokens / max(dt, 1e-9):.0f} tokens/s, {plan.passes} pass(es), peak RSS {peak_rss_mib():.0f} MiB)")
        if plan.passes > 1:
            import pandas as pd

            df = pd.concat(rows, ignore_index=True)
            return CsdResult(_with_form(_in_module_order(df, wanted), "stats"), {}, base_id, ft.identity(), extra,
                             dev, plan)
    df = None
    if ft is not None:
        wanted = select_modules(list(next(iter(sets.values())).module_group), cfg.modules) if cfg.modules else None
        with progress("csd modules") as bar:
            df = _with_form(csd_table(WeightSource.from_ref(ref, device=dev), ft, sets, modules=wanted, alphas=alphas,
                                      device=dev, callback=bar.callback), "stats")
    return CsdResult(df, sets, base_id, ft.identity() if ft is not None else None, extra, dev,
                     None if cfg.stats else plan)


def _batch_tokens(tok, batch_size: int) -> tuple[int, int]:
    """(most non-padding tokens, most padded positions) in one batch of a tokenized prompt set."""
    most, padded = 0, 0
    for i in range(0, len(tok.ids), batch_size):
        chunk = tok.ids[i:i + batch_size]
        most = max(most, sum(len(t) for t in chunk))
        padded = max(padded, len(chunk) * max(len(t) for t in chunk))
    return most, padded


def _dtype_bytes(dtype: str) -> int:
    return 2 if dtype in ("bfloat16", "float16", "bf16", "fp16") else 8 if dtype == "float64" else 4


def _forward_bytes(probe, padded: int, model_bytes: int) -> int:
    """A rough allowance for one forward pass's own activations (a few widths per padded position)."""
    widest = max((max(s) for s in probe.shape.values()), default=0)
    return 8 * padded * widest * model_bytes


def _finish(plan, probe, names: list):
    """Each group's modules in the selection's order, and the module of each that runs last (the
    pass stops there)."""
    run = {n: i for i, n in enumerate(probe.order)}
    sel = {n: i for i, n in enumerate(names)}
    plan.groups = [sorted(g, key=sel.__getitem__) for g in plan.groups]
    plan.stop_after = [max(g, key=lambda n: run.get(n, len(run))) for g in plan.groups]
    return plan


def csd_plan(model, names: list, tokenized: list, cfg: CsdConfig, device: str, with_adapter: bool):
    """The memory plan of a csd collection (see :mod:`peftarena_cli.activations.budget`): modules that
    read the same input stay together (they share one S)."""
    from peftarena_cli.activations.budget import Unit, plan_groups, resolve_budget
    from peftarena_cli.activations.capture import probe_modules

    probe = probe_modules(model, names)
    budget, source = resolve_budget(cfg.max_memory, device)
    T = max(_batch_tokens(t, cfg.batch_size)[0] for t in tokenized)
    padded = max(_batch_tokens(t, cfg.batch_size)[1] for t in tokenized)
    n_sets = len(tokenized)
    fwd = _forward_bytes(probe, padded, _dtype_bytes(cfg.dtype))
    units, done = [], set()
    for n in probe.order:
        g = probe.group[n]
        if g in done:
            continue
        done.add(g)
        members = [m for m in probe.order if probe.group[m] == g]
        d_in = probe.shape[g][1]
        work = 24 * T * d_in + fwd
        if with_adapter:
            work = max(work, max(40 * probe.shape[m][0] * d_in for m in members))
        units.append(Unit(members, hold=8 * d_in * d_in * n_sets + 64, work=work))
    plan = plan_groups(units, budget, what="csd", source=source, keep_all=cfg.keep_stats, prompt_sets=n_sets,
                       keep_all_reason="--save-stats")
    return _finish(plan, probe, names)


def _with_form(df, form: str):
    """Name the statistics a CSD table came from in its ``csd_form`` column."""
    df.insert(min(4, len(df.columns)), "csd_form", form)
    return df


def _check_projected_budget(cfg, factors: dict, tokenized: list, device: str) -> None:
    """The projected form holds r² numbers and the factors per module, plus one module's batch in
    float64 at a time; refuse a budget below that before any work."""
    from peftarena_cli.activations.budget import BudgetTooSmall, format_size, resolve_budget

    budget, _ = resolve_budget(cfg.max_memory, device)
    T = max(_batch_tokens(t, cfg.batch_size)[0] for t in tokenized)
    held = sum(8 * A.shape[0] ** 2 + 4 * (B.numel() + A.numel()) for B, A in factors.values())
    need = held + max(24 * T * (A.shape[1] + B.shape[0]) for B, A in factors.values())
    if need > budget:
        raise BudgetTooSmall(f"csd: a budget of {format_size(budget)} cannot hold the projected statistics (about "
                             f"{format_size(need)}); the smallest budget that would do is {format_size(need)}",
                             hint=f"pass --max-memory {format_size(need).replace(' ', '')} or more", needed=need)


def _low_rank_factors(ref, ft, wanted: list, device: str) -> dict | None:
    """{module: (B, A)} for every wanted module, or None when one of them is not low-rank."""
    from peftarena_cli.artifacts.safetensors_io import WeightSource
    from peftarena_cli.weights.deltas import iter_module_deltas

    want = set(wanted)
    out = {}
    for md in iter_module_deltas(WeightSource.from_ref(ref, device=device), ft, modules=wanted, device=device):
        if md.name in want:
            if not md.is_low_rank:
                return None
            out[md.name] = tuple(t.detach() for t in md.factors)
    return out


def _csd_projected(cfg, model, tok, loaded, factors, wanted, alphas, progress, log, extra, base_id, ft, dev, t0):
    """CSD through :class:`~peftarena_cli.activations.moments.ProjectedMoments`: one pass per set."""
    import pandas as pd

    from peftarena_cli.artifacts.keys import module_kind, module_layer
    from peftarena_cli.activations.collect import collect_projected
    from peftarena_cli.activations.csd import csd_rows_projected

    sets, n_tokens = {}, 0
    for role, ps, prompts, tokd in loaded:
        with progress(f"csd {role} (projected)") as bar:
            m = collect_projected(model, tok, prompts, {n: factors[n][1] for n in wanted}, batch_size=cfg.batch_size,
                                  max_length=cfg.max_length, callback=bar.callback, tokenized=tokd)
        m.source = ps.source
        sets[role] = m
        n_tokens += tokd.n_tokens
        extra[role] = {"source": ps.source, "n_prompts": len(prompts), "n_tokens": tokd.n_tokens,
                       "n_truncated": tokd.n_truncated}
    extra["memory_plan"] = {"groups": 1, "form": "projected"}
    dt = time.perf_counter() - t0
    log(f"collected projected statistics of {len(wanted)} modules over {n_tokens} tokens in {dt:.1f} s "
        f"({n_tokens / max(dt, 1e-9):.0f} tokens/s, 1 pass, peak RSS {peak_rss_mib():.0f} MiB)")
    rows = []
    for n in wanted:
        rows.extend(csd_rows_projected(n, module_layer(n), module_kind(n), factors[n], sets, alphas))
    df = _in_module_order(pd.DataFrame(rows), wanted)
    return CsdResult(_with_form(df, "projected"), {}, base_id, ft.identity(), extra, dev, None)


def _csd_wanted(ft, names: list) -> list:
    """The modules csd reports on: those the fine-tune changes among the collected ones."""
    covered = set(names)
    return [n for n in ft.module_names() if n in covered]


def _in_module_order(df, wanted: list):
    """Rows of per-group tables in the order one pass gives (the modules' canonical order)."""
    from peftarena_cli.artifacts.keys import canonical_order

    pos = {n: i for i, n in enumerate(canonical_order(wanted))}
    key = df["module"].map(pos)
    return df.iloc[key.argsort(kind="stable")].reset_index(drop=True)


# ------------------------------------------------------------------------------------------ act-geom


@dataclass
class ActGeomConfig:
    """What `peftarena act-geom` does, as data. ``prompts``: prompt-set specs (each its own rows);
    ``sums``: saved sums files to merge instead (no forward pass). ``keep_sums`` returns every
    set's sums (to be saved); a ``shard`` run returns only the sums."""

    base: str | None = None
    adapter: str | None = None
    prompts: list = field(default_factory=list)
    sums: list = field(default_factory=list)
    keep_sums: bool = False
    gram_sample: int = 0
    accum_dtype: str = "float64"
    modules: list | None = None
    n: int | None = None
    text_key: str | None = None
    chat: bool = False
    max_length: int = 512
    batch_size: int = 8
    shard: str | None = None
    device: str = "auto"
    dtype: str = "float32"
    seed: int = 0
    max_memory: int | str | None = None  # bytes (or "12G"); None: derived from the machine (budget.py)

    def validate(self) -> None:
        from peftarena_cli.activations.prompts import parse_shard

        sh = parse_shard(self.shard)
        if self.accum_dtype not in ("float64", "float32"):
            raise UsageError(f"unknown --accum-dtype {self.accum_dtype!r}", hint="use float64 or float32")
        if self.sums and self.prompts:
            raise UsageError("pass --prompts or --sums, not both")
        if not self.sums and not self.prompts:
            raise UsageError("no prompt set given", hint="pass --prompts P (repeatable), or --sums FILE to merge shards")
        if not self.sums and (self.base is None or self.adapter is None):
            raise UsageError("BASE and ADAPTER are needed to run the models",
                             hint="peftarena act-geom BASE ADAPTER --prompts P")
        if sh and not self.keep_sums:
            raise UsageError("--shard writes partial sums and needs --save-sums FILE",
                             hint="merge the shards later with --sums s1.st --sums s2.st ...")
        if sh and self.gram_sample:
            raise UsageError("--gram-sample cannot be combined with --shard (the sample is not additive)")
        if self.sums and self.gram_sample:
            raise UsageError("--gram-sample needs the activations: run with --prompts")


@dataclass
class ActGeomResult:
    table: object | None  # DataFrame, one row per (prompt set, module); None for a --shard run
    sums: dict  # {set: {module: PairSums}} with keep_sums, else {}
    sums_meta: dict  # what a sums file records about the run
    inputs: dict  # role -> (spec, identity)
    extra: dict
    device: str | None
    plan: object = None  # the budget.Plan the sums were collected under (None with --sums)


def metrics_table(sets: dict, samples: dict | None = None, rows: list | None = None, workers: int | None = None):
    """The act-geom table: one row per (prompt set, module); ``rows`` = rows already computed;
    ``workers`` modules' metrics at once (default: torch's thread count)."""
    import pandas as pd

    from peftarena_cli.activations.metrics import module_rows

    rows = list(rows or [])
    for sname, mods in sets.items():
        rows.extend(module_rows(sname, mods, (samples or {}).get(sname), workers=workers))
    return pd.DataFrame(rows)


def check_sums_inputs(meta: dict, base: str | None, adapter: str | None) -> None:
    """Refuse BASE/ADAPTER that are not the ones a sums file was collected with."""
    for role, spec in (("base", base), ("adapter", adapter)):
        if spec is not None and meta.get(f"{role}_identity"):
            from peftarena_cli.activations.moments import weights_fingerprint
            from peftarena_cli.artifacts.adapters import is_adapter_path, load_adapter
            from peftarena_cli.artifacts.safetensors_io import resolve_model

            full = role == "base" or not is_adapter_path(spec)
            ident = weights_fingerprint(resolve_model(spec)) if full else load_adapter(spec).identity()
            if ident != meta[f"{role}_identity"]:
                raise IncompatibleInputs(f"the sums were collected with another {role} than {spec!r}")


def run_act_geom(cfg: ActGeomConfig, progress=_NoProgress, log=_quiet, warn=_quiet) -> ActGeomResult:
    """act-geom per module and prompt set (or merged sums files)."""
    from peftarena_cli.activations.prompts import parse_shard

    cfg.validate()
    shard = parse_shard(cfg.shard)
    extra: dict = {"shard": cfg.shard, "accum_dtype": cfg.accum_dtype, "gram_sample": cfg.gram_sample}
    if cfg.sums:
        return _act_geom_from_sums(cfg, extra, log)
    import torch

    from peftarena_cli.activations.capture import linear_module_names
    from peftarena_cli.artifacts.keys import select_modules
    from peftarena_cli.activations.collect import collect_pair_sums
    from peftarena_cli.activations.metrics import module_rows
    from peftarena_cli.activations.moments import weights_fingerprint
    from peftarena_cli.artifacts.adapters import is_adapter_path, load_adapter
    from peftarena_cli.artifacts.loading import attach_adapter, load_model, pick_device

    dev = pick_device(cfg.device)
    # ADAPTER is a PEFT adapter, or a full fine-tuned model (a second model run on the same batches)
    ad = load_adapter(cfg.adapter) if is_adapter_path(cfg.adapter) else None
    model, tok, ref = load_model(cfg.base, dtype=cfg.dtype, device=dev)
    model1 = None
    if ad is None:
        model1, _, ref1 = load_model(cfg.adapter, dtype=cfg.dtype, device=dev)
        check_same_architecture(model, model1, cfg.base, cfg.adapter)
    names = select_modules(linear_module_names(model), cfg.modules)
    loaded = []
    for spec in cfg.prompts:  # load every prompt set before the long part
        loaded.append((spec, *prepare_prompts(spec, tok, n=cfg.n, seed=cfg.seed, text_key=cfg.text_key, chat=cfg.chat,
                                              shard=shard, max_length=cfg.max_length, warn=warn)))
    plan = act_geom_plan(model, names, [t for *_, t in loaded], cfg, dev)
    log(plan.describe())
    pm = attach_adapter(model, ad) if ad is not None else model
    inputs = {"base": (cfg.base, weights_fingerprint(ref)),
              "adapter": (cfg.adapter, ad.identity() if ad is not None else weights_fingerprint(ref1))}
    acc = torch.float64 if cfg.accum_dtype == "float64" else torch.float32
    kept: dict = {}
    samples: dict = {}
    rows: list = []  # metric rows of prompt sets whose sums were already released
    labels: list = []
    t0 = time.perf_counter()
    total = 0
    for spec, ps, plist, tokd in loaded:
        label = ps.name if ps.name not in labels else spec
        labels.append(label)
        set_rows: list = []
        for gi, group in enumerate(plan.groups):
            what = f"act-geom {label}" + (f" (group {gi + 1}/{plan.passes})" if plan.passes > 1 else "")
            with progress(what) as bar:
                s, sample = collect_pair_sums(pm, tok, plist, group, batch_size=cfg.batch_size,
                                              max_length=cfg.max_length, accum_dtype=acc, gram_sample=cfg.gram_sample,
                                              seed=cfg.seed, callback=bar.callback, tokenized=tokd, model1=model1,
                                              stop_after=plan.stop_after[gi])
            if cfg.keep_sums:  # one group (the plan holds every module at once)
                kept[label] = s
                if sample is not None:
                    samples[label] = sample
            else:
                # metrics now, then the sums go: peak memory is one group's sums, not all of them
                set_rows.extend(module_rows(label, s, sample, workers=plan.workers))
                del s, sample
                if plan.passes > 1:
                    _release()
        pos = {n: i for i, n in enumerate(names)}
        rows.extend(sorted(set_rows, key=lambda r: pos[r["module"]]))
        total += tokd.n_tokens
        extra[f"set:{label}"] = {"source": ps.source, "n_prompts": len(plist), "n_tokens": tokd.n_tokens,
                                 "n_truncated": tokd.n_truncated}
    extra["memory_plan"] = {"groups": plan.passes, "budget_bytes": plan.budget, "estimated_peak_bytes": plan.peak}
    dt = time.perf_counter() - t0
    log(f"act-geom: {len(names)} modules × {len(labels)} prompt set(s), {total} tokens in {dt:.1f} s "
        f"({total / max(dt, 1e-9):.0f} tokens/s through both models, {plan.passes} pass(es) per set, "
        f"peak RSS {peak_rss_mib():.0f} MiB)")
    meta = {"base": cfg.base, "adapter": cfg.adapter, "base_identity": inputs["base"][1],
            "adapter_identity": inputs["adapter"][1], "shard": cfg.shard}
    df = None
    if not shard:
        df = metrics_table(kept, samples, rows, workers=plan.workers)
    return ActGeomResult(df, kept, meta, inputs, extra, dev, plan)


METRIC_WORK = 80  # bytes per d² of one module's metric phase (float64 covariances, two eigendecompositions)


def act_geom_plan(model, names: list, tokenized: list, cfg: ActGeomConfig, device: str):
    """The memory plan of an act-geom collection (see :mod:`peftarena_cli.activations.budget`)."""
    import torch

    from peftarena_cli.activations.budget import Unit, plan_groups, resolve_budget
    from peftarena_cli.activations.capture import probe_modules

    probe = probe_modules(model, names)
    budget, source = resolve_budget(cfg.max_memory, device)
    a = 8 if cfg.accum_dtype == "float64" else 4
    mb = _dtype_bytes(cfg.dtype)
    T = max(_batch_tokens(t, cfg.batch_size)[0] for t in tokenized)
    padded = max(_batch_tokens(t, cfg.batch_size)[1] for t in tokenized)
    n_tok = max(t.n_tokens for t in tokenized)
    n_sets = len(tokenized) if cfg.keep_sums else 1  # kept sums: every set's at once
    fwd = 2 * _forward_bytes(probe, padded, mb)  # two models' passes
    units = []
    for n in probe.order:
        d = probe.shape[n][0]
        hold = ((6 * d * d + 2 * d) * a + n_tok * a + (2 * min(cfg.gram_sample, n_tok) * d * 8)) * n_sets
        units.append(Unit([n], hold=hold, stream=T * d * mb, work=max(40 * T * d + fwd, METRIC_WORK * d * d)))
    widest = max((probe.shape[n][0] for n in names), default=0)
    plan = plan_groups(units, budget, what="act-geom", source=source, keep_all=cfg.keep_sums,
                       prompt_sets=len(tokenized), keep_all_reason="--save-sums",
                       metric_work=METRIC_WORK * widest * widest, max_workers=torch.get_num_threads())
    return _finish(plan, probe, names)


def _act_geom_from_sums(cfg: ActGeomConfig, extra: dict, log) -> ActGeomResult:
    from peftarena_cli.activations.pair_sums import merge_sums_files

    sets, metas = merge_sums_files(cfg.sums)
    meta = metas[0]
    check_sums_inputs(meta, cfg.base, cfg.adapter)
    inputs = {role: (meta[role], meta.get(f"{role}_identity", "")) for role in ("base", "adapter") if meta.get(role)}
    if cfg.modules:
        from peftarena_cli.artifacts.keys import select_modules

        keep = set(select_modules(list(next(iter(sets.values()))), cfg.modules))
        sets = {s: {m: v for m, v in mods.items() if m in keep} for s, mods in sets.items()}
    extra["sums"] = [str(s) for s in cfg.sums]
    log(f"merged {len(cfg.sums)} sums file(s): "
        f"{', '.join(f'{s} ({next(iter(m.values())).n_tokens} tokens)' for s, m in sets.items())}")
    df = metrics_table(sets)
    return ActGeomResult(df, sets if cfg.keep_sums else {}, {"merged_from": [str(s) for s in cfg.sums]}, inputs,
                         extra, None)

