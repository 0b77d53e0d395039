"""Verifiable rewards for RLVR (GRPO): exact final-answer match for math, the letter for multiple choice.

A completion earns 1.0 when its extracted answer equals the reference, else 0.0. Extraction:

* math: the last "The answer is X" / "#### X" / ``\\boxed{X}``, else the last number in the text;
  numbers compare as numbers (``12``, ``12.0``, ``1,200`` vs ``1200``), other answers through
  ``math-verify`` when it is installed, else as normalised strings;
* choice: the letter after "answer is" (``(B)``, ``B.``, ``B``), else a lone capital letter A-J.
"""

from __future__ import annotations

import re

_ANSWER_IS = re.compile(r"answer is[:\s]*([^\n]*)", re.IGNORECASE)
_NUMBER_WITH_UNIT = re.compile(r"^\$?\s*(-?\d[\d,]*(?:\.\d+)?)(?:\s+[A-Za-z]+)*\s*\$?$")
_HASHES = re.compile(r"####\s*([^\n]*)")
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")
_LETTER_AFTER = re.compile(r"answer is[:\s]*\(?([A-J])\b", re.IGNORECASE)
_LONE_LETTER = re.compile(r"(?:^|[\s(])([A-J])(?:[).:\s]|$)")


def _boxed(text: str) -> str | None:
    i = text.rfind("\\boxed{")
    if i < 0:
        return None
    depth, j = 0, i + len("\\boxed{")
    start = j
    while j < len(text):
        c = text[j]
        if c == "{":
            depth += 1
        elif c == "}":
            if depth == 0:
                return text[start:j]
            depth -= 1
        j += 1
    return None


def extract_math_answer(text: str) -> str | None:
    """The final answer of a math completion or reference (``None`` when there is none)."""
    if text is None:
        return None
    text = str(text)
    b = _boxed(text)
    if b is not None:
        return b.strip()
    for rx in (_HASHES, _ANSWER_IS):
        hits = rx.findall(text)
        if hits:
            ans = hits[-1].strip().rstrip(".").strip().strip("$").strip()
            m = _NUMBER_WITH_UNIT.match(ans)
            return m.group(1) if m else ans
    nums = _NUMBER.findall(text)
    return nums[-1] if nums else None


def _as_number(s: str | None) -> float | None:
    if s is None:
        return None
    t = s.replace(",", "").replace("$", "").strip().rstrip(".")
    try:
        return float(t)
    except ValueError:
        return None


def math_equal(pred: str | None, ref: str | None) -> bool:
    if pred is None or ref is None:
        return False
    a, b = _as_number(pred), _as_number(ref)
    if a is not None and b is not None:
        return abs(a - b) <= 1e-6 * max(1.0, abs(b))
    if " ".join(pred.split()).lower() == " ".join(ref.split()).lower():
        return True
    try:
        from math_verify import parse, verify

        return bool(verify(parse(f"${ref}$"), parse(f"${pred}$")))
    except Exception:
        return False


def extract_letter(text: str) -> str | None:
    if text is None:
        return None
    hits = _LETTER_AFTER.findall(str(text))
    if hits:
        return hits[-1].upper()
    hits = _LONE_LETTER.findall(str(text).strip())
    return hits[-1].upper() if hits else None


def score(completion: str, reference: str, kind: str = "math") -> float:
    """1.0 if ``completion`` answers ``reference`` correctly, else 0.0."""
    if kind == "choice":
        ref = extract_letter(reference) if len(str(reference).strip()) > 1 else str(reference).strip().upper()
        return float(extract_letter(completion) == ref and ref is not None)
    ref = extract_math_answer(reference) if ("####" in str(reference) or "boxed" in str(reference)
                                             or "answer is" in str(reference).lower()) else str(reference).strip()
    return float(math_equal(extract_math_answer(completion), ref))


def _text(c) -> str:
    if isinstance(c, list):  # conversational completion: [{"role": "assistant", "content": ...}]
        return "".join(m.get("content", "") for m in c if isinstance(m, dict))
    return str(c)


class SafeReward:
    """A reward function (TRL signature) whose failure on one completion scores that completion 0.0
    instead of ending the run; ``errors`` counts the failures and ``last_error`` keeps the latest
    (``ExceptionType: message``). TRL names a reward function by its ``__name__`` (the logged
    ``rewards/<name>`` metrics), so the wrapper keeps the wrapped function's name."""

    def __init__(self, fn):
        self.fn = fn
        self.__name__ = getattr(fn, "__name__", type(fn).__name__)
        self.errors = 0
        self.last_error: str | None = None

    def _fail(self, e: Exception) -> float:
        self.errors += 1
        self.last_error = f"{type(e).__name__}: {(str(e).splitlines() or [''])[0][:200]}"
        return 0.0

    def __call__(self, completions, **kw) -> list[float]:
        try:
            out = self.fn(completions=completions, **kw)
            if out is not None and len(out) == len(completions):
                return [0.0 if v is None else float(v) for v in out]
        except Exception:
            pass  # score one completion at a time to find the one that fails
        scores = []
        for i, c in enumerate(completions):
            one = {k: ([v[i]] if isinstance(v, list) and len(v) == len(completions) else v) for k, v in kw.items()}
            try:
                r = self.fn(completions=[c], **one)
                scores.append(0.0 if r is None or r[0] is None else float(r[0]))
            except Exception as e:
                scores.append(self._fail(e))
        return scores


def verifiable_reward(completions, answer, kind=None, **_) -> list[float]:
    """The GRPO reward function (TRL signature): dataset columns ``answer`` and ``kind`` arrive as lists."""
    kinds = kind if kind is not None else ["math"] * len(completions)
    return [score(_text(c), a, k) for c, a, k in zip(completions, answer, kinds)]
