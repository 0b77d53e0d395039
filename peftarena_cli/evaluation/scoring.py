"""Scoring completions of a task: one per-sample row per (item, sample), and the summary rows.

Per-sample columns (docs/eval.md): task, subtask, id, sample, prompt, completion, extracted,
reference, correct, correct_strict, correct_flexible, prompt_strict, prompt_loose,
instruction_id_list, inst_strict, inst_loose, n_tokens, meta (JSON: scorer, full references, item
metadata, so the file can be re-scored offline).
"""

from __future__ import annotations

import json

from peftarena_cli import scorer_kinds
from peftarena_cli.evaluation import metrics

COLUMNS = ["task", "subtask", "id", "sample", "prompt", "completion", "extracted", "reference", "correct",
           "correct_strict", "correct_flexible", "prompt_strict", "prompt_loose", "instruction_id_list",
           "inst_strict", "inst_loose", "n_tokens", "meta"]


def resolve(fn):
    """The scoring function of a :class:`~peftarena_cli.scorer_kinds.Scorer`: a callable as it is, or
    ``"MODULE:FUNCTION"`` inside ``peftarena_cli.evaluation.scorers``."""
    if callable(fn):
        return fn
    import importlib

    module, _, name = str(fn).partition(":")
    return getattr(importlib.import_module(f"peftarena_cli.evaluation.scorers.{module}"), name)


def _arguments(args: str, reference, meta: dict) -> tuple:
    """A scoring function's arguments after the completion (:data:`peftarena_cli.scorer_kinds.ARGS`)."""
    if args == "text":
        return (str(reference),)
    if args == "list":
        return (list(reference),)
    if args == "options":
        return (str(reference), list(meta.get("options") or []))
    if args == "subtask":
        return (str(reference), str(meta.get("subtask")))
    if args == "instructions":
        return (list(meta["instruction_id_list"]), list(meta.get("kwargs") or []))
    return (reference, meta)  # "item"


def score_one(scorer: str, completion: str, reference, meta: dict) -> dict:
    """Score one completion. ``scorer`` is a built-in suite's scorer (a kind's name) or a
    protocol's, ``KIND:PROTOCOL`` (docs/eval.md); its scoring function and the way it takes the item
    come from its kind (:mod:`peftarena_cli.scorer_kinds`)."""
    completion = completion if isinstance(completion, str) else ""
    entry = scorer_kinds.scorer_of(scorer)
    return resolve(entry.fn)(completion, *_arguments(entry.args, reference, meta))


def scorer_kind(scorer: str) -> str:
    """The name of a scorer's kind (:data:`peftarena_cli.scorer_kinds.KINDS`); a scorer no kind
    knows gives its prefix."""
    try:
        return scorer_kinds.kind_of(scorer).name
    except ValueError:
        return str(scorer).split(":", 1)[0]


def _ref_text(ref) -> str:
    if ref is None:
        return ""
    if isinstance(ref, (list, tuple)):
        return " | ".join(map(str, ref))
    return str(ref)


def score_rows(task, prompts: list[str], completions: list[list[str]], n_tokens=None) -> list[dict]:
    rows = []
    for i, item in enumerate(task.items):
        for s, comp in enumerate(completions[i]):
            r = score_one(task.scorer, comp, item.reference, item.meta)
            rows.append({
                "task": task.name, "subtask": item.meta.get(task.subtask_key) if task.subtask_key else None,
                "id": item.id, "sample": s, "prompt": prompts[i], "completion": comp,
                "extracted": str(r.get("extracted", "")), "reference": _ref_text(item.reference),
                "correct": bool(r["correct"]),
                "correct_strict": r.get("correct_strict"), "correct_flexible": r.get("correct_flexible"),
                "prompt_strict": r.get("prompt_strict"), "prompt_loose": r.get("prompt_loose"),
                "instruction_id_list": item.meta.get("instruction_id_list"),
                "inst_strict": r.get("inst_strict"), "inst_loose": r.get("inst_loose"),
                "n_tokens": int(n_tokens[i][s]) if n_tokens is not None else None,
                "meta": json.dumps({"scorer": task.scorer, "protocol": task.protocol, "overrides": task.overrides,
                                    "chat_template": task.chat_template, "reference": item.reference, "subtask_key": task.subtask_key, "item": item.meta,
                                    **({"prompt_type": task.prompt_type} if getattr(task, "prompt_type", "") else {})},
                                   default=str),
            })
    return rows


def to_frame(rows: list[dict]):
    import pandas as pd

    df = pd.DataFrame(rows, columns=COLUMNS)
    for c in ("correct_strict", "correct_flexible", "prompt_strict", "prompt_loose"):
        df[c] = df[c].astype("boolean")
    df["n_tokens"] = df["n_tokens"].astype("Int64")
    df["sample"] = df["sample"].astype("int64")
    return df


def summarize(df, scorer: str, task_name: str, ks=None) -> tuple[list[dict], float]:
    """Summary rows of one task's per-sample rows, and the task's primary score (percent).
    ``scorer`` may be a protocol's (``KIND:PROTOCOL``); its kind's ``summary`` says how the rows
    summarise (a ``subtasks`` summary averages over subtasks, or over all items where the scorer
    has ``weight_by_size``, as lm-eval's subtask suites do)."""
    kind = scorer_kinds.kind_of(scorer)
    entry = kind.scorers.get(scorer)
    rows = []
    n_items = df["id"].nunique()
    if kind.summary == "samples":
        n = int(df["sample"].max()) + 1
        ks = metrics.parse_ks(ks, n)
        for r in metrics.sample_metrics(df, ks):
            rows.append({"task": task_name, **r})
        primary = rows[0]["value"]
        rows.append({"task": task_name, "metric": "accuracy", "value": primary, "n": n_items})
        for col, name in (("correct_strict", "accuracy_strict"), ("correct_flexible", "accuracy_flexible")):
            if df[col].isna().all():  # a scorer with one grading only (the study's)
                continue
            rows.append({"task": task_name, "metric": name, "value": 100.0 * float(df[col].astype(bool).mean()), "n": n_items})
    elif kind.summary == "instructions":
        d = df[df["sample"] == 0]
        inst_s = [b for x in d["inst_strict"] for b in x]
        inst_l = [b for x in d["inst_loose"] for b in x]
        rows += [
            {"task": task_name, "metric": "prompt_strict", "value": 100.0 * float(d["prompt_strict"].astype(bool).mean()), "n": len(d)},
            {"task": task_name, "metric": "prompt_loose", "value": 100.0 * float(d["prompt_loose"].astype(bool).mean()), "n": len(d)},
            {"task": task_name, "metric": "inst_strict", "value": 100.0 * sum(inst_s) / max(len(inst_s), 1), "n": len(inst_s)},
            {"task": task_name, "metric": "inst_loose", "value": 100.0 * sum(inst_l) / max(len(inst_l), 1), "n": len(inst_l)},
        ]
        primary = next(r["value"] for r in rows if r["metric"] == kind.primary)
    elif kind.summary == "subtasks":
        by_item = bool(entry and entry.weight_by_size)
        d = df[df["sample"] == 0]
        accs = []
        for sub, g in d.groupby("subtask", sort=True):
            a = 100.0 * float(g["correct"].mean())
            accs.append(a)
            rows.append({"task": f"{task_name}/{sub}", "metric": "accuracy", "value": a, "n": len(g)})
        primary = 100.0 * float(d["correct"].mean()) if by_item else (sum(accs) / len(accs) if accs else 0.0)
        rows.append({"task": task_name, "metric": "accuracy", "value": primary, "n": len(d)})
    else:  # exact_match
        d = df[df["sample"] == 0]
        primary = 100.0 * float(d["correct"].mean())
        rows.append({"task": task_name, "metric": "exact_match", "value": primary, "n": len(d)})
    from peftarena_cli.evaluation.intervals import add_intervals

    add_intervals(rows, df, kind.name, task_name)  # se, ci_low, ci_high, estimator, note (docs/eval.md)
    return rows, primary


def primary_row(rows: list[dict], scorer: str, task_name: str) -> dict | None:
    """The summary row of a task's primary metric (its scorer kind's ``primary``) among ``rows``."""
    try:
        want = scorer_kinds.kind_of(scorer).primary
    except ValueError:
        return None
    for r in rows:
        if r["task"] == task_name and (r["metric"] == want or (want == "avg@n" and str(r["metric"]).startswith("avg@"))):
            return r
    return None
