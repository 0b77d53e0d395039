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

from collections.abc import Mapping
from dataclasses import dataclass, replace

from peftarena_cli.errors import IncompatibleInputs, UsageError
from peftarena_cli.tasks import benchmarks
from peftarena_cli.tasks.benchmarks import Settings

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


def _protocol_settings(protocol: str) -> benchmarks.LiveView:
    """{family: Settings} of one protocol over the registered benchmarks, read live."""
    return benchmarks.LiveView(lambda: benchmarks.protocol_settings(protocol))


# the benchmark family of each task name, read live from the registry
FAMILY = benchmarks.LiveView(lambda: {b.name: b.family for b in benchmarks.REGISTRY.values() if b.family is not None})


@dataclass(frozen=True)
class Protocol:
    name: str
    version: int
    title: str
    settings: Mapping                  # family -> Settings (from the benchmark registry)
    target_mean: tuple[str, ...] = ()  # tasks averaged into target_score (empty: every target task)

    @property
    def label(self) -> str:
        return f"{self.name}@{self.version}"


# study@2: the medical matcher follows med_eval's extract_answer.py (last standalone letter) and BBH's
# chat template the study's name rule; study@1 read \boxed{} first and always used the template.
STUDY = Protocol("study", 2, "the PEFT-Arena study (OpenCompass, math_eval, med_eval)", _protocol_settings("study"),
                 target_mean=tuple(sorted(b.name for b in benchmarks.REGISTRY.values() if b.study_target)))
LM_EVAL = Protocol("lm-eval", 1, "lm-evaluation-harness v0.4.13 task defaults", _protocol_settings("lm-eval"))
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
        out[k] = float(v) if k == "temperature" else v if k == "prompt_type" else int(v)
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
                   stop=s.stop, chat=s.chat, chat_by_name=s.chat_by_name, system=s.system, n_samples=ov.get("n", s.n),
                   temperature=ov.get("temperature", s.temperature), protocol=proto.label,
                   overrides=format_overrides(ov), raw=False, loglik=benchmarks.get(task.name).loglik if s.loglik else None,
                   prompt_type=s.prompt_type or "")
