"""Reference answers as the benchmark files write them: a number's plain form, GSM8K's ``#### N``.

Reading a task's gold answer is data loading, so it lives here (tasks/); the math scorers in
:mod:`peftarena_cli.evaluation.scorers.math` use the same number form for what they extract.
"""

from __future__ import annotations

import re


def clean_number(s: str) -> str:
    """``$1,234.00`` -> ``1234``: no currency sign, no thousands separators, no trailing dot or zeros."""
    s = s.replace("$", "").replace(",", "").strip()
    s = s.rstrip(".")
    if re.fullmatch(r"-?\d+\.0+", s):
        s = s.split(".")[0]
    return s


def gsm8k_reference(answer: str) -> str:
    """The gold number of a GSM8K answer (after ``####``)."""
    m = re.search(r"####\s*(.+)$", str(answer).strip())
    return clean_number(m.group(1)) if m else clean_number(str(answer))
