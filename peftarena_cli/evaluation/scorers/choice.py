"""Multiple-choice letter extraction (medical QA), strict and flexible.

* strict: an explicit answer statement: "The answer is (B)", "Answer: B", "\\boxed{B}", or a
  completion that is just the letter ("B", "(B)", "B.");
* flexible: strict, else the first standalone option letter in the completion, else the option
  whose text appears in the completion (the longest match), e.g. "yes" for PubMedQA.
``correct`` is the flexible result (the strict one is reported as ``correct_strict``).
The ``study`` protocol's matcher (``choice:study``) is the study's own, in choice_study.py.
"""

from __future__ import annotations

import re


def _letters(n_options: int) -> str:
    return "ABCDEFGHIJ"[:n_options]


def extract_strict(text: str, n_options: int = 4) -> str | None:
    L = _letters(n_options)
    t = text.strip()
    pats = [rf"[Tt]he (?:correct |final )?answer is:?\s*\**\s*\(?([{L}])\b",
            rf"[Aa]nswer:\s*\**\s*\(?([{L}])\b", rf"\\boxed\{{\s*\(?([{L}])\)?\s*\}}"]
    for p in pats:
        m = re.findall(p, t)
        if m:
            return m[-1]
    m = re.fullmatch(rf"\(?([{L}])\)?[.:]?(?:\s.*)?", t, flags=re.S)
    if m and (len(t) <= 3 or t[1:2] in (")", ".", ":")):
        return m.group(1)
    return None


def extract_flexible(text: str, options: list[str] | None = None, n_options: int | None = None) -> str | None:
    n = n_options or (len(options) if options else 4)
    s = extract_strict(text, n)
    if s is not None:
        return s
    L = _letters(n)
    m = re.search(rf"(?:^|[\s(\[])([{L}])(?=$|[\s).:,\]])", text)
    if m:
        return m.group(1)
    if options:
        low = text.lower()
        hits = [(len(o), i) for i, o in enumerate(options) if o and re.search(rf"\b{re.escape(o.lower())}\b", low)]
        if hits:
            return L[max(hits)[1]]
    return None


def score_choice(completion: str, reference: str, options: list[str]) -> dict:
    strict = extract_strict(completion, len(options))
    flex = extract_flexible(completion, options)
    return {"extracted": flex or "", "correct": flex == reference, "correct_strict": strict == reference,
            "correct_flexible": flex == reference}


def score_choice_loglik(chosen: str, reference: str, options: list[str]) -> dict:
    """lm-evaluation-harness multiple choice: ``chosen`` is the continuation with the highest
    log-likelihood (a letter, or PubMedQA's option text); correct when it is the gold option."""
    L = _letters(len(options) or 4)
    c = chosen.strip()
    ex = c if c in L and len(c) == 1 else (L[options.index(c)] if c in options else "")
    return {"extracted": ex, "correct": ex == reference}
