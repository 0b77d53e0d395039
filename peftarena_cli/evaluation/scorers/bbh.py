"""BIG-Bench Hard scoring: the answer follows "the answer is" (chain-of-thought format).

Extraction follows the published CoT prompts' convention: the text after the last
"the answer is" on its line, without the final period. Multiple-choice targets "(A)" also accept
"A" or "(A) option text"; other targets compare exactly, ignoring case, after trimming white space.
"""

from __future__ import annotations

import re

_ANS = re.compile(r"the answer is\s*:?\s*(.*)", re.I)


def extract_answer(completion: str) -> str:
    last = None
    for line in completion.splitlines():
        for m in _ANS.finditer(line):
            last = m.group(1)
    if last is None:
        return ""
    a = last.strip()
    a = re.sub(r"[.\s]+$", "", a)
    return a.strip().strip("*").strip()


def matches(extracted: str, target: str) -> bool:
    e, t = extracted.strip(), target.strip()
    if not e:
        return False
    if e == t:
        return True
    m = re.fullmatch(r"\(([A-R])\)", t)
    if m:
        em = re.match(r"\(?([A-R])\)?(?:$|[\s.:])", e)
        return bool(em) and em.group(1) == m.group(1)
    return e.lower() == t.lower()  # exact match, ignoring case (as lm-evaluation-harness scores BBH)


def score_bbh(completion: str, target: str) -> dict:
    ex = extract_answer(completion)
    return {"extracted": ex, "correct": matches(ex, target)}
