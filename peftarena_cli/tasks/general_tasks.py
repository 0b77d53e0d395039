"""General suites (stability): IFEval, BIG-Bench Hard (27 subtasks, 3-shot CoT with the
published prompts) and NQ-open, from the hub by name or from local files in the published formats
(``ifeval=input_data.jsonl``, ``bbh=DIR`` holding ``tasks/*.json`` or ``bbh/*.json`` and
``cot-prompts/*.txt``, ``nq_open=NQ-open.dev.jsonl``)."""

from __future__ import annotations


from pathlib import Path

from peftarena_cli.errors import DataError, InputNotFound
from peftarena_cli.tasks import benchmarks
from peftarena_cli.tasks.sources import load_hub, read_records, require_fields
from peftarena_cli.tasks.spec import Item, Task

BBH_SUBTASKS = (
    "boolean_expressions", "causal_judgement", "date_understanding", "disambiguation_qa", "dyck_languages",
    "formal_fallacies", "geometric_shapes", "hyperbaton", "logical_deduction_five_objects",
    "logical_deduction_seven_objects", "logical_deduction_three_objects", "movie_recommendation",
    "multistep_arithmetic_two", "navigate", "object_counting", "penguins_in_a_table",
    "reasoning_about_colored_objects", "ruin_names", "salient_translation_error_detection", "snarks",
    "sports_understanding", "temporal_sequences", "tracking_shuffled_objects_five_objects",
    "tracking_shuffled_objects_seven_objects", "tracking_shuffled_objects_three_objects", "web_of_lies",
    "word_sorting",
)
# The built-in facts part asks in the NQ-open format of lm-evaluation-harness (tasks/builtin_general.py);
# the real benchmarks' prompts, budgets and stops come from the chosen protocol (evaluation/protocols.py).
NQ_PROMPT = "Answer these questions:\n\nQ: {q}?\nA:"
NQ_STOP = ("\n", ".", ",")


def ifeval_task(path=None, limit=None) -> Task:
    recs = read_records(path) if path else load_hub(*benchmarks.get("ifeval").hub)
    require_fields(recs, ["prompt", "instruction_id_list", "kwargs"], "IFEval data", path)
    if limit is not None:
        recs = recs[: int(limit)]
    items = []
    for r in recs:
        kw = [{k: v for k, v in (d or {}).items() if v is not None} for d in r["kwargs"]]
        items.append(Item(f"ifeval-{r.get('key', len(items))}", r["prompt"], None,
                          {"instruction_id_list": list(r["instruction_id_list"]), "kwargs": kw}))
    return Task("ifeval", items, "ifeval", raw=True)


def read_cot_prompt(text: str) -> str:
    """The few-shot part of a published CoT prompt file (after the canary line and ``-----``)."""
    return text.split("-----", 1)[1].strip() if "-----" in text else text.strip()


def _bbh_dirs(root: Path) -> tuple[Path, Path]:
    for data in (root / "tasks", root / "bbh", root):
        if data.is_dir() and any(data.glob("*.json")):
            break
    else:
        raise DataError(f"{str(root)!r} holds no BBH task files (tasks/*.json)", hint="pass the BIG-Bench-Hard folder")
    prompts = root / "cot-prompts"
    if not prompts.is_dir():
        raise DataError(f"{str(root)!r} has no cot-prompts/ folder", hint="BBH needs the published CoT prompts (cot-prompts/*.txt)")
    return data, prompts


def bbh_task(path=None, limit=None, subtasks=None, prompts_dir=None) -> Task:
    subtasks = list(subtasks or BBH_SUBTASKS)
    items, fewshot = [], {}
    if path:
        root = Path(path)
        if not root.exists():
            raise InputNotFound(f"no such BBH folder: {str(root)!r}")
        data_dir, pdir = _bbh_dirs(root)
        subtasks = [s for s in subtasks if (data_dir / f"{s}.json").is_file()]
        if not subtasks:
            raise DataError(f"{str(root)!r} holds none of the 27 BBH subtasks")
    else:
        if prompts_dir is None:
            raise DataError("BBH from the hub needs the published CoT prompts",
                            hint="pass bbh=DIR with the BIG-Bench-Hard folder (bbh/ or tasks/, and cot-prompts/)")
        pdir = Path(prompts_dir)
    for s in subtasks:
        pfile = pdir / f"{s}.txt"
        if not pfile.is_file():
            raise DataError(f"missing CoT prompt {str(pfile)!r}", hint="the cot-prompts folder needs one .txt per subtask")
        fewshot[s] = read_cot_prompt(pfile.read_text(encoding="utf-8"))
        recs = read_records(data_dir / f"{s}.json") if path else load_hub(benchmarks.get("bbh").hub[0], s, benchmarks.get("bbh").hub[2])
        require_fields(recs, ["input", "target"], f"BBH {s}", path)
        if limit is not None:
            recs = recs[: int(limit)]
        for i, r in enumerate(recs):
            items.append(Item(f"bbh-{s}-{i}", r["input"], str(r["target"]), {"subtask": s, "fields": {"input": r["input"]}}))
    return Task("bbh", items, "bbh", subtask_key="subtask", raw=True, fewshot=fewshot)


def nq_open_task(path=None, limit=None) -> Task:
    recs = read_records(path) if path else load_hub(*benchmarks.get("nq_open").hub)
    require_fields(recs, ["question", "answer"], "NQ-open data", path)
    if limit is not None:
        recs = recs[: int(limit)]
    items = [Item(f"nq_open-{i}", r["question"], list(r["answer"]) if not isinstance(r["answer"], str) else [r["answer"]],
                  {"fields": {"question": r["question"]}})
             for i, r in enumerate(recs)]
    return Task("nq_open", items, "nq", raw=True)


_FORMATS = {"ifeval": ifeval_task, "bbh": bbh_task, "nq_open": nq_open_task}  # loader of each records format


# {name: loader(path=None, limit=None) -> Task} of the registered general benchmarks that are not
# built in, read live: a benchmark's own loader, else its records format's
GENERAL_LOADERS = benchmarks.LiveView(lambda: {b.name: b.loader or _FORMATS[b.items] for b in benchmarks.REGISTRY.values()
                                               if b.part == "general" and not b.builtin})


