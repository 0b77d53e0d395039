"""Math answer extraction and equivalence: ``\\boxed{}``, GSM8K ``####``, "The answer is N",
the last-number fallback, and math-verify equivalence.

* strict: the answer in the format the prompt asks for: ``#### N`` (GSM8K) or
  "The answer is N" (our arithmetic task and the CoT convention), or a ``\\boxed{}``;
* flexible: the last number in the completion (lm-evaluation-harness's flexible-extract);
* ``correct``: math-verify equivalence of the gold answer and the first answer found among
  boxed → strict → flexible.
"""

from __future__ import annotations

import re

from peftarena_cli.tasks.answers import clean_number

_NUM = r"-?[$]?\s*[0-9][0-9,]*(?:\.[0-9]+)?"
_STRICT = [re.compile(r"####\s*(" + _NUM + r")"),
           re.compile(r"[Tt]he (?:final )?answer is:?\s*\**\s*(" + _NUM + r")")]
_LAST_NUM = re.compile(r"-?[0-9][0-9,]*(?:\.[0-9]+)?")


def extract_boxed(text: str) -> str | None:
    """Contents of the last ``\\boxed{...}`` / ``\\fbox{...}`` (balanced braces), else None."""
    best = None
    for m in re.finditer(r"\\(?:boxed|fbox)\s*\{", text):
        depth, i = 1, m.end()
        while i < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            i += 1
        if depth == 0:
            best = text[m.end():i - 1].strip()
    if best is None:
        m = None
        for m in re.finditer(r"\\boxed ([^\s$]+)", text):
            pass
        if m is not None:
            best = m.group(1)
    return best


def extract_strict(text: str) -> str | None:
    found = None
    for rx in _STRICT:
        for m in rx.finditer(text):
            if found is None or m.start() > found[0]:
                found = (m.start(), m.group(1))
    return clean_number(found[1]) if found else None


def extract_flexible(text: str) -> str | None:
    nums = _LAST_NUM.findall(text)
    return clean_number(nums[-1]) if nums else None


def _as_number(s: str):
    try:
        return float(clean_number(s))
    except (ValueError, TypeError):
        return None


def equivalent(gold: str, pred: str | None) -> bool:
    """math-verify equivalence (numbers compare numerically first, which is exact and fast)."""
    if pred is None or str(pred).strip() == "":
        return False
    g, p = _as_number(str(gold)), _as_number(str(pred))
    if g is not None and p is not None:
        return abs(g - p) <= 1e-9 * max(1.0, abs(g))
    try:
        from math_verify import parse, verify
    except ImportError:  # pragma: no cover
        return str(gold).strip() == str(pred).strip()
    try:
        gp = parse(f"${gold}$") or parse(str(gold))
        pp = parse(f"${pred}$") or parse(str(pred))
        return bool(gp and pp and verify(gp, pp))
    except Exception:
        return False


def score_math(completion: str, reference: str) -> dict:
    """{extracted, correct, strict, flexible} for one completion."""
    boxed = extract_boxed(completion)
    strict = extract_strict(completion)
    flex = extract_flexible(completion)
    extracted = boxed if boxed is not None else (strict if strict is not None else flex)
    return {
        "extracted": extracted if extracted is not None else "",
        "correct": equivalent(reference, extracted),
        "correct_strict": equivalent(reference, boxed if boxed is not None else strict),
        "correct_flexible": equivalent(reference, flex),
    }
