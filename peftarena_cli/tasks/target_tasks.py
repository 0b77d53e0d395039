"""Target tasks (plasticity): the built-in arithmetic task, math benchmarks (gsm8k, math500,
aime24, amc23) and medical multiple choice (medmcqa, medqa, pubmedqa, mmlu_medical), from the hub by name or
from a local file in the same format (``NAME=PATH``, or a bare PATH whose fields tell the format).
"""

from __future__ import annotations

from pathlib import Path

from peftarena_cli.errors import DataError, UsageError
from peftarena_cli.tasks import benchmarks
from peftarena_cli.tasks.sources import load_hub, read_records, require_fields, split_spec
from peftarena_cli.tasks.spec import Item, Task


TARGET_TASKS = benchmarks.names("target")  # as registered at import (tasks/benchmarks.py)
ARITH_MAX_NEW = 96


def _arith(limit, seed, name: str = "arith") -> Task:
    from peftarena_cli.tasks import arith
    from peftarena_cli.tasks.prompting import user_message

    n = 100 if limit is None else int(limit)
    recs = arith.generate("test", n, seed, level=arith.parse_task_name(name))
    items = [Item(r["id"], user_message(r["question"]), r["answer"]) for r in recs]
    return Task(name, items, "math", ARITH_MAX_NEW)


def _math_items(name, recs, path) -> list[Item]:
    from peftarena_cli.tasks.answers import gsm8k_reference

    q = "question" if "question" in recs[0] else "problem"
    require_fields(recs, [("question", "problem"), "answer"], f"{name} data", path)
    items = []
    for i, r in enumerate(recs):
        ans = r["answer"]
        ref = gsm8k_reference(ans) if name == "gsm8k" or "####" in str(ans) else str(ans)
        if isinstance(ans, float) and float(ans).is_integer():
            ref = str(int(ans))
        rid = str(r.get("id", r.get("idx", r.get("unique_id", i))))
        items.append(Item(f"{name}-{rid}", str(r[q]), ref, {"fields": {"problem": str(r[q])}}))
    return items


def _mc_prompt(question: str, options: list[str], context: str | None = None) -> str:
    """The question with its lettered options ("A. text" lines), after the context when there is one."""
    head = f"{context}\n" if context else ""
    opts = "\n".join(f"{'ABCDEFGHIJ'[i]}. {o}" for i, o in enumerate(options))
    return f"{head}{question}\n{opts}"


def _mc_item(iid: str, question: str, options: list[str], ref: str, context: str | None = None,
             extra: dict | None = None) -> Item:
    """A multiple-choice item; its fields feed the protocols' templates (``mc_text``: the study's
    question text; ``question``, ``context``, ``options_lines``: lm-evaluation-harness's; ``extra``:
    more fields of one benchmark's templates)."""
    text = _mc_prompt(question, options, context)
    lines = "".join(f"{'ABCDEFGHIJ'[i]}. {o}\n" for i, o in enumerate(options))
    return Item(iid, text, ref, {"options": options, "fields": {"mc_text": text, "question": question,
                                                               "context": context or "", "options_lines": lines,
                                                               **(extra or {})}})


def _mmlu_task(name: str, path, limit) -> Task:
    """MMLU's medical subsets (tasks/mmlu.py): one task whose items carry their subject (the
    per-sample ``subtask`` column); ``limit`` counts items per subject. The question is stripped,
    as lm-evaluation-harness's template does (``question.strip()``)."""
    from peftarena_cli.tasks import mmlu

    entry = benchmarks.get(name)
    recs = mmlu.read_local(path) if path else load_hub(*entry.hub)
    items = []
    for r in mmlu.medical_records(recs, path, limit):
        q = r["question"].strip()
        it = _mc_item(f"{name}-{r['subject']}-{r['index']}", q, r["choices"], r["answer"],
                      extra={"description": mmlu.description(r["subject"])})
        it.meta["subject"] = r["subject"]
        items.append(it)
    return Task(name, items, "choice", raw=True, subtask_key="subject")


def _mc_items(name, recs, path) -> list[Item]:
    """Items of a multiple-choice benchmark; ``name`` is its records' format (tasks/benchmarks.py ``items``)."""
    L = "ABCDEFGHIJ"
    items = []
    if name == "medmcqa":
        require_fields(recs, ["question", "opa", "opb", "opc", "opd", "cop"], "medmcqa data", path)
        cops = [int(r["cop"]) for r in recs]
        if any(c < 0 for c in cops):
            raise DataError(f"medmcqa data in {path}: {sum(c < 0 for c in cops)} records have no answer (cop = -1, "
                            "the unlabelled test split)", hint="use the validation split, which has answers")
        # the hub dataset numbers the correct option 0..3 (a ClassLabel); the original release 1..4
        one_based = 4 in cops and 0 not in cops
        if any(c > (4 if one_based else 3) for c in cops):
            raise DataError(f"medmcqa data in {path}: cop outside 0..3 / 1..4", hint="cop is the correct option's number")
        for i, (r, cop) in enumerate(zip(recs, cops)):
            opts = [r["opa"], r["opb"], r["opc"], r["opd"]]
            items.append(_mc_item(f"medmcqa-{r.get('id', i)}", r["question"], opts, L[cop - one_based]))
    elif name == "medqa":
        require_fields(recs, ["question", "options", ("answer_idx", "answer")], "medqa data", path)
        for i, r in enumerate(recs):
            o = r["options"]
            if isinstance(o, dict):
                keys = sorted(o)
                opts = [o[k] for k in keys]
            else:
                opts = [x["value"] if isinstance(x, dict) else x for x in o]
                keys = [x["key"] if isinstance(x, dict) else L[j] for j, x in enumerate(o)]
            ref = r.get("answer_idx")
            if ref is None:
                ref = keys[opts.index(r["answer"])] if r["answer"] in opts else str(r["answer"])
            items.append(_mc_item(f"medqa-{r.get('id', i)}", r["question"], opts, str(ref)))
    else:  # pubmedqa
        require_fields(recs, [("QUESTION", "question"), "final_decision"], "pubmedqa data", path)
        opts = ["yes", "no", "maybe"]
        for i, r in enumerate(recs):
            q = r.get("QUESTION", r.get("question"))
            ctx = r.get("CONTEXTS")
            if ctx is None and isinstance(r.get("context"), dict):
                ctx = r["context"].get("contexts")
            ctx = "\n".join(ctx) if isinstance(ctx, (list, tuple)) else ctx
            rid = r.get("id", r.get("pubid", i))
            items.append(_mc_item(f"pubmedqa-{rid}", q, opts, L[opts.index(str(r["final_decision"]).lower())], ctx))
    return items


def _pubmedqa_local(path: Path) -> list[dict]:
    recs = read_records(path)
    gt = path.parent / "pubmedqa_test_ground_truth.json"
    if gt.is_file() and recs and "final_decision" in recs[0]:
        import json

        ids = set(json.loads(gt.read_text()))
        test = [r for r in recs if str(r.get("id")) in ids]
        if test:
            return test
    return recs


def guess_task(recs: list[dict]) -> str:
    """The task a local file's fields indicate."""
    r = recs[0] if recs else {}
    if "subject" in r and "choices" in r and "answer" in r:
        return "mmlu_medical"
    if "opa" in r and "cop" in r:
        return "medmcqa"
    if "options" in r and ("answer_idx" in r or "answer" in r):
        return "medqa"
    if "final_decision" in r:
        return "pubmedqa"
    if ("question" in r or "problem" in r) and "answer" in r:
        return "gsm8k" if "####" in str(r["answer"]) else "math500"
    raise DataError(f"cannot tell the task of a file with fields {', '.join(map(str, list(r)[:8]))}",
                    hint="use NAME=PATH with NAME one of " + ", ".join(benchmarks.names("target", builtin=False)) + " (docs/tasks.md)")


def load_target_task(spec: str = "arith", limit: int | None = None, seed: int = 0) -> Task:
    """A target task by name (``arith`` or a hub benchmark), ``NAME=PATH`` or a local PATH."""
    from peftarena_cli.tasks.arith import is_task_name

    name, path = split_spec(spec)
    entry = benchmarks.get(name) if name else None
    if entry is not None and entry.part != "target":
        entry = None
    if name and entry is None and not is_task_name(name):
        raise DataError(f"unknown target task {name!r}",
                        hint="use one of " + ", ".join(benchmarks.names("target")) + ", NAME=PATH or a file")
    if is_task_name(name):  # arith, or an easier level arith-1 ... arith-3 (tasks/arith.py)
        if path:
            raise UsageError(f"the {name} task is built in and takes no file")
        task = _arith(limit, seed, name)
    elif entry is not None and entry.loader is not None:  # a registered benchmark with a loader of its own
        task = entry.loader(path=path, limit=limit, seed=seed)
    elif entry is not None and entry.items == "mmlu":  # a file or a folder, the six subjects kept
        task = _mmlu_task(name, path, limit)
    else:
        if path:
            recs = _pubmedqa_local(Path(path)) if (name == "pubmedqa" or not name) and Path(path).suffix == ".json" else read_records(path)
            if not recs:
                raise DataError(f"{str(path)!r} has no records", hint="pass a non-empty file")
            name = name or guess_task(recs)
            entry = benchmarks.get(name)
            if entry.items == "mmlu":  # a bare MMLU file: read again by its own loader (subjects, per-subject limit)
                return _checked(_mmlu_task(name, path, limit), name)
        else:
            recs = load_hub(*entry.hub)
        if limit is not None:
            recs = recs[: int(limit)]
        if entry.scorer == "choice":
            task = Task(name, _mc_items(entry.items, recs, path), "choice", raw=True)
        else:
            task = Task(name, _math_items(name, recs, path), "math", raw=True)
    return _checked(task, name)


def _checked(task: Task, name: str) -> Task:
    if not task.items:
        raise DataError(f"task {name!r} has no items", hint="check --limit and the data file")
    return task


def minerva_fewshot() -> str:
    """The 4-shot Minerva math prompt (lm-evaluation-harness's minerva_math): each exemplar as
    "Problem:\\n...\\n\\nSolution: ..." and a blank line (peftarena_cli/data/minerva_fewshot.json)."""
    import json
    from importlib.resources import files

    data = json.loads(files("peftarena_cli").joinpath("data/minerva_fewshot.json").read_text(encoding="utf-8"))
    return "".join(f"Problem:\n{e['problem']}\n\nSolution: {e['solution']}\n\n" for e in data["exemplars"])
