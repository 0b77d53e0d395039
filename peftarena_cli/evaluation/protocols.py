"""Evaluation protocols: named, versioned bundles of everything that decides what a benchmark
number means (docs/eval.md, "Protocols").

A protocol gives, per benchmark family, the prompt template, whether the chat template is used,
the system prompt, the few-shot count, the generation budget and stops, the sampling (n,
temperature), the scorer (extraction + grading) and the aggregation. :func:`apply` turns a
loaded task (its items carry the benchmark's raw fields) into a runnable :class:`Task` under one
protocol, with explicit overrides recorded.

* ``study``: the PEFT-Arena study's evaluation (OpenCompass configs for IFEval, BBH, NQ-open;
  its ``math_eval`` and ``med_eval``);
* ``lm-eval``: lm-evaluation-harness v0.4.13's task defaults (ifeval, bbh_cot_fewshot, nq_open,
  gsm8k, minerva_math);
* ``builtin``: the built-in procedural suites' own settings (they exist under no other protocol).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from peftarena_cli.errors import IncompatibleInputs, UsageError

DEFAULT_PROTOCOL = "study"
# Bounds of the generation overrides, checked before anything is loaded or allocated:
# * MAX_NEW_TOKENS: the context window of the largest common open models (128 Ki tokens); the
#   longest protocol budget is 8192 (the study's math), and no model generates past its window;
# * MAX_SAMPLES (-n, samples per item): pass@k curves in the literature stop at k = 256-1024 (the
#   study's at 64), while the generation batch and the per-sample rows grow with n x items.
MAX_NEW_TOKENS = 131072
MAX_SAMPLES = 1024


def check_generation_options(max_new_tokens=None, n=None, temperature=None) -> None:
    """The generation overrides (``--max-new-tokens``, ``-n``, ``--temperature``) within their bounds:
    a usage error naming the option otherwise."""
    import math

    if max_new_tokens is not None and not 1 <= int(max_new_tokens) <= MAX_NEW_TOKENS:
        raise UsageError(f"--max-new-tokens {max_new_tokens} is outside 1..{MAX_NEW_TOKENS}",
                         hint=f"at most {MAX_NEW_TOKENS} tokens (a 128 Ki context window); the protocols use 512-8192")
    if n is not None and not 1 <= int(n) <= MAX_SAMPLES:
        raise UsageError(f"-n {n} samples per item is outside 1..{MAX_SAMPLES}",
                         hint=f"at most {MAX_SAMPLES} samples per item (the study's pass@k goes to 64)")
    if temperature is not None and not (math.isfinite(float(temperature)) and float(temperature) >= 0):
        raise UsageError(f"--temperature {temperature} is not a finite number >= 0",
                         hint="0 = greedy; sampling temperatures are usually 0.6-1.0")


# the benchmark family of each task name
FAMILY = {"ifeval": "ifeval", "bbh": "bbh", "nq_open": "nq_open", "gsm8k": "gsm8k", "math500": "math",
          "aime24": "math", "amc23": "math", "medmcqa": "medical", "medqa": "medical", "pubmedqa": "medical"}


@dataclass(frozen=True)
class Settings:
    """How one benchmark family is run and scored under a protocol (``sources``: where each
    value comes from in the reference code)."""

    template: str | dict               # format string over the item's fields, or {task name: format string}
    scorer: str
    max_new_tokens: int
    chat: bool = True
    system: str | None = None
    fewshot: int = 0
    stop: tuple[str, ...] = ()
    n: int = 1
    temperature: float = 0.0
    aggregation: str = "mean over items"
    sources: dict = field(default_factory=dict)
    loglik: bool = False               # multiple choice by the log-likelihood of each choice (LOGLIK_CHOICES), no generation


@dataclass(frozen=True)
class Protocol:
    name: str
    version: int
    title: str
    settings: dict                     # family -> Settings
    target_mean: tuple[str, ...] = ()  # tasks averaged into target_score (empty: every target task)

    @property
    def label(self) -> str:
        return f"{self.name}@{self.version}"


_OC = "PEFT-Arena eval/opencompass_configs/datasets"
_ME = "PEFT-Arena third_party/math_eval"
_MED = "PEFT-Arena third_party/med_eval/main.py"

STUDY = Protocol("study", 1, "the PEFT-Arena study (OpenCompass, math_eval, med_eval)", {
    "ifeval": Settings(
        "{prompt}", "ifeval", 1025, chat=True, aggregation="instruction-level strict (primary), prompt-level, loose",
        sources={"prompt": f"{_OC}/IFEval/IFEval_gen_3321a3.py (HUMAN: '{{prompt}}')",
                 "chat": "eval/eval_general.sh: IFEval and NQ always VLLMwithChatTemplate",
                 "max_new_tokens": "IFEval_gen_3321a3.py: max_out_len=1025",
                 "scorer": "OpenCompass IFEvaluator = Google's instruction_following_eval"}),
    "bbh": Settings(
        "Follow the given examples and answer the question.\n{cot}\n\nQ: {input}\nA: Let's think step by step.",
        "bbh:study", 512, chat=True, fewshot=3, aggregation="accuracy per subtask, then the mean of the 27 subtasks",
        sources={"prompt": f"{_OC}/bbh/bbh_gen_5b92b0.py (HUMAN prompt; lib_prompt/*.txt = published CoT prompts)",
                 "chat": "eval/eval_general.sh: instruct models -> VLLMwithChatTemplate",
                 "max_new_tokens": "bbh_gen_5b92b0.py: max_out_len=512 (stops only at EOS)",
                 "scorer": "OpenCompass datasets/bbh.py: bbh_mcq_postprocess (17 subtasks), bbh_freeform_postprocess, exact =="}),
    "nq_open": Settings(
        "Answer these questions, your answer should be as simple as possible, start your answer with the prompt "
        "'The answer is '.\nQ: {question}?", "nq:study", 50, chat=True,
        sources={"prompt": f"{_OC}/nq/nq_gen_c788f6.py (k=0: HUMAN prompt; the BOT 'A:' opens the generated turn)",
                 "max_new_tokens": "nq_gen_c788f6.py: max_out_len=50",
                 "scorer": "OpenCompass datasets/natural_question.py: NQEvaluator (reference is a substring)"}),
    "math": Settings(
        "Question: {problem}\nAnswer:", "math:study", 8192, chat=True, n=16, temperature=0.6,
        stop=("\n\nQuestion:",), aggregation="mean over all samples (avg@16)",
        sources={"prompt": f"{_ME}/utils.py PROMPT_TEMPLATES['cot'], stripped, in a user turn (math_eval.py)",
                 "sampling": "eval/eval_math.sh: TEMPERATURE=0.6, N_SAMPLING=16, MAX_TOKENS_PER_CALL=8192, top_p=1",
                 "stop": "math_eval.py: stop_words for prompt_type cot",
                 "scorer": f"{_ME}/parser.py extract_answer + strip_string, grader.py math_equal"}),
    "gsm8k": Settings(
        "Question: {problem}\nAnswer:", "math:study", 8192, chat=True, n=16, temperature=0.6,
        stop=("\n\nQuestion:",), aggregation="mean over all samples; not part of the math target_score",
        sources={"prompt": f"{_ME} (same settings as the other math sets)",
                 "aggregation": "eval/eval_math.sh: DATA_NAMES=math500,aime24,amc23"}),
    "medical": Settings(
        "{mc_text}\nPlease reason step by step, and put your final answer within \\boxed{{}}.", "choice:study", 8192,
        chat=True, system="You are a helpful assistant.",
        sources={"prompt": f"{_MED}: QWEN_PROMPT / LLAMA_PROMPT (system + instruction); the question text "
                           "'{{question}}\\nA. ...' is peftarena's (the study's eval file is not published)",
                 "max_new_tokens": "eval/eval_med.sh: MAX_TOKENS=8192, TEMPERATURE=0.0",
                 "scorer": f"{_MED}: extract_overall_answer (last match, closest-option fallback)"}),
}, target_mean=("aime24", "amc23", "math500", "medmcqa", "medqa", "pubmedqa"))

_LE = "lm-evaluation-harness 0.4.13 lm_eval/tasks"
LM_EVAL = Protocol("lm-eval", 1, "lm-evaluation-harness v0.4.13 task defaults", {
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
         "medmcqa": "Question: {question}\nChoices:\n{options_lines}Answer:"},
        "choice:lm-eval", 0, chat=False, aggregation="acc: argmax of the choices' summed log-likelihoods, mean",
        loglik=True,
        sources={"all": f"{_LE}/pubmedqa (choices yes/no/maybe), medqa (medqa_4options, choices A-D), "
                        "medmcqa (choices A-D): output_type multiple_choice, metric acc",
                 "prompt": "preprocess_pubmedqa.doc_to_text, preprocess_medqa.doc_to_text, utils_medmcqa.doc_to_text"}),
})
# lm-eval's multiple-choice continuations: PubMedQA's option texts, the letters elsewhere
LOGLIK_CHOICES = {"pubmedqa": "options", "medqa": "letters", "medmcqa": "letters"}

BUILTIN = Protocol("builtin", 1, "the built-in procedural suites' own settings", {})
PROTOCOLS = {p.name: p for p in (STUDY, LM_EVAL)}


def get_protocol(name: str | None) -> Protocol:
    """A protocol by name; unknown names are a usage error listing the known ones."""
    if name is not None and not str(name).strip():
        raise UsageError(f"empty protocol name {name!r}", hint="use one of: " + ", ".join(PROTOCOLS) + " (or leave --protocol out)")
    name = DEFAULT_PROTOCOL if name is None else str(name)
    if name not in PROTOCOLS:
        raise UsageError(f"unknown protocol {name!r}", hint="use one of: " + ", ".join(PROTOCOLS))
    return PROTOCOLS[name]


def _overrides(s: Settings, max_new_tokens=None, n=None, temperature=None) -> dict:
    out = {}
    if max_new_tokens is not None and int(max_new_tokens) != s.max_new_tokens:
        out["max_new_tokens"] = int(max_new_tokens)
    if n is not None and int(n) != s.n:
        out["n"] = int(n)
    if temperature is not None and float(temperature) != s.temperature:
        out["temperature"] = float(temperature)
    return out


def format_overrides(ov: dict) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(ov.items()))


def parse_overrides(text: str) -> dict:
    out = {}
    for part in filter(None, (text or "").split(",")):
        k, _, v = part.partition("=")
        out[k] = float(v) if k == "temperature" else int(v)
    return out


def apply(task, protocol: Protocol | str | None = None, *, max_new_tokens=None, n=None, temperature=None):
    """The runnable task of ``task`` under ``protocol``, with explicit overrides applied and
    recorded. Built-in tasks (no benchmark family) keep their own settings under ``builtin``."""
    from peftarena_cli.tasks.spec import Item

    check_generation_options(max_new_tokens, n, temperature)
    proto = protocol if isinstance(protocol, Protocol) else get_protocol(protocol)
    family = FAMILY.get(task.name)
    if family is None or not task.raw:  # a built-in task, or one already under a protocol: overrides only
        current = Settings("", task.scorer, task.max_new_tokens, n=task.n_samples, temperature=task.temperature)
        ov = dict(parse_overrides(task.overrides), **_overrides(current, max_new_tokens, n, temperature))
        return replace(task, max_new_tokens=ov.get("max_new_tokens", task.max_new_tokens),
                       n_samples=ov.get("n", task.n_samples), temperature=ov.get("temperature", task.temperature),
                       protocol=task.protocol if family is not None else BUILTIN.label, overrides=format_overrides(ov))
    s = proto.settings.get(family)
    if s is None:
        raise IncompatibleInputs(f"protocol {proto.name!r} does not cover {task.name!r}",
                                 hint="use --protocol " + " or ".join(p for p, v in PROTOCOLS.items() if family in v.settings))
    template = s.template[task.name] if isinstance(s.template, dict) else s.template
    ov = _overrides(s, max_new_tokens, n, temperature)
    items = []
    for it in task.items:
        fields = dict(it.meta.get("fields") or {})
        fields.setdefault("prompt", it.prompt)
        if "{cot}" in template:
            fields["cot"] = task.fewshot.get(it.meta.get("subtask"), "")
        if "{minerva_fewshot}" in template:
            from peftarena_cli.tasks.target_tasks import minerva_fewshot

            fields["minerva_fewshot"] = minerva_fewshot()
        try:
            text = template.format(**fields)
        except KeyError as e:
            raise IncompatibleInputs(f"protocol {proto.name!r} needs the field {e.args[0]!r}, which {task.name!r} items lack",
                                     hint="load the benchmark from its published format (docs/tasks.md)") from None
        items.append(Item(it.id, text, it.reference, it.meta))
    return replace(task, items=items, scorer=s.scorer, max_new_tokens=ov.get("max_new_tokens", s.max_new_tokens),
                   stop=s.stop, chat=s.chat, system=s.system, n_samples=ov.get("n", s.n),
                   temperature=ov.get("temperature", s.temperature), protocol=proto.label,
                   overrides=format_overrides(ov), raw=False, loglik=LOGLIK_CHOICES.get(task.name) if s.loglik else None)
