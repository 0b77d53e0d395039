"""The evaluation API (used by the CLI, interpolate, rewind and the activation commands).

* :func:`evaluate_target` — the target (plasticity) score on one loaded model;
* :func:`evaluate_general` — the general (stability) score;
* :func:`builtin_prompts` — prompt texts of the built-in suites, as prompt sets;
* :func:`score_responses` / :func:`rescore_table` — scoring completions made elsewhere;
  :func:`read_responses` reads a responses file and :func:`responses_task` finds the task its
  records answer.

They take an already-loaded model (a transformers model or a PeftModel whose weights may change in
place between calls) and never reload it. Each returns ``(per_sample, summary)`` DataFrames;
summary columns are ``task, metric, value, n`` with values in percent, their intervals, and the
protocol that produced each row (``protocol``, ``overrides``, ``generated_under``; docs/eval.md).

Under torchrun (``WORLD_SIZE`` > 1) every task's items are sharded over the ranks and gathered
back in order (:mod:`peftarena_cli.evaluation.distributed`): each rank returns the single-process
result, and callers need no change.
"""

from __future__ import annotations

import json

import pandas as pd

from peftarena_cli import scorer_kinds
from peftarena_cli.errors import DataError, IncompatibleInputs
from peftarena_cli.evaluation.scoring import score_rows, summarize, to_frame
from peftarena_cli.tasks import benchmarks
from peftarena_cli.tasks.limits import parse_limit, part_limit

SUMMARY_COLUMNS = ["task", "metric", "value", "n", "se", "ci_low", "ci_high", "estimator", "note", "protocol",
                   "overrides", "generated_under", "chat_template"]
# The general aggregate's name says which measure it is: the study's mean(IFEval, BBH, NQ-open),
# the built-in procedural suite's mean, or the mean of some other set of parts.
GENERAL_AGGREGATES = ("general_score", "builtin_general_score", "general_mean")
BUILTIN_NAMES = benchmarks.prompt_sets()  # the built-in prompt sets of builtin_prompts


def _offset_progress(progress, offset: int, total: int):
    if progress is None:
        return None
    return lambda done, _t=None, label="": progress(offset + done, total, label)


def run_task(model, tokenizer, task, *, seed=0, batch_size=None, progress=None):
    """Generate and score one runnable :class:`~peftarena_cli.tasks.spec.Task` (a protocol
    applied: :func:`peftarena_cli.evaluation.protocols.apply`); returns per-sample rows."""
    from peftarena_cli.evaluation.backend import Generation
    from peftarena_cli.evaluation.distributed import generate, sharded_map

    prompts = [task.render(tokenizer, it) for it in task.items]
    if task.loglik:  # multiple choice by log-likelihood (lm-eval's medical tasks): the "completion" is the argmax choice
        import time

        from peftarena_cli.evaluation.loglik import choice_logliks

        L = "ABCDEFGHIJ"
        choices = [list(it.meta["options"]) if task.loglik == "options" else list(L[:len(it.meta["options"])])
                   for it in task.items]
        t0 = time.perf_counter()
        conts = [[" " + c for c in cs] for cs in choices]
        from peftarena_cli.evaluation.backend import GenerationBackend

        if isinstance(model, GenerationBackend):  # a backend computes them its own way, or refuses the task
            ll = model.choice_logliks(tokenizer, prompts, conts, progress, task.name)[0]
        else:
            ll, _ = sharded_map(len(prompts), lambda idx: (choice_logliks(
                model, tokenizer, [prompts[i] for i in idx], [conts[i] for i in idx], progress, task.name)[0], None),
                _device_type(model))
        best = [cs[max(range(len(cs)), key=lambda j: row[j])] for cs, row in zip(choices, ll)]
        gen = Generation([[b] * task.n_samples for b in best], [[0] * task.n_samples for _ in best],
                         seconds=time.perf_counter() - t0)
        return score_rows(task, prompts, gen.texts, gen.n_tokens), gen
    gen = generate(model, tokenizer, prompts, max_new_tokens=int(task.max_new_tokens), stop=task.stop,
                   temperature=task.temperature, n_samples=task.n_samples, seed=seed,
                   batch_size=batch_size, progress=progress, label=task.name)
    rows = score_rows(task, prompts, gen.texts, gen.n_tokens)
    return rows, gen


def _device_type(model) -> str:
    from peftarena_cli.evaluation.engine import _device

    try:
        return _device(model).type
    except AttributeError:  # a backend object, not a model
        return "cpu"


def check_ks(ks, n_samples):
    """``ks`` (pass@k / maj@k values, "1,2,4" or a list) parsed against ``n_samples`` samples per item:
    a k larger than n is an incompatible input (exit 1). None stays None."""
    from peftarena_cli.evaluation.metrics import parse_ks

    if ks is None:
        return None
    try:
        return parse_ks(ks, n_samples)
    except Exception as e:  # UsageError from parse_ks -> exit 1 here: k larger than n is a bad input
        raise IncompatibleInputs(str(e), hint="pass -n (samples) at least as large as the largest k") from None


def _aggregate(summary: list[dict], row: dict, parts: list[tuple[str, str]]) -> dict:
    """An aggregate row (target_score, the general score) with its interval from its parts' primary rows
    (se = √(Σ se²) / P; docs/eval.md, "Intervals")."""
    from peftarena_cli.evaluation.intervals import aggregate_row
    from peftarena_cli.evaluation.scoring import primary_row

    prims = [primary_row(summary, sc, name) for sc, name in parts]
    out = aggregate_row(row["task"], row["metric"], row["value"], row["n"], prims, "mean of parts")
    labels = sorted({str(p.get("protocol")) for p in prims if p and p.get("protocol")})
    out["protocol"] = out["generated_under"] = "+".join(labels)
    out["overrides"] = "+".join(sorted({str(p.get("overrides") or "") for p in prims if p} - {""}))
    used = {p.get("chat_template") for p in prims if p}
    out["chat_template"] = used.pop() if len(used) == 1 else None  # mixed parts: no single value
    return out


def _stamp(rows: list[dict], protocol: str, overrides: str, generated_under: str | None = None,
           chat_template: bool | None = None) -> list[dict]:
    for r in rows:
        r.update(protocol=protocol, overrides=overrides, generated_under=generated_under or protocol,
                 chat_template=chat_template)
    return rows


def tasks_for_model(tasks, tokenizer, chat_template="auto", model=None, names=None, prompt_type="auto") -> list:
    """``tasks`` with their chat-template use decided for one model (docs/eval.md, "Chat
    template"): ``chat_template`` auto / on / off; the model's names for the study's name rule are
    ``names``, else those of the spec ``model``, else of the loaded model's config path. The study's
    math tasks first get their prompt type (``prompt_type``: auto, boxed or a type's name;
    docs/eval.md, "Math prompt types")."""
    from peftarena_cli.tasks.math_prompts import check_prompt_type
    from peftarena_cli.tasks.prompting import check_chat_template_mode, model_names, require_chat_template

    mode = check_chat_template_mode(chat_template)
    prompt_type = check_prompt_type(prompt_type)
    if names is None:
        names = model_names(model) if model is not None else []
    require_chat_template(tokenizer, mode, str(model or (names[0] if names else "the model")))
    return [t.for_model(mode, tokenizer, names, prompt_type) for t in tasks]


def _loaded_names(model) -> list[str]:
    """The names of an already-loaded model when no spec was given: its config's ``name_or_path``."""
    from peftarena_cli.tasks.prompting import model_names

    cfg = getattr(getattr(model, "model", model), "config", None)
    path = getattr(cfg, "name_or_path", None) or getattr(cfg, "_name_or_path", None)
    return model_names(path) if path else []


def chat_rules(tasks) -> dict:
    """{task: the rule that decided its chat-template use}, for the provenance."""
    return {t.name: t.chat_rule for t in tasks if t.chat_rule}


def prompt_types(tasks) -> dict:
    """{task: its math prompt type and the rule that chose it}, for the provenance (study math tasks only)."""
    return {t.name: f"{t.prompt_type} ({t.prompt_rule})" if t.prompt_rule else t.prompt_type
            for t in tasks if t.prompt_type}


def _protocol_tasks(tasks, protocol=None, n_samples=None, temperature=None, max_new_tokens=None):
    from peftarena_cli.evaluation.protocols import apply

    return [apply(t, protocol, max_new_tokens=max_new_tokens, n=n_samples, temperature=temperature) for t in tasks]


def load_target_tasks(task=benchmarks.DEFAULT_TARGET, limit=None, seed=0, protocol=None, n_samples=None, temperature=None,
                      max_new_tokens=None):
    """The runnable target tasks of a spec under ``protocol`` (default: the study's), with the
    explicit overrides applied and recorded."""
    from peftarena_cli.tasks.spec import Task
    from peftarena_cli.tasks.target_tasks import load_target_task

    if isinstance(task, Task):
        raw = [task.limited(limit)]
    else:
        specs = [s.strip() for s in str(task).split(",") if s.strip()]
        if not specs:
            raise DataError("no target task given", hint=f"pass --task {benchmarks.DEFAULT_TARGET} (or a benchmark name / file)")
        raw = [load_target_task(s, limit=limit, seed=seed) for s in specs]
    return _protocol_tasks(raw, protocol, n_samples, temperature, max_new_tokens)


def target_score_parts(tasks) -> list:
    """The tasks that target_score averages: under the study's protocol its target benchmarks
    (AIME24, AMC23, MATH-500; MedMCQA, MedQA, PubMedQA) when any is present, GSM8K and the
    built-in arith aside; otherwise every task."""
    from peftarena_cli.evaluation.protocols import STUDY

    study = [t for t in tasks if t.protocol == STUDY.label and t.name in STUDY.target_mean]
    return study or list(tasks)


def general_metric_name(task_names) -> str:
    """``general_score`` for exactly IFEval, BBH and NQ-open (the study's measure),
    ``builtin_general_score`` for built-in parts only, else ``general_mean``."""
    names = set(task_names)
    if names and names == set(benchmarks.study_general()):
        return "general_score"
    if names and names <= set(benchmarks.task_names("general", builtin=True)):
        return "builtin_general_score"
    return "general_mean"


def _runs(t) -> int:
    return t.n_samples if t.temperature > 0 else 1


def evaluate_target(model, tokenizer, task=benchmarks.DEFAULT_TARGET, limit=None, n_samples=None, temperature=None, ks=None, seed=0,
                    batch_size=None, progress=None, stats=None, max_new_tokens=None, protocol=None,
                    chat_template="auto", model_name=None, prompt_type="auto"):
    """Target score: per-sample rows and summary (avg@n, pass@k, maj@k, strict/flexible accuracy per
    task; ``task="target", metric="target_score"`` = the mean of the tasks' avg@n, in percent;
    :func:`target_score_parts` says which tasks).

    ``task``: "arith" (built in), a benchmark name, ``NAME=PATH``, a file, a comma-separated list
    of those, or a :class:`Task`. ``protocol`` (docs/eval.md) sets prompts, budgets, sampling and
    scoring of the benchmarks; ``n_samples``, ``temperature`` and ``max_new_tokens``, when given,
    override it (recorded in the ``overrides`` column). ``stats`` (a dict) receives throughput
    and ``chat_rules`` ({task: the rule that decided its chat template}). ``chat_template`` (auto,
    on, off) and ``model_name`` (the model's spec, for the study's name rule; default: the loaded
    model's config path) decide the chat template (the summary's ``chat_template`` column).
    ``prompt_type`` (auto, boxed or a type's name) formats the study's math problems
    (tasks/math_prompts.py; a type other than the protocol's is recorded in ``overrides``, and
    ``stats["prompt_types"]`` receives {task: type and rule}).
    """
    if n_samples is not None and int(n_samples) < 1:
        raise IncompatibleInputs(f"-n must be at least 1, got {n_samples}")
    tasks = load_target_tasks(task, limit, seed, protocol, n_samples, temperature, max_new_tokens)
    tasks = tasks_for_model(tasks, tokenizer, chat_template, model_name,
                            None if model_name is not None else _loaded_names(model), prompt_type)
    ks = check_ks(ks, min(t.n_samples for t in tasks))
    total = sum(len(t.items) * _runs(t) for t in tasks)
    frames, summary, primaries, off = [], [], {}, 0
    tokens, secs = 0, 0.0
    for t in tasks:
        rows, gen = run_task(model, tokenizer, t, seed=seed, batch_size=batch_size,
                             progress=_offset_progress(progress, off, total))
        off += len(t.items) * _runs(t)
        tokens, secs = tokens + gen.generated_tokens, secs + gen.seconds
        df = to_frame(rows)
        frames.append(df)
        srows, primaries[t.name] = summarize(df, t.scorer, t.name, ks)
        summary += _stamp(srows, t.protocol, t.overrides, chat_template=t.chat_template)
    parts = target_score_parts(tasks)
    summary.append(_aggregate(summary, {"task": "target", "metric": "target_score",
                                        "value": sum(primaries[t.name] for t in parts) / len(parts),
                                        "n": sum(len(t.items) for t in parts)}, [(t.scorer, t.name) for t in parts]))
    if stats is not None:
        stats.update(generated_tokens=tokens, seconds=secs, tokens_per_second=tokens / secs if secs else 0.0,
                     chat_rules=chat_rules(tasks), prompt_types=prompt_types(tasks))
    return pd.concat(frames, ignore_index=True), pd.DataFrame(summary, columns=SUMMARY_COLUMNS)


GENERAL_PARTS = benchmarks.general_specs()  # what --suite accepts by name


def load_general_tasks(suite=benchmarks.DEFAULT_GENERAL, limit=None, seed=0, protocol=None, max_new_tokens=None):
    """Tasks of a general suite spec: ``builtin`` (its 3 parts), ``builtin.ifeval`` / ``.bbh`` /
    ``.facts``, ``ifeval``, ``bbh``, ``nq_open`` (hub), each optionally ``=PATH`` (local files).
    ``limit``: None, N, or per part (:func:`parse_limit`)."""
    from peftarena_cli.tasks.builtin_general import BUILTIN_PARTS, builtin_task
    from peftarena_cli.tasks.general_tasks import GENERAL_LOADERS

    limit = parse_limit(limit)

    tasks = []
    specs = [s.strip() for s in str(suite).split(",") if s.strip()]
    if not specs:
        raise DataError("no general suite given", hint=f"pass --suite {benchmarks.DEFAULT_GENERAL} or "
                                                       f"{','.join(benchmarks.names('general', builtin=False))}")
    for spec in specs:
        name, _, path = spec.partition("=")
        name, path = name.strip(), (path.strip() or None)
        if name == "builtin":
            tasks += [builtin_task(p, part_limit(limit, p), seed) for p in BUILTIN_PARTS]
        elif name.startswith("builtin.") and name[8:] in BUILTIN_PARTS:
            tasks.append(builtin_task(name[8:], part_limit(limit, name[8:]), seed))
        elif name in GENERAL_LOADERS:
            tasks.append(GENERAL_LOADERS[name](path=path, limit=part_limit(limit, name)))
        else:
            known = ((benchmarks.DEFAULT_GENERAL,) + benchmarks.names("general", builtin=True)
                     + benchmarks.names("general", builtin=False))
            raise DataError(f"unknown general suite {name!r}",
                            hint=f"use {', '.join(known[:-1])} or {known[-1]} (NAME=PATH for local files)")
    for t in tasks:
        if not t.items:
            raise DataError(f"suite {t.name!r} has no items", hint="check --limit and the data files")
    return _protocol_tasks(tasks, protocol, max_new_tokens=max_new_tokens)


def general_summary(frames_by_task, protocols=None) -> pd.DataFrame:
    """Summary rows for per-sample frames {task: (scorer, df)} plus the general aggregate: the mean
    of the parts' primary metrics (IFEval instruction-level strict, BBH accuracy, NQ-open / facts
    exact match), named by :func:`general_metric_name`. ``protocols``: {task: (protocol,
    overrides, generated_under)}."""
    summary, scores = [], []
    for name, (scorer, df) in frames_by_task.items():
        rows, primary = summarize(df, scorer, name)
        summary += _stamp(rows, *((protocols or {}).get(name) or ("", "", "")))
        scores.append(primary)
    summary.append(_aggregate(summary, {"task": "general", "metric": general_metric_name(frames_by_task),
                                        "value": sum(scores) / len(scores) if scores else float("nan"),
                                        "n": len(scores)}, [(sc, nm) for nm, (sc, _) in frames_by_task.items()]))
    return pd.DataFrame(summary, columns=SUMMARY_COLUMNS)


def evaluate_general(model, tokenizer, suite=benchmarks.DEFAULT_GENERAL, limit=None, seed=0, batch_size=None, progress=None, stats=None,
                     max_new_tokens=None, protocol=None, chat_template="auto", model_name=None):
    """General score: per-sample rows of every part and the summary (``task="general"``, metric
    :func:`general_metric_name`, in percent). ``limit`` caps each part (BBH: items per subtask);
    ``protocol`` runs the real benchmarks (docs/eval.md); ``chat_template`` and ``model_name`` as in
    :func:`evaluate_target`."""
    tasks = load_general_tasks(suite, limit, seed, protocol, max_new_tokens)
    tasks = tasks_for_model(tasks, tokenizer, chat_template, model_name,
                            None if model_name is not None else _loaded_names(model))
    total = sum(len(t.items) for t in tasks)
    frames, parts, prots, off, tokens, secs = [], {}, {}, 0, 0, 0.0
    for t in tasks:
        rows, gen = run_task(model, tokenizer, t, seed=seed, batch_size=batch_size,
                             progress=_offset_progress(progress, off, total))
        off += len(t.items)
        tokens, secs = tokens + gen.generated_tokens, secs + gen.seconds
        df = to_frame(rows)
        frames.append(df)
        parts[t.name] = (t.scorer, df)
        prots[t.name] = (t.protocol, t.overrides, t.protocol, t.chat_template)
    if stats is not None:
        stats.update(generated_tokens=tokens, seconds=secs, tokens_per_second=tokens / secs if secs else 0.0,
                     chat_rules=chat_rules(tasks))
    return pd.concat(frames, ignore_index=True), general_summary(parts, prots)


def builtin_prompts(name: str, n: int, seed: int = 0) -> list[str]:
    """Prompt texts (user messages, no chat template) of a built-in suite: "arith", "general"
    (the three general parts interleaved), "ifeval", "bbh" or "facts"."""
    from peftarena_cli.tasks.builtin_general import builtin_task

    if name in benchmarks.names("target", builtin=True):
        from peftarena_cli.tasks.target_tasks import load_target_task

        return [it.prompt for it in load_target_task(name, limit=n, seed=seed).items]
    if name in benchmarks.builtin_parts():
        return [it.prompt for it in builtin_task(name, n, seed).items]
    if name == benchmarks.GENERAL_PROMPT_SET:
        per = [builtin_task(p, n, seed).items for p in benchmarks.builtin_parts()]
        out = []
        for j in range(n):
            for items in per:
                if j < len(items):
                    out.append(items[j].prompt)
        return out[:n]
    raise DataError(f"unknown built-in prompt set {name!r}", hint="use one of " + ", ".join(BUILTIN_NAMES))


# --- scoring completions made elsewhere ----------------------------------------------------------
def rescore_table(df: pd.DataFrame, ks=None, kind: str = "auto", protocol=None):
    """Re-score a per-sample table written by an earlier run (its ``meta`` column tells each row's
    scorer, protocol and references). With ``protocol``, the benchmarks are scored by that
    protocol's scorers; the summary's ``generated_under`` keeps the protocol the completions were
    generated under. Returns ``(per_sample, summary)`` like the evaluate functions."""
    from peftarena_cli.artifacts.tables import require_columns
    from peftarena_cli.evaluation.protocols import FAMILY, get_protocol
    from peftarena_cli.evaluation.scoring import score_one

    require_columns(df, ["task", "id", "sample", "completion", "meta"], "per-sample table")
    if df.empty:
        raise DataError("the per-sample table has no rows")
    check_rows_kind(df, kind)
    proto = get_protocol(protocol) if protocol is not None else None
    out = df.copy()
    scorers, prots = {}, {}
    updates = {k: [] for k in ("extracted", "correct", "correct_strict", "correct_flexible", "prompt_strict",
                               "prompt_loose", "inst_strict", "inst_loose")}
    for comp, meta_s, task in zip(out["completion"], out["meta"], out["task"]):
        meta = json.loads(meta_s)
        scorer, gen_under = meta["scorer"], meta.get("generated_under") or meta.get("protocol") or "unrecorded"
        label = gen_under
        if proto is not None and task in FAMILY:
            settings = proto.settings.get(FAMILY[task])
            if settings is None:
                raise IncompatibleInputs(f"protocol {proto.name!r} does not cover {task!r}", hint="pick another --protocol")
            if settings.loglik and gen_under.split("@")[0] != proto.name:
                raise IncompatibleInputs(f"protocol {proto.name!r} scores {task!r} by the log-likelihood of each option, "
                                         "which needs the model, not its completions",
                                         hint="re-run eval-target with --protocol " + proto.name)
            scorer, label = settings.scorer, proto.label
        scorers[task] = scorer
        prots[task] = (label, meta.get("overrides") or "", gen_under, meta.get("chat_template"))
        r = score_one(scorer, comp if isinstance(comp, str) else "", meta["reference"], meta["item"])
        for k in updates:
            updates[k].append(r.get(k) if k != "extracted" else str(r.get(k, "")))
    for k, v in updates.items():
        out[k] = v
    for c in ("correct_strict", "correct_flexible", "prompt_strict", "prompt_loose"):
        out[c] = out[c].astype("boolean")
    return out, _summary_for(out, scorers, ks, kind, prots)


GENERAL_SCORER_KINDS = scorer_kinds.general_kinds()  # scorer kinds of the general suites; the rest are target tasks


def check_rows_kind(df, kind: str) -> None:
    """Per-sample rows re-scored as ``kind`` ("target" or "general") must be of that kind: each row's
    ``meta`` names its scorer, and a general suite's scorers (IFEval, BBH, NQ-open, facts) differ from
    a target task's (math, choice). Rows of the other kind would be scored as if they were this one."""
    from peftarena_cli.evaluation.scoring import scorer_kind

    if kind not in ("target", "general"):
        return
    for task, meta_s in zip(df["task"], df["meta"]):
        try:
            scorer = str(json.loads(meta_s)["scorer"])
        except (TypeError, ValueError, KeyError):
            raise DataError(f"a row of task {task!r} has no readable 'meta' (its scorer)",
                            hint="pass a per-sample table written by peftarena eval-target / eval-general") from None
        row_kind = "general" if scorer_kind(scorer) in GENERAL_SCORER_KINDS else "target"
        if row_kind != kind:
            cmd = f"eval-{row_kind}"
            raise IncompatibleInputs(f"the per-sample rows are {row_kind} rows (task {task!r}, scorer {scorer!r}), "
                                     f"not {kind} rows", hint=f"re-score them with `peftarena {cmd} --responses FILE`")


def _summary_for(df, scorers: dict, ks, kind, prots: dict):
    from peftarena_cli.evaluation.protocols import STUDY
    from peftarena_cli.evaluation.scoring import scorer_kind

    general = set(scorer_kinds.general_kinds())
    if kind == "general" or (kind == "auto" and {scorer_kind(s) for s in scorers.values()} <= general):
        return general_summary({t: (scorers[t], df[df["task"] == t]) for t in scorers}, prots)
    summary, primaries = [], {}
    n = int(df["sample"].max()) + 1
    ks = check_ks(ks, n)
    for t, sc in scorers.items():
        rows, primaries[t] = summarize(df[df["task"] == t], sc, t, ks)
        summary += _stamp(rows, *prots[t])
    parts = [t for t in scorers if prots[t][0] == STUDY.label and t in STUDY.target_mean] or list(scorers)
    summary.append(_aggregate(summary, {"task": "target", "metric": "target_score",
                                        "value": sum(primaries[t] for t in parts) / len(parts),
                                        "n": int(df[df["task"].isin(parts)]["id"].nunique())},
                              [(scorers[t], t) for t in parts]))
    return pd.DataFrame(summary, columns=SUMMARY_COLUMNS)


def score_responses(task, records: list[dict], ks=None, kind: str = "auto", protocol=None):
    """Score completions made elsewhere: ``records`` carry a ``response`` and either an ``id``
    (``key`` for IFEval) or the ``prompt`` text (the benchmark's own question text) that identifies
    the task item. Several records for one item are its samples, in order. A benchmark is scored
    under ``protocol`` (default: the study's)."""
    by_id = {it.id: i for i, it in enumerate(task.items)}
    by_key = {it.id.split("-", 1)[1] if "-" in it.id else it.id: i for i, it in enumerate(task.items)}
    by_prompt = {it.prompt: i for i, it in enumerate(task.items)}
    for i, it in enumerate(task.items):  # the benchmark's own question text matches too
        for v in (it.meta.get("fields") or {}).values():
            by_prompt.setdefault(str(v), i)
    comps: dict[int, list[str]] = {}
    for j, r in enumerate(records):
        if "response" not in r:
            raise DataError(f"response record {j} has no 'response' field", hint="each JSONL line needs a response field")
        if not isinstance(r["response"], str):  # a number, list or null would be scored as an empty completion
            raise DataError(f"response record {j}: 'response' is {json_kind(r['response'])}, not a string",
                            hint="each record's response is the completion text, a JSON string")
        idx = None
        for key, table in (("id", by_id), ("id", by_key), ("key", by_key), ("prompt", by_prompt)):
            if key in r and str(r[key]) in table:
                idx = table[str(r[key])]
                break
        if idx is None:
            raise DataError(f"response record {j} matches no item of task {task.name!r}",
                            hint="give each record the item's id/key or its exact prompt text")
        comps.setdefault(idx, []).append(r["response"])
    if not comps:
        raise DataError("no responses to score")
    from dataclasses import replace

    keep = sorted(comps)
    sub = _protocol_tasks([replace(task, items=[task.items[i] for i in keep])], protocol)[0]
    rows = score_rows(sub, [it.prompt for it in sub.items], [comps[i] for i in keep])
    for r in rows:  # made elsewhere: the file says so when it is re-scored later
        r["meta"] = json.dumps(dict(json.loads(r["meta"]), generated_under="external"))
    df = to_frame(rows)
    return df, _summary_for(df, {task.name: sub.scorer}, ks, kind, {task.name: (sub.protocol, "", "external")})


def read_responses(path) -> tuple:
    """A ``--responses`` file: ``(per_sample, None)`` for a per-sample Parquet of an earlier run,
    ``(None, records)`` for JSONL (or another records file) whose records carry a ``response``."""
    from pathlib import Path

    from peftarena_cli.errors import InputNotFound

    path = Path(path)
    if not path.exists():
        raise InputNotFound(f"no such responses file: {str(path)!r}", hint="pass a per-sample .parquet or a .jsonl with a response field")
    if path.suffix == ".parquet":
        from peftarena_cli.artifacts.tables import read_table

        return read_table(path)[0], None
    from peftarena_cli.tasks.sources import read_records

    records = read_records(path)
    check_response_types(path, records)
    return None, records


def check_response_types(path, records: list) -> None:
    """Each record's ``response`` is a string (the completion): a number, list or null would be
    scored as an empty completion, wrong. Refused with the line of a JSONL file (the record elsewhere)."""
    from pathlib import Path

    path = Path(path)
    bad = next((j for j, r in enumerate(records)
                if isinstance(r, dict) and "response" in r and not isinstance(r["response"], str)), None)
    if bad is None:
        return
    where = f"record {bad}"
    if path.suffix == ".jsonl":  # read_records skips blank lines: count them back
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
        where = f"line {[i for i, line in enumerate(lines, 1) if line.strip()][bad]}"
    raise DataError(f"{str(path)!r} {where}: 'response' is {json_kind(records[bad]['response'])}, not a string",
                    hint="each line's response is the completion text, a JSON string")


RESPONSE_KEYS = {"id", "key", "prompt", "response"}  # what identifies an item and its completion, no task field


def responses_task(kind: str, spec: str, path, records: list, *, limit=None, seed: int = 0, protocol=None) -> tuple:
    """The task whose items the responses ``records`` (read from ``path``) answer, and whether the
    records are the task's own records in order (``aligned``: the i-th record answers the i-th item).

    ``kind="target"``: a built-in target task is regenerated (enough items for every record); a
    ``NAME=PATH`` spec is loaded from PATH; records with no task field (only id / key / prompt /
    response) are matched against the named benchmark; other records are read as the task itself.

    ``kind="general"``: one suite part. A hub benchmark without a path is read from the records
    when they carry the fields its records hold (its registry entry's ``fields``), else matched
    against the hub task by prompt; a benchmark whose local form is a folder needs it. Built-in
    parts are regenerated, ``NAME=PATH`` parts loaded. The general task comes under ``protocol``."""
    from peftarena_cli.errors import UsageError

    if kind == "target":
        from peftarena_cli.tasks.sources import split_spec
        from peftarena_cli.tasks.target_tasks import load_target_task

        name, p = split_spec(spec)
        entry = benchmarks.get(name)
        if entry is not None and entry.part == "target" and entry.builtin:  # procedural: regenerate the items
            return load_target_task(name, limit=max(limit or 0, len(records), 100), seed=seed), False
        if p:
            return load_target_task(spec, limit=None, seed=seed), False
        if records and set(records[0]) <= RESPONSE_KEYS:  # no task fields: match the hub task
            return load_target_task(name, limit=None, seed=seed), False
        return load_target_task(f"{name}={path}", limit=None, seed=seed), True
    parts = [s for s in spec.split(",") if s.strip()]
    if len(parts) != 1:
        raise UsageError("--responses JSONL scores one suite part at a time", hint=f"pass e.g. --suite {benchmarks.names('general', builtin=False)[0]}=input_data.jsonl")
    name, _, p = parts[0].partition("=")
    entry = benchmarks.get(name)
    if entry is not None and entry.part == "general" and not entry.builtin and not p:
        if entry.local == "folder":
            label = name.upper()
            raise DataError(f"{label} responses need the {label} folder for targets", hint=f"pass --suite {name}=DIR")
        if records and all(f in records[0] for f in entry.fields):
            # the records carry the task's fields: they are the task file
            return load_general_tasks(f"{name}={path}", protocol=protocol)[0], True
        # e.g. IFEval's input_response_data.jsonl (prompt, response): match the hub task by prompt
        return load_general_tasks(name, protocol=protocol)[0], False
    lim = part_limit(parse_limit(limit), name.partition(".")[2] or "*")
    # built-in parts are regenerated with an item for every record; NAME=PATH parts are read whole
    return load_general_tasks(parts[0], limit=max(lim or 0, len(records)) if name.startswith("builtin") else None,
                              seed=seed, protocol=protocol)[0], False


def json_kind(v) -> str:
    """What a JSON value is, in words, for messages: null, a number, a list, an object, true/false."""
    if v is None:
        return "null"
    if isinstance(v, bool):
        return f"{str(v).lower()} (a boolean)"
    if isinstance(v, (int, float)):
        return f"a number ({v!r})"
    if isinstance(v, (list, tuple)):
        return "a list"
    if isinstance(v, dict):
        return "an object"
    return type(v).__name__
