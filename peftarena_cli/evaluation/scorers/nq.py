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


# --- protocol scorers (docs/eval.md, "Protocols") -------------------------------------------------
def study_postprocess(text: str) -> str:
    """OpenCompass's general post-processing: cut at the first newline, period or comma, drop
    punctuation (anything not a word character or white space), drop the articles a/an/the,
    collapse white space."""
    head = re.split(r"[\n.,]", str(text), maxsplit=1)[0]
    head = re.sub(r"[^\w\s]", "", head)
    head = re.sub(r"\b(a|an|the)\b", "", head, flags=re.IGNORECASE)
    return re.sub(r"\s+", " ", head).strip()


def score_nq_study(completion: str, references) -> dict:
    """The study's NQ-open scoring (OpenCompass ``NQEvaluator``): the first line, lower-cased; the
    text after the last "answer is" on it; post-processed; correct when any post-processed,
    lower-cased reference is a substring of it."""
    pred = str(completion).strip().split("\n")[0].lower()
    if "answer is" in pred:
        pred = pred.split("answer is")[-1]
    pred = study_postprocess(pred)
    refs = [study_postprocess(r).lower() for r in references]
    return {"extracted": pred, "correct": any(r in pred for r in refs)}


_LMEVAL_ARTICLES = r"\b(?:The |the |An |A |The |a |an )"
_PUNCT_TABLE = str.maketrans("", "", string.punctuation)


def _lmeval_normalize(s: str) -> str:
    """lm-evaluation-harness ``exact_match`` as nq_open configures it: the articles regex removed,
    then lower case, then ASCII punctuation removed (nothing else: white space stays)."""
    return re.sub(_LMEVAL_ARTICLES, "", str(s)).lower().translate(_PUNCT_TABLE)


def score_nq_lmeval(completion: str, references) -> dict:
    """lm-evaluation-harness nq_open: the completion (already cut at the stops) without surrounding
    white space (its ``remove_whitespace`` filter), exact match against any reference after :func:`_lmeval_normalize`."""
    pred = str(completion).strip()
    p = _lmeval_normalize(pred)
    return {"extracted": pred, "correct": any(p == _lmeval_normalize(r) for r in references)}
