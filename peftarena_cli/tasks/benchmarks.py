"""The benchmark registry: one entry per benchmark, the one place that says what a benchmark is
(docs/tasks.md, "Where a benchmark lives"; docs/design.md, "How to add").

An entry (:class:`Benchmark`) holds where the benchmark's records come from (its hub dataset, or
a loader of its own), the format its loader turns them into (items with raw fields), its family
(the group whose protocol settings it shares) and domain (math / medical / general), and its
per-protocol :class:`Settings` (prompt, chat, system prompt, shots, n, temperature, max tokens,
stops, scorer, aggregation, and where each value comes from). The built-in procedural suites
(``arith``, ``builtin.ifeval`` / ``.bbh`` / ``.facts``) are entries too.

Everything else reads this module: the target and general loaders, the protocols
(evaluation/protocols.py builds ``study`` and ``lm-eval`` from the entries), ``--limit``'s parts
and the CLI help. The scorer kinds the settings name are in :mod:`peftarena_cli.scorer_kinds`.
Adding a benchmark in an existing format is one entry here (:func:`register`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Callable

from peftarena_cli import scorer_kinds

@dataclass(frozen=True)
class Settings:
    """How one benchmark family is run and scored under a protocol (``sources``: where each
    value comes from in the reference code)."""

    template: str | dict               # format string over the item's fields, or {task name: format string}
    scorer: str
    max_new_tokens: int
    chat: bool = True                  # the chat template under --chat-template auto (when the tokenizer has one)
    chat_by_name: bool = False         # ... only for an instruct model by the study's name rule (tasks/prompting.py)
    system: str | None = None
    fewshot: int = 0
    stop: tuple[str, ...] = ()
    n: int = 1
    temperature: float = 0.0
    aggregation: str = "mean over items"
    sources: dict = field(default_factory=dict)
    loglik: bool = False               # multiple choice by the log-likelihood of each choice (LOGLIK_CHOICES), no generation
    prompt_type: str | None = None     # the study's math_eval prompt type the template is (tasks/math_prompts.py); --prompt-type picks another


_OC = "PEFT-Arena eval/opencompass_configs/datasets"
_ME = "PEFT-Arena third_party/math_eval"
_MED = "PEFT-Arena third_party/med_eval/main.py"

STUDY_SETTINGS = {  # the PEFT-Arena study (OpenCompass, math_eval, med_eval)
    "ifeval": Settings(
        "{prompt}", "ifeval", 1025, chat=True, aggregation="instruction-level strict (primary), prompt-level, loose",
        sources={"prompt": f"{_OC}/IFEval/IFEval_gen_3321a3.py (HUMAN: '{{prompt}}')",
                 "chat": "eval/eval_general.sh, generate_opencompass_config.py _chat_only_model_class: IFEval and "
                         "NQ always VLLMwithChatTemplate, whatever the model's name",
                 "max_new_tokens": "IFEval_gen_3321a3.py: max_out_len=1025",
                 "scorer": "OpenCompass IFEvaluator = Google's instruction_following_eval"}),
    "bbh": Settings(
        "Follow the given examples and answer the question.\n{cot}\n\nQ: {input}\nA: Let's think step by step.",
        "bbh:study", 512, chat=True, chat_by_name=True, fewshot=3, aggregation="accuracy per subtask, then the mean of the 27 subtasks",
        sources={"prompt": f"{_OC}/bbh/bbh_gen_5b92b0.py (HUMAN prompt; lib_prompt/*.txt = published CoT prompts)",
                 "chat": "eval/generate_opencompass_config.py: _base_or_chat_model_class; is_instruct_model (a "
                         "case-insensitive substring instruct, -ins, ins-, chat or it- in the model's name) -> "
                         "VLLMwithChatTemplate, else VLLM (plain prompt)",
                 "max_new_tokens": "bbh_gen_5b92b0.py: max_out_len=512 (stops only at EOS)",
                 "scorer": "OpenCompass datasets/bbh.py: bbh_mcq_postprocess (17 subtasks), bbh_freeform_postprocess, exact =="}),
    "nq_open": Settings(
        "Answer these questions, your answer should be as simple as possible, start your answer with the prompt "
        "'The answer is '.\nQ: {question}?", "nq:study", 50, chat=True,
        sources={"prompt": f"{_OC}/nq/nq_gen_c788f6.py (k=0: HUMAN prompt; the BOT 'A:' opens the generated turn)",
                 "max_new_tokens": "nq_gen_c788f6.py: max_out_len=50",
                 "chat": "generate_opencompass_config.py _chat_only_model_class (ifeval_nq): always VLLMwithChatTemplate",
                 "scorer": "OpenCompass datasets/natural_question.py: NQEvaluator (reference is a substring)"}),
    "math": Settings(
        "Question: {problem}\nAnswer:", "math:study", 8192, chat=True, n=16, temperature=0.6,
        stop=("\n\nQuestion:",), aggregation="mean over all samples (avg@16)", prompt_type="cot",
        sources={"prompt": f"{_ME}/utils.py PROMPT_TEMPLATES['cot'], stripped, in a user turn (math_eval.py)",
                 "sampling": "eval/eval_math.sh: TEMPERATURE=0.6, N_SAMPLING=16, MAX_TOKENS_PER_CALL=8192, top_p=1",
                 "chat": "eval/eval_math.sh: APPLY_CHAT_TEMPLATE=true by default (math_eval.py --apply_chat_template)",
                 "stop": "math_eval.py: stop_words for prompt_type cot",
                 "prompt_type": "eval/eval_math.sh: PROMPT_TYPE=\"cot\" for every model (configs/eval/math.yaml "
                                "prompt_type: cot); README.md 'Evaluation': qwen-boxed / llama-boxed without the "
                                "chat template to reproduce the Limit-of-RLVR/OpenR1 format (--prompt-type)",
                 "scorer": f"{_ME}/parser.py extract_answer + strip_string, grader.py math_equal"}),
    "gsm8k": Settings(
        "Question: {problem}\nAnswer:", "math:study", 8192, chat=True, n=16, temperature=0.6,
        stop=("\n\nQuestion:",), aggregation="mean over all samples; not part of the math target_score", prompt_type="cot",
        sources={"prompt": f"{_ME} (same settings as the other math sets)",
                 "aggregation": "eval/eval_math.sh: DATA_NAMES=math500,aime24,amc23"}),
    "medical": Settings(
        "{mc_text}\nPlease reason step by step, and put your final answer within \\boxed{{}}.", "choice:study", 8192,
        chat=True, system="You are a helpful assistant.",
        sources={"prompt": f"{_MED}: QWEN_PROMPT / LLAMA_PROMPT (system + instruction); the question text "
                           "'{{question}}\\nA. ...' is peftarena's (the study's eval file is not published)",
                 "max_new_tokens": "eval/eval_med.sh: MAX_TOKENS=8192, TEMPERATURE=0.0",
                 "chat": f"{_MED}: the prompt is always the chat format (QWEN_PROMPT / LLAMA_PROMPT written out)",
                 "scorer": "PEFT-Arena third_party/med_eval/utils/extract_answer.py: extract_overall_answer -> "
                           "match_choice, the last answer (last 'answer is' A-N, else last standalone option "
                           "letter, else option text occurring last, else the most similar option; no boxed step)",
                 "aggregation": f"{_MED}: accuracy per source (the items of one set), 'average' = the mean of "
                                "the sources' accuracies (np.mean over score_json); eval/summarize_results.py "
                                "compute_med_avg the same: target_score = mean of the medical sets",
                 "mmlu_medical": "configs/eval/med.yaml: tasks medmcqa,medqa,mmlu_medical,pubmedqa (one set among "
                                 "four); the subjects are MultiMedQA's six (the study's m1 eval file is not "
                                 "published to read them from)"}),
}

_LE = "lm-evaluation-harness 0.4.13 lm_eval/tasks"
LM_EVAL_SETTINGS = {  # lm-evaluation-harness v0.4.13 task defaults
    "ifeval": Settings(
        "{prompt}", "ifeval", 1280, chat=False, aggregation="instruction-level strict (primary), prompt-level, loose",
        sources={"all": f"{_LE}/ifeval/ifeval.yaml (0-shot, max_gen_toks 1280, no stops, greedy)",
                 "chat": "lm-eval applies no chat template unless --apply_chat_template"}),
    "bbh": Settings(
        "{cot}\n\nQ: {input}\nA: Let's think step by step.\n", "bbh:lm-eval", 1024, chat=False, fewshot=3,
        stop=("</s>", "Q", "\n\n"), aggregation="exact match, mean over all items (weight_by_size)",
        sources={"prompt": f"{_LE}/bbh/cot_fewshot/*.yaml (description + 3 CoT exemplars + 'Q: ..\\nA: Let's think step by step.\\n')",
                 "generation": "_cot_fewshot_template_yaml: max_gen_toks 1024, until ['</s>', 'Q', '\\n\\n']",
                 "scorer": "get-answer filter: regex (?<=the answer is )(.*)(?=.), take_first; exact_match",
                 "aggregation": "_bbh_cot_fewshot.yaml: mean, weight_by_size: true"}),
    "nq_open": Settings(
        "Answer these questions:\n\nQ: {question}?\nA:", "nq:lm-eval", 256, chat=False, stop=("\n", ".", ","),
        sources={"all": f"{_LE}/nq_open/nq_open.yaml (0-shot; max_gen_toks is lm-eval's default 256)",
                 "scorer": "remove_whitespace filter; exact_match ignore_case, ignore_punctuation, articles regex"}),
    "gsm8k": Settings(
        "Question: {problem}\nAnswer:", "gsm8k:lm-eval", 256, chat=False, stop=("Question:", "</s>", "<|im_end|>"),
        sources={"all": f"{_LE}/gsm8k/gsm8k.yaml (strict-match and flexible-extract filters; max_gen_toks default 256)",
                 "fewshot": "gsm8k.yaml uses 5 exemplars from the train split; peftarena runs 0-shot (no train split offline)"}),
    "math": Settings(
        "{minerva_fewshot}Problem:\n{problem}\n\nSolution:", "minerva:lm-eval", 256, chat=False, fewshot=4,
        stop=("Problem:",),
        sources={"all": f"{_LE}/minerva_math/minerva_math500.yaml + utils.py (4-shot Minerva prompt, until 'Problem:')",
                 "scorer": "utils.py get_unnormalized_answer, normalize_final_answer, is_equiv; math_verify"}),
    "medical": Settings(
        {"pubmedqa": "Abstract: {context}\nQuestion: {question}\nAnswer:",
         "medqa": "Question: {question}\n{options_lines}Answer:",
         "medmcqa": "Question: {question}\nChoices:\n{options_lines}Answer:",
         "mmlu_medical": "{description}{question}\n{options_lines}Answer:"},
        "choice:lm-eval", 0, chat=False, aggregation="acc: argmax of the choices' summed log-likelihoods, mean",
        loglik=True,
        sources={"all": f"{_LE}/pubmedqa (choices yes/no/maybe), medqa (medqa_4options, choices A-D), "
                        "medmcqa (choices A-D), mmlu/default/mmlu_SUBJECT.yaml (choices A-D): output_type "
                        "multiple_choice, metric acc",
                 "prompt": "preprocess_pubmedqa.doc_to_text, preprocess_medqa.doc_to_text, utils_medmcqa.doc_to_text; "
                           "mmlu/default/_default_template_yaml doc_to_text after the subject's description",
                 "mmlu_medical": f"{_LE}/benchmarks/multimedqa/multimedqa.yaml: the six MMLU subjects; acc over "
                                 "all their items (aggregate weight_by_size: True)"}),
}



@dataclass(frozen=True)
class Benchmark:
    """One benchmark (or built-in suite) and everything that defines it."""

    name: str                            # the name users give (--task / --suite); also the task's name
    part: str                            # "target" (plasticity) or "general" (stability)
    domain: str                          # "math", "medical" or "general"
    scorer: str                          # the scorer its raw task carries (a scorer kind, scorer_kinds.py)
    family: str | None = None            # the family whose protocol settings it shares; None: built in
    protocols: dict = field(default_factory=dict)   # protocol name -> Settings
    hub: tuple | None = None             # (dataset, config, split) on the hub
    items: str | None = None             # the built-in loader format of its records (loaders dispatch on it)
    loader: Callable | None = None       # a loader of its own: target (path, limit, seed), general (path, limit) -> Task
    loglik: str | None = None            # lm-eval multiple choice: the continuations ("options" texts or "letters")
    study_target: bool = False           # averaged into the study protocol's target_score
    study_general: bool = False          # one of the parts of the study's general_score (all of them, exactly)
    limit_key: str | None = None         # the part name a per-part --limit gives it
    task_name: str | None = None         # the name of the task it loads, when not ``name`` (built-in parts)
    title: str = ""                      # one line for the CLI help and docs
    fields: tuple[str, ...] = ()         # fields its records hold; a --responses file carrying them is read as the task
    local: str = "file"                  # what NAME=PATH names: a records "file" or a "folder" of them
    variants: tuple[str, ...] = ()       # other names it loads under (a built-in task's easier levels)

    @property
    def builtin(self) -> bool:
        return self.family is None


REGISTRY: dict[str, Benchmark] = {}
# What eval-target --task, eval-general --suite and drift's prompt sets default to, per part.
DEFAULT_SPECS = {"target": "arith", "general": "builtin"}
DEFAULT_TARGET = DEFAULT_SPECS["target"]     # the built-in procedural target task
DEFAULT_GENERAL = DEFAULT_SPECS["general"]   # the built-in general suite: every built-in general part
# finetune --data's default: the built-in target task, on its train split (evaluation reads its test split)
DEFAULT_TRAIN = DEFAULT_TARGET
# The prompt set of the built-in general parts interleaved (csd, act-geom and drift prompt sets).
GENERAL_PROMPT_SET = "general"
# The per-part --limit that help texts and hints show (the arena's general sizes; docs/report.md),
# and the bare N that interpolate's example gives its target task.
LIMIT_EXAMPLE = {"ifeval": 280, "bbh": 200, "facts": 357}
LIMIT_EXAMPLE_BARE = 432


class LiveView(Mapping):
    """A read-only mapping rebuilt from the registry on every access, so that benchmarks registered
    later (a user's, a test's) show in every view: ``LiveView(lambda: {...})``."""

    def __init__(self, build: Callable[[], dict]):
        self._build = build

    def __getitem__(self, key):
        return self._build()[key]

    def __iter__(self):
        return iter(self._build())

    def __len__(self):
        return len(self._build())


def register(b: Benchmark, replace: bool = False) -> Benchmark:
    """Add a benchmark (``replace``: overwrite one of the same name)."""
    if b.part not in ("target", "general"):
        raise ValueError(f"benchmark {b.name!r}: part {b.part!r} is neither 'target' nor 'general'")
    if b.name in REGISTRY and not replace:
        raise ValueError(f"benchmark {b.name!r} exists")
    REGISTRY[b.name] = b
    return b


def unregister(name: str) -> None:
    REGISTRY.pop(name, None)


def get(name: str) -> Benchmark | None:
    return REGISTRY.get(name)


def by_task(task_name: str) -> Benchmark | None:
    """The entry whose loaded task is named ``task_name``."""
    for b in REGISTRY.values():
        if (b.task_name or b.name) == task_name:
            return b
    return None


def names(part: str | None = None, builtin: bool | None = None, domain: str | None = None) -> tuple[str, ...]:
    """Benchmark names in registry order, optionally of one part / built in or not / one domain."""
    return tuple(b.name for b in REGISTRY.values()
                 if (part is None or b.part == part) and (builtin is None or b.builtin == builtin)
                 and (domain is None or b.domain == domain))


def family_of(task_name: str) -> str | None:
    b = REGISTRY.get(task_name)
    return b.family if b is not None else None


def protocol_settings(protocol: str) -> dict:
    """{family: Settings} of one protocol over the registered benchmarks."""
    out: dict = {}
    for b in REGISTRY.values():
        if b.family is not None and protocol in b.protocols:
            out.setdefault(b.family, b.protocols[protocol])
    return out


def limit_parts() -> tuple[str, ...]:
    """The part names a per-part ``--limit`` can give (general suites)."""
    out: list = []
    for b in REGISTRY.values():
        if b.limit_key and b.limit_key not in out:
            out.append(b.limit_key)
    return tuple(out)


def builtin_parts() -> tuple[str, ...]:
    """The parts of the built-in general suite (``builtin.PART``), in registry order."""
    return tuple(b.name.split(".", 1)[1] for b in REGISTRY.values() if b.part == "general" and b.builtin)


def task_names(part: str, builtin: bool | None = None) -> tuple[str, ...]:
    """The names of the tasks the entries of ``part`` load (``task_name``, else the entry's name)."""
    return tuple(b.task_name or b.name for b in REGISTRY.values()
                 if b.part == part and (builtin is None or b.builtin == builtin))


def study_general() -> tuple[str, ...]:
    """The task names whose mean, all of them and nothing else, is the study's ``general_score``."""
    return tuple(b.task_name or b.name for b in REGISTRY.values() if b.part == "general" and b.study_general)


def general_specs() -> tuple[str, ...]:
    """What ``--suite`` accepts by name: the hub benchmarks, the built-in suite, then its parts."""
    return names("general", builtin=False) + (DEFAULT_GENERAL,) + names("general", builtin=True)


def prompt_sets() -> tuple[str, ...]:
    """The built-in prompt-set names: the built-in target tasks, the built-in general parts
    interleaved (:data:`GENERAL_PROMPT_SET`), then each built-in general part."""
    return names("target", builtin=True) + (GENERAL_PROMPT_SET,) + builtin_parts()


def per_subtask() -> tuple[str, ...]:
    """The benchmarks whose ``--limit`` counts items per subtask: those scored per subtask (their
    kind's summary is ``subtasks``) and read from records (a built-in part counts prompts)."""
    return tuple(b.name for b in REGISTRY.values()
                 if not b.builtin and scorer_kinds.KINDS[b.scorer].summary == "subtasks")


def per_subtask_label() -> str:
    """How help texts name the :func:`per_subtask` benchmarks (upper case, as their folders' labels)."""
    return "/".join(n.upper() for n in per_subtask())


def limit_example(parts: int | None = None, bare: bool = False) -> str:
    """A per-part ``--limit`` for help texts and hints: the first ``parts`` entries of
    :data:`LIMIT_EXAMPLE` (all by default), after :data:`LIMIT_EXAMPLE_BARE` when ``bare``."""
    text = ",".join(f"{k}={v}" for k, v in list(LIMIT_EXAMPLE.items())[:parts])
    return f"{LIMIT_EXAMPLE_BARE},{text}" if bare else text


def config_example() -> tuple[str, str]:
    """(dataset, config) of the first registered hub benchmark that names a dataset config."""
    return next((b.hub[0], b.hub[1]) for b in REGISTRY.values() if b.hub and b.hub[1])


def task_help() -> str:
    """``eval-target --task``'s help: the built-in target suites, then the benchmarks."""
    built = [f"{b.name} ({b.title})" if b.title else b.name for b in REGISTRY.values() if b.part == "target" and b.builtin]
    return ", ".join(built + list(names("target", builtin=False))) + " (hub), NAME=PATH, or a file."


def suite_help() -> str:
    """``eval-general --suite``'s help: the built-in suite and its parts, then the benchmarks."""
    parts = names("general", builtin=True)
    short = (parts[0] + "".join("/." + p.split(".", 1)[1] for p in parts[1:])) if parts else ""
    return f"builtin (offline), {short}, or {','.join(names('general', builtin=False))} (hub); NAME=PATH for local files."


# --- the entries -----------------------------------------------------------------------------------
def _entries():
    S, L = STUDY_SETTINGS, LM_EVAL_SETTINGS
    both = lambda fam: {"study": S[fam], "lm-eval": L[fam]}  # noqa: E731
    from peftarena_cli.tasks.arith import LEVELS

    levels = tuple(f"arith-{i}" for i in LEVELS)
    register(Benchmark("arith", "target", "math", "math", items="arith", variants=levels,
                       title=f"built in; {', '.join(levels)}: easier levels"))
    register(Benchmark("gsm8k", "target", "math", "math", "gsm8k", both("gsm8k"), ("openai/gsm8k", "main", "test"),
                       items="math", title="GSM8K grade-school math"))
    for name, hub in (("math500", ("HuggingFaceH4/MATH-500", None, "test")),
                      ("aime24", ("HuggingFaceH4/aime_2024", None, "train")),
                      ("amc23", ("math-ai/amc23", None, "test"))):
        register(Benchmark(name, "target", "math", "math", "math", both("math"), hub, items="math", study_target=True))
    for name, hub, loglik in (("medmcqa", ("openlifescienceai/medmcqa", None, "validation"), "letters"),
                              ("medqa", ("GBaker/MedQA-USMLE-4-options", None, "test"), "letters"),
                              ("pubmedqa", ("qiaojin/PubMedQA", "pqa_labeled", "train"), "options")):
        register(Benchmark(name, "target", "medical", "choice", "medical", both("medical"), hub, items=name,
                           loglik=loglik, study_target=True))
    register(Benchmark("mmlu_medical", "target", "medical", "choice", "medical", both("medical"),
                       ("cais/mmlu", "all", "test"), items="mmlu", loglik="letters", study_target=True, local="file",
                       title="MMLU's six medical subjects"))
    for part, task_name in (("ifeval", "ifeval_builtin"), ("bbh", "bbh_builtin"), ("facts", "facts")):
        register(Benchmark(f"builtin.{part}", "general", "general", part,
                           items=f"builtin.{part}", limit_key=part, task_name=task_name))
    register(Benchmark("ifeval", "general", "general", "ifeval", "ifeval", both("ifeval"), ("google/IFEval", None, "train"),
                       items="ifeval", limit_key="ifeval", study_general=True, fields=("instruction_id_list", "kwargs")))
    register(Benchmark("bbh", "general", "general", "bbh", "bbh", both("bbh"), ("lukaemon/bbh", None, "test"),
                       items="bbh", limit_key="bbh", local="folder", study_general=True))
    register(Benchmark("nq_open", "general", "general", "nq", "nq_open", both("nq_open"),
                       ("google-research-datasets/nq_open", None, "validation"), items="nq_open", limit_key="nq_open",
                       study_general=True, fields=("question", "answer")))


_entries()
