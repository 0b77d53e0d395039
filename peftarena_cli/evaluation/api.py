"""The evaluation API (used by the CLI, interpolate, rewind and the activation commands).

* :func:`evaluate_target` — the target (plasticity) score on one loaded model;
* :func:`evaluate_general` — the general (stability) score;
* :func:`builtin_prompts` — prompt texts of the built-in suites, as prompt sets;
* :func:`score_responses` / :func:`rescore_table` — scoring completions made elsewhere.

They take an already-loaded model (a transformers model or a PeftModel whose weights may change in
place between calls) and never reload it. Each returns ``(per_sample, summary)`` DataFrames;
summary columns are ``task, metric, value, n`` with values in percent.
"""

from __future__ import annotations

import json

import pandas as pd

from peftarena_cli.errors import DataError, IncompatibleInputs
from peftarena_cli.evaluation.scoring import score_rows, summarize, to_frame

SUMMARY_COLUMNS = ["task", "metric", "value", "n", "se", "ci_low", "ci_high", "estimator", "note"]
BUILTIN_NAMES = ("arith", "general", "ifeval", "bbh", "facts")


def _offset_progress(progress, offset: int, total: int):
    if progress is None:
        return None
    return lambda done, _t=None, label="": progress(offset + done, total, label)


def run_task(model, tokenizer, task, *, n_samples=1, temperature=0.0, seed=0, batch_size=None,
             progress=None, max_new_tokens=None):
    """Generate and score one :class:`~peftarena_cli.tasks.spec.Task`; returns per-sample rows."""
    from peftarena_cli.evaluation.engine import generate

    prompts = [task.render(tokenizer, it) for it in task.items]
    gen = generate(model, tokenizer, prompts, max_new_tokens=int(max_new_tokens or task.max_new_tokens),
                   stop=task.stop, temperature=temperature, n_samples=n_samples, seed=seed,
                   batch_size=batch_size, progress=progress, label=task.name)
    rows = score_rows(task, prompts, gen.texts, gen.n_tokens)
    return rows, gen


def _check_ks(ks, n_samples):
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
    return aggregate_row(row["task"], row["metric"], row["value"], row["n"], prims, "mean of parts")


def load_target_tasks(task="arith", limit=None, seed=0):
    from peftarena_cli.tasks.spec import Task
    from peftarena_cli.tasks.target_tasks import load_target_task

    if isinstance(task, Task):
        return [task.limited(limit)]
    specs = [s.strip() for s in str(task).split(",") if s.strip()]
    if not specs:
        raise DataError("no target task given", hint="pass --task arith (or a benchmark name / file)")
    return [load_target_task(s, limit=limit, seed=seed) for s in specs]


def evaluate_target(model, tokenizer, task="arith", limit=None, n_samples=1, temperature=0.0, ks=None, seed=0,
                    batch_size=None, progress=None, stats=None, max_new_tokens=None):
    """Target score: per-sample rows and summary (avg@n, pass@k, maj@k, strict/flexible accuracy per
    task; ``task="target", metric="target_score"`` = the mean over tasks of avg@n, in percent).

    ``task``: "arith" (built in), a benchmark name, ``NAME=PATH``, a file, a comma-separated list
    of those, or a :class:`Task`. ``stats`` (a dict), when given, receives throughput figures.
    ``max_new_tokens`` overrides the task's default generation length.
    """
    n_samples = int(n_samples)
    if n_samples < 1:
        raise IncompatibleInputs(f"-n must be at least 1, got {n_samples}")
    ks = _check_ks(ks, n_samples)
    tasks = load_target_tasks(task, limit, seed)
    total = sum(len(t.items) for t in tasks) * (n_samples if temperature and temperature > 0 else 1)
    frames, summary, scores, off = [], [], [], 0
    tokens, secs = 0, 0.0
    for t in tasks:
        rows, gen = run_task(model, tokenizer, t, n_samples=n_samples, temperature=temperature, seed=seed,
                             batch_size=batch_size, progress=_offset_progress(progress, off, total),
                             max_new_tokens=max_new_tokens)
        off += len(t.items) * (n_samples if temperature and temperature > 0 else 1)
        tokens, secs = tokens + gen.generated_tokens, secs + gen.seconds
        df = to_frame(rows)
        frames.append(df)
        srows, primary = summarize(df, t.scorer, t.name, ks)
        summary += srows
        scores.append(primary)
    summary.append(_aggregate(summary, {"task": "target", "metric": "target_score", "value": sum(scores) / len(scores),
                                        "n": sum(len(t.items) for t in tasks)}, [(t.scorer, t.name) for t in tasks]))
    if stats is not None:
        stats.update(generated_tokens=tokens, seconds=secs, tokens_per_second=tokens / secs if secs else 0.0)
    return pd.concat(frames, ignore_index=True), pd.DataFrame(summary, columns=SUMMARY_COLUMNS)


GENERAL_PARTS = ("ifeval", "bbh", "nq_open", "builtin", "builtin.ifeval", "builtin.bbh", "builtin.facts")


def load_general_tasks(suite="builtin", limit=None, seed=0):
    """Tasks of a general suite spec: ``builtin`` (its 3 parts), ``builtin.ifeval`` / ``.bbh`` /
    ``.facts``, ``ifeval``, ``bbh``, ``nq_open`` (hub), each optionally ``=PATH`` (local files)."""
    from peftarena_cli.tasks.builtin_general import BUILTIN_PARTS, builtin_task
    from peftarena_cli.tasks.general_tasks import GENERAL_LOADERS

    tasks = []
    specs = [s.strip() for s in str(suite).split(",") if s.strip()]
    if not specs:
        raise DataError("no general suite given", hint="pass --suite builtin or ifeval,bbh,nq_open")
    for spec in specs:
        name, _, path = spec.partition("=")
        name, path = name.strip(), (path.strip() or None)
        if name == "builtin":
            tasks += [builtin_task(p, limit, seed) for p in BUILTIN_PARTS]
        elif name.startswith("builtin.") and name[8:] in BUILTIN_PARTS:
            tasks.append(builtin_task(name[8:], limit, seed))
        elif name in GENERAL_LOADERS:
            tasks.append(GENERAL_LOADERS[name](path=path, limit=limit))
        else:
            raise DataError(f"unknown general suite {name!r}",
                            hint="use builtin, builtin.ifeval, builtin.bbh, builtin.facts, ifeval, bbh or nq_open (NAME=PATH for local files)")
    for t in tasks:
        if not t.items:
            raise DataError(f"suite {t.name!r} has no items", hint="check --limit and the data files")
    return tasks


def general_summary(frames_by_task) -> pd.DataFrame:
    """Summary rows for per-sample frames {task: (scorer, df)} plus the General score: the mean of
    the parts' primary metrics (IFEval instruction-level strict, BBH subtask-averaged accuracy,
    NQ-open exact match)."""
    summary, scores = [], []
    for name, (scorer, df) in frames_by_task.items():
        rows, primary = summarize(df, scorer, name)
        summary += rows
        scores.append(primary)
    summary.append(_aggregate(summary, {"task": "general", "metric": "general_score", "value": sum(scores) / len(scores) if scores else float("nan"),
                                        "n": len(scores)}, [(sc, nm) for nm, (sc, _) in frames_by_task.items()]))
    return pd.DataFrame(summary, columns=SUMMARY_COLUMNS)


def evaluate_general(model, tokenizer, suite="builtin", limit=None, seed=0, batch_size=None, progress=None, stats=None,
                     max_new_tokens=None):
    """General score: per-sample rows of every part and the summary (``task="general",
    metric="general_score"``, in percent). ``limit`` caps each part (BBH: items per subtask)."""
    tasks = load_general_tasks(suite, limit, seed)
    total = sum(len(t.items) for t in tasks)
    frames, parts, off, tokens, secs = [], {}, 0, 0, 0.0
    for t in tasks:
        rows, gen = run_task(model, tokenizer, t, seed=seed, batch_size=batch_size,
                             progress=_offset_progress(progress, off, total), max_new_tokens=max_new_tokens)
        off += len(t.items)
        tokens, secs = tokens + gen.generated_tokens, secs + gen.seconds
        df = to_frame(rows)
        frames.append(df)
        parts[t.name] = (t.scorer, df)
    if stats is not None:
        stats.update(generated_tokens=tokens, seconds=secs, tokens_per_second=tokens / secs if secs else 0.0)
    return pd.concat(frames, ignore_index=True), general_summary(parts)


def builtin_prompts(name: str, n: int, seed: int = 0) -> list[str]:
    """Prompt texts (user messages, no chat template) of a built-in suite: "arith", "general"
    (the three general parts interleaved), "ifeval", "bbh" or "facts"."""
    from peftarena_cli.tasks.builtin_general import builtin_task

    if name == "arith":
        from peftarena_cli.tasks.target_tasks import load_target_task

        return [it.prompt for it in load_target_task("arith", limit=n, seed=seed).items]
    if name in ("ifeval", "bbh", "facts"):
        return [it.prompt for it in builtin_task(name, n, seed).items]
    if name == "general":
        per = [builtin_task(p, n, seed).items for p in ("ifeval", "bbh", "facts")]
        out = []
        for j in range(n):
            for items in per:
                if j < len(items):
                    out.append(items[j].prompt)
        return out[:n]
    raise DataError(f"unknown built-in prompt set {name!r}", hint="use one of " + ", ".join(BUILTIN_NAMES))


# --- scoring completions made elsewhere ----------------------------------------------------------
def rescore_table(df: pd.DataFrame, ks=None, kind: str = "auto"):
    """Re-score a per-sample table written by an earlier run (its ``meta`` column tells each row's
    scorer and references). Returns ``(per_sample, summary)`` like the evaluate functions."""
    from peftarena_cli.artifacts.tables import require_columns
    from peftarena_cli.evaluation.scoring import score_one

    require_columns(df, ["task", "id", "sample", "completion", "meta"], "per-sample table")
    if df.empty:
        raise DataError("the per-sample table has no rows")
    out = df.copy()
    scorers = {}
    updates = {k: [] for k in ("extracted", "correct", "correct_strict", "correct_flexible", "prompt_strict",
                               "prompt_loose", "inst_strict", "inst_loose")}
    for comp, meta_s, task in zip(out["completion"], out["meta"], out["task"]):
        meta = json.loads(meta_s)
        scorers[task] = meta["scorer"]
        r = score_one(meta["scorer"], comp if isinstance(comp, str) else "", meta["reference"], meta["item"])
        for k in updates:
            updates[k].append(r.get(k) if k != "extracted" else str(r.get(k, "")))
    for k, v in updates.items():
        out[k] = v
    for c in ("correct_strict", "correct_flexible", "prompt_strict", "prompt_loose"):
        out[c] = out[c].astype("boolean")
    return out, _summary_for(out, scorers, ks, kind)


def _summary_for(df, scorers: dict, ks, kind):
    general = {"ifeval", "bbh", "nq", "facts"}
    if kind == "general" or (kind == "auto" and set(scorers.values()) <= general):
        return general_summary({t: (scorers[t], df[df["task"] == t]) for t in scorers})
    summary, scores = [], []
    n = int(df["sample"].max()) + 1
    ks = _check_ks(ks, n)
    for t, sc in scorers.items():
        rows, primary = summarize(df[df["task"] == t], sc, t, ks)
        summary += rows
        scores.append(primary)
    summary.append(_aggregate(summary, {"task": "target", "metric": "target_score", "value": sum(scores) / len(scores),
                                        "n": df["id"].nunique()}, list(zip(scorers.values(), scorers.keys()))))
    return pd.DataFrame(summary, columns=SUMMARY_COLUMNS)


def score_responses(task, records: list[dict], ks=None, kind: str = "auto"):
    """Score completions made elsewhere: ``records`` carry a ``response`` and either an ``id``
    (``key`` for IFEval) or the ``prompt`` text that identifies the task item. Several records
    for one item are its samples, in order."""
    by_id = {it.id: i for i, it in enumerate(task.items)}
    by_key = {it.id.split("-", 1)[1] if "-" in it.id else it.id: i for i, it in enumerate(task.items)}
    by_prompt = {it.prompt: i for i, it in enumerate(task.items)}
    comps: dict[int, list[str]] = {}
    for j, r in enumerate(records):
        if "response" not in r:
            raise DataError(f"response record {j} has no 'response' field", hint="each JSONL line needs a response field")
        idx = None
        for key, table in (("id", by_id), ("id", by_key), ("key", by_key), ("prompt", by_prompt)):
            if key in r and str(r[key]) in table:
                idx = table[str(r[key])]
                break
        if idx is None:
            raise DataError(f"response record {j} matches no item of task {task.name!r}",
                            hint="give each record the item's id/key or its exact prompt text")
        comps.setdefault(idx, []).append(r["response"] if isinstance(r["response"], str) else "")
    if not comps:
        raise DataError("no responses to score")
    from peftarena_cli.tasks.spec import Task

    keep = sorted(comps)
    sub = Task(task.name, [task.items[i] for i in keep], task.scorer, task.max_new_tokens, task.stop, task.chat, task.subtask_key)
    rows = score_rows(sub, [task.items[i].prompt for i in keep], [comps[i] for i in keep])
    df = to_frame(rows)
    return df, _summary_for(df, {task.name: task.scorer}, ks, kind)
