"""The PEFT-Arena study's medical answer matcher (``choice:study``; docs/eval.md, ``study@2``).

The study scores MedMCQA, MedQA and PubMedQA with ``third_party/med_eval/utils/extract_answer.py``
(``extract_overall_answer``, which keeps the *last* answer of ``match_choice``; its ``\\boxed{}``
branch is commented out). This module reproduces that behaviour, rule for rule:

0. text after the last ``"## Final Response\\n\\n"`` when there is one (the whole completion
   otherwise); no other normalisation;
1. the **last** ``answer is`` (lower-case, case-sensitive) followed by optional whitespace and a
   capital letter **A-N**, whatever the number of options and whatever follows the letter
   ("answer is Cardiac" reads C; "answer is (A)" and "answer is **A**" do not match here);
2. else the **last** standalone capital option letter (the first *n* of A-N for *n* options):
   preceded by the start of the text, a non-word character or a CJK ideograph, and followed by
   a non-word character, a CJK ideograph or the end; an "A" followed by a space is the article
   and never matches; each match consumes the character after its letter, so in "A/B" the "B"
   has no free character before it and only "A" matches;
3. else, in the lower-cased text, the option whose lower-cased text occurs (as a substring,
   "no" inside "not") **last** (its last occurrence; a tie goes to the earlier option);
4. else the option most similar to the lower-cased text (``difflib.SequenceMatcher(None, option,
   text).ratio()``; a tie, zeros included, goes to the later option), so an answer is always named.

A completion is correct when the named letter equals the reference letter, ignoring case.
"""

from __future__ import annotations

import difflib
import re

LETTERS = "ABCDEFGHIJKLMN"       # the study's letter range (options beyond N are never named)
FINAL_RESPONSE = "## Final Response\n\n"

_ANSWER_IS = re.compile(r"answer is\s*?([A-N])")
_CJK = "\u4e00-\u9fff"


def _standalone(letters: str) -> re.Pattern:
    """A capital letter of ``letters`` on its own; the character after it is consumed."""
    return re.compile(rf"(?:^|[^\w]|[{_CJK}])(?!A )([{letters}])(?:[^\w]|[{_CJK}]|$)")


def option_labels(options: list[str]) -> str:
    """The labels of the options in order: A, B, C, ... (at most the study's 14, A-N)."""
    return LETTERS[:len(options)]


def extract_study(text: str, options: list[str]) -> str:
    """The option letter the study's matcher reads in ``text`` (never empty when there are options)."""
    if FINAL_RESPONSE in text:
        text = text.split(FINAL_RESPONSE)[-1]
    hits = _ANSWER_IS.findall(text)
    if hits:
        return hits[-1]
    labels = option_labels(options)
    hits = _standalone(labels).findall(text) if labels else []
    if hits:
        return hits[-1]
    low = text.lower()
    best = None  # (last position, option index); a later position wins, an equal one keeps the earlier option
    for i, opt in enumerate(options):
        o = str(opt).lower()
        if o in low:
            pos = low.rindex(o)
            if best is None or pos > best[0]:
                best = (pos, i)
    if best is not None:
        return labels[best[1]]
    if not options:
        return ""
    top, top_i = 0.0, 0
    for i, opt in enumerate(options):
        r = difflib.SequenceMatcher(None, str(opt).lower(), low).ratio()
        if r >= top:
            top, top_i = r, i
    return labels[top_i]


def score_choice_study(completion: str, reference: str, options: list[str]) -> dict:
    ex = extract_study(completion, options)
    return {"extracted": ex, "correct": ex.lower() == str(reference).lower()}
