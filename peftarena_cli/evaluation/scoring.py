"""Scoring completions of a task: one per-sample row per (item, sample), and the summary rows.

Per-sample columns (docs/eval.md): task, subtask, id, sample, prompt, completion, extracted,
reference, correct, correct_strict, correct_flexible, prompt_strict, prompt_loose,
instruction_id_list, inst_strict, inst_loose, n_tokens, meta (JSON: scorer, full references, item
metadata, so the file can be re-scored offline).
"""

from __future__ import annotations

import json

from peftarena_cli.evaluation import metrics
from peftarena_cli.evaluation.scorers import bbh as bbh_s
from peftarena_cli.evaluation.scorers import choice as choice_s
from peftarena_cli.evaluation.scorers import ifeval as ifeval_s
from peftarena_cli.evaluation.scorers import math as math_s
from peftarena_cli.evaluation.scorers import nq as nq_s

COLUMNS = ["task", "subtask", "id", "sample", "prompt", "completion", "extracted", "reference", "correct",
           "correct_strict", "correct_flexible", "prompt_strict", "prompt_loose", "instruction_id_list",
           "inst_strict", "inst_loose", "n_tokens", "meta"]
PRIMARY = {"math": "avg@n", "choice": "avg@n", "ifeval": "inst_strict", "bbh": "accuracy", "nq": "exact_match",
           "facts": "exact_match"}


def score_one(scorer: str, completion: str, reference, meta: dict) -> dict:
    """Score one completion. ``scorer`` is a built-in suite's scorer (``math``, ``choice``,
    ``ifeval``, ``bbh``, ``nq``, ``facts``) or a protocol's, ``KIND:PROTOCOL`` (docs/eval.md)."""
    from peftarena_cli.evaluation.scorers import math_lmeval, math_study

    completion = completion if isinstance(completion, str) else ""
    options = list(meta.get("options") or [])
    fns = {
        "math": lambda: math_s.score_math(completion, str(reference)),
        "choice": lambda: choice_s.score_choice(completion, str(reference), options),
        "ifeval": lambda: ifeval_s.score_ifeval(completion, list(meta["instruction_id_list"]), list(meta.get("kwargs") or [])),
        "bbh": lambda: bbh_s.score_bbh(completion, str(reference)),
        "nq": lambda: nq_s.score_nq(completion, list(reference)),
        "facts": lambda: nq_s.score_facts(completion, list(reference)),
        "bbh:study": lambda: bbh_s.score_bbh_study(completion, str(reference), str(meta.get("subtask"))),
        "bbh:lm-eval": lambda: bbh_s.score_bbh_lmeval(completion, str(reference)),
        "nq:study": lambda: nq_s.score_nq_study(completion, list(reference)),
        "nq:lm-eval": lambda: nq_s.score_nq_lmeval(completion, list(reference)),
        "math:study": lambda: math_study.score_math_study(completion, str(reference)),
        "gsm8k:lm-eval": lambda: math_lmeval.score_gsm8k_lmeval(completion, str(reference)),
        "minerva:lm-eval": lambda: math_lmeval.score_minerva_lmeval(completion, str(reference)),
        "choice:study": lambda: choice_s.score_choice_study(completion, str(reference), options),
        "choice:lm-eval": lambda: choice_s.score_choice_loglik(completion, str(reference), options),
    }
    if scorer not in fns:
        raise ValueError(f"unknown scorer {scorer!r}")
    return fns[scorer]()


def scorer_kind(scorer: str) -> str:
    """The summary kind of a scorer: math, choice, ifeval, bbh, nq or facts."""
    kind = scorer.split(":", 1)[0]
    return "math" if kind in ("gsm8k", "minerva") else kind


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
                                    "reference": item.reference, "subtask_key": task.subtask_key, "item": item.meta},
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
    ``scorer`` may be a protocol's (``KIND:PROTOCOL``); BBH under lm-eval averages over all items
    (its ``weight_by_size``), elsewhere over subtasks."""
    by_item = scorer == "bbh:lm-eval"
    scorer = scorer_kind(scorer)
    rows = []
    n_items = df["id"].nunique()
    if scorer in ("math", "choice"):
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
    elif scorer == "ifeval":
        d = df[df["sample"] == 0]
        inst_s = [b for x in d["inst_strict"] for b in x]
        inst_l = [b for x in d["inst_loose"] for b in x]
        rows += [
            {"task": task_name, "metric": "prompt_strict", "value": 100.0 * float(d["prompt_strict"].astype(bool).mean()), "n": len(d)},
            {"task": task_name, "metric": "prompt_loose", "value": 100.0 * float(d["prompt_loose"].astype(bool).mean()), "n": len(d)},
            {"task": task_name, "metric": "inst_strict", "value": 100.0 * sum(inst_s) / max(len(inst_s), 1), "n": len(inst_s)},
            {"task": task_name, "metric": "inst_loose", "value": 100.0 * sum(inst_l) / max(len(inst_l), 1), "n": len(inst_l)},
        ]
        primary = rows[2]["value"]
    elif scorer == "bbh":
        d = df[df["sample"] == 0]
        accs = []
        for sub, g in d.groupby("subtask", sort=True):
            a = 100.0 * float(g["correct"].mean())
            accs.append(a)
            rows.append({"task": f"{task_name}/{sub}", "metric": "accuracy", "value": a, "n": len(g)})
        primary = 100.0 * float(d["correct"].mean()) if by_item else (sum(accs) / len(accs) if accs else 0.0)
        rows.append({"task": task_name, "metric": "accuracy", "value": primary, "n": len(d)})
    elif scorer in ("nq", "facts"):
        d = df[df["sample"] == 0]
        primary = 100.0 * float(d["correct"].mean())
        rows.append({"task": task_name, "metric": "exact_match", "value": primary, "n": len(d)})
    else:  # pragma: no cover
        raise ValueError(scorer)
    from peftarena_cli.evaluation.intervals import add_intervals

    add_intervals(rows, df, scorer, task_name)  # se, ci_low, ci_high, estimator, note (docs/eval.md)
    return rows, primary


def primary_row(rows: list[dict], scorer: str, task_name: str) -> dict | None:
    """The summary row of a task's primary metric (:data:`PRIMARY`) among ``rows``."""
    want = PRIMARY.get(scorer_kind(scorer))
    for r in rows:
        if r["task"] == task_name and (r["metric"] == want or (want == "avg@n" and str(r["metric"]).startswith("avg@"))):
            return r
    return None
