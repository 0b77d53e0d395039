"""The study's math prompt types (``--prompt-type``; docs/eval.md, "Math prompt types") and the rule
that picks one for a model.

The study (PEFT-Arena ``third_party/math_eval``) formats every math problem with one named prompt
type (``utils.py`` ``PROMPT_TEMPLATES``: an input template over the problem) and then, with
``--apply_chat_template``, puts the text in a user turn of the tokenizer's chat template
(``math_eval.py``). ``eval/eval_math.sh`` runs ``cot`` in the chat template for every model; its
README adds the two family formats, ``qwen-boxed`` for Qwen and ``llama-boxed`` for Llama
checkpoints, which write the chat turns out themselves and so run without the tokenizer's template.

* ``auto`` (the default): the study's default, ``cot`` in the chat template, whatever the model;
* ``boxed``: the family format by the model's name: ``llama`` in a lower-cased name gives
  ``llama-boxed``, else ``qwen`` gives ``qwen-boxed`` (``llama`` tested first, as ``med_eval``'s
  ``main.py`` picks its family prompt); another family is refused;
* a prompt type's name: that one.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from peftarena_cli.errors import IncompatibleInputs, UsageError

# math_eval.py's stop words for every prompt type, and those it adds by the type's name
# ("qwen" in the name: the role names and the halves of <|im_end|>/<|im_start|> that a model without
# the template writes out as text; "llama": Llama 3's end of turn).
_BASE_STOPS = ("</s>", "<|im_end|>", "<|endoftext|>")
_QWEN_STOPS = _BASE_STOPS + ("assistant", "user", "_end", "_start")
_LLAMA_STOPS = _BASE_STOPS + ("<|eot_id|>",)


@dataclass(frozen=True)
class MathPrompt:
    """One prompt type: its input template over the problem (``{input}``; doubled braces are
    literal), whether the text goes through the tokenizer's chat template under ``--chat-template
    auto``, the stops of the generation, and where it is written in the study's repository."""

    name: str
    template: str
    chat: bool
    stop: tuple[str, ...]
    source: str

    def render(self, problem: str) -> str:
        """The prompt of one problem: the template filled in, spaces at either end removed
        (math_eval's ``construct_prompt`` returns ``full_prompt.strip(" ")``; newlines stay)."""
        return self.template.format(input=problem).strip(" ")


_U = "PEFT-Arena third_party/math_eval/utils.py PROMPT_TEMPLATES"
PROMPT_TYPES = {p.name: p for p in (
    # ``cot`` keeps the stop the study@2 protocol has always had: with the chat template, the base stop
    # words are the template's end-of-turn and end-of-text tokens, at which the generation stops anyway.
    MathPrompt("cot", "Question: {input}\nAnswer: ", True, ("\n\nQuestion:",), f"{_U}['cot'] (line 82)"),
    MathPrompt("qwen-boxed",
               "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
               "<|im_start|>user\n{input}\nPlease reason step by step, and put your final answer within \\boxed{{}}.<|im_end|>\n"
               "<|im_start|>assistant\n", False, _QWEN_STOPS, f"{_U}['qwen-boxed'] (lines 139-145)"),
    MathPrompt("llama-boxed",
               "<|start_header_id|>system<|end_header_id|>\n\nYou are a helpful assistant.<|eot_id|>\n"
               "<|start_header_id|>user<|end_header_id|>\n\n{input}\nPlease reason step by step, and put your final answer within \\boxed{{}}.<|eot_id|>\n"
               "<|start_header_id|>assistant<|end_header_id|>\n\n", False, _LLAMA_STOPS,
               f"{_U}['llama-boxed'] (lines 146-152)"),
    MathPrompt("qwen25-math-cot",
               "<|im_start|>system\nPlease reason step by step, and put your final answer within \\boxed{{}}.<|im_end|>\n"
               "<|im_start|>user\n{input}<|im_end|>\n<|im_start|>assistant\n", False, _QWEN_STOPS,
               f"{_U}['qwen25-math-cot'] (lines 161-167)"),
)}
DEFAULT = "cot"                       # eval/eval_math.sh line 28: PROMPT_TYPE="cot"
CHOICES = ("auto", "boxed", *PROMPT_TYPES)
# The family formats of the study's README ("Evaluation": Qwen / ChatML, Llama instruction format),
# by a lower-cased substring of the model's name, tested in this order.
FAMILY_BOXED = (("llama", "llama-boxed"), ("qwen", "qwen-boxed"))


def check_prompt_type(value: str | None, option: str = "--prompt-type") -> str:
    """``value`` is auto, boxed or a prompt type's name (None: auto); a usage error otherwise."""
    if value is None:
        return "auto"
    v = str(value).strip().lower()
    if v not in CHOICES:
        raise UsageError(f"{option} {value!r}: expected one of {', '.join(CHOICES)}",
                         hint="auto = the study's default (cot); boxed = qwen-boxed / llama-boxed by the model's name")
    return v


def pick(choice: str | None, names=()) -> tuple[str, str]:
    """The prompt type for a model with names ``names`` (``tasks.prompting.model_names``) and the
    rule that chose it. ``boxed`` for a model of neither family is an incompatible input."""
    choice = check_prompt_type(choice)
    if choice == "auto":
        return DEFAULT, "study default: cot in the chat template (eval/eval_math.sh PROMPT_TYPE=cot)"
    if choice != "boxed":
        return choice, f"--prompt-type {choice}"
    names = [str(n) for n in names if n]
    for marker, ptype in FAMILY_BOXED:
        for name in names:
            if marker in name.lower():
                return ptype, f"--prompt-type boxed: {marker!r} in {name!r}"
    shown = ", ".join(repr(n) for n in names) or "no name"
    raise IncompatibleInputs(f"--prompt-type boxed: neither 'llama' nor 'qwen' in the model's name ({shown})",
                             hint="the study has boxed formats for Qwen and Llama only; name one (--prompt-type "
                                  "qwen-boxed / llama-boxed) or use auto (cot)")


def for_model(task, choice: str | None, names=()):
    """``task`` (a study math task: ``task.prompt_type`` set) with its prompt type decided for one
    model: the items rendered again from their problem, the type's stops and chat use, the choice
    recorded in ``prompt_type``/``prompt_rule`` and, when it is not the protocol's, in ``overrides``.
    A task without a prompt type (lm-eval's, the built-in ones) comes back unchanged."""
    if not getattr(task, "prompt_type", ""):
        return task
    ptype, why = pick(choice, names)
    if ptype == task.prompt_type:
        return replace(task, prompt_rule=why)
    p = PROMPT_TYPES[ptype]
    items = []
    for it in task.items:
        problem = (it.meta.get("fields") or {}).get("problem")
        if problem is None:
            raise IncompatibleInputs(f"--prompt-type {ptype}: the items of {task.name!r} lack their problem text",
                                     hint="load the benchmark from its published format (docs/tasks.md)")
        items.append(replace(it, prompt=p.render(str(problem))))
    ov = dict(part.split("=", 1) for part in filter(None, task.overrides.split(",")))
    ov["prompt_type"] = ptype
    return replace(task, items=items, stop=p.stop, chat=p.chat, chat_by_name=False, prompt_type=ptype, prompt_rule=why,
                   overrides=",".join(f"{k}={v}" for k, v in sorted(ov.items())))
