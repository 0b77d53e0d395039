"""Core entry point of the evaluation commands: :func:`run_eval` (``peftarena eval-target`` and
``eval-general``). ``peftarena drift``'s is :func:`peftarena_cli.interpolation.drift_run.run_drift`
(it opens a path model, and the interpolation package sits above this one).

Each takes a config dataclass and returns its tables as data; nothing here prints or writes a
table. The CLI (``peftarena_cli/cli/evaluate.py``) parses its options into a config, calls the
cheap checks, checks its outputs, calls :func:`run_eval`, shows progress and writes the results;
Python users call the same function. Optional callables report what happens:

* ``progress(description)`` returns a context manager whose value has a
  ``callback(done, total, label)`` (the CLI passes its progress-bar class); one per model evaluated;
* ``log(msg)`` for notes (load and generation timings), ``warn(msg)`` for warnings.

The cheap checks (:func:`check_eval`, :func:`check_eval_backend`) run again inside
:func:`run_eval`, so a Python caller gets the same usage errors as the command line. The CLI
calls them first, in the order its tests pin, with its own output checks in between, so nothing is
loaded before every input and output has passed.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack, nullcontext
from dataclasses import dataclass, field
from pathlib import Path

from peftarena_cli.errors import DataError, UsageError
from peftarena_cli.memory import peak_rss_mib

EVAL_KINDS = ("target", "general")


def _no_log(msg: str) -> None:
    return None


def _no_progress(description: str):
    return nullcontext(type("NoBar", (), {"callback": staticmethod(lambda *a, **k: None)})())


# ------------------------------------------------------------------------------------------ eval


@dataclass
class EvalConfig:
    """What ``peftarena eval-target`` (``kind="target"``) or ``eval-general`` (``kind="general"``)
    asks for (docs/eval.md). ``task`` is the target task spec, ``suite`` the general suite spec;
    None takes the command's default (:data:`peftarena_cli.tasks.benchmarks.DEFAULT_SPECS`).
    ``responses``: score completions made elsewhere (a per-sample Parquet of an earlier run, or
    JSONL) instead of generating; no model is loaded then."""

    kind: str
    base: str | None = None
    adapters: Sequence[str] = ()
    include_base: bool = False
    task: str | None = None
    suite: str | None = None
    limit: int | str | dict | None = None       # target: N; general: N or per part (tasks.limits.parse_limit)
    n_samples: int | None = None                # target only; None: the protocol's
    temperature: float | None = None            # target only; None: the protocol's
    ks: str | None = None                       # target only: pass@k / maj@k values, "1,2,4"
    protocol: str | None = None
    chat_template: str = "auto"                 # auto (by the protocol), on, off (docs/eval.md, "Chat template")
    prompt_type: str = "auto"                   # target only: the study's math prompt type (docs/eval.md, "Math prompt types")
    batch_size: int | None = None
    max_new_tokens: int | None = None
    backend: str = "hf"
    base_url: str | None = None                 # --backend openai: the server's address
    served_model: str | None = None             # --backend openai: the served model's name (None: its only one)
    concurrency: int = 8                        # --backend openai: requests in flight
    request_timeout: float = 600.0              # --backend openai: seconds per request
    retries: int = 3                            # --backend openai: retries of a transient failure
    merge: bool = True
    responses: str | Path | None = None
    device: str = "auto"
    dtype: str = "float32"
    seed: int = 0

    @property
    def spec(self) -> str:
        """The task (target) or suite (general) spec, the default when none was given."""
        return _spec(self.task if self.kind == "target" else self.suite, self.kind)

    @property
    def command(self) -> str:
        return f"eval-{self.kind}"


@dataclass
class ModelRun:
    """One model evaluated: its label (``base`` or the adapter as given) and throughput."""

    label: str
    generated_tokens: int = 0
    seconds: float = 0.0
    tokens_per_second: float = 0.0
    peak_rss_mib: float = 0.0


@dataclass
class EvalResult:
    """The tables of an evaluation and what their provenance records.

    ``per_sample`` and ``summary`` carry a leading ``model`` column when a model was evaluated (not
    when ``responses`` were scored). ``inputs`` is {role: (spec, identity)}; ``extra`` the
    provenance's extra fields (``world_size`` included); ``command``, ``seed``, ``dtype`` and
    ``device`` its other fields (dtype and device are None for scored responses)."""

    per_sample: object
    summary: object
    command: str
    inputs: dict = field(default_factory=dict)
    extra: dict = field(default_factory=dict)
    seed: int = 0
    dtype: str | None = None
    device: str | None = None
    runs: list = field(default_factory=list)     # ModelRun per evaluated model, in order
    load_seconds: float = 0.0

    def provenance(self):
        """The :class:`~peftarena_cli.artifacts.tables.Provenance` both tables are written with."""
        from peftarena_cli.artifacts.tables import Provenance

        prov = Provenance(command=self.command, seed=self.seed, dtype=self.dtype, device=self.device,
                          extra=dict(self.extra))
        if "served" in self.extra:  # a --base-url may carry credentials: the command line is kept without them
            from peftarena_cli.evaluation.openai_backend import strip_credentials

            prov.argv = [strip_credentials(a) for a in prov.argv]
        for role, (spec, ident) in self.inputs.items():
            prov.add_input(role, spec, ident)
        return prov


def check_k_option(k) -> None:
    """``ks`` is a comma list of positive integers (checked against the samples per item later)."""
    if k is None:
        return
    parts = [x.strip() for x in str(k).split(",")]  # an empty entry (1,,2) is refused, not skipped
    if not all(x.isdigit() and int(x) >= 1 for x in parts):
        raise UsageError(f"--k {k!r}: expected positive integers such as 1,2,4", hint="e.g. --k 1,4 (each k <= -n)")


def check_eval(cfg: EvalConfig) -> None:
    """The option checks that read no file: the kind, ``ks``, the protocol's name, the chat-template
    mode and the generation overrides' bounds (usage errors, before any allocation)."""
    from peftarena_cli.evaluation.protocols import check_generation_options, get_protocol
    from peftarena_cli.tasks.prompting import check_chat_template_mode

    if cfg.kind not in EVAL_KINDS:
        raise UsageError(f"unknown evaluation kind {cfg.kind!r}", hint="use target or general")
    if cfg.kind == "target":
        check_k_option(cfg.ks)
    get_protocol(cfg.protocol)  # an unknown name is a usage error listing the known ones
    check_chat_template_mode(cfg.chat_template)
    if cfg.kind == "target":
        from peftarena_cli.tasks.math_prompts import check_prompt_type

        check_prompt_type(cfg.prompt_type)
        check_generation_options(cfg.max_new_tokens, cfg.n_samples, cfg.temperature)
    else:
        check_generation_options(cfg.max_new_tokens)
    check_served(cfg)


def check_served(cfg: EvalConfig) -> None:
    """The served-model options (docs/eval.md, "Backends"): ``--base-url`` with ``--backend openai``
    and only then (no network unless asked); no ``--adapter``: the served model is what is evaluated."""
    if cfg.backend != "openai":
        if cfg.base_url is not None or cfg.served_model is not None:
            raise UsageError("--base-url and --served-model go with --backend openai",
                             hint="add --backend openai to evaluate a served model")
        return
    if cfg.responses is not None:
        return  # scoring completions made elsewhere: nothing is generated
    if not cfg.base_url:
        raise UsageError("--backend openai needs --base-url", hint="e.g. --base-url http://localhost:8000")
    from peftarena_cli.evaluation.openai_backend import parse_base_url

    parse_base_url(cfg.base_url)
    if cfg.adapters:
        raise UsageError("--adapter cannot be applied to a served model (--backend openai evaluates the model "
                         "the server serves)",
                         hint="serve the merged model, or the adapter by name (vllm serve --lora-modules NAME=DIR) "
                              "and pass --served-model NAME")
    if int(cfg.concurrency) < 1 or int(cfg.retries) < 0 or not float(cfg.request_timeout) > 0:
        raise UsageError("--concurrency must be at least 1, --retries at least 0 and --request-timeout positive")


def check_eval_backend(backend: str) -> None:
    """A known backend, installed, and not vllm under torchrun. Under torchrun the ranks other than
    0 discard their writes (rank 0 writes the gathered result; evaluation/distributed.py)."""
    from peftarena_cli.evaluation.distributed import check_backend, mark_writer

    check_backend(backend)
    mark_writer()
    if backend in ("hf", "openai"):
        return
    if backend != "vllm":
        raise UsageError(f"unknown backend {backend!r}", hint="use hf, vllm or openai")
    from peftarena_cli.evaluation.vllm_backend import import_vllm

    import_vllm()  # a clear error before anything is loaded when it is not installed


def _load_for_backend(base, dtype, device, backend, seed, served=None):
    """(model, tokenizer, ref): the HF model, or a vLLM engine or a served model (``served``: the
    OpenAIBackend's keyword arguments) standing in for it; a served model loads only the tokenizer."""
    from peftarena_cli.artifacts.loading import load_model

    if backend == "openai":
        from peftarena_cli.artifacts.loading import load_tokenizer
        from peftarena_cli.artifacts.safetensors_io import resolve_model
        from peftarena_cli.evaluation.openai_backend import OpenAIBackend

        ref = resolve_model(base)
        tok = load_tokenizer(ref)  # the prompts are rendered here, with the base's tokenizer and chat template
        return OpenAIBackend(**(served or {})), tok, ref
    if backend != "vllm":
        return load_model(base, dtype=dtype, device=device)
    from peftarena_cli.artifacts.loading import config_dir, load_tokenizer
    from peftarena_cli.artifacts.safetensors_io import resolve_model
    from peftarena_cli.evaluation.vllm_backend import VllmModel

    ref = resolve_model(base)
    return VllmModel(config_dir(ref), dtype="auto" if dtype in (None, "auto") else dtype, seed=seed), load_tokenizer(ref), ref


def _run_models(cfg: EvalConfig, device: str, evaluate, progress, log, result: EvalResult, warn=_no_log):
    """Load the base once; evaluate it and/or each adapter in turn (merged into the weights by PEFT's
    merge unless ``cfg.merge`` is false). Yields (model label, per_sample, summary); fills
    ``result``'s inputs, runs and load time."""
    from peftarena_cli.artifacts.adapters import check_adapter_fits, load_adapter
    from peftarena_cli.artifacts.loading import applied_adapter

    base, adapters, backend = cfg.base, list(cfg.adapters or []), cfg.backend
    loaded = {}  # adapters are small beside the base: each is read once, here, and used below
    if adapters:
        # every adapter must fit the base before the base is loaded (its headers only)
        from peftarena_cli.artifacts.safetensors_io import WeightSource, resolve_model

        base_weights = WeightSource.from_ref(resolve_model(base))
        for label in adapters:
            loaded[label] = load_adapter(label)
            check_adapter_fits(loaded[label], base_weights, base, label)
    t = time.perf_counter()
    served = None
    if backend == "openai":
        served = dict(base_url=cfg.base_url, model=cfg.served_model, concurrency=cfg.concurrency,
                      request_timeout=cfg.request_timeout, retries=cfg.retries, log=warn)
    model, tok, ref = _load_for_backend(base, cfg.dtype, device, backend, cfg.seed, served)
    result.load_seconds = time.perf_counter() - t
    inputs = result.inputs
    if backend == "openai":
        # the local weights are not what is evaluated: the base gives the tokenizer only, and the
        # served model is recorded by host, name and reported version (no URL path, no credentials)
        d = model.describe()
        log(f"serving {d['served_model']} at {d['host']} ({d['server_version'] or d['server'] or 'version not reported'})")
        inputs.update(tokenizer=(base, ref.identity()),
                      served=(f"{d['host']}/{d['served_model']}", (d["server_version"] or d["server"] or "unknown").replace("@", " ")))
        result.extra["served"] = d
    else:
        log(f"loaded {base} in {result.load_seconds:.1f} s" + (" (vllm)" if backend == "vllm" else ""))
        from peftarena_cli.artifacts.identity import weights_fingerprint

        # base_weights: a fingerprint of the weights themselves (the path identity is the same for two
        # checkpoints of one architecture), so report can tell results of different bases apart
        inputs.update(base=(base, ref.identity()), base_weights=(base, weights_fingerprint(ref)))
    runs = (["base"] if cfg.include_base or not adapters else []) + adapters
    for i, label in enumerate(runs):
        ad = None if label == "base" else loaded[label]
        if ad is not None:
            inputs[f"adapter{i}"] = (label, ad.identity())
        m = model
        if backend == "vllm":
            model.use_adapter(ad, name=f"a{i}")
        elif backend == "openai" and ad is not None:  # pragma: no cover - refused by check_served
            raise UsageError("--adapter cannot be applied to a served model")
        stats: dict = {}
        t = time.perf_counter()
        with ExitStack() as stack:
            if ad is not None and backend == "hf":
                # PEFT's merge into the loaded weights, restored afterwards (docs/eval.md, "Adapters")
                m = stack.enter_context(applied_adapter(model, ad, adapter_name=f"a{i}", merge=cfg.merge))
            with progress(f"{cfg.command} {label}") as bar:
                ps, summ = evaluate(m, tok, bar.callback, stats)
        secs = time.perf_counter() - t
        run = ModelRun(label, stats.get("generated_tokens", 0), secs, stats.get("tokens_per_second", 0.0),
                       peak_rss_mib())
        result.runs.append(run)
        log(f"{label}: {run.generated_tokens} tokens in {secs:.1f} s "
            f"({run.tokens_per_second:.1f} tok/s), peak RSS {run.peak_rss_mib:.0f} MiB")
        yield label, ps, summ


def _finish(result: EvalResult, frames, summaries, extra: dict, warn) -> EvalResult:
    """Concatenate the tables; record the protocols and overrides that produced the rows (and the
    world size) in the provenance's extra fields."""
    import pandas as pd

    from peftarena_cli.evaluation.distributed import world

    per = pd.concat(frames, ignore_index=True)
    summ = pd.concat(summaries, ignore_index=True)
    extra = dict(extra, protocols=sorted({str(p) for p in summ["protocol"].dropna() if p}),
                 overrides=sorted({str(o) for o in summ["overrides"].dropna() if o}))
    moved = summ[(summ["protocol"] != summ["generated_under"]) & (summ["generated_under"] != "external")]
    if not moved.empty:
        r = moved.iloc[0]
        warn(f"re-scored under {r['protocol']}, but the completions were generated under {r['generated_under']} "
             "(prompts and budgets differ); the summary's generated_under column says so")
    result.per_sample, result.summary = per, summ
    result.extra = dict(extra, world_size=world()[1])  # > 1: a torchrun data-parallel run
    return result


def _score_responses(cfg: EvalConfig, warn) -> EvalResult:
    """Score (or re-score) the completions of ``cfg.responses``; no model is loaded."""
    from peftarena_cli.evaluation.api import read_responses, rescore_table, responses_task, score_responses

    path = Path(cfg.responses)
    df, recs = read_responses(path)
    if df is not None:
        if cfg.kind == "target":
            per, summ = rescore_table(df, ks=cfg.ks, kind="target", protocol=cfg.protocol)
        else:
            per, summ = rescore_table(df, kind="general", protocol=cfg.protocol)
    else:
        t, aligned = responses_task(cfg.kind, cfg.spec, path, recs, limit=cfg.limit, seed=cfg.seed,
                                    protocol=cfg.protocol)
        if aligned:  # the records are the task's own: the i-th record answers the i-th item
            recs = [dict(r, id=it.id) for r, it in zip(recs, t.items)]
        if cfg.kind == "target":
            per, summ = score_responses(t, recs, ks=cfg.ks, kind="target", protocol=cfg.protocol)
        else:
            per, summ = score_responses(t, recs, kind="general")  # the task is under the protocol already
    res = EvalResult(None, None, cfg.command, inputs={"responses": (str(cfg.responses), "")}, seed=cfg.seed)
    spec_key = "task" if cfg.kind == "target" else "suite"
    return _finish(res, [per], [summ], {spec_key: cfg.spec, "responses": str(cfg.responses), "protocol": cfg.protocol},
                   warn)


def run_eval(cfg: EvalConfig, *, progress: Callable | None = None, log: Callable[[str], None] | None = None,
             warn: Callable[[str], None] | None = None) -> EvalResult:
    """Evaluate ``cfg.base`` and/or its adapters (one loaded base, each adapter applied in turn), or
    score ``cfg.responses``; returns the per-sample rows and the summary of every model."""
    progress, log, warn = progress or _no_progress, log or _no_log, warn or _no_log
    check_eval(cfg)
    check_eval_backend(cfg.backend)
    from peftarena_cli.evaluation.api import (check_ks, evaluate_general, evaluate_target, load_general_tasks,
                                              load_target_tasks, parse_limit)

    if cfg.kind == "general":
        parse_limit(cfg.limit)  # a malformed limit is a usage error before anything is read
    if cfg.responses is not None:
        return _score_responses(cfg, warn)
    if cfg.base is None:
        raise UsageError("missing BASE model", hint="pass a base model, or --responses FILE to score completions")
    from peftarena_cli.artifacts.loading import pick_device
    from peftarena_cli.evaluation.distributed import setup_device
    from peftarena_cli.tasks.prompting import check_chat_template_mode, require_chat_template

    spec = cfg.spec
    mode = check_chat_template_mode(cfg.chat_template)
    if mode == "on":  # a tokenizer without a chat template is refused before any model is loaded
        from peftarena_cli.artifacts.loading import load_tokenizer
        from peftarena_cli.artifacts.safetensors_io import resolve_model

        require_chat_template(load_tokenizer(resolve_model(cfg.base)), mode, cfg.base)
    rules: dict = {}  # the rule that decided each task's chat template (the same for every adapter of the base)
    ptypes: dict = {}  # the study math tasks' prompt types and the rule that chose each
    if cfg.kind == "target":
        # validate before loading the model: the tasks, the protocol's reach and the overrides
        tasks = load_target_tasks(spec, cfg.limit, cfg.seed, cfg.protocol, cfg.n_samples, cfg.temperature,
                                  cfg.max_new_tokens)
        if not tasks:  # pragma: no cover
            raise DataError("empty task")
        check_ks(cfg.ks, min(t.n_samples for t in tasks))
        _check_prompt_type(cfg, tasks)
        if any(t.n_samples > 1 and t.temperature <= 0 for t in tasks):
            warn("-n > 1 with greedy decoding gives identical samples; pass --temperature > 0 to sample")
        one = tasks[0] if len(tasks) == 1 else spec

        def evaluate(m, tok, cb, stats):
            out = evaluate_target(m, tok, task=one, limit=cfg.limit, n_samples=cfg.n_samples,
                                  temperature=cfg.temperature, ks=cfg.ks, seed=cfg.seed, batch_size=cfg.batch_size,
                                  progress=cb, stats=stats, max_new_tokens=cfg.max_new_tokens, protocol=cfg.protocol,
                                  chat_template=mode, model_name=cfg.base, prompt_type=cfg.prompt_type)
            rules.update(stats.get("chat_rules") or {})
            ptypes.update(stats.get("prompt_types") or {})
            return out

        extra = {"task": spec, "n_samples": cfg.n_samples, "temperature": cfg.temperature, "limit": cfg.limit,
                 "protocol": cfg.protocol, "prompt_type": cfg.prompt_type}
    else:
        load_general_tasks(spec, cfg.limit, cfg.seed, cfg.protocol, cfg.max_new_tokens)  # validate before loading

        def evaluate(m, tok, cb, stats):
            out = evaluate_general(m, tok, suite=spec, limit=cfg.limit, seed=cfg.seed, batch_size=cfg.batch_size,
                                   progress=cb, stats=stats, max_new_tokens=cfg.max_new_tokens, protocol=cfg.protocol,
                                   chat_template=mode, model_name=cfg.base)
            rules.update(stats.get("chat_rules") or {})
            return out

        extra = {"suite": spec, "limit": cfg.limit, "protocol": cfg.protocol}
    if cfg.backend == "openai":  # the server's device and dtype: the provenance's served entry says whose
        dev, res = None, EvalResult(None, None, cfg.command, seed=cfg.seed)
    else:
        dev = setup_device(pick_device(cfg.device))  # under torchrun: cuda:LOCAL_RANK
        res = EvalResult(None, None, cfg.command, seed=cfg.seed, dtype=cfg.dtype, device=dev)
    frames, summaries = [], []
    for label, ps, summ in _run_models(cfg, dev, evaluate, progress, log, res, warn):
        ps.insert(0, "model", label)
        summ.insert(0, "model", label)
        frames.append(ps)
        summaries.append(summ)
    extra.update(chat_template=mode, chat_template_rules=dict(rules), **res.extra)
    if ptypes:
        extra["math_prompt_types"] = dict(ptypes)
    if cfg.backend != "hf":
        extra["backend"] = cfg.backend
    return _finish(res, frames, summaries, extra, warn)


def _check_prompt_type(cfg: EvalConfig, tasks) -> None:
    """Before the model loads: a ``--prompt-type`` other than auto needs a study math task to
    format, and ``boxed`` a base whose name tells the family (tasks/math_prompts.py ``pick``)."""
    from peftarena_cli.errors import IncompatibleInputs
    from peftarena_cli.tasks import benchmarks
    from peftarena_cli.tasks.math_prompts import check_prompt_type, pick
    from peftarena_cli.tasks.prompting import model_names

    choice = check_prompt_type(cfg.prompt_type)
    if choice == "auto":
        return
    if not any(t.prompt_type for t in tasks):
        takes = [b.name for b in benchmarks.REGISTRY.values() if "study" in b.protocols and b.protocols["study"].prompt_type]
        raise IncompatibleInputs(f"--prompt-type {choice}: no task here has a math prompt type",
                                 hint=f"it formats the study protocol's math benchmarks ({', '.join(takes)})")
    pick(choice, model_names(cfg.base))


def _spec(given: str | None, part: str) -> str:
    """A task or suite spec as given, else the default of its part (target or general)."""
    from peftarena_cli.tasks.benchmarks import DEFAULT_SPECS

    return DEFAULT_SPECS[part] if given is None else given
