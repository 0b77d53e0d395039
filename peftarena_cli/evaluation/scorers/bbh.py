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


# --- protocol scorers (docs/eval.md, "Protocols") -------------------------------------------------
# The study's split of the 27 subtasks (its OpenCompass BBH config): these are scored as multiple
# choice (the option letter), the other ten as free-form text.
BBH_MCQ_SUBTASKS = frozenset({
    "temporal_sequences", "disambiguation_qa", "date_understanding", "tracking_shuffled_objects_three_objects",
    "penguins_in_a_table", "geometric_shapes", "snarks", "ruin_names", "tracking_shuffled_objects_seven_objects",
    "tracking_shuffled_objects_five_objects", "logical_deduction_three_objects", "hyperbaton",
    "logical_deduction_five_objects", "logical_deduction_seven_objects", "movie_recommendation",
    "salient_translation_error_detection", "reasoning_about_colored_objects",
})


def _after_first_answer_is(text: str) -> str:
    parts = text.split("answer is ")
    return parts[1].strip() if len(parts) != 1 else text


def study_mcq(text: str) -> str:
    """OpenCompass ``bbh_mcq_postprocess``: the text after the *first* "answer is ", then the first
    "(X)" letter, else the first capital letter, else that text as it is. Applied to the target
    too, so "(A)" becomes "A"."""
    ans = _after_first_answer_is(text)
    m = re.search(r"\(([A-Z])\)*", ans)
    if m:
        return m.group(1)
    m = re.search(r"([A-Z])", ans)
    return m.group(1) if m else ans


def study_freeform(text: str) -> str:
    """OpenCompass ``bbh_freeform_postprocess``: the text after the first "answer is ", its first
    line, without a final period; the inside of the first ``**bold**`` span if there is one."""
    ans = _after_first_answer_is(text).split("\n")[0].strip()
    if ans.endswith("."):
        ans = ans[:-1].strip()
    m = re.search(r"\*\*(.*?)\*\*", ans)
    return m.group(1) if m else ans


def score_bbh_study(completion: str, target: str, subtask: str) -> dict:
    """The study's BBH scoring: multiple-choice subtasks compare post-processed letters, free-form
    subtasks compare the post-processed answer with the target exactly (case-sensitive)."""
    if subtask in BBH_MCQ_SUBTASKS:
        ex = study_mcq(completion)
        return {"extracted": ex, "correct": ex == study_mcq(str(target))}
    ex = study_freeform(completion)
    return {"extracted": ex, "correct": ex == str(target)}


LMEVAL_ANSWER = re.compile(r"(?<=the answer is )(.*)(?=.)")


def score_bbh_lmeval(completion: str, target: str) -> dict:
    """lm-evaluation-harness bbh_cot_fewshot (``get-answer`` filter): the first match of
    ``(?<=the answer is )(.*)(?=.)`` (the rest of that line but its last character), stripped,
    else ``[invalid]``; exact, case-sensitive match with the target."""
    found = LMEVAL_ANSWER.findall(completion)
    ex = found[0].strip() if found else "[invalid]"
    return {"extracted": ex, "correct": ex == str(target)}
