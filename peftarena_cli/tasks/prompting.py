"""Prompt rendering shared by training and evaluation, so both see the same format, and the one
rule that decides whether a prompt goes through the tokenizer's chat template
(``--chat-template auto|on|off``; docs/eval.md, "Chat template")."""

from __future__ import annotations

import json
from pathlib import Path

from peftarena_cli.errors import IncompatibleInputs, UsageError

MATH_INSTRUCTION = "Solve the problem step by step. End with: The answer is N."

CHAT_TEMPLATE_MODES = ("auto", "on", "off")
# The study's test for an instruction-tuned model: any of these substrings in the model's name,
# compared in lower case (PEFT-Arena eval/generate_opencompass_config.py, INSTRUCT_INDICATORS /
# is_instruct_model). Plain substrings: "it-" also matches inside "commit-7b", and "-ins" inside
# "-insight"; "gemma-2-2b-it" (no hyphen after "it") does not match.
STUDY_INSTRUCT_MARKERS = ("instruct", "-ins", "ins-", "chat", "it-")
# The setting of a benchmark whose template use the study decides from the model's name
# (tasks/benchmarks.py Settings.chat_by_name), as decide_chat_template takes it.
BY_NAME = "name"


def user_message(question: str, instruction: str | None = MATH_INSTRUCTION) -> str:
    return f"{question}\n{instruction}" if instruction else question


def render_prompt(tokenizer, question: str, instruction: str | None = MATH_INSTRUCTION,
                  use_chat: bool = True, system: str | None = None) -> str:
    """The text the model sees before its completion (chat template when the tokenizer has one)."""
    msg = user_message(question, instruction)
    if use_chat and has_chat_template(tokenizer):
        messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": msg}]
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return f"Question: {msg}\nAnswer:"


def has_chat_template(tokenizer) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def check_chat_template_mode(mode: str | None, option: str = "--chat-template") -> str:
    """``mode`` is one of auto, on, off (None: auto); a usage error otherwise."""
    if mode is None:
        return "auto"
    m = str(mode).strip().lower()
    if m not in CHAT_TEMPLATE_MODES:
        raise UsageError(f"{option} {mode!r}: expected auto, on or off",
                         hint="auto follows the protocol (docs/eval.md, 'Chat template'); on / off force it")
    return m


def require_chat_template(tokenizer, mode: str, model: str) -> None:
    """``--chat-template on`` needs a tokenizer with a chat template: a one-line error otherwise."""
    if mode == "on" and not has_chat_template(tokenizer):
        raise IncompatibleInputs(f"--chat-template on, but the tokenizer of {model!r} has no chat template",
                                 hint="use --chat-template auto or off (plain prompts) for this model")


def model_names(model) -> list[str]:
    """The names the study's rule reads for a model spec (docs/eval.md, "Chat template"):

    * an alias (registry.py): its hub id (the model it was converted from);
    * a local directory (or a weights file's directory): the directory's own name (not its parents:
      where a checkpoint is stored says nothing about the model) and its config.json's
      ``_name_or_path`` (the hub id it was saved from, when recorded);
    * anything else (a hub id): the spec as given.
    """
    from peftarena_cli import registry

    s = str(model)
    if registry.is_alias(s):
        spec = registry.get_spec(s)
        return [spec.hub_id or s]
    p = Path(s).expanduser()
    if p.exists():
        d = p if p.is_dir() else p.parent
        names = [p.name if p.is_dir() else p.stem]
        try:
            cfg = json.loads((d / "config.json").read_text())
        except (OSError, ValueError):
            cfg = {}
        nop = cfg.get("_name_or_path") if isinstance(cfg, dict) else None
        if isinstance(nop, str) and nop.strip():
            names.append(nop)
        return names
    return [s]


def study_name_rule(names) -> tuple[bool, str]:
    """The study's instruct-model test over ``names``: (template used, why). Case-insensitive
    substring match of :data:`STUDY_INSTRUCT_MARKERS`, the first hit decides."""
    names = [str(n) for n in names if n]
    for name in names:
        low = name.lower()
        for m in STUDY_INSTRUCT_MARKERS:
            if m in low:
                return True, f"study name rule: {m!r} in {name!r}"
    shown = ", ".join(repr(n) for n in names) or "no name"
    return False, f"study name rule: no instruct marker in {shown}"


def decide_chat_template(mode: str, setting, protocol: str, has_template: bool, names=()) -> tuple[bool, str]:
    """Whether a task's prompts go through the chat template, and which rule decided.

    ``setting`` is the task's protocol value (``Settings.chat``: True or False; :data:`BY_NAME` where
    ``Settings.chat_by_name``),
    ``protocol`` its label (``study@2``, ``lm-eval@1``, ``builtin@1``). ``on`` / ``off`` force it
    (``on`` is checked against the tokenizer first: :func:`require_chat_template`). ``auto``:

    * the setting :data:`BY_NAME` (the study's BBH): the study's name rule, when the tokenizer has a template;
    * True (the study's IFEval, NQ-open, math, medical; the built-in suites): the template when the
      tokenizer has one;
    * False (lm-eval's tasks, built-in facts): no template (lm-eval's default without
      ``--apply_chat_template``).
    """
    if mode == "on":
        return True, "--chat-template on"
    if mode == "off":
        return False, "--chat-template off"
    proto = str(protocol).split("@")[0]
    if setting == BY_NAME:
        use, why = study_name_rule(names)
        if use and not has_template:
            return False, why + "; the tokenizer has no chat template"
        return use, why
    if not setting:
        return False, (f"{proto} protocol: no chat template" if proto == "lm-eval"
                       else f"{proto} protocol: the task's prompt is used as it is")
    if not has_template:
        return False, f"{proto} protocol: the tokenizer has no chat template"
    return True, f"{proto} protocol: chat template (the tokenizer has one)"
