"""NQ-open exact match with SQuAD-style normalisation (lower case, no punctuation, no articles
"a/an/the", collapsed white space); correct when any reference matches."""

from __future__ import annotations

import re
import string

_PUNCT = set(string.punctuation)


def normalize_answer(s: str) -> str:
    s = str(s).lower()
    s = "".join(ch for ch in s if ch not in _PUNCT)
    s = re.sub(r"\b(a|an|the)\b", " ", s)
    return " ".join(s.split())


def extract_answer(completion: str) -> str:
    """The short answer: the first non-empty line, without an "Answer:" prefix."""
    for line in completion.strip().splitlines():
        line = line.strip()
        if line:
            return re.sub(r"^(?:the )?answer\s*(?:is)?\s*:?\s*", "", line, flags=re.I).strip()
    return ""


def exact_match(prediction: str, references) -> bool:
    p = normalize_answer(prediction)
    return any(p == normalize_answer(r) for r in references)


def score_nq(completion: str, references) -> dict:
    ans = extract_answer(completion)
    return {"extracted": ans, "correct": bool(ans) and exact_match(ans, references)}


def contains_match(prediction: str, references) -> bool:
    """Whole-word containment after normalisation (used by the built-in facts set, whose small
    models answer in sentences: "The capital of France is Paris")."""
    p = f" {normalize_answer(prediction)} "
    return any(normalize_answer(r) and f" {normalize_answer(r)} " in p for r in references)


def score_facts(completion: str, references) -> dict:
    ans = extract_answer(completion)
    return {"extracted": ans, "correct": bool(ans) and contains_match(ans, references)}
